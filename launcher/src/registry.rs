//! The SageMaker Model Registry: `register` a finished job as a new version of a model package
//! group — the serving container and the merged model `deploy` would use, the job's evaluation
//! scores as model metrics (a report in S3), its hyperparameters and data fingerprint as customer
//! metadata — list a group's versions (`models`), change a version's approval (`approve`,
//! `reject`), and find the version `deploy GROUP[/VERSION]` serves.

use std::collections::BTreeMap;

use aws_sdk_sagemaker::types::{
    InferenceSpecification, MetricsSource, ModelApprovalStatus, ModelCompressionType, ModelDataSource, ModelMetrics,
    ModelPackageContainerDefinition, ModelPackageSortBy, ModelQuality, S3ModelDataSource, S3ModelDataType, SortOrder,
};
use serde::Serialize;

use crate::aws::{explain, Clients, ErrorContext};
use crate::deploy::serving::{self, Container, Serving, ServingSettings};
use crate::error::Error;
use crate::format::table;
use crate::jobs::JobInfo;
use crate::upload::parse_s3_uri;

/// Customer metadata keys (the API allows 50 entries, keys ≤ 128 and values ≤ 256 characters).
pub const META_JOB: &str = "oxtune:job";
pub const META_DATA: &str = "oxtune:data_sha256";
pub const META_SCORE: &str = "oxtune:score:";
pub const META_HP: &str = "oxtune:hp:";
const META_MAX: usize = 50;
const META_VALUE_MAX: usize = 256;
/// Where the evaluation report goes, beside the job's `output/model/`.
pub const REPORT_NAME: &str = "oxtune-evaluation.json";

/// A version's approval status (the API's `ModelApprovalStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Approval {
    Approved,
    Pending,
    Rejected,
}

impl Approval {
    fn api(self) -> ModelApprovalStatus {
        match self {
            Approval::Approved => ModelApprovalStatus::Approved,
            Approval::Pending => ModelApprovalStatus::PendingManualApproval,
            Approval::Rejected => ModelApprovalStatus::Rejected,
        }
    }

    fn from_api(s: &str) -> Approval {
        match s {
            "Approved" => Approval::Approved,
            "Rejected" => Approval::Rejected,
            _ => Approval::Pending,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Approval::Approved => "Approved",
            Approval::Pending => "PendingManualApproval",
            Approval::Rejected => "Rejected",
        }
    }
}

/// SageMaker's pattern for ModelPackageGroupName: 1–63 letters, digits and single-or-repeated
/// hyphens, starting and ending with a letter or digit.
pub fn check_group_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if ok {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "model package group `{name}` breaks SageMaker's name pattern: 1–63 letters, digits and hyphens, starting and ending with a letter or digit"
    )))
}

/// `GROUP` or `GROUP/VERSION`.
pub fn parse_model_ref(text: &str) -> Result<(String, Option<i32>), Error> {
    let (group, version) = match text.split_once('/') {
        Some((g, v)) => {
            let v: i32 = v.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
                Error::Invalid(format!("`{text}`: the version after `/` must be a positive number (GROUP/VERSION)"))
            })?;
            (g, Some(v))
        }
        None => (text, None),
    };
    check_group_name(group)?;
    Ok((group.to_string(), version))
}

/// What `register` was asked for.
#[derive(Debug, Clone)]
pub struct RegisterInput {
    pub group: String,
    pub approval: Approval,
    pub description: Option<String>,
    pub container: Container,
}

#[derive(Debug, Clone, Serialize)]
pub struct Registered {
    pub group: String,
    pub version: i32,
    pub arn: String,
    pub approval: Approval,
    pub scores: BTreeMap<String, f64>,
    pub report: Option<String>,
    pub warnings: Vec<String>,
}

fn ctx(op: &str, clients: &Clients) -> ErrorContext {
    ErrorContext { operation: op.into(), region: clients.region.clone(), ..Default::default() }
}

/// The job's evaluation scores: its final `test_*` metrics (what the evaluation on its test
/// channel printed, as SageMaker scraped them).
pub fn scores(job: &JobInfo) -> BTreeMap<String, f64> {
    job.final_metrics.iter().filter(|(k, _)| k.starts_with("test_")).map(|(k, v)| (k.clone(), *v)).collect()
}

/// The model-quality report the registry links to (JSON, `application/json`): each score as
/// `{"value": …, "standard_deviation": "NaN"}` under the metric group, the shape SageMaker's model
/// quality statistics use.
pub fn report_json(job: &JobInfo, scores: &BTreeMap<String, f64>) -> serde_json::Value {
    let metrics: serde_json::Map<String, serde_json::Value> = scores
        .iter()
        .map(|(k, v)| {
            (k.trim_start_matches("test_").to_string(), serde_json::json!({ "value": v, "standard_deviation": "NaN" }))
        })
        .collect();
    serde_json::json!({ "text_generation_metrics": metrics, "oxtune": { "training_job": job.name } })
}

/// Customer metadata: the job, the data fingerprint, the scores, then the job's hyperparameters
/// while room is left (values cut to the API's 256 characters).
pub fn metadata(job: &JobInfo, data_sha256: Option<&str>, scores: &BTreeMap<String, f64>) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert(META_JOB.to_string(), job.name.clone());
    if let Some(sha) = data_sha256 {
        m.insert(META_DATA.to_string(), sha.to_string());
    }
    for (k, v) in scores {
        m.insert(format!("{META_SCORE}{k}"), format!("{v}"));
    }
    for (k, v) in &job.hyperparameters {
        if m.len() >= META_MAX {
            break;
        }
        let key: String = format!("{META_HP}{k}").chars().take(128).collect();
        m.insert(key, v.chars().take(META_VALUE_MAX).collect());
    }
    m
}

/// Registers `job` (Completed, with a merged model uploaded uncompressed: what `deploy` serves) as
/// the next version of `input.group`, creating the group when missing.
pub async fn register(clients: &Clients, job: &JobInfo, input: &RegisterInput) -> Result<Registered, Error> {
    check_group_name(&input.group)?;
    let prefix = crate::deploy::merged_prefix_of(job)?;
    let model_prefix = crate::deploy::model_prefix_of(job)?;
    let mut warnings = Vec::new();
    let scores = scores(job);
    if scores.is_empty() {
        warnings.push(format!(
            "training job {} has no evaluation scores (no test channel, or evaluation failed): registered without model metrics",
            job.name
        ));
    }
    let summary = crate::deploy::get_text_at(clients, &format!("{model_prefix}training_summary.json")).await.ok();
    let data_sha256 = summary
        .as_deref()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
        .and_then(|v| v["data"]["sha256"].as_str().map(str::to_string));
    if data_sha256.is_none() {
        warnings.push(format!("{model_prefix}training_summary.json gives no data fingerprint (data.sha256)"));
    }
    let report = match scores.is_empty() {
        true => None,
        false => Some(upload_report(clients, job, &model_prefix, &scores).await?),
    };
    ensure_group(clients, &input.group).await?;

    let image = Serving::embedded().image_uri(input.container, &clients.region);
    let settings =
        ServingSettings { max_model_len: crate::deploy::job_max_seq_length(job), gpus: 1, bf16: true, adapter: None };
    let mut container = ModelPackageContainerDefinition::builder().image(image).model_data_source(
        ModelDataSource::builder()
            .s3_data_source(
                S3ModelDataSource::builder()
                    .s3_uri(&prefix)
                    .s3_data_type(S3ModelDataType::S3Prefix)
                    .compression_type(ModelCompressionType::None)
                    .build(),
            )
            .build(),
    );
    for (k, v) in serving::environment(input.container, &settings) {
        container = container.environment(k, v);
    }
    let spec = InferenceSpecification::builder()
        .containers(container.build())
        .supported_content_types("application/json")
        .supported_response_mime_types("application/json")
        .build();
    let description = input.description.clone().unwrap_or_else(|| format!("oxtune: training job {}", job.name));
    let mut req = clients
        .sagemaker
        .create_model_package()
        .model_package_group_name(&input.group)
        .model_package_description(description)
        .inference_specification(spec)
        .model_approval_status(input.approval.api())
        .set_customer_metadata_properties(Some(metadata(job, data_sha256.as_deref(), &scores).into_iter().collect()));
    if let Some(uri) = &report {
        let source = MetricsSource::builder().content_type("application/json").s3_uri(uri).build();
        req = req.model_metrics(
            ModelMetrics::builder().model_quality(ModelQuality::builder().statistics(source).build()).build(),
        );
    }
    let out = req.send().await.map_err(|e| explain(&e, &ctx("CreateModelPackage", clients)))?;
    let arn = out.model_package_arn().unwrap_or_default().to_string();
    let version = arn.rsplit('/').next().and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(Registered { group: input.group.clone(), version, arn, approval: input.approval, scores, report, warnings })
}

async fn upload_report(
    clients: &Clients,
    job: &JobInfo,
    model_prefix: &str,
    scores: &BTreeMap<String, f64>,
) -> Result<String, Error> {
    // Beside output/model/: s3://…/JOB/output/oxtune-evaluation.json.
    let parent = model_prefix.trim_end_matches('/').rsplit_once('/').map(|(p, _)| p).unwrap_or(model_prefix);
    let uri = format!("{parent}/{REPORT_NAME}");
    let loc = parse_s3_uri(&uri)?;
    let body = serde_json::to_vec_pretty(&report_json(job, scores)).unwrap_or_default();
    clients
        .s3
        .put_object()
        .bucket(&loc.bucket)
        .key(&loc.key)
        .content_type("application/json")
        .body(body.into())
        .send()
        .await
        .map_err(|e| explain(&e, &ctx("PutObject", clients)))?;
    Ok(uri)
}

async fn ensure_group(clients: &Clients, group: &str) -> Result<(), Error> {
    let found = clients
        .sagemaker
        .list_model_package_groups()
        .name_contains(group)
        .max_results(100)
        .send()
        .await
        .map_err(|e| explain(&e, &ctx("ListModelPackageGroups", clients)))?;
    if found.model_package_group_summary_list().iter().any(|g| g.model_package_group_name() == Some(group)) {
        return Ok(());
    }
    clients
        .sagemaker
        .create_model_package_group()
        .model_package_group_name(group)
        .model_package_group_description("oxtune: fine-tuned models")
        .send()
        .await
        .map_err(|e| explain(&e, &ctx("CreateModelPackageGroup", clients)))?;
    Ok(())
}

/// One version of a group, as `models` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Version {
    pub version: i32,
    pub arn: String,
    pub status: String,
    pub approval: Approval,
    pub created: Option<f64>,
    pub job: Option<String>,
    pub model_data: Option<String>,
    pub scores: BTreeMap<String, f64>,
    /// Every customer metadata entry (the job, data fingerprint, scores, hyperparameters).
    pub metadata: BTreeMap<String, String>,
}

/// Every version of `group`, newest first.
pub async fn versions(clients: &Clients, group: &str) -> Result<Vec<Version>, Error> {
    check_group_name(group)?;
    let mut arns = Vec::new();
    let mut pages = clients
        .sagemaker
        .list_model_packages()
        .model_package_group_name(group)
        .sort_by(ModelPackageSortBy::CreationTime)
        .sort_order(SortOrder::Descending)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| explain(&e, &ctx("ListModelPackages", clients)))?;
        arns.extend(page.model_package_summary_list().iter().filter_map(|p| p.model_package_arn().map(str::to_string)));
    }
    let mut out = Vec::new();
    for arn in arns {
        let d = clients
            .sagemaker
            .describe_model_package()
            .model_package_name(&arn)
            .send()
            .await
            .map_err(|e| explain(&e, &ctx("DescribeModelPackage", clients)))?;
        let meta: BTreeMap<String, String> =
            d.customer_metadata_properties().cloned().unwrap_or_default().into_iter().collect();
        let scores =
            meta.iter().filter_map(|(k, v)| Some((k.strip_prefix(META_SCORE)?.to_string(), v.parse().ok()?))).collect();
        let model_data = d
            .inference_specification()
            .and_then(|s| s.containers().first())
            .and_then(|c| c.model_data_source())
            .and_then(|m| m.s3_data_source())
            .and_then(|s| s.s3_uri().map(str::to_string));
        out.push(Version {
            version: d.model_package_version().unwrap_or(0),
            arn,
            status: d.model_package_status().map(|s| s.as_str().to_string()).unwrap_or_default(),
            approval: Approval::from_api(d.model_approval_status().map(|s| s.as_str()).unwrap_or("")),
            created: d.creation_time().map(|t| t.as_secs_f64()),
            job: meta.get(META_JOB).cloned(),
            model_data,
            scores,
            metadata: meta,
        });
    }
    out.sort_by_key(|v| std::cmp::Reverse(v.version));
    Ok(out)
}

pub fn render_versions(group: &str, versions: &[Version]) -> String {
    let mut keys: Vec<&String> = versions.iter().flat_map(|v| v.scores.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut header = vec!["version".to_string(), "approval".into(), "status".into(), "job".into()];
    header.extend(keys.iter().map(|k| k.to_string()));
    let mut t = vec![header];
    for v in versions {
        let mut row = vec![
            v.version.to_string(),
            v.approval.name().into(),
            v.status.clone(),
            v.job.clone().unwrap_or_else(|| "—".into()),
        ];
        row.extend(keys.iter().map(|k| v.scores.get(*k).map(|s| format!("{s:.4}")).unwrap_or_else(|| "—".into())));
        t.push(row);
    }
    format!("model package group {group}: {} version(s), newest first\n{}", versions.len(), table(&t))
}

/// The version `version` of `group` (the newest approved one when `None`).
pub async fn find(clients: &Clients, group: &str, version: Option<i32>) -> Result<Version, Error> {
    let all = versions(clients, group).await?;
    if all.is_empty() {
        return Err(Error::Invalid(format!("model package group `{group}` has no versions (or does not exist): register one with `oxtune register JOB --group {group}`")));
    }
    match version {
        Some(n) => all.into_iter().find(|v| v.version == n).ok_or_else(|| {
            Error::Invalid(format!("model package group `{group}` has no version {n} (see `oxtune models {group}`)"))
        }),
        None => all.into_iter().find(|v| v.approval == Approval::Approved).ok_or_else(|| {
            Error::Invalid(format!(
                "model package group `{group}` has no approved version: approve one with `oxtune approve {group} VERSION`, or name a version with {group}/VERSION and --allow-unapproved"
            ))
        }),
    }
}

/// Sets the approval of `group`'s version `version`; returns its ARN.
pub async fn set_approval(
    clients: &Clients,
    group: &str,
    version: i32,
    approval: Approval,
    note: Option<&str>,
) -> Result<String, Error> {
    let v = find(clients, group, Some(version)).await?;
    clients
        .sagemaker
        .update_model_package()
        .model_package_arn(&v.arn)
        .model_approval_status(approval.api())
        .set_approval_description(note.map(str::to_string))
        // Sent back as they are: an update that omits them may clear them (moto does).
        .set_customer_metadata_properties(Some(v.metadata.clone().into_iter().collect()))
        .send()
        .await
        .map_err(|e| explain(&e, &ctx("UpdateModelPackage", clients)))?;
    Ok(v.arn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_and_references() {
        for ok in ["llama-support", "a", "m1--x", &"x".repeat(63)] {
            assert!(check_group_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a_b", "a.b", &"x".repeat(64)] {
            assert!(check_group_name(bad).unwrap_err().to_string().contains("name pattern"), "{bad}");
        }
        assert_eq!(parse_model_ref("g/3").unwrap(), ("g".to_string(), Some(3)));
        assert_eq!(parse_model_ref("g").unwrap(), ("g".to_string(), None));
        assert!(parse_model_ref("g/0").unwrap_err().to_string().contains("positive number"));
    }

    #[test]
    fn metadata_keeps_job_data_scores_first_within_the_limit() {
        let mut job = crate::jobs::JobInfo::from_describe(
            &aws_sdk_sagemaker::operation::describe_training_job::DescribeTrainingJobOutput::builder()
                .training_job_name("j")
                .build(),
        );
        job.hyperparameters = (0..80).map(|i| (format!("k{i:02}"), "v".repeat(300))).collect();
        let scores: BTreeMap<String, f64> = [("test_rougeL".to_string(), 0.5)].into();
        let m = metadata(&job, Some("abc"), &scores);
        assert_eq!(m.len(), 50);
        assert_eq!(
            (m[META_JOB].as_str(), m[META_DATA].as_str(), m["oxtune:score:test_rougeL"].as_str()),
            ("j", "abc", "0.5")
        );
        assert!(m.values().all(|v| v.len() <= 256));
        let r = report_json(&job, &scores);
        assert_eq!(r["text_generation_metrics"]["rougeL"]["value"], 0.5);
    }
}
