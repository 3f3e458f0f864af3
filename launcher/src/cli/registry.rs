//! The model registry: `register`, `models`, `approve`, `reject`.

use clap::Args;

use super::{Failure, Res, EXIT_OK};
use crate::aws::AwsOptions;
use crate::deploy::serving::{Container, Serving};
use crate::registry::{self, Approval, RegisterInput};

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// A Completed training job with a merged model uploaded uncompressed (what `deploy` serves).
    pub job: String,
    /// The model package group (created when missing).
    #[arg(long)]
    pub group: String,
    /// Register the version as Approved (deployable at once).
    #[arg(long, conflicts_with = "pending")]
    pub approve: bool,
    /// Register it as PendingManualApproval (the default).
    #[arg(long)]
    pub pending: bool,
    #[arg(long)]
    pub description: Option<String>,
    /// The serving container recorded in the version (default: deploy's default).
    #[arg(long, value_enum)]
    pub container: Option<Container>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// The model package group.
    pub group: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ApprovalArgs {
    pub group: String,
    pub version: i32,
    /// Why (the version's approval description).
    #[arg(long)]
    pub note: Option<String>,
}

pub(super) async fn register(o: &AwsOptions, a: &RegisterArgs) -> Res {
    registry::check_group_name(&a.group)?;
    crate::limits::check_resource_name("the training job name", &a.job)?;
    let input = RegisterInput {
        group: a.group.clone(),
        approval: if a.approve { Approval::Approved } else { Approval::Pending },
        description: a.description.clone(),
        container: a.container.unwrap_or(Serving::embedded().default),
    };
    let clients = crate::aws::connect(o).await.map_err(Failure::error)?;
    let job = crate::jobs::describe(&clients, &a.job).await?;
    let r = registry::register(&clients, &job, &input).await?;
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
        return Ok(EXIT_OK);
    }
    println!("registered {} as {} version {} ({})", a.job, r.group, r.version, r.approval.name());
    println!("  {}", r.arn);
    match &r.report {
        Some(uri) => {
            let list: Vec<String> = r.scores.iter().map(|(k, v)| format!("{k}={v:.4}")).collect();
            println!("  scores   {} (model quality report {uri})", list.join(" "));
        }
        None => println!("  scores   none"),
    }
    if r.approval != Approval::Approved {
        println!("approve it with `oxtune approve {} {}`; then `oxtune deploy {}`", r.group, r.version, r.group);
    } else {
        println!("deploy it with `oxtune deploy {}`", r.group);
    }
    Ok(EXIT_OK)
}

pub(super) async fn models(o: &AwsOptions, a: &ModelsArgs) -> Res {
    registry::check_group_name(&a.group)?;
    let clients = crate::aws::connect(o).await.map_err(Failure::error)?;
    let v = registry::versions(&clients, &a.group).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print!("{}", registry::render_versions(&a.group, &v));
    }
    Ok(EXIT_OK)
}

pub(super) async fn set_approval(o: &AwsOptions, a: &ApprovalArgs, approval: Approval) -> Res {
    registry::check_group_name(&a.group)?;
    let clients = crate::aws::connect(o).await.map_err(Failure::error)?;
    let arn = registry::set_approval(&clients, &a.group, a.version, approval, a.note.as_deref()).await?;
    println!("{} version {} is {} ({arn})", a.group, a.version, approval.name());
    Ok(EXIT_OK)
}
