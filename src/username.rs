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

/// The name sshd asked about. Today a login name maps to the IAM user of the same spelling; the reversible
/// Linux<->IAM mapping and its case policy plug in here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginName {
    iam: IamUser,
}

impl LoginName {
    pub fn parse(raw: &str) -> Result<Self, Error> {
        Ok(LoginName {
            iam: IamUser::parse(raw)?,
        })
    }

    /// The IAM user whose keys this login may use.
    pub fn iam_user(&self) -> &IamUser {
        &self.iam
    }

    pub fn as_str(&self) -> &str {
        self.iam.as_str()
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
}
