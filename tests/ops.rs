//! Black-box tests of the operator tools against moto: `cache show|purge|warm` (human and JSON), the audit
//! events (syslog fallback on a local socket; journald itself is tested by tests/audit_test.sh), man page,
//! completions and --version. `doctor` needs sshd and is tested in tests/e2e.sh.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/proxy.rs"]
mod proxy;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use harness::*;

/// `iam-authorized-keys SUBCOMMAND... [global options]` with the case's endpoint and cache, sshd-like env.
fn tool(c: &Case, endpoint: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .env_clear()
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .current_dir("/")
        .stdin(Stdio::null())
        .args(args)
        .args(["--uid", "5000", "--endpoint-url", endpoint, "--cache-dir"])
        .arg(c.cache())
        .output()
        .expect("run tool")
}

#[test]
fn cache_show_purge_and_warm() {
    let c = Case::new();
    let (u, _) = c.user_with_key("cachetool");
    let (v, _) = c.user_with_key("cachetool2");
    std::fs::create_dir(c.cache()).expect("mkdir");
    std::fs::set_permissions(c.cache(), std::fs::Permissions::from_mode(0o700)).expect("chmod");

    // warm: fetched from IAM, so the first login is a cache hit.
    let w = tool(&c, &c.proxy.url(), &["cache", "warm", "--json", &u, &v]);
    assert!(w.status.success(), "{}", stderr(&w));
    let j = json(&w);
    assert_eq!(j["warmed"][0]["source"], "iam");
    assert_eq!(j["warmed"][0]["keys"], 1);
    let first = c.run_at(DEAD, &u, &["--json"]);
    assert_eq!(json(&first)["source"], "cache");
    let again = tool(&c, &c.proxy.url(), &["cache", "warm", &u]);
    assert!(
        stdout(&again).contains(&format!("{u}: 1 key(s), from cache (0 IAM call(s))")),
        "{}",
        stdout(&again)
    );

    // show: one user, then all; human and JSON.
    let s = tool(&c, DEAD, &["cache", "show", &u]);
    let text = stdout(&s);
    assert!(text.contains(&format!("{u} ({u}): fresh, age ")), "{text}");
    assert!(text.contains("APKA") && text.contains("SHA256:"), "{text}");
    let all = json(&tool(&c, DEAD, &["cache", "show", "--json"]));
    let names: Vec<&str> = all["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter_map(|r| r["iam_user"].as_str())
        .collect();
    assert_eq!(names.len(), 2, "{all}");
    assert_eq!(all["records"][0]["state"], "fresh");
    assert!(all["records"][0]["keys"][0]["fingerprint"]
        .as_str()
        .is_some_and(|f| f.starts_with("SHA256:")));

    // A tampered record is shown as untrusted, not parsed.
    std::fs::set_permissions(c.record(&v), std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let t = json(&tool(&c, DEAD, &["cache", "show", "--json", &v]));
    assert_eq!(t["records"][0]["state"], "untrusted");
    assert!(t["records"][0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("world-writable")));

    // purge one, then all.
    let p = tool(&c, DEAD, &["cache", "purge", &u]);
    assert_eq!(stdout(&p), format!("removed 1 record(s): {u}\n"));
    assert_eq!(
        json(&tool(&c, DEAD, &["cache", "show", "--json", &u]))["records"][0]["state"],
        "absent"
    );
    let pa = json(&tool(&c, DEAD, &["cache", "purge", "--all", "--json"]));
    assert_eq!(pa["removed"], serde_json::json!([v]));
    let none = tool(&c, DEAD, &["cache", "purge", "--json", "nobodyhere"]);
    assert_eq!(json(&none)["removed"], serde_json::json!([]));

    // warm fails loudly when IAM cannot answer, and says which user.
    let f = tool(&c, DEAD, &["cache", "warm", "--timeout", "1s", &u]);
    assert_eq!(f.status.code(), Some(4), "{}", stderr(&f));
    assert!(stdout(&f).contains(&format!("{u}: FAILED")));

    // The tools never create or trust an unsafe cache directory.
    std::fs::set_permissions(c.cache(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let bad = tool(&c, DEAD, &["cache", "show"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("world-writable"), "{}", stderr(&bad));
    std::fs::set_permissions(c.cache(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
}

/// Collects what arrives on a syslog socket within a short time.
fn drain(rx: &UnixDatagram) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 8192];
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    while let Ok(n) = rx.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got
}

#[test]
fn audit_events_fall_back_to_syslog_and_warnings_are_rate_limited() {
    let c = Case::new();
    let (u, k) = c.user_with_key("audit");
    let sock = c.dir.path().join("log");
    let rx = UnixDatagram::bind(&sock).expect("bind syslog socket");
    let sink = [
        "--journal-socket",
        "none",
        "--syslog-socket",
        sock.to_str().expect("utf8"),
    ];
    let fp = {
        let j = json(&c.run(&u, &[&sink[..], &["--json"]].concat()));
        j["keys"][0]["fingerprint"]
            .as_str()
            .expect("fp")
            .to_string()
    };
    drain(&rx);

    let mut cmd = command(&c.proxy.url(), &c.cache(), &u, &sink);
    cmd.args([fp.as_str(), "ssh-ed25519"]);
    let o = cmd.output().expect("run");
    assert_eq!(
        served(&o, &u),
        vec![canonical(&k)],
        "stdout stays authorized_keys"
    );
    let events = drain(&rx);
    assert_eq!(events.len(), 1, "one event per lookup: {events:?}");
    let e = &events[0];
    assert!(
        e.starts_with("<86>iam-authorized-keys["),
        "authpriv.info: {e}"
    );
    for field in [
        format!("IAK_USER={u}"),
        format!("IAK_IAM_USER={u}"),
        "IAK_SOURCE=cache".into(),
        "IAK_RESULT=served".into(),
        "IAK_KEYS=1".into(),
        format!("IAK_OFFERED_FP={fp}"),
        "IAK_OFFERED_TYPE=ssh-ed25519".into(),
        "IAK_OFFERED_MATCH=APKA".into(),
        "IAK_DURATION_MS=".into(),
    ] {
        assert!(e.contains(&field), "{field} missing in {e}");
    }

    // IAM down, record expired: served stale; the stale warning reaches the log once per minute, the
    // audit event every time.
    for _ in 0..3 {
        let o = c.run_at(
            DEAD,
            &u,
            &[&sink[..], &["--ttl", "0", "--timeout", "1s"]].concat(),
        );
        assert_eq!(served(&o, &u), vec![canonical(&k)]);
        assert!(stderr(&o).contains("serving cached answer"));
    }
    let events = drain(&rx);
    let warnings = events
        .iter()
        .filter(|e| e.contains("serving cached answer"))
        .count();
    let audits = events
        .iter()
        .filter(|e| e.contains("IAK_SOURCE=stale"))
        .count();
    assert_eq!((warnings, audits), (1, 3), "{events:#?}");
    assert!(events
        .iter()
        .any(|e| e.starts_with("<84>") && e.contains("IAK_SOURCE=stale")));

    // Fail closed: an error event, nothing on stdout.
    let o = c.run_at(
        DEAD,
        &u,
        &[&sink[..], &["--no-cache", "--timeout", "1s"]].concat(),
    );
    assert_eq!(o.status.code(), Some(4));
    assert!(o.stdout.is_empty());
    let events = drain(&rx);
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].starts_with("<83>") && events[0].contains("IAK_RESULT=failed"));
}

#[test]
fn version_man_page_and_completions() {
    let v = Command::new(BIN)
        .arg("--version")
        .output()
        .expect("version");
    let text = stdout(&v);
    assert!(text.starts_with("iam-authorized-keys 0."), "{text}");
    assert!(text.contains("(git "), "{text}");
    let man = stdout(&Command::new(BIN).arg("man").output().expect("man"));
    assert!(man.contains(".TH iam-authorized-keys 8"));
    for opt in ["allowed\\-group", "max\\-stale", "doctor", "cache"] {
        assert!(man.contains(opt), "man page lacks {opt}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let o = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .expect("completions");
        assert!(o.status.success());
        assert!(stdout(&o).contains("allowed-group"), "{shell}");
    }
    let bad = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .expect("completions");
    assert_eq!(bad.status.code(), Some(2));
}
