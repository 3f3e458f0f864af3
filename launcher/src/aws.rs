//! AWS plumbing: the standard credential/region chain and profiles, custom endpoints
//! (`--endpoint-url`, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_<SERVICE>`), retries with backoff,
//! and error messages that say what to do.

use crate::error::Error;
pub use crate::error::ErrorKind;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sagemaker::error::{ProvideErrorMetadata, SdkError};

/// Options that select the account, region and endpoints.
#[derive(Debug, Clone, Default)]
pub struct AwsOptions {
    pub region: Option<String>,
    pub profile: Option<String>,
    pub endpoint_url: Option<String>,
    /// Retry attempts in total (1 = no retry).
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    /// Fixed credentials instead of the provider chain (tests against emulators).
    pub static_credentials: Option<aws_sdk_sagemaker::config::Credentials>,
}

impl AwsOptions {
    /// Retries: 6 attempts in total, or `AWS_MAX_ATTEMPTS` (the standard variable).
    pub fn new(region: Option<String>, profile: Option<String>, endpoint_url: Option<String>) -> Self {
        let max_attempts = std::env::var("AWS_MAX_ATTEMPTS").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
        AwsOptions {
            region,
            profile,
            endpoint_url,
            max_attempts,
            initial_backoff: Duration::from_millis(500),
            static_credentials: None,
        }
    }
}

/// The service clients.
#[derive(Clone, Debug)]
pub struct Clients {
    pub region: String,
    pub sagemaker: aws_sdk_sagemaker::Client,
    /// InvokeEndpoint (`invoke`); its endpoint follows AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME.
    pub runtime: aws_sdk_sagemakerruntime::Client,
    pub s3: aws_sdk_s3::Client,
    pub logs: aws_sdk_cloudwatchlogs::Client,
}

pub fn retry_config(o: &AwsOptions) -> RetryConfig {
    // Standard mode retries throttling (ThrottlingException, 429, …) and transient errors with
    // exponential backoff and jitter.
    RetryConfig::standard()
        .with_max_attempts(o.max_attempts.max(1))
        .with_initial_backoff(o.initial_backoff)
        .with_max_backoff(Duration::from_secs(20))
}

/// Load the shared config through the standard chain (env, profile, SSO, IMDS, …).
pub async fn load_sdk_config(o: &AwsOptions) -> SdkConfig {
    use aws_smithy_http_client::tls;
    // HTTPS on rustls + ring (see the root Cargo.toml for why not aws-lc).
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(https).retry_config(retry_config(o));
    if let Some(p) = &o.profile {
        loader = loader.profile_name(p);
    }
    if let Some(r) = &o.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(e) = &o.endpoint_url {
        loader = loader.endpoint_url(e);
    }
    if let Some(c) = &o.static_credentials {
        loader = loader.credentials_provider(c.clone());
    }
    loader.load().await
}

/// True when S3 must use path-style addressing (emulators on an IP or localhost).
pub fn custom_s3_endpoint(o: &AwsOptions) -> bool {
    o.endpoint_url.is_some()
        || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some()
        || std::env::var_os("AWS_ENDPOINT_URL").is_some()
}

pub fn clients_from_config(sdk: &SdkConfig, path_style: bool) -> Result<Clients, Error> {
    let region = sdk.region().map(|r| r.to_string()).ok_or_else(|| {
        Error::Invalid("no AWS region: pass --region, set `region` in the job file's [sagemaker] section, export AWS_REGION, or set `region` in ~/.aws/config for your profile".to_string())
    })?;
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(sdk).force_path_style(path_style).build());
    Ok(Clients {
        region,
        sagemaker: aws_sdk_sagemaker::Client::new(sdk),
        runtime: aws_sdk_sagemakerruntime::Client::new(sdk),
        s3,
        logs: aws_sdk_cloudwatchlogs::Client::new(sdk),
    })
}

/// Build clients and make sure credentials exist before the first call.
pub async fn connect(o: &AwsOptions) -> Result<Clients, Error> {
    let sdk = load_sdk_config(o).await;
    let clients = clients_from_config(&sdk, custom_s3_endpoint(o))?;
    check_credentials(&sdk, o).await?;
    Ok(clients)
}

/// The caller's credentials (environment, profile, SSO, …), for signing SageMaker MLflow requests.
pub async fn sigv4_credentials(o: &AwsOptions) -> Result<trainer::track::sigv4::Creds, Error> {
    let c = provide_credentials(&load_sdk_config(o).await, o).await?;
    Ok(trainer::track::sigv4::Creds {
        key: c.access_key_id().to_string(),
        secret: c.secret_access_key().to_string(),
        token: c.session_token().map(str::to_string),
        expires: c.expiry(),
    })
}

async fn check_credentials(sdk: &SdkConfig, o: &AwsOptions) -> Result<(), Error> {
    provide_credentials(sdk, o).await.map(drop)
}

/// The credentials the configuration resolves to, or what to do when there are none.
async fn provide_credentials(sdk: &SdkConfig, o: &AwsOptions) -> Result<aws_sdk_sagemaker::config::Credentials, Error> {
    use aws_sdk_sagemaker::config::ProvideCredentials;
    let bad = |detail: &str| Error::Aws { kind: ErrorKind::BadCredentials, message: no_credentials(o, detail) };
    let provider = sdk.credentials_provider().ok_or_else(|| bad("no credentials provider is configured"))?;
    provider.provide_credentials().await.map_err(|e| bad(&e.to_string()))
}

fn no_credentials(o: &AwsOptions, detail: &str) -> String {
    let profile = o.profile.clone().or_else(|| std::env::var("AWS_PROFILE").ok());
    let mut msg = String::from("no AWS credentials found");
    if let Some(p) = &profile {
        msg.push_str(&format!(" for profile `{p}`"));
    }
    msg.push_str(&format!(
        " ({detail}).\nFix: run `aws configure`{}, or `aws sso login{}` for an SSO profile, or export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary credentials).",
        profile.as_ref().map(|p| format!(" --profile {p}")).unwrap_or_default(),
        profile.as_ref().map(|p| format!(" --profile {p}")).unwrap_or_default()
    ));
    msg
}

/// Classify by error code and message.
pub fn classify(code: Option<&str>, message: &str) -> ErrorKind {
    let code = code.unwrap_or("");
    let m = message.to_ascii_lowercase();
    match code {
        "AccessDenied" | "AccessDeniedException" => ErrorKind::AccessDenied,
        "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "SignatureDoesNotMatch"
        | "InvalidAccessKeyId"
        | "IncompleteSignature" => ErrorKind::BadCredentials,
        "ResourceLimitExceeded" => ErrorKind::ResourceLimit,
        "ThrottlingException" | "Throttling" | "TooManyRequestsException" | "RequestLimitExceeded" | "SlowDown" => {
            ErrorKind::Throttled
        }
        "ResourceNotFound" | "ResourceNotFoundException" | "NoSuchBucket" | "NoSuchKey" => ErrorKind::NotFound,
        "CapacityError" | "InsufficientCapacityError" | "InsufficientInstanceCapacity" => ErrorKind::Capacity,
        "ValidationException" => {
            if m.contains("could not find") || m.contains("does not exist") && m.contains("job") {
                ErrorKind::NotFound
            } else if m.contains("role")
                && (m.contains("assume")
                    || m.contains("not authorized")
                    || m.contains("does not exist")
                    || m.contains("passrole"))
            {
                ErrorKind::UnknownRole
            } else if m.contains("capacity") {
                ErrorKind::Capacity
            } else {
                ErrorKind::Validation
            }
        }
        _ if m.contains("capacity") => ErrorKind::Capacity,
        _ => ErrorKind::Other,
    }
}

/// The quota name in a ResourceLimitExceeded message, e.g. `ml.g5.xlarge for training job usage`.
pub fn quota_name(message: &str, instance_type: Option<&str>, spot: bool) -> String {
    if let Some(start) = message.find('\'') {
        if let Some(len) = message[start + 1..].find('\'') {
            let q = &message[start + 1..start + 1 + len];
            if q.contains("usage") || q.starts_with("ml.") {
                return q.to_string();
            }
        }
    }
    match instance_type {
        Some(t) if spot => format!("{t} for spot training job usage"),
        Some(t) => format!("{t} for training job usage"),
        None => "the training job instance quota".into(),
    }
}

/// Context for turning an API error into advice.
#[derive(Debug, Clone, Default)]
pub struct ErrorContext {
    pub operation: String,
    pub region: String,
    pub instance_type: Option<String>,
    pub spot: bool,
    pub role: Option<String>,
    pub job: Option<String>,
}

/// A user-facing message for any SDK error.
pub fn explain<E, R>(err: &SdkError<E, R>, ctx: &ErrorContext) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let (kind, message) = match err {
        SdkError::ServiceError(se) => {
            let e = se.err();
            let code = e.code();
            let message = e.message().unwrap_or("").to_string();
            let kind = classify(code, &message);
            (kind.clone(), advice(&kind, code.unwrap_or("error"), &message, ctx))
        }
        SdkError::DispatchFailure(d) => {
            let detail = format!("{d:?}");
            (
                ErrorKind::Network,
                format!(
                    "{}: could not reach the {} endpoint for {} ({}). Check your network, proxy, or --endpoint-url / AWS_ENDPOINT_URL_*.",
                    ctx.operation,
                    service_of(&ctx.operation),
                    ctx.region,
                    short_detail(&detail)
                ),
            )
        }
        SdkError::TimeoutError(_) => {
            (ErrorKind::Network, format!("{}: timed out talking to AWS in {}", ctx.operation, ctx.region))
        }
        SdkError::ConstructionFailure(c) => {
            let detail = format!("{c:?}");
            if detail.to_ascii_lowercase().contains("credential") {
                (
                    ErrorKind::BadCredentials,
                    format!(
                        "{}: no usable AWS credentials ({}). Run `aws configure` or `aws sso login`.",
                        ctx.operation,
                        short_detail(&detail)
                    ),
                )
            } else {
                (ErrorKind::Other, format!("{}: could not build the request: {}", ctx.operation, short_detail(&detail)))
            }
        }
        other => {
            let detail = format!("{other}");
            let source = std::error::Error::source(other).map(|s| format!(": {s}")).unwrap_or_default();
            (ErrorKind::Other, format!("{}: {detail}{source}", ctx.operation))
        }
    };
    Error::Aws { kind, message }
}

fn service_of(op: &str) -> &'static str {
    if op.contains("Object") || op.contains("Upload") || op.contains("Bucket") {
        "S3"
    } else if op.contains("Log") {
        "CloudWatch Logs"
    } else {
        "SageMaker"
    }
}

fn short_detail(s: &str) -> String {
    let one = s.replace('\n', " ");
    if one.chars().count() > 300 {
        format!("{}…", one.chars().take(300).collect::<String>())
    } else {
        one
    }
}

pub fn advice(kind: &ErrorKind, code: &str, message: &str, ctx: &ErrorContext) -> String {
    let op = &ctx.operation;
    match kind {
        ErrorKind::AccessDenied => format!(
            "{op}: access denied ({code}: {message}).\nFix: the caller needs the IAM permission for {op}{}; check the identity with `aws sts get-caller-identity`.",
            if op == "CreateTrainingJob" {
                ", plus iam:PassRole on the execution role and s3 access to the input/output prefixes"
            } else {
                ""
            }
        ),
        ErrorKind::BadCredentials => format!(
            "{op}: AWS rejected the credentials ({code}: {message}).\nFix: refresh them (`aws sso login`, new session token) or check AWS_PROFILE / AWS_ACCESS_KEY_ID."
        ),
        ErrorKind::UnknownRole => format!(
            "{op}: SageMaker cannot use the execution role {} ({message}).\nFix: make sure the role exists in this account, trusts sagemaker.amazonaws.com (trust policy), and that you may iam:PassRole it.",
            ctx.role.as_deref().unwrap_or("(none)")
        ),
        ErrorKind::ResourceLimit => {
            let quota = quota_name(message, ctx.instance_type.as_deref(), ctx.spot);
            format!(
                "{op}: a SageMaker quota is too low ({message}).\nFix: in Service Quotas → Amazon SageMaker ({}), request an increase of '{quota}'. New accounts start at 0 for most GPU types.",
                ctx.region
            )
        }
        ErrorKind::Capacity => format!(
            "{op}: AWS has no capacity for {} in {} right now ({message}).\nFix: retry later, use another instance type or region, or use spot with a longer max_wait.",
            ctx.instance_type.as_deref().unwrap_or("this instance type"),
            ctx.region
        ),
        ErrorKind::Throttled => format!(
            "{op}: still throttled by AWS after retries with backoff ({code}: {message}). Wait a minute and retry."
        ),
        ErrorKind::NotFound => match &ctx.job {
            Some(j) => format!("{op}: no training job named `{j}` in {} ({message})", ctx.region),
            None => format!("{op}: not found ({message})"),
        },
        ErrorKind::Validation => format!("{op}: the request was rejected ({code}: {message})"),
        ErrorKind::Network => format!("{op}: network error: {message}"),
        ErrorKind::Other => format!("{op}: {code}: {message}"),
    }
}

/// Console URL of a training job.
pub fn console_url(region: &str, job: &str) -> String {
    format!("https://{region}.console.aws.amazon.com/sagemaker/home?region={region}#/jobs/{job}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_codes() {
        assert_eq!(classify(Some("ResourceLimitExceeded"), "x"), ErrorKind::ResourceLimit);
        assert_eq!(
            classify(
                Some("ValidationException"),
                "Could not find training job 'arn:aws:sagemaker:us-east-1:1:training-job/x'."
            ),
            ErrorKind::NotFound
        );
        assert_eq!(
            classify(Some("ValidationException"), "Could not assume role arn:aws:iam::123456789012:role/Nope. Please ensure that the role exists and allows principal 'sagemaker.amazonaws.com' to assume the role."),
            ErrorKind::UnknownRole
        );
        assert_eq!(classify(Some("ThrottlingException"), "Rate exceeded"), ErrorKind::Throttled);
        assert_eq!(classify(Some("AccessDeniedException"), "no"), ErrorKind::AccessDenied);
    }

    #[test]
    fn quota_names() {
        let m = "The account-level service limit 'ml.p3.8xlarge for training job usage' is 0 Instances, with current utilization of 0 Instances and a request delta of 1 Instances. Please use AWS Service Quotas to request an increase for this quota.";
        assert_eq!(quota_name(m, None, false), "ml.p3.8xlarge for training job usage");
        assert_eq!(
            quota_name("limit exceeded", Some("ml.g5.xlarge"), true),
            "ml.g5.xlarge for spot training job usage"
        );
    }
}
