//! The decision: fresh cache -> IAM (one process per user at a time) -> stale within bound -> fail closed.
//! `judge` is pure and takes the clock as an argument; `decide` and `lookup` do the I/O around it. Only the
//! cold path (`ask_iam`, `with_runtime`) starts tokio or touches the SDK.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cache::{self, Cache, GroupsTag, Loaded, Outcome, Record, ServedKey};
use crate::config::{Config, Freshness};
use crate::error::Error;
use crate::iam;
use crate::log::Log;
use crate::policy::{self, Verdict};
use crate::username::LoginName;

/// How far in the future a record's timestamp may lie (clock steps) before the record is distrusted.
const MAX_CLOCK_SKEW_SECS: u64 = 5;

/// Below this much time left, starting an IAM request is pointless.
const MIN_IAM_BUDGET: Duration = Duration::from_millis(50);

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Iam,
    Stale,
}

/// What will be served.
#[derive(Debug, Clone)]
pub struct Answer {
    pub source: Source,
    pub outcome: Outcome,
    pub keys: Vec<ServedKey>,
    /// Active keys IAM listed that we refuse to serve, with the reason.
    pub refused: Vec<(String, String)>,
    pub age_secs: u64,
    pub iam_calls: u32,
    /// Unix seconds of the IAM answer.
    pub fetched_at: u64,
    /// The user's IAM groups, when the group rule asked for them.
    pub groups: Option<Vec<String>>,
    /// The group rule's verdict, when there is a group rule.
    pub group_verdict: Option<Verdict>,
    /// Under `--allowed-groups-tag`: the tag and the groups it listed when this answer was made.
    pub tag: Option<GroupsTag>,
}

impl Answer {
    /// What the answer amounts to: `keys`, `no_active_keys`, `no_such_iam_user` or `refused` (the group
    /// rule), as `--json` names it.
    pub fn result(&self) -> &'static str {
        match self.outcome {
            _ if matches!(self.group_verdict, Some(Verdict::Refused(_))) => "refused",
            Outcome::NotInAllowedGroup => "refused",
            Outcome::NoSuchUser => "no_such_iam_user",
            Outcome::Keys if self.keys.is_empty() => "no_active_keys",
            Outcome::Keys => "keys",
        }
    }
}

/// The state of a cached record at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// Serve it without asking IAM.
    Fresh { age: u64 },
    /// Ask IAM; if IAM fails, serve it only when `servable`.
    Expired { age: u64, servable: bool },
    /// Nothing usable: ask IAM; if IAM fails, fail closed.
    Miss,
}

/// Judges a record fetched at `fetched_at` (`None`: no usable record), `negative` when it holds no key.
pub fn judge(record: Option<(u64, bool)>, now: u64, f: &Freshness) -> Judgement {
    let Some((fetched_at, negative)) = record else {
        return Judgement::Miss;
    };
    if fetched_at > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
        return Judgement::Miss;
    }
    let age = now.saturating_sub(fetched_at);
    let ttl = if negative { f.negative_ttl } else { f.ttl };
    if u128::from(age) * 1000 < ttl.as_millis() {
        Judgement::Fresh { age }
    } else {
        Judgement::Expired {
            age,
            servable: u128::from(age) * 1000 < f.max_stale.as_millis(),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn judge_loaded(l: Option<&Loaded>, now: u64, f: &Freshness) -> Judgement {
    judge(
        l.map(|l| (l.record.fetched_at, l.record.is_negative())),
        now,
        f,
    )
}

fn from_cache(l: Loaded, source: Source, age: u64) -> Answer {
    Answer {
        source,
        outcome: l.record.outcome,
        keys: l.keys,
        refused: Vec::new(),
        age_secs: age,
        iam_calls: 0,
        fetched_at: l.record.fetched_at,
        groups: l.record.groups,
        group_verdict: None,
        tag: l.record.tag,
    }
}

/// Does a cached record answer the question the current configuration asks? A record fetched without the
/// group rule says nothing about groups; a group refusal under a rule that has since changed is void.
/// Under `--allowed-groups-tag` only a record made under the same tag does (it holds the tag's value then).
fn fits(record: &Record, cfg: &Config) -> bool {
    if let Some(key) = &cfg.allowed_groups_tag {
        return record.outcome == Outcome::NoSuchUser
            || record.tag.as_ref().is_some_and(|t| &t.key == key);
    }
    let allowed_groups = &cfg.allowed_groups;
    match (&record.outcome, &record.groups) {
        (Outcome::NoSuchUser, _) => true,
        (Outcome::Keys, None) => allowed_groups.is_empty(),
        (Outcome::Keys, Some(_)) => true,
        (Outcome::NotInAllowedGroup, Some(g)) => matches!(
            policy::check_groups(allowed_groups, g),
            Some(Verdict::Refused(_))
        ),
        (Outcome::NotInAllowedGroup, None) => false,
    }
}

/// Applies the group rule to an answer from IAM or the cache: a refused user keeps no key. Under
/// `--allowed-groups-tag` the allowed groups are the ones the tag listed when the answer was made; an
/// answer without them is refused.
fn apply_groups(answer: &mut Answer, cfg: &Config) {
    if answer.outcome == Outcome::NoSuchUser {
        return;
    }
    let groups = answer.groups.clone().unwrap_or_default();
    answer.group_verdict = match (&cfg.allowed_groups_tag, &answer.tag) {
        (None, _) => policy::check_groups(&cfg.allowed_groups, &groups),
        // An empty list would be "no rule" to check_groups: refused here, whatever made it.
        (Some(key), Some(t)) if &t.key == key => match policy::check_groups(&t.groups, &groups) {
            Some(Verdict::Allowed(why)) => {
                Some(Verdict::Allowed(format!("{why} (instance tag {key})")))
            }
            Some(Verdict::Refused(why)) => {
                Some(Verdict::Refused(format!("{why} (instance tag {key})")))
            }
            None => Some(Verdict::Refused(format!(
                "instance tag {key} lists no IAM group"
            ))),
        },
        (Some(key), _) => Some(Verdict::Refused(format!(
            "no value of instance tag {key} is known for this answer"
        ))),
    };
    if let Some(Verdict::Refused(_)) = answer.group_verdict {
        answer.keys.clear();
    }
}

/// What a lookup decided for an account.
#[derive(Debug)]
pub enum Decided {
    /// The local account rules refused it; no cache or IAM access happened.
    Refused(String),
    /// An answer from the cache or IAM, with the group rule applied, and the decision in words.
    Answered(Answer, String),
}

/// Account rules, then the cached/IAM answer with the group rule applied.
pub fn decide(
    cfg: &Config,
    login: &LoginName,
    started: Instant,
    log: &Log,
) -> Result<Decided, Error> {
    // Local account rules first: a refused account costs no cache read and no IAM call.
    let verdict = policy::check_account(
        login.as_str(),
        cfg.uid,
        &cfg.accounts,
        |n| policy::passwd_uid(std::path::Path::new(policy::PASSWD), n),
        || policy::login_defs_uid_max(std::path::Path::new(policy::LOGIN_DEFS)),
    );
    match verdict {
        Verdict::Refused(why) => return Ok(Decided::Refused(why)),
        Verdict::Allowed(why) => log.debug(&format!("account rule: {why}")),
    }
    let mut answer = lookup(cfg, login, started + cfg.timeout, log)?;
    apply_groups(&mut answer, cfg);
    let decision = match &answer.group_verdict {
        Some(Verdict::Refused(why)) => format!("refused: {why}"),
        Some(Verdict::Allowed(why)) => format!("allowed: {why}"),
        None => "allowed".to_string(),
    };
    Ok(Decided::Answered(answer, decision))
}

/// The name of a source in `--json`, the audit event and the cache tools.
pub fn source_name(s: Source) -> &'static str {
    match s {
        Source::Cache => "cache",
        Source::Iam => "iam",
        Source::Stale => "stale",
    }
}

/// Serves `stale` if the judgement allows it, else fails closed with `err`.
fn stale_or_fail(
    cached: Option<Loaded>,
    judgement: Judgement,
    err: Error,
    log: &Log,
) -> Result<Answer, Error> {
    match (cached, judgement) {
        (
            Some(l),
            Judgement::Expired {
                age,
                servable: true,
            },
        ) => {
            log.warn_limited(
                "stale",
                &l.record.iam_user,
                &format!(
                    "serving cached answer for {} aged {age}s because {err}",
                    l.record.iam_user
                ),
            );
            Ok(from_cache(l, Source::Stale, age))
        }
        _ => Err(err),
    }
}

pub fn lookup(
    cfg: &Config,
    login: &LoginName,
    deadline: Instant,
    log: &Log,
) -> Result<Answer, Error> {
    let user = login.iam_user();
    let cache = match &cfg.cache_dir {
        None => None,
        Some(dir) => match Cache::open(dir) {
            Ok(c) => {
                log.set_marks_dir(c.dir(), c.owner());
                Some(c)
            }
            Err(e) => {
                log.warn_limited(
                    "cache-unusable",
                    "",
                    &format!("cache not used: {e}; answering from IAM without caching"),
                );
                None
            }
        },
    };
    let read = |c: &Cache| -> Option<Loaded> {
        match c.read(user) {
            cache::Read::Hit(l) if !fits(&l.record, cfg) => {
                log.info("cached answer was made under another group rule; asking IAM");
                None
            }
            cache::Read::Hit(l) => Some(l),
            cache::Read::Absent => None,
            // A record of another format version is an upgrade, not an anomaly.
            cache::Read::Rejected(why) if why.contains("has format version") => {
                log.info(&format!("replacing cache record {why}"));
                None
            }
            cache::Read::Rejected(why) => {
                log.warn(&format!("ignoring cache record {why}; it will be replaced"));
                None
            }
        }
    };

    let mut cached = cache.as_ref().and_then(read);
    let mut judgement = judge_loaded(cached.as_ref(), unix_now(), &cfg.freshness);
    log.debug(&format!("cache for {user}: {judgement:?}"));
    if let Judgement::Fresh { age } = judgement {
        if let Some(l) = cached {
            return Ok(from_cache(l, Source::Cache, age));
        }
    }

    // Single flight: one process per user asks IAM; the others wait for its record. A lock that cannot
    // be taken at all (read-only or full filesystem) costs the single flight, never the login.
    let wait_started = unix_millis();
    let lock = match &cache {
        None => None,
        Some(c) => match take_lock(c, user, deadline, log) {
            Err(e) => {
                log.warn_limited(
                    "cache-unusable",
                    "",
                    &format!(
                        "cache lock not usable: {e}; answering from IAM without single flight"
                    ),
                );
                None
            }
            Ok(None) => {
                return stale_or_fail(
                    cached,
                    judgement,
                    Error::Deadline(cfg.timeout.as_millis()),
                    log,
                );
            }
            Ok(Some((lock, waited))) => {
                // Another process may have refreshed the record since we read it.
                cached = read(c);
                judgement = judge_loaded(cached.as_ref(), unix_now(), &cfg.freshness);
                match (cached.take(), judgement) {
                    (Some(l), Judgement::Fresh { age }) => {
                        return Ok(from_cache(l, Source::Cache, age))
                    }
                    // The process we waited for noted that IAM failed: serve what we may instead of
                    // asking again and amplifying the failure. Without that note (it got an answer but
                    // could not store it, or it was killed) we ask IAM ourselves: an expired record is
                    // served only when IAM failed to answer.
                    (
                        Some(l),
                        Judgement::Expired {
                            age,
                            servable: true,
                        },
                    ) if waited && lock.iam_failed_since(wait_started) => {
                        log.warn_limited(
                            "stale",
                            user.as_str(),
                            &format!(
                                "serving cached answer for {user} aged {age}s: IAM failed for the lookup we waited for"
                            ),
                        );
                        return Ok(from_cache(l, Source::Stale, age));
                    }
                    (l, _) => {
                        if waited {
                            log.info(&format!(
                                "the lookup of {user} we waited for left no fresh record and no IAM failure; asking IAM"
                            ));
                        }
                        cached = l;
                    }
                }
                Some(lock)
            }
        },
    };

    let known: HashMap<String, ServedKey> = cached
        .as_ref()
        .map(|l| l.keys.iter().map(|k| (k.id.clone(), k.clone())).collect())
        .unwrap_or_default();
    // The groups tag as instance metadata gave it during this lookup, even when IAM then failed.
    let fresh_tag = std::cell::RefCell::new(None);
    match ask_iam(cfg, login, &known, deadline, log, &fresh_tag) {
        Ok((mut fetched, tag)) => {
            if let Some(why) = exact_name_rule(cfg.name_case, user, &mut fetched) {
                log.warn_limited("name-case", user.as_str(), &why);
            }
            for (id, why) in &fetched.rejected {
                log.warn_limited(
                    &format!("rejected-key {id}"),
                    user.as_str(),
                    &format!("IAM key {id} of {user} not served: {why}"),
                );
            }
            let record = Record {
                version: cache::FORMAT_VERSION,
                iam_user: user.as_str().to_string(),
                fetched_at: unix_now(),
                outcome: fetched.outcome.clone(),
                keys: fetched.keys.iter().map(ServedKey::stored).collect(),
                groups: fetched.groups.clone(),
                tag: tag.clone(),
            };
            if let Some(c) = &cache {
                if let Err(e) = c.store(&record) {
                    log.warn_limited(
                        "cache-write",
                        user.as_str(),
                        &format!("could not write cache record: {e}"),
                    );
                }
            }
            Ok(Answer {
                source: Source::Iam,
                outcome: fetched.outcome,
                keys: fetched.keys,
                refused: fetched.rejected,
                age_secs: 0,
                iam_calls: fetched.calls,
                fetched_at: record.fetched_at,
                groups: fetched.groups,
                group_verdict: None,
                tag,
            })
        }
        // Instance metadata answered that the tag rule cannot be met: fail closed, nothing stale, and
        // the record goes, so that no later outage (of IMDS, the credentials or IAM) serves it again.
        Err(e @ Error::InstanceTag { settled: true, .. }) => {
            if let Some(c) = &cache {
                if let Err(pe) = c.purge(user) {
                    log.warn_limited(
                        "cache-write",
                        user.as_str(),
                        &format!("could not remove the cache record of {user}: {pe}"),
                    );
                }
            }
            Err(e)
        }
        Err(e) => {
            // IAM failed after the tag was read: a stale answer is judged by the tag as it is now, and
            // the record keeps that value (its age unchanged) for the lookups waiting on this one.
            if let (Some(t), Some(l)) = (fresh_tag.into_inner(), cached.as_mut()) {
                if l.record.tag.as_ref() != Some(&t) {
                    log.info(&format!(
                        "instance tag {} changed to {}; a cached answer is judged by the new value",
                        t.key,
                        t.groups.join(", ")
                    ));
                    l.record.tag = Some(t);
                    if let Some(c) = &cache {
                        if let Err(we) = c.store(&l.record) {
                            log.warn_limited(
                                "cache-write",
                                user.as_str(),
                                &format!("could not write cache record: {we}"),
                            );
                        }
                    }
                }
            }
            if let Some(l) = &lock {
                l.note_iam_failure(unix_millis());
            }
            stale_or_fail(cached, judgement, e, log)
        }
    }
}

/// Under `--name-case preserve`, Linux `alice` and `Alice` are two accounts, but IAM finds user `Alice`
/// by either spelling (its names are unique regardless of case). An answer whose key metadata spells the
/// user otherwise than the login asked is therefore not this login's: it becomes "no such IAM user"
/// (cached as a negative answer). Under `fold` every Linux name is lower case and maps to one IAM user,
/// so IAM's spelling does not matter.
fn exact_name_rule(
    case: crate::username::NameCase,
    user: &crate::username::IamUser,
    fetched: &mut iam::Fetched,
) -> Option<String> {
    let spelled = fetched.iam_name.as_deref()?;
    if case != crate::username::NameCase::Preserve || spelled == user.as_str() {
        return None;
    }
    let why = format!(
        "IAM spells this user {}, not {user}: under --name-case preserve only the Linux account {} is served from it",
        crate::username::sanitize(spelled),
        crate::username::sanitize(spelled)
    );
    fetched.outcome = Outcome::NoSuchUser;
    fetched.keys.clear();
    fetched.rejected.clear();
    fetched.groups = None;
    Some(why)
}

/// Takes `user`'s lock, waiting until `deadline` when another process holds it. `Ok(None)`: still held
/// at the deadline; the flag says whether we waited.
fn take_lock(
    c: &Cache,
    user: &crate::username::IamUser,
    deadline: Instant,
    log: &Log,
) -> Result<Option<(crate::fsutil::Lock, bool)>, Error> {
    if let Some(l) = c.lock(user, Instant::now())? {
        return Ok(Some((l, false)));
    }
    log.info(&format!(
        "another lookup of {user} is running; waiting for it"
    ));
    Ok(c.lock(user, deadline)?.map(|l| (l, true)))
}

/// The cold path: a one-thread runtime, the SDK, a hard deadline over all of it. Under
/// `--allowed-groups-tag` the tag is read from instance metadata first; its groups are the rule.
fn ask_iam(
    cfg: &Config,
    login: &LoginName,
    known: &HashMap<String, ServedKey>,
    deadline: Instant,
    log: &Log,
    fresh_tag: &std::cell::RefCell<Option<GroupsTag>>,
) -> Result<(iam::Fetched, Option<GroupsTag>), Error> {
    let budget = deadline.saturating_duration_since(Instant::now());
    if budget < MIN_IAM_BUDGET {
        return Err(Error::Deadline(cfg.timeout.as_millis()));
    }
    let result = with_runtime(cfg, budget, async {
        let c = iam::connect(cfg, budget).await?;
        for line in &c.trace {
            log.debug(line);
        }
        let tag = match &cfg.allowed_groups_tag {
            Some(key) => {
                let t =
                    crate::credentials::groups_tag(&c.imds, key, "--allowed-groups-tag", deadline)
                        .await?;
                log.info(&format!(
                    "allowed IAM groups from instance tag {key}: {}",
                    t.groups.join(", ")
                ));
                *fresh_tag.borrow_mut() = Some(t.clone());
                Some(t)
            }
            None => None,
        };
        let allowed = tag.as_ref().map_or(&cfg.allowed_groups[..], |t| &t.groups);
        let fetched = iam::fetch(&c.client, login.iam_user(), known, allowed).await?;
        Ok((fetched, tag))
    });
    // The one-line message names the cause; the whole story (each chain step, each IMDS request) is -vv.
    if let Err(Error::Credentials { detail, .. }) = &result {
        log.debug(detail);
    }
    result
}

/// Runs `work` on a one-thread runtime under a hard deadline of `budget` (the cold path only).
pub fn with_runtime<T>(
    cfg: &Config,
    budget: Duration,
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Iam(format!("cannot start the async runtime: {e}")))?;
    let result = rt.block_on(async { tokio::time::timeout(budget, work).await });
    // Do not wait for stuck resolver threads or connections: the deadline is the deadline.
    rt.shutdown_background();
    match result {
        Ok(r) => r,
        Err(_) => Err(Error::Deadline(cfg.timeout.as_millis())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(ttl: u64, neg: u64, stale: u64) -> Freshness {
        Freshness {
            ttl: Duration::from_secs(ttl),
            negative_ttl: Duration::from_secs(neg),
            max_stale: Duration::from_secs(stale),
        }
    }

    #[test]
    fn judgement_table() {
        use Judgement::*;
        let std = f(300, 60, 3600);
        let now = 100_000;
        type Case = (Option<(u64, bool)>, Freshness, Judgement);
        let cases: &[Case] = &[
            (None, std, Miss),
            (Some((now, false)), std, Fresh { age: 0 }),
            (Some((now - 299, false)), std, Fresh { age: 299 }),
            (
                Some((now - 300, false)),
                std,
                Expired {
                    age: 300,
                    servable: true,
                },
            ),
            (
                Some((now - 3599, false)),
                std,
                Expired {
                    age: 3599,
                    servable: true,
                },
            ),
            (
                Some((now - 3600, false)),
                std,
                Expired {
                    age: 3600,
                    servable: false,
                },
            ),
            (Some((now - 59, true)), std, Fresh { age: 59 }),
            (
                Some((now - 60, true)),
                std,
                Expired {
                    age: 60,
                    servable: true,
                },
            ),
            (
                Some((now - 400, false)),
                f(300, 60, 0),
                Expired {
                    age: 400,
                    servable: false,
                },
            ),
            (
                Some((now - 10, false)),
                f(0, 0, 3600),
                Expired {
                    age: 10,
                    servable: true,
                },
            ),
            (Some((now + 3, false)), std, Fresh { age: 0 }),
            (Some((now + 6, false)), std, Miss),
            (Some((u64::MAX, false)), std, Miss),
            (
                Some((0, false)),
                std,
                Expired {
                    age: now,
                    servable: false,
                },
            ),
        ];
        for (rec, fr, want) in cases {
            assert_eq!(judge(*rec, now, fr), *want, "{rec:?} {fr:?}");
        }
    }

    fn config(args: &[&str]) -> Config {
        use clap::Parser;
        let mut v = vec!["iak"];
        v.extend_from_slice(args);
        v.push("alice");
        Config::build(
            &crate::cli::Cli::try_parse_from(v).expect("cli").opts,
            &crate::config::Env::default(),
        )
        .expect("config")
    }

    /// Under --allowed-groups-tag a cached answer is used only when it was made under the same tag, and
    /// the groups the tag listed then are the rule; an answer without them is refused, never allowed.
    #[test]
    fn groups_tag_rule_on_cached_answers() {
        let tagged = config(&["--allowed-groups-tag", "ssh-groups"]);
        let other_tag = config(&["--allowed-groups-tag", "other"]);
        let fixed = config(&["--allowed-group", "ops"]);
        let none = config(&[]);
        let tag = |groups: &[&str]| GroupsTag {
            key: "ssh-groups".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        let record = |outcome: Outcome, groups: Option<&[&str]>, tag: Option<GroupsTag>| Record {
            version: cache::FORMAT_VERSION,
            iam_user: "alice".into(),
            fetched_at: 1,
            outcome,
            keys: Vec::new(),
            groups: groups.map(|g| g.iter().map(|x| x.to_string()).collect()),
            tag,
        };
        let member = record(Outcome::Keys, Some(&["ops"]), Some(tag(&["ops", "dev"])));
        let refused = record(
            Outcome::NotInAllowedGroup,
            Some(&["sales"]),
            Some(tag(&["ops"])),
        );
        let untagged = record(Outcome::Keys, Some(&["ops"]), None);
        let plain = record(Outcome::Keys, None, None);
        let nobody = record(Outcome::NoSuchUser, None, None);
        type Case<'a> = (&'a Record, &'a Config, bool);
        let cases: &[Case] = &[
            (&member, &tagged, true),
            (&refused, &tagged, true),
            (&member, &other_tag, false),
            (&untagged, &tagged, false),
            (&plain, &tagged, false),
            (&nobody, &tagged, true),
            (&member, &fixed, true),
            (&plain, &none, true),
            (&plain, &fixed, false),
        ];
        for (rec, cfg, want) in cases {
            assert_eq!(
                fits(rec, cfg),
                *want,
                "{rec:?} {:?}",
                cfg.allowed_groups_tag
            );
        }

        let key = crate::keys::canonicalize(include_str!("../tests/fixtures/ed25519.pub"))
            .expect("fixture");
        let answer = |groups: &[&str], tag: Option<GroupsTag>| Answer {
            source: Source::Cache,
            outcome: Outcome::Keys,
            keys: vec![ServedKey {
                id: "APKA1".into(),
                key: key.clone(),
                uploaded: None,
            }],
            refused: Vec::new(),
            age_secs: 0,
            iam_calls: 0,
            fetched_at: 1,
            groups: Some(groups.iter().map(|g| g.to_string()).collect()),
            group_verdict: None,
            tag,
        };
        let mut a = answer(&["dev"], Some(tag(&["ops", "dev"])));
        apply_groups(&mut a, &tagged);
        assert!(
            matches!(&a.group_verdict, Some(Verdict::Allowed(w)) if w.contains("instance tag ssh-groups"))
        );
        assert_eq!(a.keys.len(), 1);
        let mut a = answer(&["sales"], Some(tag(&["ops", "dev"])));
        apply_groups(&mut a, &tagged);
        assert!(matches!(&a.group_verdict, Some(Verdict::Refused(_))));
        assert!(a.keys.is_empty());
        // A tag that lists nothing (parsing never produces one) is no rule: refused, not allowed.
        let mut a = answer(&["ops"], Some(tag(&[])));
        apply_groups(&mut a, &tagged);
        assert!(
            matches!(&a.group_verdict, Some(Verdict::Refused(w)) if w.contains("lists no IAM group"))
        );
        assert!(a.keys.is_empty());
        // No tag value known (never produced by lookup, refused all the same).
        let mut a = answer(&["ops"], None);
        apply_groups(&mut a, &tagged);
        assert!(matches!(&a.group_verdict, Some(Verdict::Refused(w)) if w.contains("no value")));
        assert!(a.keys.is_empty());
        // The static rule ignores the tag a record was made under.
        let mut a = answer(&["ops"], Some(tag(&["dev"])));
        apply_groups(&mut a, &fixed);
        assert!(matches!(&a.group_verdict, Some(Verdict::Allowed(_))));
    }

    #[test]
    fn finding_11_preserve_serves_an_iam_user_only_to_its_exact_spelling() {
        use crate::username::{IamUser, NameCase};
        let key = crate::keys::canonicalize(include_str!("../tests/fixtures/ed25519.pub"))
            .expect("fixture");
        let fetched = |name: Option<&str>| iam::Fetched {
            outcome: Outcome::Keys,
            keys: vec![ServedKey {
                id: "APKA1".into(),
                key: key.clone(),
                uploaded: None,
            }],
            rejected: Vec::new(),
            calls: 1,
            groups: None,
            iam_name: name.map(str::to_string),
        };
        let lower = IamUser::parse("alice").expect("name");
        let upper = IamUser::parse("Alice").expect("name");
        type Case<'a> = (NameCase, &'a IamUser, Option<&'a str>, bool);
        let cases: &[Case] = &[
            (NameCase::Preserve, &lower, Some("Alice"), false),
            (NameCase::Preserve, &upper, Some("Alice"), true),
            (NameCase::Preserve, &lower, Some("alice"), true),
            (NameCase::Preserve, &lower, None, true),
            (NameCase::Fold, &lower, Some("Alice"), true),
        ];
        for (case, user, spelled, served) in cases {
            let mut f = fetched(*spelled);
            let why = exact_name_rule(*case, user, &mut f);
            assert_eq!(!f.keys.is_empty(), *served, "{case:?} {user} {spelled:?}");
            assert_eq!(why.is_none(), *served);
            if !served {
                assert_eq!(f.outcome, Outcome::NoSuchUser);
            }
        }
    }
}
