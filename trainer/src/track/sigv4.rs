//! SageMaker managed MLflow's authentication, as the sagemaker-mlflow plugin does it (its
//! `auth.py` and request header provider): every request carries the tracking server's ARN in
//! `x-mlflow-sm-tracking-server-arn` and is signed with AWS Signature V4 for service
//! `sagemaker-mlflow` in the ARN's region, payload hash in `x-amz-content-sha256`. The signing is
//! the AWS SDK's own (`aws-sigv4`); this module only finds the credentials — the job's role, from
//! the environment, the container credentials endpoint or the instance metadata service, the
//! order the AWS SDKs use — and hands the headers over.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign as sdk_sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;

pub const SERVICE: &str = "sagemaker-mlflow";
pub const ARN_HEADER: &str = "x-mlflow-sm-tracking-server-arn";

/// Credentials and when they stop working (`None`: they do not expire).
#[derive(Clone)]
pub struct Creds {
    pub key: String,
    pub secret: String,
    pub token: Option<String>,
    pub expires: Option<SystemTime>,
}

/// The headers that authenticate `method url` with `body` at `time` (they include the ARN header
/// and the signature; the request must send `content_type` as given when there is a body).
#[allow(clippy::too_many_arguments)]
pub fn sign_with(
    method: &str,
    url: &str,
    body: &[u8],
    content_type: Option<&str>,
    region: &str,
    arn: &str,
    creds: &Creds,
    time: SystemTime,
) -> Result<Vec<(String, String)>, String> {
    let host = url.split_once("://").map(|(_, r)| r).unwrap_or(url).split(['/', '?']).next().unwrap_or_default();
    let mut headers = vec![("host", host), (ARN_HEADER, arn)];
    if let Some(ct) = content_type {
        headers.push(("content-type", ct));
    }
    let identity = Credentials::new(&creds.key, &creds.secret, creds.token.clone(), None, "oxtune").into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| format!("SigV4 parameters: {e}"))?
        .into();
    let request = SignableRequest::new(method, url, headers.iter().copied(), SignableBody::Bytes(body))
        .map_err(|e| format!("SigV4: {e}"))?;
    let (instructions, _) = sdk_sign(request, &params).map_err(|e| format!("SigV4: {e}"))?.into_parts();
    let mut out: Vec<(String, String)> = vec![(ARN_HEADER.into(), arn.into())];
    out.extend(instructions.headers().map(|(k, v)| (k.to_string(), v.to_string())));
    Ok(out)
}

/// The job's credentials, fetched once and again shortly before they expire.
pub fn credentials() -> Result<Creds, String> {
    static CACHE: Mutex<Option<Creds>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let fresh = |c: &Creds| c.expires.is_none_or(|t| t > SystemTime::now() + Duration::from_secs(300));
    if let Some(c) = cache.as_ref().filter(|c| fresh(c)) {
        return Ok(c.clone());
    }
    let c = find_credentials()?;
    *cache = Some(c.clone());
    Ok(c)
}

fn var(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

fn find_credentials() -> Result<Creds, String> {
    if let (Some(key), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Creds { key, secret, token: var("AWS_SESSION_TOKEN"), expires: None });
    }
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
    let container = var("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .or_else(|| var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").map(|r| format!("http://169.254.170.2{r}")));
    if let Some(url) = container {
        let mut req = agent.get(&url);
        if let Some(token) = var("AWS_CONTAINER_AUTHORIZATION_TOKEN") {
            req = req.set("Authorization", &token);
        }
        let v = read_json(req.call(), &url)?;
        return creds_from(&v, &url);
    }
    // The instance metadata service, IMDSv2 (a session token first).
    let imds = "http://169.254.169.254/latest";
    let token_url = format!("{imds}/api/token");
    let token = read_text(agent.put(&token_url).set("X-aws-ec2-metadata-token-ttl-seconds", "21600").call(), &token_url)
        .map_err(|e| {
            format!("no AWS credentials: none in the environment, no container credentials endpoint, and the instance metadata service did not answer ({e})")
        })?;
    let roles_url = format!("{imds}/meta-data/iam/security-credentials/");
    let role = read_text(agent.get(&roles_url).set("X-aws-ec2-metadata-token", &token).call(), &roles_url)?;
    let role = role.lines().next().unwrap_or_default().trim();
    let url = format!("{roles_url}{role}");
    let v = read_json(agent.get(&url).set("X-aws-ec2-metadata-token", &token).call(), &url)?;
    creds_from(&v, &url)
}

fn read_text(answer: Result<ureq::Response, ureq::Error>, url: &str) -> Result<String, String> {
    answer.map_err(|e| format!("{url}: {e}"))?.into_string().map_err(|e| format!("{url}: {e}"))
}

fn read_json(answer: Result<ureq::Response, ureq::Error>, url: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(&read_text(answer, url)?).map_err(|e| format!("{url}: not JSON ({e})"))
}

fn creds_from(v: &serde_json::Value, url: &str) -> Result<Creds, String> {
    let s = |k: &str| v[k].as_str().map(str::to_string);
    let (Some(key), Some(secret)) = (s("AccessKeyId"), s("SecretAccessKey")) else {
        return Err(format!("{url}: no AccessKeyId/SecretAccessKey in the answer"));
    };
    let expires = s("Expiration").and_then(|e| parse_rfc3339(&e));
    Ok(Creds { key, secret, token: s("Token"), expires })
}

/// `2026-12-07T21:30:00Z` as a time (the format both credential endpoints use).
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (n(0..4)?, n(5..7)?, n(8..10)?, n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (mo + if mo > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_credential_expiry() {
        let t = parse_rfc3339("2026-12-07T21:30:00Z").unwrap();
        assert_eq!(t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(), 1_796_679_000);
        assert!(parse_rfc3339("soon").is_none());
    }

    #[test]
    fn signs_with_the_arn_header_and_payload_hash() {
        let creds =
            Creds { key: "AKIDEXAMPLE".into(), secret: "secret".into(), token: Some("tok".into()), expires: None };
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_679_000);
        let arn = "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/t";
        let h = sign_with(
            "POST",
            "https://us-east-1.experiments.sagemaker.aws/api/2.0/mlflow/runs/create",
            b"{}",
            Some("application/json"),
            "us-east-1",
            arn,
            &creds,
            at,
        )
        .unwrap();
        let get =
            |k: &str| h.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.as_str()).unwrap_or_default();
        assert_eq!(get(ARN_HEADER), arn);
        assert_eq!(get("x-amz-date"), "20261207T213000Z");
        assert_eq!(get("x-amz-content-sha256"), "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a");
        assert_eq!(get("x-amz-security-token"), "tok");
        let auth = get("authorization");
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261207/us-east-1/sagemaker-mlflow/aws4_request"
            ),
            "{auth}"
        );
        assert!(auth.contains("SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token;x-mlflow-sm-tracking-server-arn"), "{auth}");
    }
}
