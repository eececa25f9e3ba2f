//! The audit event of a lookup: one journald entry (IAK_* fields) or syslog line per lookup, and the -v
//! summary on stderr. The offered key (`%f %t`) is checked here before it reaches a log line.

use std::time::Instant;

use crate::chain::Chained;
use crate::cli::Cli;
use crate::error::Error;
use crate::log::{Log, Priority};
use crate::lookup::{source_name, Decided, Source};
use crate::username::{sanitize, LoginName};

/// The audit arguments sshd passes with `%f %t`, checked before they reach a log line.
#[derive(Debug, Default)]
pub struct Offered {
    pub fingerprint: Option<String>,
    pub key_type: Option<String>,
}

impl Offered {
    pub fn from_cli(cli: &Cli, log: &Log) -> Offered {
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

/// The one audit event of a lookup: journald fields (or syslog), and the -v summary on stderr.
pub fn event(
    log: &Log,
    login: &LoginName,
    offered: &Offered,
    decided: Option<&Decided>,
    failed: Option<&Error>,
    chained: Option<&Chained>,
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
    let mut msg = msg;
    if let Some(c) = chained {
        let hit = offered
            .fingerprint
            .as_ref()
            .is_some_and(|fp| c.keys.iter().any(|k| &k.key.fingerprint() == fp));
        f.extend([
            ("IAK_CHAIN", c.name.clone()),
            ("IAK_CHAIN_RESULT", c.result().to_string()),
            ("IAK_CHAIN_KEYS", c.keys.len().to_string()),
            ("IAK_CHAIN_DROPPED", c.dropped.len().to_string()),
        ]);
        if hit {
            let by_chain = format!("chain:{}", c.name);
            match f.iter_mut().find(|(k, _)| *k == "IAK_OFFERED_MATCH") {
                Some(m) if m.1 == "none" => m.1 = by_chain,
                Some(_) => {}
                None => f.push(("IAK_OFFERED_MATCH", by_chain)),
            }
        }
        msg.push_str(&format!(
            "; chained {}: {} key(s), {}{}",
            c.name,
            c.keys.len(),
            c.result(),
            if hit { ", offered key among them" } else { "" }
        ));
    }
    let fields: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
    log.event(priority, &msg, &fields);
}
