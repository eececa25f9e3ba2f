//! Black-box tests of the real binary against the IAM emulator (moto), each through its own counting,
//! fault-injecting proxy: the core lookup, cache and faults. `tests/run.sh` starts moto and sets IAK_MOTO_URL.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/proxy.rs"]
mod proxy;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::*;
use proxy::Fault;

#[test]
fn serves_active_keys_and_follows_iam_changes() {
    let c = Case::new();
    let u = unique("changes");
    c.iam.user(&u);
    let k: Vec<String> = (0..3)
        .map(|i| keygen(c.dir.path(), &format!("k{i}")))
        .collect();
    let ids: Vec<String> = k.iter().map(|b| c.iam.upload(&u, b)).collect();

    let first = c.run(&u, &[]);
    let want: Vec<String> = k.iter().map(|b| canonical(b)).collect();
    let mut got = served(&first, &u);
    got.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(got, want_sorted);
    // Stable order: a second (cached) answer is byte-identical.
    assert_eq!(stdout(&c.run(&u, &[])), stdout(&first));

    // ssh-keygen reads what we print.
    let printed = c.dir.path().join("printed");
    std::fs::write(&printed, &first.stdout).expect("write");
    let fp = Command::new("ssh-keygen")
        .arg("-l")
        .arg("-f")
        .arg(&printed)
        .output()
        .expect("keygen");
    assert!(fp.status.success());
    assert_eq!(String::from_utf8_lossy(&fp.stdout).lines().count(), 3);

    c.iam.deactivate(&u, &ids[1]);
    c.iam.delete(&u, &ids[2]);
    // Still fresh in the cache: unchanged until the TTL passes.
    assert_eq!(served(&c.run(&u, &[]), &u).len(), 3);
    let after = c.run(&u, &["--ttl", "0"]);
    assert_eq!(served(&after, &u), vec![want[0].clone()]);
    let j = json(&c.run(&u, &["--json"]));
    assert_eq!(j["source"], "cache");
    assert_eq!(j["keys"][0]["id"], ids[0].as_str());
    assert!(j["keys"][0]["fingerprint"]
        .as_str()
        .expect("fp")
        .starts_with("SHA256:"));
}

#[test]
fn refresh_with_unchanged_ids_costs_one_call() {
    let c = Case::new();
    let u = unique("refresh");
    c.iam.user(&u);
    for i in 0..5 {
        c.iam.upload(&u, &keygen(c.dir.path(), &format!("k{i}")));
    }
    assert_eq!(served(&c.run(&u, &[]), &u).len(), 5);
    assert_eq!(c.proxy.calls("ListSSHPublicKeys", &u), 1);
    assert_eq!(c.proxy.calls("GetSSHPublicKey", &u), 5);
    c.proxy.clear();
    let o = c.run(&u, &["--ttl", "0", "--json"]);
    assert_eq!(json(&o)["source"], "iam");
    assert_eq!(json(&o)["keys"].as_array().expect("keys").len(), 5);
    assert_eq!(c.proxy.calls_for(&u), 1);
    assert_eq!(c.proxy.calls("ListSSHPublicKeys", &u), 1);
}

#[test]
fn negative_answers_are_answers_and_are_cached() {
    let c = Case::new();
    let empty = unique("nokeys");
    c.iam.user(&empty);
    let ghost = unique("ghost");
    for (u, result) in [(&empty, "no_active_keys"), (&ghost, "no_such_iam_user")] {
        let o = c.run(u, &["--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(json(&o)["result"], result);
        assert_eq!(json(&o)["source"], "iam");
        let plain = c.run(u, &[]);
        assert!(plain.status.success());
        assert!(plain.stdout.is_empty());
        assert_eq!(c.proxy.calls_for(u), 1, "{u}: negative answer not cached");
        // Past the negative TTL it asks again.
        c.run(u, &["--negative-ttl", "0"]);
        assert_eq!(c.proxy.calls_for(u), 2);
    }
}

#[test]
fn warm_hit_needs_no_emulator_and_stale_is_bounded() {
    let c = Case::new();
    let (u, k) = c.user_with_key("stale");
    assert_eq!(served(&c.run(&u, &[]), &u), vec![canonical(&k)]);

    // Emulator gone: fresh record served as is.
    let warm = c.run_at(DEAD, &u, &["--json"]);
    assert!(warm.status.success());
    assert_eq!(json(&warm)["source"], "cache");

    // Expired, IAM unreachable: stale within max-stale, logged on stderr.
    let stale = c.run_at(DEAD, &u, &["--ttl", "0", "--timeout", "2s"]);
    assert_eq!(served(&stale, &u), vec![canonical(&k)]);
    assert!(
        stderr(&stale).contains("serving cached answer"),
        "{}",
        stderr(&stale)
    );

    // max-stale 0: fail closed, nothing printed.
    let closed = c.run_at(
        DEAD,
        &u,
        &["--ttl", "0", "--max-stale", "0", "--timeout", "2s"],
    );
    assert_eq!(closed.status.code(), Some(4), "{}", stderr(&closed));
    assert!(closed.stdout.is_empty());

    // A record older than max-stale is refused too.
    let path = c.record(&u);
    let mut rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    rec["fetched_at"] = (rec["fetched_at"].as_u64().expect("ts") - 7200).into();
    std::fs::write(&path, serde_json::to_vec(&rec).expect("enc")).expect("write");
    let old = c.run_at(DEAD, &u, &["--max-stale", "1h", "--timeout", "2s"]);
    assert_eq!(old.status.code(), Some(4));
    assert!(old.stdout.is_empty());
    // ... and an emulator that comes back heals it.
    assert_eq!(served(&c.run(&u, &[]), &u), vec![canonical(&k)]);
}

#[test]
fn iam_faults_fall_back_to_stale_or_fail_closed() {
    let c = Case::new();
    let (u, k) = c.user_with_key("faults");
    let faults = [
        (
            "throttling",
            Fault {
                status: Some(400),
                body: proxy::THROTTLING.into(),
                ..Fault::default()
            },
        ),
        (
            "503",
            Fault {
                status: Some(503),
                ..Fault::default()
            },
        ),
        (
            "500 malformed",
            Fault {
                status: Some(500),
                body: "<Error><Code".into(),
                ..Fault::default()
            },
        ),
        (
            "200 malformed",
            Fault {
                status: Some(200),
                body: "<ListSSHPublicKeysResponse><Oops".into(),
                ..Fault::default()
            },
        ),
        (
            "reset",
            Fault {
                reset: true,
                ..Fault::default()
            },
        ),
        (
            "hang",
            Fault {
                hang: true,
                ..Fault::default()
            },
        ),
        (
            "body fetch throttled",
            Fault {
                status: Some(400),
                body: proxy::THROTTLING.into(),
                only_action: Some("GetSSHPublicKey".into()),
                ..Fault::default()
            },
        ),
    ];
    for (name, fault) in faults {
        let fresh_user = format!("{u}-{}", name.replace(' ', "-"));
        c.iam.user(&fresh_user);
        c.iam.upload(&fresh_user, &k);
        c.proxy.set(fault);
        let started = Instant::now();
        let cold = c.run(&fresh_user, &["--timeout", "1s"]);
        // Never hang past the deadline (generous margin: this is a bound, not a speed target).
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{name}: took {:?}",
            started.elapsed()
        );
        assert_eq!(cold.status.code(), Some(4), "{name}: {}", stderr(&cold));
        assert!(cold.stdout.is_empty(), "{name}: printed on failure");
        assert!(!stderr(&cold).contains("panicked"), "{name}");

        c.proxy.set(Fault::default());
        assert_eq!(served(&c.run(&fresh_user, &[]), &fresh_user).len(), 1);
        c.proxy.set(Fault {
            only_action: None,
            ..Fault::default()
        });
    }
    // With a stale record, every fault still logs in.
    for fault in [
        Fault {
            status: Some(400),
            body: proxy::THROTTLING.into(),
            ..Fault::default()
        },
        Fault {
            hang: true,
            ..Fault::default()
        },
        Fault {
            reset: true,
            ..Fault::default()
        },
    ] {
        c.proxy.set(Fault::default());
        assert_eq!(served(&c.run(&u, &[]), &u).len(), 1);
        c.proxy.set(fault);
        let o = c.run(&u, &["--ttl", "0", "--timeout", "1s", "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(json(&o)["source"], "stale");
    }
}

/// Writes a record for `user` that a local attacker would like us to serve, with file mode `mode`.
#[test]
fn tampered_records_are_ignored_and_replaced() {
    let c = Case::new();
    let u = unique("tamper");
    c.iam.user(&u);
    let good = keygen(c.dir.path(), "good");
    let evil = keygen(c.dir.path(), "evil");
    c.iam.upload(&u, &good);
    assert_eq!(served(&c.run(&u, &[]), &u), vec![canonical(&good)]);
    let rec = c.record(&u);

    // Sanity: a planted record that passes every check would be served; that is what the checks stop.
    plant(&rec, &u, &evil, 0o600);
    assert_eq!(served(&c.run(&u, &[]), &u), vec![canonical(&evil)]);

    let outside = c.dir.path().join("outside.json");
    type Tamper<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let tampers: Vec<Tamper> = vec![
        (
            "chmod 666",
            Box::new(|| {
                plant(&rec, &u, &evil, 0o666);
            }),
        ),
        (
            "chmod 620",
            Box::new(|| {
                plant(&rec, &u, &evil, 0o620);
            }),
        ),
        (
            "owner changed",
            Box::new(|| {
                plant(&rec, &u, &evil, 0o600);
                std::os::unix::fs::chown(&rec, Some(65534), Some(65534))
                    .expect("chown (tests run as root)");
            }),
        ),
        (
            "symlink",
            Box::new(|| {
                plant(&outside, &u, &evil, 0o600);
                std::fs::remove_file(&rec).expect("rm");
                std::os::unix::fs::symlink(&outside, &rec).expect("symlink");
            }),
        ),
        (
            "truncated",
            Box::new(|| {
                let bytes = std::fs::read(&rec).expect("read");
                std::fs::write(&rec, &bytes[..bytes.len() / 2]).expect("truncate");
            }),
        ),
        (
            "fifo",
            Box::new(|| {
                std::fs::remove_file(&rec).expect("rm");
                let st = Command::new("mkfifo").arg(&rec).status().expect("mkfifo");
                assert!(st.success());
            }),
        ),
        (
            "wrong user",
            Box::new(|| plant(&rec, "someoneelse", &evil, 0o600)),
        ),
        (
            "garbage key",
            Box::new(|| {
                let s = std::fs::read_to_string(&rec).expect("read");
                std::fs::write(&rec, s.replace("ssh-ed25519 AAAA", "ssh-ed25519 AAAB"))
                    .expect("write");
            }),
        ),
    ];
    for (name, tamper) in tampers {
        // Start each from a good record.
        c.run(&u, &["--ttl", "0"]);
        tamper();
        let o = c.run(&u, &[]);
        assert_eq!(served(&o, &u), vec![canonical(&good)], "{name}");
        assert!(
            stderr(&o).contains("ignoring cache record"),
            "{name}: {}",
            stderr(&o)
        );
        let meta = std::fs::symlink_metadata(&rec).expect("meta");
        assert!(meta.is_file(), "{name}: not replaced by a regular file");
        assert_eq!(meta.mode() & 0o777, 0o600, "{name}");
        assert_eq!(meta.uid(), rustix_euid(), "{name}");
        // And the replacement is trusted again.
        let again = c.run_at(DEAD, &u, &["--json"]);
        assert_eq!(json(&again)["source"], "cache", "{name}");
    }
    assert!(std::fs::read_to_string(&outside)
        .expect("outside")
        .contains("APKAPLANTED"));
}

fn rustix_euid() -> u32 {
    std::fs::metadata("/proc/self").expect("proc").uid()
}

#[test]
fn unsafe_cache_directory_is_not_used() {
    let c = Case::new();
    let (u, k) = c.user_with_key("baddir");
    std::fs::create_dir(c.cache()).expect("mkdir");
    std::fs::set_permissions(c.cache(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let o = c.run(&u, &[]);
    assert_eq!(served(&o, &u), vec![canonical(&k)]);
    assert!(stderr(&o).contains("cache not used"), "{}", stderr(&o));
    assert!(!c.record(&u).exists(), "wrote into an unsafe directory");
}

#[test]
fn concurrent_cold_invocations_are_single_flight() {
    let c = Case::new();
    let (u, want) = c.user_with_keys("storm", 3);
    // Latency makes the race real: every process starts while the first is still fetching.
    c.proxy.set(Fault {
        latency_ms: 100,
        ..Fault::default()
    });
    let children: Vec<_> = (0..100)
        .map(|_| {
            command(&c.proxy.url(), &c.cache(), &u, &["--timeout", "10s"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let mut first: Option<Vec<u8>> = None;
    for child in children {
        let o = child.wait_with_output().expect("wait");
        let mut got = served(&o, &u);
        got.sort();
        assert_eq!(got, want);
        // Losing the race to create the cache directory must not mean "no cache" (and no single flight).
        assert!(!stderr(&o).contains("cache not used"), "{}", stderr(&o));
        match &first {
            None => first = Some(o.stdout.clone()),
            Some(f) => assert_eq!(&o.stdout, f, "outputs differ"),
        }
    }
    assert_eq!(
        c.proxy.calls_for(&u),
        1 + 3,
        "IAM calls not bounded by single flight"
    );
    // No stray temp files.
    let names: Vec<_> = std::fs::read_dir(c.cache())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn invalid_names_are_refused_before_any_call() {
    let c = Case::new();
    let long = "a".repeat(65);
    for bad in [
        "../etc/passwd",
        "a b",
        "",
        ".",
        "..",
        long.as_str(),
        "al\u{e9}",
        "a\nb",
        "x;id",
    ] {
        let o = c.run(bad, &[]);
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
        assert!(o.stdout.is_empty());
        assert!(
            stderr(&o).contains("invalid user name"),
            "{bad:?}: {}",
            stderr(&o)
        );
    }
    let o = Command::new(BIN)
        .arg("--")
        .arg(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"a\xffb"))
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not valid UTF-8"));
    assert_eq!(c.proxy.calls_for(""), 0);
    assert!(!c.cache().exists() || std::fs::read_dir(c.cache()).expect("ls").count() == 0);
}

#[test]
fn credentials_come_from_a_trusted_file_without_environment() {
    let c = Case::new();
    let (u, k) = c.user_with_key("creds");
    let creds = c.dir.path().join("credentials");
    let mut f = std::fs::File::create(&creds).expect("create");
    writeln!(
        f,
        "[iak]\naws_access_key_id = test\naws_secret_access_key = test"
    )
    .expect("write");
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let run = || {
        Command::new(BIN)
            .env_clear()
            .current_dir("/")
            .args([
                "--endpoint-url",
                &c.proxy.url(),
                "--no-cache",
                "--profile",
                "iak",
                "--uid",
                "5000",
            ])
            .arg("--credentials-file")
            .arg(&creds)
            .arg("--")
            .arg(&u)
            .output()
            .expect("run")
    };
    assert_eq!(served(&run(), &u), vec![canonical(&k)]);
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o660)).expect("chmod");
    let o = run();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("group- or world-writable"));
    assert!(o.stdout.is_empty());
}

#[test]
fn storm_of_200_mixed_invocations_while_records_refresh() {
    let c = Case::new();
    let (fresh, kf) = c.user_with_key("stormfresh");
    let (stale, ks1) = c.user_with_key("stormstale");
    let (cold, kc) = c.user_with_keys("stormcold", 3);
    let ghost = unique("stormghost");
    assert_eq!(served(&c.run(&fresh, &[]), &fresh).len(), 1);
    assert_eq!(served(&c.run(&stale, &[]), &stale).len(), 1);
    // The stale user's record expires (within max-stale) and IAM gains a key: the storm must refresh it.
    let ks2 = keygen(c.dir.path(), "stale2");
    c.iam.upload(&stale, &ks2);
    let path = c.record(&stale);
    let mut rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    rec["fetched_at"] = (rec["fetched_at"].as_u64().expect("ts") - 400).into();
    std::fs::write(&path, serde_json::to_vec(&rec).expect("enc")).expect("write");
    c.proxy.clear();
    c.proxy.set(Fault {
        latency_ms: 50,
        ..Fault::default()
    });

    let mut want: std::collections::HashMap<&str, Vec<String>> = std::collections::HashMap::new();
    want.insert(&fresh, vec![canonical(&kf)]);
    let mut s = vec![canonical(&ks1), canonical(&ks2)];
    s.sort();
    want.insert(&stale, s);
    want.insert(&cold, kc.clone());
    want.insert(&ghost, vec![]);
    let users = [&fresh, &stale, &cold, &ghost];
    let children: Vec<_> = (0..200)
        .map(|i| {
            let u = users[i % 4];
            let child = command(&c.proxy.url(), &c.cache(), u, &["--timeout", "15s"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn");
            (u, child)
        })
        .collect();
    for (u, child) in children {
        let o = child.wait_with_output().expect("wait");
        let mut got = served(&o, u);
        got.sort();
        assert_eq!(&got, &want[u.as_str()], "{u}: incomplete or wrong answer");
        let err = stderr(&o);
        assert!(
            !err.contains("ignoring cache record"),
            "{u} read a partial record: {err}"
        );
        assert!(
            !err.contains("serving cached answer"),
            "{u} served stale with IAM up: {err}"
        );
    }
    // Single flight: one refresh per user, bodies only for ids not already cached.
    assert_eq!(c.proxy.calls_for(&fresh), 0);
    assert_eq!(c.proxy.calls("ListSSHPublicKeys", &stale), 1);
    assert_eq!(c.proxy.calls("GetSSHPublicKey", &stale), 1);
    assert_eq!(
        c.proxy.calls_for(&cold),
        1 + 3,
        "(plus {} SDK retries)",
        c.proxy.retries_for(&cold)
    );
    assert_eq!(c.proxy.calls_for(&ghost), 1);
}

#[test]
fn sigkill_mid_refresh_leaves_no_broken_record_and_no_stuck_lock() {
    let c = Case::new();
    let (u, want) = c.user_with_keys("sigkill", 2);
    assert_eq!(served(&c.run(&u, &[]), &u).len(), 2);
    for i in 0..30u64 {
        // Vary where the kill lands: before the request, while IAM answers, while the record is written.
        c.proxy.set(Fault {
            latency_ms: i % 3 * 5,
            ..Fault::default()
        });
        let mut victim = command(&c.proxy.url(), &c.cache(), &u, &["--ttl", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(i * 7 % 45));
        let _ = victim.kill(); // SIGKILL
        let _ = victim.wait();

        // The record is whole: served from cache, never refused as corrupt.
        let reader = c.run(&u, &[]);
        let mut got = served(&reader, &u);
        got.sort();
        assert_eq!(got, want, "iteration {i}");
        assert!(
            !stderr(&reader).contains("ignoring cache record"),
            "iteration {i}: {}",
            stderr(&reader)
        );
        // The lock died with its holder: a refresh gets it at once and asks IAM itself.
        let started = Instant::now();
        let refresh = c.run(&u, &["--ttl", "0", "--timeout", "5s", "--json"]);
        assert!(
            refresh.status.success(),
            "iteration {i}: {}",
            stderr(&refresh)
        );
        assert_eq!(
            json(&refresh)["source"],
            "iam",
            "iteration {i}: lock stuck?"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // A successful store under the lock cleans up temp files killed writers left.
    let strays: Vec<_> = std::fs::read_dir(c.cache())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(strays.is_empty(), "{strays:?}");
}
