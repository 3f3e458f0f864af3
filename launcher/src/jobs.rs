//! Following jobs: status, list, stop, logs, wait, compare.
//!
//! Cost of a job = BillableTimeInSeconds × InstanceCount × on-demand rate; managed-spot
//! savings = 1 − Billable/Training (the DescribeTrainingJob API documentation's own formulas).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, Instant};

use aws_sdk_sagemaker::operation::describe_training_job::DescribeTrainingJobOutput;
use serde::Serialize;

use crate::aws::{explain, Clients, ErrorContext, ErrorKind};
use crate::catalogue::PriceTable;
use crate::clock::{now_epoch, utc_datetime};
use crate::format::{fmt_duration, fmt_usd, table};
use crate::redact::Redactor;

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

fn secs(d: Option<&aws_sdk_sagemaker::primitives::DateTime>) -> Option<f64> {
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

pub async fn describe(clients: &Clients, job: &str) -> Result<JobInfo, (ErrorKind, String)> {
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
pub async fn stop(clients: &Clients, job: &str) -> Result<StopOutcome, (ErrorKind, String)> {
    let ctx = ErrorContext {
        operation: "StopTrainingJob".into(),
        region: clients.region.clone(),
        job: Some(job.into()),
        ..Default::default()
    };
    match clients.sagemaker.stop_training_job().training_job_name(job).send().await {
        Ok(_) => Ok(StopOutcome::Requested),
        Err(e) => {
            let (kind, msg) = explain(&e, &ctx);
            if kind == ErrorKind::Validation {
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
            Err((kind, msg))
        }
    }
}

/// One parsed `METRIC key=value …` line.
pub fn parse_metric_line(line: &str) -> Option<BTreeMap<String, f64>> {
    let idx = line.find(&format!("{} ", trainer::report::METRIC_PREFIX))?;
    let rest = &line[idx + trainer::report::METRIC_PREFIX.len() + 1..];
    let mut m = BTreeMap::new();
    for tok in rest.split_whitespace() {
        if let Some((k, v)) = tok.split_once('=') {
            if let Ok(x) = v.parse::<f64>() {
                m.insert(k.to_string(), x);
            }
        }
    }
    m.contains_key("step").then_some(m)
}

/// Progress from metric lines: step / total, loss, ETA.
#[derive(Debug, Clone, Default)]
pub struct ProgressTracker {
    pub total_steps: Option<u64>,
    pub target_epochs: Option<f64>,
    first: Option<(u64, Instant)>,
    pub last: Option<BTreeMap<String, f64>>,
}

impl ProgressTracker {
    pub fn from_hyperparameters(hp: &BTreeMap<String, String>) -> Self {
        let spec = trainer::spec::JobSpec::from_hyperparameters(hp).ok();
        ProgressTracker {
            total_steps: spec.as_ref().and_then(|s| s.max_steps),
            target_epochs: spec.as_ref().map(|s| s.epochs),
            ..Default::default()
        }
    }

    /// Feed one log line; returns a progress text when it was a metric line.
    pub fn observe(&mut self, line: &str, now: Instant) -> Option<String> {
        let m = parse_metric_line(line)?;
        let step = m["step"] as u64;
        if self.first.is_none() {
            self.first = Some((step, now));
        }
        let total = self.total_steps.or_else(|| {
            let epoch = *m.get("epoch")?;
            let target = self.target_epochs?;
            (epoch > 0.0).then(|| ((step as f64) / epoch * target).round() as u64)
        });
        let mut s = match total {
            Some(t) => format!("step {step}/{t}"),
            None => format!("step {step}"),
        };
        if let Some(l) = m.get("loss") {
            s.push_str(&format!(" loss {l:.4}"));
        }
        if let Some(l) = m.get("eval_loss") {
            s.push_str(&format!(" eval_loss {l:.4}"));
        }
        if let (Some(t), Some((s0, t0))) = (total, self.first) {
            let done = step.saturating_sub(s0);
            let elapsed = now.duration_since(t0).as_secs_f64();
            if done > 0 && elapsed > 0.0 && t > step {
                s.push_str(&format!(" ETA {}", fmt_duration(elapsed / done as f64 * (t - step) as f64)));
            }
            if t > 0 {
                s.push_str(&format!(" ({:.0}%)", 100.0 * step as f64 / t as f64));
            }
        }
        self.last = Some(m);
        Some(s)
    }
}

/// Log streams of a job and where we are in each.
#[derive(Debug, Default)]
pub struct LogCursor {
    tokens: BTreeMap<String, Option<String>>,
    pub start_time_ms: Option<i64>,
}

impl LogCursor {
    /// Fetch every new event of every `<job>/` stream; returns (stream, message) in order per stream.
    pub async fn poll(&mut self, clients: &Clients, job: &str) -> Result<Vec<(String, String)>, String> {
        let ctx = ErrorContext {
            operation: "DescribeLogStreams".into(),
            region: clients.region.clone(),
            ..Default::default()
        };
        let mut next: Option<String> = None;
        loop {
            let res = clients
                .logs
                .describe_log_streams()
                .log_group_name(LOG_GROUP)
                .log_stream_name_prefix(format!("{job}/"))
                .set_next_token(next.clone())
                .send()
                .await;
            let page = match res {
                Ok(p) => p,
                Err(e) => {
                    let is_missing = e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception());
                    if is_missing {
                        return Ok(Vec::new()); // no logs yet
                    }
                    return Err(explain(&e, &ctx).1);
                }
            };
            for s in page.log_streams() {
                if let Some(n) = s.log_stream_name() {
                    self.tokens.entry(n.to_string()).or_insert(None);
                }
            }
            next = page.next_token().map(str::to_string);
            if next.is_none() {
                break;
            }
        }
        let mut out = Vec::new();
        let ctx =
            ErrorContext { operation: "GetLogEvents".into(), region: clients.region.clone(), ..Default::default() };
        let names: Vec<String> = self.tokens.keys().cloned().collect();
        for stream in names {
            loop {
                let token = self.tokens.get(&stream).cloned().flatten();
                let mut req = clients
                    .logs
                    .get_log_events()
                    .log_group_name(LOG_GROUP)
                    .log_stream_name(&stream)
                    .start_from_head(true);
                if let Some(t) = &token {
                    req = req.next_token(t);
                } else if let Some(st) = self.start_time_ms {
                    req = req.start_time(st);
                }
                let page = req.send().await.map_err(|e| explain(&e, &ctx).1)?;
                let n = page.events().len();
                for ev in page.events() {
                    out.push((stream.clone(), ev.message().unwrap_or_default().to_string()));
                }
                let new_token = page.next_forward_token().map(str::to_string);
                let same = new_token.is_none() || new_token == token;
                self.tokens.insert(stream.clone(), new_token.or(token));
                // CloudWatch returns the same forward token once the stream is drained.
                if same || n == 0 {
                    break;
                }
            }
        }
        Ok(out)
    }

    pub fn stream_count(&self) -> usize {
        self.tokens.len()
    }
}

fn host_of(stream: &str) -> &str {
    // <job>/algo-1-1700000000
    let tail = stream.rsplit('/').next().unwrap_or(stream);
    match tail.rfind('-') {
        Some(i)
            if tail[i + 1..].chars().all(|c| c.is_ascii_digit())
                && tail.starts_with("algo-")
                && tail[..i].len() > 5 =>
        {
            &tail[..i]
        }
        _ => tail,
    }
}

fn print_events(out: &mut dyn Write, events: &[(String, String)], multi: bool, redactor: &Redactor) {
    for (stream, msg) in events {
        let msg = redactor.redact(msg.trim_end_matches('\n'));
        if multi {
            let _ = writeln!(out, "[{}] {msg}", host_of(stream));
        } else {
            let _ = writeln!(out, "{msg}");
        }
    }
}

/// `oxtune logs JOB [-f]`: print the job's CloudWatch streams; with follow, until the job ends.
pub async fn logs(
    clients: &Clients,
    job: &str,
    follow: bool,
    since_ms: Option<i64>,
    poll: Duration,
    out: &mut dyn Write,
    redactor: &Redactor,
) -> Result<(), (ErrorKind, String)> {
    let mut cursor = LogCursor { start_time_ms: since_ms, ..Default::default() };
    loop {
        let info = if follow { Some(describe(clients, job).await?) } else { None };
        let events = cursor.poll(clients, job).await.map_err(|e| (ErrorKind::Other, e))?;
        print_events(out, &events, cursor.stream_count() > 1, redactor);
        let _ = out.flush();
        match info {
            None => break,
            Some(i) if i.is_terminal() => {
                // One last drain: the final lines may land after the status flips.
                let events = cursor.poll(clients, job).await.map_err(|e| (ErrorKind::Other, e))?;
                print_events(out, &events, cursor.stream_count() > 1, redactor);
                let _ = writeln!(out, "-- job {} is {} / {}", job, i.status, i.secondary_status);
                break;
            }
            Some(_) => tokio::time::sleep(poll).await,
        }
    }
    Ok(())
}

/// Exit codes of `oxtune wait`.
pub const WAIT_COMPLETED: i32 = 0;
pub const WAIT_FAILED: i32 = 1;
pub const WAIT_STOPPED: i32 = 2;
pub const WAIT_TIMEOUT: i32 = 3;

#[derive(Debug, Clone)]
pub struct WaitOptions {
    pub poll: Duration,
    pub timeout: Option<Duration>,
    pub show_logs: bool,
}

/// Poll until the job is Completed / Failed / Stopped (Stopping keeps polling, bounded by the
/// timeout), printing new status transitions and progress from the metric lines.
pub async fn wait(
    clients: &Clients,
    job: &str,
    opts: &WaitOptions,
    prices: &PriceTable,
    out: &mut dyn Write,
    redactor: &Redactor,
) -> Result<(i32, JobInfo), (ErrorKind, String)> {
    let started = Instant::now();
    let mut seen_transitions = 0usize;
    let mut cursor = LogCursor::default();
    let mut tracker: Option<ProgressTracker> = None;
    let mut last_progress = String::new();
    loop {
        let info = describe(clients, job).await?;
        if tracker.is_none() {
            tracker = Some(ProgressTracker::from_hyperparameters(&info.hyperparameters));
        }
        for t in info.transitions.iter().skip(seen_transitions) {
            let _ = writeln!(out, "[{}] {} {}", t.start.map(utc_datetime).unwrap_or_default(), t.status, t.message);
        }
        seen_transitions = info.transitions.len();
        // Logs and metric progress (best effort: a logs permission problem must not stop the wait).
        if let Ok(events) = cursor.poll(clients, job).await {
            if opts.show_logs {
                print_events(out, &events, cursor.stream_count() > 1, redactor);
            }
            if let Some(tr) = tracker.as_mut() {
                let now = Instant::now();
                let mut latest = None;
                for (_, line) in &events {
                    if let Some(p) = tr.observe(line, now) {
                        latest = Some(p);
                    }
                }
                if let Some(p) = latest {
                    if p != last_progress {
                        let _ = writeln!(out, "progress: {p}");
                        last_progress = p;
                    }
                }
            }
        }
        let _ = out.flush();
        if info.is_terminal() {
            let cost = job_cost(&info, prices, now_epoch());
            let code = match info.status.as_str() {
                "Completed" => WAIT_COMPLETED,
                "Failed" => WAIT_FAILED,
                _ => WAIT_STOPPED,
            };
            let _ = writeln!(out, "job {} finished: {} / {}", job, info.status, info.secondary_status);
            if let Some(r) = &info.failure_reason {
                let _ = writeln!(out, "failure reason: {r}");
            }
            if let (Some(t), Some(b)) = (info.training_seconds, info.billable_seconds) {
                let _ = writeln!(out, "training seconds: {t}, billable seconds: {b}");
            }
            if let Some(c) = &cost {
                let _ = writeln!(
                    out,
                    "cost: {}{}",
                    fmt_usd(c.usd),
                    c.spot_savings.map(|s| format!(" (managed spot saved {:.0}%)", s * 100.0)).unwrap_or_default()
                );
            }
            if code == WAIT_STOPPED {
                let why = match info.secondary_status.as_str() {
                    "MaxRuntimeExceeded" => "max runtime exceeded",
                    "MaxWaitTimeExceeded" => "spot max wait exceeded",
                    _ => "stopped",
                };
                let _ = writeln!(
                    out,
                    "note: the job was {why}; checkpoints (if any) are in {}",
                    info.checkpoint_uri.as_deref().unwrap_or("—")
                );
            }
            return Ok((code, info));
        }
        if let Some(t) = opts.timeout {
            if started.elapsed() >= t {
                let _ = writeln!(
                    out,
                    "timed out after {} waiting for {job} (still {} / {})",
                    fmt_duration(t.as_secs_f64()),
                    info.status,
                    info.secondary_status
                );
                return Ok((WAIT_TIMEOUT, info));
            }
        }
        tokio::time::sleep(opts.poll).await;
    }
}

/// Summaries for `list`.
#[derive(Debug, Clone, Serialize)]
pub struct ListRow {
    pub name: String,
    pub status: String,
    pub created: Option<f64>,
    pub instance: String,
    pub duration_seconds: Option<f64>,
    pub cost_usd: Option<f64>,
    pub cost_final: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<String>,
    pub name_contains: Option<String>,
    pub created_after: Option<f64>,
    pub max: usize,
    /// Describe each job for instance and cost (one extra call per job).
    pub details: bool,
}

pub async fn list(clients: &Clients, f: &ListFilter, prices: &PriceTable) -> Result<Vec<ListRow>, (ErrorKind, String)> {
    let ctx =
        ErrorContext { operation: "ListTrainingJobs".into(), region: clients.region.clone(), ..Default::default() };
    let mut rows = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut req = clients
            .sagemaker
            .list_training_jobs()
            .sort_by(aws_sdk_sagemaker::types::SortBy::CreationTime)
            .sort_order(aws_sdk_sagemaker::types::SortOrder::Descending)
            .max_results(100.min(f.max.max(1)) as i32)
            .set_next_token(next.clone());
        if let Some(s) = &f.status {
            req = req.status_equals(aws_sdk_sagemaker::types::TrainingJobStatus::from(s.as_str()));
        }
        if let Some(n) = &f.name_contains {
            req = req.name_contains(n);
        }
        if let Some(t) = f.created_after {
            req = req.creation_time_after(aws_sdk_sagemaker::primitives::DateTime::from_secs_f64(t));
        }
        let page = req.send().await.map_err(|e| explain(&e, &ctx))?;
        for s in page.training_job_summaries() {
            let start = secs(s.training_end_time()).and(secs(s.creation_time()));
            rows.push(ListRow {
                name: s.training_job_name().unwrap_or_default().to_string(),
                status: s.training_job_status().map(|x| x.as_str().to_string()).unwrap_or_default(),
                created: secs(s.creation_time()),
                instance: String::new(),
                duration_seconds: match (start, secs(s.training_end_time())) {
                    (Some(a), Some(b)) => Some(b - a),
                    _ => None,
                },
                cost_usd: None,
                cost_final: false,
            });
            if rows.len() >= f.max {
                break;
            }
        }
        next = page.next_token().map(str::to_string);
        if next.is_none() || rows.len() >= f.max {
            break;
        }
    }
    if f.details {
        let now = now_epoch();
        for r in rows.iter_mut() {
            if let Ok(info) = describe(clients, &r.name).await {
                r.instance = format!("{}×{}", info.instance_count, info.instance_type);
                r.duration_seconds = info.training_seconds.map(|t| t as f64).or(r.duration_seconds);
                if let Some(c) = job_cost(&info, prices, now) {
                    r.cost_usd = Some(c.usd);
                    r.cost_final = c.is_final;
                }
            }
        }
    }
    Ok(rows)
}

pub fn render_list(rows: &[ListRow]) -> String {
    if rows.is_empty() {
        return "no training jobs match\n".into();
    }
    let mut t = vec![vec![
        "name".to_string(),
        "status".into(),
        "created".into(),
        "instance".into(),
        "duration".into(),
        "cost".into(),
    ]];
    for r in rows {
        t.push(vec![
            r.name.clone(),
            r.status.clone(),
            r.created.map(utc_datetime).unwrap_or_default(),
            if r.instance.is_empty() { "—".into() } else { r.instance.clone() },
            r.duration_seconds.map(fmt_duration).unwrap_or_else(|| "—".into()),
            match r.cost_usd {
                Some(c) if r.cost_final => fmt_usd(c),
                Some(c) => format!("≤{}", fmt_usd(c)),
                None => "—".into(),
            },
        ]);
    }
    table(&t)
}

/// Side-by-side comparison: rows of (label, values per job, differ?).
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub jobs: Vec<String>,
    pub rows: Vec<ComparisonRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComparisonRow {
    pub section: String,
    pub key: String,
    pub values: Vec<Option<String>>,
    pub differs: bool,
}

pub fn compare(infos: &[JobInfo], prices: &PriceTable) -> Comparison {
    let mut rows = Vec::new();
    let mut push = |section: &str, key: &str, values: Vec<Option<String>>| {
        let distinct: BTreeSet<_> = values.iter().collect();
        rows.push(ComparisonRow { section: section.into(), key: key.into(), differs: distinct.len() > 1, values });
    };
    let now = now_epoch();
    push("job", "status", infos.iter().map(|i| Some(format!("{}/{}", i.status, i.secondary_status))).collect());
    push("job", "instance", infos.iter().map(|i| Some(format!("{}×{}", i.instance_count, i.instance_type))).collect());
    push("job", "spot", infos.iter().map(|i| Some(i.spot.to_string())).collect());
    push("job", "billable_seconds", infos.iter().map(|i| i.billable_seconds.map(|b| b.to_string())).collect());
    push("job", "cost", infos.iter().map(|i| job_cost(i, prices, now).map(|c| fmt_usd(c.usd))).collect());
    let hp_keys: BTreeSet<&String> = infos.iter().flat_map(|i| i.hyperparameters.keys()).collect();
    for k in hp_keys {
        push("hyperparameter", k, infos.iter().map(|i| i.hyperparameters.get(k).cloned()).collect());
    }
    let metric_keys: BTreeSet<&String> = infos.iter().flat_map(|i| i.final_metrics.keys()).collect();
    for k in metric_keys {
        push("metric", k, infos.iter().map(|i| i.final_metrics.get(k).map(|v| format!("{v}"))).collect());
    }
    Comparison { jobs: infos.iter().map(|i| i.name.clone()).collect(), rows }
}

pub fn render_comparison(c: &Comparison) -> String {
    let mut t = vec![std::iter::once(String::new())
        .chain(std::iter::once("".to_string()))
        .chain(c.jobs.iter().cloned())
        .collect::<Vec<_>>()];
    let mut section = String::new();
    for r in &c.rows {
        if r.section != section {
            section = r.section.clone();
        }
        let mut row = vec![if r.differs { "≠".to_string() } else { " ".into() }, format!("{}.{}", r.section, r.key)];
        row.extend(r.values.iter().map(|v| v.clone().unwrap_or_else(|| "—".into())));
        t.push(row);
    }
    let mut s = table(&t);
    s.push_str("≠ marks rows that differ between the jobs\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lines_and_progress() {
        let m = parse_metric_line(
            "2026-01-01 METRIC step=120 epoch=0.40 loss=1.8123 lr=1.9e-4 grad_norm=0.74 tokens_per_sec=15210",
        )
        .unwrap();
        assert_eq!(m["step"], 120.0);
        assert_eq!(m["lr"], 1.9e-4);
        assert!(parse_metric_line("loading model").is_none());

        let hp: BTreeMap<String, String> = [("epochs".to_string(), "2".to_string())].into();
        let mut tr = ProgressTracker::from_hyperparameters(&hp);
        let t0 = Instant::now();
        let p = tr.observe("METRIC step=10 epoch=0.10 loss=2.5", t0).unwrap();
        assert_eq!(p, "step 10/200 loss 2.5000 (5%)");
        let p = tr.observe("METRIC step=20 epoch=0.20 loss=2.0", t0 + Duration::from_secs(100)).unwrap();
        // 10 steps in 100 s → 180 remaining steps = 1800 s.
        assert_eq!(p, "step 20/200 loss 2.0000 ETA 30m 00s (10%)");
    }

    #[test]
    fn host_names() {
        assert_eq!(host_of("job/algo-1-1700000000"), "algo-1");
        assert_eq!(host_of("job/algo-12-1700000000"), "algo-12");
    }
}
