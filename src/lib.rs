//! moodle-release: takes a Moodle site from git to production with no downtime.
//!
//! One module per concern: [`config`] reads `moodle-release.toml`; [`source`] reads trees from
//! git or a folder; [`moodle`] understands Moodle's versions; [`deb`] writes Debian packages and
//! [`build`] decides what goes in them; [`report`] is how the core talks to the user; [`cli`]
//! and [`run`] are the command line.

pub mod apt;
pub mod build;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod deb;
pub mod error;
pub mod fsutil;
pub mod haproxy;
pub mod journal;
pub mod merge;
pub mod moodle;
pub mod notify;
pub mod render;
pub mod report;
pub mod roll;
pub mod run;
pub mod source;
pub mod ssh;
pub mod status;
pub mod time;
pub mod ui;

pub use error::Error;
