//! Following a running job: its CloudWatch log streams (`logs`), progress from its METRIC lines,
//! and `wait` until it ends.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use super::{describe, job_cost, JobInfo, LOG_GROUP};
use crate::aws::{explain, Clients, ErrorContext};
use crate::catalogue::PriceTable;
use crate::clock::{now_epoch, utc_datetime};
use crate::error::Error;
use crate::format::{fmt_duration, fmt_usd};
use crate::redact::Redactor;

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
    pub async fn poll(&mut self, clients: &Clients, job: &str) -> Result<Vec<(String, String)>, Error> {
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
                    return Err(explain(&e, &ctx));
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
                let page = req.send().await.map_err(|e| explain(&e, &ctx))?;
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
) -> Result<(), Error> {
    let mut cursor = LogCursor { start_time_ms: since_ms, ..Default::default() };
    loop {
        let info = if follow { Some(describe(clients, job).await?) } else { None };
        let events = cursor.poll(clients, job).await?;
        print_events(out, &events, cursor.stream_count() > 1, redactor);
        let _ = out.flush();
        match info {
            None => break,
            Some(i) if i.is_terminal() => {
                // One last drain: the final lines may land after the status flips.
                let events = cursor.poll(clients, job).await?;
                print_events(out, &events, cursor.stream_count() > 1, redactor);
                let _ = writeln!(out, "-- job {} is {} / {}", job, i.status, i.secondary_status);
                break;
            }
            Some(_) => tokio::time::sleep(poll).await,
        }
    }
    Ok(())
}

/// How a wait ended (the CLI turns it into its exit code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEnd {
    Completed,
    Failed,
    /// Stopped: StopTrainingJob, max runtime or spot max wait exceeded.
    Stopped,
    /// The wait's timeout passed with the job still running.
    TimedOut,
}

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
) -> Result<(JobEnd, JobInfo), Error> {
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
            let end = match info.status.as_str() {
                "Completed" => JobEnd::Completed,
                "Failed" => JobEnd::Failed,
                _ => JobEnd::Stopped,
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
            if end == JobEnd::Stopped {
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
            return Ok((end, info));
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
                return Ok((JobEnd::TimedOut, info));
            }
        }
        tokio::time::sleep(opts.poll).await;
    }
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
