//! Regression tests for the adversarial review (issue #12), one per finding, named for it. Each failed on
//! the code before its fix. The real binary runs against the IAM emulator through a fault proxy, as in
//! `moto.rs`; findings about filesystems use private tmpfs mounts (root only: tests/run.sh runs as root).

#[path = "support/harness.rs"]
mod harness;
#[path = "support/proxy.rs"]
mod proxy;

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::*;
use proxy::Fault;

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// A private tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, options: &str) -> Tmpfs {
        assert_eq!(
            euid(),
            0,
            "this test mounts a tmpfs: run it as root (tests/run.sh does)"
        );
        std::fs::create_dir_all(at).expect("mountpoint");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(at)
            .status()
            .expect("mount");
        assert!(st.success(), "mount tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }

    fn remount(&self, options: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .status()
            .expect("remount");
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Starts a command with stdout and stderr captured.
trait PipedSpawn {
    fn piped_spawn(&mut self, what: &str) -> std::process::Child;
}

impl PipedSpawn for Command {
    fn piped_spawn(&mut self, what: &str) -> std::process::Child {
        self.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"))
    }
}

/// Sets a record's `fetched_at` back by `secs`.
fn age_record(path: &Path, secs: u64) {
    let mut rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json");
    rec["fetched_at"] = (rec["fetched_at"].as_u64().expect("ts") - secs).into();
    std::fs::write(path, serde_json::to_vec(&rec).expect("enc")).expect("write");
}

/// Marks the user's one key Inactive in IAM.
fn deactivate_only_key(c: &Case, user: &str) {
    let id = c.iam.rt.block_on(async {
        c.iam
            .client
            .list_ssh_public_keys()
            .user_name(user)
            .send()
            .await
            .expect("list")
            .ssh_public_keys()[0]
            .ssh_public_key_id()
            .to_string()
    });
    c.iam.deactivate(user, &id);
}

/// Holds `user`'s lock in this process, as a concurrent lookup would.
fn hold_lock(cache: &Path, user: &str) -> File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(cache.join(format!("{user}.lock")))
        .expect("lock file from the first lookup");
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).expect("flock");
    f
}

#[test]
fn finding_1_waiter_does_not_serve_a_revoked_key_when_the_holder_got_an_answer() {
    // The holder got IAM's answer but could not store it (a full cache filesystem); the waiter found
    // the record still expired and served it "because IAM failed", although IAM had just said the key
    // is inactive. Here the holder is this test: it takes the lock and lets go without a record.
    let c = Case::new();
    let (u, k) = c.user_with_key("f1holder");
    assert_eq!(served(&c.run(&u, &[]), &u), vec![canonical(&k)]);
    deactivate_only_key(&c, &u);
    age_record(&c.record(&u), 120);
    let calls = c.proxy.calls_for(&u);

    let held = hold_lock(&c.cache(), &u);
    let waiter =
        command(&c.proxy.url(), &c.cache(), &u, &["--ttl", "60", "-v"]).piped_spawn("spawn");
    std::thread::sleep(Duration::from_millis(400));
    drop(held);
    let o = waiter.wait_with_output().expect("wait");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        o.stdout.is_empty(),
        "served a key IAM lists as Inactive: {}\n{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(c.proxy.calls_for(&u) > calls, "the waiter did not ask IAM");
}

#[test]
fn finding_1_waiter_serves_stale_when_the_holder_noted_an_iam_failure() {
    // The rule's other half: when the holder's IAM call failed, waiters serve the record within
    // max-stale without asking IAM again (an outage is not amplified).
    let c = Case::new();
    let (u, k) = c.user_with_key("f1outage");
    assert_eq!(served(&c.run(&u, &[]), &u), vec![canonical(&k)]);
    age_record(&c.record(&u), 120);
    c.proxy.set(Fault {
        hang: true,
        ..Fault::default()
    });
    let calls = c.proxy.calls_for(&u);
    let holder = command(
        &c.proxy.url(),
        &c.cache(),
        &u,
        &["--ttl", "60", "--timeout", "1500ms"],
    )
    .piped_spawn("spawn holder");
    std::thread::sleep(Duration::from_millis(300));
    let waiter = command(
        &c.proxy.url(),
        &c.cache(),
        &u,
        &["--ttl", "60", "--timeout", "5s"],
    )
    .piped_spawn("spawn waiter");
    let h = holder.wait_with_output().expect("holder");
    let w = waiter.wait_with_output().expect("waiter");
    assert_eq!(served(&h, &u), vec![canonical(&k)], "holder serves stale");
    assert_eq!(served(&w, &u), vec![canonical(&k)], "waiter serves stale");
    assert!(
        stderr(&w).contains("IAM failed for the lookup we waited for"),
        "{}",
        stderr(&w)
    );
    assert_eq!(
        c.proxy.calls_for(&u),
        calls + 1,
        "only the holder may ask IAM during the outage"
    );
}

#[test]
fn finding_1_full_cache_filesystem_never_serves_a_revoked_key() {
    // The review's reproduction: the cache filesystem is full, IAM says Inactive, two lookups race.
    let c = Case::new();
    let fs = Tmpfs::mount(&c.dir.path().join("fs"), "size=256k");
    let cache = fs.0.join("cache");
    let (u, k) = c.user_with_key("f1full");
    let run = |extra: &[&str]| command(&c.proxy.url(), &cache, &u, extra);
    let first = run(&[]).output().expect("run");
    assert_eq!(served(&first, &u), vec![canonical(&k)]);
    deactivate_only_key(&c, &u);
    age_record(&cache.join(format!("{u}.json")), 120);
    // Fill the filesystem.
    let mut filler = File::create(fs.0.join("filler")).expect("filler");
    let block = vec![0u8; 4096];
    while std::io::Write::write_all(&mut filler, &block).is_ok() {}
    drop(filler);
    c.proxy.set(Fault {
        latency_ms: 700,
        ..Fault::default()
    });
    let a = run(&["--ttl", "60"]).piped_spawn("a");
    std::thread::sleep(Duration::from_millis(200));
    let b = run(&["--ttl", "60"]).piped_spawn("b");
    for o in [
        a.wait_with_output().expect("a"),
        b.wait_with_output().expect("b"),
    ] {
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            o.stdout.is_empty(),
            "served a revoked key: {}\n{}",
            stdout(&o),
            stderr(&o)
        );
    }
}

#[test]
fn finding_2_read_only_cache_filesystem_still_answers_from_iam() {
    let c = Case::new();
    let fs = Tmpfs::mount(&c.dir.path().join("fs"), "size=1m");
    let cache = fs.0.join("cache");
    let (old, ko) = c.user_with_key("f2old");
    let (new, kn) = c.user_with_key("f2new");
    let first = command(&c.proxy.url(), &cache, &old, &[])
        .output()
        .expect("run");
    assert_eq!(served(&first, &old), vec![canonical(&ko)]);
    fs.remount("ro");
    // A user with no record and no lock file: the lock cannot be created.
    let o = command(&c.proxy.url(), &cache, &new, &[])
        .output()
        .expect("run");
    assert_eq!(served(&o, &new), vec![canonical(&kn)], "{}", stderr(&o));
    assert!(
        stderr(&o).contains("without single flight"),
        "{}",
        stderr(&o)
    );
    // An expired record: the existing lock file cannot be opened for writing; IAM answers.
    let o = command(&c.proxy.url(), &cache, &old, &["--ttl", "0"])
        .output()
        .expect("run");
    assert_eq!(served(&o, &old), vec![canonical(&ko)], "{}", stderr(&o));
    assert_eq!(
        json(
            &command(&c.proxy.url(), &cache, &old, &["--ttl", "0", "--json"])
                .output()
                .expect("run")
        )["source"],
        "iam"
    );
    // IAM down too: the read-only record is still served within max-stale.
    let o = command(DEAD, &cache, &old, &["--ttl", "0", "--timeout", "2s"])
        .output()
        .expect("run");
    assert_eq!(served(&o, &old), vec![canonical(&ko)], "{}", stderr(&o));
}

#[test]
fn finding_2_inode_exhausted_cache_filesystem_still_answers_from_iam() {
    let c = Case::new();
    let fs = Tmpfs::mount(&c.dir.path().join("fs"), "size=1m,nr_inodes=16");
    let cache = fs.0.join("cache");
    std::fs::create_dir(&cache).expect("mkdir");
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    for i in 0.. {
        if File::create(fs.0.join(format!("f{i}"))).is_err() {
            break;
        }
        assert!(i < 64, "tmpfs did not run out of inodes");
    }
    let (u, k) = c.user_with_key("f2inodes");
    let o = command(&c.proxy.url(), &cache, &u, &[])
        .output()
        .expect("run");
    assert_eq!(served(&o, &u), vec![canonical(&k)], "{}", stderr(&o));
}

#[test]
fn finding_10_oversized_iam_response_fails_closed() {
    // A well-formed ListSSHPublicKeys answer padded to 4 MiB was read whole (and a 300 MB one too).
    let c = Case::new();
    let (u, _) = c.user_with_key("f10big");
    let answer = |pad: usize| {
        format!(
            "<ListSSHPublicKeysResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\">{}<ListSSHPublicKeysResult><SSHPublicKeys></SSHPublicKeys><IsTruncated>false</IsTruncated></ListSSHPublicKeysResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></ListSSHPublicKeysResponse>",
            " ".repeat(pad)
        )
    };
    let fault = |body: String| Fault {
        status: Some(200),
        body,
        only_action: Some("ListSSHPublicKeys".into()),
        ..Fault::default()
    };
    // Under the cap the same shape is an ordinary answer: no active keys.
    c.proxy.set(fault(answer(64 * 1024)));
    let small = c.run(&u, &["--no-cache"]);
    assert!(small.status.success(), "{}", stderr(&small));
    assert!(small.stdout.is_empty());
    c.proxy.set(fault(answer(4 << 20)));
    let big = c.run(&u, &["--no-cache"]);
    assert_eq!(big.status.code(), Some(4), "{}", stderr(&big));
    assert!(big.stdout.is_empty());
    assert!(stderr(&big).contains("more than the"), "{}", stderr(&big));
}

#[test]
fn finding_6_nobody_is_refused_without_an_iam_call() {
    let c = Case::new();
    c.iam.user_if_missing("nobody");
    let k = keygen(c.dir.path(), "nobody-k");
    c.iam.upload("nobody", &k);
    let o = c.run("nobody", &["--uid", "65534", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j = json(&o);
    assert_eq!(j["result"], "refused", "{j}");
    assert!(
        j["decision"]
            .as_str()
            .unwrap_or_default()
            .contains("overflow UID"),
        "{j}"
    );
    let plain = c.run("nobody", &["--uid", "65534"]);
    assert!(plain.stdout.is_empty());
    // Above --max-uid, and served again with --allow-user.
    let high = c.run("nobody", &["--uid", "4000", "--max-uid", "3999", "--json"]);
    assert_eq!(json(&high)["result"], "refused");
    assert_eq!(
        c.proxy.calls_for("nobody"),
        0,
        "a refused account costs no IAM call"
    );
    let allowed = c.run("nobody", &["--uid", "65534", "--allow-user", "nobody"]);
    assert!(served(&allowed, "nobody").contains(&canonical(&k)));
}

#[test]
fn finding_4_ca_bundle_is_checked_like_the_other_trusted_files() {
    // A world-writable --ca-bundle was used as is: whoever could write it could vouch for their own
    // endpoint. Checked now like --config and --credentials-file, on the handle it is read from.
    let c = Case::new();
    let (u, k) = c.user_with_key("f4ca");
    let bundle = c.dir.path().join("bundle.pem");
    std::fs::copy("/etc/ssl/certs/ca-certificates.crt", &bundle)
        .expect("the system CA bundle (ca-certificates)");
    let ca = bundle.to_str().expect("utf8");
    std::fs::set_permissions(&bundle, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert_eq!(
        served(&c.run(&u, &["--no-cache", "--ca-bundle", ca]), &u),
        vec![canonical(&k)]
    );
    std::fs::set_permissions(&bundle, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let o = c.run(&u, &["--no-cache", "--ca-bundle", ca]);
    assert_ne!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    assert!(
        stderr(&o).contains("CA bundle") && stderr(&o).contains("world-writable"),
        "{}",
        stderr(&o)
    );
    // A symlink to it is refused too, and a bundle with one garbage entry keeps the good ones.
    std::fs::set_permissions(&bundle, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let link = c.dir.path().join("link.pem");
    std::os::unix::fs::symlink(&bundle, &link).expect("symlink");
    let o = c.run(
        &u,
        &["--no-cache", "--ca-bundle", link.to_str().expect("utf8")],
    );
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    let mut text = std::fs::read_to_string(&bundle).expect("read");
    text.insert_str(
        0,
        "-----BEGIN CERTIFICATE-----\nMIIBnotacertificate\n-----END CERTIFICATE-----\n",
    );
    std::fs::write(&bundle, text).expect("write");
    assert_eq!(
        served(&c.run(&u, &["--no-cache", "--ca-bundle", ca]), &u),
        vec![canonical(&k)]
    );
}

#[test]
fn finding_4_world_readable_credentials_file_is_refused() {
    let c = Case::new();
    let (u, k) = c.user_with_key("f4creds");
    let creds = c.dir.path().join("credentials");
    std::fs::write(
        &creds,
        "[default]\naws_access_key_id = test\naws_secret_access_key = test\n",
    )
    .expect("write");
    let path = creds.to_str().expect("utf8");
    for (mode, ok) in [(0o600, true), (0o640, true), (0o644, false), (0o604, false)] {
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let o = c.run(&u, &["--no-cache", "--credentials-file", path]);
        if ok {
            assert_eq!(served(&o, &u), vec![canonical(&k)], "{mode:o}");
        } else {
            assert_eq!(o.status.code(), Some(3), "{mode:o}: {}", stderr(&o));
            assert!(o.stdout.is_empty());
            assert!(
                stderr(&o).contains("every local user read"),
                "{}",
                stderr(&o)
            );
        }
    }
}

#[test]
fn finding_11_cache_purge_keeps_the_record_when_the_lock_stays_busy() {
    // `cache purge` deleted the record even when it timed out waiting for a lookup's lock, so the
    // lookup in flight wrote it back behind the admin's back.
    let c = Case::new();
    let (u, k) = c.user_with_key("f11purge");
    assert_eq!(served(&c.run(&u, &[]), &u), vec![canonical(&k)]);
    let purge = || {
        Command::new(BIN)
            .args(["cache", "purge", "--timeout", "300ms", "--cache-dir"])
            .arg(c.cache())
            .arg(&u)
            .output()
            .expect("purge")
    };
    let held = hold_lock(&c.cache(), &u);
    let o = purge();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(c.record(&u).exists(), "purged under a lookup's lock");
    assert!(stderr(&o).contains("the record was kept"), "{}", stderr(&o));
    drop(held);
    let o = purge();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!c.record(&u).exists());
}
