//! iam-authorized-keys: sshd's AuthorizedKeysCommand for AWS IAM users' SSH public keys.
//!
//! The warm path (a fresh cache record) is `config` -> `username` -> `cache` -> `output`, all synchronous:
//! no tokio runtime, no AWS configuration. Only a miss reaches `iam`.

pub mod app;
pub mod audit;
pub mod cache;
pub mod cli;
pub mod cmd;
pub mod config;
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
    let cli = match cli::parse(std::env::args_os().collect()) {
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
