//! Login and IAM user names: the only way a raw name from sshd's `%u` becomes something the rest of the
//! program will put in a path, an API call or a log line.

use std::fmt;

use crate::error::Error;

/// Longest IAM user name (IAM `UserName` constraint).
pub const MAX_IAM_NAME: usize = 64;

/// A name that satisfies IAM's `UserName` pattern `[\w+=,.@-]{1,64}` (ASCII `\w`), and is not `.` or `..`,
/// so it is also a safe single path component.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IamUser(String);

impl IamUser {
    /// Validates `raw`; the error says what is wrong with it so the operator can fix the caller.
    pub fn parse(raw: &str) -> Result<Self, Error> {
        let reason = if raw.is_empty() {
            Some("it is empty".to_string())
        } else if raw.len() > MAX_IAM_NAME {
            Some(format!(
                "it is {} bytes long, IAM allows at most {MAX_IAM_NAME}",
                raw.len()
            ))
        } else if raw == "." || raw == ".." {
            Some("it is a path component, not a name".to_string())
        } else {
            raw.chars().find(|c| !is_iam_char(*c)).map(|c| {
                format!(
                    "it contains {}, IAM names allow only letters, digits and + = , . @ _ -",
                    describe_char(c)
                )
            })
        };
        match reason {
            None => Ok(IamUser(raw.to_string())),
            Some(reason) => Err(Error::InvalidUser {
                shown: sanitize(raw),
                reason,
            }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IamUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How upper case in IAM names meets Linux names, which many tools (CoreOS `useradd`, Debian `adduser`)
/// refuse in upper case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameCase {
    /// Linux names are the IAM names in lower case. Collision-free because IAM names are unique regardless
    /// of case; the key command asks IAM for the lower-case spelling.
    Fold,
    /// Linux names keep the IAM spelling, upper case included (for systems whose tools accept it).
    Preserve,
}

impl NameCase {
    pub fn parse(raw: &str) -> Result<Self, Error> {
        match raw {
            "fold" => Ok(NameCase::Fold),
            "preserve" => Ok(NameCase::Preserve),
            _ => Err(Error::Config(format!(
                "name-case {:?}: write fold or preserve",
                sanitize(raw)
            ))),
        }
    }
}

/// Longest Linux name we produce or accept: `useradd` on most systems and utmp's `ut_user` stop at 32.
pub const MAX_LINUX_NAME: usize = 32;

/// The four IAM characters a Linux name cannot hold, and the words that stand for them (the spelling
/// aws-ec2-ssh used, so accounts it created keep their names).
const ESCAPES: &[(char, &str)] = &[
    ('+', ".plus."),
    ('=', ".equal."),
    (',', ".comma."),
    ('@', ".at."),
];

/// Is `name` a Linux login name we produce and accept: 1-32 characters of `a-z 0-9 _ . -` (and `A-Z` when
/// case is preserved), starting with a letter or `_`. Portable across useradd, adduser and systemd.
pub fn linux_name_problem(name: &str, case: NameCase) -> Option<String> {
    let first = name.chars().next()?;
    if name.len() > MAX_LINUX_NAME {
        return Some(format!(
            "it is {} characters long; Linux tools (useradd, utmp) allow {MAX_LINUX_NAME}",
            name.len()
        ));
    }
    let letter = |c: char| match case {
        NameCase::Fold => c.is_ascii_lowercase(),
        NameCase::Preserve => c.is_ascii_alphabetic(),
    };
    if !(letter(first) || first == '_') {
        return Some(format!(
            "it starts with {}; Linux names start with a {}letter or '_'",
            describe_char(first),
            if case == NameCase::Fold {
                "lower-case "
            } else {
                ""
            }
        ));
    }
    name.chars()
        .find(|c| !(letter(*c) || c.is_ascii_digit() || matches!(c, '_' | '.' | '-')))
        .map(|c| {
            format!(
                "it contains {}; Linux names here hold only {}letters, digits, '_', '.' and '-'",
                describe_char(c),
                if case == NameCase::Fold {
                    "lower-case "
                } else {
                    ""
                }
            )
        })
}

/// IAM name -> Linux name. `+ = , @` become `.plus. .equal. .comma. .at.`; case per `case`. Refused when
/// the result would not be a valid Linux name, or would not map back to this IAM name (an IAM name that
/// already contains one of the words, like `a.at.b`, would collide with `a@b`): so no two IAM users ever
/// share a Linux name.
pub fn iam_to_linux(iam: &IamUser, case: NameCase) -> Result<String, String> {
    let mut out = String::with_capacity(iam.as_str().len() + 8);
    for c in iam.as_str().chars() {
        match ESCAPES.iter().find(|(sym, _)| *sym == c) {
            Some((_, word)) => out.push_str(word),
            None if case == NameCase::Fold => out.push(c.to_ascii_lowercase()),
            None => out.push(c),
        }
    }
    if let Some(p) = linux_name_problem(&out, case) {
        return Err(format!("its Linux name {out:?} is not usable: {p}"));
    }
    let back = decode(&out);
    let same = match case {
        NameCase::Fold => back.eq_ignore_ascii_case(iam.as_str()),
        NameCase::Preserve => back == iam.as_str(),
    };
    if !same {
        let word = ESCAPES
            .iter()
            .map(|(_, w)| *w)
            .find(|w| {
                iam.as_str()
                    .to_ascii_lowercase()
                    .contains(&w[..w.len() - 1])
            })
            .unwrap_or(".at.");
        return Err(format!(
            "it contains {word:?} (or its start), which the Linux mapping uses for a symbol; its Linux name \
             {out:?} would read back as {back:?}. Rename the IAM user"
        ));
    }
    Ok(out)
}

/// Replaces each escape word with its symbol, left to right.
fn decode(linux: &str) -> String {
    let mut out = String::with_capacity(linux.len());
    let mut rest = linux;
    while let Some(c) = rest.chars().next() {
        if c == '.' {
            if let Some((sym, word)) = ESCAPES.iter().find(|(_, w)| rest.starts_with(w)) {
                out.push(*sym);
                rest = &rest[word.len()..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Linux name -> IAM name: the exact inverse of [`iam_to_linux`]. A name that is not the canonical image
/// of some IAM name is refused, so each Linux name has at most one IAM user.
pub fn linux_to_iam(linux: &str, case: NameCase) -> Result<IamUser, Error> {
    let invalid = |reason: String| Error::InvalidUser {
        shown: sanitize(linux),
        reason,
    };
    if linux.is_empty() {
        return Err(invalid("it is empty".into()));
    }
    if let Some(p) = linux_name_problem(linux, case) {
        return Err(invalid(p));
    }
    let iam = IamUser::parse(&decode(linux)).map_err(|e| match e {
        Error::InvalidUser { reason, .. } => {
            invalid(format!("its IAM name would be invalid: {reason}"))
        }
        other => other,
    })?;
    match iam_to_linux(&iam, case) {
        Ok(back) if back == linux => Ok(iam),
        Ok(back) => Err(invalid(format!(
            "it is not the Linux name of IAM user {iam} (that is {back:?})"
        ))),
        Err(why) => Err(invalid(format!("IAM user {iam} has no Linux name: {why}"))),
    }
}

/// The name sshd asked about (a Linux login name, validated) and the IAM user it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginName {
    linux: String,
    iam: IamUser,
}

impl LoginName {
    pub fn parse(raw: &str, case: NameCase) -> Result<Self, Error> {
        Ok(LoginName {
            iam: linux_to_iam(raw, case)?,
            linux: raw.to_string(),
        })
    }

    /// The IAM user whose keys this login may use.
    pub fn iam_user(&self) -> &IamUser {
        &self.iam
    }

    /// The Linux login name.
    pub fn as_str(&self) -> &str {
        &self.linux
    }
}

fn is_iam_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '=' | ',' | '.' | '@' | '-')
}

fn describe_char(c: char) -> String {
    if c.is_control() || !c.is_ascii() {
        format!("the character U+{:04X}", c as u32)
    } else {
        format!("'{c}'")
    }
}

/// A bounded, printable rendering of untrusted text for error messages and logs.
pub fn sanitize(raw: &str) -> String {
    let mut out = String::new();
    for (i, c) in raw.chars().enumerate() {
        if i == 80 {
            out.push_str("...");
            break;
        }
        if c.is_ascii_graphic() || c == ' ' {
            out.push(c);
        } else {
            out.push_str(&c.escape_default().to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_iam_charset() {
        for ok in [
            "alice",
            "a",
            "bob+ops@example.com",
            "x=y,z",
            "A_b-C.d",
            "...",
            ".hidden",
            &"a".repeat(64),
        ] {
            assert_eq!(IamUser::parse(ok).expect(ok).as_str(), ok);
        }
    }

    #[test]
    fn rejects_everything_else_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            (".", "path component"),
            ("..", "path component"),
            ("a/b", "'/'"),
            ("../etc", "'/'"),
            ("a b", "' '"),
            ("a\0b", "U+0000"),
            ("a\nb", "U+000A"),
            ("al\u{e9}", "U+00E9"),
            ("a*", "'*'"),
            ("$(id)", "'$'"),
        ];
        for (raw, want) in cases {
            let err = IamUser::parse(raw).expect_err(raw).to_string();
            assert!(err.contains(want), "{raw:?}: {err}");
        }
        let long = "a".repeat(65);
        assert!(IamUser::parse(&long)
            .expect_err("65 chars")
            .to_string()
            .contains("at most 64"));
    }

    #[test]
    fn sanitize_escapes_and_bounds() {
        assert_eq!(sanitize("a\nb"), "a\\nb");
        assert_eq!(sanitize(&"x".repeat(100)).len(), 83);
    }

    #[test]
    fn mapping_table() {
        use NameCase::*;
        let ok: &[(&str, NameCase, &str)] = &[
            ("alice", Fold, "alice"),
            ("Alice.Smith", Fold, "alice.smith"),
            ("Alice.Smith", Preserve, "Alice.Smith"),
            ("bob+ops@example.com", Fold, "bob.plus.ops.at.example.com"),
            ("a=b,c", Fold, "a.equal.b.comma.c"),
            ("x@at.y", Fold, "x.at.at.y"),
            ("_svc-1", Fold, "_svc-1"),
            ("a@", Fold, "a.at."),
        ];
        for (iam, case, linux) in ok {
            let u = IamUser::parse(iam).expect(iam);
            assert_eq!(iam_to_linux(&u, *case).as_deref(), Ok(*linux), "{iam}");
            let back = linux_to_iam(linux, *case).expect(linux);
            match case {
                Fold => assert!(back.as_str().eq_ignore_ascii_case(iam)),
                Preserve => assert_eq!(back.as_str(), *iam),
            }
        }
        let refused: &[(&str, &str)] = &[
            ("a.at.b", "\".at.\""),
            ("x.at@y", "read back"),
            ("a.plus.b", "\".plus.\""),
            ("@home", "starts with '.'"),
            ("1password", "starts with '1'"),
            ("-x", "starts with '-'"),
            ("averyveryverylongname@example.com", "32"),
        ];
        for (iam, want) in refused {
            let u = IamUser::parse(iam).expect(iam);
            let e = iam_to_linux(&u, Fold).expect_err(iam);
            assert!(e.contains(want), "{iam}: {e}");
        }
    }

    #[test]
    fn linux_names_that_are_no_image_are_refused() {
        for (linux, want) in [
            ("Alice", "lower-case"),
            ("a.at.at.b", ""),
            ("root;id", "';'"),
            ("a..at.b", ""),
            ("", "empty"),
            (".at.x", "starts with"),
            ("a\nb", "U+000A"),
        ] {
            match linux_to_iam(linux, NameCase::Fold) {
                Ok(iam) => assert_eq!(
                    iam_to_linux(&iam, NameCase::Fold).as_deref(),
                    Ok(linux),
                    "{linux} accepted but not canonical"
                ),
                Err(e) => assert!(e.to_string().contains(want), "{linux}: {e}"),
            }
        }
        // "Alice" is fine where case is preserved.
        assert_eq!(
            linux_to_iam("Alice", NameCase::Preserve)
                .expect("preserve")
                .as_str(),
            "Alice"
        );
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// IAM names built from pieces that stress the escapes: symbols, the words, their fragments.
        fn iam_name() -> impl Strategy<Value = String> {
            let piece = prop::sample::select(vec![
                "a", "Z", "q", "0", "7", "_", "-", ".", "+", "=", ",", "@", ".at.", ".plus.", "at",
                "plus.", ".comma", "equal.", ".", "..", "At.", ".AT.",
            ]);
            prop::collection::vec(piece, 1..12)
                .prop_map(|v| v.concat())
                .prop_filter("valid IAM name", |s| IamUser::parse(s).is_ok())
        }

        fn case() -> impl Strategy<Value = NameCase> {
            prop_oneof![Just(NameCase::Fold), Just(NameCase::Preserve)]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            #[test]
            fn mapped_names_are_valid_and_round_trip(raw in iam_name(), case in case()) {
                let iam = IamUser::parse(&raw).expect("generated from the IAM charset");
                if let Ok(linux) = iam_to_linux(&iam, case) {
                    prop_assert_eq!(linux_name_problem(&linux, case), None);
                    prop_assert!(!linux.is_empty() && linux.len() <= MAX_LINUX_NAME);
                    let back = linux_to_iam(&linux, case).expect("image maps back");
                    match case {
                        NameCase::Fold => prop_assert_eq!(back.as_str().to_ascii_lowercase(), raw.to_ascii_lowercase()),
                        NameCase::Preserve => prop_assert_eq!(back.as_str(), raw.as_str()),
                    }
                }
            }

            #[test]
            fn no_two_iam_names_share_a_linux_name(a in iam_name(), b in iam_name(), case in case()) {
                let same_user = match case {
                    NameCase::Fold => a.eq_ignore_ascii_case(&b),
                    NameCase::Preserve => a == b,
                };
                let la = iam_to_linux(&IamUser::parse(&a).expect("a"), case);
                let lb = iam_to_linux(&IamUser::parse(&b).expect("b"), case);
                if let (Ok(la), Ok(lb)) = (la, lb) {
                    prop_assert_eq!(la == lb, same_user, "{} and {} -> {} / {}", a, b, la, lb);
                }
            }

            #[test]
            fn accepted_linux_names_are_canonical(raw in "[a-zA-Z0-9_.@+-]{0,40}", case in case()) {
                if let Ok(iam) = linux_to_iam(&raw, case) {
                    let back = iam_to_linux(&iam, case);
                    prop_assert_eq!(back.as_deref(), Ok(raw.as_str()));
                }
            }

            #[test]
            fn arbitrary_input_never_panics(raw in "\\PC{0,80}", case in case()) {
                let _ = linux_to_iam(&raw, case);
                if let Ok(u) = IamUser::parse(&raw) {
                    let _ = iam_to_linux(&u, case);
                }
            }
        }

        #[test]
        fn the_peer_collision_is_gone() {
            // aws-ec2-ssh maps both to "a.at.b"; here only one of them has a Linux name.
            let a = iam_to_linux(&IamUser::parse("a@b").expect("a@b"), NameCase::Fold);
            let b = iam_to_linux(&IamUser::parse("a.at.b").expect("a.at.b"), NameCase::Fold);
            assert_eq!(a.as_deref(), Ok("a.at.b"));
            assert!(b.is_err());
        }
    }
}
