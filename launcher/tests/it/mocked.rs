//! What moto does not emulate — StopTrainingJob, status transitions, billable time, failure
//! reasons, throttling, AccessDenied / ResourceLimitExceeded — through the AWS SDK's own test
//! utility (aws-smithy-mocks) with recorded response bodies from tests/fixtures/recorded/.
//! The clients are real SDK clients with oxtune's retry configuration; only the HTTP layer is
//! replaced by the mock interceptor.

use std::time::Duration;

use aws_smithy_mocks::{mock, Rule};
use launcher::aws::{advice, classify, explain, Clients, ErrorContext, ErrorKind};
use launcher::catalogue::embedded_prices;
use launcher::jobs::{self, JobEnd, StopOutcome, WaitOptions};
use launcher::redact::Redactor;

const JOB: &str = "llama-sft-20261123-120000";

fn recorded(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/recorded").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Real clients (oxtune's retry policy, 1 ms backoff) whose HTTP layer is the mock.
fn clients(sm_rules: &[&Rule], log_rules: &[&Rule]) -> Clients {
    crate::common::mock_clients(sm_rules, log_rules, &[], &[])
}

/// No log group yet: CloudWatch answers ResourceNotFoundException.
fn no_logs() -> Rule {
    mock!(aws_sdk_cloudwatchlogs::Client::describe_log_streams)
        .sequence()
        .http_status(
            400,
            Some(
                r#"{"__type":"ResourceNotFoundException","message":"The specified log group does not exist."}"#.into(),
            ),
        )
        .repeatedly()
        .build()
}

fn describe_sequence(files: &[&str]) -> Rule {
    let mut seq = mock!(aws_sdk_sagemaker::Client::describe_training_job).sequence();
    for f in files {
        seq = seq.http_status(200, Some(recorded(f)));
    }
    seq.repeatedly().build()
}

/// The kind and message of an AWS error (other variants fail the test).
fn aws_error(e: launcher::Error) -> (ErrorKind, String) {
    match e {
        launcher::Error::Aws { kind, message } => (kind, message),
        other => panic!("not an AWS error: {other:?}"),
    }
}

async fn run_wait(c: &Clients, timeout: Option<Duration>) -> (JobEnd, String) {
    let mut out = Vec::new();
    let opts = WaitOptions { poll: Duration::from_millis(1), timeout, show_logs: true };
    let (code, _) = jobs::wait(c, JOB, &opts, &embedded_prices("us-east-1").unwrap(), &mut out, &Redactor::default())
        .await
        .unwrap();
    (code, String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn stop_running_job_is_requested() {
    let stop =
        mock!(aws_sdk_sagemaker::Client::stop_training_job).sequence().http_status(200, Some("{}".into())).build();
    let c = clients(&[&stop], &[]);
    assert_eq!(jobs::stop(&c, JOB).await.unwrap(), StopOutcome::Requested);
    assert_eq!(stop.num_calls(), 1);
}

#[tokio::test]
async fn stop_is_idempotent_for_a_stopped_job() {
    let stop = mock!(aws_sdk_sagemaker::Client::stop_training_job)
        .sequence()
        .http_status(400, Some(recorded("error_stop_not_in_progress.json")))
        .build();
    let describe = describe_sequence(&["describe_stopped.json"]);
    let c = clients(&[&stop, &describe], &[]);
    let outcome = jobs::stop(&c, JOB).await.unwrap();
    assert_eq!(outcome, StopOutcome::AlreadyFinished("Stopped / Stopped".into()));
    // A ValidationException is not retried.
    assert_eq!(stop.num_calls(), 1);
}

#[tokio::test]
async fn stop_unknown_job_is_an_error() {
    let stop = mock!(aws_sdk_sagemaker::Client::stop_training_job)
        .sequence()
        .http_status(400, Some(recorded("error_not_found.json")))
        .build();
    let c = clients(&[&stop], &[]);
    let (kind, msg) = aws_error(jobs::stop(&c, "nope").await.unwrap_err());
    assert_eq!(kind, ErrorKind::NotFound);
    assert!(msg.contains("no training job named `nope` in us-east-1"), "{msg}");
}

#[tokio::test]
async fn wait_follows_transitions_through_stopping_to_stopped() {
    let describe = describe_sequence(&[
        "describe_starting.json",
        "describe_training.json",
        "describe_stopping.json",
        "describe_stopping.json",
        "describe_stopped_max_runtime.json",
    ]);
    let logs = no_logs();
    let c = clients(&[&describe], &[&logs]);
    let (code, out) = run_wait(&c, Some(Duration::from_secs(30))).await;
    assert_eq!(code, JobEnd::Stopped, "{out}");
    assert_eq!(describe.num_calls(), 5, "Stopping is polled until Stopped, then the loop ends");
    for want in [
        "Starting Launching requested ML instances",
        "Downloading Downloading input data",
        "Stopping Stopping the training job",
        "MaxRuntimeExceeded",
        "max runtime exceeded",
    ] {
        assert!(out.contains(want), "missing `{want}` in:\n{out}");
    }
    // 3720 billable s × 1 × $1.408/h = $1.45
    assert!(out.contains("cost: $1.45"), "{out}");
}

#[tokio::test]
async fn wait_completed_spot_reports_cost_and_savings() {
    let describe = describe_sequence(&["describe_training.json", "describe_completed_spot.json"]);
    let logs = no_logs();
    let c = clients(&[&describe], &[&logs]);
    let (code, out) = run_wait(&c, None).await;
    assert_eq!(code, JobEnd::Completed, "{out}");
    // Cost = BillableTimeInSeconds × InstanceCount × rate = 1200 × 2 × 1.408 / 3600 = $0.94;
    // spot savings = 1 − 1200/3600 = 67%.
    assert!(out.contains("training seconds: 3600, billable seconds: 1200"), "{out}");
    assert!(out.contains("cost: $0.94 (managed spot saved 67%)"), "{out}");
}

#[tokio::test]
async fn wait_failed_prints_the_failure_reason() {
    let describe = describe_sequence(&["describe_failed_algorithm.json"]);
    let logs = no_logs();
    let c = clients(&[&describe], &[&logs]);
    let (code, out) = run_wait(&c, None).await;
    assert_eq!(code, JobEnd::Failed);
    assert!(out.contains("failure reason: AlgorithmError: CUDA OOM at step 12"), "{out}");
}

#[tokio::test]
async fn wait_times_out_with_exit_3() {
    let describe = describe_sequence(&["describe_training.json"]);
    let logs = no_logs();
    let c = clients(&[&describe], &[&logs]);
    let (code, out) = run_wait(&c, Some(Duration::from_millis(20))).await;
    assert_eq!(code, JobEnd::TimedOut, "{out}");
    assert!(out.contains("timed out"), "{out}");
}

#[tokio::test]
async fn wait_shows_progress_from_metric_lines() {
    let describe =
        describe_sequence(&["describe_training.json", "describe_training.json", "describe_completed_spot.json"]);
    let streams = mock!(aws_sdk_cloudwatchlogs::Client::describe_log_streams)
        .sequence()
        .http_status(200, Some(format!(r#"{{"logStreams":[{{"logStreamName":"{JOB}/algo-1-1795435440"}}]}}"#)))
        .repeatedly()
        .build();
    let events = mock!(aws_sdk_cloudwatchlogs::Client::get_log_events)
        .sequence()
        .http_status(200, Some(r#"{"events":[{"timestamp":1795435500000,"message":"loading model","ingestionTime":1795435500001},{"timestamp":1795435600000,"message":"METRIC step=10 epoch=0.10 loss=2.5000 lr=2.0e-4","ingestionTime":1795435600001}],"nextForwardToken":"f/1","nextBackwardToken":"b/0"}"#.into()))
        .http_status(200, Some(r#"{"events":[],"nextForwardToken":"f/1","nextBackwardToken":"b/0"}"#.into()))
        .http_status(200, Some(r#"{"events":[{"timestamp":1795435700000,"message":"METRIC step=20 epoch=0.20 loss=2.0000 lr=2.0e-4","ingestionTime":1795435700001}],"nextForwardToken":"f/2","nextBackwardToken":"b/0"}"#.into()))
        .http_status(200, Some(r#"{"events":[],"nextForwardToken":"f/2","nextBackwardToken":"b/0"}"#.into()))
        .repeatedly()
        .build();
    let c = clients(&[&describe], &[&streams, &events]);
    let (code, out) = run_wait(&c, None).await;
    assert_eq!(code, JobEnd::Completed, "{out}");
    // epochs=2 and step 10 at epoch 0.10 → 200 steps in total.
    assert!(out.contains("progress: step 10/200 loss 2.5000 (5%)"), "{out}");
    assert!(out.contains("progress: step 20/200 loss 2.0000"), "{out}");
    assert!(out.contains("loading model"), "{out}");
}

#[tokio::test]
async fn status_of_a_capacity_failure_says_what_to_do() {
    let describe = describe_sequence(&["describe_failed_capacity.json"]);
    let c = clients(&[&describe], &[]);
    let info = jobs::describe(&c, JOB).await.unwrap();
    let text = jobs::render_status(&info, jobs::job_cost(&info, &embedded_prices("us-east-1").unwrap(), 0.0).as_ref());
    assert!(text.contains("failure:    CapacityError"), "{text}");
    assert!(text.contains("no capacity for this instance type"), "{text}");
}

#[tokio::test]
async fn status_of_a_completed_spot_job_has_billable_cost_and_artifacts() {
    let describe = describe_sequence(&["describe_completed_spot.json"]);
    let c = clients(&[&describe], &[]);
    let info = jobs::describe(&c, JOB).await.unwrap();
    let cost = jobs::job_cost(&info, &embedded_prices("us-east-1").unwrap(), 0.0).unwrap();
    assert!((cost.usd - 1200.0 * 2.0 * 1.408 / 3600.0).abs() < 1e-9);
    assert!(cost.is_final);
    assert!((cost.spot_savings.unwrap() - (1.0 - 1200.0 / 3600.0)).abs() < 1e-12);
    let text = jobs::render_status(&info, Some(&cost));
    for want in [
        "billable:   20m 00s (1200 s × 2 instance(s))",
        "cost:       $0.94 final",
        "spot:       67% saved",
        "model:       s3://bucket/oxtune/llama-sft-20261123-120000/output/model.tar.gz",
        "output:      s3://bucket/oxtune/llama-sft-20261123-120000/output/output.tar.gz",
        "train:loss",
        "Uploading",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
}

#[tokio::test]
async fn throttling_is_retried_with_backoff() {
    let describe = mock!(aws_sdk_sagemaker::Client::describe_training_job)
        .sequence()
        .http_status(400, Some(recorded("error_throttling.json")))
        .times(2)
        .http_status(200, Some(recorded("describe_training.json")))
        .build();
    let c = clients(&[&describe], &[]);
    let info = jobs::describe(&c, JOB).await.unwrap();
    assert_eq!(info.secondary_status, "Training");
    assert_eq!(describe.num_calls(), 3, "two throttled attempts, then success");
}

#[tokio::test]
async fn throttling_that_never_ends_is_explained() {
    let describe = mock!(aws_sdk_sagemaker::Client::describe_training_job)
        .sequence()
        .http_status(400, Some(recorded("error_throttling.json")))
        .repeatedly()
        .build();
    let c = clients(&[&describe], &[]);
    let (kind, msg) = aws_error(jobs::describe(&c, JOB).await.unwrap_err());
    assert_eq!(kind, ErrorKind::Throttled);
    assert!(msg.contains("throttled by AWS after retries"), "{msg}");
    assert_eq!(describe.num_calls(), 3, "max_attempts = 3");
}

fn create_request() -> launcher::request::CreateTrainingJobRequest {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dry_run_expected.json"),
    )
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

async fn create_error(file: &str) -> (ErrorKind, String) {
    let create =
        mock!(aws_sdk_sagemaker::Client::create_training_job).sequence().http_status(400, Some(recorded(file))).build();
    let c = clients(&[&create], &[]);
    let req = create_request();
    let err = req.send(&c.sagemaker).await.unwrap_err();
    let ctx = ErrorContext {
        operation: "CreateTrainingJob".into(),
        region: "us-east-1".into(),
        instance_type: Some("ml.g5.xlarge".into()),
        spot: true,
        role: Some(req.role_arn.clone()),
        job: Some(req.training_job_name.clone()),
    };
    aws_error(explain(&err, &ctx))
}

#[tokio::test]
async fn access_denied_names_the_permission() {
    let (kind, msg) = create_error("error_access_denied.json").await;
    assert_eq!(kind, ErrorKind::AccessDenied);
    assert!(
        msg.contains("access denied") && msg.contains("iam:PassRole") && msg.contains("sagemaker:CreateTrainingJob"),
        "{msg}"
    );
}

#[tokio::test]
async fn resource_limit_names_the_quota() {
    let (kind, msg) = create_error("error_resource_limit.json").await;
    assert_eq!(kind, ErrorKind::ResourceLimit);
    assert!(msg.contains("Service Quotas") && msg.contains("'ml.g5.xlarge for spot training job usage'"), "{msg}");
}

#[tokio::test]
async fn unknown_role_is_explained() {
    let (kind, msg) = create_error("error_unknown_role.json").await;
    assert_eq!(kind, ErrorKind::UnknownRole);
    assert!(msg.contains("cannot use the execution role") && msg.contains("sagemaker.amazonaws.com"), "{msg}");
}

/// Capacity errors (an API error code, or a ValidationException that talks about capacity) say
/// which instance type and region lack capacity and what to do.
#[test]
fn capacity_errors_say_what_to_do() {
    let ctx = ErrorContext {
        operation: "CreateTrainingJob".into(),
        region: "us-west-2".into(),
        instance_type: Some("ml.p5.48xlarge".into()),
        ..Default::default()
    };
    for (code, message) in [
        ("InsufficientCapacityError", "We currently do not have sufficient capacity"),
        ("ValidationException", "Insufficient capacity for ml.p5.48xlarge in the requested Availability Zones"),
    ] {
        let kind = classify(Some(code), message);
        assert_eq!(kind, ErrorKind::Capacity, "{code}");
        let msg = advice(&kind, code, message, &ctx);
        assert!(
            msg.contains("no capacity for ml.p5.48xlarge in us-west-2")
                && msg.contains("another instance type or region"),
            "{msg}"
        );
    }
}

#[test]
fn quota_advice_without_a_quoted_name_uses_the_instance() {
    let ctx = ErrorContext {
        operation: "CreateTrainingJob".into(),
        region: "eu-west-1".into(),
        instance_type: Some("ml.p5.48xlarge".into()),
        ..Default::default()
    };
    let msg = advice(
        &classify(Some("ResourceLimitExceeded"), "limit exceeded"),
        "ResourceLimitExceeded",
        "limit exceeded",
        &ctx,
    );
    assert!(msg.contains("'ml.p5.48xlarge for training job usage'") && msg.contains("eu-west-1"), "{msg}");
}

#[tokio::test]
async fn list_shows_instance_duration_and_cost() {
    let list = mock!(aws_sdk_sagemaker::Client::list_training_jobs)
        .sequence()
        .http_status(200, Some(format!(
            r#"{{"TrainingJobSummaries":[{{"TrainingJobName":"{JOB}","TrainingJobArn":"arn:aws:sagemaker:us-east-1:123456789012:training-job/{JOB}","CreationTime":1795435200.0,"TrainingEndTime":1795438980.0,"LastModifiedTime":1795438980.0,"TrainingJobStatus":"Completed"}}]}}"#
        )))
        .build();
    let describe = describe_sequence(&["describe_completed_spot.json"]);
    let c = clients(&[&list, &describe], &[]);
    let f = jobs::ListFilter { max: 10, details: true, ..Default::default() };
    let rows = jobs::list(&c, &f, &embedded_prices("us-east-1").unwrap()).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].instance, "2×ml.g5.xlarge");
    assert_eq!(rows[0].duration_seconds, Some(3600.0));
    let table = jobs::render_list(&rows);
    assert!(table.contains("$0.94") && table.contains("1h 00m"), "{table}");
}

#[tokio::test]
async fn compare_marks_differences() {
    let describe = describe_sequence(&["describe_completed_spot.json", "describe_failed_algorithm.json"]);
    let c = clients(&[&describe], &[]);
    let a = jobs::describe(&c, JOB).await.unwrap();
    let mut b = jobs::describe(&c, JOB).await.unwrap();
    b.name = "other-job".into();
    b.hyperparameters.insert("lora_r".into(), "64".into());
    let cmp = jobs::compare(&[a, b], &embedded_prices("us-east-1").unwrap());
    let row = |k: &str| cmp.rows.iter().find(|r| r.key == k).unwrap_or_else(|| panic!("no row {k}"));
    assert!(row("lora_r").differs);
    assert_eq!(row("lora_r").values, vec![Some("16".to_string()), Some("64".to_string())]);
    assert!(!row("epochs").differs);
    assert!(row("status").differs);
    assert_eq!(row("train:loss").values, vec![Some("1.2345".to_string()), None]);
    let text = jobs::render_comparison(&cmp);
    assert!(text.lines().any(|l| l.starts_with('≠') && l.contains("hyperparameter.lora_r")), "{text}");
    assert!(text.lines().any(|l| l.starts_with(' ') && l.contains("hyperparameter.epochs")), "{text}");
}

/// `oxtune logs JOB -f`: prints new events on every poll, keeps following while the job runs,
/// and stops once DescribeTrainingJob says the job is final (after one last drain).
#[tokio::test]
async fn logs_follow_until_the_job_is_final() {
    let describe =
        describe_sequence(&["describe_training.json", "describe_training.json", "describe_completed_spot.json"]);
    let streams = mock!(aws_sdk_cloudwatchlogs::Client::describe_log_streams)
        .sequence()
        .http_status(200, Some(format!(r#"{{"logStreams":[{{"logStreamName":"{JOB}/algo-1-1795435440"}}]}}"#)))
        .repeatedly()
        .build();
    let events = mock!(aws_sdk_cloudwatchlogs::Client::get_log_events)
        .sequence()
        .http_status(200, Some(r#"{"events":[{"timestamp":1795435500000,"message":"loading model","ingestionTime":1795435500001}],"nextForwardToken":"f/1","nextBackwardToken":"b/0"}"#.into()))
        .http_status(200, Some(r#"{"events":[{"timestamp":1795435600000,"message":"METRIC step=10 loss=2.5 token hf_abcdefghijklmnopqrstuvwxyz0123456789","ingestionTime":1795435600001}],"nextForwardToken":"f/2","nextBackwardToken":"b/0"}"#.into()))
        .http_status(200, Some(r#"{"events":[],"nextForwardToken":"f/2","nextBackwardToken":"b/0"}"#.into()))
        .http_status(200, Some(r#"{"events":[{"timestamp":1795435700000,"message":"saved model","ingestionTime":1795435700001}],"nextForwardToken":"f/3","nextBackwardToken":"b/0"}"#.into()))
        .http_status(200, Some(r#"{"events":[],"nextForwardToken":"f/3","nextBackwardToken":"b/0"}"#.into()))
        .repeatedly()
        .build();
    let c = clients(&[&describe], &[&streams, &events]);
    let mut out = Vec::new();
    jobs::logs(&c, JOB, true, None, Duration::from_millis(1), &mut out, &Redactor::default()).await.unwrap();
    let out = String::from_utf8(out).unwrap();
    assert_eq!(describe.num_calls(), 3, "followed until Completed:\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "loading model",
            "METRIC step=10 loss=2.5 token hf_***REDACTED***",
            "saved model",
            "-- job llama-sft-20261123-120000 is Completed / Completed",
        ],
        "{out}"
    );

    // Without -f: one read, no DescribeTrainingJob.
    let describe = describe_sequence(&["describe_training.json"]);
    let c = clients(&[&describe], &[&streams, &events]);
    let mut out = Vec::new();
    jobs::logs(&c, JOB, false, None, Duration::from_millis(1), &mut out, &Redactor::default()).await.unwrap();
    assert_eq!(describe.num_calls(), 0);
}

/// `oxtune list --status --name-contains --since` sends the filters to ListTrainingJobs (the
/// rule only matches a request that carries all three).
#[tokio::test]
async fn list_sends_the_filters() {
    use aws_sdk_sagemaker::types::{SortBy, SortOrder, TrainingJobStatus};
    let list = mock!(aws_sdk_sagemaker::Client::list_training_jobs)
        .match_requests(|r| {
            r.status_equals() == Some(&TrainingJobStatus::Failed)
                && r.name_contains() == Some("llama")
                && r.creation_time_after().map(|t| t.secs()) == Some(1_795_000_000)
                && r.sort_by() == Some(&SortBy::CreationTime)
                && r.sort_order() == Some(&SortOrder::Descending)
                && r.max_results() == Some(5)
        })
        .sequence()
        .http_status(200, Some(r#"{"TrainingJobSummaries":[]}"#.into()))
        .build();
    let c = clients(&[&list], &[]);
    let f = jobs::ListFilter {
        status: Some("Failed".into()),
        name_contains: Some("llama".into()),
        created_after: Some(1_795_000_000.0),
        max: 5,
        details: true,
    };
    let rows = jobs::list(&c, &f, &embedded_prices("us-east-1").unwrap()).await.unwrap();
    assert!(rows.is_empty());
    assert_eq!(list.num_calls(), 1);
    assert_eq!(jobs::render_list(&rows), "no training jobs match\n");
}
