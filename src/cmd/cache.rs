//! `cache show|purge|warm`: the cache as an admin sees it, through the same checks as a lookup (a record
//! that is not trusted is shown as such, never parsed into an answer).

use std::ffi::OsString;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::cache::{self, Cache};
use crate::cli::CacheCommand;
use crate::config::Config;
use crate::error::Error;
use crate::log::Log;
use crate::lookup::{self, Decided, Judgement};
use crate::output;
use crate::username::{iam_to_linux, IamUser, LoginName};

fn cache_of(cfg: &Config) -> Result<Cache, Error> {
    let dir = cfg.cache_dir.as_ref().ok_or_else(|| {
        Error::Config("the cache tools need a cache directory; drop --no-cache".into())
    })?;
    Cache::open_existing(dir)
}

fn logins(raw: &[OsString], cfg: &Config) -> Result<Vec<LoginName>, Error> {
    raw.iter()
        .map(|u| {
            u.to_str()
                .ok_or(Error::NonUtf8User)
                .and_then(|u| LoginName::parse(u, cfg.name_case))
        })
        .collect()
}

/// The IAM users a command is about: every record in the cache when `all`, else the named logins.
fn targets(
    cache: &Cache,
    users: &[OsString],
    all: bool,
    cfg: &Config,
) -> Result<Vec<IamUser>, Error> {
    if all {
        return cache.users();
    }
    Ok(logins(users, cfg)?
        .into_iter()
        .map(|l| l.iam_user().clone())
        .collect())
}

pub fn run(cmd: &CacheCommand, cfg: &Config, log: &Log) -> Result<(), Error> {
    match cmd {
        CacheCommand::Show { users } => show(users, cfg),
        CacheCommand::Purge { users, all } => purge(users, *all, cfg),
        CacheCommand::Warm { users } => warm(users, cfg, log),
    }
}

fn show(users: &[OsString], cfg: &Config) -> Result<(), Error> {
    let cache = cache_of(cfg)?;
    let targets = targets(&cache, users, users.is_empty(), cfg)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let rows: Vec<Value> = targets
        .iter()
        .map(|u| {
            let linux = iam_to_linux(u, cfg.name_case).ok();
            match cache.read(u) {
                cache::Read::Absent => json!({"iam_user": u.as_str(), "linux_login": linux, "state": "absent"}),
                cache::Read::Rejected(why) => json!({
                    "iam_user": u.as_str(), "linux_login": linux, "state": "untrusted", "reason": why,
                }),
                cache::Read::Hit(l) => {
                    let j = lookup::judge(
                        Some((l.record.fetched_at, l.record.is_negative())),
                        now,
                        &cfg.freshness,
                    );
                    let (state, age) = match j {
                        Judgement::Fresh { age } => ("fresh", age),
                        Judgement::Expired { age, servable: true } => ("expired-servable-if-iam-fails", age),
                        Judgement::Expired { age, .. } => ("too-old", age),
                        Judgement::Miss => ("future-timestamp", 0),
                    };
                    json!({
                        "iam_user": u.as_str(),
                        "linux_login": linux,
                        "state": state,
                        "age_secs": age,
                        "fetched_at": l.record.fetched_at,
                        "source": "iam",
                        "outcome": l.record.outcome,
                        "groups": l.record.groups,
                        "groups_tag": l.record.tag,
                        "keys": l.keys.iter().map(|k| json!({
                            "id": k.id,
                            "algorithm": k.key.algorithm(),
                            "fingerprint": k.key.fingerprint(),
                            "uploaded": k.uploaded,
                        })).collect::<Vec<_>>(),
                    })
                }
            }
        })
        .collect();
    let text = if cfg.json {
        let mut s = serde_json::to_string_pretty(&json!({
            "cache_dir": cache.dir(),
            "records": rows,
        }))
        .unwrap_or_else(|_| "{}".into());
        s.push('\n');
        s
    } else {
        let mut s = format!(
            "cache {}: {} record(s)\n",
            cache.dir().display(),
            rows.len()
        );
        for r in &rows {
            let name = r["iam_user"].as_str().unwrap_or("");
            let login = r["linux_login"].as_str().unwrap_or("(no Linux name)");
            match r["state"].as_str().unwrap_or("") {
                "absent" => s.push_str(&format!("{name} ({login}): no record\n")),
                "untrusted" => s.push_str(&format!(
                    "{name} ({login}): UNTRUSTED, ignored and replaced on the next lookup: {}\n",
                    r["reason"].as_str().unwrap_or("")
                )),
                state => {
                    let keys = r["keys"].as_array().cloned().unwrap_or_default();
                    s.push_str(&format!(
                        "{name} ({login}): {state}, age {}s, {} ({} key(s))\n",
                        r["age_secs"],
                        r["outcome"].as_str().unwrap_or(""),
                        keys.len()
                    ));
                    for k in keys {
                        s.push_str(&format!(
                            "  {} {} {}\n",
                            k["id"].as_str().unwrap_or(""),
                            k["algorithm"].as_str().unwrap_or(""),
                            k["fingerprint"].as_str().unwrap_or("")
                        ));
                    }
                    if r["groups"].is_array() {
                        s.push_str(&format!("  groups: {}\n", output::joined(&r["groups"])));
                    }
                    if let Some(t) = r["groups_tag"].as_object() {
                        s.push_str(&format!(
                            "  allowed by instance tag {}: {}\n",
                            t["key"].as_str().unwrap_or(""),
                            output::joined(&t["groups"])
                        ));
                    }
                }
            }
        }
        s
    };
    output::emit(&text)
}

fn purge(users: &[OsString], all: bool, cfg: &Config) -> Result<(), Error> {
    let cache = cache_of(cfg)?;
    let targets = targets(&cache, users, all, cfg)?;
    let mut removed = Vec::new();
    let mut busy = Vec::new();
    for u in &targets {
        // Under the user's lock, so a lookup in flight does not write the record back behind us. A lock
        // still held at the deadline means exactly that lookup: the record is kept, and we say so.
        match cache.lock(u, Instant::now() + cfg.timeout)? {
            Some(_lock) => {
                if cache.purge(u)? {
                    removed.push(u.as_str().to_string());
                }
            }
            None => busy.push(u.as_str().to_string()),
        }
    }
    output::emit(&if cfg.json {
        let mut s = serde_json::to_string_pretty(&json!({"removed": removed, "kept_busy": busy}))
            .unwrap_or_else(|_| "{}".into());
        s.push('\n');
        s
    } else {
        format!(
            "removed {} record(s){}{}\n",
            removed.len(),
            if removed.is_empty() { "" } else { ": " },
            removed.join(", ")
        )
    })?;
    if busy.is_empty() {
        Ok(())
    } else {
        Err(Error::LockBusy(busy.join(", ")))
    }
}

/// Fetches `login`'s answer into the cache unless fresh, through the same path as a login (account rules
/// included); the report row says `cached`, `refused` or `failed`. Also sync-users' prefetch.
pub fn warm_one(cfg: &Config, login: &LoginName, log: &Log) -> Value {
    match lookup::decide(cfg, login, Instant::now(), log) {
        Ok(Decided::Refused(why)) => json!({
            "user": login.as_str(), "result": "refused", "reason": why,
        }),
        Ok(Decided::Answered(a, decision)) => json!({
            "user": login.as_str(),
            "iam_user": login.iam_user().as_str(),
            "result": "cached",
            "source": lookup::source_name(a.source),
            "keys": a.keys.len(),
            "iam_calls": a.iam_calls,
            "decision": decision,
        }),
        Err(e) => json!({"user": login.as_str(), "result": "failed", "error": e.to_string()}),
    }
}

fn warm(users: &[OsString], cfg: &Config, log: &Log) -> Result<(), Error> {
    cache_of(cfg)?;
    let mut rows = Vec::new();
    let mut failed = 0;
    for login in logins(users, cfg)? {
        let row = warm_one(cfg, &login, log);
        if row["result"] == "failed" {
            failed += 1;
            log.error(&format!(
                "cache warm {}: {}",
                login.as_str(),
                row["error"].as_str().unwrap_or("")
            ));
        }
        rows.push(row);
    }
    output::emit(&if cfg.json {
        let mut s =
            serde_json::to_string_pretty(&json!({"warmed": rows})).unwrap_or_else(|_| "{}".into());
        s.push('\n');
        s
    } else {
        rows.iter()
            .map(|r| match r["result"].as_str() {
                Some("cached") => format!(
                    "{}: {} key(s), from {} ({} IAM call(s))\n",
                    r["user"].as_str().unwrap_or(""),
                    r["keys"],
                    r["source"].as_str().unwrap_or(""),
                    r["iam_calls"]
                ),
                Some("refused") => format!(
                    "{}: not cached, refused: {}\n",
                    r["user"].as_str().unwrap_or(""),
                    r["reason"].as_str().unwrap_or("")
                ),
                _ => format!(
                    "{}: FAILED: {}\n",
                    r["user"].as_str().unwrap_or(""),
                    r["error"].as_str().unwrap_or("")
                ),
            })
            .collect()
    })?;
    if failed > 0 {
        Err(Error::Iam(format!(
            "{failed} of {} user(s) could not be fetched",
            rows.len()
        )))
    } else {
        Ok(())
    }
}
