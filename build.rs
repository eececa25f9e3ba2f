//! Puts the git revision into `--version` (IAK_GIT_REV); "unknown" outside a git checkout. For the
//! static musl binary, asks the linker for packed relative relocations (DT_RELR, applied by the bundled
//! musl's static-pie start code): about 200 KB less of `.rela.dyn` (BENCHMARKS.md, "Binary size"). A
//! binutils older than 2.38 ignores the option with a warning.
use std::process::Command;

fn main() {
    if std::env::var("TARGET").is_ok_and(|t| t.ends_with("-linux-musl")) {
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
