//! Experiment tracking in MLflow, from `train` itself: a job whose environment has
//! `MLFLOW_TRACKING_URI` logs one run — its resolved hyperparameters as params, fingerprints and
//! version as tags, every `METRIC` value with its step, the evaluation scores, and the adapter
//! config and loss curve as artifacts where the server takes them.
//!
//! Tracking never fails or slows a job: a background thread talks to the server, buffers what it
//! could not deliver and retries with backoff; the first failure is one warning; at the end of the
//! job it waits at most `finish_wait` (20 s; `OXTUNE_MLFLOW_FINISH_WAIT`) for what is left. A restarted job (spot, SIGTERM) continues
//! the run named in [`RUN_FILE`] beside the checkpoints instead of starting a second one.

pub mod mlflow;
pub mod sigv4;
pub mod target;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::report::MetricRecord;
use mlflow::{ApiError, Client, Metric, RunInfo};
use target::Target;

/// Beside the checkpoints (and synced to S3 with them): the run a restarted job continues.
pub const RUN_FILE: &str = "mlflow-run.json";
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How the run ended, as MLflow's run status.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RunEnd {
    Finished,
    Failed,
    /// Stopped by SIGTERM (it resumes from its checkpoint).
    Killed,
}

impl RunEnd {
    fn status(self) -> &'static str {
        match self {
            RunEnd::Finished => "FINISHED",
            RunEnd::Failed => "FAILED",
            RunEnd::Killed => "KILLED",
        }
    }
}

/// What a run starts with.
pub struct RunSetup {
    pub params: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
    pub checkpoint_dir: PathBuf,
}

enum Msg {
    Metrics(Vec<Metric>),
    Artifact(String, Vec<u8>),
    End(RunEnd),
}

/// The job's side of tracking: cheap calls that hand values to the tracking thread.
pub struct Tracker {
    tx: Option<Sender<Msg>>,
    worker: Option<JoinHandle<()>>,
    /// History records handed over so far.
    sent: AtomicUsize,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Hyperparameter names that may hold a secret (the words SageMaker's toolkit hides): never logged.
pub fn is_secret(name: &str) -> bool {
    const WORDS: [&str; 7] = ["secret", "password", "key", "token", "private", "creds", "credentials"];
    name.to_ascii_lowercase().split(['_', '-', '.']).any(|w| WORDS.contains(&w))
}

impl Tracker {
    /// No tracking (no `MLFLOW_TRACKING_URI`, or not rank 0).
    pub fn off() -> Tracker {
        Tracker { tx: None, worker: None, sent: AtomicUsize::new(0) }
    }

    pub fn start(target: Target, setup: RunSetup) -> Tracker {
        tracing::info!(
            "Tracking in MLflow at {} (experiment `{}`, run `{}`)",
            target.uri,
            target.experiment,
            target.run_name
        );
        let (tx, rx) = channel();
        let worker = std::thread::Builder::new()
            .name("mlflow".into())
            .spawn(move || Worker::new(target, setup).run(rx))
            .map_err(|e| tracing::warn!("MLflow tracking is off: cannot start its thread ({e})"))
            .ok();
        Tracker { tx: worker.as_ref().map(|_| tx), worker, sent: AtomicUsize::new(0) }
    }

    fn send(&self, m: Msg) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(m);
        }
    }

    /// The first `n` records of the history were logged by the attempt that wrote the checkpoint
    /// this job resumes from.
    pub fn skip_history(&self, n: usize) {
        self.sent.store(n, Ordering::Relaxed);
    }

    /// Hands over the records of `history` not handed over yet.
    pub fn history(&self, history: &[MetricRecord]) {
        let from = self.sent.swap(history.len(), Ordering::Relaxed);
        if self.tx.is_none() || from >= history.len() {
            return;
        }
        let at = now_ms();
        let metrics: Vec<Metric> = history[from..].iter().flat_map(|r| record_metrics(r, at)).collect();
        self.send(Msg::Metrics(metrics));
    }

    /// Values logged once at `step` (the evaluation scores).
    pub fn values(&self, step: u64, values: &BTreeMap<String, f64>) {
        let at = now_ms();
        let metrics = values.iter().filter_map(|(k, v)| metric(k, *v, step, at)).collect();
        self.send(Msg::Metrics(metrics));
    }

    /// A file for the run's artifacts (skipped where the server takes none).
    pub fn artifact(&self, path: &Path) {
        if self.tx.is_none() {
            return;
        }
        match std::fs::read(path) {
            Ok(bytes) => {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                self.send(Msg::Artifact(name, bytes));
            }
            Err(e) => tracing::warn!("MLflow: cannot read artifact {}: {e}", path.display()),
        }
    }

    /// Ends the run and waits (at most the target's `finish_wait`) for the thread to deliver what it holds.
    pub fn end(mut self, how: RunEnd) {
        self.finish(how);
    }

    fn finish(&mut self, how: RunEnd) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Msg::End(how));
        }
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Tracker {
    /// A job that returns early (an error) leaves a failed run, not a running one.
    fn drop(&mut self) {
        self.finish(RunEnd::Failed);
    }
}

fn metric(key: &str, value: f64, step: u64, timestamp_ms: u64) -> Option<Metric> {
    // JSON has no NaN or infinity: such a value is left out (the METRIC line shows it).
    value.is_finite().then(|| Metric { key: key.to_string(), value, step, timestamp_ms })
}

/// A METRIC record's values, keyed as on the METRIC line.
fn record_metrics(r: &MetricRecord, at: u64) -> Vec<Metric> {
    let mut out = Vec::new();
    let mut push = |k: &str, v: Option<f64>| {
        if let Some(m) = v.and_then(|v| metric(k, v, r.step, at)) {
            out.push(m);
        }
    };
    push("epoch", Some(r.epoch));
    push("loss", r.loss);
    push("lr", r.lr);
    push("grad_norm", r.grad_norm);
    push("tokens_per_sec", r.tokens_per_sec);
    push("eval_loss", r.eval_loss);
    for (k, v) in &r.extra {
        push(k, Some(*v));
    }
    out
}

/// The tracking thread: the run, what is still to deliver, and how it last went.
struct Worker {
    target: Target,
    client: Client,
    /// Where the run file lives.
    checkpoint_dir: PathBuf,
    run: Option<RunInfo>,
    /// Params (and tags) still to log.
    params: Vec<(String, String)>,
    tags: Vec<(String, String)>,
    metrics: VecDeque<Metric>,
    artifacts: VecDeque<(String, Vec<u8>)>,
    end: Option<RunEnd>,
    warned: bool,
    skipped_artifacts: bool,
}

impl Worker {
    fn new(target: Target, setup: RunSetup) -> Worker {
        let client = Client::new(&target);
        let RunSetup { params, tags, checkpoint_dir } = setup;
        let params = params
            .into_iter()
            .filter(|(k, _)| !is_secret(k))
            .map(|(k, v)| (k, v.chars().take(mlflow::MAX_PARAM_VALUE).collect()))
            .collect();
        Worker {
            target,
            client,
            checkpoint_dir,
            run: None,
            params,
            tags,
            metrics: VecDeque::new(),
            artifacts: VecDeque::new(),
            end: None,
            warned: false,
            skipped_artifacts: false,
        }
    }

    fn take(&mut self, m: Msg) {
        match m {
            Msg::Metrics(v) => self.metrics.extend(v),
            Msg::Artifact(name, bytes) => self.artifacts.push_back((name, bytes)),
            Msg::End(how) => self.end = Some(how),
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        let mut backoff = Duration::from_secs(1);
        let mut wait: Option<Duration> = None;
        let mut deadline: Option<Instant> = None;
        loop {
            let got = match wait {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(d) => rx.recv_timeout(d),
            };
            match got {
                Ok(m) => self.take(m),
                Err(RecvTimeoutError::Disconnected) if self.end.is_none() => self.end = Some(RunEnd::Failed),
                Err(_) => {}
            }
            while let Ok(m) = rx.try_recv() {
                self.take(m);
            }
            if self.end.is_some() && deadline.is_none() {
                deadline = Some(Instant::now() + self.target.finish_wait);
            }
            match self.deliver() {
                Ok(true) => return,
                Ok(false) => {
                    backoff = Duration::from_secs(1);
                    wait = None;
                }
                Err(e) => {
                    if !self.warned {
                        self.warned = true;
                        tracing::warn!(
                            "MLflow tracking at {}: {e}. The job goes on; metrics are kept and sent again with backoff",
                            self.target.uri
                        );
                    }
                    if let Some(d) = deadline {
                        let left = d.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            tracing::info!(
                                "MLflow: {} metric value(s) and {} artifact(s) were not delivered to {}",
                                self.metrics.len(),
                                self.artifacts.len(),
                                self.target.uri
                            );
                            return;
                        }
                        wait = Some(backoff.min(left));
                    } else {
                        wait = Some(backoff);
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Sends everything held; `Ok(true)` once the run's end is recorded.
    fn deliver(&mut self) -> Result<bool, ApiError> {
        if self.run.is_none() {
            self.run = Some(self.open_run()?);
        }
        let run_id = self.run.as_ref().map(|r| r.run_id.clone()).unwrap_or_default();
        let artifact_uri = self.run.as_ref().map(|r| r.artifact_uri.clone()).unwrap_or_default();
        while !self.params.is_empty() || !self.tags.is_empty() {
            let (np, nt) = (self.params.len().min(mlflow::MAX_PARAMS), self.tags.len().min(mlflow::MAX_TAGS));
            self.client.log_batch(&run_id, &[], &self.params[..np], &self.tags[..nt])?;
            self.params.drain(..np);
            self.tags.drain(..nt);
        }
        while !self.metrics.is_empty() {
            let n = self.metrics.len().min(mlflow::MAX_METRICS);
            let chunk: Vec<Metric> = self.metrics.iter().take(n).cloned().collect();
            self.client.log_batch(&run_id, &chunk, &[], &[])?;
            self.metrics.drain(..n);
        }
        while let Some((name, bytes)) = self.artifacts.front() {
            if !self.client.upload_artifact(&artifact_uri, name, bytes)? && !self.skipped_artifacts {
                self.skipped_artifacts = true;
                tracing::info!("MLflow: the run's artifacts live at {artifact_uri}, which this server does not take uploads for: artifacts skipped");
            }
            self.artifacts.pop_front();
        }
        match self.end {
            Some(how) => {
                self.client.update_run(&run_id, how.status(), Some(now_ms()))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The run of an earlier attempt of this job (its run file), or a new one.
    fn open_run(&mut self) -> Result<RunInfo, ApiError> {
        let file = self.checkpoint_dir.join(RUN_FILE);
        if let Some(id) = saved_run(&file, &self.target.uri) {
            match self.client.get_run(&id) {
                Ok(run) => {
                    self.client.update_run(&run.run_id, "RUNNING", None)?;
                    self.keep_logged_params(&run);
                    tracing::info!("MLflow: continuing run {} (from {})", run.run_id, file.display());
                    return Ok(run);
                }
                Err(e) if e.not_found() => {
                    tracing::info!("MLflow: run {id} of {} is gone from the server: starting a new run", file.display())
                }
                Err(e) => return Err(e),
            }
        }
        let experiment = self.client.experiment_id(&self.target.experiment)?;
        let run = self.client.create_run(&experiment, &self.target.run_name, now_ms(), &[])?;
        let record =
            serde_json::json!({ "tracking_uri": self.target.uri, "experiment_id": experiment, "run_id": run.run_id });
        let written =
            std::fs::create_dir_all(&self.checkpoint_dir).and_then(|_| std::fs::write(&file, record.to_string()));
        if let Err(e) = written {
            tracing::warn!(
                "MLflow: cannot record run {} in {} ({e}): a restarted job would start a new run",
                run.run_id,
                file.display()
            );
        }
        tracing::info!("MLflow: run {} in experiment {experiment}", run.run_id);
        Ok(run)
    }

    /// A resumed run keeps the params it has (MLflow refuses to change one); a value that differs
    /// now (e.g. gradient_accumulation_steps on another world size) becomes tag `oxtune.resumed.KEY`.
    fn keep_logged_params(&mut self, run: &RunInfo) {
        let logged: BTreeMap<&str, &str> = run.params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut kept = Vec::new();
        for (k, v) in std::mem::take(&mut self.params) {
            match logged.get(k.as_str()) {
                None => kept.push((k, v)),
                Some(old) if *old == v => {}
                Some(_) => self.tags.push((format!("oxtune.resumed.{k}"), v)),
            }
        }
        self.params = kept;
    }
}

/// The run id in `file`, when it was recorded for the same tracking URI.
fn saved_run(file: &Path, uri: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()?;
    (v["tracking_uri"].as_str() == Some(uri)).then(|| v["run_id"].as_str().map(str::to_string)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_never_params() {
        for k in ["hf_token", "api_key", "db_password", "aws_secret_access_key", "private-creds"] {
            assert!(is_secret(k), "{k}");
        }
        for k in ["max_new_tokens", "lora_r", "learning_rate", "keyword_reward", "monkey"] {
            assert!(!is_secret(k), "{k}");
        }
    }

    #[test]
    fn records_become_metrics_with_their_step() {
        let mut r =
            MetricRecord { step: 7, epoch: 0.5, loss: Some(1.25), eval_loss: Some(f64::NAN), ..Default::default() };
        r.extra.insert("reward".into(), 0.75);
        let m = record_metrics(&r, 9);
        let keys: Vec<(&str, f64, u64)> = m.iter().map(|m| (m.key.as_str(), m.value, m.step)).collect();
        assert_eq!(keys, [("epoch", 0.5, 7), ("loss", 1.25, 7), ("reward", 0.75, 7)]);
    }
}
