//! Diagnostics: stderr for the person at the terminal, syslog (`/dev/log`, facility authpriv) for warnings,
//! because sshd discards the command's stderr outside debug mode. Never stdout.

use std::io::Write;
use std::os::unix::net::UnixDatagram;

#[derive(Debug, Clone, Copy)]
pub struct Log {
    verbose: u8,
}

const FACILITY_AUTHPRIV: u8 = 10;

impl Log {
    pub fn new(verbose: u8) -> Self {
        Log { verbose }
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

    /// Something an operator should hear about: stderr and syslog.
    pub fn warn(&self, msg: &str) {
        self.stderr(msg);
        syslog(4, msg);
    }

    /// The lookup failed: stderr and syslog.
    pub fn error(&self, msg: &str) {
        self.stderr(msg);
        syslog(3, msg);
    }

    /// Which key sshd offered (`%f %t`) and what became of it: stderr with -v, syslog at info level.
    pub fn audit_offered(&self, login: &str, offered: &crate::app::Offered, what: &str) {
        let Some(fp) = &offered.fingerprint else {
            return;
        };
        let msg = format!(
            "offered key {fp} ({}) for {login}: {what}",
            offered.key_type.as_deref().unwrap_or("type not given")
        );
        self.info(&msg);
        syslog(6, &msg);
    }

    fn stderr(&self, msg: &str) {
        let _ = writeln!(std::io::stderr().lock(), "iam-authorized-keys: {msg}");
    }
}

/// Best effort: a missing or full syslog socket must never fail a login.
fn syslog(severity: u8, msg: &str) {
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let _ = sock.set_write_timeout(Some(std::time::Duration::from_millis(50)));
    let line = format!(
        "<{}>iam-authorized-keys[{}]: {}",
        FACILITY_AUTHPRIV * 8 + severity,
        std::process::id(),
        msg.replace(['\n', '\r'], " ")
    );
    let _ = sock.send_to(line.as_bytes(), "/dev/log");
}
