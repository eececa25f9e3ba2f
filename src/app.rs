//! Dispatch: the parsed command line becomes a `Config`, then either the key lookup (sshd's invocation) or
//! one admin command. The lookup decision itself lives in `lookup`.

use std::time::Instant;

use crate::cli::{Cli, Command};
use crate::config::{Config, Env};
use crate::error::Error;
use crate::log::Log;
use crate::lookup::{decide, Decided};
use crate::username::LoginName;
use crate::{audit, chain, output};

fn env() -> Env {
    Env {
        iam_endpoint: std::env::var("AWS_ENDPOINT_URL_IAM").ok(),
        sts_endpoint: std::env::var("AWS_ENDPOINT_URL_STS").ok(),
        https_proxy: ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty())),
        no_proxy: ["NO_PROXY", "no_proxy"]
            .iter()
            .find_map(|k| std::env::var(k).ok()),
    }
}

/// Entry point after argument parsing.
pub fn run(cli: &Cli, log: &Log) -> Result<(), Error> {
    let started = Instant::now();
    // Documentation needs no configuration (nor a valid HTTPS_PROXY in the shell that asks for it).
    match &cli.command {
        Some(Command::Completions { shell }) => return crate::cmd::docs::completions(*shell),
        Some(Command::Man) => return crate::cmd::docs::man(),
        _ => {}
    }
    let cfg = Config::build(&cli.opts, &env())?;
    match &cli.command {
        Some(Command::Map { names }) => return crate::cmd::map::run(names, &cfg),
        Some(Command::Doctor(args)) => return crate::cmd::doctor::run(args, &cfg, log),
        Some(Command::Cache(args)) => return crate::cmd::cache::run(args, &cfg, log),
        Some(Command::SyncUsers(args)) => return crate::cmd::sync_users::run(args, &cfg, log),
        Some(Command::Completions { .. } | Command::Man) | None => {}
    }
    // The command chained after ours starts first and runs beside our lookup, under the same deadline:
    // nothing of ours (a name IAM cannot have, a refusal, an IAM outage) keeps its keys from sshd.
    let deadline = started + cfg.timeout;
    let running = cfg.chain.as_ref().map(chain::start);
    let finish = |running: Option<chain::Running>| {
        let chained = running.map(|r| r.finish(deadline));
        if let Some(c) = &chained {
            report_chained(c, log);
        }
        chained
    };
    let login = match parse_login(cli, &cfg) {
        Ok(l) => l,
        Err(e) => {
            return match finish(running).filter(|c| !c.keys.is_empty()) {
                Some(c) => {
                    log.warn(&format!("{e}; serving only the chained command's keys"));
                    output::emit(&c.lines())
                }
                None => Err(e),
            }
        }
    };
    let offered = audit::Offered::from_cli(cli, log);
    let decided = decide(&cfg, &login, started, log);
    let chained = finish(running);
    let chained = chained.as_ref();
    match decided {
        Ok(decided) => {
            audit::event(
                log,
                &login,
                &offered,
                Some(&decided),
                None,
                chained,
                started,
            );
            let text = match (&decided, cfg.json) {
                (Decided::Refused(why), true) => output::pretty(&output::with_chained(
                    output::render_refusal_json(&login, why),
                    chained,
                )),
                (Decided::Refused(_), false) => chained_lines(chained),
                (Decided::Answered(answer, decision), json) => {
                    let options = output::line_options(&cfg, answer);
                    if json {
                        output::pretty(&output::with_chained(
                            output::render_json(answer, &login, options.as_deref(), decision),
                            chained,
                        ))
                    } else {
                        output::render_keys(answer, &login, options.as_deref())
                            + &chained_lines(chained)
                    }
                }
            };
            output::emit(&text)
        }
        Err(e) => {
            audit::event(log, &login, &offered, None, Some(&e), chained, started);
            match chained.filter(|c| !c.keys.is_empty()) {
                // Ours failed closed; the chained command's keys still stand on their own.
                Some(c) if cfg.json => output::emit(&output::pretty(&output::with_chained(
                    output::render_failure_json(&login, &e),
                    Some(c),
                ))),
                Some(c) => output::emit(&c.lines()),
                None => Err(e),
            }
        }
    }
}

fn parse_login(cli: &Cli, cfg: &Config) -> Result<LoginName, Error> {
    let raw = cli
        .user
        .as_ref()
        .ok_or_else(|| Error::Config("no USER given".into()))?;
    let user = raw.to_str().ok_or(Error::NonUtf8User)?;
    LoginName::parse(user, cfg.name_case)
}

fn chained_lines(chained: Option<&chain::Chained>) -> String {
    chained.map(chain::Chained::lines).unwrap_or_default()
}

/// What the chained command did, for -v, and its problems for the system log (rate-limited).
fn report_chained(c: &chain::Chained, log: &Log) {
    log.info(&format!(
        "chained command {}: {} key(s), {} line(s) dropped, {}",
        c.name,
        c.keys.len(),
        c.dropped.len(),
        c.result()
    ));
    for why in &c.dropped {
        log.debug(&format!("chained command {}: dropped {why}", c.name));
    }
    if let Some(e) = &c.error {
        log.warn_limited(
            "chain",
            &c.name,
            &format!("chained command {}: {e}", c.name),
        );
    } else if let Some(first) = c.dropped.first() {
        log.warn_limited(
            "chain-dropped",
            &c.name,
            &format!(
                "chained command {}: {} line(s) dropped (first: {first})",
                c.name,
                c.dropped.len()
            ),
        );
    }
}
