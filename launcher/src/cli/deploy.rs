//! After training: `deploy`, `invoke`, `endpoints`, `undeploy`.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::{Failure, Res, EXIT_ERROR, EXIT_OK, EXIT_TIMEOUT};
use crate::aws::{AwsOptions, Clients};
use crate::catalogue::Catalogue;
use crate::deploy::endpoints::{self, EndpointEnd, Outcome};
use crate::deploy::invoke::{self, InvokeOptions, Prompt};
use crate::deploy::serving::{Container, Serving};
use crate::deploy::{DeployInput, Source};
use crate::format::{fmt_usd, parse_duration};
use crate::prices::load_or_empty as region_prices;

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// A Completed training job (its merged model), an s3:// prefix holding a merged model, or a
    /// registered model: GROUP (its newest approved version) or GROUP/VERSION.
    pub source: String,
    /// Endpoint instance type (must hold the model in GPU memory).
    #[arg(long, default_value = "ml.g5.2xlarge")]
    pub instance: String,
    /// Name of the endpoint, its config and its model (default: the job's name).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// Serving container (image and host AMI pinned in launcher/data/serving.toml).
    #[arg(long, value_enum)]
    pub container: Option<Container>,
    /// Execution role for the endpoint's model (default: the training job's role).
    #[arg(long)]
    pub role: Option<String>,
    /// Longest prompt + completion in tokens (default: the job's max_seq_length).
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Serve the job's unmerged LoRA adapter on this base model (an s3:// prefix, save_pretrained
    /// layout) instead of its merged model (LMI only).
    #[arg(long, value_name = "S3_PREFIX")]
    pub adapter_on: Option<String>,
    /// Deploy a registered version that is not Approved (GROUP/VERSION).
    #[arg(long)]
    pub allow_unapproved: bool,
    /// Show what would be created and what it costs; create nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Follow the endpoint to InService (exit 0), Failed (1) or --timeout (3).
    #[arg(long)]
    pub wait: bool,
    #[arg(long, default_value = "30s")]
    pub poll: String,
    #[arg(long, default_value = "60m")]
    pub timeout: String,
}

#[derive(Debug, Args)]
pub struct InvokeArgs {
    pub endpoint: String,
    #[arg(long, conflicts_with = "file", required_unless_present = "file")]
    pub prompt: Option<String>,
    /// Prompts in any format the trainer reads; rows with references are scored like the job's evaluation.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Print tokens as they arrive (InvokeEndpointWithResponseStream).
    #[arg(long)]
    pub stream: bool,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// 0 = greedy, as the job's evaluation.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// A system message (chat models).
    #[arg(long)]
    pub system: Option<String>,
    /// The endpoint's container, when it was not deployed by oxtune (default: its tag, else lmi).
    #[arg(long, value_enum)]
    pub container: Option<Container>,
    /// Send --prompt as a chat turn (default: the endpoint's tag, set from the model's chat template).
    #[arg(long, overrides_with = "no_chat")]
    pub chat: bool,
    #[arg(long, overrides_with = "chat")]
    pub no_chat: bool,
    /// One JSON object per prompt (prompt, reference, prediction, scores), then the means.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EndpointsArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UndeployArgs {
    pub endpoint: String,
    /// Delete an endpoint that `oxtune deploy` did not create.
    #[arg(long)]
    pub force: bool,
}

async fn connect(o: &AwsOptions) -> Result<Clients, Failure> {
    crate::aws::connect(o).await.map_err(Failure::error)
}

fn duration(flag: &str, text: &str) -> Result<std::time::Duration, Failure> {
    parse_duration(text).map_err(|e| Failure::invalid(format!("{flag}: {e}")))
}

pub(super) async fn deploy(o: &AwsOptions, a: &DeployArgs) -> Res {
    let serving = Serving::embedded();
    // GROUP/VERSION names a registered model; a bare name is a job, else a model package group.
    let registered = match a.source.starts_with("s3://") || !a.source.contains('/') {
        true => None,
        false => Some(crate::registry::parse_model_ref(&a.source)?),
    };
    let source = match &registered {
        Some((group, _)) => Source::Job(group.clone()),
        None => Source::parse(&a.source)?,
    };
    let mut input = DeployInput {
        source,
        name: a.name.clone(),
        instance_type: a.instance.clone(),
        count: a.count,
        container: a.container.unwrap_or(serving.default),
        role: a.role.clone(),
        max_model_len: a.max_model_len,
        adapter_on: a.adapter_on.clone(),
    };
    let catalogue = Catalogue::embedded();
    input.check(&catalogue)?;
    let (poll, timeout) = (duration("--poll", &a.poll)?, duration("--timeout", &a.timeout)?);
    let clients = connect(o).await?;
    let model = match (&registered, &input.source) {
        (Some((group, version)), _) => Some((group.clone(), *version)),
        (None, Source::Job(name)) if !job_exists(&clients, name).await? => Some((name.clone(), None)),
        _ => None,
    };
    if let Some((group, version)) = model {
        let (job, name) = registered_job(&clients, &group, version, a.allow_unapproved).await?;
        input.source = Source::Job(job);
        input.name = input.name.or(Some(name));
    }
    let prices = region_prices(&clients.region);
    let now = crate::clock::now_epoch() as u64;
    let plan = crate::deploy::prepare(&clients, &input, &catalogue, &prices, now).await?;
    let image = serving.image(plan.container);
    println!("endpoint {} in {}:", plan.name, clients.region);
    println!("  model      {}", plan.model_prefix);
    if let Some(src) = &plan.adapter_source {
        println!(
            "  adapter    {src} (copied to {}adapters/ on create), base {}",
            plan.model_prefix,
            plan.environment.get("OPTION_MODEL_ID").cloned().unwrap_or_default()
        );
    }
    println!("  container  {} {} (host AMI {})", image.name, plan.image, plan.ami);
    println!(
        "  instance   {}{} — {}",
        if plan.count > 1 { format!("{} × ", plan.count) } else { String::new() },
        plan.instance_type,
        plan.fit.describe()
    );
    println!(
        "  price      {} (on-demand, {}); it bills every hour until `oxtune undeploy {}`",
        plan.hourly_usd.map(|p| format!("{}/hour", fmt_usd(p))).unwrap_or_else(|| "unknown".into()),
        prices.origin,
        plan.name
    );
    if a.dry_run {
        println!("  environment {}", serde_json::to_string(&plan.environment).unwrap_or_default());
        println!("dry run: nothing was created");
        return Ok(EXIT_OK);
    }
    let arn = endpoints::create(&clients, &plan).await?;
    println!("created {arn} (model and endpoint config {}); it takes several minutes to start", plan.name);
    if !a.wait {
        println!("follow it with `oxtune deploy … --wait` next time, or `oxtune endpoints`");
        return Ok(EXIT_OK);
    }
    let mut out = std::io::stdout();
    match endpoints::wait(&clients, &plan.name, poll, timeout, &mut out).await? {
        EndpointEnd::InService => {
            println!("{} is InService: `oxtune invoke {} --prompt \"…\"`", plan.name, plan.name);
            Ok(EXIT_OK)
        }
        EndpointEnd::Failed { reason, logs } => {
            println!(
                "{} failed: {reason}\n  read {logs}\n  it still exists (and may bill): `oxtune undeploy {}`",
                plan.name, plan.name
            );
            Ok(EXIT_ERROR)
        }
        EndpointEnd::TimedOut(status) => {
            println!("{} is still {status} after {}; `oxtune endpoints` shows it later", plan.name, a.timeout);
            Ok(EXIT_TIMEOUT)
        }
    }
}

pub(super) async fn invoke(o: &AwsOptions, a: &InvokeArgs) -> Res {
    let cases = match (&a.prompt, &a.file) {
        (_, Some(f)) => Some(invoke::read_cases(f)?),
        _ => None,
    };
    let clients = connect(o).await?;
    let tags = endpoints::endpoint_tags(&clients, &a.endpoint).await?;
    let (tag_container, tag_chat, adapter) = endpoints::served_as(&tags);
    let container = a.container.or(tag_container).unwrap_or(Serving::embedded().default);
    let chat = if a.chat {
        true
    } else if a.no_chat {
        false
    } else {
        tag_chat.unwrap_or(false)
    };
    let opts = InvokeOptions {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        system: a.system.clone(),
        stream: a.stream,
        adapter,
    };
    let cases = cases.unwrap_or_else(|| {
        vec![invoke::Case {
            prompt: invoke::prompt_for(a.prompt.as_deref().unwrap_or_default(), chat),
            reference: None,
            source: "--prompt".into(),
        }]
    });
    let mut scored = Vec::new();
    for case in &cases {
        let body = invoke::request_body(container, &case.prompt, &opts)?;
        let prediction = if a.stream && !a.json {
            let mut out = std::io::stdout();
            let text = invoke::invoke_stream(&clients, &a.endpoint, &body, &mut |piece| {
                let _ = write!(out, "{piece}");
                let _ = out.flush();
            })
            .await?;
            println!();
            text
        } else if a.stream {
            invoke::invoke_stream(&clients, &a.endpoint, &body, &mut |_| {}).await?
        } else {
            invoke::invoke(&clients, &a.endpoint, &body).await?
        };
        let scores = case.reference.as_deref().map(|r| invoke::score(r, &prediction));
        if a.json {
            println!(
                "{}",
                serde_json::json!({"source": case.source, "prompt": prompt_text(&case.prompt), "reference": case.reference, "prediction": prediction, "scores": scores})
            );
        } else if !a.stream {
            println!("{prediction}");
        }
        if let Some(s) = scores {
            scored.push(s);
        }
    }
    if !scored.is_empty() {
        let means = trainer::eval::score::aggregate(&scored);
        let line: Vec<String> = means.iter().map(|(k, v)| format!("{k}={v:.4}")).collect();
        if a.json {
            println!("{}", serde_json::json!({"cases": scored.len(), "means": means}));
        } else {
            println!("scored {} of {} prompts against their references: {}", scored.len(), cases.len(), line.join(" "));
        }
    }
    Ok(EXIT_OK)
}

fn prompt_text(p: &Prompt) -> serde_json::Value {
    match p {
        Prompt::Text(t) => serde_json::Value::String(t.clone()),
        Prompt::Chat(turns) => serde_json::json!(turns
            .iter()
            .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
            .collect::<Vec<_>>()),
    }
}

pub(super) async fn list(o: &AwsOptions, a: &EndpointsArgs) -> Res {
    let clients = connect(o).await?;
    let now = crate::clock::now_epoch();
    let rows = endpoints::list(&clients, &region_prices(&clients.region), now).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
    } else {
        print!("{}", endpoints::render_list(&rows, now));
    }
    Ok(EXIT_OK)
}

pub(super) async fn undeploy(o: &AwsOptions, a: &UndeployArgs) -> Res {
    crate::limits::check_resource_name("the endpoint name", &a.endpoint)?;
    let clients = connect(o).await?;
    let done = endpoints::undeploy(&clients, &a.endpoint, a.force).await?;
    let word = |o: &Outcome| match o {
        Outcome::Deleted => "deleted",
        Outcome::AlreadyGone => "already gone",
    };
    println!("endpoint {}: {}", a.endpoint, word(&done.endpoint));
    println!("endpoint config: {}", word(&done.config));
    for (m, o) in &done.models {
        println!("model {m}: {}", word(o));
    }
    Ok(EXIT_OK)
}

/// Whether training job `name` exists (a bare deploy source that is not one names a model group).
async fn job_exists(clients: &Clients, name: &str) -> Result<bool, Failure> {
    match crate::jobs::describe(clients, name).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == Some(&crate::aws::ErrorKind::NotFound) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The training job behind `group`'s version (the newest approved one without `version`), and the
/// endpoint name it gets by default; an unapproved version only with --allow-unapproved.
async fn registered_job(
    clients: &Clients,
    group: &str,
    version: Option<i32>,
    allow_unapproved: bool,
) -> Result<(String, String), Failure> {
    use crate::registry::Approval;
    let v = crate::registry::find(clients, group, version).await.map_err(|e| match version {
        None if e.is_invalid_input() => Failure::invalid(format!(
            "`{group}` is neither a training job nor a model package group with an approved version: {e}"
        )),
        _ => e.into(),
    })?;
    if v.approval != Approval::Approved && !allow_unapproved {
        return Err(Failure::invalid(format!(
            "{group} version {} is {}: approve it with `oxtune approve {group} {}`, or pass --allow-unapproved",
            v.version,
            v.approval.name(),
            v.version
        )));
    }
    let job = v.job.ok_or_else(|| {
        Failure::invalid(format!(
            "{group} version {} was not registered by oxtune (no {} metadata)",
            v.version,
            crate::registry::META_JOB
        ))
    })?;
    println!("registered model {group} version {} ({}), trained by {job}", v.version, v.approval.name());
    let stem: String = group.chars().take(56).collect();
    Ok((job, format!("{}-v{}", stem.trim_end_matches('-'), v.version)))
}
