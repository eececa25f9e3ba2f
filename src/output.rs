//! The only writer to stdout. In normal mode stdout is authorized_keys: only canonical keys, our own comment.
//! A closed pipe (sshd stopped reading) is not a crash.

use std::io::{ErrorKind, Write};

use serde_json::json;

use crate::config::Config;
use crate::error::Error;
use crate::keyopts;
use crate::lookup::Answer;
use crate::username::LoginName;

/// One authorized_keys line: `[<options> ]<algorithm> <base64> iam:<iam-user>:<key-id>`. Options come
/// only from our checked configuration.
pub fn key_line(key: &crate::cache::ServedKey, iam_user: &str, options: Option<&str>) -> String {
    match options {
        Some(o) => format!("{o} {} iam:{}:{}\n", key.key.as_str(), iam_user, key.id),
        None => format!("{} iam:{}:{}\n", key.key.as_str(), iam_user, key.id),
    }
}

/// Options put before every key line: the configured ones, and the expiry when asked for.
pub fn line_options(cfg: &Config, answer: &Answer) -> Option<String> {
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

pub fn render_keys(answer: &Answer, login: &LoginName, options: Option<&str>) -> String {
    answer
        .keys
        .iter()
        .map(|k| key_line(k, login.iam_user().as_str(), options))
        .collect()
}

pub fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| "{}".to_string());
    s.push('\n');
    s
}

/// `--json` for an account the local rules refuse (no IAM call was made).
pub fn render_refusal_json(login: &LoginName, why: &str) -> serde_json::Value {
    json!({
        "user": login.as_str(),
        "iam_user": login.iam_user().as_str(),
        "result": "refused",
        "decision": format!("refused: {why}"),
        "source": "policy",
        "iam_calls": 0,
        "keys": [],
    })
}

/// `--json` when our lookup failed but a chained command answered (its keys are served alone).
pub fn render_failure_json(login: &LoginName, err: &Error) -> serde_json::Value {
    json!({
        "user": login.as_str(),
        "iam_user": login.iam_user().as_str(),
        "result": "failed",
        "error": err.to_string(),
        "source": "none",
        "keys": [],
    })
}

/// Adds what the chained command gave (`chained`: its result, keys with their lines, dropped lines).
pub fn with_chained(
    mut v: serde_json::Value,
    chained: Option<&crate::chain::Chained>,
) -> serde_json::Value {
    if let (Some(c), Some(obj)) = (chained, v.as_object_mut()) {
        let keys: Vec<_> = c
            .keys
            .iter()
            .map(|k| {
                json!({
                    "algorithm": k.key.algorithm(),
                    "fingerprint": k.key.fingerprint(),
                    "options": k.options.as_ref().map(|o| o.as_str()),
                })
            })
            .collect();
        obj.insert(
            "chained".into(),
            json!({
                "command": c.name,
                "result": c.result(),
                "error": c.error,
                "keys": keys,
                "dropped": c.dropped,
                "lines": c.lines().lines().collect::<Vec<_>>(),
            }),
        );
    }
    v
}

/// One row of `map`: the name, its reading as a Linux name, its reading as an IAM name.
pub type MapRow = (String, Result<String, String>, Result<String, String>);

pub fn render_map(rows: &[MapRow]) -> String {
    let mut out = String::new();
    for (name, as_linux, as_iam) in rows {
        out.push_str(name);
        out.push('\n');
        match as_linux {
            Ok(iam) => out.push_str(&format!("  Linux login {name} -> IAM user {iam}\n")),
            Err(e) => out.push_str(&format!("  as a Linux login: none: {e}\n")),
        }
        match as_iam {
            Ok(linux) => out.push_str(&format!("  IAM user {name} -> Linux login {linux}\n")),
            Err(e) => out.push_str(&format!("  as an IAM user: none: {e}\n")),
        }
    }
    out
}

pub fn render_map_json(rows: &[MapRow]) -> String {
    let side = |r: &Result<String, String>, key: &str| match r {
        Ok(v) => json!({ key: v }),
        Err(e) => json!({ "error": e }),
    };
    let v: Vec<_> = rows
        .iter()
        .map(|(name, a, b)| {
            json!({
                "name": name,
                "as_linux_login": side(a, "iam_user"),
                "as_iam_user": side(b, "linux_login"),
            })
        })
        .collect();
    pretty(&serde_json::Value::Array(v))
}

pub fn render_json(
    answer: &Answer,
    login: &LoginName,
    options: Option<&str>,
    decision: &str,
) -> serde_json::Value {
    let keys: Vec<_> = answer
        .keys
        .iter()
        .map(|k| {
            json!({
                "id": k.id,
                "status": "Active",
                "algorithm": k.key.algorithm(),
                "fingerprint": k.key.fingerprint(),
                "uploaded": k.uploaded,
                "line": key_line(k, login.iam_user().as_str(), options).trim_end(),
            })
        })
        .collect();
    let refused: Vec<_> = answer
        .refused
        .iter()
        .map(|(id, why)| json!({"id": id, "reason": why}))
        .collect();
    let v = json!({
        "user": login.as_str(),
        "iam_user": login.iam_user().as_str(),
        "result": answer.result(),
        "source": crate::lookup::source_name(answer.source),
        "age_secs": answer.age_secs,
        "iam_calls": answer.iam_calls,
        "decision": decision,
        "groups": answer.groups,
        "groups_tag": answer.tag,
        "options": options,
        "keys": keys,
        "rejected_keys": refused,
    });
    v
}

/// The strings of a JSON array, `, `-separated (anything else in it, or a non-array: left out), for the
/// text renderings of reports built as JSON.
pub fn joined(v: &serde_json::Value) -> String {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes `text` to stdout in one locked write.
pub fn emit(text: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(Error::Stdout),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn joined_takes_the_strings_of_an_array() {
        use serde_json::json;
        assert_eq!(super::joined(&json!(["ops", "dev"])), "ops, dev");
        assert_eq!(super::joined(&json!(["ops", 1, null, "dev"])), "ops, dev");
        assert_eq!(super::joined(&json!([])), "");
        assert_eq!(super::joined(&json!(null)), "");
        assert_eq!(super::joined(&json!("ops")), "");
    }
}
