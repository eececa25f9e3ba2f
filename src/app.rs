//! Dispatch: the parsed command line becomes a `Config`, then either the key lookup (sshd's invocation) or
//! one admin command. The lookup decision itself lives in `lookup`.

use std::time::Instant;

use crate::cli::{Cli, Command};
use crate::config::{Config, Env};
use crate::error::Error;
use crate::log::Log;
use crate::lookup::{decide, Decided};
use crate::username::{sanitize, LoginName};
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
        Some(Command::Map { names }) => return map_names(names, &cfg),
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

/// `map NAME...`: each name read as a Linux name and as an IAM name.
fn map_names(names: &[std::ffi::OsString], cfg: &Config) -> Result<(), Error> {
    let mut rows = Vec::new();
    let mut all_ok = true;
    for raw in names {
        let name = raw.to_string_lossy();
        let reason = |e: Error| match e {
            Error::InvalidUser { reason, .. } => reason,
            other => other.to_string(),
        };
        let as_linux = crate::username::linux_to_iam(&name, cfg.name_case)
            .map(|u| u.as_str().to_string())
            .map_err(reason);
        let as_iam = crate::username::IamUser::parse(&name)
            .map_err(reason)
            .and_then(|u| crate::username::iam_to_linux(&u, cfg.name_case));
        all_ok &= as_linux.is_ok() || as_iam.is_ok();
        rows.push((sanitize(&name), as_linux, as_iam));
    }
    output::emit(&if cfg.json {
        output::render_map_json(&rows)
    } else {
        output::render_map(&rows)
    })?;
    if all_ok {
        Ok(())
    } else {
        Err(Error::InvalidUser {
            shown: rows
                .iter()
                .filter(|(_, a, b)| a.is_err() && b.is_err())
                .map(|(n, _, _)| n.clone())
                .collect::<Vec<_>>()
                .join(", "),
            reason: "no mapping in either direction (see above)".into(),
        })
    }
}
