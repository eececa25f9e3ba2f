//! `doctor [USER]`: checks the installation the way sshd will use it, then (for USER) every step of a
//! lookup. Each check is OK, WARN or FAIL with the fix; the exit code says whether anything failed.
//! The options checked are the ones in sshd's effective AuthorizedKeysCommand, not the doctor's own.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde_json::json;

use crate::cache::{self, Cache};
use crate::cli::{Cli, DoctorArgs};
use crate::config::{Config, Env};
use crate::credentials;
use crate::error::Error;
use crate::log::Log;
use crate::lookup::{self, Judgement};
use crate::policy::{self, Verdict};
use crate::username::{sanitize, LoginName};
use crate::{iam, output};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug)]
struct Check {
    name: &'static str,
    status: Status,
    detail: String,
    fix: Option<String>,
}

#[derive(Default)]
struct Report(Vec<Check>);

impl Report {
    fn ok(&mut self, name: &'static str, detail: impl Into<String>) {
        self.push(name, Status::Ok, detail, None::<String>);
    }
    fn warn(&mut self, name: &'static str, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(name, Status::Warn, detail, Some(fix));
    }
    fn fail(&mut self, name: &'static str, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(name, Status::Fail, detail, Some(fix));
    }
    fn push(
        &mut self,
        name: &'static str,
        status: Status,
        detail: impl Into<String>,
        fix: Option<impl Into<String>>,
    ) {
        self.0.push(Check {
            name,
            status,
            detail: detail.into(),
            fix: fix.map(Into::into),
        });
    }
}

/// Every path component from `path` up to `/` must be root-owned and not group/world-writable, and the
/// file itself regular: sshd's rule for AuthorizedKeysCommand (a symlink is resolved first, as sshd does).
pub fn unsafe_components(path: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let real = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) => return vec![format!("{}: {e}", path.display())],
    };
    match std::fs::metadata(&real) {
        Ok(m) if !m.is_file() => problems.push(format!("{} is not a regular file", real.display())),
        Err(e) => problems.push(format!("{}: {e}", real.display())),
        _ => {}
    }
    let mut cur = Some(real.as_path());
    while let Some(p) = cur {
        if let Ok(m) = std::fs::metadata(p) {
            if m.uid() != 0 {
                problems.push(format!(
                    "{} is owned by uid {}, not root",
                    p.display(),
                    m.uid()
                ));
            }
            if m.mode() & 0o022 != 0 {
                problems.push(format!(
                    "{} is group- or world-writable (mode {:04o})",
                    p.display(),
                    m.mode() & 0o7777
                ));
            }
        }
        cur = p.parent();
    }
    problems
}

fn find_sshd(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(p.to_path_buf());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|d| Path::new(d).join("sshd"))
        .find(|p| p.is_file());
    found
}

/// `sshd -T` as a map of lower-case keyword -> value (first occurrence).
fn sshd_effective(
    sshd: &Path,
    config: &Path,
    unit_options: &[String],
    user: Option<&str>,
) -> Result<HashMap<String, String>, String> {
    let mut cmd = Command::new(sshd);
    cmd.arg("-T").arg("-f").arg(config);
    for o in unit_options {
        cmd.arg("-o").arg(o);
    }
    if let Some(u) = user {
        cmd.arg("-C")
            .arg(format!("user={u},host=localhost,addr=127.0.0.1"));
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", sshd.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} -T -f {} failed: {}",
            sshd.display(),
            config.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut map = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((k, v)) = line.split_once(' ') {
            map.entry(k.to_ascii_lowercase())
                .or_insert_with(|| v.to_string());
        }
    }
    Ok(map)
}

/// (uid, shell) of `name` in /etc/passwd.
fn passwd_entry(name: &str) -> Option<(u32, String)> {
    let text = std::fs::read_to_string(policy::PASSWD).ok()?;
    let entry = policy::passwd_entries(&text)
        .find(|e| e.name == name)
        .map(|e| (e.uid, e.shell.to_string()));
    entry
}

/// The password field of `name` in /etc/shadow (root only).
fn shadow_field(name: &str) -> Result<Option<String>, String> {
    let text = policy::read_shadow().map_err(|e| e.to_string())?;
    let password = policy::shadow_entries(&text)
        .find(|e| e.name == name)
        .map(|e| e.password.to_string());
    Ok(password)
}

/// Why sshd's AuthorizedKeysCommand line is refused; `file`: the --config file whose content or
/// ownership is the cause (the fix is to edit that file, not the command line).
#[derive(Debug)]
struct Refusal {
    message: String,
    file: Option<PathBuf>,
}

impl From<String> for Refusal {
    fn from(message: String) -> Self {
        Refusal {
            message,
            file: None,
        }
    }
}

/// Parses sshd's AuthorizedKeysCommand line with our own option parser, as sshd would run it for `user`.
fn config_from_command(words: &[&str], user: &str, uid: Option<u32>) -> Result<Config, Refusal> {
    let mut argv: Vec<String> = Vec::new();
    for w in words {
        let w = match *w {
            "%u" => user.to_string(),
            "%U" => uid.map(|u| u.to_string()).unwrap_or_else(|| "65534".into()),
            "%f" | "%t" => continue,
            other if other.contains('%') => {
                return Err(format!("token {other} is not one this tool understands").into())
            }
            other => other.to_string(),
        };
        argv.push(w);
    }
    // clap's first line says what is wrong (its usage lines follow).
    let cli = Cli::try_parse_from(&argv).map_err(|e| {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default();
        Refusal::from(first.strip_prefix("error: ").unwrap_or(first).to_string())
    })?;
    Config::build(&cli.opts, &Env::default()).map_err(|e| Refusal {
        message: e.to_string(),
        file: match e {
            Error::ConfigFile { path, .. } => Some(path),
            _ => None,
        },
    })
}

pub fn run(args: &DoctorArgs, own: &Config, log: &Log) -> Result<(), Error> {
    let mut r = Report::default();
    let user = match &args.user {
        Some(u) => Some(
            u.to_str()
                .ok_or(Error::NonUtf8User)
                .and_then(|u| LoginName::parse(u, own.name_case))?,
        ),
        None => None,
    };
    let user_name = user.as_ref().map(|u| u.as_str().to_string());

    // --- sshd ------------------------------------------------------------------------------------
    let config_path = args
        .sshd_config
        .clone()
        .unwrap_or_else(|| PathBuf::from("/etc/ssh/sshd_config"));
    let mut effective: Option<Config> = None;
    let mut command_user: Option<String> = None;
    // sshd runs our command with options the binary refuses (every key lookup fails).
    let mut refused = false;
    // The sshd unit's -o options beat every file; they apply to the config it runs (the default one).
    let unit = match (&args.unit_root, &args.sshd_config) {
        (Some(root), _) => crate::cmd::sshd_unit::read(root),
        (None, None) => crate::cmd::sshd_unit::read(Path::new("/")),
        (None, Some(_)) => None,
    };
    let unit_options: &[String] = unit.as_ref().map(|u| &u.options[..]).unwrap_or(&[]);
    if let Some(u) = unit.as_ref().filter(|u| !u.options.is_empty()) {
        r.ok(
            "sshd unit",
            format!(
                "{} passes {} to sshd (ExecStart= in {}); they beat every config file and are part of what sshd -T shows below",
                u.unit,
                u.options
                    .iter()
                    .map(|o| format!("-o {:?}", sanitize(o)))
                    .collect::<Vec<_>>()
                    .join(" "),
                u.exec_from.display()
            ),
        );
    }
    match find_sshd(args.sshd.as_deref()) {
        None => r.warn(
            "sshd",
            "no sshd found in PATH or /usr/sbin",
            "install openssh-server, or pass --sshd PATH",
        ),
        Some(sshd) => match sshd_effective(&sshd, &config_path, unit_options, user_name.as_deref())
        {
            Err(e) => r.fail(
                "sshd -T",
                e,
                "fix the configuration sshd reports (sshd -t shows the same)",
            ),
            Ok(t) => {
                let cmd = t.get("authorizedkeyscommand").cloned().unwrap_or_default();
                let words: Vec<&str> = cmd.split_whitespace().collect();
                let ours = words.first().is_some_and(|w| {
                    Path::new(w)
                        .file_name()
                        .is_some_and(|n| n == "iam-authorized-keys")
                });
                if cmd.is_empty() || cmd == "none" {
                    r.fail(
                        "drop-in",
                        format!(
                            "sshd -T -f {} has no AuthorizedKeysCommand: the drop-in is missing or not included",
                            config_path.display()
                        ),
                        "run ./install.sh (writes sshd_config.d/10-iam-authorized-keys.conf and the Include line)",
                    );
                } else if !ours {
                    r.fail(
                        "drop-in",
                        format!("sshd runs another AuthorizedKeysCommand: {}", sanitize(&cmd)),
                        "sshd runs one command, the first one read: run ./install.sh, which chains the other one after ours (or --replace-other-command)",
                    );
                } else {
                    r.ok("drop-in", format!("sshd runs: {}", sanitize(&cmd)));
                    if let Some(program) = words
                        .iter()
                        .position(|w| *w == "--chain")
                        .and_then(|i| words.get(i + 1))
                    {
                        match crate::chain::check_program(Path::new(program)) {
                            Ok(()) => r.ok(
                                "chain",
                                format!("chains {}: it runs beside each lookup", sanitize(program)),
                            ),
                            Err(e) => r.fail(
                                "chain",
                                format!("the chained command is not run: {}", sanitize(&e)),
                                "make it and every directory above it root-owned and not group/world-writable, as sshd requires of a command",
                            ),
                        }
                    }
                    if !words.contains(&"%u") {
                        r.fail(
                            "drop-in",
                            "the command is not given %u",
                            "end it with -- %u",
                        );
                    } else if !cmd.contains("-- %u") {
                        r.warn(
                            "drop-in",
                            "no -- before %u",
                            "write -- %u so a name starting with '-' is never read as an option",
                        );
                    }
                    if !words.contains(&"%U") {
                        r.warn(
                            "drop-in",
                            "no --uid %U: the system-account rule reads UIDs from /etc/passwd only",
                            "add --uid %U before --",
                        );
                    }
                    let bin = Path::new(words[0]);
                    let problems = unsafe_components(bin);
                    if problems.is_empty() {
                        r.ok(
                            "command path",
                            format!(
                                "{}: root-owned, no group/world-writable component up to /",
                                bin.display()
                            ),
                        );
                    } else {
                        r.fail(
                            "command path",
                            format!("sshd will refuse {}: {}", bin.display(), problems.join("; ")),
                            "chown root and chmod go-w each named path (sshd checks every directory up to /)",
                        );
                    }
                }
                match t.get("authorizedkeyscommanduser").map(String::as_str) {
                    None | Some("none") => r.fail(
                        "command user",
                        "no AuthorizedKeysCommandUser: sshd will not run the command",
                        "set AuthorizedKeysCommandUser iam-authorized-keys (install.sh does)",
                    ),
                    Some(u) => {
                        command_user = Some(u.to_string());
                        check_command_user(&mut r, u);
                    }
                }
                match t.get("authorizedkeysfile").map(String::as_str) {
                    Some("none") => r.ok("authorized_keys files", "AuthorizedKeysFile none: keys come from IAM only"),
                    Some(f) => r.warn(
                        "authorized_keys files",
                        format!("AuthorizedKeysFile {f}: keys in those files outlive their revocation in IAM"),
                        "AuthorizedKeysFile none (keep file keys only for a break-glass Match block)",
                    ),
                    None => {}
                }
                if ours {
                    let probe_user = user_name.clone().unwrap_or_else(|| "doctor-probe".into());
                    let uid = user_name.as_deref().and_then(passwd_entry).map(|(u, _)| u);
                    match config_from_command(&words, &probe_user, uid) {
                        Ok(c) => effective = Some(c),
                        Err(e) => {
                            refused = true;
                            // The --config file's own refusal needs the file edited, not install.sh.
                            let fix = match &e.file {
                                Some(file) => format!(
                                    "correct {} (every key lookup reads it; root-owned, not group/world-writable), then run doctor again",
                                    sanitize(&file.to_string_lossy())
                                ),
                                None => "re-run install.sh with valid flags".to_string(),
                            };
                            r.fail(
                                "command options",
                                format!(
                                    "every key lookup fails: the options in AuthorizedKeysCommand are refused: {}",
                                    e.message
                                ),
                                fix,
                            )
                        }
                    }
                }
            }
        },
    }
    let cfg = match effective {
        Some(c) => {
            let ignored = ignored_options(own, &c);
            if ignored.is_empty() {
                r.ok(
                    "options",
                    "checking with the options sshd passes to the command",
                );
            } else {
                r.warn(
                    "options",
                    format!(
                        "checking with the options sshd passes to the command; yours differ and are not used: {}",
                        ignored.join(", ")
                    ),
                    "to check other options, give doctor --sshd-config with a config that runs them (or change the drop-in: re-run install.sh)",
                );
            }
            c
        }
        // Every key lookup fails at these options: the checks below would only test options sshd does not use.
        None if refused => return finish(&r, own),
        None => {
            r.warn(
                "options",
                "checking with this doctor's own options (sshd's command line is not available)",
                "pass the same options to doctor as in AuthorizedKeysCommand",
            );
            own.clone()
        }
    };

    // --- cache -------------------------------------------------------------------------------------
    check_cache_dir(&mut r, &cfg, command_user.as_deref());

    // --- AWS ---------------------------------------------------------------------------------------
    let aws_env: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| {
            k.starts_with("AWS_") && k != "AWS_ENDPOINT_URL_IAM" && k != "AWS_ENDPOINT_URL_STS"
        })
        .collect();
    if !aws_env.is_empty() {
        r.warn(
            "environment",
            format!(
                "this shell sets {}; sshd passes no environment, so lookups will not see them",
                aws_env.join(", ")
            ),
            "put what is needed in the command line or the --config file (e.g. --credentials-file)",
        );
    }
    let proxy_env: Vec<&str> = [
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ]
    .into_iter()
    .filter(|k| std::env::var_os(k).is_some())
    .collect();
    if !proxy_env.is_empty() {
        r.warn(
            "proxy",
            format!(
                "this shell sets {}; sshd passes no environment, so lookups will not use them",
                proxy_env.join(", ")
            ),
            "put --proxy URL (and --no-proxy LIST) in the command line or the --config file",
        );
    }
    if let Some(p) = cfg.proxy.as_ref().filter(|p| !p.from_env) {
        r.ok(
            "proxy",
            format!(
                "IAM and STS through {}{}{}; never IMDS",
                p.url,
                if p.basic_auth.is_some() {
                    " (with a user and password)"
                } else {
                    ""
                },
                p.no_proxy
                    .as_deref()
                    .map(|n| format!("; not for {n}"))
                    .unwrap_or_default()
            ),
        );
    }
    let budget = cfg.timeout.max(Duration::from_secs(5));
    let probed = lookup::with_runtime(&cfg, budget, async {
        match iam::connect(&cfg, budget).await {
            Ok(c) => {
                let reach = iam::probe(&c.client).await;
                let tag = match &cfg.allowed_groups_tag {
                    Some(key) => Some(
                        credentials::groups_tag(
                            &c.imds,
                            key,
                            "--allowed-groups-tag",
                            Instant::now() + budget / 2,
                        )
                        .await,
                    ),
                    None => None,
                };
                Ok(Ok((c, reach, tag)))
            }
            Err(e) => Ok(Err(e)),
        }
    });
    // One root cause, one FAIL: without credentials IAM is not asked, so it is not reported unreachable.
    // The allowed groups a lookup would apply: --allowed-group, or the instance tag's value (None: the
    // tag could not be read, every IAM user is refused).
    let mut allowed: Option<Vec<String>> = Some(cfg.allowed_groups.clone());
    let aws_ok = match probed {
        Ok(Ok((c, reach, tag))) => {
            for line in &c.trace {
                log.debug(line);
            }
            r.ok(
                "region",
                format!(
                    "{} (from {}); IAM endpoint {}{}",
                    c.region,
                    c.region_source,
                    cfg.endpoint_url.as_deref().unwrap_or("default"),
                    cfg.assume_role
                        .as_ref()
                        .map(|a| format!("; assuming role {}", a.arn))
                        .unwrap_or_default()
                ),
            );
            let from = match c.step {
                credentials::IMDS_STEP => "the instance profile (IMDSv2)".to_string(),
                credentials::PROFILE_STEP => match &cfg.credentials_file {
                    Some(p) => format!("{}", p.display()),
                    None => "~/.aws of this shell's user".to_string(),
                },
                other => other.to_string(),
            };
            let only_here = c.step == credentials::ENVIRONMENT_STEP
                || (c.step == credentials::PROFILE_STEP && cfg.credentials_file.is_none());
            if only_here {
                r.warn(
                    "credentials",
                    format!("from {from}: {}; sshd will not have these (it passes no environment, HOME=/nonexistent)", c.kind),
                    "on EC2 attach an instance profile; elsewhere name a root-owned --credentials-file in the command line or --config file",
                );
            } else {
                r.ok("credentials", format!("from {from}: {}", c.kind));
            }
            let reached = match reach {
                Ok(()) => {
                    r.ok("IAM", "reachable; ListSSHPublicKeys allowed");
                    true
                }
                Err(e) => {
                    r.fail(
                        "IAM",
                        e,
                        "check network/endpoint and attach examples/iam/read-keys.json to the role",
                    );
                    false
                }
            };
            match tag {
                Some(Ok(t)) => {
                    r.ok(
                        "groups tag",
                        format!(
                            "instance tag {} allows IAM groups {} (re-read with each IAM answer, cached with it)",
                            t.key,
                            t.groups.join(", ")
                        ),
                    );
                    allowed = Some(t.groups);
                }
                Some(Err(Error::InstanceTag { cause, fix, .. })) => {
                    r.fail("groups tag", cause, fix);
                    allowed = None;
                }
                Some(Err(e)) => {
                    r.fail("groups tag", e.to_string(), "check instance metadata");
                    allowed = None;
                }
                None => {}
            }
            reached
        }
        Ok(Err(Error::Credentials { cause, fix, detail })) => {
            log.debug(&detail);
            r.ok(
                "region",
                if cfg.region_configured {
                    format!("{} (--region)", cfg.region)
                } else {
                    format!(
                        "from IMDS once instance-profile credentials are found, else {}",
                        cfg.region
                    )
                },
            );
            r.fail("credentials", cause, fix);
            if cfg.allowed_groups_tag.is_some() {
                allowed = None;
            }
            false
        }
        Ok(Err(e)) | Err(e) => {
            r.fail(
                "IAM",
                e.to_string(),
                "check network, endpoint and --timeout",
            );
            false
        }
    };

    if let Some(login) = &user {
        check_user(&mut r, &cfg, login, aws_ok, allowed.as_deref());
    }

    finish(&r, own)
}

/// Prints the report; fails when any check failed.
fn finish(r: &Report, own: &Config) -> Result<(), Error> {
    let failed = r.0.iter().filter(|c| c.status == Status::Fail).count();
    output::emit(&if own.json {
        render_json(r, failed)
    } else {
        render(r)
    })?;
    if failed > 0 {
        Err(Error::Checks(failed))
    } else {
        Ok(())
    }
}

fn check_command_user(r: &mut Report, u: &str) {
    match passwd_entry(u) {
        None => r.fail(
            "command user",
            format!("AuthorizedKeysCommandUser {u} does not exist"),
            "run ./install.sh (creates the locked system user)",
        ),
        Some((uid, shell)) => {
            if uid == 0 || u == "nobody" {
                r.warn(
                    "command user",
                    format!("lookups run as {u}: a dedicated account is safer"),
                    "use the iam-authorized-keys user install.sh creates",
                );
            }
            let nologin = shell.ends_with("nologin") || shell.ends_with("/false");
            match shadow_field(u) {
                Ok(Some(p)) if p.starts_with('!') || p.starts_with('*') => r.ok(
                    "command user",
                    format!("{u} (uid {uid}) exists, password locked, shell {shell}"),
                ),
                Ok(_) if nologin => r.ok(
                    "command user",
                    format!("{u} (uid {uid}) exists, shell {shell}"),
                ),
                Ok(_) => r.fail(
                    "command user",
                    format!("{u} has a usable password and a login shell"),
                    format!("usermod -L -s /usr/sbin/nologin {u}"),
                ),
                Err(e) if nologin => r.ok(
                    "command user",
                    format!("{u} (uid {uid}) exists, shell {shell} ({e})"),
                ),
                Err(e) => r.warn(
                    "command user",
                    format!("cannot tell whether {u} is locked: {e}"),
                    "run doctor as root",
                ),
            }
        }
    }
}

/// The lookup options doctor was given (they differ from the defaults) that sshd's command line sets
/// otherwise: doctor checks what sshd runs, so these are not used, and the admin should hear it.
fn ignored_options(own: &Config, sshd: &Config) -> Vec<&'static str> {
    let Ok(base) = Config::build(&crate::cli::Opts::default(), &Env::default()) else {
        return Vec::new();
    };
    let show = |c: &Config| -> Vec<(&'static str, String)> {
        vec![
            (
                "--ttl/--negative-ttl/--max-stale",
                format!("{:?}", c.freshness),
            ),
            ("--timeout", format!("{:?}", c.timeout)),
            ("--cache-dir/--no-cache", format!("{:?}", c.cache_dir)),
            (
                "--region",
                format!("{:?}", (&c.region, c.region_configured)),
            ),
            ("--endpoint-url", format!("{:?}", c.endpoint_url)),
            ("--credentials-file", format!("{:?}", c.credentials_file)),
            ("--profile", format!("{:?}", c.profile)),
            ("--ca-bundle", format!("{:?}", c.ca_bundle)),
            ("--sts-endpoint-url", format!("{:?}", c.sts_endpoint_url)),
            ("--proxy/--no-proxy", format!("{:?}", c.proxy)),
            ("--assume-role", format!("{:?}", c.assume_role)),
            ("--name-case", format!("{:?}", c.name_case)),
            ("account rules", format!("{:?}", c.accounts)),
            ("--allowed-group", format!("{:?}", c.allowed_groups)),
            (
                "--allowed-groups-tag",
                format!("{:?}", c.allowed_groups_tag),
            ),
            ("--key-options", format!("{:?}", c.key_options)),
            ("--key-expiry", format!("{:?}", c.key_expiry)),
            ("--chain", format!("{:?}", c.chain)),
        ]
    };
    let (own, sshd, base) = (show(own), show(sshd), show(&base));
    own.iter()
        .zip(&sshd)
        .zip(&base)
        .filter(|(((_, o), (_, s)), (_, b))| o != b && o != s)
        .map(|(((name, _), _), _)| *name)
        .collect()
}

fn check_cache_dir(r: &mut Report, cfg: &Config, command_user: Option<&str>) {
    let Some(dir) = &cfg.cache_dir else {
        r.warn(
            "cache",
            "caching is off (--no-cache): every login asks IAM twice",
            "drop --no-cache",
        );
        return;
    };
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) => {
            r.fail(
                "cache",
                format!("{}: {e}", dir.display()),
                format!(
                    "install -d -m 0700 -o {} {}",
                    command_user.unwrap_or("iam-authorized-keys"),
                    dir.display()
                ),
            );
            return;
        }
    };
    let want_uid = command_user.and_then(passwd_entry).map(|(u, _)| u);
    if meta.file_type().is_symlink() || !meta.is_dir() {
        r.fail(
            "cache",
            format!("{} is not a real directory", dir.display()),
            "replace it with a 0700 directory owned by the command user",
        );
    } else if want_uid.is_some_and(|u| u != meta.uid()) {
        r.fail(
            "cache",
            format!(
                "{} is owned by uid {}, but sshd runs lookups as {} (uid {}): they will refuse it",
                dir.display(),
                meta.uid(),
                command_user.unwrap_or("?"),
                want_uid.unwrap_or(0)
            ),
            format!("chown {} {}", command_user.unwrap_or("?"), dir.display()),
        );
    } else if meta.mode() & 0o022 != 0 {
        r.fail(
            "cache",
            format!(
                "{} is group- or world-writable (mode {:04o}): anyone could plant keys",
                dir.display(),
                meta.mode() & 0o7777
            ),
            format!("chmod 0700 {}", dir.display()),
        );
    } else {
        let records = Cache::open_existing(dir)
            .and_then(|c| c.users())
            .map(|u| u.len())
            .unwrap_or(0);
        r.ok(
            "cache",
            format!(
                "{} owned by uid {}, mode {:04o}, {records} record(s)",
                dir.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ),
        );
    }
}

/// `allowed`: the group rule (empty: none); `None` when it is an instance tag that could not be read.
fn check_user(
    r: &mut Report,
    cfg: &Config,
    login: &LoginName,
    aws_ok: bool,
    allowed: Option<&[String]>,
) {
    let iam_user = login.iam_user();
    r.ok(
        "mapping",
        format!("Linux login {} -> IAM user {iam_user}", login.as_str()),
    );
    // The same passwd reading as a lookup without --uid: a name listed twice or malformed is refused.
    match policy::check_account(
        login.as_str(),
        None,
        &cfg.accounts,
        |n| policy::passwd_uid(Path::new(policy::PASSWD), n),
        || policy::login_defs_uid_max(Path::new(policy::LOGIN_DEFS)),
    ) {
        Verdict::Allowed(why) => r.ok("account", why),
        Verdict::Refused(why) => r.fail(
            "account",
            format!("refused: {why}"),
            "sshd only asks about local accounts; create it with a UID >= --min-uid, or --allow-user",
        ),
    }
    // What IAM says now, bypassing the cache; not asked when the checks above already failed for it.
    let budget = cfg.timeout.max(Duration::from_secs(5));
    if allowed.is_none() {
        r.fail(
            "policy",
            format!(
                "refused: the groups tag {} could not be read (see above)",
                cfg.allowed_groups_tag.as_deref().unwrap_or("")
            ),
            "fix the groups tag check above",
        );
    }
    let allowed = allowed.unwrap_or(&[]);
    let fetched = if !aws_ok {
        Ok(None)
    } else {
        lookup::with_runtime(cfg, budget, async {
            let client = iam::client(cfg, budget).await?;
            iam::fetch(&client, iam_user, &HashMap::new(), allowed)
                .await
                .map(Some)
        })
    };
    let iam_ids: Option<Vec<String>> = match fetched {
        Ok(None) => None,
        Err(e) => {
            r.fail(
                "IAM keys",
                e.to_string(),
                "see the IAM and credentials checks above",
            );
            None
        }
        Ok(Some(f)) => {
            match f.outcome {
                cache::Outcome::NoSuchUser => r.fail(
                    "IAM keys",
                    format!("IAM has no user {iam_user}"),
                    "check the name mapping (iam-authorized-keys map NAME) or create the IAM user",
                ),
                cache::Outcome::NotInAllowedGroup => r.fail(
                    "policy",
                    match policy::check_groups(allowed, f.groups.as_deref().unwrap_or(&[])) {
                        Some(Verdict::Refused(w)) => format!("refused: {w}"),
                        _ => "refused by the group rule".into(),
                    },
                    "add the IAM user to an allowed group",
                ),
                cache::Outcome::Keys if f.keys.is_empty() => r.fail(
                    "IAM keys",
                    format!("{iam_user} has no active SSH public key"),
                    "upload one: aws iam upload-ssh-public-key --user-name NAME --ssh-public-key-body file://key.pub",
                ),
                cache::Outcome::Keys => {
                    if let Some(g) = &f.groups {
                        if let Some(Verdict::Allowed(w)) = policy::check_groups(allowed, g) {
                            r.ok("policy", w);
                        }
                    }
                    r.ok(
                        "IAM keys",
                        f.keys
                            .iter()
                            .map(|k| format!("{} {} {}", k.id, k.key.algorithm(), k.key.fingerprint()))
                            .collect::<Vec<_>>()
                            .join("; "),
                    );
                }
            }
            for (id, why) in &f.rejected {
                r.warn(
                    "IAM keys",
                    format!("active key {id} is not served: {why}"),
                    "replace it with an ed25519, ecdsa or RSA >= 2048 key",
                );
            }
            Some(f.keys.iter().map(|k| k.id.clone()).collect())
        }
    };
    // What the cache would serve.
    let Some(dir) = &cfg.cache_dir else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match Cache::open_existing(dir).map(|c| c.read(iam_user)) {
        Err(e) => r.warn("cache record", e.to_string(), "see the cache check above"),
        Ok(cache::Read::Absent) => r.ok("cache record", "none yet: the next login asks IAM"),
        Ok(cache::Read::Rejected(why)) => r.warn(
            "cache record",
            format!("untrusted, will be replaced: {why}"),
            "nothing to do; purge it with: iam-authorized-keys cache purge USER",
        ),
        Ok(cache::Read::Hit(l)) => {
            let j = lookup::judge(
                Some((l.record.fetched_at, l.record.is_negative())),
                now,
                &cfg.freshness,
            );
            let ids: Vec<String> = l.keys.iter().map(|k| k.id.clone()).collect();
            let state = match j {
                Judgement::Fresh { age } => {
                    format!("fresh (age {age}s), served without asking IAM")
                }
                Judgement::Expired {
                    age,
                    servable: true,
                } => {
                    format!("expired (age {age}s): next login asks IAM, served only if IAM fails")
                }
                Judgement::Expired { age, .. } => format!("too old (age {age}s): never served"),
                Judgement::Miss => "unusable (timestamp in the future)".into(),
            };
            let detail = format!(
                "{state}; keys: {}",
                if ids.is_empty() {
                    "none".into()
                } else {
                    ids.join(", ")
                }
            );
            match (&iam_ids, j) {
                (Some(now_ids), Judgement::Fresh { .. }) if *now_ids != ids => r.warn(
                    "cache record",
                    format!("{detail}; IAM now has: {}", now_ids.join(", ")),
                    "it changes at the TTL; to apply now: iam-authorized-keys cache purge USER",
                ),
                _ => r.ok("cache record", detail),
            }
        }
    }
}

fn mark(s: Status) -> &'static str {
    match s {
        Status::Ok => "OK  ",
        Status::Warn => "WARN",
        Status::Fail => "FAIL",
    }
}

fn render(r: &Report) -> String {
    let mut out = String::new();
    for c in &r.0 {
        out.push_str(&format!("{} {}: {}\n", mark(c.status), c.name, c.detail));
        if let Some(f) = &c.fix {
            out.push_str(&format!("     fix: {f}\n"));
        }
    }
    let (w, f) = (
        r.0.iter().filter(|c| c.status == Status::Warn).count(),
        r.0.iter().filter(|c| c.status == Status::Fail).count(),
    );
    out.push_str(&format!(
        "{} checks: {} ok, {w} warning(s), {f} failure(s)\n",
        r.0.len(),
        r.0.len() - w - f
    ));
    out
}

fn render_json(r: &Report, failed: usize) -> String {
    let checks: Vec<_> =
        r.0.iter()
            .map(|c| {
                json!({
                    "check": c.name,
                    "status": mark(c.status).trim(),
                    "detail": c.detail,
                    "fix": c.fix,
                })
            })
            .collect();
    let mut s = serde_json::to_string_pretty(&json!({"ok": failed == 0, "checks": checks}))
        .unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_command_line_is_one_line_that_says_why() {
        let e = config_from_command(
            &[
                "/usr/bin/iam-authorized-keys",
                "--ttl",
                "1",
                "--ttl",
                "2",
                "--",
                "%u",
            ],
            "alice",
            None,
        )
        .expect_err("--ttl twice");
        let m = &e.message;
        assert!(!m.contains('\n') && !m.starts_with("error:"), "{m}");
        assert!(m.contains("--ttl") && e.file.is_none(), "{m}");
        let e = config_from_command(
            &["/usr/bin/iam-authorized-keys", "--ttl", "soon", "--", "%u"],
            "alice",
            None,
        )
        .expect_err("bad value");
        assert!(
            e.message.contains("\"soon\"") && e.file.is_none(),
            "{}",
            e.message
        );
        let c = config_from_command(
            &[
                "/usr/bin/iam-authorized-keys",
                "--ttl",
                "7",
                "--uid",
                "%U",
                "--",
                "%u",
                "%f",
                "%t",
            ],
            "alice",
            Some(1000),
        )
        .expect("sshd's line");
        assert_eq!(c.freshness.ttl, Duration::from_secs(7));
    }

    #[test]
    fn a_refused_config_file_is_named_however_the_command_line_spells_it() {
        if crate::fsutil::euid() != 0 {
            return; // the file must be root-owned to be read at all
        }
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("conf");
        std::fs::write(&p, "ttl = soon\n").expect("write");
        let joined = format!("--config={}", p.display());
        let spellings: [&[&str]; 2] = [&["--config", p.to_str().expect("utf8")], &[&joined]];
        for spelling in spellings {
            let mut words = vec!["/usr/bin/iam-authorized-keys"];
            words.extend_from_slice(spelling);
            words.extend_from_slice(&["--", "%u"]);
            let e = config_from_command(&words, "alice", None).expect_err("refused file");
            assert_eq!(e.file.as_deref(), Some(p.as_path()), "{}", e.message);
            assert!(e.message.contains("\"soon\""), "{}", e.message);
        }
    }
}
