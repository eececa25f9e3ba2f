//! iam-authorized-keys: sshd's AuthorizedKeysCommand for AWS IAM users' SSH public keys.
//!
//! Imports point one way: `lib -> app -> cmd/* -> lookup -> iam, cache, policy, ...`; no module of the
//! lookup core imports a command or `app` (`tests/layout.rs` checks it).
//! - `app`: dispatch; `lookup`: the decision; `audit`: the audit event of a lookup
//! - `cmd`: the admin commands (doctor, cache, sync-users, map, docs; sshd_unit for doctor)
//! - `cli` (clap definitions), `fastargs` (choosing the parser), `config` (checked options)
//! - `credentials`: the host's AWS credentials and region (chain, IMDS under the deadline)
//! - `username`, `policy`, `keys`, `keyopts`, `iam`, `cache`, `fsutil`, `output`, `log`, `error`
//! - `chain`: the AuthorizedKeysCommand that was in effect before ours, run beside our lookup
//!
//! The warm path (a fresh cache record) is `fastargs` -> `config` -> `username` -> `policy` -> `lookup`
//! -> `cache` -> `output`, all synchronous: no tokio runtime, no AWS configuration. Only a miss reaches `iam`.

pub mod app;
pub mod audit;
pub mod cache;
pub mod chain;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod credentials;
pub mod error;
pub mod fastargs;
pub mod fsutil;
pub mod iam;
pub mod keyopts;
pub mod keys;
pub mod log;
pub mod lookup;
pub mod output;
pub mod policy;
pub mod username;

use std::process::ExitCode;

/// The program: parses arguments, runs, maps the result to the one process exit code.
pub fn main() -> ExitCode {
    let cli = match fastargs::parse(std::env::args_os().collect()) {
        Ok(c) => c,
        Err(e) => {
            // clap prints --help/--version to stdout, usage errors to stderr; both end here.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let log = log::Log::new(
        cli.opts.verbose,
        cli.opts.journal_socket.as_deref(),
        cli.opts.syslog_socket.as_deref(),
    );
    match app::run(&cli, &log) {
        Ok(()) => ExitCode::SUCCESS,
        // A failed lookup was already sent to the system log as its audit event.
        Err(e @ (error::Error::Iam(_) | error::Error::Deadline(_))) => {
            log.stderr_only(&e.to_string());
            e.exit_code()
        }
        Err(e) => {
            log.error(&e.to_string());
            e.exit_code()
        }
    }
}
