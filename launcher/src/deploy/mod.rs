//! After training: put a finished job's merged model behind a real-time SageMaker endpoint served by
//! an existing container (`deploy`), call it (`invoke`), list what runs and what it has cost
//! (`endpoints`) and delete it (`undeploy`).
//!
//! - [`serving`]: the containers, their pinned images and host AMIs, their environment;
//! - [`plan`]: what `deploy` creates, checked against the API's limits and the GPU memory;
//! - [`endpoints`]: the Create/Describe/List/Delete calls and following an endpoint to `InService`;
//! - [`invoke`]: request bodies per container, replies, the response stream, scoring a test file.

pub mod endpoints;
pub mod invoke;
pub mod plan;
pub mod serving;

use std::collections::BTreeMap;

use trainer::model::config::ModelConfig;

use crate::aws::{explain, Clients, ErrorContext};
use crate::catalogue::{Catalogue, PriceTable};
use crate::error::Error;
use crate::jobs::JobInfo;
use crate::upload::{parse_s3_uri, S3Location};
use plan::{DeployPlan, DeployRequest, ModelArtifact};
use serving::Container;

/// What to deploy: a training job (its merged model) or an S3 prefix holding a merged model.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Job(String),
    S3(String),
}

impl Source {
    /// `s3://…` is a prefix (a trailing `/` is added); anything else is a job name.
    pub fn parse(text: &str) -> Result<Source, Error> {
        if text.starts_with("s3://") {
            crate::limits::check_s3_uri("the model URI", text)?;
            let prefix = if text.ends_with('/') { text.to_string() } else { format!("{text}/") };
            Ok(Source::S3(prefix))
        } else {
            crate::limits::check_resource_name("the training job name", text)?;
            Ok(Source::Job(text.to_string()))
        }
    }

    pub fn text(&self) -> &str {
        match self {
            Source::Job(j) => j,
            Source::S3(s) => s,
        }
    }
}

/// What the user asked `deploy` for, before anything is looked up.
#[derive(Debug, Clone)]
pub struct DeployInput {
    pub source: Source,
    pub name: Option<String>,
    pub instance_type: String,
    pub count: u32,
    pub container: Container,
    pub role: Option<String>,
    pub max_model_len: Option<usize>,
    /// Serve the job's unmerged adapter on this base model (an S3 prefix with the base in
    /// `save_pretrained` layout) instead of a merged model (LMI only).
    pub adapter_on: Option<String>,
}

impl DeployInput {
    /// Every check that needs no AWS call: the source, the name, the instance type (a GPU type the
    /// catalogue knows), the count and the role.
    pub fn check(&self, catalogue: &Catalogue) -> Result<(), Error> {
        if let Some(n) = &self.name {
            crate::limits::check_resource_name("--name (the endpoint, its config and its model)", n)?;
        }
        plan::gpu_instance(catalogue, &self.instance_type)?;
        if self.count < 1 {
            return Err(Error::Invalid("--count must be at least 1".into()));
        }
        if let Some(r) = &self.role {
            crate::limits::check_role_arn(r)?;
        } else if matches!(self.source, Source::S3(_)) {
            return Err(Error::Invalid(
                "deploying an s3:// prefix needs --role (the execution role the endpoint reads the model with)".into(),
            ));
        }
        if self.max_model_len == Some(0) {
            return Err(Error::Invalid("--max-model-len must be at least 1".into()));
        }
        if let Some(base) = &self.adapter_on {
            crate::limits::check_s3_uri("--adapter-on", base)?;
            if !base.starts_with("s3://") {
                return Err(Error::Invalid(format!(
                    "--adapter-on `{base}` must be an s3:// prefix holding the base model"
                )));
            }
            if self.container != Container::Lmi {
                return Err(Error::Invalid(format!(
                    "--adapter-on serves an unmerged adapter, which oxtune sets up for the LMI container only (not {}); deploy a merged model with that container",
                    self.container.key()
                )));
            }
        }
        Ok(())
    }
}

/// Resolve the source (a finished job's merged model or an S3 prefix), inspect the model and plan
/// the deployment; nothing is created. `now` names an S3 deployment that has no --name.
pub async fn prepare(
    clients: &Clients,
    input: &DeployInput,
    catalogue: &Catalogue,
    prices: &PriceTable,
    now: u64,
) -> Result<DeployPlan, Error> {
    input.check(catalogue)?;
    let (prefix, job_len, job_role, default_name) = match &input.source {
        Source::Job(name) => {
            let job = crate::jobs::describe(clients, name).await?;
            let prefix = match input.adapter_on {
                Some(_) => model_prefix_of(&job)?,
                None => merged_prefix_of(&job)?,
            };
            (prefix, Some(job_max_seq_length(&job)), job.role_arn.clone(), name.clone())
        }
        Source::S3(prefix) => (prefix.clone(), None, None, format!("oxtune-{}", crate::clock::utc_stamp(now))),
    };
    let (artifact, adapter) = match &input.adapter_on {
        Some(base) => {
            let base = if base.ends_with('/') { base.clone() } else { format!("{base}/") };
            let rank = adapter_rank(clients, &prefix).await?;
            let mut artifact = inspect_model(clients, &base).await?;
            // `create` copies the adapter there first (nothing is written before that).
            artifact.prefix = format!("{prefix}{SERVING_DIR}/");
            (artifact, Some((base, rank)))
        }
        None => (inspect_model(clients, &prefix).await?, None),
    };
    let max_model_len = input
        .max_model_len
        .or(job_len)
        .unwrap_or_else(|| artifact.config.max_position_embeddings.clamp(1, DEFAULT_MAX_MODEL_LEN));
    let role = input
        .role
        .clone()
        .or(job_role)
        .ok_or_else(|| Error::Invalid("the training job reports no execution role; pass --role".to_string()))?;
    let req = DeployRequest {
        name: input.name.clone().unwrap_or(default_name),
        source: input.source.text().to_string(),
        instance_type: input.instance_type.clone(),
        count: input.count,
        container: input.container,
        role,
        region: clients.region.clone(),
        max_model_len,
        adapter,
    };
    let mut plan = plan::plan(&req, &artifact, catalogue, prices)?;
    plan.adapter_source = input.adapter_on.as_ref().map(|_| prefix);
    Ok(plan)
}

/// The serving window of an S3 model without a job or --max-model-len: its own limit, at most this.
pub const DEFAULT_MAX_MODEL_LEN: usize = 4096;

/// A Completed job's uncompressed model prefix (its adapter files at the top).
pub fn model_prefix_of(job: &JobInfo) -> Result<String, Error> {
    require_completed(job)?;
    uncompressed_model(
        job,
        "train with `deployable = true` in the job file's [sagemaker] section (it uploads the model uncompressed)",
    )
}

fn require_completed(job: &JobInfo) -> Result<(), Error> {
    if job.status == "Completed" {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "training job {} is {} ({}); only a Completed job can be deployed",
        job.name, job.status, job.secondary_status
    )))
}

/// `<S3ModelArtifacts>/` when the job uploaded its model as files; otherwise why not, and `fix`.
fn uncompressed_model(job: &JobInfo, fix: &str) -> Result<String, Error> {
    match job.model_artifacts.as_deref() {
        None => Err(Error::Invalid(format!("training job {} reports no model artifacts; {fix}", job.name))),
        Some(a) if a.ends_with(".tar.gz") => Err(Error::Invalid(format!(
            "training job {} uploaded its model compressed ({a}); endpoints load the model from an uncompressed S3 prefix; {fix}",
            job.name
        ))),
        Some(a) => Ok(format!("{}/", a.trim_end_matches('/'))),
    }
}

/// The adapter's rank, from `adapter_config.json` at the prefix (PEFT's format).
async fn adapter_rank(clients: &Clients, prefix: &str) -> Result<usize, Error> {
    let loc = parse_s3_uri(prefix)?;
    let text = get_text(clients, &loc.bucket, &format!("{}adapter_config.json", loc.key))
        .await
        .map_err(|e| Error::Invalid(format!("{prefix} holds no PEFT adapter (adapter_config.json: {e})")))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("{prefix}adapter_config.json is not JSON: {e}")))?;
    v.get("r")
        .and_then(|r| r.as_u64())
        .map(|r| r as usize)
        .ok_or_else(|| Error::Invalid(format!("{prefix}adapter_config.json has no rank `r`")))
}

/// The prefix under the job's model that LMI mounts: its adapter copied to `adapters/<name>/`.
pub const SERVING_DIR: &str = "oxtune-serving";

/// Copy the adapter files at `prefix` to `<prefix>oxtune-serving/adapters/tuned/` (LMI's layout)
/// and return `<prefix>oxtune-serving/`, the endpoint's model data.
pub(super) async fn stage_adapter(clients: &Clients, prefix: &str) -> Result<String, Error> {
    let S3Location { bucket, key } = parse_s3_uri(prefix)?;
    let ctx = ErrorContext { operation: "CopyObject".into(), region: clients.region.clone(), ..Default::default() };
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        clients
            .s3
            .copy_object()
            .bucket(&bucket)
            .key(format!("{key}{SERVING_DIR}/adapters/{}/{f}", serving::ADAPTER_NAME))
            .copy_source(format!("{bucket}/{key}{f}"))
            .send()
            .await
            .map_err(|e| explain(&e, &ctx))?;
    }
    Ok(format!("{prefix}{SERVING_DIR}/"))
}

/// The directory the trainer writes the merged model to, under the job's model output.
pub const MERGED_DIR: &str = "merged";

/// The job's merged model prefix, or why the job cannot be deployed: it must be `Completed`, have
/// trained with `merge_adapter=true` and have uploaded its model uncompressed (`deployable = true`
/// in the job file sets both).
pub fn merged_prefix_of(job: &JobInfo) -> Result<String, Error> {
    require_completed(job)?;
    let fix = "train with `deployable = true` in the job file's [sagemaker] section (it sets merge_adapter=true and uploads the model uncompressed), or deploy an s3:// prefix that holds a merged model";
    let merged = job.hyperparameters.iter().any(|(k, v)| {
        trainer::spec::lookup(k).is_some_and(|p| p.name == "merge_adapter")
            && trainer::spec::parse_bool(v) == Some(true)
    });
    if !merged {
        return Err(Error::Invalid(format!(
            "training job {} wrote no merged model (merge_adapter is not true); {fix}",
            job.name
        )));
    }
    Ok(format!("{}{MERGED_DIR}/", uncompressed_model(job, fix)?))
}

/// `max_seq_length` of the job's hyperparameters (aliases included), else the trainer's default.
pub fn job_max_seq_length(job: &JobInfo) -> usize {
    crate::plan::validate_hyperparameters(&job.hyperparameters)
        .or_else(|_| crate::plan::validate_hyperparameters(&BTreeMap::new()))
        .map(|s| s.max_seq_length)
        .unwrap_or(1024)
}

/// Files a served merged model must have (the LMI model-artifacts guide: `save_pretrained` layout).
const REQUIRED: [&str; 2] = ["config.json", "tokenizer_config.json"];

/// List the prefix and read its config: a merged model in `save_pretrained` layout, or an error
/// that says what is missing. Also refuses what makes S3Prefix deployments fail (0-byte "folder"
/// objects, a file and a folder of the same name).
pub async fn inspect_model(clients: &Clients, prefix: &str) -> Result<ModelArtifact, Error> {
    let S3Location { bucket, key: key_prefix } = parse_s3_uri(prefix)?;
    let (bucket, key_prefix) = (bucket.as_str(), key_prefix.as_str());
    let ctx = ErrorContext { operation: "ListObjectsV2".into(), region: clients.region.clone(), ..Default::default() };
    let mut objects: BTreeMap<String, u64> = BTreeMap::new();
    let mut pages = clients.s3.list_objects_v2().bucket(bucket).prefix(key_prefix).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| explain(&e, &ctx))?;
        for o in page.contents() {
            if let Some(k) = o.key() {
                objects.insert(k[key_prefix.len()..].to_string(), o.size().unwrap_or(0).max(0) as u64);
            }
        }
    }
    let missing: Vec<&str> = REQUIRED.iter().copied().filter(|f| !objects.contains_key(*f)).collect();
    let weights = objects.keys().any(|k| k.ends_with(".safetensors") && !k.contains('/'));
    if objects.is_empty() || !missing.is_empty() || !weights {
        return Err(Error::Invalid(format!(
            "{prefix} holds no merged model ({}); a deployable job writes one to model/{MERGED_DIR}/ with `deployable = true` in [sagemaker]",
            if objects.is_empty() {
                "no objects".to_string()
            } else {
                let mut what: Vec<String> = missing.iter().map(|m| m.to_string()).collect();
                if !weights {
                    what.push("*.safetensors".into());
                }
                format!("missing {}", what.join(", "))
            }
        )));
    }
    if let Some(bad) = objects.iter().find(|(k, size)| k.is_empty() || (k.ends_with('/') && **size == 0)) {
        return Err(Error::Invalid(format!(
            "{prefix}{}: a 0-byte folder object makes S3Prefix model downloads fail; delete it",
            bad.0
        )));
    }
    let config_text = get_text(clients, bucket, &format!("{key_prefix}config.json")).await?;
    let config =
        ModelConfig::from_json_str(&config_text).map_err(|e| Error::Invalid(format!("{prefix}config.json: {e}")))?;
    let chat = objects.contains_key("chat_template.jinja")
        || get_text(clients, bucket, &format!("{key_prefix}tokenizer_config.json"))
            .await
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v.get("chat_template").is_some_and(|c| !c.is_null()));
    Ok(ModelArtifact { prefix: prefix.to_string(), config, bytes: objects.values().sum(), chat })
}

/// The text of the S3 object `uri` names.
pub async fn get_text_at(clients: &Clients, uri: &str) -> Result<String, Error> {
    let loc = parse_s3_uri(uri)?;
    get_text(clients, &loc.bucket, &loc.key).await
}

async fn get_text(clients: &Clients, bucket: &str, key: &str) -> Result<String, Error> {
    let ctx = ErrorContext { operation: "GetObject".into(), region: clients.region.clone(), ..Default::default() };
    let out = clients.s3.get_object().bucket(bucket).key(key).send().await.map_err(|e| explain(&e, &ctx))?;
    let bytes = out
        .body
        .collect()
        .await
        .map_err(|e| Error::Failed(format!("GetObject s3://{bucket}/{key}: {e}")))?
        .into_bytes();
    String::from_utf8(bytes.to_vec()).map_err(|_| Error::Invalid(format!("s3://{bucket}/{key} is not UTF-8 text")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: &str, hp: &[(&str, &str)], artifacts: &str) -> JobInfo {
        let d = aws_sdk_sagemaker::operation::describe_training_job::DescribeTrainingJobOutput::builder()
            .training_job_name("llama-sft-1")
            .training_job_status(status.into())
            .set_hyper_parameters(Some(hp.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()))
            .model_artifacts(aws_sdk_sagemaker::types::ModelArtifacts::builder().s3_model_artifacts(artifacts).build())
            .build();
        JobInfo::from_describe(&d)
    }

    #[test]
    fn sources() {
        assert_eq!(Source::parse("s3://b/m").unwrap(), Source::S3("s3://b/m/".into()));
        assert_eq!(Source::parse("llama-sft-1").unwrap(), Source::Job("llama-sft-1".into()));
        assert!(Source::parse("not a job").unwrap_err().is_invalid_input());
    }

    #[test]
    fn only_a_completed_merged_uncompressed_job_deploys() {
        let ok = job(
            "Completed",
            &[("merge_weights", "true"), ("max_seq_length", "1024")],
            "s3://b/o/llama-sft-1/output/model/",
        );
        assert_eq!(merged_prefix_of(&ok).unwrap(), "s3://b/o/llama-sft-1/output/model/merged/");
        assert_eq!(job_max_seq_length(&ok), 1024);
        let running = job("InProgress", &[("merge_adapter", "true")], "s3://b/o/model/");
        assert!(merged_prefix_of(&running).unwrap_err().to_string().contains("only a Completed job"));
        let unmerged = job("Completed", &[], "s3://b/o/model/");
        assert!(merged_prefix_of(&unmerged).unwrap_err().to_string().contains("merge_adapter is not true"));
        let tarball = job("Completed", &[("merge_adapter", "true")], "s3://b/o/llama-sft-1/output/model.tar.gz");
        let e = merged_prefix_of(&tarball).unwrap_err().to_string();
        assert!(e.contains("compressed") && e.contains("deployable = true"), "{e}");
    }
}
