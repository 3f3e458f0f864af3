//! The CreateTrainingJob request: one struct whose JSON uses the API member names, so
//! `--dry-run` prints exactly what [`send`] turns into the SDK call.

use crate::error::Error;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::jobfile::{Job, Source};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct CreateTrainingJobRequest {
    pub training_job_name: String,
    pub role_arn: String,
    pub algorithm_specification: AlgorithmSpecification,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hyper_parameters: BTreeMap<String, String>,
    pub input_data_config: Vec<ChannelRequest>,
    pub output_data_config: OutputDataConfig,
    pub resource_config: ResourceConfig,
    pub stopping_condition: StoppingCondition,
    pub enable_managed_spot_training: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_config: Option<CheckpointConfig>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_strategy: Option<RetryStrategy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct AlgorithmSpecification {
    pub training_image: String,
    pub training_input_mode: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metric_definitions: Vec<MetricDefinition>,
    pub enable_sage_maker_metrics_time_series: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct MetricDefinition {
    pub name: String,
    pub regex: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ChannelRequest {
    pub channel_name: String,
    pub data_source: DataSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_mode: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct DataSource {
    pub s3_data_source: S3DataSource,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct S3DataSource {
    pub s3_data_type: String,
    pub s3_uri: String,
    pub s3_data_distribution_type: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct OutputDataConfig {
    pub s3_output_path: String,
    /// `NONE`: the model is uploaded as files under `<job>/output/model/`, not `model.tar.gz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_type: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ResourceConfig {
    pub instance_type: String,
    pub instance_count: u32,
    #[serde(rename = "VolumeSizeInGB")]
    pub volume_size_in_gb: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_period_in_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct StoppingCondition {
    pub max_runtime_in_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_time_in_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct CheckpointConfig {
    pub s3_uri: String,
    pub local_path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct RetryStrategy {
    pub maximum_retry_attempts: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// SageMaker's checkpoint directory inside the container.
pub const CHECKPOINT_LOCAL_PATH: &str = "/opt/ml/checkpoints";

/// MetricDefinitions from the trainer's one metric-line format.
pub fn metric_definitions() -> Vec<MetricDefinition> {
    trainer::report::metric_definitions().into_iter().map(|(name, regex)| MetricDefinition { name, regex }).collect()
}

/// Placeholder S3 URI shown for a local channel in a dry run without an output path.
pub fn planned_channel_uri(job: &Job, channel: &str) -> Option<String> {
    job.effective_input_prefix().map(|p| format!("{p}/{channel}/"))
}

/// Build the request. `channel_uris` maps channel name → S3 URI for local channels
/// (after upload, or the planned URI for a dry run).
pub fn build(job: &Job, channel_uris: &BTreeMap<String, String>) -> Result<CreateTrainingJobRequest, Error> {
    let image =
        job.image.clone().ok_or(Error::Invalid("no training image: set `image` in [sagemaker] or --image".into()))?;
    let role =
        job.role.clone().ok_or(Error::Invalid("no execution role: set `role` in [sagemaker] or --role".into()))?;
    let output = job
        .output_path
        .clone()
        .ok_or(Error::Invalid("no output path: set `output_path` in [sagemaker] or --output-path".into()))?;
    let mut channels = Vec::new();
    for c in &job.channels {
        let uri = match &c.source {
            Source::S3(u) => u.clone(),
            Source::Local(p) => channel_uris.get(&c.name).cloned().ok_or_else(|| {
                Error::Invalid(format!(
                    "channel `{}` is the local path {} and has not been uploaded",
                    c.name,
                    p.display()
                ))
            })?,
        };
        channels.push(ChannelRequest {
            channel_name: c.name.clone(),
            data_source: DataSource {
                s3_data_source: S3DataSource {
                    s3_data_type: "S3Prefix".into(),
                    s3_uri: uri,
                    s3_data_distribution_type: c.distribution.clone(),
                },
            },
            content_type: c.content_type.clone(),
            compression_type: c.compression.clone(),
            input_mode: c.input_mode.clone(),
        });
    }
    let checkpoint_config = job
        .effective_checkpoint_uri()
        .map(|s3_uri| CheckpointConfig { s3_uri, local_path: CHECKPOINT_LOCAL_PATH.into() });
    Ok(CreateTrainingJobRequest {
        training_job_name: job.job_name.clone(),
        role_arn: role,
        algorithm_specification: AlgorithmSpecification {
            training_image: image,
            training_input_mode: job.input_mode.clone(),
            metric_definitions: metric_definitions(),
            enable_sage_maker_metrics_time_series: true,
        },
        hyper_parameters: job.hyperparameters.clone(),
        input_data_config: channels,
        output_data_config: OutputDataConfig {
            s3_output_path: output,
            compression_type: job.deployable.then(|| "NONE".to_string()),
        },
        resource_config: ResourceConfig {
            instance_type: job.instance_type.clone(),
            instance_count: job.instance_count,
            volume_size_in_gb: job.volume_gb,
            keep_alive_period_in_seconds: job.keep_alive_s,
        },
        stopping_condition: StoppingCondition {
            max_runtime_in_seconds: job.max_runtime_s,
            max_wait_time_in_seconds: job.max_wait_s,
        },
        enable_managed_spot_training: job.spot,
        checkpoint_config,
        environment: job.environment.clone(),
        retry_strategy: job.max_retry_attempts.map(|n| RetryStrategy { maximum_retry_attempts: n }),
        tags: job.tags.iter().map(|(k, v)| Tag { key: k.clone(), value: v.clone() }).collect(),
    })
}

impl CreateTrainingJobRequest {
    /// Pretty JSON with secret environment values replaced (for --dry-run and logs).
    pub fn redacted_json(&self, secret_names: &[String]) -> String {
        let mut copy = self.clone();
        for (k, v) in copy.environment.iter_mut() {
            if crate::redact::is_secret_name(k) || secret_names.iter().any(|s| s == k) {
                *v = crate::redact::REDACTED.to_string();
            }
        }
        serde_json::to_string_pretty(&copy).unwrap_or_default()
    }

    /// The SDK call for this request.
    pub async fn send(
        &self,
        client: &aws_sdk_sagemaker::Client,
    ) -> Result<
        aws_sdk_sagemaker::operation::create_training_job::CreateTrainingJobOutput,
        aws_sdk_sagemaker::error::SdkError<aws_sdk_sagemaker::operation::create_training_job::CreateTrainingJobError>,
    > {
        self.to_sdk(client).send().await
    }

    pub fn to_sdk(
        &self,
        client: &aws_sdk_sagemaker::Client,
    ) -> aws_sdk_sagemaker::operation::create_training_job::builders::CreateTrainingJobFluentBuilder {
        use aws_sdk_sagemaker::types as t;
        let a = &self.algorithm_specification;
        let mut algo = t::AlgorithmSpecification::builder()
            .training_image(&a.training_image)
            .training_input_mode(t::TrainingInputMode::from(a.training_input_mode.as_str()))
            .enable_sage_maker_metrics_time_series(a.enable_sage_maker_metrics_time_series);
        for m in &a.metric_definitions {
            algo = algo.metric_definitions(t::MetricDefinition::builder().name(&m.name).regex(&m.regex).build());
        }
        let mut req = client
            .create_training_job()
            .training_job_name(&self.training_job_name)
            .role_arn(&self.role_arn)
            .algorithm_specification(algo.build())
            .output_data_config(
                t::OutputDataConfig::builder()
                    .s3_output_path(&self.output_data_config.s3_output_path)
                    .set_compression_type(
                        self.output_data_config.compression_type.as_deref().map(t::OutputCompressionType::from),
                    )
                    .build(),
            )
            .resource_config({
                let r = &self.resource_config;
                t::ResourceConfig::builder()
                    .instance_type(t::TrainingInstanceType::from(r.instance_type.as_str()))
                    .instance_count(r.instance_count as i32)
                    .volume_size_in_gb(r.volume_size_in_gb as i32)
                    .set_keep_alive_period_in_seconds(r.keep_alive_period_in_seconds.map(|k| k as i32))
                    .build()
            })
            .stopping_condition(
                t::StoppingCondition::builder()
                    .max_runtime_in_seconds(self.stopping_condition.max_runtime_in_seconds as i32)
                    .set_max_wait_time_in_seconds(self.stopping_condition.max_wait_time_in_seconds.map(|w| w as i32))
                    .build(),
            )
            .enable_managed_spot_training(self.enable_managed_spot_training);
        for (k, v) in &self.hyper_parameters {
            req = req.hyper_parameters(k, v);
        }
        for (k, v) in &self.environment {
            req = req.environment(k, v);
        }
        for c in &self.input_data_config {
            let s3 = &c.data_source.s3_data_source;
            let src = t::S3DataSource::builder()
                .s3_data_type(t::S3DataType::from(s3.s3_data_type.as_str()))
                .s3_uri(&s3.s3_uri)
                .s3_data_distribution_type(t::S3DataDistribution::from(s3.s3_data_distribution_type.as_str()))
                .build();
            let ch = t::Channel::builder()
                .channel_name(&c.channel_name)
                .data_source(t::DataSource::builder().s3_data_source(src).build())
                .set_content_type(c.content_type.clone())
                .set_compression_type(c.compression_type.as_deref().map(t::CompressionType::from))
                .set_input_mode(c.input_mode.as_deref().map(t::TrainingInputMode::from))
                .build();
            req = req.input_data_config(ch);
        }
        if let Some(c) = &self.checkpoint_config {
            req = req
                .checkpoint_config(t::CheckpointConfig::builder().s3_uri(&c.s3_uri).local_path(&c.local_path).build());
        }
        if let Some(r) = &self.retry_strategy {
            req = req.retry_strategy(
                t::RetryStrategy::builder().maximum_retry_attempts(r.maximum_retry_attempts as i32).build(),
            );
        }
        for tag in &self.tags {
            req = req.tags(t::Tag::builder().key(&tag.key).value(&tag.value).build());
        }
        req
    }
}
