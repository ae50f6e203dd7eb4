//! The top-level error and the exit codes a pipeline can act on.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | done |
//! | 1 | failed (a build, a fetch, a node) |
//! | 2 | usage or config error, or a command not available yet |
//! | 3 | refused for safety (e.g. a held lock) |

use crate::apt::AptError;
use crate::build::BuildError;
use crate::config::ConfigError;
use crate::merge::MergeError;
use crate::roll::RollError;

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Merge(#[from] MergeError),
    #[error(transparent)]
    Apt(#[from] AptError),
    #[error(transparent)]
    Roll(#[from] RollError),
    #[error("{0}")]
    Usage(String),
    #[error("writing the result failed: {0}")]
    Output(#[from] std::io::Error),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Usage(_) => 2,
            Error::Build(_) | Error::Output(_) => 1,
            Error::Merge(e) => e.exit_code(),
            Error::Apt(e) => e.exit_code(),
            Error::Roll(e) => e.exit_code(),
        }
    }

    /// What to do next, where there is something useful to say.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Error::Config(ConfigError::Read { .. }) => {
                Some("give the config file with --config PATH (default: ./moodle-release.toml)")
            }
            _ => None,
        }
    }
}
