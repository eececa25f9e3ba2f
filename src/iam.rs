//! The only module that talks to IAM: builds the client from our own configuration (never from sshd's
//! environment), lists a user's keys following pagination, and fetches the bodies it does not already
//! hold in parallel.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_credential_types::Credentials;
use aws_sdk_iam::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_iam::types::{EncodingType, StatusType};
use aws_sdk_iam::Client;

use crate::cache::{Outcome, ServedKey};
use crate::config::Config;
use crate::credentials;
use crate::error::{with_sources, Error};
use crate::keys;
use crate::username::IamUser;

/// Is this IAM's NoSuchEntity answer? (Each operation has its own error type.)
macro_rules! no_such_entity {
    ($e:expr) => {
        $e.as_service_error()
            .is_some_and(|s| s.is_no_such_entity_exception())
    };
}

/// A list loop that never ends (a marker that keeps coming back) is cut here; IAM allows 5 keys a user.
const MAX_PAGES: usize = 50;

/// What IAM answered for one user.
#[derive(Debug)]
pub struct Fetched {
    pub outcome: Outcome,
    /// Active keys that parsed, in the order IAM listed them.
    pub keys: Vec<ServedKey>,
    /// Active keys left out, with the reason (never the body).
    pub rejected: Vec<(String, String)>,
    /// IAM requests this fetch made (first attempts; SDK retries not counted).
    pub calls: u32,
    /// The user's IAM groups, when the group rule asked for them.
    pub groups: Option<Vec<String>>,
    /// The user name as IAM spells it in the key metadata (IAM finds users regardless of case), when it
    /// listed any key.
    pub iam_name: Option<String>,
}

/// Where distributions keep the system's PEM bundle of trust roots: Debian, Ubuntu, Flatcar and Alpine;
/// Amazon Linux, RHEL and Fedora; BSD-style and macOS.
const CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Largest CA bundle we read (the distributions' are 200-250 KiB).
const MAX_CA_BUNDLE: u64 = 4 << 20;

/// The trust roots for HTTPS. The operator's SSL_CERT_FILE/SSL_CERT_DIR win when set (manual runs);
/// otherwise one PEM bundle, `--ca-bundle` or the system's, read through [`fsutil::read_trusted`]
/// (root- or self-owned, not group/world-writable: a writable bundle lets anyone vouch for their own
/// endpoint). Only certificates that are valid trust anchors are kept, so a bad entry is skipped rather
/// than failing the client. Built per client, never through the process environment (sync-users
/// builds clients on several threads).
pub fn trust_roots(cfg: &Config) -> Result<aws_smithy_http_client::tls::TlsContext, Error> {
    use aws_smithy_http_client::tls::{TlsContext, TrustStore};
    use rustls_pki_types::pem::PemObject;
    let build = |store: TrustStore| {
        TlsContext::builder()
            .with_trust_store(store)
            .build()
            .map_err(|e| Error::Config(format!("TLS trust roots: {e}")))
    };
    if std::env::var_os("SSL_CERT_FILE").is_some() || std::env::var_os("SSL_CERT_DIR").is_some() {
        return build(TrustStore::default());
    }
    let path = match &cfg.ca_bundle {
        Some(p) => p.clone(),
        None => match CA_BUNDLES
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.is_file())
        {
            Some(p) => p,
            // No system bundle (a minimal image without ca-certificates): no trust root at all, so
            // HTTPS fails closed at the handshake; a plain-HTTP test endpoint still works.
            None => return build(TrustStore::empty().with_native_roots(false)),
        },
    };
    let pem = crate::fsutil::read_trusted(&path, MAX_CA_BUNDLE)
        .map_err(|e| Error::Config(format!("CA bundle: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    let mut kept = String::new();
    for der in rustls_pki_types::CertificateDer::pem_slice_iter(&pem).flatten() {
        if roots.add(der.clone()).is_ok() {
            kept.push_str("-----BEGIN CERTIFICATE-----\n");
            kept.push_str(&aws_smithy_types::base64::encode(der.as_ref()));
            kept.push_str("\n-----END CERTIFICATE-----\n");
        }
    }
    if roots.is_empty() {
        return Err(Error::Config(format!(
            "CA bundle {} holds no usable certificate",
            path.display()
        )));
    }
    build(
        TrustStore::empty()
            .with_native_roots(false)
            .with_pem_certificate(kept.into_bytes()),
    )
}

/// The HTTPS client for IAM, STS and IMDS with the system's native roots (tests against plain HTTP).
pub fn http_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    http_client_with(aws_smithy_http_client::tls::TlsContext::default())
}

/// The HTTPS client for IAM, STS and IMDS: rustls with ring, trusting `tls`'s roots.
pub fn http_client_with(
    tls: aws_smithy_http_client::tls::TlsContext,
) -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .tls_context(tls)
        .build_https()
}

/// Link-local metadata endpoints (IMDS over IPv4 and IPv6, the ECS credentials endpoint): never proxied.
const NEVER_PROXIED: &str = "169.254.169.254,fd00:ec2::254,169.254.170.2";

/// The same client, sending every request through `proxy` (CONNECT for HTTPS) except the hosts in its
/// no-proxy list: the HTTP client's own proxy support (hyper-util's matcher), not hand-written CONNECT.
pub fn proxied_http_client(
    tls: aws_smithy_http_client::tls::TlsContext,
    proxy: &crate::config::Proxy,
) -> Result<aws_smithy_runtime_api::client::http::SharedHttpClient, Error> {
    use aws_smithy_http_client::proxy::ProxyConfig;
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let mut pc =
        ProxyConfig::all(proxy.url.as_str()).map_err(|e| Error::Config(format!("--proxy: {e}")))?;
    if let Some((user, password)) = &proxy.basic_auth {
        pc = pc.with_basic_auth(user, password);
    }
    let bypass = match &proxy.no_proxy {
        Some(list) if !list.is_empty() => format!("{list},{NEVER_PROXIED}"),
        _ => NEVER_PROXIED.to_string(),
    };
    let pc = pc.no_proxy(bypass);
    Ok(
        aws_smithy_http_client::Builder::new().build_with_connector_fn(
            move |settings, components| {
                let mut b = aws_smithy_http_client::Connector::builder();
                b.set_connector_settings(settings.cloned());
                if let Some(c) = components {
                    b.set_sleep_impl(c.sleep_impl());
                }
                b.tls_provider(Provider::Rustls(CryptoMode::Ring))
                    .tls_context(tls.clone())
                    .proxy_config(pc.clone())
                    .build()
            },
        ),
    )
}

/// What [`connect`] built: the IAM client, and where its credentials and region came from.
pub struct Connected {
    pub client: Client,
    /// The chain step that gave the host's credentials (`Ec2InstanceMetadata`, `Profile`, ...).
    pub step: &'static str,
    /// What the credentials are, never the secret: `temporary access key ASIA...`.
    pub kind: String,
    pub region: String,
    pub region_source: &'static str,
    /// Each step on the way, for `-vv`.
    pub trace: Vec<String>,
    /// This lookup's IMDS client (instance tags).
    pub imds: aws_config::imds::Client,
}

/// Loads the SDK configuration from our own settings (never from sshd's environment): the host's
/// credentials and region are resolved first, under the deadline ([`credentials::resolve`]), so a
/// credentials failure is reported as one, and IAM is reported unreachable only when a request to IAM
/// failed. With --assume-role the host's credentials sign AssumeRole, here too, before any IAM call.
async fn sdk_config(
    cfg: &Config,
    budget: Duration,
) -> Result<
    (
        aws_config::SdkConfig,
        credentials::Found,
        Option<Credentials>,
    ),
    Error,
> {
    // End a little before the caller's hard deadline (`with_runtime`), so that a stage that runs out of
    // time reports what it was waiting for instead of losing the race to the generic deadline error.
    let margin = (budget / 50).clamp(Duration::from_millis(20), Duration::from_millis(100));
    let deadline = Instant::now() + budget.saturating_sub(margin);
    let tls = trust_roots(cfg)?;
    // IMDS is link-local: never through the proxy, whatever its no-proxy list says.
    let imds_http = http_client_with(tls.clone());
    let http = match &cfg.proxy {
        Some(p) => proxied_http_client(tls, p)?,
        None => imds_http.clone(),
    };
    let found = credentials::resolve(cfg, http.clone(), imds_http, deadline).await?;
    let left = deadline.saturating_duration_since(Instant::now());
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(left.min(Duration::from_secs(1)))
        .operation_timeout(left)
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(aws_config::Region::new(found.region.clone()))
        .credentials_provider(found.credentials.clone())
        .timeout_config(timeouts)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(50))
                .with_max_backoff(Duration::from_millis(500)),
        );
    if let Some(path) = &cfg.credentials_file {
        let files = aws_runtime::env_config::file::EnvConfigFiles::builder()
            .with_file(
                aws_runtime::env_config::file::EnvConfigFileKind::Credentials,
                path,
            )
            .build();
        loader = loader.profile_files(files);
    }
    if let Some(name) = &cfg.profile {
        loader = loader.profile_name(name);
    }
    let shared = loader.load().await;
    let mut role = None;
    if let Some(r) = &cfg.assume_role {
        use aws_credential_types::provider::ProvideCredentials;
        // The host's own credentials sign AssumeRole; the role's credentials live in this process only.
        let mut sts = shared.to_builder();
        if let Some(url) = &cfg.sts_endpoint_url {
            sts.set_endpoint_url(Some(url.clone()));
        }
        let mut provider = aws_config::sts::AssumeRoleProvider::builder(&r.arn)
            .session_name("iam-authorized-keys")
            .configure(&sts.build());
        if let Some(id) = &r.external_id {
            provider = provider.external_id(id);
        }
        let provider = provider.build().await;
        role = Some(provider.provide_credentials().await.map_err(|e| {
            let text = credentials::chain_text(&e);
            Error::Credentials {
                cause: format!(
                    "could not assume role {}: {}",
                    r.arn,
                    crate::username::sanitize(&text)
                ),
                fix: "allow sts:AssumeRole on it to the host's role (examples/iam/host-assume-role.json) and check its trust policy (examples/iam/reader-trust-policy.json)".into(),
                detail: format!("{}\nAssumeRole: {text}", found.trace.join("\n")),
            }
        })?);
    }
    Ok((shared, found, role))
}

/// Largest IAM response body we read. The largest real answer (5 keys of at most 16 KiB each, one page
/// of groups) is a few tens of KiB; anything bigger is an attack or a broken endpoint and fails closed
/// instead of being buffered whole.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Refuses a response whose Content-Length is over [`MAX_RESPONSE_BYTES`], and cuts off a body that grows
/// past it while it is read (chunked or lying about its length).
#[derive(Debug)]
pub struct BoundedResponses;

impl aws_smithy_runtime_api::client::interceptors::Intercept for BoundedResponses {
    fn name(&self) -> &'static str {
        "BoundedResponses"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextMut<'_>,
        _: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let response = context.response_mut();
        let declared = response
            .headers()
            .get("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(n) = declared.filter(|n| *n > MAX_RESPONSE_BYTES as u64) {
            return Err(format!(
                "the response is {n} bytes, more than the {MAX_RESPONSE_BYTES} any IAM answer needs"
            )
            .into());
        }
        let body = std::mem::replace(
            response.body_mut(),
            aws_smithy_types::body::SdkBody::taken(),
        );
        *response.body_mut() = body.map(|b| {
            aws_smithy_types::body::SdkBody::from_body_1_x(http_body_util::Limited::new(
                b,
                MAX_RESPONSE_BYTES,
            ))
        });
        Ok(())
    }
}

/// Builds the IAM client (see [`sdk_config`]).
pub async fn client(cfg: &Config, budget: Duration) -> Result<Client, Error> {
    Ok(connect(cfg, budget).await?.client)
}

/// Builds the IAM client, and says where its credentials and region came from.
pub async fn connect(cfg: &Config, budget: Duration) -> Result<Connected, Error> {
    let (shared, found, role) = sdk_config(cfg, budget).await?;
    let mut builder = aws_sdk_iam::config::Builder::from(&shared).interceptor(BoundedResponses);
    if let Some(p) = role {
        builder = builder.credentials_provider(p);
    }
    if let Some(url) = &cfg.endpoint_url {
        builder = builder.endpoint_url(url);
    }
    let id = found.credentials.access_key_id();
    let kind = match id.get(..4) {
        Some("ASIA") => "temporary",
        Some("AKIA") => "long-term",
        _ => "unrecognised",
    };
    Ok(Connected {
        client: Client::from_conf(builder.build()),
        step: found.step,
        kind: format!("{kind} access key {}...", id.get(..4).unwrap_or(id)),
        region: found.region,
        region_source: found.region_source,
        trace: found.trace,
        imds: found.imds,
    })
}

/// For `doctor`: IAM answers a list call for a user that does not exist (NoSuchEntity proves reachability
/// and the ListSSHPublicKeys permission; AccessDenied comes first when the permission is missing).
pub async fn probe(client: &Client) -> Result<(), String> {
    match client
        .list_ssh_public_keys()
        .user_name("iam-authorized-keys-doctor-probe")
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if no_such_entity!(e) => Ok(()),
        Err(e) => Err(describe(&e)),
    }
}

/// Describes an SDK error in one line: the service's code and message, or the transport failure.
fn describe<E: ProvideErrorMetadata + std::error::Error + 'static>(err: &SdkError<E>) -> String {
    match err {
        SdkError::ServiceError(e) => {
            let inner = e.err();
            format!(
                "{} (HTTP {}): {}",
                inner.code().unwrap_or("unknown error"),
                e.raw().status().as_u16(),
                crate::username::sanitize(inner.message().unwrap_or("no message"))
            )
        }
        SdkError::TimeoutError(_) => "request timed out".to_string(),
        SdkError::DispatchFailure(e) => with_sources(
            "could not reach IAM".to_string(),
            e.as_connector_error()
                .map(|c| c as &(dyn std::error::Error + 'static)),
            str::to_string,
        ),
        SdkError::ResponseError(_) => with_sources(
            "IAM's response could not be read".to_string(),
            std::error::Error::source(err),
            crate::username::sanitize,
        ),
        other => with_sources(
            other.to_string(),
            std::error::Error::source(other),
            str::to_string,
        ),
    }
}

/// One listed key: id, upload date, the user name as IAM spells it, and whether it is active.
type ListedKey = (String, Option<String>, String, bool);

/// One page of a paginated IAM list: its items, and whether (and where) it continues.
struct Page<T> {
    items: Vec<T>,
    truncated: bool,
    marker: Option<String>,
}

/// Follows Marker/IsTruncated until the last page, at most [`MAX_PAGES`]. `fetch(marker)` sends one
/// request and gives `Ok(None)` for NoSuchEntity, `Err` with the described SDK error otherwise (reported
/// as `{what}: {error}`). Each request is counted in `calls`.
async fn all_pages<T, F, Fut>(
    what: &str,
    calls: &mut u32,
    mut fetch: F,
) -> Result<Option<Vec<T>>, Error>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Option<Page<T>>, String>>,
{
    let mut out = Vec::new();
    let mut marker: Option<String> = None;
    for _ in 0..MAX_PAGES {
        *calls += 1;
        let Some(page) = fetch(marker.take())
            .await
            .map_err(|e| Error::Iam(format!("{what}: {e}")))?
        else {
            return Ok(None);
        };
        out.extend(page.items);
        match next_marker(page.truncated, page.marker.as_deref()) {
            Ok(Some(m)) => marker = Some(m),
            Ok(None) => return Ok(Some(out)),
            Err(why) => return Err(Error::Iam(format!("{what} {why}"))),
        }
    }
    Err(Error::Iam(format!(
        "{what} did not finish within {MAX_PAGES} pages"
    )))
}

/// Every page of ListSSHPublicKeys: the active keys' (id, upload date), or `None` for NoSuchEntity.
async fn list_keys(
    client: &Client,
    user: &IamUser,
    calls: &mut u32,
) -> Result<Option<Vec<ListedKey>>, Error> {
    let what = format!("ListSSHPublicKeys for {user}");
    all_pages(&what, calls, |marker| async move {
        match client
            .list_ssh_public_keys()
            .user_name(user.as_str())
            .set_marker(marker)
            .send()
            .await
        {
            Ok(p) => Ok(Some(Page {
                items: p
                    .ssh_public_keys()
                    .iter()
                    .map(|m| {
                        (
                            m.ssh_public_key_id().to_string(),
                            Some(m.upload_date().to_string()),
                            m.user_name().to_string(),
                            m.status() == &StatusType::Active,
                        )
                    })
                    .collect(),
                truncated: p.is_truncated(),
                marker: p.marker().map(str::to_string),
            })),
            Err(e) if no_such_entity!(e) => Ok(None),
            Err(e) => Err(describe(&e)),
        }
    })
    .await
}

/// Every page of GetGroup: the member user names, or `None` when the group does not exist.
pub async fn group_members(client: &Client, group: &str) -> Result<Option<Vec<String>>, Error> {
    let what = format!("GetGroup {group}");
    all_pages(&what, &mut 0, |marker| async move {
        match client
            .get_group()
            .group_name(group)
            .set_marker(marker)
            .send()
            .await
        {
            Ok(p) => Ok(Some(Page {
                items: p
                    .users()
                    .iter()
                    .map(|u| u.user_name().to_string())
                    .collect(),
                truncated: p.is_truncated(),
                marker: p.marker().map(str::to_string),
            })),
            Err(e) if no_such_entity!(e) => Ok(None),
            Err(e) => Err(describe(&e)),
        }
    })
    .await
}

/// Every page of ListGroupsForUser: the user's group names, or `None` for NoSuchEntity.
async fn list_groups(
    client: &Client,
    user: &IamUser,
    calls: &mut u32,
) -> Result<Option<Vec<String>>, Error> {
    let what = format!("ListGroupsForUser for {user}");
    all_pages(&what, calls, |marker| async move {
        match client
            .list_groups_for_user()
            .user_name(user.as_str())
            .set_marker(marker)
            .send()
            .await
        {
            Ok(p) => Ok(Some(Page {
                items: p
                    .groups()
                    .iter()
                    .map(|g| g.group_name())
                    .filter(|g| crate::cache::valid_group(g))
                    .map(str::to_string)
                    .collect(),
                truncated: p.is_truncated(),
                marker: p.marker().map(str::to_string),
            })),
            Err(e) if no_such_entity!(e) => Ok(None),
            Err(e) => Err(describe(&e)),
        }
    })
    .await
}

fn next_marker(truncated: bool, marker: Option<&str>) -> Result<Option<String>, &'static str> {
    match (truncated, marker) {
        (true, Some(m)) if !m.is_empty() => Ok(Some(m.to_string())),
        (true, _) => Err("said the list is truncated but gave no marker"),
        (false, _) => Ok(None),
    }
}

/// Lists `user`'s keys and, when `allowed_groups` is not empty, the user's groups at the same time (so the
/// group rule costs no extra round trip); then fetches, in parallel, the bodies of active keys not in
/// `known` (bodies never change for a key id, so an unchanged refresh costs one list call). A user in none
/// of the allowed groups gets no body fetched.
pub async fn fetch(
    client: &Client,
    user: &IamUser,
    known: &HashMap<String, ServedKey>,
    allowed_groups: &[String],
) -> Result<Fetched, Error> {
    let (mut key_calls, mut group_calls) = (0u32, 0u32);
    let (listed, groups) = tokio::join!(list_keys(client, user, &mut key_calls), async {
        if allowed_groups.is_empty() {
            Ok(Some(Vec::new()))
        } else {
            list_groups(client, user, &mut group_calls).await
        }
    });
    let mut calls = key_calls + group_calls;
    let (listed, groups) = (listed?, groups?);
    let iam_name = listed
        .iter()
        .flatten()
        .map(|(_, _, name, _)| name.clone())
        .find(|n| !n.is_empty());
    let answer = |outcome, groups, calls| Fetched {
        outcome,
        keys: Vec::new(),
        rejected: Vec::new(),
        calls,
        groups,
        iam_name: iam_name.clone(),
    };
    let (Some(listed), Some(groups)) = (listed, groups) else {
        return Ok(answer(Outcome::NoSuchUser, None, calls));
    };
    let active = listed
        .into_iter()
        .filter(|(_, _, _, active)| *active)
        .map(|(id, uploaded, _, _)| (id, uploaded));
    let groups = (!allowed_groups.is_empty()).then_some(groups);
    if let Some(g) = &groups {
        if let Some(crate::policy::Verdict::Refused(_)) =
            crate::policy::check_groups(allowed_groups, g)
        {
            return Ok(answer(Outcome::NotInAllowedGroup, groups, calls));
        }
    }

    let mut rejected = Vec::new();
    let mut wanted = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (id, uploaded) in active {
        if !seen.insert(id.clone()) {
            continue;
        }
        if !keys::valid_key_id(&id) {
            rejected.push((crate::username::sanitize(&id), "invalid key id".to_string()));
            continue;
        }
        wanted.push((id, uploaded));
    }

    let mut tasks = tokio::task::JoinSet::new();
    for (idx, (id, _)) in wanted.iter().enumerate() {
        if known.contains_key(id) {
            continue;
        }
        calls += 1;
        let client = client.clone();
        let user = user.as_str().to_string();
        let id = id.clone();
        tasks.spawn(async move {
            let r = client
                .get_ssh_public_key()
                .user_name(user)
                .ssh_public_key_id(&id)
                .encoding(EncodingType::Ssh)
                .send()
                .await;
            (idx, id, r)
        });
    }
    let mut bodies: HashMap<usize, Result<keys::CanonicalKey, String>> = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (idx, id, result) =
            joined.map_err(|e| Error::Iam(format!("key fetch task failed: {e}")))?;
        match result {
            Ok(out) => {
                let Some(k) = out.ssh_public_key() else {
                    bodies.insert(idx, Err("GetSSHPublicKey returned no key".into()));
                    continue;
                };
                if k.status() != &StatusType::Active {
                    bodies.insert(idx, Err("deactivated while we fetched it".into()));
                    continue;
                }
                bodies.insert(
                    idx,
                    keys::canonicalize(k.ssh_public_key_body()).map_err(|e| e.to_string()),
                );
            }
            Err(e) if no_such_entity!(e) => {
                bodies.insert(idx, Err("deleted while we fetched it".into()));
            }
            Err(e) => {
                return Err(Error::Iam(format!(
                    "GetSSHPublicKey {id} for {user}: {}",
                    describe(&e)
                )))
            }
        }
    }

    let mut served: Vec<ServedKey> = Vec::new();
    for (idx, (id, uploaded)) in wanted.into_iter().enumerate() {
        let key = match known.get(&id) {
            Some(k) => Ok(k.key.clone()),
            None => bodies
                .remove(&idx)
                .unwrap_or_else(|| Err("no answer".into())),
        };
        match key {
            Ok(key) if served.iter().any(|s| s.key == key) => {
                rejected.push((id, "duplicate of another key".into()))
            }
            Ok(key) => served.push(ServedKey { id, key, uploaded }),
            Err(why) => rejected.push((id, why)),
        }
    }
    Ok(Fetched {
        outcome: Outcome::Keys,
        keys: served,
        rejected,
        calls,
        groups,
        iam_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_iam::operation::get_ssh_public_key::{GetSSHPublicKeyError, GetSshPublicKeyOutput};
    use aws_sdk_iam::operation::list_ssh_public_keys::{
        ListSSHPublicKeysError, ListSshPublicKeysOutput,
    };
    use aws_sdk_iam::types::error::NoSuchEntityException;
    use aws_sdk_iam::types::{SshPublicKey, SshPublicKeyMetadata};
    use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};

    const ED: &str = include_str!("../tests/fixtures/ed25519.pub");
    const ED_B: &str = include_str!("../tests/fixtures/ed25519b.pub");
    const RSA: &str = include_str!("../tests/fixtures/rsa3072.pub");

    fn meta(id: &str, status: StatusType) -> SshPublicKeyMetadata {
        SshPublicKeyMetadata::builder()
            .user_name("alice")
            .ssh_public_key_id(id)
            .status(status)
            .upload_date(aws_sdk_iam::primitives::DateTime::from_secs(1_700_000_000))
            .build()
            .expect("metadata")
    }

    fn list(items: Vec<SshPublicKeyMetadata>) -> Rule {
        mock!(Client::list_ssh_public_keys).then_output(move || {
            ListSshPublicKeysOutput::builder()
                .set_ssh_public_keys(Some(items.clone()))
                .is_truncated(false)
                .build()
        })
    }

    fn get(id: &'static str, body: &'static str) -> Rule {
        mock!(Client::get_ssh_public_key)
            .match_requests(move |r| {
                r.ssh_public_key_id() == Some(id) && r.encoding() == Some(&EncodingType::Ssh)
            })
            .then_output(move || {
                GetSshPublicKeyOutput::builder()
                    .ssh_public_key(
                        SshPublicKey::builder()
                            .user_name("alice")
                            .ssh_public_key_id(id)
                            .fingerprint("ignored")
                            .ssh_public_key_body(body)
                            .status(StatusType::Active)
                            .build()
                            .expect("key"),
                    )
                    .build()
            })
    }

    fn alice() -> IamUser {
        IamUser::parse("alice").expect("name")
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    const THROTTLE: &str = "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>\
        <Message>Rate exceeded</Message></Error><RequestId>1</RequestId></ErrorResponse>";

    #[test]
    fn keeps_active_keys_in_list_order_and_fetches_bodies() {
        let l = list(vec![
            meta("APKAB", StatusType::Active),
            meta("APKAI", StatusType::Inactive),
            meta("APKAA", StatusType::Active),
        ]);
        let (ga, gb) = (get("APKAA", ED), get("APKAB", RSA));
        let c = mock_client!(aws_sdk_iam, RuleMode::MatchAny, [&l, &ga, &gb]);
        let f = run(fetch(&c, &alice(), &HashMap::new(), &[])).expect("fetch");
        assert_eq!(f.outcome, Outcome::Keys);
        let ids: Vec<_> = f.keys.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(ids, ["APKAB", "APKAA"]);
        assert_eq!(f.calls, 3);
        assert_eq!((ga.num_calls(), gb.num_calls()), (1, 1));
    }

    #[test]
    fn reports_the_user_name_as_iam_spells_it() {
        // IAM finds users regardless of case: asked for alice, it answers with Alice's metadata. The
        // spelling is reported so --name-case preserve can refuse the other-cased login (finding 11).
        let spelled = SshPublicKeyMetadata::builder()
            .user_name("Alice")
            .ssh_public_key_id("APKAI")
            .status(StatusType::Inactive)
            .upload_date(aws_sdk_iam::primitives::DateTime::from_secs(1_700_000_000))
            .build()
            .expect("metadata");
        let l = list(vec![spelled]);
        let c = mock_client!(aws_sdk_iam, RuleMode::MatchAny, [&l]);
        let f = run(fetch(&c, &alice(), &HashMap::new(), &[])).expect("fetch");
        assert_eq!(
            f.iam_name.as_deref(),
            Some("Alice"),
            "inactive keys spell it too"
        );
        assert!(f.keys.is_empty());
        let none = list(Vec::new());
        let c = mock_client!(aws_sdk_iam, RuleMode::MatchAny, [&none]);
        let f = run(fetch(&c, &alice(), &HashMap::new(), &[])).expect("fetch");
        assert_eq!(f.iam_name, None);
    }

    #[test]
    fn unchanged_ids_cost_one_call() {
        let l = list(vec![meta("APKAA", StatusType::Active)]);
        let ga = get("APKAA", ED);
        let c = mock_client!(aws_sdk_iam, RuleMode::MatchAny, [&l, &ga]);
        let first = run(fetch(&c, &alice(), &HashMap::new(), &[])).expect("first");
        let known: HashMap<_, _> = first.keys.into_iter().map(|k| (k.id.clone(), k)).collect();
        let second = run(fetch(&c, &alice(), &known, &[])).expect("second");
        assert_eq!(second.calls, 1);
        assert_eq!(ga.num_calls(), 1);
        assert_eq!(second.keys.len(), 1);
    }

    #[test]
    fn follows_pagination_markers() {
        let p1 = mock!(Client::list_ssh_public_keys)
            .match_requests(|r| r.marker().is_none())
            .then_output(|| {
                ListSshPublicKeysOutput::builder()
                    .ssh_public_keys(meta("APKAA", StatusType::Active))
                    .is_truncated(true)
                    .marker("m1")
                    .build()
            });
        let p2 = mock!(Client::list_ssh_public_keys)
            .match_requests(|r| r.marker() == Some("m1"))
            .then_output(|| {
                ListSshPublicKeysOutput::builder()
                    .ssh_public_keys(meta("APKAB", StatusType::Active))
                    .is_truncated(false)
                    .build()
            });
        let (ga, gb) = (get("APKAA", ED), get("APKAB", ED_B));
        let c = mock_client!(aws_sdk_iam, RuleMode::MatchAny, [&p1, &p2, &ga, &gb]);
        let f = run(fetch(&c, &alice(), &HashMap::new(), &[])).expect("fetch");
        assert_eq!(f.keys.len(), 2);
        assert_eq!((p1.num_calls(), p2.num_calls()), (1, 1));
    }

    #[test]
    fn truncated_without_marker_is_an_error() {
        let p = mock!(Client::list_ssh_public_keys).then_output(|| {
            ListSshPublicKeysOutput::builder()
                .is_truncated(true)
                .build()
        });
        let c = mock_client!(aws_sdk_iam, RuleMode::MatchAny, [&p]);
        let e = run(fetch(&c, &alice(), &HashMap::new(), &[])).expect_err("no marker");
        assert!(e.to_string().contains("no marker"), "{e}");
    }

    #[test]
    fn endless_markers_are_cut() {
        let p = mock!(Client::list_ssh_public_keys).then_output(|| {
            ListSshPublicKeysOutput::builder()
                .is_truncated(true)
                .marker("again")
                .build()
        });
        let c = mock_client!(aws_sdk_iam, RuleMode::MatchAny, [&p]);
        let e = run(fetch(&c, &alice(), &HashMap::new(), &[])).expect_err("endless");
        assert!(e.to_string().contains("pages"), "{e}");
        assert_eq!(p.num_calls(), MAX_PAGES);
    }

    #[test]
    fn no_such_user_is_an_answer() {
        let p = mock!(Client::list_ssh_public_keys).then_error(|| {
            ListSSHPublicKeysError::NoSuchEntityException(
                NoSuchEntityException::builder().message("no user").build(),
            )
        });
        let c = mock_client!(aws_sdk_iam, RuleMode::MatchAny, [&p]);
        let f = run(fetch(&c, &alice(), &HashMap::new(), &[])).expect("answer");
        assert_eq!(f.outcome, Outcome::NoSuchUser);
        assert!(f.keys.is_empty());
    }

    #[test]
    fn throttling_and_server_errors_fail() {
        for (status, body, want) in [
            (400, THROTTLE, "Throttling"),
            (500, "<oops", "500"),
            (503, "", "503"),
        ] {
            let p = mock!(Client::list_ssh_public_keys)
                .sequence()
                .http_status(status, Some(body.to_string()))
                .repeatedly()
                .build();
            let c = mock_client!(aws_sdk_iam, RuleMode::MatchAny, [&p]);
            let e = run(fetch(&c, &alice(), &HashMap::new(), &[])).expect_err("error");
            assert!(matches!(e, Error::Iam(_)));
            assert!(
                e.to_string().contains(want) || e.to_string().contains("unknown"),
                "{status}: {e}"
            );
        }
    }

    #[test]
    fn a_failed_body_fetch_fails_the_lookup() {
        let l = list(vec![
            meta("APKAA", StatusType::Active),
            meta("APKAB", StatusType::Active),
        ]);
        let ga = get("APKAA", ED);
        let gb = mock!(Client::get_ssh_public_key)
            .match_requests(|r| r.ssh_public_key_id() == Some("APKAB"))
            .sequence()
            .http_status(400, Some(THROTTLE.to_string()))
            .repeatedly()
            .build();
        let c = mock_client!(aws_sdk_iam, RuleMode::MatchAny, [&l, &ga, &gb]);
        let e = run(fetch(&c, &alice(), &HashMap::new(), &[])).expect_err("partial");
        assert!(e.to_string().contains("APKAB"), "{e}");
    }

    #[test]
    fn malformed_bodies_and_vanished_keys_are_left_out() {
        let l = list(vec![
            meta("APKAA", StatusType::Active),
            meta("APKAB", StatusType::Active),
            meta("APKAC", StatusType::Active),
            meta("APKAD", StatusType::Active),
            meta("APKAE", StatusType::Active),
            meta("bad/id", StatusType::Active),
        ]);
        let ga = get("APKAA", ED);
        let gb = get("APKAB", "command=\"/bin/sh\" ssh-ed25519 AAAA");
        let gc = get("APKAC", "ssh-ed25519 AAAAC3Nz\nssh-rsa AAAA");
        let gd = mock!(Client::get_ssh_public_key)
            .match_requests(|r| r.ssh_public_key_id() == Some("APKAD"))
            .then_error(|| {
                GetSSHPublicKeyError::NoSuchEntityException(
                    NoSuchEntityException::builder().build(),
                )
            });
        let ge = get("APKAE", ED);
        let c = mock_client!(
            aws_sdk_iam,
            RuleMode::MatchAny,
            [&l, &ga, &gb, &gc, &gd, &ge]
        );
        let f = run(fetch(&c, &alice(), &HashMap::new(), &[])).expect("fetch");
        let ids: Vec<_> = f.keys.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(ids, ["APKAA"]);
        let why: Vec<_> = f
            .rejected
            .iter()
            .map(|(i, w)| format!("{i}: {w}"))
            .collect();
        assert_eq!(why.len(), 5, "{why:?}");
        assert!(why.iter().any(|w| w.starts_with("APKAB: key body is not")));
        assert!(why
            .iter()
            .any(|w| w.starts_with("APKAC: key body contains a control")));
        assert!(why.iter().any(|w| w.starts_with("APKAD: deleted")));
        assert!(why.iter().any(|w| w.starts_with("APKAE: duplicate")));
        assert!(why.iter().any(|w| w.starts_with("bad/id: invalid key id")));
    }

    #[test]
    fn a_body_growing_past_the_cap_without_a_length_fails_closed() {
        // Finding 10 of the hardening review: responses were read whole, whatever their size. The
        // Content-Length case is tested against the real binary (tests/hardening.rs); this is the body
        // that declares no length (chunked) and is cut off while read.
        use aws_smithy_runtime_api::http::{Response, StatusCode};
        use aws_smithy_types::body::SdkBody;
        let xml = |pad: usize| {
            format!(
                "<ListSSHPublicKeysResponse>{}<ListSSHPublicKeysResult><SSHPublicKeys></SSHPublicKeys><IsTruncated>false</IsTruncated></ListSSHPublicKeysResult></ListSSHPublicKeysResponse>",
                " ".repeat(pad)
            )
        };
        for (pad, ok) in [(1024, true), (MAX_RESPONSE_BYTES + 1, false)] {
            let body = xml(pad);
            let rule = mock!(Client::list_ssh_public_keys).then_http_response(move || {
                Response::new(
                    StatusCode::try_from(200).expect("200"),
                    SdkBody::from(body.clone()),
                )
            });
            let c = mock_client!(aws_sdk_iam, RuleMode::MatchAny, [&rule], |b| b
                .interceptor(BoundedResponses));
            let r = run(fetch(&c, &alice(), &HashMap::new(), &[]));
            match (ok, r) {
                (true, Ok(f)) => assert!(f.keys.is_empty()),
                (false, Err(e)) => assert!(e.to_string().contains("length limit"), "{e}"),
                (ok, r) => panic!("pad {pad}: expected ok={ok}, got {r:?}"),
            }
        }
    }

    #[test]
    fn group_members_follow_pagination_and_missing_group_is_none() {
        use aws_sdk_iam::operation::get_group::{GetGroupError, GetGroupOutput};
        use aws_sdk_iam::types::{Group, User};
        let user = |n: &str| {
            User::builder()
                .user_name(n)
                .path("/")
                .user_id(format!("ID{n}"))
                .arn(format!("arn:aws:iam::123456789012:user/{n}"))
                .create_date(aws_sdk_iam::primitives::DateTime::from_secs(0))
                .build()
                .expect("user")
        };
        let group = || {
            Group::builder()
                .group_name("g")
                .path("/")
                .group_id("G")
                .arn("arn:aws:iam::123456789012:group/g")
                .create_date(aws_sdk_iam::primitives::DateTime::from_secs(0))
                .build()
                .expect("group")
        };
        let p1 = mock!(Client::get_group)
            .match_requests(|r| r.group_name() == Some("g") && r.marker().is_none())
            .then_output(move || {
                GetGroupOutput::builder()
                    .group(group())
                    .users(user("a"))
                    .users(user("b"))
                    .is_truncated(true)
                    .marker("m")
                    .build()
                    .expect("page 1")
            });
        let p2 = mock!(Client::get_group)
            .match_requests(|r| r.marker() == Some("m"))
            .then_output(move || {
                GetGroupOutput::builder()
                    .group(group())
                    .users(user("c"))
                    .is_truncated(false)
                    .build()
                    .expect("page 2")
            });
        let missing = mock!(Client::get_group)
            .match_requests(|r| r.group_name() == Some("nope"))
            .then_error(|| {
                GetGroupError::NoSuchEntityException(NoSuchEntityException::builder().build())
            });
        let c = mock_client!(aws_sdk_iam, RuleMode::MatchAny, [&missing, &p1, &p2]);
        let got = run(group_members(&c, "g")).expect("members");
        assert_eq!(got, Some(vec!["a".into(), "b".into(), "c".into()]));
        assert_eq!(run(group_members(&c, "nope")).expect("answer"), None);
        let t = mock!(Client::get_group)
            .sequence()
            .http_status(400, Some(THROTTLE.to_string()))
            .repeatedly()
            .build();
        let c = mock_client!(aws_sdk_iam, RuleMode::MatchAny, [&t]);
        assert!(
            run(group_members(&c, "g")).is_err(),
            "throttling is an error, never 'no members'"
        );
    }
}
