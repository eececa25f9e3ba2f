//! Where the host's AWS credentials and region come from, under the lookup's deadline: aws-config's
//! provider chain (environment, profile file, web identity, ECS, IMDSv2) walked here, with an IMDS client
//! whose timeouts and retries come from the remaining budget, and every failure turned into one line that
//! names the cause and its fix. Only the cold path (and doctor, sync-users) gets here.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::imds;
use aws_config::provider_config::ProviderConfig;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;

use crate::config::Config;
use crate::error::Error;

/// The chain's steps, in aws-config's order (`DefaultCredentialsChain`), by the names it gives them.
pub const IMDS_STEP: &str = "Ec2InstanceMetadata";
pub const ENVIRONMENT_STEP: &str = "Environment";
pub const PROFILE_STEP: &str = "Profile";

/// IMDS attempts per request; the operation timeout (the remaining budget) usually ends them first.
const IMDS_MAX_ATTEMPTS: u32 = 10;

/// The longest wait for one TCP connection to IMDS. A lost SYN is retransmitted by the kernel after 1 s;
/// a new attempt (a new SYN at once) is as good, and a blackholed IMDS is retried until the deadline.
const IMDS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// At most this share of what is left goes to the IMDS region lookup, so IAM keeps time to answer.
const REGION_SHARE: u32 = 2;

/// Credentials that were found, and which step of the chain gave them.
#[derive(Debug, Clone)]
pub struct Found {
    pub credentials: Credentials,
    /// The chain step (`Environment`, `Profile`, `WebIdentityToken`, `EcsContainer`, `Ec2InstanceMetadata`).
    pub step: &'static str,
    /// The region that signs IAM/STS requests, and where it came from.
    pub region: String,
    pub region_source: &'static str,
    /// What happened on the way, for `-vv` (IMDS requests with status and time, skipped steps).
    pub trace: Vec<String>,
    /// The IMDS client of this lookup (its IMDSv2 token is reused), for instance tags.
    pub imds: imds::Client,
}

/// One IMDS exchange as the HTTP layer saw it.
#[derive(Debug, Clone)]
struct Exchange {
    method: String,
    path: String,
    /// The HTTP status, or the connector error (connect/read timeout, refused, ...).
    result: Result<u16, String>,
    millis: u128,
}

/// Wraps the HTTP client given to the IMDS client and records each exchange: the SDK's IMDS errors after
/// a timeout no longer say whether the token PUT was ever answered, which is what tells a container's
/// hop limit from a slow or absent IMDS.
#[derive(Debug, Clone)]
struct Watched {
    inner: SharedHttpClient,
    seen: Arc<Mutex<Vec<Exchange>>>,
}

#[derive(Debug)]
struct WatchedConnector {
    inner: SharedHttpConnector,
    seen: Arc<Mutex<Vec<Exchange>>>,
}

impl HttpClient for Watched {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(WatchedConnector {
            inner: self.inner.http_connector(settings, components),
            seen: self.seen.clone(),
        })
    }
}

impl HttpConnector for WatchedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let method = request.method().to_string();
        let path = request
            .uri()
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()))
            .unwrap_or_else(|| request.uri().to_string());
        let seen = self.seen.clone();
        let call = self.inner.call(request);
        HttpConnectorFuture::new(async move {
            let started = Instant::now();
            let out = call.await;
            let result = match &out {
                Ok(r) => Ok(r.status().as_u16()),
                Err(e) => Err(chain_text(e)),
            };
            if let Ok(mut s) = seen.lock() {
                s.push(Exchange {
                    method,
                    path,
                    result,
                    millis: started.elapsed().as_millis(),
                });
            }
            out
        })
    }
}

/// An error and its sources in one line.
pub fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    crate::error::with_sources(e.to_string(), e.source(), str::to_string)
}

/// The IMDS client for this lookup: the SDK's default endpoint (169.254.169.254, or what
/// `AWS_EC2_METADATA_SERVICE_ENDPOINT*` says), IMDSv2 token first, with timeouts and retries from the
/// `budget` left: connect attempts of at most 1 s, a read may take half the budget (a slow IMDS still
/// answers), and failed or timed-out attempts are retried with backoff until the budget is spent.
fn imds_client(pc: &ProviderConfig, budget: Duration) -> imds::Client {
    use aws_smithy_runtime_api::client::retries::classifiers::SharedRetryClassifier;
    let connect = (budget / 4).clamp(Duration::from_millis(100), IMDS_CONNECT_TIMEOUT);
    let read = (budget / 2).max(budget.min(Duration::from_secs(1)));
    imds::Client::builder()
        .configure(pc)
        .connect_timeout(connect)
        .read_timeout(read)
        .operation_attempt_timeout(budget)
        .operation_timeout(budget)
        .max_attempts(IMDS_MAX_ATTEMPTS)
        .retry_classifier(SharedRetryClassifier::new(ImdsRetry))
        .build()
}

/// Which IMDS failures are worth another attempt: no connection or no answer in time (a lost SYN, a
/// slow or restarting IMDS), 5xx, and 401 (an expired token). The SDK's own classifier retries no
/// connection failure at all (the fixed 1 s of issue 14); one that retries everything without a
/// response would also retry a refused token (403) from the outer request until the deadline.
#[derive(Debug)]
struct ImdsRetry;

impl aws_smithy_runtime_api::client::retries::classifiers::ClassifyRetry for ImdsRetry {
    fn name(&self) -> &'static str {
        "iam-authorized-keys IMDS"
    }

    fn classify_retry(
        &self,
        ctx: &aws_smithy_runtime_api::client::interceptors::context::InterceptorContext,
    ) -> aws_smithy_runtime_api::client::retries::classifiers::RetryAction {
        use aws_smithy_runtime_api::client::retries::classifiers::RetryAction;
        if let Some(r) = ctx.response() {
            let status = r.status();
            return if status.is_server_error() || status.as_u16() == 401 {
                RetryAction::server_error()
            } else {
                RetryAction::NoActionIndicated
            };
        }
        match ctx.output_or_error() {
            Some(Err(e)) if e.is_connector_error() || e.is_timeout_error() => {
                RetryAction::transient_error()
            }
            _ => RetryAction::NoActionIndicated,
        }
    }
}

/// Is `r` a region name (it ends up in a host name)?
pub fn valid_region(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 32
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Finds credentials by walking the chain before `deadline`, then the region: `--region`, else the
/// host's own from IMDS (`placement/region`) when the credentials came from IMDS (the token is reused:
/// one more request), else [`crate::config::DEFAULT_REGION`]. A host whose credentials come from a file or
/// the environment never waits for IMDS: it may not be on EC2 at all.
pub async fn resolve(
    cfg: &Config,
    http: SharedHttpClient,
    imds_http: SharedHttpClient,
    deadline: Instant,
) -> Result<Found, Error> {
    let budget = deadline.saturating_duration_since(Instant::now());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let watched = SharedHttpClient::new(Watched {
        inner: imds_http,
        seen: seen.clone(),
    });
    let pc = ProviderConfig::without_region()
        .with_http_client(http.clone())
        .with_region(Some(aws_config::Region::new(cfg.region.clone())));
    let imds_pc = ProviderConfig::without_region().with_http_client(watched);
    let imds = imds_client(&imds_pc, budget);

    let mut profile = aws_config::profile::ProfileFileCredentialsProvider::builder().configure(&pc);
    if let Some(path) = &cfg.credentials_file {
        profile = profile.profile_files(
            aws_runtime::env_config::file::EnvConfigFiles::builder()
                .with_file(
                    aws_runtime::env_config::file::EnvConfigFileKind::Credentials,
                    path,
                )
                .build(),
        );
    }
    if let Some(name) = &cfg.profile {
        profile = profile.profile_name(name);
    }
    let chain: Vec<(&'static str, SharedCredentialsProvider)> = vec![
        (
            ENVIRONMENT_STEP,
            SharedCredentialsProvider::new(
                aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
            ),
        ),
        (
            PROFILE_STEP,
            SharedCredentialsProvider::new(profile.build()),
        ),
        (
            "WebIdentityToken",
            SharedCredentialsProvider::new(
                aws_config::web_identity_token::WebIdentityTokenCredentialsProvider::builder()
                    .configure(&pc)
                    .build(),
            ),
        ),
        (
            "EcsContainer",
            SharedCredentialsProvider::new(
                aws_config::ecs::EcsCredentialsProvider::builder()
                    .configure(&pc)
                    .build(),
            ),
        ),
        (
            IMDS_STEP,
            SharedCredentialsProvider::new(
                imds::credentials::ImdsCredentialsProvider::builder()
                    .configure(&pc)
                    .imds_client(imds.clone())
                    .build(),
            ),
        ),
    ];

    let mut trace = Vec::new();
    let mut found = None;
    let mut failure: Option<(&'static str, Option<CredentialsError>)> = None;
    for (step, provider) in chain {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, provider.provide_credentials()).await {
            Ok(Ok(c)) => {
                found = Some((step, c));
                break;
            }
            // Not configured here: the next step (aws-config's chain does the same).
            Ok(Err(e @ CredentialsError::CredentialsNotLoaded(_))) => {
                trace.push(format!("credentials: {step}: not here: {}", chain_text(&e)));
                failure = Some((step, Some(e)));
            }
            Ok(Err(e)) => {
                trace.push(format!("credentials: {step}: {}", chain_text(&e)));
                failure = Some((step, Some(e)));
                break;
            }
            Err(_) => {
                trace.push(format!("credentials: {step}: deadline reached"));
                failure = Some((step, None));
                break;
            }
        }
    }
    let exchanges = seen.lock().map(|s| s.clone()).unwrap_or_default();
    trace.extend(exchanges.iter().map(|x| {
        format!(
            "IMDS {} {}: {} in {} ms",
            x.method,
            x.path,
            match &x.result {
                Ok(s) => format!("HTTP {s}"),
                Err(e) => e.clone(),
            },
            x.millis
        )
    }));
    let Some((step, credentials)) = found else {
        let (step, err) = failure.unwrap_or((IMDS_STEP, None));
        let (cause, fix) = classify(cfg, step, err.as_ref(), &exchanges, budget);
        return Err(Error::Credentials {
            cause,
            fix,
            detail: trace.join("\n"),
        });
    };
    trace.push(format!("credentials: from {step}"));

    let (region, region_source) = if cfg.region_configured {
        (cfg.region.clone(), "--region")
    } else if step == IMDS_STEP {
        let left = deadline.saturating_duration_since(Instant::now()) / REGION_SHARE;
        match tokio::time::timeout(left, imds.get("/latest/meta-data/placement/region")).await {
            Ok(Ok(r)) if valid_region(r.as_ref()) => (r.as_ref().to_string(), "IMDS"),
            Ok(Ok(r)) => {
                trace.push(format!(
                    "region: IMDS answered {:?}, not a region name; using {}",
                    crate::username::sanitize(r.as_ref()),
                    cfg.region
                ));
                (cfg.region.clone(), "default")
            }
            Ok(Err(e)) => {
                trace.push(format!(
                    "region: IMDS placement/region failed ({}); using {}",
                    chain_text(&e),
                    cfg.region
                ));
                (cfg.region.clone(), "default")
            }
            Err(_) => {
                trace.push(format!(
                    "region: IMDS placement/region did not answer in {} ms; using {}",
                    left.as_millis(),
                    cfg.region
                ));
                (cfg.region.clone(), "default")
            }
        }
    } else {
        (cfg.region.clone(), "default")
    };
    trace.push(format!("region: {region} (from {region_source})"));
    Ok(Found {
        credentials,
        step,
        region,
        region_source,
        trace,
        imds,
    })
}

/// The longest value an EC2 tag can have (characters; IAM group lists are ASCII, so bytes).
const MAX_TAG_VALUE: usize = 256;

/// The fix when instance metadata does not show instance tags.
const ENABLE_TAGS: &str =
    "aws ec2 modify-instance-metadata-options --instance-id ID --instance-metadata-tags enabled";

/// Reads instance tag `key` (IMDS `tags/instance/KEY`) as a list of IAM groups, before `deadline`. A
/// missing tag, instance metadata without tags, and a value that lists no valid group are settled
/// answers (fail closed, no stale answer); an IMDS that does not answer is not.
pub async fn groups_tag(
    imds: &imds::Client,
    key: &str,
    option: &str,
    deadline: Instant,
) -> Result<crate::cache::GroupsTag, Error> {
    use aws_config::imds::client::error::ImdsError;
    let unsettled = |cause: String| {
        Error::InstanceTag {
        cause,
        fix: "check that instance metadata answers (curl -H 'X-aws-ec2-metadata-token: ...' http://169.254.169.254/latest/meta-data/tags/instance/), or raise --timeout".into(),
        settled: false,
    }
    };
    let get = |path: String| async move {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, imds.get(&path)).await {
            Ok(Ok(v)) => Ok(Some(v.as_ref().to_string())),
            Ok(Err(ImdsError::ErrorResponse(r))) if r.response().status().as_u16() == 404 => {
                Ok(None)
            }
            Ok(Err(e)) => Err(format!("IMDS {path}: {}", short(&chain_text(&e)))),
            Err(_) => Err(format!("IMDS {path}: no answer before the deadline")),
        }
    };
    let value = match get(format!("/latest/meta-data/tags/instance/{key}")).await {
        Ok(Some(v)) => v,
        Ok(None) => {
            // Which 404: no such tag, or no tags in instance metadata at all?
            let enabled = get("/latest/meta-data/tags/instance".to_string()).await;
            return Err(match enabled {
                Ok(Some(_)) => Error::InstanceTag {
                    cause: format!("this instance has no tag {key} ({option})"),
                    fix: format!("aws ec2 create-tags --resources ID --tags 'Key={key},Value=GROUP1,GROUP2'"),
                    settled: true,
                },
                Ok(None) => Error::InstanceTag {
                    cause: format!("instance tags are not in instance metadata, so tag {key} ({option}) cannot be read"),
                    fix: ENABLE_TAGS.into(),
                    settled: true,
                },
                Err(e) => unsettled(e),
            });
        }
        Err(e) => {
            return Err(unsettled(format!(
                "cannot read instance tag {key} ({option}): {e}"
            )))
        }
    };
    // EC2 tag values are at most 256 characters; anything longer is not a tag (and is not parsed).
    if value.len() > MAX_TAG_VALUE {
        return Err(Error::InstanceTag {
            cause: format!(
                "instance metadata answered {} bytes for tag {key} ({option}), more than a tag value can hold ({MAX_TAG_VALUE})",
                value.len()
            ),
            fix: format!("check what answers at {} on this host", imds_address()),
            settled: true,
        });
    }
    let groups = crate::cache::parse_groups_tag(&value).map_err(|why| Error::InstanceTag {
        cause: format!("instance tag {key} ({option}) {why}"),
        fix: format!("set it to IAM group names, comma-separated: aws ec2 create-tags --resources ID --tags 'Key={key},Value=GROUP1,GROUP2'"),
        settled: true,
    })?;
    Ok(crate::cache::GroupsTag {
        key: key.to_string(),
        groups,
    })
}

/// Where the SDK's IMDS client goes, as its environment settings choose (for messages): the endpoint
/// named by `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else the IPv6 address with
/// `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6`, else 169.254.169.254. sshd passes neither variable.
fn imds_address() -> String {
    match std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT") {
        Ok(e) if !e.is_empty() => crate::username::sanitize(&e),
        _ => match std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE") {
            Ok(m) if m.eq_ignore_ascii_case("ipv6") => "fd00:ec2::254".into(),
            _ => "169.254.169.254".into(),
        },
    }
}

/// The fix for an instance without IMDS credentials, when it is not on EC2.
const NOT_EC2: &str = "not on EC2: name a root-owned --credentials-file";

/// One line for a credentials failure: what is wrong, and the fix that fits it.
fn classify(
    cfg: &Config,
    step: &str,
    err: Option<&CredentialsError>,
    imds: &[Exchange],
    budget: Duration,
) -> (String, String) {
    let text = err
        .map(|e| chain_text(e))
        .unwrap_or_else(|| "deadline reached".into());
    let timeout = format!("--timeout {:.1}s", cfg.timeout.as_secs_f64());
    if step != IMDS_STEP {
        let fix = match (step, &cfg.credentials_file) {
            (PROFILE_STEP, Some(p)) => format!(
                "check {} (profile {}: aws_access_key_id and aws_secret_access_key)",
                p.display(),
                cfg.profile.as_deref().unwrap_or("default")
            ),
            _ => "check the credentials source named in the message".to_string(),
        };
        return (format!("{step} credentials failed: {}", short(&text)), fix);
    }
    let token: Vec<&Exchange> = imds
        .iter()
        .filter(|x| x.path == "/latest/api/token")
        .collect();
    let token_ok = token.iter().any(|x| x.result == Ok(200));
    let token_status = token.iter().find_map(|x| x.result.as_ref().ok().copied());
    let connected = imds.iter().any(|x| match &x.result {
        Ok(_) => true,
        Err(e) => e.contains("HTTP read timeout"),
    });
    let role_404 = imds
        .iter()
        .any(|x| x.path == "/latest/meta-data/iam/security-credentials/" && x.result == Ok(404));
    let file_hint = if cfg.credentials_file.is_some() {
        // The file was tried first and gave nothing.
        format!(
            "; the credentials file has no profile {}",
            cfg.profile.as_deref().unwrap_or("default")
        )
    } else {
        String::new()
    };
    if text.contains("IMDS disabled by AWS_EC2_METADATA_DISABLED") {
        return (
            format!("no credentials: IMDS is disabled by AWS_EC2_METADATA_DISABLED{file_hint}"),
            "unset AWS_EC2_METADATA_DISABLED, or name a root-owned --credentials-file".into(),
        );
    }
    if matches!(token_status, Some(403)) && !token_ok {
        return (
            format!("no credentials: IMDS refused the IMDSv2 token request (PUT /latest/api/token: HTTP 403): instance metadata is disabled{file_hint}"),
            "aws ec2 modify-instance-metadata-options --instance-id ID --http-endpoint enabled".into(),
        );
    }
    if role_404 {
        return (
            format!("no credentials: no instance profile is attached (IMDS lists no IAM role){file_hint}"),
            "aws ec2 associate-iam-instance-profile --instance-id ID --iam-instance-profile Name=PROFILE (a role with examples/iam/read-keys.json)".into(),
        );
    }
    if !token_ok && !connected {
        let why = imds
            .last()
            .and_then(|x| x.result.as_ref().err())
            .map(|e| gist(e))
            .unwrap_or_else(|| short(&text));
        return (
            format!("no credentials: IMDS ({}) is unreachable within {timeout} ({} attempt(s), last: {why}){file_hint}", imds_address(), imds.len()),
            format!("{NOT_EC2}; on EC2, enable the metadata endpoint (aws ec2 modify-instance-metadata-options --http-endpoint enabled)"),
        );
    }
    if !token_ok {
        return (
            format!("no credentials: IMDS accepted connections but never answered the IMDSv2 token request (PUT /latest/api/token) within {timeout}{file_hint}"),
            "in a container, the PUT response hop limit is too low: aws ec2 modify-instance-metadata-options --instance-id ID --http-put-response-hop-limit 2 (else raise --timeout)".into(),
        );
    }
    let slow = err.is_none()
        || text.contains("timeout")
        || imds
            .last()
            .is_some_and(|x| x.result.as_ref().is_err_and(|e| e.contains("timeout")));
    if slow {
        return (
            format!(
                "no credentials: IMDS too slow for the deadline: no instance profile credentials within {timeout} ({} IMDS request(s) in {} ms)",
                imds.len(),
                budget.as_millis()
            ),
            "raise --timeout (IMDS answers in milliseconds when healthy: check the instance's load and network)".into(),
        );
    }
    (
        format!("no credentials: IMDS: {}", short(&text)),
        "check the instance profile's role (its trust policy must allow ec2.amazonaws.com)".into(),
    )
}

/// A connector error in a few words: what the kernel or the timer said.
fn gist(e: &str) -> String {
    let l = e.to_ascii_lowercase();
    if l.contains("connect timeout") {
        "connect timed out".into()
    } else if l.contains("read timeout") {
        "no reply in time".into()
    } else if l.contains("connection refused") {
        "connection refused".into()
    } else if l.contains("unreachable") {
        "network unreachable".into()
    } else {
        short(e)
    }
}

/// Errors from the SDK can quote a whole response; the one-line message keeps the start.
fn short(s: &str) -> String {
    const MAX: usize = 200;
    let s = crate::username::sanitize(s);
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(method: &str, path: &str, result: Result<u16, &str>) -> Exchange {
        Exchange {
            method: method.into(),
            path: path.into(),
            result: result.map_err(str::to_string),
            millis: 1,
        }
    }

    const TOKEN: &str = "/latest/api/token";
    const ROLES: &str = "/latest/meta-data/iam/security-credentials/";

    #[test]
    fn each_imds_failure_gets_its_own_cause_and_fix() {
        use clap::Parser;
        let cfg = crate::config::Config::build(
            &crate::cli::Cli::try_parse_from(["iak", "alice"])
                .expect("cli")
                .opts,
            &crate::config::Env::default(),
        )
        .expect("config");
        let b = Duration::from_secs(5);
        let connect = "timeout: client error (Connect): HTTP connect timeout occurred after 1s";
        let read = "timeout: HTTP read timeout occurred after 2.5s";
        type Case<'a> = (Vec<Exchange>, Option<CredentialsError>, &'a str, &'a str);
        let cases: Vec<Case> = vec![
            (
                vec![x("PUT", TOKEN, Ok(403))],
                Some(CredentialsError::provider_error("403")),
                "IMDSv2 token request",
                "--http-endpoint enabled",
            ),
            (
                vec![x("PUT", TOKEN, Ok(200)), x("GET", ROLES, Ok(404))],
                Some(CredentialsError::not_loaded("received 404 from IMDS")),
                "no instance profile",
                "associate-iam-instance-profile",
            ),
            (
                vec![
                    x("PUT", TOKEN, Err(connect)),
                    x("PUT", TOKEN, Err("io: Connection refused (os error 111)")),
                ],
                None,
                "unreachable",
                "--credentials-file",
            ),
            (
                vec![x("PUT", TOKEN, Err(read))],
                None,
                "never answered the IMDSv2 token request",
                "hop-limit 2",
            ),
            (
                vec![x("PUT", TOKEN, Ok(200)), x("GET", ROLES, Err(read))],
                None,
                "too slow",
                "raise --timeout",
            ),
        ];
        for (i, (seen, err, cause, fix)) in cases.iter().enumerate() {
            let (c, f) = classify(&cfg, IMDS_STEP, err.as_ref(), seen, b);
            assert!(
                c.contains(cause) && f.contains(fix),
                "case {i}: {c}; fix: {f}"
            );
            assert!(
                !c.contains('\n') && c.len() < 300,
                "case {i}: one short line: {c}"
            );
        }
        let (c, _) = classify(&cfg, IMDS_STEP, None, &[x("PUT", TOKEN, Err(connect))], b);
        assert!(c.contains("last: connect timed out"), "{c}");
    }
}
