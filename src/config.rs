//! Options from the command line and the optional root-owned config file become one checked `Config`.
//! clap types stop here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::Cli;
use crate::error::Error;
use crate::fsutil;

pub const DEFAULT_CACHE_DIR: &str = "/var/cache/iam-authorized-keys";

/// Freshness rules for cached answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub max_stale: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub freshness: Freshness,
    pub timeout: Duration,
    /// `None`: run without a cache.
    pub cache_dir: Option<PathBuf>,
    pub region: String,
    pub endpoint_url: Option<String>,
    pub credentials_file: Option<PathBuf>,
    pub profile: Option<String>,
    /// TLS trust roots; `None`: the first well-known system bundle that exists.
    pub ca_bundle: Option<PathBuf>,
    pub verbose: u8,
    pub json: bool,
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

impl Config {
    /// Lays the command line over the config file, over the defaults, and checks the result.
    /// `env_endpoint` is AWS_ENDPOINT_URL_IAM, passed in so the environment is read in one place.
    pub fn build(cli: &Cli, env_endpoint: Option<String>) -> Result<Config, Error> {
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
        let region = pick(&cli.region, "region").unwrap_or_else(|| "us-east-1".to_string());
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
        let endpoint_url = match pick(&cli.endpoint_url, "endpoint-url").or(env_endpoint) {
            Some(u) if !u.is_empty() => Some(check_endpoint(&u)?),
            _ => None,
        };
        let credentials_file = pick_path(&cli.credentials_file, "credentials-file");
        if let Some(p) = &credentials_file {
            if !p.is_absolute() {
                return Err(Error::Config(format!(
                    "credentials file {} must be an absolute path",
                    p.display()
                )));
            }
            fsutil::check_trusted_file(p)
                .map_err(|e| Error::Config(format!("credentials file: {e}")))?;
        }
        let profile = pick(&cli.profile, "profile");
        let ca_bundle = pick_path(&cli.ca_bundle, "ca-bundle");
        Ok(Config {
            freshness,
            timeout,
            cache_dir,
            region,
            endpoint_url,
            credentials_file,
            profile,
            ca_bundle,
            verbose: cli.verbose,
            json: cli.json,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["iam-authorized-keys"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).expect("cli")
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
    fn defaults() {
        let c = Config::build(&cli(&["alice"]), None).expect("config");
        assert_eq!(c.freshness.ttl, Duration::from_secs(300));
        assert_eq!(c.freshness.negative_ttl, Duration::from_secs(60));
        assert_eq!(c.freshness.max_stale, Duration::from_secs(3600));
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.cache_dir.as_deref(), Some(Path::new(DEFAULT_CACHE_DIR)));
        assert_eq!(c.region, "us-east-1");
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
            Some("http://127.0.0.1:5000".into()),
        )
        .expect("config");
        assert!(c.cache_dir.is_none());
        assert_eq!(c.freshness.ttl, Duration::from_secs(10));
        assert_eq!(c.endpoint_url.as_deref(), Some("http://127.0.0.1:5000"));
        let c = Config::build(
            &cli(&["--endpoint-url", "https://iam.example", "alice"]),
            Some("http://127.0.0.1:5000".into()),
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
        ] {
            let e = Config::build(&cli(args), None).expect_err(want).to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn config_file_must_be_root_owned() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("conf");
        std::fs::write(&p, "ttl = 10\n").expect("write");
        let e = Config::build(&cli(&["--config", p.to_str().expect("utf8"), "a"]), None);
        if fsutil::euid() == 0 {
            assert_eq!(
                e.expect("root-owned").freshness.ttl,
                Duration::from_secs(10)
            );
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o666))
                .expect("chmod");
            let e = Config::build(&cli(&["--config", p.to_str().expect("utf8"), "a"]), None);
            assert!(e.expect_err("666").to_string().contains("world-writable"));
        } else {
            assert!(e
                .expect_err("not root")
                .to_string()
                .contains("owned by uid"));
        }
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
