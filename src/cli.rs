//! Command-line options as clap sees them. No logic and no imports from this crate: `fastargs` chooses the
//! parser, `config` turns the options into a checked `Config`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Prints the active SSH public keys of the AWS IAM user that USER maps to, as authorized_keys lines,
/// for sshd's AuthorizedKeysCommand. Answers from an on-disk cache while it is fresh; fails closed.
#[derive(Debug, Parser)]
#[command(
    name = "iam-authorized-keys",
    version = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("IAK_GIT_REV"), ")"),
    max_term_width = 100,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub opts: Opts,

    /// Login name from sshd (`%u`). Put `--` before it in sshd_config so no name is read as an option.
    #[arg(value_name = "USER", required = true)]
    pub user: Option<OsString>,

    /// Fingerprint of the key sshd is checking (`%f`); only logged, with whether it is served.
    #[arg(value_name = "FINGERPRINT")]
    pub offered_fingerprint: Option<OsString>,

    /// Type of the key sshd is checking (`%t`); only logged.
    #[arg(value_name = "KEYTYPE")]
    pub offered_type: Option<OsString>,
}

/// The lookup alone, without subcommands: what sshd runs on every login. clap builds (and propagates
/// global options into) every subcommand on each parse, which tripled the warm hit; sshd's invocation
/// never names a subcommand, so it is parsed with this smaller definition (see `fastargs::parse`).
#[derive(Debug, Parser)]
#[command(
    name = "iam-authorized-keys",
    version = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("IAK_GIT_REV"), ")"),
    max_term_width = 100
)]
pub struct LookupCli {
    #[command(flatten)]
    pub opts: Opts,

    #[arg(value_name = "USER")]
    pub user: OsString,

    #[arg(value_name = "FINGERPRINT")]
    pub offered_fingerprint: Option<OsString>,

    #[arg(value_name = "KEYTYPE")]
    pub offered_type: Option<OsString>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show how names map between Linux and IAM, in both directions, and whether each is usable.
    Map {
        /// Linux login names or IAM user names.
        #[arg(value_name = "NAME", required = true)]
        names: Vec<OsString>,
    },
    /// Check the installation and, for USER, every step of a lookup; each line OK/WARN/FAIL with the fix.
    /// Exits 0 only when nothing failed.
    Doctor(DoctorArgs),
    /// Inspect, purge or prefetch cached answers (with the same permission checks as lookups).
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Create local accounts for the members of IAM groups, prefetch their keys, manage sudo, and remove
    /// accounts (this tool created) only after repeated, complete answers without them. Run as root.
    SyncUsers(SyncArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    #[command(hide = true)]
    Man,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Also check everything about this login: account, mapping, policy, keys in IAM, the cache.
    #[arg(value_name = "USER")]
    pub user: Option<OsString>,

    /// sshd binary used for `sshd -T` [default: sshd in PATH, else /usr/sbin/sshd].
    #[arg(long, value_name = "PATH")]
    pub sshd: Option<PathBuf>,

    /// sshd configuration to check [default: /etc/ssh/sshd_config].
    #[arg(long, value_name = "PATH")]
    pub sshd_config: Option<PathBuf>,

    /// Read the sshd systemd unit (its -o options) under this root [default: /, when --sshd-config is
    /// not given]; for checking an image tree.
    #[arg(long, value_name = "DIR")]
    pub unit_root: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// IAM group whose members get accounts (repeatable) [default: the --allowed-group values].
    #[arg(long, value_name = "GROUP")]
    pub group: Vec<String>,

    /// Instance tag listing the IAM groups whose members get accounts (comma-separated) [default: the
    /// --allowed-groups-tag value].
    #[arg(long, value_name = "KEY")]
    pub group_tag: Option<String>,

    /// IAM group whose members (with an account from --group) get sudo (repeatable).
    #[arg(long, value_name = "GROUP")]
    pub sudo_group: Vec<String>,

    /// Instance tag listing the IAM groups whose members get sudo (comma-separated).
    #[arg(long, value_name = "KEY")]
    pub sudo_group_tag: Option<String>,

    /// Report what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Remove an account after this many consecutive complete syncs without it.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub remove_after: u32,

    /// How to remove: lock (expire the account, keep its home) or delete (userdel --remove).
    #[arg(long, value_name = "HOW", default_value = "lock", value_parser = ["lock", "delete"])]
    pub remove: String,

    /// Local group that marks accounts this tool created; only its members are ever changed.
    #[arg(long, value_name = "NAME", default_value = "iam-authorized-keys-users")]
    pub managed_group: String,

    /// Login shell of created accounts.
    #[arg(long, value_name = "PATH", default_value = "/bin/bash")]
    pub shell: String,

    /// Root-only state file (absence counters), written atomically.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/lib/iam-authorized-keys/sync-state.json"
    )]
    pub state: PathBuf,

    /// sudoers drop-in this tool owns; validated with visudo -cf before it is moved into place.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/etc/sudoers.d/iam-authorized-keys"
    )]
    pub sudoers_file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Show cached answers: age, freshness, key ids, source (all records without USER).
    Show {
        #[arg(value_name = "USER")]
        users: Vec<OsString>,
    },
    /// Remove cached answers for USER..., or every record with --all.
    Purge {
        #[arg(value_name = "USER", required_unless_present = "all")]
        users: Vec<OsString>,
        #[arg(long, conflicts_with = "users")]
        all: bool,
    },
    /// Fetch answers for USER... now unless fresh, so their first login is warm.
    Warm {
        #[arg(value_name = "USER", required = true)]
        users: Vec<OsString>,
    },
}

/// Options shared by the key lookup and the subcommands.
#[derive(Debug, Default, Args)]
pub struct Opts {
    /// Root-owned config file with `option = value` lines (same names as the long options); flags win.
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,

    /// How long a cached answer with keys is served without asking IAM (e.g. 300, 5m).
    #[arg(long, value_name = "DURATION", global = true)]
    pub ttl: Option<String>,

    /// How long a negative answer (no such IAM user, no active key, not in an allowed group) is cached.
    #[arg(long, value_name = "DURATION", global = true)]
    pub negative_ttl: Option<String>,

    /// When IAM fails, serve a cached answer up to this old; 0 fails closed at once.
    #[arg(long, value_name = "DURATION", global = true)]
    pub max_stale: Option<String>,

    /// Hard deadline for the whole lookup: credentials, IAM calls, waiting for another lookup.
    #[arg(long, value_name = "DURATION", global = true)]
    pub timeout: Option<String>,

    /// Cache directory; must be owned by the running user and not group/world-writable.
    #[arg(long, value_name = "DIR", global = true)]
    pub cache_dir: Option<PathBuf>,

    /// Neither read nor write the cache: ask IAM now.
    #[arg(long, global = true)]
    pub no_cache: bool,

    /// AWS region used to sign IAM requests; sets the partition (default: the instance's, from IMDS,
    /// when credentials come from the instance profile; else us-east-1).
    #[arg(long, value_name = "REGION", global = true)]
    pub region: Option<String>,

    /// IAM endpoint URL (also read from AWS_ENDPOINT_URL_IAM when set).
    #[arg(long, value_name = "URL", global = true)]
    pub endpoint_url: Option<String>,

    /// Forward proxy for IAM and STS requests (http:// or https://, optional user:password@); never used
    /// for IMDS. Also HTTPS_PROXY/ALL_PROXY when set (manual runs: sshd passes no environment).
    #[arg(long, value_name = "URL", global = true)]
    pub proxy: Option<String>,

    /// Hosts that bypass --proxy, comma-separated (also NO_PROXY when set).
    #[arg(long, value_name = "LIST", global = true)]
    pub no_proxy: Option<String>,

    /// STS endpoint URL for --assume-role (also read from AWS_ENDPOINT_URL_STS when set).
    #[arg(long, value_name = "URL", global = true)]
    pub sts_endpoint_url: Option<String>,

    /// Shared credentials file to read instead of the default locations (sshd gives us no HOME).
    #[arg(long, value_name = "PATH", global = true)]
    pub credentials_file: Option<PathBuf>,

    /// Profile to use from the credentials file.
    #[arg(long, value_name = "NAME", global = true)]
    pub profile: Option<String>,

    /// Read users from another account: assume this IAM role (arn:aws:iam::123456789012:role/Name) with
    /// the host's credentials. The role's credentials stay in memory.
    #[arg(long, value_name = "ARN", global = true)]
    pub assume_role: Option<String>,

    /// External ID the role's trust policy requires.
    #[arg(long, value_name = "ID", global = true)]
    pub external_id: Option<String>,

    /// PEM bundle of TLS trust roots [default: the first of /etc/ssl/certs/ca-certificates.crt,
    /// /etc/pki/tls/certs/ca-bundle.crt, /etc/ssl/cert.pem]; SSL_CERT_FILE/SSL_CERT_DIR win when set.
    #[arg(long, value_name = "PATH", global = true)]
    pub ca_bundle: Option<PathBuf>,

    /// Serve only IAM users in at least one of these IAM groups (repeatable).
    #[arg(long, value_name = "GROUP", global = true)]
    pub allowed_group: Vec<String>,

    /// Serve only IAM users in one of the IAM groups this instance tag lists (comma-separated), read
    /// from instance metadata (tags/instance/KEY) with each IAM answer and cached with it.
    #[arg(long, value_name = "KEY", global = true)]
    pub allowed_groups_tag: Option<String>,

    /// How upper case in IAM names appears in Linux names: fold (lower case, default) or preserve.
    #[arg(long, value_name = "POLICY", global = true)]
    pub name_case: Option<String>,

    /// Accounts with a UID below this are system accounts and never served [default: 1000].
    #[arg(long, value_name = "UID", global = true)]
    pub min_uid: Option<String>,

    /// Accounts with a UID above this (and UID 65534, nobody) are not regular users and never served
    /// [default: UID_MAX from /etc/login.defs, else 60000].
    #[arg(long, value_name = "UID", global = true)]
    pub max_uid: Option<String>,

    /// Serve this account even if it is root, below --min-uid or above --max-uid (repeatable).
    #[arg(long, value_name = "USER", global = true)]
    pub allow_user: Vec<String>,

    /// Never serve this account (repeatable); no IAM call is made for it.
    #[arg(long, value_name = "USER", global = true)]
    pub deny_user: Vec<String>,

    /// UID of the account, as sshd's `%U` gives it; without it the UID is read from /etc/passwd.
    #[arg(long, value_name = "UID", global = true)]
    pub uid: Option<String>,

    /// authorized_keys options put before every key, e.g. 'restrict,pty' or 'from="10.0.0.0/8"'.
    #[arg(long, value_name = "OPTIONS", global = true)]
    pub key_options: Option<String>,

    /// Add expiry-time to every key: the last moment this answer may be served (fetch time + max(ttl,
    /// max-stale)).
    #[arg(long, global = true)]
    pub key_expiry: bool,

    /// journald socket for audit events and warnings; `none` to skip journald.
    #[arg(long, value_name = "PATH", global = true)]
    pub journal_socket: Option<PathBuf>,

    /// syslog socket used when journald is absent; `none` to skip syslog.
    #[arg(long, value_name = "PATH", global = true)]
    pub syslog_socket: Option<PathBuf>,

    /// Also run this AuthorizedKeysCommand (the one in effect before ours, e.g. EC2 Instance Connect's
    /// or SSSD's) and print its keys after ours; checked as sshd checks a command.
    #[arg(long, value_name = "PATH", global = true)]
    pub chain: Option<PathBuf>,

    /// An argument of the --chain command (repeatable, in order); sshd expands %u, %f, ... in it.
    #[arg(long, value_name = "ARG", global = true, allow_hyphen_values = true)]
    pub chain_arg: Vec<String>,

    /// Explain each step on stderr (-vv for more).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Print the result as JSON (keys with ids, fingerprints, source, age) instead of authorized_keys lines.
    #[arg(long, global = true)]
    pub json: bool,
}
