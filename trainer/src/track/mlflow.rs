//! The few MLflow REST calls a training job makes (REST API 2.0: experiments, runs, log-batch,
//! and the artifact proxy of `mlflow server`), each one request with a JSON body.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::sigv4;
use super::target::{Auth, Target};

/// log-batch limits of the REST API: at most 1000 metrics, 100 params and 100 tags per request.
pub const MAX_METRICS: usize = 1000;
pub const MAX_PARAMS: usize = 100;
pub const MAX_TAGS: usize = 100;
/// Longest param value the server stores (MLflow ≥ 2.x: 6000 characters).
pub const MAX_PARAM_VALUE: usize = 6000;

#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// No answer: refused, unreachable, timed out.
    Transport(String),
    /// The server answered with an error.
    Status { status: u16, code: String, message: String },
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Transport(e) => write!(f, "{e}"),
            ApiError::Status { status, code, message } => write!(f, "HTTP {status} {code}: {message}"),
        }
    }
}

impl ApiError {
    pub fn not_found(&self) -> bool {
        matches!(self, ApiError::Status { code, .. } if code == "RESOURCE_DOES_NOT_EXIST")
    }

    fn already_exists(&self) -> bool {
        matches!(self, ApiError::Status { code, .. } if code == "RESOURCE_ALREADY_EXISTS")
    }
}

/// One metric value at one step.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub key: String,
    pub value: f64,
    pub step: u64,
    pub timestamp_ms: u64,
}

/// A run as the server knows it.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub run_id: String,
    pub name: String,
    pub experiment_id: String,
    pub artifact_uri: String,
    pub status: String,
    pub start_ms: u64,
    pub params: Vec<(String, String)>,
    /// Each metric's latest value.
    pub metrics: Vec<(String, f64)>,
}

pub struct Client {
    base: String,
    auth: Auth,
    agent: ureq::Agent,
    /// SigV4 credentials to use instead of the job's own (the launcher passes the user's).
    creds: Option<sigv4::Creds>,
}

/// Percent-encodes a query value or path segment (RFC 3986 unreserved characters stay).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl Client {
    pub fn new(target: &Target) -> Client {
        let agent =
            ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(5)).timeout(Duration::from_secs(30)).build();
        Client { base: target.base.clone(), auth: target.auth.clone(), agent, creds: None }
    }

    /// Signs SageMaker MLflow requests with `creds` rather than the job's role.
    pub fn with_credentials(mut self, creds: sigv4::Creds) -> Client {
        self.creds = Some(creds);
        self
    }

    /// One request; `Value::Null` for an empty answer.
    fn send(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: Option<(&[u8], &str)>,
    ) -> Result<Value, ApiError> {
        let mut url = format!("{}{path}", self.base);
        if !query.is_empty() {
            let q: Vec<String> = query.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
            url = format!("{url}?{}", q.join("&"));
        }
        let mut req = self.agent.request(method, &url);
        if let Some((_, content_type)) = body {
            req = req.set("Content-Type", content_type);
        }
        if let Auth::SageMaker { arn, region } = &self.auth {
            let (bytes, content_type) = body.map_or((&[][..], None), |(b, c)| (b, Some(c)));
            let creds = match &self.creds {
                Some(c) => c.clone(),
                None => sigv4::credentials().map_err(ApiError::Transport)?,
            };
            let signed = sigv4::sign_with(method, &url, bytes, content_type, region, arn, &creds, SystemTime::now())
                .map_err(ApiError::Transport)?;
            for (k, v) in signed {
                req = req.set(&k, &v);
            }
        }
        let answer = match body {
            Some((bytes, _)) => req.send_bytes(bytes),
            None => req.call(),
        };
        match answer {
            Ok(resp) => {
                let text = resp.into_string().map_err(|e| ApiError::Transport(format!("reading the answer: {e}")))?;
                if text.trim().is_empty() {
                    return Ok(Value::Null);
                }
                serde_json::from_str(&text).map_err(|e| ApiError::Transport(format!("{method} {path}: not JSON ({e})")))
            }
            Err(ureq::Error::Status(status, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let code = v["error_code"].as_str().unwrap_or("").to_string();
                let message =
                    v["message"].as_str().map(str::to_string).unwrap_or_else(|| text.chars().take(300).collect());
                Err(ApiError::Status { status, code, message })
            }
            Err(ureq::Error::Transport(t)) => Err(ApiError::Transport(format!("{method} {url}: {t}"))),
        }
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.send("POST", path, &[], Some((body.to_string().as_bytes(), "application/json")))
    }

    /// The experiment's id, created when missing (another job may create it at the same moment).
    pub fn experiment_id(&self, name: &str) -> Result<String, ApiError> {
        let get = || {
            self.send("GET", "/api/2.0/mlflow/experiments/get-by-name", &[("experiment_name", name)], None)
                .map(|v| v["experiment"]["experiment_id"].as_str().unwrap_or_default().to_string())
        };
        match get() {
            Ok(id) => Ok(id),
            Err(e) if e.not_found() => {
                match self.post("/api/2.0/mlflow/experiments/create", &json!({ "name": name })) {
                    Ok(v) => Ok(v["experiment_id"].as_str().unwrap_or_default().to_string()),
                    Err(e) if e.already_exists() => get(),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The id of experiment `name`; `None` when there is none.
    pub fn find_experiment(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.send("GET", "/api/2.0/mlflow/experiments/get-by-name", &[("experiment_name", name)], None) {
            Ok(v) => Ok(v["experiment"]["experiment_id"].as_str().map(str::to_string)),
            Err(e) if e.not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The experiment's runs, newest first (at most `max`).
    pub fn search_runs(&self, experiment_id: &str, max: usize) -> Result<Vec<RunInfo>, ApiError> {
        let v = self.post(
            "/api/2.0/mlflow/runs/search",
            &json!({ "experiment_ids": [experiment_id], "max_results": max, "order_by": ["attributes.start_time DESC"] }),
        )?;
        Ok(v["runs"].as_array().map(|a| a.iter().map(run_info).collect()).unwrap_or_default())
    }

    pub fn create_run(
        &self,
        experiment_id: &str,
        name: &str,
        start_ms: u64,
        tags: &[(String, String)],
    ) -> Result<RunInfo, ApiError> {
        let tags: Vec<Value> = tags.iter().take(MAX_TAGS).map(|(k, v)| json!({ "key": k, "value": v })).collect();
        let v = self.post(
            "/api/2.0/mlflow/runs/create",
            &json!({ "experiment_id": experiment_id, "run_name": name, "start_time": start_ms, "tags": tags }),
        )?;
        Ok(run_info(&v["run"]))
    }

    pub fn get_run(&self, run_id: &str) -> Result<RunInfo, ApiError> {
        let v = self.send("GET", "/api/2.0/mlflow/runs/get", &[("run_id", run_id)], None)?;
        Ok(run_info(&v["run"]))
    }

    pub fn log_batch(
        &self,
        run_id: &str,
        metrics: &[Metric],
        params: &[(String, String)],
        tags: &[(String, String)],
    ) -> Result<(), ApiError> {
        let metrics: Vec<Value> = metrics
            .iter()
            .map(|m| json!({ "key": m.key, "value": m.value, "step": m.step, "timestamp": m.timestamp_ms }))
            .collect();
        let pairs =
            |v: &[(String, String)]| -> Vec<Value> { v.iter().map(|(k, v)| json!({ "key": k, "value": v })).collect() };
        self.post(
            "/api/2.0/mlflow/runs/log-batch",
            &json!({ "run_id": run_id, "metrics": metrics, "params": pairs(params), "tags": pairs(tags) }),
        )
        .map(drop)
    }

    /// `status`: RUNNING, FINISHED, FAILED or KILLED.
    pub fn update_run(&self, run_id: &str, status: &str, end_ms: Option<u64>) -> Result<(), ApiError> {
        let mut body = json!({ "run_id": run_id, "status": status });
        if let Some(end) = end_ms {
            body["end_time"] = json!(end);
        }
        self.post("/api/2.0/mlflow/runs/update", &body).map(drop)
    }

    /// Uploads one file into the run's artifacts through the server's artifact proxy. `Ok(false)`
    /// when the run's artifacts live elsewhere (an `s3://` root the server does not proxy, or
    /// SageMaker MLflow, whose artifacts go to S3 by presigned URL): they are skipped.
    pub fn upload_artifact(&self, artifact_uri: &str, name: &str, bytes: &[u8]) -> Result<bool, ApiError> {
        let Some(path) = proxied_path(artifact_uri) else { return Ok(false) };
        if matches!(self.auth, Auth::SageMaker { .. }) {
            return Ok(false);
        }
        let segments: Vec<String> =
            path.split('/').chain(name.split('/')).filter(|s| !s.is_empty()).map(encode).collect();
        let url_path = format!("/api/2.0/mlflow-artifacts/artifacts/{}", segments.join("/"));
        self.send("PUT", &url_path, &[], Some((bytes, "application/octet-stream"))).map(|_| true)
    }
}

/// The artifact path under the proxy for `mlflow-artifacts:/…` (or `mlflow-artifacts://host/…`).
fn proxied_path(artifact_uri: &str) -> Option<String> {
    let rest = artifact_uri.strip_prefix("mlflow-artifacts:")?;
    let path = match rest.strip_prefix("//") {
        Some(with_host) => with_host.split_once('/').map(|(_, p)| p).unwrap_or(""),
        None => rest,
    };
    Some(path.trim_matches('/').to_string())
}

fn run_info(run: &Value) -> RunInfo {
    let info = &run["info"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let params = run["data"]["params"]
        .as_array()
        .map(|a| a.iter().map(|p| (s(&p["key"]), s(&p["value"]))).collect())
        .unwrap_or_default();
    let metrics = run["data"]["metrics"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| Some((s(&m["key"]), m["value"].as_f64()?))).collect())
        .unwrap_or_default();
    // start_time is a number, or a string in some servers' JSON (proto int64).
    let start_ms = info["start_time"].as_u64().or_else(|| info["start_time"].as_str()?.parse().ok()).unwrap_or(0);
    RunInfo {
        run_id: s(&info["run_id"]),
        name: s(&info["run_name"]),
        experiment_id: s(&info["experiment_id"]),
        artifact_uri: s(&info["artifact_uri"]),
        status: s(&info["status"]),
        start_ms,
        params,
        metrics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_maps_artifact_uris() {
        assert_eq!(encode("a b/c+d~é"), "a%20b%2Fc%2Bd~%C3%A9");
        assert_eq!(proxied_path("mlflow-artifacts:/1/abc/artifacts").as_deref(), Some("1/abc/artifacts"));
        assert_eq!(proxied_path("mlflow-artifacts://h:5000/1/abc/artifacts").as_deref(), Some("1/abc/artifacts"));
        assert_eq!(proxied_path("s3://bucket/1/abc/artifacts"), None);
    }
}
