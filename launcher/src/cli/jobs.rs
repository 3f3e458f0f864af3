//! Following jobs: `status`, `list`, `stop`, `logs`, `wait`, `compare`.

use clap::Args;

use super::{job_end_code, Failure, Res, EXIT_OK};
use crate::aws::{AwsOptions, Clients};
use crate::format::parse_duration;
use crate::prices::load_or_empty as region_prices;
use crate::redact::Redactor;

#[derive(Debug, Args)]
pub struct StatusArgs {
    pub job: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// InProgress | Completed | Failed | Stopping | Stopped.
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long)]
    pub name_contains: Option<String>,
    /// Created within this long, e.g. 2d, 12h.
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub max: usize,
    /// Skip the per-job describe (no instance/cost columns; one call in total).
    #[arg(long)]
    pub brief: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    pub job: String,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub job: String,
    /// Follow until the job reaches a final status.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only events newer than this, e.g. 30m.
    #[arg(long)]
    pub since: Option<String>,
    /// Poll interval when following.
    #[arg(long, default_value = "5s")]
    pub poll: String,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    pub job: String,
    /// Give up after this long (exit 3).
    #[arg(long)]
    pub timeout: Option<String>,
    #[arg(long, default_value = "15s")]
    pub poll: String,
    /// Also print the job's log lines.
    #[arg(long)]
    pub logs: bool,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Two or more training jobs side by side (or none, with --experiment).
    #[arg(num_args = 2.., required_unless_present = "experiment")]
    pub jobs: Vec<String>,
    /// List this MLflow experiment's runs instead, best first by --metric.
    #[arg(long, value_name = "NAME", conflicts_with = "jobs")]
    pub experiment: Option<String>,
    /// Rank runs by this metric (default eval_loss where runs have it, else loss; names with loss,
    /// perplexity, kl, error or time rank lower-first, the rest higher-first).
    #[arg(long, requires = "experiment")]
    pub metric: Option<String>,
    /// The MLflow server: http(s)://HOST[:PORT] or a SageMaker MLflow ARN (default $MLFLOW_TRACKING_URI).
    #[arg(long, value_name = "URI", requires = "experiment")]
    pub mlflow: Option<String>,
    /// At most this many runs, newest first before ranking.
    #[arg(long, default_value_t = 100, requires = "experiment")]
    pub max: usize,
    #[arg(long)]
    pub json: bool,
}

async fn connect(o: &AwsOptions) -> Result<Clients, Failure> {
    crate::aws::connect(o).await.map_err(Failure::error)
}

pub(super) async fn status(o: &AwsOptions, a: &StatusArgs) -> Res {
    let clients = connect(o).await?;
    let info = crate::jobs::describe(&clients, &a.job).await?;
    let prices = region_prices(&clients.region);
    let cost = crate::jobs::job_cost(&info, &prices, crate::clock::now_epoch());
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "job": info, "cost": cost })).unwrap_or_default()
        );
    } else {
        print!("{}", crate::jobs::render_status(&info, cost.as_ref()));
    }
    Ok(EXIT_OK)
}

pub(super) async fn list(o: &AwsOptions, a: &ListArgs) -> Res {
    let created_after = match &a.since {
        Some(s) => Some(
            crate::clock::now_epoch()
                - parse_duration(s).map_err(|e| Failure::invalid(format!("--since: {e}")))?.as_secs_f64(),
        ),
        None => None,
    };
    let clients = connect(o).await?;
    let prices = region_prices(&clients.region);
    let f = crate::jobs::ListFilter {
        status: a.status.clone(),
        name_contains: a.name_contains.clone(),
        created_after,
        max: a.max,
        details: !a.brief,
    };
    let rows = crate::jobs::list(&clients, &f, &prices).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
    } else {
        print!("{}", crate::jobs::render_list(&rows));
    }
    Ok(EXIT_OK)
}

pub(super) async fn stop(o: &AwsOptions, a: &StopArgs) -> Res {
    let clients = connect(o).await?;
    match crate::jobs::stop(&clients, &a.job).await? {
        crate::jobs::StopOutcome::Requested => {
            println!(
                "stop requested for {}: it goes Stopping → Stopped (the trainer gets SIGTERM and 120 s to checkpoint)",
                a.job
            );
        }
        crate::jobs::StopOutcome::AlreadyFinished(status) => {
            println!("{} is not running ({status}); nothing to stop", a.job);
        }
    }
    Ok(EXIT_OK)
}

pub(super) async fn logs(o: &AwsOptions, a: &LogsArgs) -> Res {
    let since = match &a.since {
        Some(s) => Some(
            ((crate::clock::now_epoch()
                - parse_duration(s).map_err(|e| Failure::invalid(format!("--since: {e}")))?.as_secs_f64())
                * 1000.0) as i64,
        ),
        None => None,
    };
    let poll = parse_duration(&a.poll).map_err(|e| Failure::invalid(format!("--poll: {e}")))?;
    let clients = connect(o).await?;
    let mut out = std::io::stdout();
    crate::jobs::logs(&clients, &a.job, a.follow, since, poll, &mut out, &Redactor::from_env()).await?;
    Ok(EXIT_OK)
}

pub(super) async fn wait(o: &AwsOptions, a: &WaitArgs) -> Res {
    let timeout = a
        .timeout
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| Failure::invalid(format!("--timeout: {e}")))?;
    let poll = parse_duration(&a.poll).map_err(|e| Failure::invalid(format!("--poll: {e}")))?;
    let clients = connect(o).await?;
    let prices = region_prices(&clients.region);
    let opts = crate::jobs::WaitOptions { poll, timeout, show_logs: a.logs };
    let mut out = std::io::stdout();
    let (end, _) = crate::jobs::wait(&clients, &a.job, &opts, &prices, &mut out, &Redactor::from_env()).await?;
    Ok(job_end_code(end))
}

pub(super) async fn compare(o: &AwsOptions, a: &CompareArgs) -> Res {
    if let Some(name) = &a.experiment {
        return compare_experiment(o, a, name).await;
    }
    let clients = connect(o).await?;
    let mut infos = Vec::new();
    for j in &a.jobs {
        infos.push(crate::jobs::describe(&clients, j).await?);
    }
    let c = crate::jobs::compare(&infos, &region_prices(&clients.region));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&c).unwrap_or_default());
    } else {
        print!("{}", crate::jobs::render_comparison(&c));
    }
    Ok(EXIT_OK)
}

/// `compare --experiment`: the experiment's runs from MLflow, best first.
async fn compare_experiment(o: &AwsOptions, a: &CompareArgs, name: &str) -> Res {
    use trainer::track::mlflow::Client;
    use trainer::track::target::{self, Auth, URI_VAR};
    let Some(uri) = a.mlflow.clone().or_else(|| super::env_var(URI_VAR)) else {
        return Err(Failure::invalid(format!(
            "--experiment {name}: name the MLflow server with --mlflow URI or {URI_VAR}"
        )));
    };
    let env = [(URI_VAR.to_string(), uri.clone())];
    let Some(target) = target::from_env(&env, "compare").map_err(Failure::invalid)? else {
        return Err(Failure::invalid("--mlflow: empty URI (use http(s)://HOST[:PORT] or a SageMaker MLflow ARN)"));
    };
    let mut client = Client::new(&target);
    if let Auth::SageMaker { .. } = target.auth {
        client = client.with_credentials(crate::aws::sigv4_credentials(o).await.map_err(Failure::from)?);
    }
    let mlflow = |e: trainer::track::mlflow::ApiError| Failure::error(format!("MLflow at {uri}: {e}"));
    let Some(id) = client.find_experiment(name).map_err(mlflow)? else {
        return Err(Failure::invalid(format!("MLflow at {uri} has no experiment `{name}`")));
    };
    let runs = client.search_runs(&id, a.max).map_err(mlflow)?;
    let metric = a.metric.clone().unwrap_or_else(|| crate::jobs::experiment::default_metric(&runs).to_string());
    let v = crate::jobs::experiment::view(name, &runs, &metric);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print!("{}", crate::jobs::experiment::render(&v));
    }
    Ok(EXIT_OK)
}
