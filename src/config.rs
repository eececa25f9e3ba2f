//! Options from the command line and the optional root-owned config file become one checked `Config`.
//! clap types stop here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::Opts;
use crate::error::Error;
use crate::fsutil;
use crate::keyopts::KeyOptions;
use crate::policy::AccountRules;
use crate::username::NameCase;

pub const DEFAULT_CACHE_DIR: &str = "/var/cache/iam-authorized-keys";

/// Freshness rules for cached answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub max_stale: Duration,
}

/// The region when none is configured and IMDS did not give one (commercial partition).
pub const DEFAULT_REGION: &str = "us-east-1";

#[derive(Debug, Clone)]
pub struct Config {
    pub freshness: Freshness,
    pub timeout: Duration,
    /// `None`: run without a cache.
    pub cache_dir: Option<PathBuf>,
    /// The region that signs IAM and STS requests: `--region`, else [`DEFAULT_REGION`] until the cold
    /// path learns the host's own region from IMDS (see `region_configured`).
    pub region: String,
    /// `--region` (or the config file) named it: never asked of IMDS.
    pub region_configured: bool,
    pub endpoint_url: Option<String>,
    pub credentials_file: Option<PathBuf>,
    pub profile: Option<String>,
    /// TLS trust roots; `None`: the first well-known system bundle that exists.
    pub ca_bundle: Option<PathBuf>,
    pub sts_endpoint_url: Option<String>,
    pub proxy: Option<Proxy>,
    /// Cross-account: the role to assume, and the external id its trust policy wants.
    pub assume_role: Option<AssumeRole>,
    pub name_case: NameCase,
    pub accounts: AccountRules,
    /// sshd's `%U` for this lookup.
    pub uid: Option<u32>,
    /// Empty: every IAM user may be served.
    pub allowed_groups: Vec<String>,
    /// The instance tag whose value lists the allowed IAM groups (exclusive with `allowed_groups`).
    pub allowed_groups_tag: Option<String>,
    pub key_options: Option<KeyOptions>,
    pub key_expiry: bool,
    /// The command in effect before ours, run beside the lookup.
    pub chain: Option<crate::chain::ChainCommand>,
    pub verbose: u8,
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRole {
    pub arn: String,
    pub external_id: Option<String>,
}

/// What the environment may contribute; read in one place (`app`).
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// AWS_ENDPOINT_URL_IAM
    pub iam_endpoint: Option<String>,
    /// AWS_ENDPOINT_URL_STS
    pub sts_endpoint: Option<String>,
    /// HTTPS_PROXY, https_proxy, ALL_PROXY or all_proxy (manual runs; sshd passes none)
    pub https_proxy: Option<String>,
    /// NO_PROXY or no_proxy
    pub no_proxy: Option<String>,
}

/// The forward proxy for IAM and STS (never IMDS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// `http://host:port` or `https://host:port`, without credentials.
    pub url: String,
    /// From `user:password@` in the URL.
    pub basic_auth: Option<(String, String)>,
    /// Comma-separated hosts that bypass it.
    pub no_proxy: Option<String>,
    /// Where it came from: `--proxy` or the environment.
    pub from_env: bool,
}

/// `300`, `300s`, `500ms`, `5m`, `1h`, `1d`.
pub fn parse_duration(name: &str, raw: &str) -> Result<Duration, Error> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let bad = || {
        Error::Config(format!(
            "--{name} {raw:?} is not a duration; write e.g. 300, 300s, 500ms, 5m, 1h"
        ))
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let mult_ms: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let ms = n.checked_mul(mult_ms).ok_or_else(bad)?;
    if ms > 365 * 86_400_000 {
        return Err(Error::Config(format!(
            "--{name} {raw:?} is more than a year"
        )));
    }
    Ok(Duration::from_millis(ms))
}

/// Settings as read from the file, before flags are laid over them.
#[derive(Debug, Default)]
struct FileSettings {
    entries: Vec<(String, String)>,
}

impl FileSettings {
    fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeatable option, in file order.
    fn get_all(&self, key: &str) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

const FILE_KEYS: &[&str] = &[
    "ttl",
    "negative-ttl",
    "max-stale",
    "timeout",
    "cache-dir",
    "no-cache",
    "region",
    "endpoint-url",
    "credentials-file",
    "profile",
    "ca-bundle",
    "sts-endpoint-url",
    "proxy",
    "no-proxy",
    "assume-role",
    "external-id",
    "allowed-group",
    "allowed-groups-tag",
    "name-case",
    "min-uid",
    "max-uid",
    "allow-user",
    "deny-user",
    "key-options",
    "key-expiry",
    "chain",
    "chain-arg",
];

/// Reads a config file that only root can have written: root-owned, not group/world-writable, a
/// regular file reached without a final symlink.
fn read_file(path: &Path) -> Result<FileSettings, Error> {
    let bytes = fsutil::read_checked(path, 0)
        .map_err(|e| Error::ConfigFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| Error::ConfigFile {
            path: path.to_path_buf(),
            reason: "does not exist".into(),
        })?;
    let text = String::from_utf8(bytes).map_err(|_| Error::ConfigFile {
        path: path.to_path_buf(),
        reason: "is not UTF-8".into(),
    })?;
    parse_settings(path, &text)
}

fn parse_settings(path: &Path, text: &str) -> Result<FileSettings, Error> {
    let mut settings = FileSettings::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason: String| Error::ConfigFile {
            path: path.to_path_buf(),
            reason: format!("line {}: {reason}", n + 1),
        };
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| err("expected `option = value`".into()))?;
        let (k, v) = (k.trim(), v.trim());
        if !FILE_KEYS.contains(&k) {
            return Err(err(format!(
                "unknown option {:?}; known: {}",
                crate::username::sanitize(k),
                FILE_KEYS.join(", ")
            )));
        }
        settings.entries.push((k.to_string(), v.to_string()));
    }
    Ok(settings)
}

fn parse_bool(key: &str, v: &str) -> Result<bool, Error> {
    match v {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(Error::Config(format!("{key} = {v:?}: write true or false"))),
    }
}

fn check_endpoint(url: &str) -> Result<String, Error> {
    let ok = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() > 8
        && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(url.to_string())
    } else {
        Err(Error::Config(format!(
            "endpoint URL {:?} must be http:// or https:// followed by a host",
            crate::username::sanitize(url)
        )))
    }
}

/// `http[s]://[user:password@]host[:port][/]`: the credentials are taken out of the URL.
fn check_proxy(url: &str) -> Result<(String, Option<(String, String)>), Error> {
    let bad = || {
        Error::Config(format!(
            "proxy URL {:?} must be http:// or https:// followed by [user:password@]host[:port]",
            crate::username::sanitize(url)
        ))
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    if scheme != "http" && scheme != "https" {
        return Err(bad());
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (auth, host) = match rest.rsplit_once('@') {
        Some((a, h)) => {
            let (u, p) = a.split_once(':').ok_or_else(bad)?;
            (Some((u.to_string(), p.to_string())), h)
        }
        None => (None, rest),
    };
    if host.is_empty() || host.contains(['/', '?', '#', '@']) {
        return Err(bad());
    }
    Ok((format!("{scheme}://{host}"), auth))
}

fn check_role_arn(arn: &str) -> Result<String, Error> {
    let ok = arn
        .strip_prefix("arn:")
        .and_then(|r| r.split_once(":iam::"))
        .and_then(|(partition, r)| {
            let (account, role) = r.split_once(":role/")?;
            Some(
                partition.starts_with("aws")
                    && partition
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b == b'-')
                    && account.len() == 12
                    && account.bytes().all(|b| b.is_ascii_digit())
                    && !role.is_empty()
                    && role.len() <= 512
                    && role
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_+=,.@/-".contains(c)),
            )
        })
        .unwrap_or(false);
    if ok {
        Ok(arn.to_string())
    } else {
        Err(Error::Config(format!(
            "--assume-role {:?} is not a role ARN like arn:aws:iam::123456789012:role/Name",
            crate::username::sanitize(arn)
        )))
    }
}

fn check_external_id(id: &str) -> Result<String, Error> {
    if (2..=1224).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c))
    {
        Ok(id.to_string())
    } else {
        Err(Error::Config(
            "--external-id must be 2-1224 characters of letters, digits and _+=,.@:/-".into(),
        ))
    }
}

/// A Linux user name in --allow-user/--deny-user: anything a passwd line could hold as a name.
fn check_account_name(opt: &str, name: &str) -> Result<String, Error> {
    if !name.is_empty()
        && name.len() <= 256
        && !name
            .chars()
            .any(|c| c == ':' || c.is_whitespace() || c.is_control())
    {
        Ok(name.to_string())
    } else {
        Err(Error::Config(format!(
            "--{opt} {:?} is not an account name",
            crate::username::sanitize(name)
        )))
    }
}

/// An instance tag key as instance metadata exposes it (1-128 letters, digits and `+-=.,_:@`, not `.`,
/// `..` or `_index`): keys with other characters are never in instance metadata.
pub fn check_tag_key(option: &str, key: &str) -> Result<String, Error> {
    if crate::cache::valid_tag_key(key) {
        Ok(key.to_string())
    } else {
        Err(Error::Config(format!(
            "--{option} {:?} is not an instance tag key instance metadata can show (1-128 letters, digits and +-=.,_:@; not . .. or _index)",
            crate::username::sanitize(key)
        )))
    }
}

fn check_group(name: &str) -> Result<String, Error> {
    if (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
    {
        Ok(name.to_string())
    } else {
        Err(Error::Config(format!(
            "--allowed-group {:?} is not an IAM group name (1-128 letters, digits and _+=,.@-)",
            crate::username::sanitize(name)
        )))
    }
}

fn parse_uid(opt: &str, raw: &str) -> Result<u32, Error> {
    raw.trim().parse().map_err(|_| {
        Error::Config(format!(
            "--{opt} {:?} is not a numeric UID",
            crate::username::sanitize(raw)
        ))
    })
}

impl Config {
    /// Lays the command line over the config file, over the defaults, and checks the result.
    /// Repeatable options: the command line's values replace the file's when any is given.
    pub fn build(cli: &Opts, env: &Env) -> Result<Config, Error> {
        Self::build_from(cli, env).map_err(|e| match (e, &cli.config) {
            // A refused value names the option; when the file alone is refused too, the value is the
            // file's: say so, so that the admin edits the file rather than looks for a flag. (Only on
            // this error path: a good configuration is read once.)
            (Error::Config(flagged), Some(path)) => {
                let file_alone = Opts {
                    config: Some(path.clone()),
                    ..Opts::default()
                };
                match Self::build_from(&file_alone, &Env::default()) {
                    Err(Error::Config(reason)) => Error::ConfigFile {
                        path: path.clone(),
                        reason,
                    },
                    _ => Error::Config(flagged),
                }
            }
            (e, _) => e,
        })
    }

    fn build_from(cli: &Opts, env: &Env) -> Result<Config, Error> {
        let file = match &cli.config {
            Some(p) => read_file(p)?,
            None => FileSettings::default(),
        };
        let pick = |flag: &Option<String>, key: &str| -> Option<String> {
            flag.clone().or_else(|| file.get(key).map(str::to_string))
        };
        let pick_path = |flag: &Option<PathBuf>, key: &str| -> Option<PathBuf> {
            flag.clone().or_else(|| file.get(key).map(PathBuf::from))
        };
        let dur = |flag: &Option<String>, key: &str, default: &str| -> Result<Duration, Error> {
            parse_duration(key, &pick(flag, key).unwrap_or_else(|| default.to_string()))
        };
        let freshness = Freshness {
            ttl: dur(&cli.ttl, "ttl", "300")?,
            negative_ttl: dur(&cli.negative_ttl, "negative-ttl", "60")?,
            max_stale: dur(&cli.max_stale, "max-stale", "1h")?,
        };
        let timeout = dur(&cli.timeout, "timeout", "5")?;
        if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(60) {
            return Err(Error::Config(format!(
                "--timeout {timeout:?} must be between 100ms and 60s: sshd waits for us on every login"
            )));
        }
        let no_cache = cli.no_cache
            || match file.get("no-cache") {
                Some(v) => parse_bool("no-cache", v)?,
                None => false,
            };
        let cache_dir = if no_cache {
            None
        } else {
            let dir = pick_path(&cli.cache_dir, "cache-dir")
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR));
            if !dir.is_absolute() {
                return Err(Error::Config(format!(
                    "cache directory {} must be an absolute path (sshd runs us from /)",
                    dir.display()
                )));
            }
            Some(dir)
        };
        let configured_region = pick(&cli.region, "region");
        let region_configured = configured_region.is_some();
        let region = configured_region.unwrap_or_else(|| DEFAULT_REGION.to_string());
        if region.is_empty()
            || region.len() > 32
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(Error::Config(format!(
                "region {:?} is not an AWS region name like us-east-1",
                crate::username::sanitize(&region)
            )));
        }
        let endpoint =
            |flag: &Option<String>, key: &str, env: &Option<String>| match pick(flag, key)
                .or_else(|| env.clone())
            {
                Some(u) if !u.is_empty() => check_endpoint(&u).map(Some),
                _ => Ok(None),
            };
        let endpoint_url = endpoint(&cli.endpoint_url, "endpoint-url", &env.iam_endpoint)?;
        let sts_endpoint_url =
            endpoint(&cli.sts_endpoint_url, "sts-endpoint-url", &env.sts_endpoint)?;
        let no_proxy = pick(&cli.no_proxy, "no-proxy").or_else(|| env.no_proxy.clone());
        if no_proxy
            .as_deref()
            .is_some_and(|n| n.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(Error::Config(
                "--no-proxy is a comma-separated list of hosts without spaces".into(),
            ));
        }
        let proxy =
            match pick(&cli.proxy, "proxy") {
                Some(u) => Some((u, false)),
                // As curl reads them: `host:port` in the environment means an http:// proxy.
                None => env.https_proxy.clone().filter(|u| !u.is_empty()).map(|u| {
                    match u.contains("://") {
                        true => (u, true),
                        false => (format!("http://{u}"), true),
                    }
                }),
            }
            .map(|(u, from_env)| {
                check_proxy(&u).map(|(url, basic_auth)| Proxy {
                    url,
                    basic_auth,
                    no_proxy: no_proxy.clone(),
                    from_env,
                })
            })
            .transpose()?;
        let list = |flag: &Vec<String>, key: &str| -> Vec<String> {
            if flag.is_empty() {
                file.get_all(key)
            } else {
                flag.clone()
            }
        };
        let assume_role = match pick(&cli.assume_role, "assume-role") {
            Some(arn) => Some(AssumeRole {
                arn: check_role_arn(&arn)?,
                external_id: pick(&cli.external_id, "external-id")
                    .map(|id| check_external_id(&id))
                    .transpose()?,
            }),
            None if pick(&cli.external_id, "external-id").is_some() => {
                return Err(Error::Config(
                    "--external-id only applies with --assume-role".into(),
                ))
            }
            None => None,
        };
        let name_case = match pick(&cli.name_case, "name-case") {
            Some(v) => NameCase::parse(&v)?,
            None => NameCase::Fold,
        };
        let accounts = AccountRules {
            min_uid: match pick(&cli.min_uid, "min-uid") {
                Some(v) => parse_uid("min-uid", &v)?,
                None => 1000,
            },
            max_uid: match pick(&cli.max_uid, "max-uid") {
                Some(v) => Some(parse_uid("max-uid", &v)?),
                None => None,
            },
            allow: list(&cli.allow_user, "allow-user")
                .iter()
                .map(|n| check_account_name("allow-user", n))
                .collect::<Result<_, _>>()?,
            deny: list(&cli.deny_user, "deny-user")
                .iter()
                .map(|n| check_account_name("deny-user", n))
                .collect::<Result<_, _>>()?,
        };
        let uid = cli
            .uid
            .as_deref()
            .map(|u| parse_uid("uid", u))
            .transpose()?;
        let allowed_groups = list(&cli.allowed_group, "allowed-group")
            .iter()
            .map(|g| check_group(g))
            .collect::<Result<Vec<_>, _>>()?;
        let allowed_groups_tag = pick(&cli.allowed_groups_tag, "allowed-groups-tag")
            .map(|k| check_tag_key("allowed-groups-tag", &k))
            .transpose()?;
        if allowed_groups_tag.is_some() && !allowed_groups.is_empty() {
            return Err(Error::Config(
                "--allowed-group and --allowed-groups-tag: choose one (the tag's value is the list of groups)"
                    .into(),
            ));
        }
        let key_options = pick(&cli.key_options, "key-options")
            .map(|o| KeyOptions::parse(&o))
            .transpose()
            .map_err(|e| Error::Config(format!("--key-options: {e}")))?;
        let key_expiry = cli.key_expiry
            || match file.get("key-expiry") {
                Some(v) => parse_bool("key-expiry", v)?,
                None => false,
            };
        if key_expiry && key_options.as_ref().is_some_and(KeyOptions::has_expiry) {
            return Err(Error::Config(
                "--key-expiry and an expiry-time in --key-options: choose one".into(),
            ));
        }
        let credentials_file = pick_path(&cli.credentials_file, "credentials-file");
        if let Some(p) = &credentials_file {
            if !p.is_absolute() {
                return Err(Error::Config(format!(
                    "credentials file {} must be an absolute path",
                    p.display()
                )));
            }
            fsutil::check_secret_file(p)
                .map_err(|e| Error::Config(format!("credentials file: {e}")))?;
        }
        let profile = pick(&cli.profile, "profile");
        let ca_bundle = pick_path(&cli.ca_bundle, "ca-bundle");
        let chain_args = list(&cli.chain_arg, "chain-arg");
        let chain = match pick_path(&cli.chain, "chain") {
            Some(program) if program.is_absolute() => Some(crate::chain::ChainCommand {
                program,
                args: chain_args,
            }),
            Some(program) => {
                return Err(Error::Config(format!(
                    "--chain {} must be an absolute path (sshd requires one for a command)",
                    program.display()
                )))
            }
            None if !chain_args.is_empty() => {
                return Err(Error::Config("--chain-arg needs --chain".into()))
            }
            None => None,
        };
        Ok(Config {
            freshness,
            timeout,
            cache_dir,
            region,
            region_configured,
            endpoint_url,
            credentials_file,
            profile,
            ca_bundle,
            sts_endpoint_url,
            proxy,
            assume_role,
            name_case,
            accounts,
            uid,
            allowed_groups,
            allowed_groups_tag,
            key_options,
            key_expiry,
            chain,
            verbose: cli.verbose,
            json: cli.json,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Opts {
        let mut v = vec!["iam-authorized-keys"];
        v.extend_from_slice(args);
        crate::cli::Cli::try_parse_from(v).expect("cli").opts
    }

    fn env(iam: Option<&str>) -> Env {
        Env {
            iam_endpoint: iam.map(str::to_string),
            ..Env::default()
        }
    }

    #[test]
    fn durations() {
        let ok = [
            ("300", 300_000),
            ("300s", 300_000),
            ("500ms", 500),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("0", 0),
        ];
        for (raw, ms) in ok {
            assert_eq!(
                parse_duration("ttl", raw).expect(raw),
                Duration::from_millis(ms)
            );
        }
        for bad in ["", "-1", "5x", "1.5s", "h", "99999999999999999999", "400d"] {
            assert!(parse_duration("ttl", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn proxy_urls() {
        assert_eq!(
            check_proxy("http://proxy.internal:3128/").expect("plain"),
            ("http://proxy.internal:3128".to_string(), None)
        );
        assert_eq!(
            check_proxy("https://u:p@w@proxy:8443").expect("auth"),
            (
                "https://proxy:8443".to_string(),
                Some(("u".to_string(), "p@w".to_string()))
            )
        );
        for bad in [
            "proxy:3128",
            "socks5://proxy:1080",
            "http://",
            "http://u@proxy",
            "http://proxy/path",
            "http://pro xy",
        ] {
            assert!(check_proxy(bad).is_err(), "{bad}");
        }
        let c = Config::build(
            &cli(&["--no-proxy", "a.internal,b", "alice"]),
            &Env {
                https_proxy: Some("http://p:1".into()),
                ..Env::default()
            },
        )
        .expect("config");
        let p = c.proxy.expect("from the environment");
        assert!(p.from_env);
        assert_eq!(p.no_proxy.as_deref(), Some("a.internal,b"));
        let c =
            Config::build(&cli(&["--proxy", "http://q:2", "alice"]), &env(None)).expect("config");
        assert!(!c.proxy.expect("flag").from_env);
        // The environment's `host:port` (curl's reading: http://), never the flag's.
        let c = Config::build(
            &cli(&["alice"]),
            &Env {
                https_proxy: Some("proxy.corp:3128".into()),
                ..Env::default()
            },
        )
        .expect("config");
        assert_eq!(c.proxy.expect("env").url, "http://proxy.corp:3128");
        assert!(Config::build(&cli(&["--proxy", "proxy.corp:3128", "alice"]), &env(None)).is_err());
    }

    #[test]
    fn defaults() {
        let c = Config::build(&cli(&["alice"]), &env(None)).expect("config");
        assert_eq!(c.freshness.ttl, Duration::from_secs(300));
        assert_eq!(c.freshness.negative_ttl, Duration::from_secs(60));
        assert_eq!(c.freshness.max_stale, Duration::from_secs(3600));
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.cache_dir.as_deref(), Some(Path::new(DEFAULT_CACHE_DIR)));
        assert_eq!(c.region, "us-east-1");
        assert!(!c.region_configured);
        assert!(c.endpoint_url.is_none());
    }

    #[test]
    fn flags_and_environment() {
        let c = Config::build(
            &cli(&[
                "--no-cache",
                "--ttl",
                "10s",
                "--region",
                "eu-west-1",
                "alice",
            ]),
            &env(Some("http://127.0.0.1:5000")),
        )
        .expect("config");
        assert!(c.cache_dir.is_none());
        assert_eq!(c.freshness.ttl, Duration::from_secs(10));
        assert_eq!(c.endpoint_url.as_deref(), Some("http://127.0.0.1:5000"));
        let c = Config::build(
            &cli(&["--endpoint-url", "https://iam.example", "alice"]),
            &env(Some("http://127.0.0.1:5000")),
        )
        .expect("config");
        assert_eq!(c.endpoint_url.as_deref(), Some("https://iam.example"));
    }

    #[test]
    fn refusals_say_what_to_fix() {
        for (args, want) in [
            (&["--timeout", "0", "a"][..], "between 100ms and 60s"),
            (&["--timeout", "2m", "a"][..], "between 100ms and 60s"),
            (&["--cache-dir", "rel/dir", "a"][..], "absolute"),
            (&["--region", "EU WEST", "a"][..], "region"),
            (&["--endpoint-url", "ftp://x", "a"][..], "http://"),
            (&["--ttl", "soon", "a"][..], "not a duration"),
            (&["--assume-role", "role/x", "a"][..], "role ARN"),
            (
                &["--assume-role", "arn:aws:iam::12345:role/x", "a"][..],
                "role ARN",
            ),
            (&["--external-id", "abc", "a"][..], "only applies"),
            (
                &[
                    "--assume-role",
                    "arn:aws:iam::123456789012:role/r",
                    "--external-id",
                    "a b",
                    "a",
                ][..],
                "external-id",
            ),
            (&["--allowed-group", "a b", "a"][..], "IAM group name"),
            (&["--name-case", "upper", "a"][..], "fold or preserve"),
            (&["--min-uid=-1", "a"][..], "numeric UID"),
            (&["--uid", "x", "a"][..], "numeric UID"),
            (&["--deny-user", "a:b", "a"][..], "account name"),
            (
                &["--key-options", "cert-authority", "a"][..],
                "--key-options",
            ),
            (
                &[
                    "--key-expiry",
                    "--key-options",
                    "expiry-time=\"20300101\"",
                    "a",
                ][..],
                "choose one",
            ),
        ] {
            let e = Config::build(&cli(args), &env(None))
                .expect_err(want)
                .to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn config_file_must_be_root_owned() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("conf");
        std::fs::write(&p, "ttl = 10\n").expect("write");
        let e = Config::build(
            &cli(&["--config", p.to_str().expect("utf8"), "a"]),
            &env(None),
        );
        if fsutil::euid() == 0 {
            assert_eq!(
                e.expect("root-owned").freshness.ttl,
                Duration::from_secs(10)
            );
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o666))
                .expect("chmod");
            let e = Config::build(
                &cli(&["--config", p.to_str().expect("utf8"), "a"]),
                &env(None),
            );
            assert!(e.expect_err("666").to_string().contains("world-writable"));
        } else {
            assert!(e
                .expect_err("not root")
                .to_string()
                .contains("owned by uid"));
        }
    }

    #[test]
    fn a_refused_value_from_the_file_names_the_file() {
        if fsutil::euid() != 0 {
            return; // the file must be root-owned to be read at all (see the test above)
        }
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("conf");
        let path = p.to_str().expect("utf8");
        let build = |text: &str, flags: &[&str]| {
            std::fs::write(&p, text).expect("write");
            let mut args = vec!["--config", path];
            args.extend_from_slice(flags);
            args.push("a");
            Config::build(&cli(&args), &env(None)).expect_err("refused")
        };
        let e = build("ttl = soon\n", &[]);
        assert!(
            matches!(&e, Error::ConfigFile { path: f, reason } if f == &p && reason.contains("\"soon\"")),
            "{e}"
        );
        // The flag's value is refused, the file is fine: a flag error.
        let e = build("ttl = 10\n", &["--ttl", "soon"]);
        assert!(
            matches!(&e, Error::Config(m) if m.contains("\"soon\"")),
            "{e}"
        );
        // Refused only together: the flag error, which names both options.
        let e = build(
            "allowed-groups-tag = ssh-groups\n",
            &["--allowed-group", "ops"],
        );
        assert!(matches!(&e, Error::Config(_)), "{e}");
    }

    #[test]
    fn config_file_syntax() {
        let p = Path::new("/etc/iak.conf");
        let s = parse_settings(
            p,
            "# comment\nttl = 10\nmax-stale = 0\nno-cache = yes\nregion = eu-west-1\n",
        )
        .expect("parse");
        assert_eq!(s.get("ttl"), Some("10"));
        assert_eq!(s.get("no-cache"), Some("yes"));
        let e = parse_settings(p, "tll = 10\n")
            .expect_err("typo")
            .to_string();
        assert!(e.contains("line 1") && e.contains("unknown option"), "{e}");
        assert!(parse_settings(p, "ttl 10\n").is_err());
    }
}
