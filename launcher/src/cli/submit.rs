//! `oxtune submit`: validate, price, upload local data and create the training job.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{block_on, env_var, job_end_code, Cli, Failure, Res, EXIT_OK};
use crate::aws::{AwsOptions, ErrorContext};
use crate::format::{fmt_duration, fmt_usd};
use crate::jobfile::Overrides;
use crate::plan::{SubmitOptions, SubmitPlan};

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The job file (TOML).
    pub job_file: PathBuf,
    #[command(flatten)]
    pub overrides: Overrides,
    /// Print the CreateTrainingJob request as JSON and stop (no AWS call, no upload).
    #[arg(long)]
    pub dry_run: bool,
    /// Refuse the job if its estimated cost exceeds this many USD.
    #[arg(long)]
    pub max_cost: Option<f64>,
    /// Follow the job after creating it (like `oxtune wait`).
    #[arg(long)]
    pub wait: bool,
    /// Calibration file for the estimate.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
}

pub(super) fn run(cli: &Cli, a: &SubmitArgs) -> Res {
    let o = SubmitOptions {
        job_file: &a.job_file,
        overrides: &a.overrides,
        region: cli.region.clone(),
        calibration: a.calibration.as_deref(),
        max_cost: a.max_cost,
        now: crate::clock::now_epoch() as u64,
    };
    let p: SubmitPlan = crate::plan::submission(&o, &env_var, &mut |w| eprintln!("{w}"))?;
    if a.dry_run {
        println!("{}", p.request.redacted_json(&p.job.passed_env));
        if let Some(l) = &p.estimate_line {
            eprintln!("{l}");
        }
        if let Some(w) = p.worst_case_cost {
            eprintln!("worst case (max runtime {}): {}", fmt_duration(p.job.max_runtime_s as f64), fmt_usd(w));
        }
        eprintln!("dry run: nothing was uploaded or created");
        return Ok(EXIT_OK);
    }
    let opts =
        AwsOptions::new(p.region.clone(), cli.profile.clone().or(p.job.profile.clone()), cli.endpoint_url.clone());
    block_on(async move {
        let clients = crate::aws::connect(&opts).await.map_err(Failure::error)?;
        let uris = crate::upload::upload_job_channels(&clients.s3, &p.job, &clients.region, false)
            .await
            .map_err(Failure::error)?;
        let request = crate::request::build(&p.job, &uris).map_err(Failure::invalid)?;
        let ctx = ErrorContext {
            operation: "CreateTrainingJob".into(),
            region: clients.region.clone(),
            instance_type: Some(p.job.instance_type.clone()),
            spot: p.job.spot,
            role: p.job.role.clone(),
            job: Some(p.job.job_name.clone()),
        };
        request.send(&clients.sagemaker).await.map_err(|e| crate::aws::explain(&e, &ctx))?;
        println!("{}", p.job.job_name);
        eprintln!("created training job {} in {}", p.job.job_name, clients.region);
        eprintln!("console: {}", crate::aws::console_url(&clients.region, &p.job.job_name));
        if let Some(l) = &p.estimate_line {
            eprintln!("{l}");
        }
        if a.wait {
            let prices = crate::prices::load(&clients.region)
                .unwrap_or_else(|_| crate::catalogue::embedded_prices("us-east-1").expect("embedded"));
            let opts = crate::jobs::WaitOptions { poll: Duration::from_secs(15), timeout: None, show_logs: true };
            let mut out = std::io::stdout();
            let redactor = p.job.redactor();
            let (end, _) = crate::jobs::wait(&clients, &p.job.job_name, &opts, &prices, &mut out, &redactor).await?;
            return Ok(job_end_code(end));
        }
        Ok(EXIT_OK)
    })
}
