//! Chaining the AuthorizedKeysCommand that was in effect before ours (issue #13, item 2), with the real
//! binary: the other command's keys are printed after ours, checked and re-encoded; its failure, hang or
//! garbage never blocks our keys, and our failure (refusal, bad name, IAM down) never blocks its keys.
//! The stand-in commands live under target/tmp in a root-owned 0755 directory, as sshd requires.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/proxy.rs"]
mod proxy;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use harness::*;

const OTHER: &str = include_str!("fixtures/ed25519b.pub");

/// A directory sshd would accept commands from: every component root-owned, none group/world-writable.
fn command_dir(tag: &str) -> PathBuf {
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("chain-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    d
}

/// Writes an executable shell script (0755) and returns its path.
fn script(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p.to_str().expect("utf8").to_string()
}

fn lines(o: &Output) -> Vec<String> {
    stdout(o).lines().map(str::to_string).collect()
}

fn other_canonical() -> String {
    canonical(OTHER)
}

#[test]
fn chained_keys_follow_ours_checked_and_named() {
    let c = Case::new();
    let (u, k) = c.user_with_key("chain");
    let dir = command_dir("good");
    // Prints a key with options only for the user sshd named, plus lines that must be dropped.
    let good = script(
        &dir,
        "good",
        &format!(
            "[ \"$1\" = \"{u}\" ] || exit 0\necho '# a comment'\necho 'restrict,pty {}'\necho 'garbage line'\necho 'cert-authority {}'\necho ''",
            OTHER.trim(),
            OTHER.trim()
        ),
    );
    let o = c.run(&u, &["--chain", &good, "--chain-arg", &u, "-vv"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = lines(&o);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(
        out[0].split(' ').take(2).collect::<Vec<_>>().join(" "),
        canonical(&k)
    );
    assert_eq!(
        out[1],
        format!("restrict,pty {} chain:good", other_canonical())
    );
    let err = stderr(&o);
    assert!(
        err.contains("chained command good: 1 key(s), 2 line(s) dropped"),
        "{err}"
    );
    assert!(
        !err.contains("garbage line"),
        "a dropped line was quoted: {err}"
    );
    // --json says where each key came from.
    let j = json(&c.run(&u, &["--chain", &good, "--chain-arg", &u, "--json"]));
    assert_eq!(j["chained"]["result"], "ok", "{j}");
    assert_eq!(j["chained"]["keys"].as_array().map(Vec::len), Some(1));
    assert_eq!(j["chained"]["dropped"].as_array().map(Vec::len), Some(2));
    assert_eq!(j["keys"].as_array().map(Vec::len), Some(1));
    // Another user: the stand-in prints nothing; only ours.
    let (v, kv) = c.user_with_key("chainv");
    let o = c.run(&v, &["--chain", &good, "--chain-arg", &v]);
    assert_eq!(served(&o, &v), vec![canonical(&kv)]);
}

#[test]
fn our_refusal_or_failure_never_blocks_the_chained_keys() {
    let c = Case::new();
    let (u, _) = c.user_with_key("chainref");
    let dir = command_dir("refusal");
    let good = script(&dir, "other", &format!("echo '{}'", OTHER.trim()));
    let only_theirs = vec![format!("{} chain:other", other_canonical())];
    // The account is denied (the image's default account): the chained command still answers.
    let o = c.run(&u, &["--chain", &good, "--deny-user", &u]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(lines(&o), only_theirs);
    // IAM unreachable and nothing cached: ours fails closed, theirs is served, exit 0.
    let o = c.run_at(
        DEAD,
        &u,
        &["--chain", &good, "--no-cache", "--timeout", "1s"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(lines(&o), only_theirs);
    // A name IAM cannot have (ours refuses it before any call): theirs is served.
    let o = c.run("has..dots", &["--chain", &good]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(lines(&o), only_theirs);
    // Both fail: non-zero, nothing printed.
    let failing = script(&dir, "failing", &format!("echo '{}'\nexit 1", OTHER.trim()));
    let o = c.run_at(
        DEAD,
        &u,
        &["--chain", &failing, "--no-cache", "--timeout", "1s"],
    );
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        o.stdout.is_empty(),
        "printed the output of a command that failed"
    );
}

#[test]
fn a_hanging_or_unsafe_chained_command_never_blocks_our_keys() {
    let c = Case::new();
    let (u, k) = c.user_with_key("chainhang");
    let dir = command_dir("hang");
    let marker = format!("iak-chain-hang-{}", std::process::id());
    // Prints a key, then hangs with a grandchild holding the pipe.
    let hang = script(
        &dir,
        "hang",
        &format!(
            "echo '{}'\nsh -c 'exec -a {marker} sleep 30' &\nsleep 30",
            OTHER.trim()
        ),
    );
    let t = Instant::now();
    let o = c.run(&u, &["--chain", &hang, "--timeout", "1500ms"]);
    let took = t.elapsed();
    assert_eq!(served(&o, &u), vec![canonical(&k)], "{}", stderr(&o));
    assert!(stderr(&o).contains("timed out"), "{}", stderr(&o));
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // Its whole process group was ended.
    std::thread::sleep(Duration::from_millis(200));
    let ps = std::process::Command::new("pgrep")
        .args(["-f", &marker])
        .output()
        .expect("pgrep");
    assert!(
        ps.stdout.is_empty(),
        "left running: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
    // One that exits at once but leaves a background job holding its output: served without waiting.
    let lingering = script(
        &dir,
        "lingering",
        &format!(
            "echo '{}'
sleep 30 &",
            OTHER.trim()
        ),
    );
    let t = Instant::now();
    let o = c.run(&u, &["--chain", &lingering, "--timeout", "5s"]);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "waited for the background job"
    );
    assert_eq!(lines(&o).len(), 2, "{}", stderr(&o));
    // A command sshd itself would refuse (under the world-writable /tmp) is not run.
    let tmp = tempfile::tempdir().expect("tmp");
    let unsafe_cmd = script(tmp.path(), "other", &format!("echo '{}'", OTHER.trim()));
    let o = c.run(&u, &["--chain", &unsafe_cmd]);
    assert_eq!(served(&o, &u), vec![canonical(&k)], "{}", stderr(&o));
    assert!(stderr(&o).contains("not run"), "{}", stderr(&o));
    // Garbage only: ours stand, nothing of theirs.
    let garbage = script(&dir, "garbage", "printf 'x\\001y\\nssh-ed25519 AAAA\\n'");
    let o = c.run(&u, &["--chain", &garbage]);
    assert_eq!(served(&o, &u), vec![canonical(&k)], "{}", stderr(&o));
    // A relative program is a configuration error.
    let o = c.run(&u, &["--chain", "bin/other"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
}
