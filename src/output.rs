//! The only writer to stdout. In normal mode stdout is authorized_keys: only canonical keys, our own comment.
//! A closed pipe (sshd stopped reading) is not a crash.

use std::io::{ErrorKind, Write};

use serde_json::json;

use crate::app::{Answer, Source};
use crate::cache::Outcome;
use crate::error::Error;
use crate::username::LoginName;

/// One authorized_keys line: `<algorithm> <base64> iam:<iam-user>:<key-id>`.
pub fn key_line(key: &crate::cache::ServedKey, iam_user: &str) -> String {
    format!("{} iam:{}:{}\n", key.key.as_str(), iam_user, key.id)
}

pub fn render_keys(answer: &Answer, login: &LoginName) -> String {
    answer
        .keys
        .iter()
        .map(|k| key_line(k, login.iam_user().as_str()))
        .collect()
}

pub fn render_json(answer: &Answer, login: &LoginName) -> String {
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
                "line": key_line(k, login.iam_user().as_str()).trim_end(),
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
        "result": match answer.outcome {
            Outcome::Keys if answer.keys.is_empty() => "no_active_keys",
            Outcome::Keys => "keys",
            Outcome::NoSuchUser => "no_such_iam_user",
        },
        "source": match answer.source {
            Source::Cache => "cache",
            Source::Iam => "iam",
            Source::Stale => "stale",
        },
        "age_secs": answer.age_secs,
        "iam_calls": answer.iam_calls,
        "keys": keys,
        "refused": refused,
    });
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".to_string());
    s.push('\n');
    s
}

/// Writes `text` to stdout in one locked write.
pub fn emit(text: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(Error::Stdout),
    }
}
