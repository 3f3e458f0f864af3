//! Where a job's runs go, read from its environment before anything is trained: a bad
//! `MLFLOW_TRACKING_URI` is bad input, not a warning halfway through the job.

use std::time::Duration;

use crate::sagemaker::env_value;

pub const URI_VAR: &str = "MLFLOW_TRACKING_URI";
pub const EXPERIMENT_VAR: &str = "MLFLOW_EXPERIMENT_NAME";
/// The sagemaker-mlflow plugin's override of the endpoint an ARN maps to (VPC endpoints, tests).
pub const CUSTOM_ENDPOINT_VAR: &str = "SAGEMAKER_MLFLOW_CUSTOM_ENDPOINT";
/// SageMaker sets it in every training container.
pub const JOB_NAME_VAR: &str = "TRAINING_JOB_NAME";
/// The experiment of a job that has no SageMaker job name and names none.
pub const DEFAULT_EXPERIMENT: &str = "oxtune";
/// Seconds the end of a job waits for undelivered metrics (default [`DEFAULT_FINISH_WAIT`]).
pub const FINISH_WAIT_VAR: &str = "OXTUNE_MLFLOW_FINISH_WAIT";
pub const DEFAULT_FINISH_WAIT: Duration = Duration::from_secs(20);

/// How requests to the server are authenticated.
#[derive(Debug, Clone, PartialEq)]
pub enum Auth {
    /// A plain MLflow server.
    None,
    /// SageMaker managed MLflow: SigV4 for service `sagemaker-mlflow` in the ARN's region, and the
    /// ARN in the `x-mlflow-sm-tracking-server-arn` header (as the sagemaker-mlflow plugin does).
    SageMaker { arn: String, region: String },
}

/// A tracking server, the experiment and the run name of this job.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// `MLFLOW_TRACKING_URI` as given (the run file records it).
    pub uri: String,
    /// The server's base URL, no trailing slash: REST paths follow it.
    pub base: String,
    pub auth: Auth,
    pub experiment: String,
    pub run_name: String,
    /// How long the end of the job waits for what the server has not taken yet.
    pub finish_wait: Duration,
}

/// The job's tracking target, or `None` when `MLFLOW_TRACKING_URI` is unset or empty.
pub fn from_env(env: &[(String, String)], fallback_run_name: &str) -> Result<Option<Target>, String> {
    let Some(uri) = env_value(env, URI_VAR).map(str::trim).filter(|u| !u.is_empty()) else { return Ok(None) };
    let (base, auth) = if uri.starts_with("http://") || uri.starts_with("https://") {
        let rest = uri.split_once("://").map(|(_, r)| r).unwrap_or_default();
        if rest.is_empty() || rest.starts_with('/') {
            return Err(format!("{URI_VAR}={uri} names no host: use http(s)://HOST[:PORT][/PATH]"));
        }
        (uri.trim_end_matches('/').to_string(), Auth::None)
    } else if uri.starts_with("arn:") {
        let region = parse_arn(uri)?;
        // Both partitions SageMaker MLflow runs in (aws, aws-us-gov) use the DNS suffix `aws`.
        let base = match env_value(env, CUSTOM_ENDPOINT_VAR).map(str::trim).filter(|e| !e.is_empty()) {
            Some(e) => e.trim_end_matches('/').to_string(),
            None => format!("https://{region}.experiments.sagemaker.aws"),
        };
        (base, Auth::SageMaker { arn: uri.to_string(), region })
    } else {
        return Err(format!(
            "{URI_VAR}={uri} is not an MLflow tracking server: use http(s)://HOST[:PORT] or a SageMaker MLflow ARN \
             (arn:aws:sagemaker:REGION:ACCOUNT:mlflow-tracking-server/NAME or …:mlflow-app/NAME)"
        ));
    };
    let job = env_value(env, JOB_NAME_VAR).map(str::trim).filter(|j| !j.is_empty());
    let experiment = match env_value(env, EXPERIMENT_VAR).map(str::trim).filter(|e| !e.is_empty()) {
        Some(e) => e.to_string(),
        None => job.map(base_name).unwrap_or(DEFAULT_EXPERIMENT).to_string(),
    };
    let run_name = job.unwrap_or(fallback_run_name).to_string();
    let finish_wait = match env_value(env, FINISH_WAIT_VAR).map(str::trim) {
        None | Some("") => DEFAULT_FINISH_WAIT,
        Some(v) => {
            Duration::from_secs(v.parse().map_err(|_| format!("{FINISH_WAIT_VAR}={v} is not a number of seconds"))?)
        }
    };
    Ok(Some(Target { uri: uri.to_string(), base, auth, experiment, run_name, finish_wait }))
}

/// `arn:PARTITION:sagemaker:REGION:ACCOUNT:mlflow-tracking-server/NAME` (or `mlflow-app/NAME`):
/// its region.
fn parse_arn(arn: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!(
            "{URI_VAR}={arn} is not a SageMaker MLflow ARN ({why}): expected \
             arn:aws:sagemaker:REGION:ACCOUNT:mlflow-tracking-server/NAME or …:mlflow-app/NAME"
        )
    };
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [_, partition, service, region, account, resource] = parts[..] else { return Err(bad("too few fields")) };
    if service != "sagemaker" {
        return Err(bad(&format!("service `{service}`, not sagemaker")));
    }
    if !matches!(partition, "aws" | "aws-us-gov") {
        return Err(bad(&format!("partition `{partition}` has no SageMaker MLflow endpoint")));
    }
    if region.is_empty() || account.is_empty() {
        return Err(bad("no region or account"));
    }
    match resource.split_once('/') {
        Some(("mlflow-tracking-server" | "mlflow-app", name)) if !name.is_empty() => Ok(region.to_string()),
        _ => Err(bad(&format!("resource `{resource}`"))),
    }
}

/// A SageMaker job name without the timestamp the SDKs and `oxtune submit` append
/// (`-2026-12-07-21-30-00-123` or `-20261207-213000`).
pub fn base_name(job: &str) -> &str {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = job.split('-').collect();
    for (n, lens) in [(7, &[4, 2, 2, 2, 2, 2, 3][..]), (6, &[4, 2, 2, 2, 2, 2][..]), (2, &[8, 6][..])] {
        if parts.len() > n {
            let tail = &parts[parts.len() - n..];
            if tail.iter().zip(lens).all(|(p, l)| digits(p) && p.len() == *l) {
                let cut: usize = tail.iter().map(|p| p.len() + 1).sum();
                return &job[..job.len() - cut];
            }
        }
    }
    job
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn http_servers_arns_and_names() {
        assert_eq!(from_env(&env(&[]), "x").unwrap(), None);
        let t = from_env(&env(&[(URI_VAR, "http://127.0.0.1:5000/")]), "demo").unwrap().unwrap();
        assert_eq!(
            (t.base.as_str(), &t.auth, t.experiment.as_str(), t.run_name.as_str()),
            ("http://127.0.0.1:5000", &Auth::None, "oxtune", "demo")
        );
        let arn = "arn:aws:sagemaker:eu-west-1:123456789012:mlflow-tracking-server/team";
        let t = from_env(&env(&[(URI_VAR, arn), (JOB_NAME_VAR, "llama-lora-2026-12-07-21-30-00-123")]), "x")
            .unwrap()
            .unwrap();
        assert_eq!(t.base, "https://eu-west-1.experiments.sagemaker.aws");
        assert_eq!(t.auth, Auth::SageMaker { arn: arn.into(), region: "eu-west-1".into() });
        assert_eq!((t.experiment.as_str(), t.run_name.as_str()), ("llama-lora", "llama-lora-2026-12-07-21-30-00-123"));
        let app = "arn:aws:sagemaker:us-east-1:123456789012:mlflow-app/app-1";
        let t =
            from_env(&env(&[(URI_VAR, app), (CUSTOM_ENDPOINT_VAR, "http://127.0.0.1:9/"), (EXPERIMENT_VAR, "e")]), "x")
                .unwrap()
                .unwrap();
        assert_eq!((t.base.as_str(), t.experiment.as_str()), ("http://127.0.0.1:9", "e"));
    }

    #[test]
    fn bad_uris_are_named() {
        for (uri, says) in [
            ("ftp://host", "is not an MLflow tracking server"),
            ("file:///tmp/mlruns", "is not an MLflow tracking server"),
            ("http://", "names no host"),
            ("arn:aws:s3:::bucket", "service `s3`"),
            ("arn:aws:sagemaker", "too few fields"),
            ("arn:aws:iam::123:role/x", "service `iam`"),
            ("arn:aws:sagemaker:us-east-1:123:endpoint/x", "resource `endpoint/x`"),
            ("arn:aws-cn:sagemaker:cn-north-1:123:mlflow-app/x", "partition `aws-cn`"),
        ] {
            let e = from_env(&env(&[(URI_VAR, uri)]), "x").unwrap_err();
            assert!(e.contains(URI_VAR) && e.contains(says), "{uri}: {e}");
        }
    }

    #[test]
    fn base_names_drop_the_timestamp() {
        assert_eq!(base_name("llama-lora-2026-12-07-21-30-00-123"), "llama-lora");
        assert_eq!(base_name("llama-lora-2026-12-07-21-30-00"), "llama-lora");
        assert_eq!(base_name("demo-20261207-213000"), "demo");
        assert_eq!(base_name("my-job-7"), "my-job-7");
        assert_eq!(base_name("2026"), "2026");
    }
}
