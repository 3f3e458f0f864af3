//! The job file (TOML) and the flags that override it, resolved into one [`Job`].
//!
//! ```toml
//! name = "llama32-1b-sft"          # base name; the SageMaker job is <name>-<UTC yyyymmdd-hhmmss>
//! pass_env = ["HF_TOKEN"]          # copied from your shell at submit time, never printed
//!
//! [sagemaker]
//! image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/oxtune:0.1.0"
//! role = "arn:aws:iam::123456789012:role/SageMakerTraining"
//! region = "us-east-1"
//! instance_type = "ml.g6e.xlarge"
//! max_runtime = "6h"
//! output_path = "s3://my-bucket/oxtune"
//!
//! [hyperparameters]
//! method = "lora"
//! epochs = 2
//!
//! [channels]
//! train = "data/train.jsonl"       # local path: uploaded; or an s3:// URI
//! ```

use crate::error::Error;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::format::parse_duration;

/// Default MaxRuntime when neither file nor flag gives one (the API's own default, 1 day).
pub const DEFAULT_MAX_RUNTIME_S: u64 = 86_400;
pub const DEFAULT_VOLUME_GB: u32 = 50;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    pub name: Option<String>,
    #[serde(default)]
    pub pass_env: Vec<String>,
    #[serde(default)]
    pub sagemaker: SageMakerSection,
    #[serde(default)]
    pub hyperparameters: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelSpec>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    #[serde(default)]
    pub estimate: EstimateSection,
    /// Experiment tracking: the job logs to this MLflow server (README "Experiment tracking").
    pub mlflow: Option<MlflowSection>,
}

/// `[mlflow]`: `uri` = `http(s)://…` or a SageMaker MLflow ARN; `experiment` (default: the job's base name).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlflowSection {
    pub uri: String,
    pub experiment: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SageMakerSection {
    pub image: Option<String>,
    pub role: Option<String>,
    pub region: Option<String>,
    pub profile: Option<String>,
    pub instance_type: Option<String>,
    pub instance_count: Option<u32>,
    pub volume_gb: Option<u32>,
    pub max_runtime: Option<DurationValue>,
    pub spot: Option<bool>,
    pub max_wait: Option<DurationValue>,
    pub output_path: Option<String>,
    pub checkpoint_s3_uri: Option<String>,
    /// Where local channels are uploaded; default `<output_path>/<name>/input`.
    pub input_prefix: Option<String>,
    pub keep_alive: Option<DurationValue>,
    pub max_retry_attempts: Option<u32>,
    pub input_mode: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Train for `oxtune deploy`: merge_adapter=true and the model uploaded uncompressed.
    pub deployable: Option<bool>,
}

/// `"6h"` or a number of seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DurationValue {
    Seconds(u64),
    Text(String),
}

impl DurationValue {
    pub fn seconds(&self, field: &str) -> Result<u64, Error> {
        match self {
            DurationValue::Seconds(s) => Ok(*s),
            DurationValue::Text(t) => {
                parse_duration(t).map(|d| d.as_secs()).map_err(|e| Error::Invalid(format!("{field}: {e}")))
            }
        }
    }
}

/// A channel: a path or URI, or a table with options.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ChannelSpec {
    Source(String),
    Detailed(ChannelOptions),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelOptions {
    pub source: String,
    pub content_type: Option<String>,
    /// File | FastFile (Pipe is not read by the trainer).
    pub input_mode: Option<String>,
    /// FullyReplicated | ShardedByS3Key.
    pub distribution: Option<String>,
    /// None | Gzip.
    pub compression: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EstimateSection {
    /// Catalogue name or path of a config.json for `estimate`/`--max-cost` when base_model is not enough.
    pub model: Option<String>,
    /// Training tokens per epoch, when the train channel is not a local file.
    pub tokens: Option<u64>,
}

/// Where a channel's data is.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    S3(String),
    Local(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Channel {
    pub name: String,
    pub source: Source,
    pub content_type: Option<String>,
    pub input_mode: Option<String>,
    pub distribution: String,
    pub compression: Option<String>,
}

/// Flags that override the job file (shared by `submit`, `local` and `estimate`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Base name of the job (the SageMaker job name gets a UTC timestamp suffix unless --exact-name).
    #[arg(long)]
    pub name: Option<String>,
    /// Use --name as the training job name exactly (no timestamp suffix).
    #[arg(long)]
    pub exact_name: bool,
    /// Training image URI (ECR).
    #[arg(long)]
    pub image: Option<String>,
    /// SageMaker execution role ARN.
    #[arg(long)]
    pub role: Option<String>,
    #[arg(long)]
    pub instance_type: Option<String>,
    #[arg(long)]
    pub instance_count: Option<u32>,
    #[arg(long)]
    pub volume_gb: Option<u32>,
    /// Max runtime, e.g. 6h (default 24h with a warning).
    #[arg(long)]
    pub max_runtime: Option<String>,
    /// Use managed spot capacity.
    #[arg(long, overrides_with = "no_spot")]
    pub spot: bool,
    #[arg(long, overrides_with = "spot")]
    pub no_spot: bool,
    /// Spot: max wait including interruptions (≥ max runtime; default 2 × max runtime).
    #[arg(long)]
    pub max_wait: Option<String>,
    /// S3 output path, e.g. s3://bucket/oxtune.
    #[arg(long)]
    pub output_path: Option<String>,
    /// Checkpoint S3 URI (default <output_path>/<job>/checkpoints).
    #[arg(long)]
    pub checkpoint_s3_uri: Option<String>,
    /// Warm-pool keep-alive, e.g. 10m (0–6h).
    #[arg(long)]
    pub keep_alive: Option<String>,
    /// Hyperparameter override KEY=VALUE (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Channel NAME=PATH_OR_S3_URI (repeatable).
    #[arg(long = "channel", value_name = "NAME=SOURCE")]
    pub channel: Vec<String>,
    /// Container environment KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Copy this variable from your environment into the job (repeatable), e.g. HF_TOKEN.
    #[arg(long = "pass-env", value_name = "NAME")]
    pub pass_env: Vec<String>,
    /// Tag KEY=VALUE (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tag: Vec<String>,
    /// Track the job in MLflow: http(s)://HOST[:PORT] or a SageMaker MLflow ARN (sets MLFLOW_TRACKING_URI).
    #[arg(long, value_name = "URI")]
    pub mlflow: Option<String>,
    /// The MLflow experiment (sets MLFLOW_EXPERIMENT_NAME; default: the job's base name).
    #[arg(long, value_name = "NAME")]
    pub mlflow_experiment: Option<String>,
    /// Train for `oxtune deploy`: merge the adapter and upload the model uncompressed.
    #[arg(long)]
    pub deployable: bool,
}

/// Everything a submission or local run needs, resolved from file + flags.
#[derive(Debug, Clone)]
pub struct Job {
    pub base_name: String,
    pub job_name: String,
    pub image: Option<String>,
    pub role: Option<String>,
    pub region: Option<String>,
    pub profile: Option<String>,
    pub instance_type: String,
    pub instance_count: u32,
    pub volume_gb: u32,
    pub max_runtime_s: u64,
    pub max_runtime_defaulted: bool,
    pub spot: bool,
    pub max_wait_s: Option<u64>,
    pub output_path: Option<String>,
    pub checkpoint_s3_uri: Option<String>,
    pub input_prefix: Option<String>,
    pub keep_alive_s: Option<u64>,
    pub max_retry_attempts: Option<u32>,
    pub input_mode: String,
    pub hyperparameters: BTreeMap<String, String>,
    pub channels: Vec<Channel>,
    pub environment: BTreeMap<String, String>,
    /// Variable names whose values came from the caller's environment (secrets, never printed).
    pub passed_env: Vec<String>,
    pub tags: BTreeMap<String, String>,
    /// `oxtune deploy` can serve its output: a merged model, uploaded uncompressed.
    pub deployable: bool,
    pub estimate: EstimateSection,
    /// Directory relative paths in the job file are resolved against.
    pub base_dir: PathBuf,
    pub warnings: Vec<String>,
}

impl Job {
    /// Redaction for this job's output: this process's secrets plus the job's secret-named and
    /// passed-through environment values.
    pub fn redactor(&self) -> crate::redact::Redactor {
        let mut r = crate::redact::Redactor::from_env();
        for (k, v) in &self.environment {
            if crate::redact::is_secret_name(k) || self.passed_env.contains(k) {
                r.add(v);
            }
        }
        r
    }
}

pub fn read_job_file(path: &Path) -> Result<JobFile, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Invalid(format!("cannot read job file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| Error::Invalid(format!("job file {}: {e}", path.display())))
}

/// Hyperparameter values are strings on the wire: TOML strings as they are, numbers and
/// booleans as their text, arrays and tables as compact JSON (the SDK's `json.dumps` rule).
pub fn hyperparameter_string(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => {
            let s = f.to_string();
            if s.contains(['.', 'e', 'E']) || !f.is_finite() {
                s
            } else {
                format!("{s}.0")
            }
        }
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        other => serde_json::to_string(&toml_to_json(other)).unwrap_or_default(),
    }
}

fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    match v {
        toml::Value::String(s) => serde_json::Value::String(s.clone()),
        toml::Value::Integer(i) => serde_json::json!(i),
        toml::Value::Float(f) => serde_json::json!(f),
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(a) => serde_json::Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            serde_json::Value::Object(t.iter().map(|(k, v)| (k.clone(), toml_to_json(v))).collect())
        }
    }
}

fn split_kv(s: &str, what: &str) -> Result<(String, String), Error> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(Error::Invalid(format!("{what} `{s}` must look like KEY=VALUE"))),
    }
}

pub fn parse_source(text: &str, base_dir: &Path) -> Source {
    let t = text.trim();
    if t.starts_with("s3://") || t.starts_with("https://") {
        Source::S3(t.to_string())
    } else {
        let p = Path::new(t);
        let p = if let Some(rest) = t.strip_prefix("~/") {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(rest)).unwrap_or_else(|| p.to_path_buf())
        } else {
            p.to_path_buf()
        };
        Source::Local(if p.is_absolute() { p } else { base_dir.join(p) })
    }
}

/// A duration from its flag (wins) or its job-file field, in seconds.
fn duration_setting(
    flag: &Option<String>,
    flag_name: &str,
    field: &Option<DurationValue>,
    field_name: &str,
) -> Result<Option<u64>, Error> {
    match (flag, field) {
        (Some(t), _) => Ok(Some(parse_duration(t).map_err(|e| Error::Invalid(format!("{flag_name}: {e}")))?.as_secs())),
        (None, Some(v)) => Ok(Some(v.seconds(field_name)?)),
        (None, None) => Ok(None),
    }
}

/// SageMaker's two S3 distribution types; a sharded training set on several instances is refused
/// before launch, as the trainer refuses it (every rank reads the whole training set for now).
fn check_distribution(channels: &[Channel], instance_count: u32) -> Result<(), Error> {
    for c in channels {
        if !matches!(c.distribution.as_str(), "FullyReplicated" | "ShardedByS3Key") {
            return Err(Error::Invalid(format!(
                "channel `{}`: distribution `{}` is neither FullyReplicated nor ShardedByS3Key",
                c.name, c.distribution
            )));
        }
        if instance_count > 1 && c.distribution == "ShardedByS3Key" && matches!(c.name.as_str(), "train" | "training") {
            return Err(Error::Invalid(format!(
                "channel `{}` is ShardedByS3Key on {instance_count} instances: every rank reads the whole training set for now, so the trainer would refuse it; use FullyReplicated (the default)",
                c.name
            )));
        }
    }
    Ok(())
}

/// The channels of the job file with `--channel NAME=SOURCE` added or replacing them.
fn channels(f: &JobFile, o: &Overrides, base_dir: &Path) -> Result<Vec<Channel>, Error> {
    let mut specs: BTreeMap<String, ChannelSpec> = f.channels.clone();
    for c in &o.channel {
        let (k, v) = split_kv(c, "--channel")?;
        specs.insert(k, ChannelSpec::Source(v));
    }
    Ok(specs
        .into_iter()
        .map(|(name, spec)| match spec {
            ChannelSpec::Source(s) => Channel {
                name,
                source: parse_source(&s, base_dir),
                content_type: None,
                input_mode: None,
                distribution: "FullyReplicated".into(),
                compression: None,
            },
            ChannelSpec::Detailed(d) => Channel {
                name,
                source: parse_source(&d.source, base_dir),
                content_type: d.content_type,
                input_mode: d.input_mode,
                distribution: d.distribution.unwrap_or_else(|| "FullyReplicated".into()),
                compression: d.compression,
            },
        })
        .collect())
}

/// The job's environment: the file's, `--env`, and `pass_env` names copied from the caller's
/// environment (returned as the second value: secrets, never printed).
fn environment(
    f: &JobFile,
    o: &Overrides,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<(BTreeMap<String, String>, Vec<String>), Error> {
    let mut environment = f.environment.clone();
    for e in &o.env {
        let (k, v) = split_kv(e, "--env")?;
        environment.insert(k, v);
    }
    let mut passed_env = Vec::new();
    for name in f.pass_env.iter().chain(o.pass_env.iter()) {
        match env(name) {
            Some(v) => {
                environment.insert(name.clone(), v);
                if !passed_env.contains(name) {
                    passed_env.push(name.clone());
                }
            }
            None => {
                warnings.push(format!("pass_env: `{name}` is not set in your environment; the job will not get it"))
            }
        }
    }
    tracking(f, o, &mut environment)?;
    Ok((environment, passed_env))
}

/// `--mlflow` / `[mlflow]` into the job's environment, checked as `train` will check it.
fn tracking(f: &JobFile, o: &Overrides, environment: &mut BTreeMap<String, String>) -> Result<(), Error> {
    use trainer::track::target::{self, EXPERIMENT_VAR, URI_VAR};
    if let Some(uri) = o.mlflow.clone().or_else(|| f.mlflow.as_ref().map(|m| m.uri.clone())) {
        environment.insert(URI_VAR.into(), uri);
    }
    if let Some(e) = o.mlflow_experiment.clone().or_else(|| f.mlflow.as_ref().and_then(|m| m.experiment.clone())) {
        environment.insert(EXPERIMENT_VAR.into(), e);
    }
    let env: Vec<(String, String)> = environment.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    target::from_env(&env, "job").map_err(Error::Invalid)?;
    Ok(())
}

/// A deployable job merges its adapter: `merge_adapter=true` unless set (false contradicts it).
fn deployable_hyperparameters(hp: &mut BTreeMap<String, String>) -> Result<(), Error> {
    let set = hp.iter().find(|(k, _)| trainer::spec::lookup(k).is_some_and(|p| p.name == "merge_adapter"));
    match set {
        Some((k, v)) if !trainer::spec::parse_bool(v).unwrap_or(false) => Err(Error::Invalid(format!(
            "`deployable = true` serves the merged model, but the hyperparameter `{k}` is `{v}`: remove it or set it to true"
        ))),
        Some(_) => Ok(()),
        None => {
            hp.insert("merge_adapter".into(), "true".into());
            Ok(())
        }
    }
}

/// Merge file + flags. `now` is the UTC epoch used for the job-name suffix.
pub fn resolve(
    file: Option<(&Path, JobFile)>,
    o: &Overrides,
    env: &dyn Fn(&str) -> Option<String>,
    now: u64,
) -> Result<Job, Error> {
    let (base_dir, f) = match file {
        Some((path, f)) => (path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")), f),
        None => (PathBuf::from("."), JobFile::default()),
    };
    let base_dir = if base_dir.as_os_str().is_empty() { PathBuf::from(".") } else { base_dir };
    let sm = &f.sagemaker;
    let mut warnings = Vec::new();

    let base_name = o
        .name
        .clone()
        .or(f.name.clone())
        .ok_or(Error::Invalid("the job needs a name: `name = \"...\"` in the job file or --name".into()))?;
    let job_name =
        if o.exact_name { base_name.clone() } else { format!("{base_name}-{}", crate::clock::utc_stamp(now)) };

    let max_runtime_s = duration_setting(&o.max_runtime, "--max-runtime", &sm.max_runtime, "sagemaker.max_runtime")?;
    let max_runtime_defaulted = max_runtime_s.is_none();
    let max_runtime_s = max_runtime_s.unwrap_or(DEFAULT_MAX_RUNTIME_S);
    if max_runtime_defaulted {
        warnings.push(format!(
            "no max_runtime given: using the API default of {} — a runaway job can bill that long; set `max_runtime` in [sagemaker] or --max-runtime",
            crate::format::fmt_duration(DEFAULT_MAX_RUNTIME_S as f64)
        ));
    }
    let spot = if o.spot {
        true
    } else if o.no_spot {
        false
    } else {
        sm.spot.unwrap_or(false)
    };
    let max_wait_s = duration_setting(&o.max_wait, "--max-wait", &sm.max_wait, "sagemaker.max_wait")?
        .or_else(|| spot.then(|| max_runtime_s.saturating_mul(2).min(2 * 2_419_200)));
    let keep_alive_s = duration_setting(&o.keep_alive, "--keep-alive", &sm.keep_alive, "sagemaker.keep_alive")?;

    let mut hyperparameters: BTreeMap<String, String> =
        f.hyperparameters.iter().map(|(k, v)| (k.clone(), hyperparameter_string(v))).collect();
    for s in &o.set {
        let (k, v) = split_kv(s, "--set")?;
        hyperparameters.insert(k, v);
    }

    let deployable = o.deployable || sm.deployable.unwrap_or(false);
    if deployable {
        deployable_hyperparameters(&mut hyperparameters)?;
    }
    let channels = channels(&f, o, &base_dir)?;
    let instance_count = o.instance_count.or(sm.instance_count).unwrap_or(1);
    check_distribution(&channels, instance_count)?;
    let (environment, passed_env) = environment(&f, o, env, &mut warnings)?;

    let mut tags = sm.tags.clone();
    for t in &o.tag {
        let (k, v) = split_kv(t, "--tag")?;
        tags.insert(k, v);
    }

    let output_path = o.output_path.clone().or(sm.output_path.clone()).map(|p| p.trim_end_matches('/').to_string());
    let checkpoint_s3_uri = o.checkpoint_s3_uri.clone().or(sm.checkpoint_s3_uri.clone());
    let input_prefix = sm.input_prefix.clone().map(|p| p.trim_end_matches('/').to_string());

    Ok(Job {
        base_name,
        job_name,
        image: o.image.clone().or(sm.image.clone()),
        role: o.role.clone().or(sm.role.clone()),
        region: sm.region.clone(),
        profile: sm.profile.clone(),
        instance_type: o.instance_type.clone().or(sm.instance_type.clone()).unwrap_or_else(|| "ml.g5.2xlarge".into()),
        instance_count,
        volume_gb: o.volume_gb.or(sm.volume_gb).unwrap_or(DEFAULT_VOLUME_GB),
        max_runtime_s,
        max_runtime_defaulted,
        spot,
        max_wait_s,
        output_path,
        checkpoint_s3_uri,
        input_prefix,
        keep_alive_s,
        max_retry_attempts: sm.max_retry_attempts,
        input_mode: sm.input_mode.clone().unwrap_or_else(|| "File".into()),
        hyperparameters,
        channels,
        environment,
        passed_env,
        tags,
        deployable,
        estimate: f.estimate.clone(),
        base_dir,
        warnings,
    })
}

impl Job {
    /// `<output_path>/<job>/checkpoints` unless given: unique per job so a new job never resumes
    /// someone else's run by accident; pass the old URI to resume on purpose.
    pub fn effective_checkpoint_uri(&self) -> Option<String> {
        self.checkpoint_s3_uri.clone().or_else(|| {
            if self.spot {
                self.output_path.as_ref().map(|o| format!("{o}/{}/checkpoints", self.job_name))
            } else {
                None
            }
        })
    }

    /// Prefix that local channels are uploaded under: stable per job *base name*, so re-submitting
    /// the same job file skips unchanged files.
    pub fn effective_input_prefix(&self) -> Option<String> {
        self.input_prefix.clone().or_else(|| self.output_path.as_ref().map(|o| format!("{o}/{}/input", self.base_name)))
    }

    pub fn max_runtime(&self) -> Duration {
        Duration::from_secs(self.max_runtime_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn flags_override_file_and_values_become_strings() {
        let f: JobFile = toml::from_str(
            r#"
            name = "demo"
            [sagemaker]
            instance_type = "ml.g5.xlarge"
            max_runtime = "2h"
            spot = true
            output_path = "s3://b/out/"
            [hyperparameters]
            epochs = 2
            learning_rate = 1e-4
            packing = true
            target_modules = ["q_proj", "v_proj"]
            lora_alpha = 32.0
            [channels]
            train = "data/train.jsonl"
            model = { source = "s3://b/models/x/", input_mode = "FastFile" }
            "#,
        )
        .unwrap();
        let o = Overrides {
            instance_type: Some("ml.g6e.xlarge".into()),
            set: vec!["epochs=3".into()],
            ..Default::default()
        };
        let job = resolve(Some((Path::new("/jobs/demo.toml"), f)), &o, &no_env, 1_700_000_000).unwrap();
        assert_eq!(job.job_name, "demo-20231114-221320");
        assert_eq!(job.instance_type, "ml.g6e.xlarge");
        assert_eq!(job.max_runtime_s, 7200);
        assert_eq!(job.max_wait_s, Some(14400));
        assert_eq!(job.hyperparameters["epochs"], "3");
        assert_eq!(job.hyperparameters["learning_rate"], "0.0001");
        assert_eq!(job.hyperparameters["packing"], "true");
        assert_eq!(job.hyperparameters["lora_alpha"], "32.0");
        assert_eq!(job.hyperparameters["target_modules"], r#"["q_proj","v_proj"]"#);
        assert_eq!(job.channels[1].name, "train");
        assert_eq!(job.channels[1].source, Source::Local(PathBuf::from("/jobs/data/train.jsonl")));
        assert_eq!(job.channels[0].input_mode.as_deref(), Some("FastFile"));
        assert_eq!(job.effective_checkpoint_uri().unwrap(), "s3://b/out/demo-20231114-221320/checkpoints");
        assert_eq!(job.effective_input_prefix().unwrap(), "s3://b/out/demo/input");
    }

    #[test]
    fn missing_runtime_warns_and_pass_env_copies_secret() {
        let f: JobFile = toml::from_str("name = \"x\"\npass_env = [\"HF_TOKEN\", \"MISSING\"]").unwrap();
        let env = |k: &str| if k == "HF_TOKEN" { Some("hf_secret".to_string()) } else { None };
        let job = resolve(Some((Path::new("j.toml"), f)), &Overrides::default(), &env, 0).unwrap();
        assert!(job.max_runtime_defaulted && job.warnings.iter().any(|w| w.contains("max_runtime")));
        assert_eq!(job.environment["HF_TOKEN"], "hf_secret");
        assert_eq!(job.passed_env, vec!["HF_TOKEN".to_string()]);
        assert!(job.warnings.iter().any(|w| w.contains("MISSING")));
    }

    #[test]
    fn several_instances_take_replicated_training_data() {
        let file = |count: u32, dist: &str| {
            let text = format!(
                "name = \"x\"\n[sagemaker]\ninstance_count = {count}\n[channels]\ntrain = {{ source = \"s3://b/t/\", distribution = \"{dist}\" }}"
            );
            let f: JobFile = toml::from_str(&text).unwrap();
            resolve(Some((Path::new("j.toml"), f)), &Overrides::default(), &no_env, 0)
        };
        assert_eq!(file(2, "FullyReplicated").unwrap().instance_count, 2);
        assert!(file(1, "ShardedByS3Key").is_ok());
        let e = file(2, "ShardedByS3Key").unwrap_err().to_string();
        assert!(e.contains("ShardedByS3Key on 2 instances") && e.contains("FullyReplicated"), "{e}");
        assert!(file(1, "Sharded").unwrap_err().to_string().contains("neither FullyReplicated nor ShardedByS3Key"));
    }

    #[test]
    fn mlflow_goes_into_the_environment_and_a_bad_uri_is_refused() {
        let job = |text: &str, o: Overrides| {
            let f: JobFile = toml::from_str(text).unwrap();
            resolve(Some((Path::new("j.toml"), f)), &o, &no_env, 0)
        };
        let file = "name = \"x\"\n[mlflow]\nuri = \"http://mlflow:5000\"\nexperiment = \"tuning\"";
        let j = job(file, Overrides::default()).unwrap();
        assert_eq!(j.environment["MLFLOW_TRACKING_URI"], "http://mlflow:5000");
        assert_eq!(j.environment["MLFLOW_EXPERIMENT_NAME"], "tuning");
        let arn = "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/t";
        let j = job(file, Overrides { mlflow: Some(arn.into()), ..Default::default() }).unwrap();
        assert_eq!(j.environment["MLFLOW_TRACKING_URI"], arn);
        let e = job("name = \"x\"", Overrides { mlflow: Some("mlruns".into()), ..Default::default() }).unwrap_err();
        assert!(e.is_invalid_input() && e.to_string().contains("MLFLOW_TRACKING_URI=mlruns is not an MLflow"), "{e}");
        assert!(!job("name = \"x\"", Overrides::default()).unwrap().environment.contains_key("MLFLOW_TRACKING_URI"));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<JobFile>("[sagemaker]\ninstance = \"ml.g5.xlarge\"").unwrap_err().to_string();
        assert!(err.contains("instance"), "{err}");
    }
}
