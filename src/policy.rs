//! Who may be served at all: local account rules (decided before any cache read or IAM call) and IAM group
//! membership (decided on IAM's answer, cached with it). Every refusal carries the reason `-v`/`--json` show.

use std::path::Path;

use crate::error::Error;
use crate::fsutil;

/// The local account rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountRules {
    /// Accounts with a UID below this are system accounts.
    pub min_uid: u32,
    /// Accounts with a UID above this are not regular users (`--max-uid`); `None`: UID_MAX from
    /// /etc/login.defs, read only when the rule is reached.
    pub max_uid: Option<u32>,
    /// Served even when root or below `min_uid`.
    pub allow: Vec<String>,
    /// Never served.
    pub deny: Vec<String>,
}

/// Where the passwd database lives. A static musl binary reads this file, as musl's getpwnam does.
pub const PASSWD: &str = "/etc/passwd";

/// Where shadow-utils keeps UID_MAX, the top of the range for regular users.
pub const LOGIN_DEFS: &str = "/etc/login.defs";

/// UID_MAX when /etc/login.defs does not say (shadow-utils' default on Debian, Ubuntu, RHEL, Amazon Linux).
pub const DEFAULT_UID_MAX: u32 = 60_000;

/// The overflow UID (`nobody`, `nfsnobody`): never a person, whatever the range says.
pub const OVERFLOW_UID: u32 = 65_534;

/// UID_MAX from a login.defs file owned by root, else [`DEFAULT_UID_MAX`]. On the warm path when no
/// --max-uid is given (install.sh writes one into the drop-in, so installed hosts skip this read).
pub fn login_defs_uid_max(path: &Path) -> u32 {
    fsutil::read_checked(path, 0)
        .ok()
        .flatten()
        .and_then(|b| uid_max_in(&b))
        .unwrap_or(DEFAULT_UID_MAX)
}

/// The value of the `UID_MAX` line, scanned as bytes (the file is ~12 KiB of comments; decoding and
/// splitting it as text cost more than the rest of a warm hit).
fn uid_max_in(text: &[u8]) -> Option<u32> {
    text.split(|b| *b == b'\n').find_map(|line| {
        let rest = line.trim_ascii_start().strip_prefix(b"UID_MAX")?;
        let value = rest
            .strip_prefix(b" ")
            .or_else(|| rest.strip_prefix(b"\t"))?;
        std::str::from_utf8(value).ok()?.trim().parse().ok()
    })
}

/// The account rules' verdict on a login name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed(String),
    Refused(String),
}

/// Decides whether `login` may be served. `uid` is sshd's `%U` if given; else `lookup_uid` is asked (it
/// reads /etc/passwd), and only when a rule needs it; likewise `uid_max` (login.defs) when no --max-uid.
pub fn check_account(
    login: &str,
    uid: Option<u32>,
    rules: &AccountRules,
    lookup_uid: impl FnOnce(&str) -> Result<Option<u32>, String>,
    uid_max: impl FnOnce() -> u32,
) -> Verdict {
    if rules.deny.iter().any(|d| d == login) {
        return Verdict::Refused(format!("{login} is listed in --deny-user"));
    }
    if rules.allow.iter().any(|a| a == login) {
        return Verdict::Allowed(format!("{login} is listed in --allow-user"));
    }
    if login == "root" {
        return Verdict::Refused(
            "root is a system account and is never served (unless --allow-user root)".into(),
        );
    }
    let uid = match uid {
        Some(u) => u,
        None => match lookup_uid(login) {
            Ok(Some(u)) => u,
            Ok(None) => {
                return Verdict::Refused(format!(
                    "no local account {login} in {PASSWD}; sshd only asks about accounts it can resolve: \
                     pass its UID with --uid %U in AuthorizedKeysCommand"
                ))
            }
            Err(e) => return Verdict::Refused(format!("cannot tell {login}'s UID: {e}")),
        },
    };
    if uid == 0 {
        Verdict::Refused(format!(
            "{login} has UID 0 and is never served (unless --allow-user {login})"
        ))
    } else if uid < rules.min_uid {
        Verdict::Refused(format!(
            "{login} has UID {uid}, below --min-uid {}: a system account (--allow-user {login} to serve it)",
            rules.min_uid
        ))
    } else if uid == OVERFLOW_UID {
        Verdict::Refused(format!(
            "{login} has UID {uid}, the overflow UID (nobody): never a person (--allow-user {login} to serve it)"
        ))
    } else if let Some(max) = Some(rules.max_uid.unwrap_or_else(uid_max)).filter(|m| uid > *m) {
        Verdict::Refused(format!(
            "{login} has UID {uid}, above --max-uid {max} (UID_MAX, the top of the regular users' range): \
             not a regular user (--allow-user {login} to serve it)"
        ))
    } else {
        Verdict::Allowed(format!(
            "{login} has UID {uid} >= --min-uid {}",
            rules.min_uid
        ))
    }
}

/// Finds `login`'s UID in a passwd file that only root can have written.
pub fn passwd_uid(path: &Path, login: &str) -> Result<Option<u32>, String> {
    let bytes = fsutil::read_checked(path, 0)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} does not exist", path.display()))?;
    uid_in(&String::from_utf8_lossy(&bytes), login)
}

/// `login`'s UID when exactly one line names it and that line is well-formed. C libraries read malformed
/// or repeated entries differently (glibc skips `eve:x:1500` and takes a later `eve:x:0:0:...`, and reads
/// `eve:x: 0:...` as UID 0), so any doubt is an error, never a guess: sshd would use the libc's answer.
fn uid_in(passwd: &str, login: &str) -> Result<Option<u32>, String> {
    let mut lines = passwd
        .lines()
        .filter(|l| l.split(':').next() == Some(login));
    let Some(line) = lines.next() else {
        return Ok(None);
    };
    let more = lines.count();
    if more > 0 {
        return Err(format!(
            "{login} appears {} times in {PASSWD}; which one sshd uses depends on the C library: remove the duplicates",
            more + 1
        ));
    }
    parse_passwd_line(line).map(|e| Some(e.uid)).ok_or_else(|| {
        format!("{login}'s line in {PASSWD} is malformed (7 fields, decimal UID and GID expected)")
    })
}

/// A well-formed passwd line: seven fields, UID and GID plain decimal digits.
fn parse_passwd_line(line: &str) -> Option<PasswdEntry<'_>> {
    let f: Vec<&str> = line.split(':').collect();
    let number = |s: &str| {
        (!s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    if f.len() != 7 || f[0].is_empty() {
        return None;
    }
    number(f[3])?;
    Some(PasswdEntry {
        name: f[0],
        uid: number(f[2])?,
        shell: f[6],
    })
}

/// One line of a passwd file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry<'a> {
    pub name: &'a str,
    pub uid: u32,
    pub shell: &'a str,
}

/// The well-formed entries of a passwd file's text: `name:password:uid:gid:gecos:home:shell`, UID and GID
/// in decimal; other lines are skipped. The one passwd parser (lookups, doctor, sync-users).
pub fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(parse_passwd_line)
}

pub const SHADOW: &str = "/etc/shadow";

/// One line of /etc/shadow, as far as doctor and sync-users read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowEntry<'a> {
    pub name: &'a str,
    /// The password field (`!` or `*` prefixes mean locked).
    pub password: &'a str,
    /// The account expiry date field (days since the epoch; empty when none).
    pub expire: &'a str,
}

/// The entries of a shadow file's text: `name:password:lastchg:min:max:warn:inactive:expire:reserved`.
pub fn shadow_entries(text: &str) -> impl Iterator<Item = ShadowEntry<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        Some(ShadowEntry {
            name: f.first().filter(|n| !n.is_empty())?,
            password: f.get(1).copied().unwrap_or(""),
            expire: f.get(7).copied().unwrap_or(""),
        })
    })
}

/// /etc/shadow's text (root only); a system without the file has no shadow entries.
pub fn read_shadow() -> Result<String, Error> {
    match std::fs::read_to_string(SHADOW) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        r => r.map_err(|e| Error::io(SHADOW, e)),
    }
}

/// The group rule on IAM's answer: `None` when no group is required, else whether `member_of` (the user's
/// IAM groups) meets one of `allowed`. IAM group names are unique regardless of case.
pub fn check_groups(allowed: &[String], member_of: &[String]) -> Option<Verdict> {
    if allowed.is_empty() {
        return None;
    }
    Some(
        match member_of
            .iter()
            .find(|g| allowed.iter().any(|a| a.eq_ignore_ascii_case(g)))
        {
            Some(g) => Verdict::Allowed(format!("member of allowed IAM group {g}")),
            None => Verdict::Refused(format!(
                "not in any allowed IAM group ({}); member of: {}",
                allowed.join(", "),
                if member_of.is_empty() {
                    "none".to_string()
                } else {
                    member_of.join(", ")
                }
            )),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(min: u32, allow: &[&str], deny: &[&str]) -> AccountRules {
        AccountRules {
            min_uid: min,
            max_uid: None,
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn finding_6_overflow_and_high_uids_are_not_regular_users() {
        // Finding 6 of the hardening review: an IAM user named nobody logged in as nobody (UID 65534).
        let std = rules(1000, &[], &[]);
        let refused = |uid: u32, r: &AccountRules, max: u32| {
            matches!(
                check_account("nobody", Some(uid), r, |_| Ok(None), || max),
                Verdict::Refused(_)
            )
        };
        assert!(refused(65_534, &std, DEFAULT_UID_MAX));
        assert!(
            refused(65_534, &std, 100_000),
            "the overflow UID whatever UID_MAX says"
        );
        assert!(refused(60_001, &std, DEFAULT_UID_MAX));
        assert!(!refused(60_000, &std, DEFAULT_UID_MAX));
        assert!(
            !refused(70_000, &std, 100_000),
            "a larger UID_MAX from login.defs"
        );
        let explicit = AccountRules {
            max_uid: Some(5_000),
            ..std.clone()
        };
        assert!(refused(5_001, &explicit, DEFAULT_UID_MAX), "--max-uid wins");
        assert!(!refused(5_000, &explicit, DEFAULT_UID_MAX));
        let allowed = rules(1000, &["nobody"], &[]);
        assert!(
            !refused(65_534, &allowed, DEFAULT_UID_MAX),
            "--allow-user nobody"
        );
        // login.defs: the UID_MAX line, comments and other keys ignored; missing file: the default.
        assert_eq!(
            uid_max_in(b"# UID_MAX 1\nUID_MIN 1000\nUID_MAXX 3\n  UID_MAX\t\t 59999\n"),
            Some(59_999)
        );
        assert_eq!(uid_max_in(b"UID_MIN 1000\n"), None);
        assert_eq!(
            login_defs_uid_max(Path::new("/nonexistent/login.defs")),
            DEFAULT_UID_MAX
        );
    }

    #[test]
    fn finding_7_passwd_lines_glibc_reads_otherwise_are_refused() {
        // Finding 7: our parser skipped lines that glibc reads differently and served UID 0 accounts.
        let short_then_root = "eve1:x:1500\neve1:x:0:0::/root:/bin/sh\n";
        let space_uid = "eve2:x: 0:0::/root:/bin/sh\neve2:x:1500:1500::/home/eve2:/bin/sh\n";
        let duplicate = "eve3:x:1500:1500::/h:/bin/sh\neve3:x:1600:1600::/h:/bin/sh\n";
        let malformed_only = "eve4:x:+1500:1500::/h:/bin/sh\n";
        for (text, login, want) in [
            (short_then_root, "eve1", "2 times"),
            (space_uid, "eve2", "2 times"),
            (duplicate, "eve3", "2 times"),
            (malformed_only, "eve4", "malformed"),
        ] {
            let e = uid_in(text, login).expect_err(login);
            assert!(e.contains(want), "{login}: {e}");
            let v = check_account(
                login,
                None,
                &rules(1000, &[], &[]),
                |n| uid_in(text, n),
                || DEFAULT_UID_MAX,
            );
            assert!(matches!(v, Verdict::Refused(_)), "{login}: {v:?}");
        }
        assert_eq!(
            uid_in("ok:x:1500:1500::/h:/bin/sh\nokay:x:1:1::/:/bin/sh\n", "ok"),
            Ok(Some(1500))
        );
        assert_eq!(uid_in("ok:x:1500:1500::/h:/bin/sh\n", "other"), Ok(None));
        // The shared parser skips malformed lines for doctor and sync-users too.
        let names: Vec<_> = passwd_entries(short_then_root).map(|e| e.uid).collect();
        assert_eq!(names, [0]);
    }

    #[test]
    fn account_table() {
        let passwd = "root:x:0:0::/root:/bin/sh\ndaemon:x:1:1::/:/usr/sbin/nologin\n\
                      ec2-user:x:1000:1000::/home/ec2-user:/bin/bash\ntoor:x:0:0::/:/bin/sh\n\
                      deploy:x:998:998::/:/bin/sh\nbad:x:notanumber:1::/:/bin/sh\n";
        let std = rules(1000, &[], &[]);
        type Case<'a> = (&'a str, Option<u32>, AccountRules, bool, &'a str);
        let cases: Vec<Case> = vec![
            ("root", None, std.clone(), false, "never served"),
            ("root", Some(5000), std.clone(), false, "never served"),
            (
                "root",
                None,
                rules(1000, &["root"], &[]),
                true,
                "--allow-user",
            ),
            ("toor", None, std.clone(), false, "UID 0"),
            ("daemon", None, std.clone(), false, "below --min-uid 1000"),
            ("deploy", None, std.clone(), false, "UID 998"),
            (
                "deploy",
                None,
                rules(1000, &["deploy"], &[]),
                true,
                "--allow-user",
            ),
            (
                "deploy",
                None,
                rules(900, &[], &[]),
                true,
                ">= --min-uid 900",
            ),
            ("ec2-user", None, std.clone(), true, "UID 1000"),
            (
                "ec2-user",
                None,
                rules(1000, &[], &["ec2-user"]),
                false,
                "--deny-user",
            ),
            (
                "ec2-user",
                None,
                rules(1000, &["ec2-user"], &["ec2-user"]),
                false,
                "--deny-user",
            ),
            ("alice", None, std.clone(), false, "--uid %U"),
            ("alice", Some(1500), std.clone(), true, "UID 1500"),
            ("alice", Some(999), std.clone(), false, "UID 999"),
            ("bad", None, std.clone(), false, "malformed"),
        ];
        for (login, uid, r, ok, want) in cases {
            let v = check_account(login, uid, &r, |n| uid_in(passwd, n), || DEFAULT_UID_MAX);
            let (got_ok, text) = match &v {
                Verdict::Allowed(t) => (true, t),
                Verdict::Refused(t) => (false, t),
            };
            assert_eq!(got_ok, ok, "{login} {uid:?}: {text}");
            assert!(text.contains(want), "{login}: {text}");
        }
    }

    #[test]
    fn passwd_is_consulted_only_when_needed() {
        let r = rules(1000, &[], &[]);
        let v = check_account(
            "alice",
            Some(2000),
            &r,
            |_| panic!("not needed"),
            || DEFAULT_UID_MAX,
        );
        assert!(matches!(v, Verdict::Allowed(_)));
        let v = check_account(
            "alice",
            None,
            &r,
            |_| Err("unreadable".into()),
            || DEFAULT_UID_MAX,
        );
        assert_eq!(
            v,
            Verdict::Refused("cannot tell alice's UID: unreadable".into())
        );
    }

    #[test]
    fn group_table() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(check_groups(&[], &s(&["x"])), None);
        assert!(matches!(
            check_groups(&s(&["ssh-users"]), &s(&["devs", "SSH-Users"])),
            Some(Verdict::Allowed(_))
        ));
        let v = check_groups(&s(&["ssh-users", "ops"]), &s(&["devs"]));
        assert_eq!(
            v,
            Some(Verdict::Refused(
                "not in any allowed IAM group (ssh-users, ops); member of: devs".into()
            ))
        );
        assert!(matches!(
            check_groups(&s(&["ops"]), &[]),
            Some(Verdict::Refused(t)) if t.ends_with("member of: none")
        ));
    }

    #[test]
    fn shadow_lines_give_password_and_expiry() {
        let text = "root:*:19000:0:99999:7:::\n\
                    gone:!$6$x:19000:0:99999:7::1:\n\
                    short:!\n\
                    \n\
                    :x:1:::::9:\n";
        let got: Vec<_> = shadow_entries(text).collect();
        assert_eq!(
            got,
            vec![
                ShadowEntry {
                    name: "root",
                    password: "*",
                    expire: ""
                },
                ShadowEntry {
                    name: "gone",
                    password: "!$6$x",
                    expire: "1"
                },
                ShadowEntry {
                    name: "short",
                    password: "!",
                    expire: ""
                },
            ]
        );
    }
}
