//! Every CreateTrainingJob limit, checked locally before any network call.
//!
//! Limits come from the SageMaker API model (botocore 1.43.11 `service-2.json`, summarised in
//! shared/reference/sagemaker.md §3). The service does enforce them, but only after S3
//! uploads and credential look-ups; moto and the Rust SDK enforce none of them.

use crate::error::Error;
use crate::request::CreateTrainingJobRequest;

pub const MAX_JOB_NAME: usize = 63;
pub const MAX_HYPERPARAMETERS: usize = 100;
pub const MAX_HP_KEY: usize = 256;
pub const MAX_HP_VALUE: usize = 2500;
pub const MAX_ENV_ENTRIES: usize = 100;
pub const MAX_ENV_KEY: usize = 512;
pub const MAX_ENV_VALUE: usize = 512;
pub const MAX_CHANNELS: usize = 20;
pub const MAX_CHANNEL_NAME: usize = 64;
pub const MAX_S3_URI: usize = 1024;
pub const MAX_METRIC_DEFINITIONS: usize = 40;
pub const MAX_METRIC_NAME: usize = 255;
pub const MAX_METRIC_REGEX: usize = 500;
pub const MAX_TAGS: usize = 50;
pub const MAX_TAG_KEY: usize = 128;
pub const MAX_TAG_VALUE: usize = 256;
pub const MAX_RUNTIME_S: u64 = 2_419_200; // 28 days
pub const MAX_KEEP_ALIVE_S: u64 = 21_600;
pub const MAX_IMAGE_URI: usize = 255;
pub const MAX_ROLE_ARN: usize = 2048;
pub const MIN_ROLE_ARN: usize = 20;

/// `[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}`: letters, digits and hyphens, starting and ending with a letter or digit.
pub fn check_job_name(name: &str) -> Result<(), Error> {
    check_resource_name("TrainingJobName", name).map_err(|e| match name.chars().count() > MAX_JOB_NAME {
        true => Error::Invalid(format!("{e} (the timestamp suffix adds 16: keep `name` ≤ 47 or use --exact-name)")),
        false => e,
    })
}

/// The name pattern SageMaker shares between training jobs, models, endpoint configs and endpoints:
/// `[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}`.
pub fn check_resource_name(field: &str, name: &str) -> Result<(), Error> {
    let n = name.chars().count();
    if n == 0 || n > MAX_JOB_NAME {
        return Err(Error::Invalid(format!("{field} `{name}` is {n} characters; the limit is 1–{MAX_JOB_NAME}")));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
        return Err(Error::Invalid(format!(
            "{field} `{name}` contains `{bad}`; only letters, digits and hyphens are allowed (pattern [a-zA-Z0-9](-*[a-zA-Z0-9]){{0,62}})"
        )));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(Error::Invalid(format!("{field} `{name}` must start and end with a letter or digit")));
    }
    Ok(())
}

/// `^arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+$`, 20–2048 characters.
pub fn check_role_arn(arn: &str) -> Result<(), Error> {
    let err = |why: &str| {
        Err(Error::Invalid(format!(
            "RoleArn `{arn}` {why}; expected arn:aws:iam::<12-digit account>:role/<name>, e.g. arn:aws:iam::123456789012:role/SageMakerExecution"
        )))
    };
    if arn.len() < MIN_ROLE_ARN || arn.len() > MAX_ROLE_ARN {
        return err(&format!("is {} characters (limit {MIN_ROLE_ARN}–{MAX_ROLE_ARN})", arn.len()));
    }
    let Some(rest) = arn.strip_prefix("arn:aws") else { return err("does not start with arn:aws") };
    let Some((partition, rest)) = rest.split_once(":iam::") else { return err("is not an IAM ARN") };
    if !partition.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
        return err("has an invalid partition");
    }
    let Some((account, rest)) = rest.split_once(':') else { return err("has no account") };
    if account.len() != 12 || !account.chars().all(|c| c.is_ascii_digit()) {
        return err("does not have a 12-digit account id");
    }
    let Some(name) = rest.strip_prefix("role") else {
        return err(
            "is not a role ARN (it must contain :role/; a user or assumed-role ARN cannot be passed to SageMaker)",
        );
    };
    let name = name.strip_prefix('/').unwrap_or(name);
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "+=,.@-_/".contains(c)) {
        return err("has an invalid role name");
    }
    Ok(())
}

/// ECR image URIs: `<account>.dkr.ecr.<region>.amazonaws.com[.cn]/<repository>[:tag | @sha256:<digest>]`.
/// Returns the image's region when it is an ECR URI.
pub fn check_image_uri(uri: &str) -> Result<Option<String>, Error> {
    if uri.is_empty() || uri.len() > MAX_IMAGE_URI || uri.chars().any(char::is_whitespace) {
        return Err(Error::Invalid(format!(
            "TrainingImage `{uri}` must be 1–{MAX_IMAGE_URI} characters without spaces"
        )));
    }
    let shape = "expected <account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag> (or @sha256:<digest>)";
    let Some((host, path)) = uri.split_once('/') else {
        return Err(Error::Invalid(format!("TrainingImage `{uri}` has no repository path; {shape}")));
    };
    if path.is_empty() {
        return Err(Error::Invalid(format!("TrainingImage `{uri}` has no repository name; {shape}")));
    }
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() >= 6 && parts[1] == "dkr" && parts[2] == "ecr" && parts[4] == "amazonaws" {
        if parts[0].len() != 12 || !parts[0].chars().all(|c| c.is_ascii_digit()) {
            return Err(Error::Invalid(format!(
                "TrainingImage `{uri}`: `{}` is not a 12-digit account id; {shape}",
                parts[0]
            )));
        }
        let last = path.rsplit('/').next().unwrap_or(path);
        if let Some((_, digest)) = path.split_once('@') {
            if !digest.starts_with("sha256:") || digest.len() != 7 + 64 {
                return Err(Error::Invalid(format!(
                    "TrainingImage `{uri}` has a malformed digest; use @sha256:<64 hex digits>"
                )));
            }
        } else if !last.contains(':') {
            return Err(Error::Invalid(format!(
                "TrainingImage `{uri}` has no tag; pin one (`:0.1.0`) or a digest so the job runs the image you tested"
            )));
        }
        return Ok(Some(parts[3].to_string()));
    }
    Err(Error::Invalid(format!(
        "TrainingImage `{uri}` is not an Amazon ECR URI; SageMaker training pulls from ECR (private registries need TrainingImageConfig, not supported here); {shape}"
    )))
}

/// `^(https|s3)://([^/]+)/?(.*)$`, ≤ 1024 characters.
pub fn check_s3_uri(field: &str, uri: &str) -> Result<(), Error> {
    if uri.len() > MAX_S3_URI {
        return Err(Error::Invalid(format!("{field} is {} characters; the limit is {MAX_S3_URI}", uri.len())));
    }
    let rest = uri.strip_prefix("s3://").or_else(|| uri.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') => Ok(()),
        _ => Err(Error::Invalid(format!("{field} `{uri}` is not an S3 URI like s3://bucket/prefix"))),
    }
}

/// A character SageMaker's tag pattern allows (letters, digits, spaces and `_.:/=+-@`).
pub fn is_tag_char(c: char) -> bool {
    c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c)
}

/// What an instance type is for: the API keeps one list of types per use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceUse {
    /// CreateTrainingJob's `ResourceConfig.InstanceType`.
    Training,
    /// CreateEndpointConfig's `ProductionVariant.InstanceType`.
    Hosting,
}

impl InstanceUse {
    /// The service's own list of valid types for this use, as the AWS SDK carries it.
    pub fn valid_types(self) -> &'static [&'static str] {
        match self {
            InstanceUse::Training => aws_sdk_sagemaker::types::TrainingInstanceType::values(),
            InstanceUse::Hosting => aws_sdk_sagemaker::types::ProductionVariantInstanceType::values(),
        }
    }
}

/// An instance type the API knows for this use; otherwise an error with the closest valid names.
pub fn check_instance_type(name: &str, usage: InstanceUse) -> Result<(), Error> {
    let valid = usage.valid_types();
    if valid.contains(&name) {
        return Ok(());
    }
    let mut near: Vec<(usize, &str)> =
        valid.iter().map(|v| (trainer::spec::edit_distance(name, v), *v)).filter(|(d, _)| *d <= 3).collect();
    near.sort();
    let hint = if near.is_empty() {
        "see `oxtune prices` for the types oxtune prices".to_string()
    } else {
        format!("did you mean {}?", near.iter().take(3).map(|(_, v)| format!("`{v}`")).collect::<Vec<_>>().join(", "))
    };
    let what = match usage {
        InstanceUse::Training => "training",
        InstanceUse::Hosting => "endpoint",
    };
    Err(Error::Invalid(format!("instance type `{name}` is not a SageMaker {what} instance type; {hint}")))
}

/// Every problem of the request, in the order of its parts; empty when SageMaker would accept it.
pub fn check_request(req: &CreateTrainingJobRequest) -> Vec<String> {
    let mut errs = Vec::new();
    check_algorithm(req, &mut errs);
    check_hyperparameters(req, &mut errs);
    check_environment(req, &mut errs);
    check_channels(req, &mut errs);
    check_metric_definitions(req, &mut errs);
    check_output(req, &mut errs);
    check_resources(req, &mut errs);
    check_tags(req, &mut errs);
    errs
}

/// Job name, role, image and input mode.
fn check_algorithm(req: &CreateTrainingJobRequest, errs: &mut Vec<String>) {
    if let Err(e) = check_job_name(&req.training_job_name) {
        errs.push(e.to_string());
    }
    if let Err(e) = check_role_arn(&req.role_arn) {
        errs.push(e.to_string());
    }
    if let Err(e) = check_image_uri(&req.algorithm_specification.training_image) {
        errs.push(e.to_string());
    }
    let mode = &req.algorithm_specification.training_input_mode;
    if !["File", "FastFile", "Pipe"].contains(&mode.as_str()) {
        errs.push(format!("TrainingInputMode `{mode}` must be File, FastFile or Pipe"));
    } else if mode == "Pipe" {
        errs.push("TrainingInputMode Pipe is not read by the oxtune trainer; use File or FastFile".into());
    }
}

/// Hyperparameters: count, key and value lengths, line breaks, secrets.
fn check_hyperparameters(req: &CreateTrainingJobRequest, errs: &mut Vec<String>) {
    let hp = &req.hyper_parameters;
    if hp.len() > MAX_HYPERPARAMETERS {
        errs.push(format!(
            "{} hyperparameters; SageMaker allows at most {MAX_HYPERPARAMETERS} (ship large configurations as a file in a channel)",
            hp.len()
        ));
    }
    for (k, v) in hp {
        if k.is_empty() || k.chars().count() > MAX_HP_KEY {
            errs.push(format!(
                "hyperparameter key `{}` is {} characters; the limit is {MAX_HP_KEY}",
                short(k),
                k.chars().count()
            ));
        }
        if v.chars().count() > MAX_HP_VALUE {
            errs.push(format!(
                "hyperparameter `{k}` value is {} characters; the limit is {MAX_HP_VALUE} (ship it as a file in a channel)",
                v.chars().count()
            ));
        }
        if k.contains(['\n', '\r']) || v.contains(['\n', '\r']) {
            errs.push(format!("hyperparameter `{}` contains a line break; the API pattern `.*` rejects it", short(k)));
        }
        if k.eq_ignore_ascii_case("hf_token") || crate::redact::is_secret_name(k) {
            errs.push(format!(
                "hyperparameter `{}` looks like a secret; hyperparameters are visible in the console and DescribeTrainingJob — pass it with `pass_env = [\"HF_TOKEN\"]` / --pass-env instead",
                short(k)
            ));
        }
    }
}

/// Environment: count, key pattern, value length (values are never shown).
fn check_environment(req: &CreateTrainingJobRequest, errs: &mut Vec<String>) {
    let env = &req.environment;
    if env.len() > MAX_ENV_ENTRIES {
        errs.push(format!("{} environment variables; the limit is {MAX_ENV_ENTRIES}", env.len()));
    }
    for (k, v) in env {
        let valid_key = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key || k.len() > MAX_ENV_KEY {
            errs.push(format!(
                "environment key `{}` is invalid: it must match [a-zA-Z_][a-zA-Z0-9_]* and be ≤ {MAX_ENV_KEY} characters",
                short(k)
            ));
        }
        if v.chars().count() > MAX_ENV_VALUE {
            // Never show the value: it may be a secret.
            errs.push(format!(
                "environment variable `{k}` value is {} characters; the limit is {MAX_ENV_VALUE}",
                v.chars().count()
            ));
        }
    }
}

/// Channels: count, names, S3 URIs, distribution, input mode, compression; a train channel.
fn check_channels(req: &CreateTrainingJobRequest, errs: &mut Vec<String>) {
    let ch = &req.input_data_config;
    if ch.len() > MAX_CHANNELS {
        errs.push(format!("{} channels; the limit is {MAX_CHANNELS}", ch.len()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in ch {
        let n = &c.channel_name;
        if n.is_empty()
            || n.len() > MAX_CHANNEL_NAME
            || !n.chars().all(|x| x.is_ascii_alphanumeric() || ".-_".contains(x))
        {
            errs.push(format!("channel name `{n}` must be 1–{MAX_CHANNEL_NAME} characters of [A-Za-z0-9.-_]"));
        }
        if !seen.insert(n.clone()) {
            errs.push(format!("channel `{n}` is given twice"));
        }
        if let Err(e) = check_s3_uri(&format!("channel `{n}` S3Uri"), &c.data_source.s3_data_source.s3_uri) {
            errs.push(e.to_string());
        }
        let dist = &c.data_source.s3_data_source.s3_data_distribution_type;
        if !["FullyReplicated", "ShardedByS3Key"].contains(&dist.as_str()) {
            errs.push(format!("channel `{n}` distribution `{dist}` must be FullyReplicated or ShardedByS3Key"));
        }
        if let Some(m) = &c.input_mode {
            if !["File", "FastFile"].contains(&m.as_str()) {
                errs.push(format!(
                    "channel `{n}` input mode `{m}` must be File or FastFile (the trainer does not read Pipe)"
                ));
            }
        }
        if let Some(comp) = &c.compression_type {
            if !["None", "Gzip"].contains(&comp.as_str()) {
                errs.push(format!("channel `{n}` compression `{comp}` must be None or Gzip"));
            }
        }
    }
    if !seen.contains("train") && !seen.contains("training") {
        errs.push(
            "no `train` channel: the trainer reads its training data from channel `train` (or `training`)".into(),
        );
    }
}

/// Metric definitions: count, name and regex lengths.
fn check_metric_definitions(req: &CreateTrainingJobRequest, errs: &mut Vec<String>) {
    let md = &req.algorithm_specification.metric_definitions;
    if md.len() > MAX_METRIC_DEFINITIONS {
        errs.push(format!("{} metric definitions; the limit is {MAX_METRIC_DEFINITIONS}", md.len()));
    }
    for m in md {
        if m.name.is_empty() || m.name.chars().count() > MAX_METRIC_NAME {
            errs.push(format!("metric name `{}` must be 1–{MAX_METRIC_NAME} characters", short(&m.name)));
        }
        if m.regex.is_empty() || m.regex.chars().count() > MAX_METRIC_REGEX {
            errs.push(format!(
                "metric `{}` regex is {} characters; the limit is 1–{MAX_METRIC_REGEX}",
                m.name,
                m.regex.chars().count()
            ));
        }
    }
}

/// Output and checkpoint S3 URIs.
fn check_output(req: &CreateTrainingJobRequest, errs: &mut Vec<String>) {
    if let Err(e) = check_s3_uri("OutputDataConfig.S3OutputPath", &req.output_data_config.s3_output_path) {
        errs.push(e.to_string());
    }
    if let Some(c) = &req.checkpoint_config {
        if let Err(e) = check_s3_uri("CheckpointConfig.S3Uri", &c.s3_uri) {
            errs.push(e.to_string());
        }
    }
}

/// Instance type, counts, volume, keep-alive, runtime, spot and retries.
fn check_resources(req: &CreateTrainingJobRequest, errs: &mut Vec<String>) {
    let rc = &req.resource_config;
    if let Err(e) = check_instance_type(&rc.instance_type, InstanceUse::Training) {
        errs.push(e.to_string());
    }
    if rc.instance_count < 1 {
        errs.push("InstanceCount must be ≥ 1".into());
    }
    if rc.volume_size_in_gb < 1 {
        errs.push("VolumeSizeInGB must be ≥ 1".into());
    }
    if let Some(k) = rc.keep_alive_period_in_seconds {
        if k > MAX_KEEP_ALIVE_S {
            errs.push(format!("KeepAlivePeriodInSeconds {k} is out of range 0–{MAX_KEEP_ALIVE_S} (6 h)"));
        }
    }
    let sc = &req.stopping_condition;
    if sc.max_runtime_in_seconds < 1 || sc.max_runtime_in_seconds > MAX_RUNTIME_S {
        errs.push(format!(
            "MaxRuntimeInSeconds {} is out of range 1–{MAX_RUNTIME_S} (28 days)",
            sc.max_runtime_in_seconds
        ));
    }
    match (req.enable_managed_spot_training, sc.max_wait_time_in_seconds) {
        (true, Some(w)) if w < sc.max_runtime_in_seconds => errs.push(format!(
            "MaxWaitTimeInSeconds {w} is less than MaxRuntimeInSeconds {}; with spot, max_wait must be ≥ max_runtime (it includes time waiting for capacity)",
            sc.max_runtime_in_seconds
        )),
        (true, None) => errs.push("spot training needs MaxWaitTimeInSeconds (max_wait)".into()),
        (false, Some(_)) => errs.push("max_wait is only valid with spot = true".into()),
        _ => {}
    }
    if req.enable_managed_spot_training && req.checkpoint_config.is_none() {
        errs.push("spot training without a CheckpointConfig loses all progress on interruption; set output_path or checkpoint_s3_uri".into());
    }
    if let Some(r) = &req.retry_strategy {
        if !(1..=30).contains(&r.maximum_retry_attempts) {
            errs.push(format!("RetryStrategy.MaximumRetryAttempts {} is out of range 1–30", r.maximum_retry_attempts));
        }
    }
}

/// Tags: count, characters, the reserved aws: prefix.
fn check_tags(req: &CreateTrainingJobRequest, errs: &mut Vec<String>) {
    errs.extend(check_tag_list(req.tags.iter().map(|t| (t.key.as_str(), t.value.as_str()))));
}

/// Tags as every SageMaker Create* call takes them: ≤ 50, keys 1–128 and values ≤ 256 characters of
/// letters, digits, spaces and `_.:/=+-@`, no `aws:` prefix.
pub fn check_tag_list<'a>(tags: impl ExactSizeIterator<Item = (&'a str, &'a str)>) -> Vec<String> {
    let mut errs = Vec::new();
    if tags.len() > MAX_TAGS {
        errs.push(format!("{} tags; the limit is {MAX_TAGS}", tags.len()));
    }
    for (key, value) in tags {
        if key.is_empty() || key.chars().count() > MAX_TAG_KEY || !key.chars().all(is_tag_char) {
            errs.push(format!(
                "tag key `{}` must be 1–{MAX_TAG_KEY} characters of letters, digits, spaces and _.:/=+-@",
                short(key)
            ));
        }
        if key.to_ascii_lowercase().starts_with("aws:") {
            errs.push(format!("tag key `{key}` uses the reserved prefix aws:"));
        }
        if value.chars().count() > MAX_TAG_VALUE || !value.chars().all(is_tag_char) {
            errs.push(format!(
                "tag `{key}` value must be ≤ {MAX_TAG_VALUE} characters of letters, digits, spaces and _.:/=+-@"
            ));
        }
    }
    errs
}

fn short(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names() {
        assert!(check_job_name("llama-sft-20260101-120000").is_ok());
        assert!(check_job_name("a--b").is_ok());
        assert!(check_job_name(&"a".repeat(63)).is_ok());
        assert!(check_job_name(&"a".repeat(64)).unwrap_err().to_string().contains("1–63"));
        assert!(check_job_name("my_job").unwrap_err().to_string().contains("`_`"));
        assert!(check_job_name("-job").unwrap_err().to_string().contains("start and end"));
        assert!(check_job_name("").is_err());
    }

    #[test]
    fn role_arns() {
        assert!(check_role_arn("arn:aws:iam::123456789012:role/SageMakerExecution").is_ok());
        assert!(check_role_arn("arn:aws-cn:iam::123456789012:role/service-role/AmazonSageMaker-Exec").is_ok());
        assert!(check_role_arn("arn:aws:iam::12345:role/x").unwrap_err().to_string().contains("12-digit"));
        assert!(check_role_arn("arn:aws:iam::123456789012:user/bob")
            .unwrap_err()
            .to_string()
            .contains("not a role ARN"));
        assert!(check_role_arn("SageMakerExecution").is_err());
    }

    #[test]
    fn image_uris() {
        assert_eq!(
            check_image_uri("123456789012.dkr.ecr.us-west-2.amazonaws.com/oxtune:0.1.0").unwrap().as_deref(),
            Some("us-west-2")
        );
        let digest = format!("123456789012.dkr.ecr.us-east-1.amazonaws.com/oxtune@sha256:{}", "a".repeat(64));
        assert!(check_image_uri(&digest).is_ok());
        assert!(check_image_uri("123456789012.dkr.ecr.us-east-1.amazonaws.com/oxtune")
            .unwrap_err()
            .to_string()
            .contains("no tag"));
        assert!(check_image_uri("docker.io/library/ubuntu:22.04")
            .unwrap_err()
            .to_string()
            .contains("not an Amazon ECR URI"));
        assert!(check_image_uri("oxtune:latest").is_err());
    }
}
