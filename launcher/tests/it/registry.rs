//! `register` / `models` / `approve` / `reject` against moto (model package groups, versioned model
//! packages with inference specification, metrics and customer metadata, approval updates), the
//! job's outputs in moto's S3; and the CLI's checks before any call.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use aws_sdk_sagemaker::operation::describe_training_job::DescribeTrainingJobOutput;
use aws_sdk_sagemaker::types as t;
use launcher::deploy::serving::Container;
use launcher::jobs::JobInfo;
use launcher::registry::{self, Approval, RegisterInput};

use crate::common::{moto_clients, moto_endpoint};

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("oxt-{tag}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// A Completed deployable job whose outputs are in `bucket`, with `scores` as its final metrics.
fn job(name: &str, bucket: &str, scores: &[(&str, f32)]) -> JobInfo {
    let mut d = DescribeTrainingJobOutput::builder()
        .training_job_name(name)
        .training_job_status(t::TrainingJobStatus::Completed)
        .secondary_status(t::SecondaryStatus::Completed)
        .role_arn("arn:aws:iam::123456789012:role/SageMakerExecution")
        .hyper_parameters("merge_adapter", "true")
        .hyper_parameters("lora_r", "16")
        .model_artifacts(
            t::ModelArtifacts::builder().s3_model_artifacts(format!("s3://{bucket}/{name}/output/model")).build(),
        );
    for (k, v) in scores {
        d = d.final_metric_data_list(t::MetricData::builder().metric_name(*k).value(*v).build());
    }
    JobInfo::from_describe(&d.build())
}

#[tokio::test]
async fn register_list_approve_and_pick_against_moto() {
    let Some(ep) = moto_endpoint() else { return };
    let c = moto_clients(&ep).await;
    let bucket = unique("registry");
    c.s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let summary = serde_json::json!({"data": {"sha256": "ab".repeat(32)}}).to_string();
    c.s3.put_object()
        .bucket(&bucket)
        .key("job-a/output/model/training_summary.json")
        .body(summary.into_bytes().into())
        .send()
        .await
        .unwrap();
    let group = unique("grp");
    let input =
        |approval| RegisterInput { group: group.clone(), approval, description: None, container: Container::Lmi };

    // A job with scores: the group is created, the report uploaded, the metadata kept.
    let a = job("job-a", &bucket, &[("test_rougeL", 0.35), ("loss", 1.2)]);
    let r = registry::register(&c, &a, &input(Approval::Pending)).await.unwrap();
    assert_eq!((r.version, r.approval), (1, Approval::Pending));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let report_uri = r.report.clone().unwrap();
    assert_eq!(report_uri, format!("s3://{bucket}/job-a/output/oxtune-evaluation.json"));
    let report = c.s3.get_object().bucket(&bucket).key("job-a/output/oxtune-evaluation.json").send().await.unwrap();
    let report: serde_json::Value = serde_json::from_slice(&report.body.collect().await.unwrap().into_bytes()).unwrap();
    assert!((report["text_generation_metrics"]["rougeL"]["value"].as_f64().unwrap() - 0.35).abs() < 1e-6);
    let d = c.sagemaker.describe_model_package().model_package_name(&r.arn).send().await.unwrap();
    let meta = d.customer_metadata_properties().unwrap();
    assert_eq!(meta[registry::META_JOB], "job-a");
    assert_eq!(meta[registry::META_DATA], "ab".repeat(32));
    assert_eq!(meta["oxtune:hp:lora_r"], "16");
    let container = &d.inference_specification().unwrap().containers()[0];
    let source = container.model_data_source().unwrap().s3_data_source().unwrap();
    let merged = format!("s3://{bucket}/job-a/output/model/merged/");
    assert_eq!(source.s3_uri(), Some(merged.as_str()), "the merged model deploy serves");
    assert_eq!(
        d.model_metrics().and_then(|m| m.model_quality()).and_then(|q| q.statistics()).and_then(|s| s.s3_uri()),
        Some(report_uri.as_str())
    );

    // A job without scores registers too, and says so.
    let b = job("job-b", &bucket, &[("loss", 1.1)]);
    let r2 = registry::register(&c, &b, &input(Approval::Approved)).await.unwrap();
    assert_eq!(r2.version, 2);
    assert!(r2.report.is_none() && r2.warnings.iter().any(|w| w.contains("no evaluation scores")), "{:?}", r2.warnings);

    // models: newest first, approval and scores.
    let v = registry::versions(&c, &group).await.unwrap();
    assert_eq!(
        v.iter().map(|v| (v.version, v.approval)).collect::<Vec<_>>(),
        [(2, Approval::Approved), (1, Approval::Pending)]
    );
    assert_eq!(v[1].scores, BTreeMap::from([("test_rougeL".to_string(), 0.35)]));
    let text = registry::render_versions(&group, &v);
    assert!(
        text.contains("2 version(s)") && text.contains("test_rougeL") && text.contains("PendingManualApproval"),
        "{text}"
    );

    // The newest approved version is what `deploy GROUP` picks; approving 1 does not change that, rejecting 2 does.
    assert_eq!(registry::find(&c, &group, None).await.unwrap().job.as_deref(), Some("job-b"));
    registry::set_approval(&c, &group, 1, Approval::Approved, Some("rougeL 0.35")).await.unwrap();
    registry::set_approval(&c, &group, 2, Approval::Rejected, None).await.unwrap();
    let picked = registry::find(&c, &group, None).await.unwrap();
    assert_eq!((picked.version, picked.job.as_deref()), (1, Some("job-a")));
    let e = registry::find(&c, &group, Some(7)).await.unwrap_err().to_string();
    assert!(e.contains("has no version 7"), "{e}");

    // A job that is not Completed is refused before any call.
    let mut running = job("job-c", &bucket, &[]);
    running.status = "InProgress".into();
    let e = registry::register(&c, &running, &input(Approval::Pending)).await.unwrap_err();
    assert!(e.is_invalid_input() && e.to_string().contains("only a Completed job"), "{e}");
}

#[test]
fn the_cli_refuses_bad_names_before_any_call() {
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_oxtune"));
        c.args(["--endpoint-url", "http://127.0.0.1:1"]).args(args).env("HOME", home.path());
        c.env("AWS_EC2_METADATA_DISABLED", "true").env("AWS_CONFIG_FILE", Path::new("/nonexistent"));
        let out = c.output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (code, err) = run(&["register", "job-a", "--group", "bad_name"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("breaks SageMaker's name pattern"), "{err}");
    let (code, err) = run(&["models", "bad_name"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("breaks SageMaker's name pattern"), "{err}");
    let (code, err) = run(&["deploy", "grp/0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("positive number"), "{err}");
}

/// `deploy GROUP[/VERSION]` through the CLI against moto: an unapproved version is refused unless
/// --allow-unapproved, and a group with no approved version is named as such.
#[tokio::test]
async fn deploy_refuses_what_is_not_approved() {
    let Some(ep) = moto_endpoint() else { return };
    let c = moto_clients(&ep).await;
    let bucket = unique("deployreg");
    c.s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let group = unique("pend");
    let input = RegisterInput {
        group: group.clone(),
        approval: Approval::Pending,
        description: None,
        container: Container::Lmi,
    };
    registry::register(&c, &job("job-p", &bucket, &[]), &input).await.unwrap();
    let home = tempfile::tempdir().unwrap();
    let deploy = |source: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_oxtune"))
            .args(["--endpoint-url", &ep, "--region", "us-east-1", "deploy", source, "--dry-run"])
            .env("HOME", home.path())
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap();
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let (code, text) = deploy(&format!("{group}/1"));
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("is PendingManualApproval: approve it with `oxtune approve"), "{text}");
    let (code, text) = deploy(&group);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("is neither a training job nor a model package group with an approved version"), "{text}");
}
