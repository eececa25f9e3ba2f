//! The module layout as a checked rule: imports in `src/` point one way (`app -> cmd/* -> lookup -> ...`),
//! no module of the lookup core imports a command or the dispatcher, and there is no import cycle. Read
//! from the source text (test modules excluded), so a new `use crate::cmd::...` in the core fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name (`lookup`, `cmd::doctor`) -> the crate modules its non-test code names.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read src") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let mut out = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).expect("under src").with_extension("");
        let name = rel
            .to_string_lossy()
            .trim_end_matches("/mod")
            .replace('/', "::");
        if name == "main" || name == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("read");
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let mut deps = BTreeSet::new();
        let mut record = |path: &str| {
            let mut parts = path.split("::").filter(|p| !p.is_empty());
            let first = parts.next().unwrap_or_default();
            let first = first.trim_matches(|c: char| !(c.is_ascii_lowercase() || c == '_'));
            let dep = if first == "cmd" {
                match parts.next() {
                    Some(sub) => format!(
                        "cmd::{}",
                        sub.trim_matches(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                    ),
                    None => "cmd".to_string(),
                }
            } else if first == "super" || first == "self" {
                return;
            } else {
                first.to_string()
            };
            if !dep.is_empty() && dep != name && dep != "cmd" {
                deps.insert(dep);
            }
        };
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                group.split(',').for_each(|p| record(p.trim()));
            } else {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(rest.len());
                record(&rest[..end]);
            }
        }
        if name.starts_with("cmd::") {
            for (i, _) in code.match_indices("super::") {
                let rest = &code[i + "super::".len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                deps.insert(format!("cmd::{}", &rest[..end]));
            }
        }
        out.insert(name, deps);
    }
    out
}

#[test]
fn the_core_imports_no_command_and_not_the_dispatcher() {
    let all = imports();
    assert!(all.contains_key("lookup") && all.contains_key("cmd::doctor"));
    for (module, deps) in &all {
        if module == "app" || module.starts_with("cmd::") {
            continue;
        }
        let bad: Vec<_> = deps
            .iter()
            .filter(|d| *d == "app" || d.starts_with("cmd::"))
            .collect();
        assert!(bad.is_empty(), "core module {module} imports {bad:?}");
    }
    // Commands reach the core, never the dispatcher.
    for (module, deps) in all.iter().filter(|(m, _)| m.starts_with("cmd::")) {
        assert!(!deps.contains("app"), "{module} imports app");
    }
}

#[test]
fn no_import_cycle_in_src() {
    let all = imports();
    // Depth-first search with colours; a grey node met again closes a cycle.
    fn visit<'a>(
        n: &'a str,
        all: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) {
        match state.get(n) {
            Some(2) => return,
            Some(1) => {
                let start = path.iter().position(|p| *p == n).unwrap_or(0);
                panic!("import cycle: {} -> {n}", path[start..].join(" -> "));
            }
            _ => {}
        }
        state.insert(n, 1);
        path.push(n);
        for d in all.get(n).into_iter().flatten() {
            if all.contains_key(d.as_str()) {
                visit(d, all, state, path);
            }
        }
        path.pop();
        state.insert(n, 2);
    }
    let mut state = BTreeMap::new();
    for n in all.keys() {
        visit(n, &all, &mut state, &mut Vec::new());
    }
}

#[test]
fn the_warm_path_modules_do_not_name_tokio_or_the_sdk() {
    // The cache hit runs app -> fastargs/config/username/policy -> lookup -> cache -> output; only
    // lookup's cold-path functions (ask_iam, with_runtime) may start tokio, through iam.
    let all = imports();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for m in [
        "app", "fastargs", "config", "username", "policy", "cache", "output", "audit",
    ] {
        let text = std::fs::read_to_string(src.join(format!("{m}.rs"))).expect("read");
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for word in ["tokio::", "aws_sdk_iam", "aws_config"] {
            assert!(!code.contains(word), "{m}.rs names {word}");
        }
        assert!(!all[m].contains("iam"), "{m} imports iam (the cold path)");
    }
}
