//! Shared by the black-box test files: the IAM emulator (moto) driven through the SDK, a test case with
//! its own directory and counting fault proxy, and the binary run with an sshd-like environment.
//! `tests/run.sh` starts moto and sets IAK_MOTO_URL; without it these tests fail.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::proxy::Proxy;
use aws_sdk_iam::types::{EncodingType, StatusType};

pub const BIN: &str = env!("CARGO_BIN_EXE_iam-authorized-keys");
/// Nothing listens here: the emulator "stopped".
pub const DEAD: &str = "http://127.0.0.1:9";

pub fn moto_url() -> String {
    std::env::var("IAK_MOTO_URL")
        .expect("IAK_MOTO_URL is not set: run these tests through tests/run.sh, which starts moto")
}

pub fn moto_addr() -> SocketAddr {
    moto_url()
        .trim_start_matches("http://")
        .parse()
        .expect("IAK_MOTO_URL must be http://IP:PORT")
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Sets up IAM state in the emulator with the SDK itself.
pub struct Iam {
    pub rt: tokio::runtime::Runtime,
    pub client: aws_sdk_iam::Client,
}

impl Iam {
    pub fn new() -> Self {
        let conf = aws_sdk_iam::Config::builder()
            .behavior_version(aws_sdk_iam::config::BehaviorVersion::latest())
            .region(aws_sdk_iam::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_iam::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .endpoint_url(moto_url())
            .http_client(iam_authorized_keys::iam::http_client())
            .build();
        Iam {
            rt: runtime(),
            client: aws_sdk_iam::Client::from_conf(conf),
        }
    }

    pub fn user(&self, name: &str) {
        self.rt
            .block_on(self.client.create_user().user_name(name).send())
            .expect("create user");
    }

    /// Uploads `body`, returns the key id.
    pub fn upload(&self, user: &str, body: &str) -> String {
        let out = self
            .rt
            .block_on(
                self.client
                    .upload_ssh_public_key()
                    .user_name(user)
                    .ssh_public_key_body(body)
                    .send(),
            )
            .expect("upload");
        out.ssh_public_key()
            .expect("key")
            .ssh_public_key_id()
            .to_string()
    }

    pub fn deactivate(&self, user: &str, id: &str) {
        self.rt
            .block_on(
                self.client
                    .update_ssh_public_key()
                    .user_name(user)
                    .ssh_public_key_id(id)
                    .status(StatusType::Inactive)
                    .send(),
            )
            .expect("deactivate");
    }

    pub fn delete(&self, user: &str, id: &str) {
        self.rt
            .block_on(
                self.client
                    .delete_ssh_public_key()
                    .user_name(user)
                    .ssh_public_key_id(id)
                    .send(),
            )
            .expect("delete");
    }

    /// Creates the user unless it exists (names shared with the system, like `daemon`, cannot be unique).
    pub fn user_if_missing(&self, name: &str) {
        let r = self
            .rt
            .block_on(self.client.create_user().user_name(name).send());
        if let Err(e) = r {
            let exists = e
                .as_service_error()
                .is_some_and(|s| s.is_entity_already_exists_exception());
            assert!(exists, "create user {name}: {e:?}");
        }
    }

    /// The identity account's reader role, assumable by anyone (moto does not check trust anyway).
    pub fn role_if_missing(&self, name: &str) {
        let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}"#;
        let r = self.rt.block_on(
            self.client
                .create_role()
                .role_name(name)
                .assume_role_policy_document(trust)
                .send(),
        );
        if let Err(e) = r {
            let exists = e
                .as_service_error()
                .is_some_and(|s| s.is_entity_already_exists_exception());
            assert!(exists, "create role {name}: {e:?}");
        }
    }

    pub fn group(&self, name: &str, members: &[&str]) {
        self.rt
            .block_on(self.client.create_group().group_name(name).send())
            .expect("create group");
        for m in members {
            self.join(m, name);
        }
    }

    pub fn join(&self, user: &str, group: &str) {
        self.rt
            .block_on(
                self.client
                    .add_user_to_group()
                    .user_name(user)
                    .group_name(group)
                    .send(),
            )
            .expect("add to group");
    }

    #[allow(dead_code)]
    pub fn body(&self, user: &str, id: &str) -> String {
        self.rt
            .block_on(
                self.client
                    .get_ssh_public_key()
                    .user_name(user)
                    .ssh_public_key_id(id)
                    .encoding(EncodingType::Ssh)
                    .send(),
            )
            .expect("get")
            .ssh_public_key()
            .expect("key")
            .ssh_public_key_body()
            .to_string()
    }
}

/// A fresh key pair from ssh-keygen; returns the public line.
pub fn keygen(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    let st = Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-t", "ed25519", "-C", name, "-f"])
        .arg(&path)
        .status()
        .expect("ssh-keygen must be installed (tests/run.sh installs openssh-client)");
    assert!(st.success());
    std::fs::read_to_string(dir.join(format!("{name}.pub"))).expect("pub")
}

pub fn canonical(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

pub struct Case {
    pub dir: tempfile::TempDir,
    pub proxy: Proxy,
    pub iam: Iam,
}

impl Case {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        Case {
            dir,
            proxy: Proxy::start("127.0.0.1:0", moto_addr()).expect("proxy"),
            iam: Iam::new(),
        }
    }

    /// A new IAM user (named from `prefix`, unique per run) with one uploaded key; returns both.
    pub fn user_with_key(&self, prefix: &str) -> (String, String) {
        let u = unique(prefix);
        self.iam.user(&u);
        let k = keygen(self.dir.path(), &format!("{u}-k"));
        self.iam.upload(&u, &k);
        (u, k)
    }

    /// A new IAM user with `n` uploaded keys; returns the name and the keys as served (`canonical`), sorted.
    pub fn user_with_keys(&self, prefix: &str, n: usize) -> (String, Vec<String>) {
        let u = unique(prefix);
        self.iam.user(&u);
        let mut keys: Vec<String> = (0..n)
            .map(|i| {
                let k = keygen(self.dir.path(), &format!("{u}-k{i}"));
                self.iam.upload(&u, &k);
                canonical(&k)
            })
            .collect();
        keys.sort();
        (u, keys)
    }

    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    pub fn record(&self, user: &str) -> PathBuf {
        self.cache().join(format!("{user}.json"))
    }

    /// Runs the binary through this case's proxy with an sshd-like environment plus test credentials.
    pub fn run(&self, user: &str, extra: &[&str]) -> Output {
        self.run_at(&self.proxy.url(), user, extra)
    }

    pub fn run_at(&self, endpoint: &str, user: &str, extra: &[&str]) -> Output {
        command(endpoint, &self.cache(), user, extra)
            .output()
            .expect("run binary")
    }
}

/// Put in `extra` to leave out the default `--uid` (sshd's `%U`), so the binary reads /etc/passwd.
pub const FROM_PASSWD: &str = "<uid from /etc/passwd>";

/// Like sshd's drop-in, passes `--uid` for the account (a regular user's UID) unless `extra` sets one or
/// asks for [`FROM_PASSWD`].
pub fn command(endpoint: &str, cache: &Path, user: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    if !extra
        .iter()
        .any(|a| a.starts_with("--uid") || *a == FROM_PASSWD)
    {
        c.args(["--uid", "5000"]);
    }
    let extra: Vec<&str> = extra
        .iter()
        .copied()
        .filter(|a| *a != FROM_PASSWD)
        .collect();
    c.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", "/nonexistent")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .current_dir("/")
        .stdin(Stdio::null())
        .arg("--endpoint-url")
        .arg(endpoint)
        .arg("--cache-dir")
        .arg(cache)
        .args(&extra)
        .arg("--")
        .arg(user);
    c
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("utf8 stdout")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).expect("json on stdout")
}

/// Served lines as `<algorithm> <base64>`, after checking the comment names the user and a key id.
pub fn served(o: &Output, user: &str) -> Vec<String> {
    assert!(o.status.success(), "exit {:?}: {}", o.status, stderr(o));
    stdout(o)
        .lines()
        .map(|l| {
            let f: Vec<_> = l.split(' ').collect();
            assert_eq!(f.len(), 3, "line {l:?}");
            let comment = f[2].strip_prefix(&format!("iam:{user}:")).expect("comment");
            assert!(comment.starts_with("APKA"), "{l}");
            format!("{} {}", f[0], f[1])
        })
        .collect()
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id())
}

pub fn plant(path: &Path, user: &str, key: &str, mode: u32) {
    let rec = serde_json::json!({
        "version": 2, "iam_user": user, "fetched_at": now(),
        "outcome": "keys", "keys": [{"id": "APKAPLANTED", "key": canonical(key)}]
    });
    std::fs::write(path, serde_json::to_vec(&rec).expect("enc")).expect("plant");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}
