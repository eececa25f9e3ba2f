//! The on-disk cache: one versioned JSON record per IAM user. A record that is missing, unsafe, corrupt,
//! of another version or for another user is a miss; the reason is reported so it can be logged.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::fsutil;
use crate::keys::{self, CanonicalKey};
use crate::username::IamUser;

/// Bumped whenever the record layout changes; other versions are misses and get rewritten.
pub const FORMAT_VERSION: u32 = 2;

/// What IAM said about a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The user exists; `keys` holds its active keys (possibly none).
    Keys,
    /// IAM answered NoSuchEntity.
    NoSuchUser,
    /// The user is in none of the allowed IAM groups; no key body was fetched.
    NotInAllowedGroup,
}

/// One active key as stored. `key` is canonical text; it is parsed again on every read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    pub id: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub version: u32,
    pub iam_user: String,
    /// Unix seconds of the IAM answer this record holds.
    pub fetched_at: u64,
    pub outcome: Outcome,
    #[serde(default)]
    pub keys: Vec<StoredKey>,
    /// The user's IAM groups, when the group rule asked for them (`None`: not asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// The instance tag that named the allowed groups when this answer was made (`--allowed-groups-tag`),
    /// and what it said then: re-read with every IAM answer, so a tag change takes effect within the TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<GroupsTag>,
}

/// An instance tag's key and the IAM groups its value listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupsTag {
    pub key: String,
    pub groups: Vec<String>,
}

/// An instance tag key as instance metadata shows it: 1-128 letters, digits and `+-=.,_:@`, not `.`,
/// `..` or `_index` (EC2 keeps other keys out of instance metadata).
pub fn valid_tag_key(key: &str) -> bool {
    (1..=128).contains(&key.len())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-=.,_:@".contains(c))
        && !matches!(key, "." | ".." | "_index")
}

/// A tag value as a list of IAM groups: comma-separated names, blanks around them ignored. An empty
/// list or an entry that is not an IAM group name is an error naming it.
pub fn parse_groups_tag(value: &str) -> Result<Vec<String>, String> {
    let mut groups: Vec<String> = Vec::new();
    for entry in value.split(',').map(str::trim) {
        if entry.is_empty() {
            continue;
        }
        if !valid_group(entry) {
            return Err(format!(
                "{:?} is not an IAM group name (1-128 letters, digits and _+=.@-)",
                crate::username::sanitize(entry)
            ));
        }
        if !groups.iter().any(|g| g.eq_ignore_ascii_case(entry)) {
            groups.push(entry.to_string());
        }
    }
    if groups.is_empty() {
        return Err("lists no IAM group".to_string());
    }
    Ok(groups)
}

impl Record {
    /// A negative answer (no such user, no active key, not in an allowed group) is kept for the shorter
    /// negative TTL.
    pub fn is_negative(&self) -> bool {
        self.outcome != Outcome::Keys || self.keys.is_empty()
    }
}

/// An IAM group name as IAM allows it: 1-128 of letters, digits and `_+=,.@-`.
pub fn valid_group(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
}

/// A key ready to serve: canonical, with its IAM id and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedKey {
    pub id: String,
    pub key: CanonicalKey,
    pub uploaded: Option<String>,
}

impl ServedKey {
    pub fn stored(&self) -> StoredKey {
        StoredKey {
            id: self.id.clone(),
            key: self.key.as_str().to_string(),
            uploaded: self.uploaded.clone(),
        }
    }
}

/// A record that passed every check, with its keys re-parsed.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub record: Record,
    pub keys: Vec<ServedKey>,
}

/// Parses and checks a record's bytes for `user`. Every key is canonicalised again: a record that holds
/// anything we would not have written is refused whole.
pub fn parse(bytes: &[u8], user: &IamUser) -> Result<Loaded, String> {
    #[derive(Deserialize)]
    struct Probe {
        version: u32,
    }
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| format!("does not parse as a record: {e}"))?;
    if probe.version != FORMAT_VERSION {
        return Err(format!(
            "has format version {}, this build reads {FORMAT_VERSION}",
            probe.version
        ));
    }
    let record: Record =
        serde_json::from_slice(bytes).map_err(|e| format!("does not parse as a record: {e}"))?;
    if record.iam_user != user.as_str() {
        return Err(format!(
            "is for IAM user {:?}, not {user}",
            crate::username::sanitize(&record.iam_user)
        ));
    }
    if record.outcome != Outcome::Keys && !record.keys.is_empty() {
        return Err("holds keys for a user it says gets none".to_string());
    }
    if record.outcome == Outcome::NotInAllowedGroup && record.groups.is_none() {
        return Err("refuses the user by group without naming the groups".to_string());
    }
    if let Some(t) = &record.tag {
        if !valid_tag_key(&t.key) || t.groups.is_empty() {
            return Err("holds an invalid instance tag rule".to_string());
        }
        if record.outcome != Outcome::NoSuchUser && record.groups.is_none() {
            return Err(
                "was made under an instance tag rule without naming the groups".to_string(),
            );
        }
    }
    let tag_groups = record.tag.iter().flat_map(|t| t.groups.iter());
    if let Some(g) = record
        .groups
        .iter()
        .flatten()
        .chain(tag_groups)
        .find(|g| !valid_group(g))
    {
        return Err(format!(
            "holds an invalid group name {:?}",
            crate::username::sanitize(g)
        ));
    }
    let mut served = Vec::with_capacity(record.keys.len());
    for k in &record.keys {
        if !keys::valid_key_id(&k.id) {
            return Err("holds an invalid key id".to_string());
        }
        let key = keys::canonicalize(&k.key).map_err(|e| format!("key {}: {e}", k.id))?;
        if key.as_str() != k.key {
            return Err(format!("key {} is not in canonical form", k.id));
        }
        served.push(ServedKey {
            id: k.id.clone(),
            key,
            uploaded: k.uploaded.clone(),
        });
    }
    Ok(Loaded {
        record,
        keys: served,
    })
}

/// The cache directory, checked once per process.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    /// Owner of the directory; every record and lock in it must be owned by this user.
    owner: u32,
}

/// The result of reading one user's record.
#[derive(Debug)]
pub enum Read {
    Hit(Loaded),
    Absent,
    /// Present but not trusted; the string says why (for the log). Treated as a miss and replaced.
    Rejected(String),
}

impl Cache {
    /// Uses `dir` if it is safe (creating it 0700 when missing).
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let owner = fsutil::prepare_dir(dir)?;
        Ok(Cache {
            dir: dir.to_path_buf(),
            owner,
        })
    }

    /// Uses `dir` only if it exists and is safe (for tools that must not create it).
    pub fn open_existing(dir: &Path) -> Result<Self, Error> {
        let owner = fsutil::check_dir(dir)?;
        Ok(Cache {
            dir: dir.to_path_buf(),
            owner,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// Takes `user`'s lock (see [`fsutil::lock_until`]).
    pub fn lock(
        &self,
        user: &IamUser,
        deadline: std::time::Instant,
    ) -> Result<Option<fsutil::Lock>, Error> {
        fsutil::lock_until(&self.lock_path(user), deadline, self.owner)
    }

    /// The IAM users that have a record here (file names that are valid IAM names), sorted.
    pub fn users(&self) -> Result<Vec<IamUser>, Error> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let e = e.map_err(|e| Error::io(&self.dir, e))?;
            let name = e.file_name();
            if let Some(u) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| IamUser::parse(n).ok())
            {
                out.push(u);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes `user`'s record (its lock file stays: removing a lock file others may hold breaks flock).
    pub fn purge(&self, user: &IamUser) -> Result<bool, Error> {
        let path = self.record_path(user);
        let existed = path.exists();
        fsutil::remove(&path)?;
        Ok(existed)
    }

    /// Removes temp files a killed writer left for `user` (`<user>.json.<pid>.<seq>.tmp`). Only called
    /// with `user`'s lock held, so no live writer owns one.
    fn remove_stray_temps(&self, user: &IamUser) {
        let prefix = format!("{user}.json.");
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            let is_temp = rest.strip_suffix(".tmp").is_some_and(|r| {
                let mut parts = r.split('.');
                let digits = |p: Option<&str>| {
                    p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                };
                digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
            });
            if is_temp {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    pub fn record_path(&self, user: &IamUser) -> PathBuf {
        self.dir.join(format!("{user}.json"))
    }

    pub fn lock_path(&self, user: &IamUser) -> PathBuf {
        self.dir.join(format!("{user}.lock"))
    }

    pub fn read(&self, user: &IamUser) -> Read {
        let path = self.record_path(user);
        match fsutil::read_checked(&path, self.owner) {
            Ok(None) => Read::Absent,
            Ok(Some(bytes)) => match parse(&bytes, user) {
                Ok(loaded) => Read::Hit(loaded),
                Err(why) => Read::Rejected(format!("{}: {why}", path.display())),
            },
            Err(e) => Read::Rejected(e.to_string()),
        }
    }

    pub fn store(&self, record: &Record) -> Result<(), Error> {
        let user = IamUser::parse(&record.iam_user)?;
        let path = self.record_path(&user);
        let mut bytes = serde_json::to_vec_pretty(record)
            .map_err(|e| Error::Config(format!("cannot encode cache record: {e}")))?;
        bytes.push(b'\n');
        self.remove_stray_temps(&user);
        fsutil::write_atomic(&path, &bytes, self.owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = include_str!("../tests/fixtures/ed25519.pub");

    fn ed_canonical() -> String {
        keys::canonicalize(ED)
            .expect("fixture")
            .as_str()
            .to_string()
    }

    fn user() -> IamUser {
        IamUser::parse("alice").expect("name")
    }

    fn record() -> Record {
        Record {
            version: FORMAT_VERSION,
            iam_user: "alice".into(),
            fetched_at: 1000,
            outcome: Outcome::Keys,
            keys: vec![StoredKey {
                id: "APKA1".into(),
                key: ed_canonical(),
                uploaded: Some("2026-01-01T00:00:00Z".into()),
            }],
            groups: Some(vec!["ssh-users".into()]),
            tag: None,
        }
    }

    #[test]
    fn round_trips() {
        let bytes = serde_json::to_vec(&record()).expect("encode");
        let loaded = parse(&bytes, &user()).expect("parse");
        assert_eq!(loaded.record, record());
        assert_eq!(loaded.keys[0].key.as_str(), ed_canonical());
    }

    #[test]
    fn refuses_bad_records() {
        let good = serde_json::to_string(&record()).expect("encode");
        let other_user = good.replace("\"alice\"", "\"mallory\"");
        let v1 = good.replace("\"version\":2", "\"version\":1");
        let truncated = good[..good.len() / 2].to_string();
        let bad_key = good.replace("ssh-ed25519 ", "ssh-ed25519 x");
        let with_options = good.replace("\"ssh-ed25519", "\"command=\\\"/bin/sh\\\" ssh-ed25519");
        let comment = good.replace(&ed_canonical(), &format!("{} evil", ed_canonical()));
        let newline = good.replace(
            &ed_canonical(),
            &format!("{}\\nssh-rsa AAAA", ed_canonical()),
        );
        let bad_id = good.replace("APKA1", "../x");
        let extra = good.replace("\"version\"", "\"extra\":1,\"version\"");
        let contradiction = good.replace("\"keys\",", "\"no_such_user\",");
        let group_refusal_with_keys = good.replace("\"keys\",", "\"not_in_allowed_group\",");
        let mut r = record();
        r.outcome = Outcome::NotInAllowedGroup;
        r.keys.clear();
        r.groups = None;
        let refusal_without_groups = serde_json::to_string(&r).expect("encode");
        let bad_group = good.replace("ssh-users", "ssh users");
        let cases = [
            ("", "does not parse"),
            ("{}", "does not parse"),
            ("null", "does not parse"),
            (truncated.as_str(), "does not parse"),
            (v1.as_str(), "format version 1"),
            (group_refusal_with_keys.as_str(), "gets none"),
            (refusal_without_groups.as_str(), "without naming"),
            (bad_group.as_str(), "invalid group name"),
            (other_user.as_str(), "not alice"),
            (bad_key.as_str(), "key APKA1"),
            (with_options.as_str(), "key APKA1"),
            (comment.as_str(), "canonical"),
            (newline.as_str(), "control"),
            (bad_id.as_str(), "invalid key id"),
            (extra.as_str(), "does not parse"),
            (contradiction.as_str(), "gets none"),
        ];
        for (text, want) in cases {
            let err = parse(text.as_bytes(), &user()).expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn records_made_under_a_groups_tag() {
        let mut r = record();
        r.tag = Some(GroupsTag {
            key: "ssh-groups".into(),
            groups: vec!["ssh-users".into(), "admins".into()],
        });
        let good = serde_json::to_vec(&r).expect("encode");
        assert_eq!(parse(&good, &user()).expect("parse").record, r);
        let mut bad = r.clone();
        bad.tag.as_mut().expect("tag").key = "a/b".into();
        let mut empty = r.clone();
        empty.tag.as_mut().expect("tag").groups.clear();
        let mut no_groups = r.clone();
        no_groups.groups = None;
        let mut bad_group = r.clone();
        bad_group.tag.as_mut().expect("tag").groups = vec!["x y".into()];
        for (rec, want) in [
            (bad, "invalid instance tag rule"),
            (empty, "invalid instance tag rule"),
            (no_groups, "without naming the groups"),
            (bad_group, "invalid group name"),
        ] {
            let text = serde_json::to_vec(&rec).expect("encode");
            let err = parse(&text, &user()).expect_err(want);
            assert!(err.contains(want), "{err}");
        }
        let extra = String::from_utf8(good)
            .expect("utf8")
            .replace("\"key\":\"ssh-groups\"", "\"key\":\"ssh-groups\",\"x\":1");
        assert!(parse(extra.as_bytes(), &user()).is_err());
    }

    #[test]
    fn groups_tag_values_and_keys() {
        let ok = |v: &str| parse_groups_tag(v).expect(v);
        assert_eq!(ok("ssh-users"), ["ssh-users"]);
        assert_eq!(ok(" a , b,,c "), ["a", "b", "c"]);
        assert_eq!(ok("Admins,admins,b"), ["Admins", "b"]);
        for (v, want) in [
            ("", "lists no IAM group"),
            (" , ,", "lists no IAM group"),
            ("a b", "not an IAM group name"),
            ("a;b", "not an IAM group name"),
            ("a,\u{1b}[31m", "not an IAM group name"),
        ] {
            let err = parse_groups_tag(v).expect_err(v);
            assert!(err.contains(want), "{v:?}: {err}");
        }
        for k in ["ssh-groups", "Team:Role", "a.b_c=d+e@f,g", &"k".repeat(128)] {
            assert!(valid_tag_key(k), "{k}");
        }
        for k in [
            "",
            ".",
            "..",
            "_index",
            "a/b",
            "a b",
            "a?b",
            &"k".repeat(129),
            "é",
        ] {
            assert!(!valid_tag_key(k), "{k}");
        }
    }

    #[test]
    fn negative_records() {
        let mut r = record();
        assert!(!r.is_negative());
        r.keys.clear();
        assert!(r.is_negative());
        r.outcome = Outcome::NoSuchUser;
        assert!(r.is_negative());
        r.outcome = Outcome::NotInAllowedGroup;
        assert!(r.is_negative());
    }

    #[test]
    fn store_then_read() {
        let d = tempfile::tempdir().expect("tmp");
        let c = Cache::open(&d.path().join("c")).expect("open");
        assert!(matches!(c.read(&user()), Read::Absent));
        c.store(&record()).expect("store");
        assert!(matches!(c.read(&user()), Read::Hit(_)));
        std::fs::write(c.record_path(&user()), b"{\"version\":1").expect("corrupt");
        assert!(matches!(c.read(&user()), Read::Rejected(_)));
    }
}
