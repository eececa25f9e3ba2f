//! Command-line parsing: [`parse`] chooses the parser. sshd's invocation is parsed without building clap's
//! command tree (which costs more than the rest of a warm hit). Only the exact shape sshd uses is handled: `--long value` options, bare flags, `-v`, then
//! `--` and USER [FINGERPRINT [KEYTYPE]]. Anything else (`--opt=value`, a repeated option, an unknown
//! token, a value starting with `-`, help) returns `None` and clap parses it, with its usual errors. Tests
//! check that every option clap knows is here and that both parsers agree on generated command lines.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use crate::cli::{Cli, LookupCli, Opts};

/// How an option takes its value.
enum Kind {
    Text(fn(&mut Opts) -> &mut Option<String>),
    Path(fn(&mut Opts) -> &mut Option<PathBuf>),
    List(fn(&mut Opts) -> &mut Vec<String>),
    Flag(fn(&mut Opts) -> &mut bool),
}

/// Every long option of [`Opts`], by name.
const OPTIONS: &[(&str, Kind)] = &[
    ("config", Kind::Path(|o| &mut o.config)),
    ("ttl", Kind::Text(|o| &mut o.ttl)),
    ("negative-ttl", Kind::Text(|o| &mut o.negative_ttl)),
    ("max-stale", Kind::Text(|o| &mut o.max_stale)),
    ("timeout", Kind::Text(|o| &mut o.timeout)),
    ("cache-dir", Kind::Path(|o| &mut o.cache_dir)),
    ("no-cache", Kind::Flag(|o| &mut o.no_cache)),
    ("region", Kind::Text(|o| &mut o.region)),
    ("endpoint-url", Kind::Text(|o| &mut o.endpoint_url)),
    ("sts-endpoint-url", Kind::Text(|o| &mut o.sts_endpoint_url)),
    ("proxy", Kind::Text(|o| &mut o.proxy)),
    ("no-proxy", Kind::Text(|o| &mut o.no_proxy)),
    ("credentials-file", Kind::Path(|o| &mut o.credentials_file)),
    ("profile", Kind::Text(|o| &mut o.profile)),
    ("assume-role", Kind::Text(|o| &mut o.assume_role)),
    ("external-id", Kind::Text(|o| &mut o.external_id)),
    ("ca-bundle", Kind::Path(|o| &mut o.ca_bundle)),
    ("allowed-group", Kind::List(|o| &mut o.allowed_group)),
    (
        "allowed-groups-tag",
        Kind::Text(|o| &mut o.allowed_groups_tag),
    ),
    ("name-case", Kind::Text(|o| &mut o.name_case)),
    ("min-uid", Kind::Text(|o| &mut o.min_uid)),
    ("max-uid", Kind::Text(|o| &mut o.max_uid)),
    ("allow-user", Kind::List(|o| &mut o.allow_user)),
    ("deny-user", Kind::List(|o| &mut o.deny_user)),
    ("uid", Kind::Text(|o| &mut o.uid)),
    ("key-options", Kind::Text(|o| &mut o.key_options)),
    ("key-expiry", Kind::Flag(|o| &mut o.key_expiry)),
    ("chain", Kind::Path(|o| &mut o.chain)),
    ("chain-arg", Kind::List(|o| &mut o.chain_arg)),
    ("journal-socket", Kind::Path(|o| &mut o.journal_socket)),
    ("syslog-socket", Kind::Path(|o| &mut o.syslog_socket)),
    ("json", Kind::Flag(|o| &mut o.json)),
];

/// First arguments that select the full parser: subcommands, and help/version (which show them).
const FULL: &[&str] = &[
    "map",
    "doctor",
    "cache",
    "sync-users",
    "completions",
    "man",
    "help",
    "-h",
    "--help",
    "-V",
    "--version",
];

/// Parses the command line: sshd's shape without clap ([`sshd_shape`]); else with the full definition when the first argument is a subcommand (or
/// help/version), else with [`LookupCli`]. A subcommand name given as USER without `--` is refused with a
/// hint, so `iam-authorized-keys --json doctor` does not look up an account called "doctor".
pub fn parse(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    if let Some(cli) = sshd_shape(&args) {
        return Ok(cli);
    }
    let first = args.get(1).and_then(|a| a.to_str());
    if args.len() < 2 || first.is_some_and(|a| FULL.contains(&a)) {
        return Cli::try_parse_from(args);
    }
    let dashdash = args.iter().any(|a| a == "--");
    let l = LookupCli::try_parse_from(args)?;
    if !dashdash && l.user.to_str().is_some_and(|u| FULL.contains(&u)) {
        let mut cmd = <LookupCli as clap::CommandFactory>::command();
        return Err(cmd.error(
            clap::error::ErrorKind::ArgumentConflict,
            format!(
                "'{}' is a subcommand: put it first (iam-authorized-keys {} [OPTIONS]), or write -- {} to look up an account of that name",
                l.user.to_string_lossy(),
                l.user.to_string_lossy(),
                l.user.to_string_lossy()
            ),
        ));
    }
    Ok(Cli {
        command: None,
        opts: l.opts,
        user: Some(l.user),
        offered_fingerprint: l.offered_fingerprint,
        offered_type: l.offered_type,
    })
}

/// Parses `args` if they have sshd's shape; `None` means "let clap do it".
pub fn sshd_shape(args: &[OsString]) -> Option<Cli> {
    let mut opts = Opts::default();
    let mut i = 1;
    loop {
        let tok = args.get(i)?.to_str()?;
        i += 1;
        if tok == "--" {
            break;
        }
        if let Some(vs) = tok.strip_prefix('-').filter(|r| !r.starts_with('-')) {
            if vs.is_empty() || !vs.bytes().all(|b| b == b'v') || opts.verbose > 0 {
                return None;
            }
            opts.verbose = u8::try_from(vs.len()).ok()?;
            continue;
        }
        let name = tok.strip_prefix("--")?;
        if name == "verbose" {
            opts.verbose = opts.verbose.checked_add(1)?;
            continue;
        }
        let (_, kind) = OPTIONS.iter().find(|(n, _)| *n == name)?;
        if let Kind::Flag(f) = kind {
            let flag = f(&mut opts);
            if *flag {
                return None;
            }
            *flag = true;
            continue;
        }
        let value = args.get(i)?;
        i += 1;
        if value.as_encoded_bytes().first() == Some(&b'-') {
            return None;
        }
        match kind {
            Kind::Text(f) => {
                let slot = f(&mut opts);
                if slot.is_some() {
                    return None;
                }
                *slot = Some(value.to_str()?.to_string());
            }
            Kind::Path(f) => {
                let slot = f(&mut opts);
                if slot.is_some() {
                    return None;
                }
                *slot = Some(PathBuf::from(value));
            }
            Kind::List(f) => f(&mut opts).push(value.to_str()?.to_string()),
            Kind::Flag(_) => return None,
        }
    }
    let rest = &args[i..];
    if rest.is_empty() || rest.len() > 3 {
        return None;
    }
    Some(Cli {
        command: None,
        opts,
        user: Some(rest[0].clone()),
        offered_fingerprint: rest.get(1).cloned(),
        offered_type: rest.get(2).cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use proptest::prelude::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn knows_every_option_clap_knows() {
        let cmd = LookupCli::command();
        for a in cmd.get_arguments() {
            let Some(long) = a.get_long() else { continue };
            if matches!(long, "help" | "version" | "verbose") {
                continue;
            }
            assert!(
                OPTIONS.iter().any(|(n, _)| *n == long),
                "--{long} is missing from the fast parser"
            );
        }
        assert_eq!(
            OPTIONS.len(),
            cmd.get_arguments()
                .filter(|a| a
                    .get_long()
                    .is_some_and(|l| !matches!(l, "help" | "version" | "verbose")))
                .count()
        );
    }

    #[test]
    fn the_drop_in_shape_and_the_fallbacks() {
        let cli = sshd_shape(&os(&[
            "iak",
            "--ttl",
            "10m",
            "--allowed-group",
            "a",
            "--allowed-group",
            "b",
            "--no-cache",
            "--uid",
            "1001",
            "-vv",
            "--",
            "alice",
            "SHA256:x",
            "ssh-ed25519",
        ]))
        .expect("sshd shape");
        assert_eq!(cli.opts.ttl.as_deref(), Some("10m"));
        assert_eq!(cli.opts.allowed_group, ["a", "b"]);
        assert!(cli.opts.no_cache);
        assert_eq!(cli.opts.verbose, 2);
        assert_eq!(cli.user, Some(OsString::from("alice")));
        assert_eq!(cli.offered_type, Some(OsString::from("ssh-ed25519")));
        for fallback in [
            &["iak", "alice"][..],
            &["iak", "--ttl=5", "--", "a"],
            &["iak", "--ttl", "5", "--ttl", "6", "--", "a"],
            &["iak", "--json", "--json", "--", "a"],
            &["iak", "--bogus", "--", "a"],
            &["iak", "--ttl", "-5", "--", "a"],
            &["iak", "--"],
            &["iak", "--", "a", "b", "c", "d"],
            &["iak", "--help"],
            &["iak", "-x", "--", "a"],
            &["iak", "--ttl"],
        ] {
            assert!(sshd_shape(&os(fallback)).is_none(), "{fallback:?}");
        }
    }

    fn token() -> impl Strategy<Value = Vec<String>> {
        let values = prop::sample::select(vec![
            "5",
            "10m",
            "/var/cache/x",
            "alice",
            "a b",
            "x=y",
            "-1",
        ]);
        let names: Vec<&'static str> = OPTIONS.iter().map(|(n, _)| *n).collect();
        prop_oneof![
            (prop::sample::select(names), values).prop_map(|(n, v)| {
                match OPTIONS
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, kind)| matches!(kind, Kind::Flag(_)))
                {
                    Some(true) => vec![format!("--{n}")],
                    _ => vec![format!("--{n}"), v.to_string()],
                }
            }),
            Just(vec!["-v".to_string()]),
            Just(vec!["-vv".to_string()]),
            Just(vec!["--verbose".to_string()]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        /// Whenever the fast parser accepts a command line, clap accepts it and means the same.
        #[test]
        fn agrees_with_clap(
            toks in prop::collection::vec(token(), 0..6),
            pos in prop::collection::vec(prop::sample::select(vec!["alice", "SHA256:abc", "ssh-ed25519", "--x"]), 1..4),
        ) {
            let mut argv = vec!["iam-authorized-keys".to_string()];
            argv.extend(toks.into_iter().flatten());
            argv.push("--".into());
            argv.extend(pos.iter().map(|s| s.to_string()));
            let args: Vec<OsString> = argv.iter().map(OsString::from).collect();
            if let Some(fast) = sshd_shape(&args) {
                let slow = LookupCli::try_parse_from(&args);
                prop_assert!(slow.is_ok(), "clap refused {:?}: {:?}", argv, slow.err());
                let slow = slow.expect("checked");
                prop_assert_eq!(format!("{:?}", fast.opts), format!("{:?}", slow.opts));
                prop_assert_eq!(fast.user, Some(slow.user));
                prop_assert_eq!(fast.offered_fingerprint, slow.offered_fingerprint);
                prop_assert_eq!(fast.offered_type, slow.offered_type);
            }
        }
    }
}
