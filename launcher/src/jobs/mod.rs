//! Following jobs: status and stop here; logs and wait in `follow`; list and compare in `list`;
//! an MLflow experiment's runs in `experiment`.
//!
//! Cost of a job = BillableTimeInSeconds × InstanceCount × on-demand rate; managed-spot
//! savings = 1 − Billable/Training (the DescribeTrainingJob API documentation's own formulas).

use std::collections::BTreeMap;

use aws_sdk_sagemaker::operation::describe_training_job::DescribeTrainingJobOutput;
use serde::Serialize;

use crate::aws::{explain, Clients, ErrorContext, ErrorKind};
use crate::catalogue::PriceTable;
use crate::clock::{now_epoch, utc_datetime};
use crate::error::Error;
use crate::format::{fmt_duration, fmt_usd};

pub mod experiment;
mod follow;
mod list;

pub use follow::{logs, parse_metric_line, wait, JobEnd, LogCursor, ProgressTracker, WaitOptions};
pub use list::{compare, list, render_comparison, render_list, Comparison, ComparisonRow, ListFilter, ListRow};

pub const LOG_GROUP: &str = "/aws/sagemaker/TrainingJobs";

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Transition {
    pub status: String,
    pub start: Option<f64>,
    pub end: Option<f64>,
    pub message: String,
}

/// What we show about a job (from DescribeTrainingJob).
#[derive(Debug, Clone, Serialize)]
pub struct JobInfo {
    pub name: String,
    pub arn: String,
    pub status: String,
    pub secondary_status: String,
    pub failure_reason: Option<String>,
    /// The execution role (`deploy` hands it to the endpoint's model).
    pub role_arn: Option<String>,
    pub instance_type: String,
    pub instance_count: u32,
    pub spot: bool,
    pub created: Option<f64>,
    pub training_start: Option<f64>,
    pub training_end: Option<f64>,
    pub training_seconds: Option<i64>,
    pub billable_seconds: Option<i64>,
    pub max_runtime_seconds: Option<i64>,
    pub transitions: Vec<Transition>,
    pub final_metrics: BTreeMap<String, f64>,
    pub hyperparameters: BTreeMap<String, String>,
    pub model_artifacts: Option<String>,
    pub output_path: Option<String>,
    pub checkpoint_uri: Option<String>,
    pub warm_pool: Option<String>,
    /// Environment variable names only; values may be secrets.
    pub environment_keys: Vec<String>,
}

/// SageMaker metric values are f32: widen through their shortest decimal form so 1.2345 stays 1.2345.
fn f32_to_f64_shortest(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

pub(super) fn secs(d: Option<&aws_sdk_sagemaker::primitives::DateTime>) -> Option<f64> {
    d.map(|d| d.as_secs_f64())
}

impl JobInfo {
    pub fn from_describe(d: &DescribeTrainingJobOutput) -> JobInfo {
        let rc = d.resource_config();
        JobInfo {
            name: d.training_job_name().unwrap_or_default().to_string(),
            arn: d.training_job_arn().unwrap_or_default().to_string(),
            status: d.training_job_status().map(|s| s.as_str().to_string()).unwrap_or_default(),
            secondary_status: d.secondary_status().map(|s| s.as_str().to_string()).unwrap_or_default(),
            failure_reason: d.failure_reason().map(str::to_string),
            role_arn: d.role_arn().map(str::to_string),
            instance_type: rc.and_then(|r| r.instance_type()).map(|t| t.as_str().to_string()).unwrap_or_default(),
            instance_count: rc.and_then(|r| r.instance_count()).unwrap_or(1).max(0) as u32,
            spot: d.enable_managed_spot_training().unwrap_or(false),
            created: secs(d.creation_time()),
            training_start: secs(d.training_start_time()),
            training_end: secs(d.training_end_time()),
            training_seconds: d.training_time_in_seconds().map(i64::from),
            billable_seconds: d.billable_time_in_seconds().map(i64::from),
            max_runtime_seconds: d.stopping_condition().and_then(|s| s.max_runtime_in_seconds()).map(i64::from),
            transitions: d
                .secondary_status_transitions()
                .iter()
                .map(|t| Transition {
                    status: t.status().map(|s| s.as_str().to_string()).unwrap_or_default(),
                    start: secs(t.start_time()),
                    end: secs(t.end_time()),
                    message: t.status_message().unwrap_or_default().to_string(),
                })
                .collect(),
            final_metrics: d
                .final_metric_data_list()
                .iter()
                .filter_map(|m| Some((m.metric_name()?.to_string(), f32_to_f64_shortest(m.value()?))))
                .collect(),
            hyperparameters: d
                .hyper_parameters()
                .map(|h| h.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            model_artifacts: d.model_artifacts().and_then(|m| m.s3_model_artifacts()).map(str::to_string),
            output_path: d.output_data_config().and_then(|o| o.s3_output_path()).map(str::to_string),
            checkpoint_uri: d.checkpoint_config().and_then(|c| c.s3_uri()).map(str::to_string),
            warm_pool: d.warm_pool_status().map(|w| {
                let mut s = w.status().map(|s| s.as_str().to_string()).unwrap_or_default();
                if let Some(t) = w.resource_retained_billable_time_in_seconds() {
                    s.push_str(&format!(", retained billable {t} s"));
                }
                s
            }),
            environment_keys: d.environment().map(|e| e.keys().cloned().collect()).unwrap_or_default(),
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), "Completed" | "Failed" | "Stopped")
    }
}

/// Cost of a job: final when billable seconds are known, else an upper bound so far.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Cost {
    pub usd: f64,
    pub is_final: bool,
    pub rate: f64,
    pub billable_seconds: f64,
    pub spot_savings: Option<f64>,
}

pub fn job_cost(info: &JobInfo, prices: &PriceTable, now: f64) -> Option<Cost> {
    let rate = prices.rate(&info.instance_type)?;
    let count = info.instance_count.max(1) as f64;
    let savings = match (info.spot, info.billable_seconds, info.training_seconds) {
        (true, Some(b), Some(t)) if t > 0 => Some(1.0 - b as f64 / t as f64),
        _ => None,
    };
    if let Some(b) = info.billable_seconds {
        return Some(Cost {
            usd: b as f64 * count * rate / 3600.0,
            is_final: info.is_terminal(),
            rate,
            billable_seconds: b as f64,
            spot_savings: savings,
        });
    }
    // In progress: wall time since training started (on-demand rate; an upper bound for spot).
    let start = info.training_start.or(info.created)?;
    let end = info.training_end.unwrap_or(now);
    let b = (end - start).max(0.0);
    Some(Cost { usd: b * count * rate / 3600.0, is_final: false, rate, billable_seconds: b, spot_savings: None })
}

/// `s3://…/<job>/output/output.tar.gz` next to model.tar.gz.
pub fn output_tarball(info: &JobInfo) -> Option<String> {
    info.output_path.as_ref().map(|o| format!("{}/{}/output/output.tar.gz", o.trim_end_matches('/'), info.name))
}

pub fn render_status(info: &JobInfo, cost: Option<&Cost>) -> String {
    let mut s = String::new();
    s.push_str(&format!("job:        {}\n", info.name));
    s.push_str(&format!("status:     {} / {}\n", info.status, info.secondary_status));
    s.push_str(&format!(
        "instance:   {} × {}{}\n",
        info.instance_count,
        info.instance_type,
        if info.spot { " (managed spot)" } else { "" }
    ));
    if let Some(c) = info.created {
        s.push_str(&format!("created:    {}\n", utc_datetime(c)));
    }
    if let Some(t) = info.training_seconds {
        s.push_str(&format!("training:   {} ({t} s)\n", fmt_duration(t as f64)));
    }
    if let Some(b) = info.billable_seconds {
        s.push_str(&format!("billable:   {} ({b} s × {} instance(s))\n", fmt_duration(b as f64), info.instance_count));
    }
    match cost {
        Some(c) if c.is_final => s.push_str(&format!(
            "cost:       {} final (billable {:.0} s × {} × ${:.3}/h)\n",
            fmt_usd(c.usd),
            c.billable_seconds,
            info.instance_count,
            c.rate
        )),
        Some(c) => s.push_str(&format!(
            "cost:       {} so far (≤; {} × {} × ${:.3}/h on-demand)\n",
            fmt_usd(c.usd),
            fmt_duration(c.billable_seconds),
            info.instance_count,
            c.rate
        )),
        None => s.push_str(&format!("cost:       unknown (no price for {})\n", info.instance_type)),
    }
    if let Some(sv) = cost.and_then(|c| c.spot_savings) {
        s.push_str(&format!("spot:       {:.0}% saved vs on-demand (1 − billable/training)\n", sv * 100.0));
    }
    if let Some(w) = &info.warm_pool {
        s.push_str(&format!("warm pool:  {w}\n"));
    }
    if let Some(r) = &info.failure_reason {
        s.push_str(&format!("failure:    {}\n", r.replace('\n', "\n            ")));
        if r.contains("CapacityError") {
            s.push_str(
                "            → AWS had no capacity for this instance type; retry later or pick another type/region.\n",
            );
        }
    }
    if !info.transitions.is_empty() {
        s.push_str("history:\n");
        for t in &info.transitions {
            let dur = match (t.start, t.end) {
                (Some(a), Some(b)) => fmt_duration(b - a),
                (Some(a), None) => format!("{} (running)", fmt_duration(now_epoch() - a)),
                _ => String::new(),
            };
            s.push_str(&format!("  {:<20} {:>12}  {}\n", t.status, dur, t.message));
        }
    }
    if !info.final_metrics.is_empty() {
        s.push_str("final metrics:\n");
        for (k, v) in &info.final_metrics {
            s.push_str(&format!("  {k:<24} {v}\n"));
        }
    }
    if info.status == "Completed" || info.model_artifacts.is_some() {
        s.push_str("artifacts:\n");
        if let Some(m) = &info.model_artifacts {
            s.push_str(&format!("  model:       {m}\n"));
        }
        if let Some(o) = output_tarball(info) {
            s.push_str(&format!("  output:      {o}\n"));
        }
    }
    if let Some(c) = &info.checkpoint_uri {
        s.push_str(&format!("  checkpoints: {c}\n"));
    }
    s
}

pub async fn describe(clients: &Clients, job: &str) -> Result<JobInfo, Error> {
    let ctx = ErrorContext {
        operation: "DescribeTrainingJob".into(),
        region: clients.region.clone(),
        job: Some(job.into()),
        ..Default::default()
    };
    let out =
        clients.sagemaker.describe_training_job().training_job_name(job).send().await.map_err(|e| explain(&e, &ctx))?;
    Ok(JobInfo::from_describe(&out))
}

/// Outcome of `stop`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// StopTrainingJob accepted; the job goes Stopping → Stopped.
    Requested,
    /// The job was not running; nothing to do (status shown).
    AlreadyFinished(String),
}

/// Idempotent stop: a ValidationException for a job that is not InProgress is informational.
pub async fn stop(clients: &Clients, job: &str) -> Result<StopOutcome, Error> {
    let ctx = ErrorContext {
        operation: "StopTrainingJob".into(),
        region: clients.region.clone(),
        job: Some(job.into()),
        ..Default::default()
    };
    match clients.sagemaker.stop_training_job().training_job_name(job).send().await {
        Ok(_) => Ok(StopOutcome::Requested),
        Err(e) => {
            let err = explain(&e, &ctx);
            if err.kind() == Some(&ErrorKind::Validation) {
                // "The request was rejected because the training job is in status Stopped."
                let raw = e
                    .as_service_error()
                    .map(|s| aws_sdk_sagemaker::error::ProvideErrorMetadata::message(s).unwrap_or("").to_string())
                    .unwrap_or_default();
                let status = match describe(clients, job).await {
                    Ok(info) => format!("{} / {}", info.status, info.secondary_status),
                    Err(_) => raw.rsplit("status ").next().unwrap_or("").trim_end_matches('.').to_string(),
                };
                return Ok(StopOutcome::AlreadyFinished(status));
            }
            Err(err)
        }
    }
}
