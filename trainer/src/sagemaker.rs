//! The SageMaker `/opt/ml` container contract: paths, channels, config files,
//! the failure file, exit codes and the stop signal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Deserialize;

/// Environment variable that overrides the `/opt/ml` root (tests, local runs).
pub const ROOT_ENV: &str = "OXTUNE_ML_ROOT";
/// The SageMaker training toolkit's name for the same override; honoured too.
pub const TOOLKIT_ROOT_ENV: &str = "SAGEMAKER_BASE_DIR";
/// What `key` is set to in `env` (the process environment, passed as a list so tests can set
/// it; a later entry overrides an earlier one).
pub fn env_value<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// SageMaker shows the first 1024 characters of the failure file as FailureReason.
pub const FAILURE_REASON_MAX: usize = 1024;

/// Process exit codes. SageMaker marks any non-zero exit as Failed (or Stopped after StopTrainingJob).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Success = 0,
    /// A bug or an environment problem (out of memory, disk full, I/O).
    Internal = 1,
    /// Bad hyperparameters, data, model files or channels: the user must change the job.
    BadInput = 2,
    /// SIGTERM/SIGINT (stop, max runtime, spot): a checkpoint was written; rerun to resume.
    Interrupted = 143,
}

#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("cannot read {path}: {problem}")]
    Config { path: PathBuf, problem: String },
    #[error("channel `{channel}` uses TrainingInputMode Pipe, which this trainer does not read; use File or FastFile")]
    PipeMode { channel: String },
    #[error(
        "no training data: channel `train` (or `training`) is missing under {dir}; give the job a `train` channel"
    )]
    MissingTrainChannel { dir: PathBuf },
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the job has {} test channels ({}); give exactly one of them", names.len(), names.join(", "))]
    AmbiguousTestChannel { names: Vec<String> },
}

/// The names the test channel is accepted under, `test` first.
pub const TEST_CHANNELS: &[&str] = &["test", "inference_testing", "testing", "evaluation"];

impl ContractError {
    pub fn is_user_error(&self) -> bool {
        !matches!(self, ContractError::Io { .. })
    }
}

/// Paths of one job under its root (normally `/opt/ml`).
#[derive(Debug, Clone)]
pub struct MlPaths {
    pub root: PathBuf,
}

impl MlPaths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        MlPaths { root: root.into() }
    }

    /// `--ml-root` if given, else `OXTUNE_ML_ROOT`, else `SAGEMAKER_BASE_DIR`, else `/opt/ml`.
    pub fn from_env(cli_root: Option<PathBuf>) -> Self {
        let root = cli_root
            .or_else(|| std::env::var_os(ROOT_ENV).map(PathBuf::from))
            .or_else(|| std::env::var_os(TOOLKIT_ROOT_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/opt/ml"));
        MlPaths { root }
    }

    pub fn config_dir(&self) -> PathBuf {
        self.root.join("input/config")
    }
    pub fn hyperparameters(&self) -> PathBuf {
        self.config_dir().join("hyperparameters.json")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("input/data")
    }
    pub fn channel(&self, name: &str) -> PathBuf {
        self.data_dir().join(name)
    }
    pub fn model_dir(&self) -> PathBuf {
        self.root.join("model")
    }
    /// `output/`: what SageMaker packs as output.tar.gz (`data/`) and the `failure` file.
    pub fn output_dir(&self) -> PathBuf {
        self.root.join("output")
    }
    pub fn output_data_dir(&self) -> PathBuf {
        self.root.join("output/data")
    }
    pub fn failure_file(&self) -> PathBuf {
        self.root.join("output/failure")
    }
    /// `checkpointconfig.json`'s LocalPath when present, else `<root>/checkpoints`.
    pub fn checkpoint_dir(&self) -> PathBuf {
        let cfg = self.config_dir().join("checkpointconfig.json");
        if let Ok(text) = std::fs::read_to_string(&cfg) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                if let Some(p) = v.get("LocalPath").and_then(|p| p.as_str()) {
                    // Only honour it when it lives under our root; otherwise tests with a temp root would write to /opt/ml.
                    let p = PathBuf::from(p);
                    if p.starts_with(&self.root) || self.root == Path::new("/opt/ml") {
                        return p;
                    }
                }
            }
        }
        self.root.join("checkpoints")
    }

    /// The training channel: `train`, or SageMaker's other common name `training`.
    pub fn train_channel(&self) -> Result<PathBuf, ContractError> {
        for name in ["train", "training"] {
            let p = self.channel(name);
            if p.exists() {
                return Ok(p);
            }
        }
        Err(ContractError::MissingTrainChannel { dir: self.data_dir() })
    }

    /// The held-out test channel: `test`, or the names users give it (`inference_testing`, `testing`,
    /// `evaluation`). Two of them at once is ambiguous and refused.
    pub fn test_channel(&self) -> Result<Option<PathBuf>, ContractError> {
        let found: Vec<&str> = TEST_CHANNELS.iter().copied().filter(|n| self.channel(n).exists()).collect();
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(self.channel(one))),
            many => Err(ContractError::AmbiguousTestChannel { names: many.iter().map(|s| s.to_string()).collect() }),
        }
    }

    /// An optional channel (`validation`, `model`).
    pub fn optional_channel(&self, name: &str) -> Option<PathBuf> {
        let p = self.channel(name);
        p.exists().then_some(p)
    }

    /// Create the output directories SageMaker would have created.
    pub fn ensure_output_dirs(&self) -> Result<(), ContractError> {
        for d in [self.model_dir(), self.output_data_dir(), self.checkpoint_dir()] {
            std::fs::create_dir_all(&d).map_err(|source| ContractError::Io { path: d.clone(), source })?;
        }
        Ok(())
    }

    /// Write the failure file: reason first (SageMaker shows 1024 chars), details after.
    pub fn write_failure(&self, reason: &str, details: &str) -> std::io::Result<()> {
        let path = self.failure_file();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut text = truncate_chars(reason.trim(), FAILURE_REASON_MAX);
        if !details.trim().is_empty() {
            text.push_str("\n\n");
            text.push_str(details.trim());
        }
        text.push('\n');
        std::fs::write(path, text)
    }

    /// A failure file left by a previous attempt (e.g. an interrupted run) is removed at start.
    pub fn clear_stale_failure(&self) {
        let _ = std::fs::remove_file(self.failure_file());
    }
}

pub fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct ChannelConfig {
    #[serde(rename = "TrainingInputMode", default)]
    pub input_mode: Option<String>,
    #[serde(rename = "ContentType", default)]
    pub content_type: Option<String>,
    #[serde(rename = "S3DistributionType", default)]
    pub distribution: Option<String>,
}

/// `inputdataconfig.json`: channel name → settings. Missing file = no declared channels (local runs).
pub fn read_input_data_config(paths: &MlPaths) -> Result<BTreeMap<String, ChannelConfig>, ContractError> {
    let path = paths.config_dir().join("inputdataconfig.json");
    let Some(map) = read_json_opt::<BTreeMap<String, ChannelConfig>>(&path)? else {
        return Ok(BTreeMap::new());
    };
    for (name, cfg) in &map {
        if cfg.input_mode.as_deref().is_some_and(|m| m.eq_ignore_ascii_case("pipe")) {
            return Err(ContractError::PipeMode { channel: name.clone() });
        }
    }
    Ok(map)
}

#[derive(Debug, Clone, Deserialize)]
pub struct ResourceConfig {
    pub current_host: String,
    pub hosts: Vec<String>,
    #[serde(default)]
    pub current_instance_type: Option<String>,
    #[serde(default)]
    pub network_interface_name: Option<String>,
}

impl Default for ResourceConfig {
    fn default() -> Self {
        ResourceConfig {
            current_host: "algo-1".into(),
            hosts: vec!["algo-1".into()],
            current_instance_type: None,
            network_interface_name: None,
        }
    }
}

impl ResourceConfig {
    /// Rank of this host in the sorted host list (SageMaker sorts them); 0 = writes the model.
    pub fn host_rank(&self) -> usize {
        let mut hosts = self.hosts.clone();
        hosts.sort();
        hosts.iter().position(|h| h == &self.current_host).unwrap_or(0)
    }
}

/// `resourceconfig.json`; missing → one host `algo-1`.
pub fn read_resource_config(paths: &MlPaths) -> Result<ResourceConfig, ContractError> {
    let path = paths.config_dir().join("resourceconfig.json");
    Ok(read_json_opt(&path)?.unwrap_or_default())
}

fn read_json_opt<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, ContractError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ContractError::Config { path: path.to_path_buf(), problem: e.to_string() }),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ContractError::Config { path: path.to_path_buf(), problem: format!("invalid JSON: {e}") })
}

/// Set by SIGTERM/SIGINT; the training loop checks it at every micro-step and checkpoints.
#[derive(Debug, Clone)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// Install handlers. As PID 1 in a container the default action is ignored, so a handler is required.
    pub fn install() -> std::io::Result<StopFlag> {
        let flag = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&flag))?;
        signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&flag))?;
        Ok(StopFlag(flag))
    }

    /// A flag not wired to signals (tests, library use).
    pub fn manual() -> StopFlag {
        StopFlag(Arc::new(AtomicBool::new(false)))
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reason_is_truncated_to_1024_chars() {
        let dir = tempfile::tempdir().unwrap();
        let paths = MlPaths::new(dir.path());
        let long = "x".repeat(3000);
        paths.write_failure(&long, "details").unwrap();
        let text = std::fs::read_to_string(paths.failure_file()).unwrap();
        let first = text.lines().next().unwrap();
        assert_eq!(first.chars().count(), FAILURE_REASON_MAX);
        assert!(text.contains("details"));
    }

    #[test]
    fn pipe_mode_is_refused_and_hosts_ranked() {
        let dir = tempfile::tempdir().unwrap();
        let paths = MlPaths::new(dir.path());
        std::fs::create_dir_all(paths.config_dir()).unwrap();
        std::fs::write(paths.config_dir().join("inputdataconfig.json"), r#"{"train":{"TrainingInputMode":"Pipe"}}"#)
            .unwrap();
        let err = read_input_data_config(&paths).unwrap_err();
        assert!(err.to_string().contains("Pipe"));
        std::fs::write(
            paths.config_dir().join("resourceconfig.json"),
            r#"{"current_host":"algo-2","hosts":["algo-2","algo-1"]}"#,
        )
        .unwrap();
        assert_eq!(read_resource_config(&paths).unwrap().host_rank(), 1);
    }
}
