//! Black-box tests of the access policy against the IAM emulator (moto): allowed groups, the Linux<->IAM
//! name mapping, system accounts, key options, the offered-key audit, cross-account roles, and the shipped
//! least-privilege IAM policy. `tests/run.sh` starts moto and sets IAK_MOTO_URL.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/proxy.rs"]
mod proxy;

use std::collections::BTreeSet;
use std::process::Command;

use harness::*;
use proxy::Fault;

const ROLE: &str = "arn:aws:iam::123456789012:role/iak-reader";

/// Runs `ssh-keygen -l` over printed lines: OpenSSH itself must accept options and keys.
fn keygen_accepts(c: &Case, text: &[u8]) -> usize {
    let f = c.dir.path().join("printed");
    std::fs::write(&f, text).expect("write");
    let o = Command::new("ssh-keygen")
        .arg("-l")
        .arg("-f")
        .arg(&f)
        .output()
        .expect("ssh-keygen");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).lines().count()
}

#[test]
fn allowed_groups_decide_and_are_cached_with_the_keys() {
    let c = Case::new();
    let (member, k) = c.user_with_key("grpin");
    let (outsider, _) = c.user_with_key("grpout");
    let (loner, _) = c.user_with_key("grpnone");
    let (allowed, other) = (unique("ssh-users"), unique("devs"));
    c.iam.group(&allowed, &[&member]);
    c.iam.group(&other, &[&member, &outsider]);
    let rule = ["--allowed-group", allowed.as_str()];

    assert_eq!(served(&c.run(&member, &rule), &member), vec![canonical(&k)]);
    assert_eq!(c.proxy.calls("ListGroupsForUser", &member), 1);

    for (u, groups) in [(&outsider, other.as_str()), (&loner, "none")] {
        let o = c.run(u, &rule);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(o.stdout.is_empty(), "{u}: keys printed for a refused user");
        let j = json(&c.run(u, &[&rule[..], &["--json"]].concat()));
        assert_eq!(j["result"], "refused");
        assert_eq!(j["source"], "cache", "the refusal is cached");
        let why = j["decision"].as_str().expect("decision");
        assert!(
            why.contains("not in any allowed IAM group") && why.contains(groups),
            "{why}"
        );
        // Refused users cost no key body fetch, and the cached refusal no further call.
        assert_eq!(c.proxy.calls("GetSSHPublicKey", u), 0);
        assert_eq!(
            c.proxy.calls_for(u),
            2,
            "{u}: one list of keys and one of groups"
        );
    }

    // -v explains the decision.
    let v = c.run(&member, &[&rule[..], &["-v"]].concat());
    assert!(
        stderr(&v).contains(&format!("allowed: member of allowed IAM group {allowed}")),
        "{}",
        stderr(&v)
    );

    // Membership is refreshed with the keys: joining the group takes effect after the negative TTL.
    c.iam.join(&outsider, &allowed);
    assert!(c.run(&outsider, &rule).stdout.is_empty(), "still cached");
    let now_in = c.run(&outsider, &[&rule[..], &["--negative-ttl", "0"]].concat());
    assert_eq!(served(&now_in, &outsider).len(), 1);

    // A record made under another rule is not reused: without the rule the loner is served; with a rule
    // that admits no group of the member, the member's cached keys are withheld without asking IAM.
    assert_eq!(served(&c.run(&loner, &[]), &loner).len(), 1);
    let before = c.proxy.calls_for(&member);
    let strict = c.run(&member, &["--allowed-group", "nobody-is-here"]);
    assert!(strict.status.success() && strict.stdout.is_empty());
    assert_eq!(c.proxy.calls_for(&member), before);
}

#[test]
fn group_and_key_lists_run_in_parallel() {
    let c = Case::new();
    let (u, _) = c.user_with_key("parallel");
    let g = unique("par-users");
    c.iam.group(&g, &[&u]);
    c.proxy.clear();
    // With latency on every request, two lists in flight at once can only mean they were sent together.
    c.proxy.set(Fault {
        latency_ms: 300,
        ..Fault::default()
    });
    let o = c.run(&u, &["--allowed-group", &g, "--timeout", "10s"]);
    assert_eq!(served(&o, &u).len(), 1);
    assert_eq!(c.proxy.calls_for(&u), 3);
    assert!(
        c.proxy.max_in_flight() >= 2,
        "ListGroupsForUser and ListSSHPublicKeys were not concurrent"
    );
}

#[test]
fn mapped_names_reach_the_right_iam_user() {
    let c = Case::new();
    let pid = std::process::id();
    // IAM name -> Linux name, as documented in the README.
    let cases = [
        (
            format!("b{pid}+o@x.io"),
            format!("b{pid}.plus.o.at.x.io"),
            "fold",
        ),
        (
            format!("c{pid}=x,y"),
            format!("c{pid}.equal.x.comma.y"),
            "fold",
        ),
        (format!("d{pid}.m_n-o"), format!("d{pid}.m_n-o"), "fold"),
        (format!("E{pid}.Up"), format!("E{pid}.Up"), "preserve"),
    ];
    for (iam, linux, case) in &cases {
        c.iam.user(iam);
        let k = keygen(c.dir.path(), &format!("{linux}-k"));
        c.iam.upload(iam, &k);
        let o = c.run(linux, &["--name-case", case]);
        assert_eq!(served(&o, iam), vec![canonical(&k)], "{linux}");
        assert_eq!(c.proxy.calls("ListSSHPublicKeys", iam), 1, "{iam}");
        // `map` agrees in both directions.
        let m = Command::new(BIN)
            .args(["map", "--json", "--name-case", case, iam, linux])
            .output()
            .expect("map");
        let j: serde_json::Value = serde_json::from_slice(&m.stdout).expect("map json");
        assert_eq!(j[0]["as_iam_user"]["linux_login"], linux.as_str());
        assert_eq!(j[1]["as_linux_login"]["iam_user"], iam.as_str());
    }
    // Spellings that are no Linux name of any IAM user: refused before any call.
    for bad in [
        format!("B{pid}.plus.o.at.x.io"),
        format!("b{pid}+o@x.io"),
        format!("-x{pid}"),
        format!(".at.x{pid}"),
        format!("{pid}digits"),
    ] {
        let o = c.run(&bad, &[]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(o.stdout.is_empty());
        assert!(stderr(&o).contains("invalid user name"), "{}", stderr(&o));
    }
    // An IAM name that holds an escape word has no Linux name at all: `map` says why.
    let m = Command::new(BIN)
        .args(["map", "a.at.b"])
        .output()
        .expect("map");
    let text = String::from_utf8_lossy(&m.stdout);
    assert!(
        text.contains("Linux login a.at.b -> IAM user a@b"),
        "{text}"
    );
    assert!(text.contains("as an IAM user: none"), "{text}");
    assert_eq!(c.proxy.calls_for("a.at.b"), 0);
}

#[test]
fn system_accounts_are_never_served() {
    let c = Case::new();
    // IAM users that share names with local system accounts (daemon has UID 1 in every /etc/passwd).
    for name in ["daemon", "root"] {
        c.iam.user_if_missing(name);
        c.iam
            .upload(name, &keygen(c.dir.path(), &format!("{name}-k")));
    }
    let (u, _) = c.user_with_key("regular");
    let refusals: Vec<(&str, Vec<&str>, &str)> = vec![
        ("daemon", vec![FROM_PASSWD], "UID 1, below --min-uid 1000"),
        ("root", vec![FROM_PASSWD], "root is a system account"),
        ("root", vec!["--uid", "5000"], "root is a system account"),
        (&u, vec!["--uid", "999"], "UID 999"),
        (&u, vec!["--uid", "0"], "UID 0"),
        (&u, vec!["--deny-user", &u], "--deny-user"),
        (&u, vec![FROM_PASSWD], "no local account"),
        (
            "daemon",
            vec!["--allow-user", "daemon", "--deny-user", "daemon"],
            "--deny-user",
        ),
    ];
    for (name, extra, why) in &refusals {
        let o = c.run(name, &[&extra[..], &["--json"]].concat());
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let j = json(&o);
        assert_eq!(j["result"], "refused", "{name} {extra:?}");
        assert_eq!(j["keys"].as_array().map(Vec::len), Some(0));
        let d = j["decision"].as_str().expect("decision");
        assert!(d.contains(why), "{name} {extra:?}: {d}");
        assert!(c.run(name, extra).stdout.is_empty());
    }
    for name in ["daemon", "root", u.as_str()] {
        assert_eq!(
            c.proxy.calls_for(name),
            0,
            "{name}: IAM asked about a refused account"
        );
    }
    assert!(
        !c.record("daemon").exists() && !c.record("root").exists(),
        "refused accounts must not touch the cache"
    );
    // An explicit allow serves the account.
    let o = c.run("daemon", &[FROM_PASSWD, "--allow-user", "daemon"]);
    assert!(
        !served(&o, "daemon").is_empty(),
        "daemon allowed but not served"
    );
    let o = c.run(&u, &["--min-uid", "500", "--uid", "999"]);
    assert_eq!(served(&o, &u).len(), 1);
}

#[test]
fn key_options_prefix_every_line() {
    let c = Case::new();
    let (u, k) = c.user_with_key("opts");
    let o = c.run(
        &u,
        &["--key-options", "RESTRICT,pty,from=\"127.0.0.1,::1\""],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let want = format!(
        "restrict,pty,from=\"127.0.0.1,::1\" {} iam:{u}:APKA",
        canonical(&k)
    );
    assert!(text.starts_with(&want), "{text}");
    assert_eq!(text.lines().count(), 1);
    assert_eq!(keygen_accepts(&c, &o.stdout), 1);

    let o = c.run(
        &u,
        &[
            "--key-options",
            "restrict",
            "--key-expiry",
            "--ttl",
            "5m",
            "--max-stale",
            "1h",
        ],
    );
    let line = stdout(&o);
    let stamp = line
        .split("expiry-time=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("expiry-time");
    assert_eq!(stamp.len(), 15, "{line}");
    assert!(line.starts_with("restrict,expiry-time=\""), "{line}");
    assert_eq!(keygen_accepts(&c, &o.stdout), 1);
    let j = json(&c.run(&u, &["--key-options", "restrict", "--json"]));
    assert_eq!(j["options"], "restrict");
    assert!(j["keys"][0]["line"]
        .as_str()
        .expect("line")
        .starts_with("restrict ssh-ed25519 "));

    // Options outside OpenSSH's grammar, or that would change what a key is, are configuration errors.
    for bad in [
        "cert-authority",
        "restrict,command=\"a\"b\"",
        "from=\"x y\"",
        "restrict\nssh-rsa",
    ] {
        let o = c.run(&u, &["--key-options", bad]);
        assert_eq!(o.status.code(), Some(3), "{bad:?}");
        assert!(o.stdout.is_empty());
        assert!(stderr(&o).contains("--key-options"), "{}", stderr(&o));
    }
}

#[test]
fn offered_key_is_audited_not_printed() {
    let c = Case::new();
    let (u, k) = c.user_with_key("audit");
    let j = json(&c.run(&u, &["--json"]));
    let fp = j["keys"][0]["fingerprint"]
        .as_str()
        .expect("fp")
        .to_string();
    let run = |fp: &str| {
        let mut cmd = command(&c.proxy.url(), &c.cache(), &u, &["-v"]);
        cmd.args([fp, "ssh-ed25519"]);
        cmd.output().expect("run")
    };
    let hit = run(&fp);
    assert_eq!(served(&hit, &u), vec![canonical(&k)]);
    assert!(
        stderr(&hit).contains(&format!("offered key {fp} served as IAM key APKA")),
        "{}",
        stderr(&hit)
    );
    let miss = run("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    assert_eq!(served(&miss, &u), vec![canonical(&k)]);
    assert!(
        stderr(&miss).contains("not among the 1 served key(s)"),
        "{}",
        stderr(&miss)
    );
    // Garbage where %f belongs is logged as such and changes nothing.
    let junk = run("$(id)");
    assert_eq!(served(&junk, &u), vec![canonical(&k)]);
    assert!(stderr(&junk).contains("ignoring offered key fingerprint"));
}

#[test]
fn assume_role_reads_users_with_the_role_credentials() {
    let c = Case::new();
    c.iam.role_if_missing("iak-reader");
    let (u, k) = c.user_with_key("xacct");
    c.proxy.clear();
    let o = c.run(
        &u,
        &[
            "--assume-role",
            ROLE,
            "--external-id",
            "fleet-7",
            "--sts-endpoint-url",
            &c.proxy.url(),
        ],
    );
    assert_eq!(served(&o, &u), vec![canonical(&k)]);
    assert_eq!(c.proxy.calls("AssumeRole", ""), 1);
    // The host's credentials ("test") only signed AssumeRole; IAM saw the role's temporary credentials.
    assert_eq!(
        c.proxy.signers("AssumeRole"),
        BTreeSet::from(["test".to_string()])
    );
    let iam_signers = c.proxy.signers("ListSSHPublicKeys");
    assert_eq!(iam_signers.len(), 1);
    assert!(!iam_signers.contains("test"), "{iam_signers:?}");
    // Nothing of the role's credentials is written anywhere we own.
    for e in std::fs::read_dir(c.cache()).expect("ls") {
        let text = std::fs::read_to_string(e.expect("entry").path()).unwrap_or_default();
        for key in &iam_signers {
            assert!(!text.contains(key.as_str()), "credentials on disk");
        }
    }
    // A bad ARN is a configuration error, before any call.
    let o = c.run(&u, &["--assume-role", "arn:aws:iam::1:role/x"]);
    assert_eq!(o.status.code(), Some(3));
}

/// Allowed actions of every statement in the shipped policy files, as `service:Action`.
fn policy_actions(files: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for f in files {
        let path = format!("{}/examples/iam/{f}", env!("CARGO_MANIFEST_DIR"));
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("policy file")).expect(f);
        assert_eq!(doc["Version"], "2012-10-17", "{f}");
        for st in doc["Statement"].as_array().expect("statements") {
            assert_eq!(st["Effect"], "Allow", "{f}");
            assert!(
                st["Resource"].as_str().is_some_and(|r| r != "*"),
                "{f}: resource must be scoped"
            );
            match &st["Action"] {
                serde_json::Value::String(a) => {
                    out.insert(a.clone());
                }
                serde_json::Value::Array(v) => {
                    out.extend(v.iter().map(|a| a.as_str().expect("action").to_string()))
                }
                other => panic!("{f}: Action {other}"),
            }
        }
    }
    out
}

#[test]
fn shipped_iam_policy_covers_exactly_the_calls_made() {
    let c = Case::new();
    c.iam.role_if_missing("iak-reader");
    let (u, _) = c.user_with_key("policy");
    let g = unique("policy-users");
    c.iam.group(&g, &[&u]);
    let (ghost, gone) = (unique("policyghost"), unique("policynokeys"));
    c.iam.user(&gone);
    c.proxy.clear();
    for name in [&u, &ghost, &gone] {
        let o = c.run(
            name,
            &[
                "--allowed-group",
                &g,
                "--assume-role",
                ROLE,
                "--sts-endpoint-url",
                &c.proxy.url(),
                "--no-cache",
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let used = c.proxy.actions();
    let granted = policy_actions(&["read-keys.json", "host-assume-role.json"]);
    assert_eq!(
        used, granted,
        "calls made vs. actions the shipped policies grant"
    );

    // sync-users (dry run: it only reads) needs exactly what sync-users.json grants.
    c.proxy.clear();
    let o = Command::new(BIN)
        .env_clear()
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .args([
            "sync-users",
            "--dry-run",
            "--json",
            "--group",
            &g,
            "--sudo-group",
            &g,
        ])
        .args(["--endpoint-url", &c.proxy.url(), "--no-cache"])
        .output()
        .expect("sync-users");
    assert!(o.status.success(), "{}", stderr(&o));
    let plan = json(&o);
    assert_eq!(plan["created"], serde_json::json!([u]), "{plan}");
    assert_eq!(c.proxy.actions(), policy_actions(&["sync-users.json"]));
    // The identity account's trust policy names the external id condition.
    let trust = std::fs::read_to_string(format!(
        "{}/examples/iam/reader-trust-policy.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("trust policy");
    let t: serde_json::Value = serde_json::from_str(&trust).expect("trust json");
    assert_eq!(t["Statement"][0]["Action"], "sts:AssumeRole");
    assert!(trust.contains("sts:ExternalId"));
}
