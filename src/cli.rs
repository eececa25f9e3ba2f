//! Command-line options as clap sees them. No logic: `config` turns these into a checked `Config`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

/// Prints the active SSH public keys of the AWS IAM user that USER maps to, as authorized_keys lines,
/// for sshd's AuthorizedKeysCommand. Answers from an on-disk cache while it is fresh; fails closed.
#[derive(Debug, Parser)]
#[command(name = "iam-authorized-keys", version, max_term_width = 100)]
pub struct Cli {
    /// Login name from sshd (`%u`). Put `--` before it in sshd_config so no name is read as an option.
    #[arg(value_name = "USER")]
    pub user: OsString,

    /// Root-owned config file with `option = value` lines (same names as the long options); flags win.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// How long a cached answer with keys is served without asking IAM (e.g. 300, 5m).
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,

    /// How long a negative answer (no such IAM user, no active key) is cached.
    #[arg(long, value_name = "DURATION")]
    pub negative_ttl: Option<String>,

    /// When IAM fails, serve a cached answer up to this old; 0 fails closed at once.
    #[arg(long, value_name = "DURATION")]
    pub max_stale: Option<String>,

    /// Hard deadline for the whole lookup: credentials, IAM calls, waiting for another lookup.
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,

    /// Cache directory; must be owned by the running user and not group/world-writable.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Neither read nor write the cache: ask IAM now.
    #[arg(long)]
    pub no_cache: bool,

    /// AWS region used to sign IAM requests (IAM is global; default us-east-1).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// IAM endpoint URL (also read from AWS_ENDPOINT_URL_IAM when set).
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,

    /// Shared credentials file to read instead of the default locations (sshd gives us no HOME).
    #[arg(long, value_name = "PATH")]
    pub credentials_file: Option<PathBuf>,

    /// Profile to use from the credentials file.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,

    /// PEM bundle of TLS trust roots [default: the first of /etc/ssl/certs/ca-certificates.crt,
    /// /etc/pki/tls/certs/ca-bundle.crt, /etc/ssl/cert.pem]; SSL_CERT_FILE/SSL_CERT_DIR win when set.
    #[arg(long, value_name = "PATH")]
    pub ca_bundle: Option<PathBuf>,

    /// Explain each step on stderr (-vv for more).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Print the result as JSON (keys with ids, fingerprints, source, age) instead of authorized_keys lines.
    #[arg(long)]
    pub json: bool,
}
