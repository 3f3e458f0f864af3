//! `oxtune submit`: validate, price, upload local data and create the training job.

use super::*;

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

/// Everything checked before the network: the request, the estimate and warnings.
pub struct Prepared {
    pub job: Job,
    pub request: crate::request::CreateTrainingJobRequest,
    pub estimate_line: Option<String>,
    pub estimated_cost: Option<f64>,
    pub worst_case_cost: Option<f64>,
    pub region: Option<String>,
}

/// Resolve, validate every limit and the hyperparameters, and price the job — no network.
pub fn prepare_submission(cli: &Cli, a: &SubmitArgs, now: u64) -> Result<Prepared, Failure> {
    let f = jobfile::read_job_file(&a.job_file).map_err(Failure::invalid)?;
    let job = jobfile::resolve(Some((&a.job_file, f)), &a.overrides, &env_var, now).map_err(Failure::invalid)?;
    for w in &job.warnings {
        eprintln!("warning: {w}");
    }
    let mut problems = Vec::new();
    let spec = match trainer::spec::JobSpec::from_hyperparameters(&job.hyperparameters) {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push(format!("hyperparameters: {e}"));
            None
        }
    };
    // Local channels must exist; planned URIs stand in for the upload.
    let mut uris = BTreeMap::new();
    for c in &job.channels {
        if let Source::Local(p) = &c.source {
            if !p.exists() {
                problems.push(format!("channel `{}`: {} does not exist", c.name, p.display()));
            }
            match crate::request::planned_channel_uri(&job, &c.name) {
                Some(u) => {
                    uris.insert(c.name.clone(), u);
                }
                None => problems.push(format!(
                    "channel `{}` is a local path, so it must be uploaded: set `output_path` (or `input_prefix`) in [sagemaker]",
                    c.name
                )),
            }
        }
    }
    let request = match crate::request::build(&job, &uris) {
        Ok(r) => Some(r),
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    if let Some(r) = &request {
        problems.extend(crate::limits::check_request(r));
    }
    let region = cli
        .region
        .clone()
        .or(job.region.clone())
        .or_else(|| env_var("AWS_REGION"))
        .or_else(|| env_var("AWS_DEFAULT_REGION"));
    if let (Some(img), Some(region)) = (&job.image, &region) {
        if let Ok(Some(img_region)) = crate::limits::check_image_uri(img) {
            if &img_region != region {
                problems.push(format!(
                    "the image is in {img_region} but the job runs in {region}; SageMaker pulls training images from ECR in the job's region — push the image to {region} or run the job in {img_region}"
                ));
            }
        }
    }
    let catalogue = Catalogue::embedded();
    match catalogue.instance(&job.instance_type) {
        None => eprintln!("warning: {} is not in oxtune's catalogue; no memory check or price", job.instance_type),
        Some(i) => {
            let g = catalogue.gpu_of(i);
            if let Some(why) = &g.unsupported {
                problems.push(format!("{} is not supported: {why}", job.instance_type));
            }
        }
    }
    if !problems.is_empty() {
        let mut m = format!(
            "the job is not valid ({} problem{}); nothing was sent to AWS:",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
        for p in &problems {
            m.push_str(&format!("\n  - {p}"));
        }
        return Err(Failure::invalid(m));
    }
    let request = request.expect("no problems means the request was built");
    let spec = spec.expect("no problems means the spec is valid");

    // Price: estimate + worst case (max runtime × rate).
    let price_region = region.clone().unwrap_or_else(|| "us-east-1".into());
    let prices = crate::prices::load(&price_region).ok();
    let rate = prices.as_ref().and_then(|p| p.rate(&job.instance_type));
    let worst_case_cost = rate.map(|r| r * job.instance_count as f64 * job.max_runtime_s as f64 / 3600.0);
    let cal = Calibration::load(a.calibration.as_deref()).map_err(Failure::invalid)?;
    let mut estimate_line = None;
    let mut estimated_cost = None;
    let est = (|| -> Result<crate::estimate::Row, crate::Error> {
        let (name, config, model_dir) = model_for(None, Some(&job), &spec, &job.base_dir)?;
        let tokens = match (job.estimate.tokens, train_channel_path(&job)) {
            (Some(t), _) => {
                TokenCount { tokens: t, samples: None, exact: true, source: "given".into(), data_bytes: None }
            }
            (None, Some(d)) => count_data_tokens(&d, model_dir.as_deref(), &spec, &cal)?,
            (None, None) => {
                return Err(crate::Error::Invalid(
                    "the train channel is on S3; add `[estimate] tokens = N` for an estimate".into(),
                ))
            }
        };
        let input = estimate_input(&spec, name, config, tokens, Checkpointing::Auto, job.instance_count, None, None);
        let prices =
            prices.clone().ok_or_else(|| crate::Error::Invalid(format!("no prices for region {price_region}")))?;
        let e = crate::estimate::estimate(&input, &catalogue, &prices, &cal, std::slice::from_ref(&job.instance_type));
        e.rows
            .into_iter()
            .next()
            .ok_or_else(|| crate::Error::Invalid(format!("{} is not in the catalogue", job.instance_type)))
    })();
    match est {
        Ok(row) => {
            if !row.fits {
                return Err(Failure::invalid(format!(
                    "{} will not fit this job: {}; nothing was sent to AWS (see `oxtune estimate` for instances that fit)",
                    job.instance_type, row.reason
                )));
            }
            let spot = if job.spot {
                row.cost_spot.map(|c| format!(", spot ≈ {}", fmt_usd(c))).unwrap_or_default()
            } else {
                String::new()
            };
            estimate_line = Some(format!(
                "estimate: {} on {} × {} ({}), {} on-demand{spot}",
                fmt_duration(row.billable_seconds),
                job.instance_count,
                job.instance_type,
                row.reason,
                row.cost_on_demand.map(fmt_usd).unwrap_or_else(|| "unpriced".into())
            ));
            estimated_cost = if job.spot { row.cost_spot_high.or(row.cost_on_demand) } else { row.cost_on_demand };
            if row.billable_seconds > job.max_runtime_s as f64 {
                eprintln!(
                    "warning: the estimate ({}) exceeds max_runtime ({}): the job may be stopped before it finishes",
                    fmt_duration(row.billable_seconds),
                    fmt_duration(job.max_runtime_s as f64)
                );
            }
        }
        Err(e) => eprintln!("note: no estimate: {e}"),
    }
    if let Some(max) = a.max_cost {
        match estimated_cost {
            Some(c) if c > max => {
                return Err(Failure::invalid(format!(
                    "refusing: the estimated cost {} exceeds --max-cost {}; nothing was sent to AWS",
                    fmt_usd(c),
                    fmt_usd(max)
                )))
            }
            Some(_) => {}
            None => {
                return Err(Failure::invalid(
                    "refusing: --max-cost needs a cost estimate, and there is none (see the note above); nothing was sent to AWS",
                ))
            }
        }
        if let Some(w) = worst_case_cost.filter(|w| *w > max) {
            eprintln!(
                "warning: max_runtime {} allows up to {} (> --max-cost {}); lower max_runtime to cap the bill",
                fmt_duration(job.max_runtime_s as f64),
                fmt_usd(w),
                fmt_usd(max)
            );
        }
    }
    Ok(Prepared { job, request, estimate_line, estimated_cost, worst_case_cost, region })
}

pub(super) fn cmd_submit(cli: &Cli, a: &SubmitArgs) -> Res {
    let now = crate::clock::now_epoch() as u64;
    let p = prepare_submission(cli, a, now)?;
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
        request.send(&clients.sagemaker).await.map_err(|e| Failure::error(crate::aws::explain(&e, &ctx).1))?;
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
            let (code, _) =
                crate::jobs::wait(&clients, &p.job.job_name, &opts, &prices, &mut out, &redactor_for(&p.job)).await?;
            return Ok(code);
        }
        Ok(EXIT_OK)
    })
}

pub(super) fn redactor_for(job: &Job) -> Redactor {
    let mut r = Redactor::from_env();
    for (k, v) in &job.environment {
        if crate::redact::is_secret_name(k) || job.passed_env.contains(k) {
            r.add(v);
        }
    }
    r
}
