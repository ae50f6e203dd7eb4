//! moodle-release: takes a Moodle site from git to production with no downtime.
//!
//! One module per concern: `config` reads `moodle-release.toml`; `source` reads trees from
//! git or a folder; `moodle` understands Moodle's versions; `deb` writes Debian packages and
//! `build` decides what goes in them; `report` is how the core talks to the user; `cli`
//! and `run` are the command line; `cluster` is what `roll` and `status` both read of a
//! cluster, `roll` what changes it.
//!
//! Only what the binary (`main.rs`: `cli`, `run`, `ui`) and the integration tests
//! (`merge::fetch::JOBS`) use is public: the rest is `pub(crate)`, so rustc names dead code.

pub(crate) mod apt;
pub(crate) mod build;
pub mod cli;
pub(crate) mod cluster;
pub(crate) mod config;
pub(crate) mod deb;
pub(crate) mod error;
pub(crate) mod fsutil;
pub(crate) mod haproxy;
pub(crate) mod journal;
pub mod merge;
pub(crate) mod moodle;
pub(crate) mod notify;
pub(crate) mod render;
pub(crate) mod report;
pub(crate) mod roll;
pub mod run;
pub(crate) mod source;
pub(crate) mod ssh;
pub(crate) mod status;
pub(crate) mod time;
pub mod ui;

pub use error::Error;
