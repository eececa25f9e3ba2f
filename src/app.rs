//! Dispatch: the parsed command line becomes a `Config`, then either the key lookup (sshd's invocation) or
//! one admin command. The lookup decision itself lives in `lookup`.

use std::time::Instant;

use crate::cli::{Cli, Command};
use crate::config::{Config, Env};
use crate::error::Error;
use crate::log::{Log, Priority};
use crate::lookup::{decide, source_name, Answer, Decided, Source};
use crate::username::{sanitize, LoginName};
use crate::{keyopts, output};

/// The audit arguments sshd passes with `%f %t`, checked before they reach a log line.
#[derive(Debug, Default)]
pub struct Offered {
    pub fingerprint: Option<String>,
    pub key_type: Option<String>,
}

impl Offered {
    fn from_cli(cli: &Cli, log: &Log) -> Offered {
        let check = |raw: &Option<std::ffi::OsString>, what: &str, ok: fn(&str) -> bool| {
            let raw = raw.as_ref()?;
            match raw.to_str().filter(|s| ok(s)) {
                Some(s) => Some(s.to_string()),
                None => {
                    log.warn(&format!(
                        "ignoring offered key {what} {:?}: not what sshd's %{} gives",
                        sanitize(&raw.to_string_lossy()),
                        if what == "type" { 't' } else { 'f' }
                    ));
                    None
                }
            }
        };
        Offered {
            fingerprint: check(&cli.offered_fingerprint, "fingerprint", |s| {
                s.len() <= 100
                    && (s.starts_with("SHA256:") || s.starts_with("MD5:"))
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+/=:".contains(&b))
            }),
            key_type: check(&cli.offered_type, "type", |s| {
                (1..=64).contains(&s.len())
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"@.-".contains(&b))
            }),
        }
    }
}

/// Options put before every key line: the configured ones, and the expiry when asked for.
fn line_options(cfg: &Config, answer: &Answer) -> Option<String> {
    let expiry = cfg.key_expiry.then(|| {
        let last = cfg.freshness.ttl.max(cfg.freshness.max_stale).as_secs();
        format!(
            "expiry-time=\"{}\"",
            keyopts::expiry_stamp(answer.fetched_at.saturating_add(last))
        )
    });
    match (cfg.key_options.as_ref().map(|o| o.as_str()), expiry) {
        (Some(o), Some(e)) => Some(format!("{o},{e}")),
        (Some(o), None) => Some(o.to_string()),
        (None, e) => e,
    }
}

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
        Some(Command::Doctor(args)) => return crate::doctor::run(args, &cfg, log),
        Some(Command::Cache(args)) => return crate::cachecmd::run(args, &cfg, log),
        Some(Command::SyncUsers(args)) => return crate::sync::run(args, &cfg, log),
        Some(Command::Completions { shell }) => return crate::docs::completions(*shell),
        Some(Command::Man) => return crate::docs::man(),
        None => {}
    }
    let raw = cli
        .user
        .as_ref()
        .ok_or_else(|| Error::Config("no USER given".into()))?;
    let user = raw.to_str().ok_or(Error::NonUtf8User)?;
    let login = LoginName::parse(user, cfg.name_case)?;
    let offered = Offered::from_cli(cli, log);
    match decide(&cfg, &login, started, log) {
        Ok(decided) => {
            audit(log, &login, &offered, Some(&decided), None, started);
            let text = match (&decided, cfg.json) {
                (Decided::Refused(why), true) => output::render_refusal_json(&login, why),
                (Decided::Refused(_), false) => String::new(),
                (Decided::Answered(answer, decision), json) => {
                    let options = line_options(&cfg, answer);
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
            audit(log, &login, &offered, None, Some(&e), started);
            Err(e)
        }
    }
}

/// The one audit event of a lookup: journald fields (or syslog), and the -v summary on stderr.
fn audit(
    log: &Log,
    login: &LoginName,
    offered: &Offered,
    decided: Option<&Decided>,
    failed: Option<&Error>,
    started: Instant,
) {
    let ms = started.elapsed().as_millis().to_string();
    let mut f: Vec<(&str, String)> = vec![
        ("IAK_USER", login.as_str().to_string()),
        ("IAK_IAM_USER", login.iam_user().as_str().to_string()),
        ("IAK_DURATION_MS", ms.clone()),
    ];
    if let Some(fp) = &offered.fingerprint {
        f.push(("IAK_OFFERED_FP", fp.clone()));
    }
    if let Some(t) = &offered.key_type {
        f.push(("IAK_OFFERED_TYPE", t.clone()));
    }
    let offered_text = |hit: Option<&str>, n: usize| match (&offered.fingerprint, hit) {
        (None, _) => String::new(),
        (Some(fp), Some(id)) => format!("; offered key {fp} served as IAM key {id}"),
        (Some(fp), None) => format!("; offered key {fp} not among the {n} served key(s)"),
    };
    let (priority, msg) = match (decided, failed) {
        (Some(Decided::Refused(why)), _) => {
            f.extend([
                ("IAK_RESULT", "refused".to_string()),
                ("IAK_SOURCE", "policy".to_string()),
                ("IAK_KEYS", "0".to_string()),
                ("IAK_DECISION", format!("refused: {why}")),
            ]);
            (
                Priority::Info,
                format!("refused {}: {why}{}", login.as_str(), offered_text(None, 0)),
            )
        }
        (Some(Decided::Answered(a, decision)), _) => {
            let hit = offered.fingerprint.as_ref().and_then(|fp| {
                a.keys
                    .iter()
                    .find(|k| &k.key.fingerprint() == fp)
                    .map(|k| k.id.clone())
            });
            // The audit log's word for an answer with keys is "served".
            let result = match a.result() {
                "keys" => "served",
                other => other,
            };
            f.extend([
                ("IAK_RESULT", result.to_string()),
                ("IAK_SOURCE", source_name(a.source).to_string()),
                ("IAK_KEYS", a.keys.len().to_string()),
                (
                    "IAK_KEY_IDS",
                    a.keys
                        .iter()
                        .map(|k| k.id.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                ("IAK_AGE_S", a.age_secs.to_string()),
                ("IAK_IAM_CALLS", a.iam_calls.to_string()),
                ("IAK_DECISION", decision.clone()),
            ]);
            if offered.fingerprint.is_some() {
                f.push(("IAK_OFFERED_MATCH", hit.clone().unwrap_or("none".into())));
            }
            (
                if a.source == Source::Stale {
                    Priority::Warning
                } else {
                    Priority::Info
                },
                format!(
                    "{} key(s) for {} (IAM user {}) from {}, age {}s, {} IAM call(s), {ms} ms; {decision}{}",
                    a.keys.len(),
                    login.as_str(),
                    login.iam_user(),
                    match a.source {
                        Source::Cache => "cache",
                        Source::Iam => "IAM",
                        Source::Stale => "stale cache",
                    },
                    a.age_secs,
                    a.iam_calls,
                    offered_text(hit.as_deref(), a.keys.len())
                ),
            )
        }
        (None, e) => {
            let e = e.map(ToString::to_string).unwrap_or_default();
            f.extend([
                ("IAK_RESULT", "failed".to_string()),
                ("IAK_SOURCE", "none".to_string()),
                ("IAK_KEYS", "0".to_string()),
                ("IAK_ERROR", e.clone()),
            ]);
            (
                Priority::Err,
                format!("no keys for {}: {e}", login.as_str()),
            )
        }
    };
    let fields: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
    log.event(priority, &msg, &fields);
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

