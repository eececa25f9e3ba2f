//! Puts the git revision into `--version` (IAK_GIT_REV); "unknown" outside a git checkout. For the
//! static musl binary, asks the linker for packed relative relocations (DT_RELR): about 200 KB less of
//! `.rela.dyn` (BENCHMARKS.md, "Binary size"). Only with Rust >= 1.93, whose bundled musl (1.2.5) applies
//! DT_RELR in its static-pie start code; older toolchains bundle musl 1.2.3, which does not, and such a
//! binary would crash at start. A binutils older than 2.38 ignores the option with a warning.
use std::process::Command;

/// The minor version of the rustc building us (`rustc -vV`: `release: 1.95.0`).
fn rustc_minor() -> Option<u32> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc).arg("-vV").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let release = text.lines().find_map(|l| l.strip_prefix("release: "))?;
    let mut parts = release.split('.');
    (parts.next()? == "1").then_some(())?;
    parts.next()?.parse().ok()
}

fn main() {
    if std::env::var("TARGET").is_ok_and(|t| t.ends_with("-linux-musl"))
        && rustc_minor().is_some_and(|m| m >= 93)
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    let rev = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| !o.stdout.is_empty());
    println!(
        "cargo:rustc-env=IAK_GIT_REV={rev}{}",
        if dirty { "-dirty" } else { "" }
    );
    for f in [".git/HEAD", ".git/index"] {
        if std::path::Path::new(f).exists() {
            println!("cargo:rerun-if-changed={f}");
        }
    }
    if let Ok(head) = std::fs::read_to_string(".git/HEAD") {
        if let Some(r) = head.trim().strip_prefix("ref: ") {
            println!("cargo:rerun-if-changed=.git/{r}");
        }
    }
}
