//! authorized_keys options from our configuration (never from IAM), checked against OpenSSH's grammar
//! (sshd(8), AUTHORIZED_KEYS FILE FORMAT) and written back in one canonical spelling.

/// Options that take no value. `cert-authority` is left out on purpose: it would turn a user's key into a
/// certificate authority.
const FLAGS: &[&str] = &[
    "agent-forwarding",
    "no-agent-forwarding",
    "port-forwarding",
    "no-port-forwarding",
    "pty",
    "no-pty",
    "user-rc",
    "no-user-rc",
    "X11-forwarding",
    "no-X11-forwarding",
    "restrict",
    "no-touch-required",
    "verify-required",
];

/// Options that take a double-quoted value. `principals` only applies with `cert-authority`.
const VALUED: &[&str] = &[
    "command",
    "environment",
    "expiry-time",
    "from",
    "permitlisten",
    "permitopen",
    "tunnel",
];

/// A checked option list, ready to put before a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOptions(String);

impl KeyOptions {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses `raw` (e.g. `restrict,pty,from="10.0.0.0/8"`); the error names the offending option.
    pub fn parse(raw: &str) -> Result<KeyOptions, String> {
        let mut out: Vec<String> = Vec::new();
        let mut rest = raw.trim();
        if rest.is_empty() {
            return Err("the option list is empty".into());
        }
        while !rest.is_empty() {
            let name_end = rest.find([',', '=']).unwrap_or(rest.len());
            let name = &rest[..name_end];
            rest = &rest[name_end..];
            if let Some(canon) = FLAGS.iter().find(|f| f.eq_ignore_ascii_case(name)) {
                out.push((*canon).to_string());
            } else if let Some(canon) = VALUED.iter().find(|f| f.eq_ignore_ascii_case(name)) {
                let Some(quoted) = rest.strip_prefix("=\"") else {
                    return Err(format!(
                        "{canon} needs a value in double quotes: {canon}=\"...\""
                    ));
                };
                let Some(close) = quoted.find('"') else {
                    return Err(format!("{canon}: the value's closing quote is missing"));
                };
                let value = &quoted[..close];
                check_value(canon, value).map_err(|e| format!("{canon}=\"{value}\": {e}"))?;
                out.push(format!("{canon}=\"{value}\""));
                rest = &quoted[close + 1..];
            } else {
                return Err(format!(
                    "unknown or refused option {:?}; allowed: {}, {}",
                    crate::username::sanitize(name),
                    FLAGS.join(", "),
                    VALUED.join(", ")
                ));
            }
            match rest.strip_prefix(',') {
                Some("") => return Err("the list ends with a comma".into()),
                Some(r) => rest = r,
                None if rest.is_empty() => {}
                None => {
                    return Err(format!(
                        "expected a comma after {}, found {:?}",
                        out.last().map(String::as_str).unwrap_or(""),
                        crate::username::sanitize(rest)
                    ))
                }
            }
        }
        Ok(KeyOptions(out.join(",")))
    }

    /// True when an `expiry-time` option is already present.
    pub fn has_expiry(&self) -> bool {
        self.0.split(',').any(|o| o.starts_with("expiry-time="))
    }
}

fn check_value(name: &str, v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err("the value is empty".into());
    }
    if let Some(c) = v.chars().find(|c| !(' '..='~').contains(c) || *c == '\\') {
        return Err(format!(
            "the value may hold printable ASCII without '\\' only, not {:?}",
            c
        ));
    }
    let all = |ok: fn(char) -> bool| v.chars().all(ok);
    let fine = match name {
        "from" => all(|c| c.is_ascii_alphanumeric() || ".:*?!/,_-[]".contains(c)),
        "permitopen" | "permitlisten" => {
            let (host, port) = v.rsplit_once(':').unwrap_or(("", v));
            (port == "*"
                || (!port.is_empty()
                    && port.len() <= 5
                    && port.bytes().all(|b| b.is_ascii_digit())))
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".*_-[]:".contains(c))
                && (name == "permitlisten" || !host.is_empty())
        }
        "expiry-time" => {
            let digits = v.strip_suffix('Z').unwrap_or(v);
            matches!(digits.len(), 8 | 12 | 14) && digits.bytes().all(|b| b.is_ascii_digit())
        }
        "environment" => v.split_once('=').is_some_and(|(k, _)| {
            k.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }),
        "tunnel" => v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()),
        _ => true,
    };
    if fine {
        Ok(())
    } else {
        Err(match name {
            "from" => {
                "write host or address patterns, e.g. 10.0.0.0/8,*.example.com,!bad.example.com"
            }
            "permitopen" => "write host:port, e.g. localhost:8080",
            "permitlisten" => "write [host:]port, e.g. 8080 or localhost:8080",
            "expiry-time" => "write YYYYMMDD[HHMM[SS]][Z]",
            "environment" => "write NAME=value",
            _ => "write a tunnel device number",
        }
        .into())
    }
}

/// `YYYYMMDDHHMMSSZ` for unix seconds `t` (UTC), the form `expiry-time` takes.
pub fn expiry_stamp(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_and_canonical() {
        for (raw, want) in [
            ("restrict", "restrict"),
            ("restrict,pty", "restrict,pty"),
            ("RESTRICT,No-Pty", "restrict,no-pty"),
            ("no-x11-forwarding", "no-X11-forwarding"),
            (
                "restrict,from=\"10.0.0.0/8,!10.1.*\"",
                "restrict,from=\"10.0.0.0/8,!10.1.*\"",
            ),
            (
                "permitopen=\"localhost:8080\"",
                "permitopen=\"localhost:8080\"",
            ),
            ("permitlisten=\"8080\"", "permitlisten=\"8080\""),
            ("expiry-time=\"20301231\"", "expiry-time=\"20301231\""),
            (
                "command=\"/usr/bin/rrsync -ro /srv\"",
                "command=\"/usr/bin/rrsync -ro /srv\"",
            ),
            ("environment=\"LANG=C\"", "environment=\"LANG=C\""),
        ] {
            assert_eq!(KeyOptions::parse(raw).as_deref_str(), Ok(want), "{raw}");
        }
    }

    trait AsDerefStr {
        fn as_deref_str(&self) -> Result<&str, &String>;
    }
    impl AsDerefStr for Result<KeyOptions, String> {
        fn as_deref_str(&self) -> Result<&str, &String> {
            self.as_ref().map(KeyOptions::as_str)
        }
    }

    #[test]
    fn refused_with_a_reason() {
        for (raw, want) in [
            ("", "empty"),
            ("cert-authority", "refused option"),
            ("principals=\"x\"", "refused option"),
            ("restrict,", "ends with a comma"),
            ("restrict pty", "unknown"),
            ("from=10.0.0.1", "double quotes"),
            ("from=\"10.0.0.1", "closing quote"),
            ("from=\"a b\"", "patterns"),
            ("command=\"x\"y", "expected a comma"),
            ("command=\"a\\\"b\"", "without '\\'"),
            ("command=\"a\nb\"", "printable"),
            ("expiry-time=\"2030\"", "YYYYMMDD"),
            ("environment=\"1A=b\"", "NAME=value"),
            ("permitopen=\"8080\"", "host:port"),
            ("tunnel=\"x\"", "tunnel"),
            ("restrict,,pty", "unknown"),
        ] {
            let e = KeyOptions::parse(raw).expect_err(raw);
            assert!(e.contains(want), "{raw:?}: {e}");
        }
    }

    #[test]
    fn expiry_stamps() {
        assert_eq!(expiry_stamp(0), "19700101000000Z");
        assert_eq!(expiry_stamp(951_782_400), "20000229000000Z");
        assert_eq!(expiry_stamp(1_700_000_000), "20231114221320Z");
        assert_eq!(expiry_stamp(4_102_444_799), "20991231235959Z");
        assert!(KeyOptions::parse("expiry-time=\"20231114221320Z\"")
            .expect("own format parses")
            .has_expiry());
    }
}
