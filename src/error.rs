//! The one error type and its mapping to exit codes. Messages are written for the operator reading the log.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid user name \"{shown}\": {reason}")]
    InvalidUser { shown: String, reason: String },

    #[error("user name is not valid UTF-8; IAM names are ASCII letters, digits and + = , . @ _ -")]
    NonUtf8User,

    #[error("configuration: {0}")]
    Config(String),

    #[error("config file {path}: {reason}")]
    ConfigFile { path: PathBuf, reason: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{path} is not safe to use: {reason}")]
    Unsafe { path: PathBuf, reason: String },

    #[error("IAM lookup failed: {0}")]
    Iam(String),

    /// The host's own AWS credentials could not be found; IAM was not asked. `detail` is the whole story
    /// (each step of the chain, each IMDS request) for `-vv`.
    #[error("{cause}; fix: {fix}")]
    Credentials {
        cause: String,
        fix: String,
        detail: String,
    },

    /// The instance tag naming the allowed groups could not be read. `settled`: instance metadata
    /// answered (no such tag, tags not enabled, a value that lists no group): the rule is known to be
    /// unusable, and no stale answer is served.
    #[error("{cause}; fix: {fix}")]
    InstanceTag {
        cause: String,
        fix: String,
        settled: bool,
    },

    #[error("deadline of {0} ms reached before IAM answered")]
    Deadline(u128),

    #[error("cannot write to stdout: {0}")]
    Stdout(std::io::Error),

    #[error("{0} check(s) failed")]
    Checks(usize),

    #[error("sync-users finished with {0} error(s); see above")]
    Sync(usize),

    #[error(
        "a lookup held the lock of {0} for the whole --timeout; the record was kept: try again"
    )]
    LockBusy(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Exit codes: 0 served (possibly zero keys); 2 bad invocation or user name; 3 bad configuration;
    /// 4 IAM (or the credentials to ask it) could not answer and no cached answer was young enough
    /// (fail closed); 1 anything else.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Error::InvalidUser { .. } | Error::NonUtf8User => 2,
            Error::Config(_) | Error::ConfigFile { .. } => 3,
            Error::Iam(_)
            | Error::Credentials { .. }
            | Error::InstanceTag { .. }
            | Error::Deadline(_) => 4,
            Error::Io { .. }
            | Error::Unsafe { .. }
            | Error::Stdout(_)
            | Error::Checks(_)
            | Error::Sync(_)
            | Error::LockBusy(_) => 1,
        })
    }
}

/// `msg`, then the text of each error in the chain from `src`, `: `-separated, each through `show`; a
/// text already at the end of the message, or the bare `other` some transports put in, is left out.
/// The one walk over `Error::source` for messages (SDK errors, credential errors).
pub fn with_sources(
    mut msg: String,
    mut src: Option<&(dyn std::error::Error + 'static)>,
    show: fn(&str) -> String,
) -> String {
    while let Some(s) = src {
        let text = show(&s.to_string());
        if text != "other" && !msg.ends_with(&text) {
            msg = format!("{msg}: {text}");
        }
        src = s.source();
    }
    msg
}
