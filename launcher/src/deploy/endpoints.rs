//! The hosting control plane: create a planned deployment (model → endpoint config → endpoint, each
//! tagged), follow an endpoint to `InService`, list oxtune's endpoints with their cost so far, and
//! delete one with its config and model.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::{Duration, Instant};

use aws_sdk_sagemaker::types as t;
use serde::Serialize;

use super::plan::{DeployPlan, TAG_CHAT, TAG_CONTAINER, TAG_ENDPOINT, TAG_SOURCE, VARIANT};
use crate::aws::{explain, Clients, ErrorContext, ErrorKind};
use crate::catalogue::PriceTable;
use crate::error::Error;
use crate::format::{fmt_duration, fmt_usd};

/// CloudWatch log group of every endpoint; streams are `<variant>/<instance id>`.
pub const LOG_GROUP: &str = "/aws/sagemaker/Endpoints";

fn ctx(clients: &Clients, operation: &str) -> ErrorContext {
    ErrorContext { operation: operation.into(), region: clients.region.clone(), ..Default::default() }
}

fn tags(plan: &DeployPlan) -> Vec<t::Tag> {
    plan.tags.iter().map(|(k, v)| t::Tag::builder().key(k).value(v).build()).collect()
}

/// CreateModel, CreateEndpointConfig and CreateEndpoint. When a later call fails, what the earlier
/// ones created is deleted again, so a failed deploy leaves nothing behind.
pub async fn create(clients: &Clients, plan: &DeployPlan) -> Result<String, Error> {
    let sm = &clients.sagemaker;
    if let Some(adapter) = &plan.adapter_source {
        super::stage_adapter(clients, adapter).await?;
    }
    let source = t::S3ModelDataSource::builder()
        .s3_uri(&plan.model_prefix)
        .s3_data_type(t::S3ModelDataType::S3Prefix)
        .compression_type(t::ModelCompressionType::None)
        .build();
    let container = t::ContainerDefinition::builder()
        .image(&plan.image)
        .model_data_source(t::ModelDataSource::builder().s3_data_source(source).build())
        .set_environment(Some(plan.environment.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<HashMap<_, _>>()))
        .build();
    sm.create_model()
        .model_name(&plan.name)
        .execution_role_arn(&plan.role)
        .primary_container(container)
        .set_tags(Some(tags(plan)))
        .send()
        .await
        .map_err(|e| explain(&e, &ctx(clients, "CreateModel")))?;
    let variant = t::ProductionVariant::builder()
        .variant_name(VARIANT)
        .model_name(&plan.name)
        .instance_type(t::ProductionVariantInstanceType::from(plan.instance_type.as_str()))
        .initial_instance_count(plan.count as i32)
        .container_startup_health_check_timeout_in_seconds(plan.startup_timeout_s as i32)
        .model_data_download_timeout_in_seconds(plan.download_timeout_s as i32)
        .set_volume_size_in_gb(plan.volume_gb.map(|v| v as i32))
        .inference_ami_version(t::ProductionVariantInferenceAmiVersion::from(plan.ami.as_str()))
        .build();
    let config = sm
        .create_endpoint_config()
        .endpoint_config_name(&plan.name)
        .production_variants(variant)
        .set_tags(Some(tags(plan)))
        .send()
        .await
        .map_err(|e| explain(&e, &ctx(clients, "CreateEndpointConfig")));
    if let Err(e) = config {
        let _ = sm.delete_model().model_name(&plan.name).send().await;
        return Err(e);
    }
    let endpoint = sm
        .create_endpoint()
        .endpoint_name(&plan.name)
        .endpoint_config_name(&plan.name)
        .set_tags(Some(tags(plan)))
        .send()
        .await
        .map_err(|e| explain(&e, &ctx(clients, "CreateEndpoint")));
    match endpoint {
        Ok(out) => Ok(out.endpoint_arn().unwrap_or_default().to_string()),
        Err(e) => {
            let _ = sm.delete_endpoint_config().endpoint_config_name(&plan.name).send().await;
            let _ = sm.delete_model().model_name(&plan.name).send().await;
            Err(e)
        }
    }
}

/// DescribeEndpoint, its error explained.
async fn describe(
    clients: &Clients,
    name: &str,
) -> Result<aws_sdk_sagemaker::operation::describe_endpoint::DescribeEndpointOutput, Error> {
    clients
        .sagemaker
        .describe_endpoint()
        .endpoint_name(name)
        .send()
        .await
        .map_err(|e| explain(&e, &ctx(clients, "DescribeEndpoint")))
}

/// How following an endpoint ended.
#[derive(Debug, Clone, PartialEq)]
pub enum EndpointEnd {
    InService,
    /// `Failed`, with the reason and where its logs are.
    Failed {
        reason: String,
        logs: String,
    },
    /// Still not in service when the time ran out; the last status.
    TimedOut(String),
}

/// Where an endpoint's container logs are: the group and the variant's streams that exist.
pub async fn log_hint(clients: &Clients, name: &str) -> String {
    let group = format!("{LOG_GROUP}/{name}");
    let streams = clients
        .logs
        .describe_log_streams()
        .log_group_name(&group)
        .log_stream_name_prefix(format!("{VARIANT}/"))
        .send()
        .await
        .map(|o| o.log_streams().iter().filter_map(|s| s.log_stream_name().map(str::to_string)).collect::<Vec<_>>())
        .unwrap_or_default();
    if streams.is_empty() {
        format!("CloudWatch log group {group}, streams {VARIANT}/<instance id> (none yet: the container may not have started)")
    } else {
        format!("CloudWatch log group {group}, streams {}", streams.join(", "))
    }
}

/// Poll DescribeEndpoint until `InService`, `Failed` or `timeout`, writing a line per status change
/// (and one every ten polls while it stays the same).
pub async fn wait(
    clients: &Clients,
    name: &str,
    poll: Duration,
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<EndpointEnd, Error> {
    let started = Instant::now();
    let mut last = String::new();
    let mut same = 0;
    loop {
        let d = describe(clients, name).await?;
        let status = d.endpoint_status().map(|s| s.as_str().to_string()).unwrap_or_default();
        same = if status == last { same + 1 } else { 0 };
        if same % 10 == 0 {
            let _ = writeln!(out, "endpoint {name}: {status} ({})", fmt_duration(started.elapsed().as_secs_f64()));
        }
        last = status.clone();
        match status.as_str() {
            "InService" => return Ok(EndpointEnd::InService),
            "Failed" | "OutOfService" | "UpdateRollbackFailed" => {
                let reason = d.failure_reason().unwrap_or("no FailureReason given").to_string();
                return Ok(EndpointEnd::Failed { reason, logs: log_hint(clients, name).await });
            }
            _ => {}
        }
        if started.elapsed() + poll > timeout {
            return Ok(EndpointEnd::TimedOut(status));
        }
        tokio::time::sleep(poll).await;
    }
}

/// One endpoint of `endpoints`.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointRow {
    pub name: String,
    pub status: String,
    pub instance_type: String,
    pub count: u32,
    pub created: Option<f64>,
    pub source: String,
    pub container: String,
    /// On-demand USD per hour for its instances, when the price table has the type.
    pub hourly_usd: Option<f64>,
    /// Since creation at that rate: endpoints bill every hour they exist.
    pub cost_so_far_usd: Option<f64>,
}

async fn tags_of(clients: &Clients, arn: &str) -> Result<BTreeMap<String, String>, Error> {
    let out = clients
        .sagemaker
        .list_tags()
        .resource_arn(arn)
        .send()
        .await
        .map_err(|e| explain(&e, &ctx(clients, "ListTags")))?;
    Ok(out.tags().iter().filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string()))).collect())
}

/// The oxtune tags of an endpoint (empty when it was not created by `deploy`).
pub async fn endpoint_tags(clients: &Clients, name: &str) -> Result<BTreeMap<String, String>, Error> {
    let d = describe(clients, name).await.map_err(|e| not_found_as(e, name))?;
    tags_of(clients, d.endpoint_arn().unwrap_or_default()).await
}

fn not_found_as(e: Error, name: &str) -> Error {
    match e.kind() {
        Some(ErrorKind::NotFound) => Error::Aws {
            kind: ErrorKind::NotFound,
            message: format!("no endpoint named `{name}` in this region (`oxtune endpoints` lists yours)"),
        },
        _ => e,
    }
}

/// Every endpoint of this account and region that `deploy` created, newest first.
pub async fn list(clients: &Clients, prices: &PriceTable, now: f64) -> Result<Vec<EndpointRow>, Error> {
    let sm = &clients.sagemaker;
    let mut summaries = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = sm
            .list_endpoints()
            .sort_by(t::EndpointSortKey::CreationTime)
            .sort_order(t::OrderKey::Descending)
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|e| explain(&e, &ctx(clients, "ListEndpoints")))?;
        summaries.extend(page.endpoints().iter().cloned());
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    let mut rows = Vec::new();
    for s in summaries {
        let tags = match tags_of(clients, s.endpoint_arn().unwrap_or_default()).await {
            Ok(t) => t,
            // Deleted since it was listed (another `undeploy`): not an error, not a row.
            Err(e) => match describe(clients, s.endpoint_name().unwrap_or_default()).await {
                Err(gone) if gone.kind() == Some(&ErrorKind::NotFound) => continue,
                _ => return Err(e),
            },
        };
        if !tags.contains_key(TAG_ENDPOINT) {
            continue;
        }
        let name = s.endpoint_name().unwrap_or_default().to_string();
        let d = describe(clients, &name).await;
        let config_name = d.as_ref().ok().and_then(|d| d.endpoint_config_name()).unwrap_or(&name).to_string();
        let variant = sm
            .describe_endpoint_config()
            .endpoint_config_name(&config_name)
            .send()
            .await
            .ok()
            .and_then(|c| c.production_variants().first().cloned());
        let instance_type =
            variant.as_ref().and_then(|v| v.instance_type()).map(|t| t.as_str().to_string()).unwrap_or_default();
        let count = d
            .as_ref()
            .ok()
            .and_then(|d| d.production_variants().first().and_then(|v| v.current_instance_count()))
            .or_else(|| variant.as_ref().and_then(|v| v.initial_instance_count()))
            .unwrap_or(1)
            .max(0) as u32;
        let created = s.creation_time().map(|c| c.as_secs_f64());
        let hourly = prices.rate(&instance_type).map(|r| r * count as f64);
        rows.push(EndpointRow {
            name,
            status: s.endpoint_status().map(|s| s.as_str().to_string()).unwrap_or_default(),
            instance_type,
            count,
            created,
            source: tags.get(TAG_SOURCE).cloned().unwrap_or_default(),
            container: tags.get(TAG_CONTAINER).cloned().unwrap_or_default(),
            hourly_usd: hourly,
            cost_so_far_usd: hourly.zip(created).map(|(h, c)| h * ((now - c).max(0.0) / 3600.0)),
        });
    }
    Ok(rows)
}

pub fn render_list(rows: &[EndpointRow], now: f64) -> String {
    if rows.is_empty() {
        return "no oxtune endpoints in this region (`oxtune deploy JOB` creates one)\n".into();
    }
    let mut table = vec![["endpoint", "status", "instance", "age", "$/h", "cost so far", "source"]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()];
    for r in rows {
        table.push(vec![
            r.name.clone(),
            r.status.clone(),
            if r.count == 1 { r.instance_type.clone() } else { format!("{} × {}", r.count, r.instance_type) },
            r.created.map(|c| fmt_duration((now - c).max(0.0))).unwrap_or_default(),
            r.hourly_usd.map(fmt_usd).unwrap_or_else(|| "?".into()),
            r.cost_so_far_usd.map(fmt_usd).unwrap_or_else(|| "?".into()),
            r.source.clone(),
        ]);
    }
    let total: f64 = rows.iter().filter_map(|r| r.hourly_usd).sum();
    format!(
        "{}endpoints bill every hour they exist: {} per hour in all; `oxtune undeploy NAME` stops one\n",
        crate::format::table(&table),
        fmt_usd(total)
    )
}

/// What `undeploy` did to each of the three resources.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Undeployed {
    pub endpoint: Outcome,
    pub config: Outcome,
    pub models: Vec<(String, Outcome)>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Outcome {
    Deleted,
    AlreadyGone,
}

async fn tolerate_gone<T, E, R>(
    result: Result<T, aws_sdk_sagemaker::error::SdkError<E, R>>,
    c: ErrorContext,
) -> Result<Outcome, Error>
where
    E: aws_sdk_sagemaker::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match result {
        Ok(_) => Ok(Outcome::Deleted),
        Err(e) => {
            let err = explain(&e, &c);
            if err.kind() == Some(&ErrorKind::NotFound) {
                Ok(Outcome::AlreadyGone)
            } else {
                Err(err)
            }
        }
    }
}

/// Delete the endpoint, then its config, then its models; each may already be gone. An endpoint
/// that exists without oxtune's tag is refused unless `force` (it is someone else's).
pub async fn undeploy(clients: &Clients, name: &str, force: bool) -> Result<Undeployed, Error> {
    let sm = &clients.sagemaker;
    let (config_name, exists) = match describe(clients, name).await {
        Ok(d) => {
            let tags = tags_of(clients, d.endpoint_arn().unwrap_or_default()).await?;
            if !force && !tags.contains_key(TAG_ENDPOINT) {
                return Err(Error::Invalid(format!(
                    "endpoint {name} was not created by `oxtune deploy` (no {TAG_ENDPOINT} tag); pass --force to delete it anyway"
                )));
            }
            (d.endpoint_config_name().unwrap_or(name).to_string(), true)
        }
        Err(e) if e.kind() == Some(&ErrorKind::NotFound) => {
            // `deploy` names the config and the model after the endpoint.
            (name.to_string(), false)
        }
        Err(e) => return Err(e),
    };
    let models: Vec<String> = match sm.describe_endpoint_config().endpoint_config_name(&config_name).send().await {
        Ok(c) => c.production_variants().iter().filter_map(|v| v.model_name().map(str::to_string)).collect(),
        Err(_) => vec![name.to_string()],
    };
    let endpoint = if exists {
        tolerate_gone(sm.delete_endpoint().endpoint_name(name).send().await, ctx(clients, "DeleteEndpoint")).await?
    } else {
        Outcome::AlreadyGone
    };
    let config = tolerate_gone(
        sm.delete_endpoint_config().endpoint_config_name(&config_name).send().await,
        ctx(clients, "DeleteEndpointConfig"),
    )
    .await?;
    let mut deleted_models = Vec::new();
    for m in models {
        let o = tolerate_gone(sm.delete_model().model_name(&m).send().await, ctx(clients, "DeleteModel")).await?;
        deleted_models.push((m, o));
    }
    Ok(Undeployed { endpoint, config, models: deleted_models })
}

/// The `invoke` settings an endpoint's tags carry: its container, whether it speaks chat, and the
/// adapter to select (an endpoint serving an unmerged adapter).
pub fn served_as(tags: &BTreeMap<String, String>) -> (Option<super::serving::Container>, Option<bool>, Option<String>) {
    (
        tags.get(TAG_CONTAINER).and_then(|c| super::serving::Container::from_key(c)),
        tags.get(TAG_CHAT).map(|c| c == "true"),
        tags.get(super::plan::TAG_ADAPTER).cloned(),
    )
}
