//! Chaining the AuthorizedKeysCommand that was in effect before ours (EC2 Instance Connect's runner,
//! SSSD's `sss_ssh_authorizedkeys`, `userdbctl ssh-authorized-keys`): sshd runs one command, so ours runs
//! the other one too and prints both answers. Nothing that logged in before stops logging in.
//!
//! The other command starts before our own lookup and runs beside it, under the same deadline, as the
//! same (AuthorizedKeysCommandUser) user, in its own process group so that a hang is ended whole. Its
//! program must pass the checks sshd itself applies to a command. Its output is untrusted text: each line
//! must be an authorized_keys line whose options pass our grammar and whose key parses; it is printed
//! re-encoded, with a comment naming the command. Anything else is dropped and counted. Its failure,
//! hang or garbage never blocks our keys, and our failure never blocks its keys.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::keyopts::KeyOptions;
use crate::keys::{self, CanonicalKey};

/// Most output read from the other command: far more than any real answer (a few keys).
const MAX_OUTPUT: u64 = 256 * 1024;

/// Most lines taken from it.
const MAX_LINES: usize = 100;

/// The command to chain, as configured (`--chain PATH`, `--chain-arg ARG`...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl ChainCommand {
    /// The program's file name, for comments and logs.
    pub fn name(&self) -> String {
        self.program
            .file_name()
            .map(|n| crate::username::sanitize(&n.to_string_lossy()))
            .unwrap_or_default()
    }
}

/// One accepted line of the other command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainedKey {
    pub options: Option<KeyOptions>,
    pub key: CanonicalKey,
}

/// What the other command gave.
#[derive(Debug, Clone, Default)]
pub struct Chained {
    pub name: String,
    pub keys: Vec<ChainedKey>,
    /// Lines dropped, with the reason (never the line itself).
    pub dropped: Vec<String>,
    /// Why its answer is incomplete or absent (did not start, exited non-zero, timed out).
    pub error: Option<String>,
}

impl Chained {
    /// `ok`, `failed` or `timeout`, as the audit event and `--json` name it.
    pub fn result(&self) -> &'static str {
        match &self.error {
            None => "ok",
            Some(e) if e.starts_with("timed out") => "timeout",
            Some(_) => "failed",
        }
    }

    /// The authorized_keys lines to print: options, canonical key, and a comment naming the command.
    pub fn lines(&self) -> String {
        self.keys
            .iter()
            .map(|k| match &k.options {
                Some(o) => format!("{} {} chain:{}\n", o.as_str(), k.key.as_str(), self.name),
                None => format!("{} chain:{}\n", k.key.as_str(), self.name),
            })
            .collect()
    }
}

/// Checks `program` the way sshd checks an AuthorizedKeysCommand: an absolute path to a regular file
/// owned by root, and no component from it up to `/` owned by another user or writable by group or
/// others (the sticky bit does not help). Symbolic links are resolved first, as sshd does.
pub fn check_program(program: &Path) -> Result<(), String> {
    if !program.is_absolute() {
        return Err(format!("{} is not an absolute path", program.display()));
    }
    let real = std::fs::canonicalize(program).map_err(|e| format!("{}: {e}", program.display()))?;
    let meta = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", real.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", real.display()));
    }
    let mut at: Option<&Path> = Some(&real);
    while let Some(p) = at {
        let m = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if m.uid() != 0 {
            return Err(format!(
                "{} is owned by uid {}, not root (sshd refuses such a command too)",
                p.display(),
                m.uid()
            ));
        }
        if m.mode() & 0o022 != 0 {
            return Err(format!(
                "{} is group- or world-writable (mode {:04o}; sshd refuses such a command too)",
                p.display(),
                m.mode() & 0o7777
            ));
        }
        at = p.parent();
    }
    Ok(())
}

/// Parses one authorized_keys line of the other command: `[options ]type base64[ comment]`. Options must
/// pass [`KeyOptions::parse`]; the key must pass [`keys::canonicalize`]; the comment is dropped.
pub fn parse_line(line: &str) -> Result<ChainedKey, String> {
    let line = line.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
    if line.chars().any(char::is_control) {
        return Err("holds a control character".into());
    }
    let first = line.split([' ', '\t']).next().unwrap_or_default();
    let (options, key_text) = if looks_like_key_type(first) {
        (None, line)
    } else {
        let end = options_end(line).ok_or(if line.contains('"') {
            "the options' closing quote is missing"
        } else {
            "not an authorized_keys line (no key after the first word)"
        })?;
        let opts = KeyOptions::parse(&line[..end]).map_err(|e| format!("options: {e}"))?;
        (Some(opts), line[end..].trim_start_matches([' ', '\t']))
    };
    let key = keys::canonicalize(key_text).map_err(|e| e.to_string())?;
    Ok(ChainedKey { options, key })
}

/// Key type names as they begin an authorized_keys line without options.
fn looks_like_key_type(word: &str) -> bool {
    ["ssh-", "ecdsa-sha2-", "sk-"]
        .iter()
        .any(|p| word.starts_with(p))
}

/// Where the options field ends: the first space or tab outside double quotes.
fn options_end(line: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ' ' | '\t' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// The other command, started.
pub struct Running {
    name: String,
    child: Option<Child>,
    output: Option<mpsc::Receiver<std::io::Result<Vec<u8>>>>,
    error: Option<String>,
}

/// Starts `cmd` (after [`check_program`]) with stdin from /dev/null and stdout read in a thread, in a
/// process group of its own. A command that cannot start is reported by [`Running::finish`].
pub fn start(cmd: &ChainCommand) -> Running {
    let mut running = Running {
        name: cmd.name(),
        child: None,
        output: None,
        error: None,
    };
    if let Err(e) = check_program(&cmd.program) {
        running.error = Some(format!("not run: {e}"));
        return running;
    }
    let spawned = Command::new(&cmd.program)
        .args(&cmd.args)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            running.error = Some(format!("could not start: {e}"));
            return running;
        }
    };
    if let Some(mut out) = child.stdout.take() {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let r = (&mut out).take(MAX_OUTPUT + 1).read_to_end(&mut buf);
            let _ = tx.send(r.map(|_| buf));
        });
        running.output = Some(rx);
    }
    running.child = Some(child);
    running
}

impl Running {
    /// Waits for the command until `deadline`, ends its process group if it is still running, and
    /// parses what it printed.
    pub fn finish(mut self, deadline: Instant) -> Chained {
        let mut chained = Chained {
            name: self.name.clone(),
            error: self.error.take(),
            ..Chained::default()
        };
        let Some(mut child) = self.child.take() else {
            return chained;
        };
        let status = wait_until(&mut child, deadline);
        // Done or not, nothing it left behind may hold its output open (a background job of a shell
        // script would keep the pipe from reaching end of file until the deadline). Its process group
        // is ours to end: it was made for it.
        if let Ok(pid) = i32::try_from(child.id()) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
        }
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            chained.error =
                Some("timed out at the lookup's deadline; its keys were not used".into());
            return chained;
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(20));
        let bytes = match self.output.take().map(|rx| rx.recv_timeout(left)) {
            Some(Ok(Ok(b))) => b,
            Some(Ok(Err(e))) => {
                chained.error = Some(format!("reading its output: {e}"));
                return chained;
            }
            // Something it started still holds the pipe open: do not wait for it.
            _ => {
                chained.error = Some("timed out reading its output; its keys were not used".into());
                return chained;
            }
        };
        if !status.success() {
            // sshd ignores the output of a command that exits non-zero; so do we.
            chained.error = Some(format!("exited with {status}; its output was ignored"));
            return chained;
        }
        if bytes.len() as u64 > MAX_OUTPUT {
            chained.error = Some(format!("printed more than {MAX_OUTPUT} bytes; ignored"));
            return chained;
        }
        let text = String::from_utf8_lossy(&bytes);
        for (n, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if chained.keys.len() >= MAX_LINES {
                chained
                    .dropped
                    .push(format!("line {}: more than {MAX_LINES} keys", n + 1));
                continue;
            }
            match parse_line(line) {
                Ok(k) => chained.keys.push(k),
                Err(why) => chained.dropped.push(format!("line {}: {why}", n + 1)),
            }
        }
        chained
    }
}

/// The child's exit status, polling until `deadline`; `None` if it is still running then.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) => {}
            Err(_) => return None,
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = include_str!("../tests/fixtures/ed25519.pub");
    const RSA: &str = include_str!("../tests/fixtures/rsa3072.pub");

    #[test]
    fn lines_are_checked_and_re_encoded() {
        let ed = ED.trim();
        let canon = keys::canonicalize(ed).expect("fixture");
        let plain = parse_line(ed).expect("plain key with comment");
        assert_eq!(plain.key, canon);
        assert_eq!(plain.options, None);
        let with = parse_line(&format!("restrict,from=\"10.0.0.0/8\" {ed}")).expect("options");
        assert_eq!(
            with.options.as_ref().map(KeyOptions::as_str),
            Some("restrict,from=\"10.0.0.0/8\"")
        );
        let quoted_space = parse_line(&format!("command=\"/usr/bin/true x\" {}", RSA.trim()))
            .expect("a quoted space inside options");
        assert!(quoted_space.options.is_some());
        for (bad, why) in [
            ("garbage".to_string(), "no key after"),
            (format!("cert-authority {ed}"), "options"),
            (format!("restrict {ed}\u{7}"), "control"),
            (format!("from=\"x {ed}"), "closing quote"),
            ("ssh-ed25519 AAAA".to_string(), "single OpenSSH"),
            (format!("restrict,, {ed}"), "options"),
        ] {
            let e = parse_line(&bad).expect_err(&bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn programs_sshd_would_refuse_are_refused() {
        assert!(check_program(Path::new("relative/cmd"))
            .expect_err("relative")
            .contains("absolute"));
        assert!(check_program(Path::new("/nonexistent/cmd")).is_err());
        // /tmp is world-writable (sticky or not): nothing under it may be chained.
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("cmd");
        std::fs::write(&p, "#!/bin/sh\n").expect("write");
        assert!(check_program(&p).is_err());
        // A root-owned binary in root-owned directories passes (as on any Linux system).
        if std::fs::metadata("/bin/sh").is_ok_and(|m| m.uid() == 0) {
            check_program(Path::new("/bin/sh")).expect("/bin/sh");
        }
    }
}
