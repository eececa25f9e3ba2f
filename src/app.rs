//! Dispatch: the parsed command line becomes a `Config`, then either the key lookup (sshd's invocation) or
//! one admin command. The lookup decision itself lives in `lookup`.

use std::time::Instant;

use crate::cli::{Cli, Command};
use crate::config::{Config, Env};
use crate::error::Error;
use crate::log::Log;
use crate::lookup::{decide, Decided};
use crate::username::LoginName;
use crate::{audit, output};

fn env() -> Env {
    Env {
        iam_endpoint: std::env::var("AWS_ENDPOINT_URL_IAM").ok(),
        sts_endpoint: std::env::var("AWS_ENDPOINT_URL_STS").ok(),
    }
}

/// Entry point after argument parsing.
pub fn run(cli: &Cli, log: &Log) -> Result<(), Error> {
    let started = Instant::now();
    let cfg = Config::build(&cli.opts, &env())?;
    match &cli.command {
        Some(Command::Map { names }) => return crate::cmd::map::run(names, &cfg),
        Some(Command::Doctor(args)) => return crate::cmd::doctor::run(args, &cfg, log),
        Some(Command::Cache(args)) => return crate::cmd::cache::run(args, &cfg, log),
        Some(Command::SyncUsers(args)) => return crate::cmd::sync_users::run(args, &cfg, log),
        Some(Command::Completions { shell }) => return crate::cmd::docs::completions(*shell),
        Some(Command::Man) => return crate::cmd::docs::man(),
        None => {}
    }
    let raw = cli
        .user
        .as_ref()
        .ok_or_else(|| Error::Config("no USER given".into()))?;
    let user = raw.to_str().ok_or(Error::NonUtf8User)?;
    let login = LoginName::parse(user, cfg.name_case)?;
    let offered = audit::Offered::from_cli(cli, log);
    match decide(&cfg, &login, started, log) {
        Ok(decided) => {
            audit::event(log, &login, &offered, Some(&decided), None, started);
            let text = match (&decided, cfg.json) {
                (Decided::Refused(why), true) => output::render_refusal_json(&login, why),
                (Decided::Refused(_), false) => String::new(),
                (Decided::Answered(answer, decision), json) => {
                    let options = output::line_options(&cfg, answer);
                    if json {
                        output::render_json(answer, &login, options.as_deref(), decision)
                    } else {
                        output::render_keys(answer, &login, options.as_deref())
                    }
                }
            };
            output::emit(&text)
        }
        Err(e) => {
            audit::event(log, &login, &offered, None, Some(&e), started);
            Err(e)
        }
    }
}
