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
    /// Served even when root or below `min_uid`.
    pub allow: Vec<String>,
    /// Never served.
    pub deny: Vec<String>,
}

/// Where the passwd database lives. A static musl binary reads this file, as musl's getpwnam does.
pub const PASSWD: &str = "/etc/passwd";

/// The account rules' verdict on a login name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed(String),
    Refused(String),
}

/// Decides whether `login` may be served. `uid` is sshd's `%U` if given; else `lookup_uid` is asked (it
/// reads /etc/passwd), and only when a rule needs it.
pub fn check_account(
    login: &str,
    uid: Option<u32>,
    rules: &AccountRules,
    lookup_uid: impl FnOnce(&str) -> Result<Option<u32>, String>,
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
    Ok(uid_in(&String::from_utf8_lossy(&bytes), login))
}

fn uid_in(passwd: &str, login: &str) -> Option<u32> {
    passwd_entries(passwd)
        .find(|e| e.name == login)
        .map(|e| e.uid)
}

/// One line of a passwd file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry<'a> {
    pub name: &'a str,
    pub uid: u32,
    pub shell: &'a str,
}

/// The entries of a passwd file's text: `name:password:uid:gid:gecos:home:shell`; lines without a
/// numeric UID are skipped. The one passwd parser (lookups, doctor, sync-users).
pub fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        Some(PasswdEntry {
            name: f.first()?,
            uid: f.get(2)?.parse().ok()?,
            shell: f.get(6).copied().unwrap_or(""),
        })
    })
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
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        }
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
            ("bad", None, std.clone(), false, "--uid %U"),
        ];
        for (login, uid, r, ok, want) in cases {
            let v = check_account(login, uid, &r, |n| Ok(uid_in(passwd, n)));
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
        let v = check_account("alice", Some(2000), &r, |_| panic!("not needed"));
        assert!(matches!(v, Verdict::Allowed(_)));
        let v = check_account("alice", None, &r, |_| Err("unreadable".into()));
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
