//! Diagnostics and the audit trail; never stdout.
//! - stderr: for the person at the terminal (`-v`, `-vv`); sshd discards it outside debug mode.
//! - journald (native protocol, structured `IAK_*` fields), or syslog (`/dev/log`, facility authpriv) when
//!   journald is absent: one audit event per lookup, plus warnings and errors. Repeated warnings of the
//!   same kind are rate-limited across processes (see [`Log::warn_limited`]).

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
pub const SYSLOG_SOCKET: &str = "/dev/log";
const IDENT: &str = "iam-authorized-keys";
const FACILITY_AUTHPRIV: u8 = 10;
/// A rate-limited warning is logged at most once per this interval (per kind and user).
pub const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// syslog severities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Err = 3,
    Warning = 4,
    Info = 6,
}

#[derive(Debug)]
pub struct Log {
    verbose: u8,
    journal: Option<PathBuf>,
    syslog: Option<PathBuf>,
    /// Where rate-limit marks live (the checked cache directory and its owner), once a lookup opened it.
    marks: std::sync::OnceLock<(PathBuf, u32)>,
}

impl Log {
    /// `journal`/`syslog`: socket paths, `None` for the defaults; a path of `none` disables that sink.
    pub fn new(verbose: u8, journal: Option<&Path>, syslog: Option<&Path>) -> Self {
        let pick = |p: Option<&Path>, default: &str| match p {
            Some(p) if p == Path::new("none") => None,
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from(default)),
        };
        Log {
            verbose,
            journal: pick(journal, JOURNAL_SOCKET),
            syslog: pick(syslog, SYSLOG_SOCKET),
            marks: std::sync::OnceLock::new(),
        }
    }

    /// Enables rate limiting with marks kept in `dir` (a checked cache directory owned by `owner`). The
    /// first directory set stays: one process uses one cache.
    pub fn set_marks_dir(&self, dir: &Path, owner: u32) {
        let _ = self.marks.set((dir.to_path_buf(), owner));
    }

    pub fn verbose(&self) -> u8 {
        self.verbose
    }

    /// Step-by-step explanation, shown with -v.
    pub fn info(&self, msg: &str) {
        if self.verbose >= 1 {
            self.stderr(msg);
        }
    }

    /// Extra detail, shown with -vv.
    pub fn debug(&self, msg: &str) {
        if self.verbose >= 2 {
            self.stderr(msg);
        }
    }

    /// Something an operator should hear about: stderr and the system log.
    pub fn warn(&self, msg: &str) {
        self.stderr(msg);
        self.send(Priority::Warning, msg, &[]);
    }

    /// Like [`Log::warn`], but the system log gets it at most once per [`WARN_INTERVAL`] for the same
    /// `kind` and `subject` (e.g. "stale", user): an IAM outage must not write a line per login.
    pub fn warn_limited(&self, kind: &str, subject: &str, msg: &str) {
        self.stderr(msg);
        if self.may_send(kind, subject) {
            self.send(Priority::Warning, msg, &[("IAK_WARNING", kind)]);
        }
    }

    /// The lookup failed: stderr and the system log.
    pub fn error(&self, msg: &str) {
        self.stderr(msg);
        self.send(Priority::Err, msg, &[]);
    }

    /// One structured audit event: `fields` are `IAK_*` names and values. Shown on stderr with -v.
    pub fn event(&self, priority: Priority, msg: &str, fields: &[(&str, &str)]) {
        self.info(msg);
        self.send(priority, msg, fields);
    }

    /// For messages already in the system log.
    pub fn stderr_only(&self, msg: &str) {
        self.stderr(msg);
    }

    fn stderr(&self, msg: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{IDENT}: {msg}");
    }

    /// True when no mark for (kind, subject) is younger than the interval; then it renews the mark.
    /// Without a marks directory (no usable cache) nothing is limited.
    fn may_send(&self, kind: &str, subject: &str) -> bool {
        let Some((dir, owner)) = self.marks.get() else {
            return true;
        };
        let mark = dir.join(format!(
            ".warned.{:016x}",
            fnv1a(&format!("{kind}\0{subject}"))
        ));
        if let Ok(meta) = std::fs::symlink_metadata(&mark) {
            let recent = meta
                .modified()
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age < WARN_INTERVAL);
            if recent && meta.is_file() {
                return false;
            }
        }
        // Best effort; O_NOFOLLOW through fsutil's writer (empty content, 0600).
        let _ = crate::fsutil::write_atomic(&mark, b"", *owner);
        true
    }

    /// journald first, syslog if journald is not there. Best effort: logging never fails a login.
    fn send(&self, priority: Priority, msg: &str, fields: &[(&str, &str)]) {
        let Ok(sock) = UnixDatagram::unbound() else {
            return;
        };
        let _ = sock.set_write_timeout(Some(Duration::from_millis(50)));
        if let Some(j) = &self.journal {
            if sock
                .send_to(journal_datagram(priority, msg, fields).as_bytes(), j)
                .is_ok()
            {
                return;
            }
        }
        if let Some(s) = &self.syslog {
            let _ = sock.send_to(syslog_line(priority, msg, fields).as_bytes(), s);
        }
    }
}

/// One line of printable text: control characters become spaces.
fn clean(v: &str) -> String {
    v.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// journald's native protocol: `FIELD=value` lines (values cleaned to one line).
pub fn journal_datagram(priority: Priority, msg: &str, fields: &[(&str, &str)]) -> String {
    let mut d = format!(
        "MESSAGE={}\nPRIORITY={}\nSYSLOG_IDENTIFIER={IDENT}\nSYSLOG_FACILITY={FACILITY_AUTHPRIV}\nSYSLOG_PID={}\n",
        clean(msg),
        priority as u8,
        std::process::id()
    );
    for (k, v) in fields {
        d.push_str(&format!("{k}={}\n", clean(v)));
    }
    d
}

/// Free text in the syslog form: one line, with `\`, `[` and `]` escaped, so no text (an IAM error
/// message, say) can open or close a field block of its own.
fn escape_brackets(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in clean(v).chars() {
        if matches!(c, '\\' | '[' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// RFC 3164 line for /dev/log; the structured fields follow the message as one `[KEY=value ...]` block,
/// the only unescaped brackets in the line.
pub fn syslog_line(priority: Priority, msg: &str, fields: &[(&str, &str)]) -> String {
    let mut line = format!(
        "<{}>{IDENT}[{}]: {}",
        FACILITY_AUTHPRIV * 8 + priority as u8,
        std::process::id(),
        escape_brackets(msg)
    );
    if !fields.is_empty() {
        line.push_str(" [");
        let pairs: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{k}={}", escape_brackets(v).replace(' ', "_")))
            .collect();
        line.push_str(&pairs.join(" "));
        line.push(']');
    }
    line
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let d = journal_datagram(
            Priority::Info,
            "a\nb",
            &[("IAK_USER", "alice"), ("IAK_X", "1\r2")],
        );
        assert!(d.starts_with("MESSAGE=a b\nPRIORITY=6\nSYSLOG_IDENTIFIER=iam-authorized-keys\n"));
        assert!(d.contains("\nIAK_USER=alice\nIAK_X=1 2\n"));
        let l = syslog_line(Priority::Warning, "m", &[("IAK_SOURCE", "stale cache")]);
        assert!(l.starts_with("<84>iam-authorized-keys["), "{l}");
        assert!(l.ends_with("]: m [IAK_SOURCE=stale_cache]"), "{l}");
    }

    #[test]
    fn syslog_free_text_cannot_forge_a_field_block() {
        // Finding 9 of the hardening review: an IAM error text became a second field block.
        let evil = "denied] [IAK_USER=root IAK_RESULT=served IAK_KEYS=1";
        let l = syslog_line(
            Priority::Err,
            &format!("no keys for alice: {evil}"),
            &[("IAK_USER", "alice"), ("IAK_ERROR", evil)],
        );
        let body = &l[l.find("]: ").expect("tag") + 3..];
        let unescaped = |c: char| {
            let mut n = 0;
            let mut prev_backslash = false;
            for ch in body.chars() {
                if ch == c && !prev_backslash {
                    n += 1;
                }
                prev_backslash = ch == '\\' && !prev_backslash;
            }
            n
        };
        assert_eq!(unescaped('['), 1, "{l}");
        assert_eq!(unescaped(']'), 1, "{l}");
        assert!(body.ends_with(']'), "{l}");
        assert_eq!(body.matches(" [IAK_").count(), 1, "{l}");
        assert!(body.contains("[IAK_USER=alice "), "{l}");
    }

    #[test]
    fn journald_then_syslog_fallback_and_rate_limit() {
        let d = tempfile::tempdir().expect("tmp");
        let syslog = d.path().join("log");
        let rx = UnixDatagram::bind(&syslog).expect("bind");
        rx.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        // No journal socket at that path: falls back to syslog.
        let log = Log::new(0, Some(&d.path().join("nojournal")), Some(&syslog));
        log.event(Priority::Info, "hello", &[("IAK_USER", "bob")]);
        let mut buf = [0u8; 512];
        let n = rx.recv(&mut buf).expect("syslog got it");
        assert!(String::from_utf8_lossy(&buf[..n]).contains("hello [IAK_USER=bob]"));
        // Rate limit: the second warning of a kind within the interval stays off the log.
        log.set_marks_dir(d.path(), crate::fsutil::euid());
        log.warn_limited("stale", "bob", "first");
        log.warn_limited("stale", "bob", "second");
        log.warn_limited("stale", "carol", "third");
        let mut got = Vec::new();
        rx.set_nonblocking(true).expect("nb");
        std::thread::sleep(Duration::from_millis(50));
        while let Ok(n) = rx.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].contains("first") && got[1].contains("third"));
    }
}
