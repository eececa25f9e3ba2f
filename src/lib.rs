//! iam-authorized-keys: sshd's AuthorizedKeysCommand for AWS IAM users' SSH public keys.
//!
//! The warm path (a fresh cache record) is `config` -> `username` -> `cache` -> `output`, all synchronous:
//! no tokio runtime, no AWS configuration. Only a miss reaches `iam`.

pub mod app;
pub mod cache;
pub mod cli;
pub mod config;
pub mod error;
pub mod fsutil;
pub mod iam;
pub mod keyopts;
pub mod keys;
pub mod log;
pub mod output;
pub mod policy;
pub mod username;

use std::process::ExitCode;

use clap::Parser;

/// The program: parses arguments, runs, maps the result to the one process exit code.
pub fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap prints --help/--version to stdout, usage errors to stderr; both end here.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let log = log::Log::new(cli.opts.verbose);
    match app::run(&cli, &log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log.error(&e.to_string());
            e.exit_code()
        }
    }
}
