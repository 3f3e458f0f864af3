//! Against a real `moto_server` on loopback (tests/launcher/moto.sh start; the endpoint in
//! OXTUNE_MOTO_ENDPOINT): S3 upload with skip-unchanged, CreateTrainingJob read back with
//! Describe, ListTrainingJobs, and CloudWatch Logs reading and following.
//!
//! Without OXTUNE_MOTO_ENDPOINT the tests fail when CI is set, else print a loud SKIPPED line.
//! moto 5.2.1 does not emulate status transitions, StopTrainingJob, Environment or
//! MetricDefinitions echo (see shared/reference/sagemaker.md §4); tests/mocked.rs covers those.

use std::path::Path;
use std::time::Duration;

use launcher::aws::Clients;
use launcher::jobs::{LogCursor, LOG_GROUP};

use crate::common::{moto_clients as clients, moto_endpoint as moto};

/// A bucket name unique to this test run.
fn bucket(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("oxtune-{tag}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

#[tokio::test]
async fn s3_upload_skips_unchanged_and_removes_stale() {
    let Some(ep) = moto() else { return };
    let c = clients(&ep).await;
    let b = bucket("upload");
    c.s3.create_bucket().bucket(&b).send().await.unwrap();
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("sub")).unwrap();
    std::fs::write(d.path().join("a.jsonl"), "{\"text\":\"a\"}\n").unwrap();
    std::fs::write(d.path().join("sub/b.jsonl"), "{\"text\":\"b\"}\n").unwrap();
    let prefix = format!("s3://{b}/job/input/train/");

    let r1 = launcher::upload::sync_channel(&c.s3, d.path(), &prefix, "us-east-1", true).await.unwrap();
    assert_eq!(r1.uploaded, vec!["job/input/train/a.jsonl", "job/input/train/sub/b.jsonl"]);
    assert!(r1.skipped.is_empty());

    let r2 = launcher::upload::sync_channel(&c.s3, d.path(), &prefix, "us-east-1", true).await.unwrap();
    assert!(r2.uploaded.is_empty(), "unchanged files were uploaded again: {r2:?}");
    assert_eq!(r2.skipped.len(), 2);

    // Same size, different content: the MD5 tells.
    std::fs::write(d.path().join("a.jsonl"), "{\"text\":\"z\"}\n").unwrap();
    std::fs::remove_file(d.path().join("sub/b.jsonl")).unwrap();
    let r3 = launcher::upload::sync_channel(&c.s3, d.path(), &prefix, "us-east-1", true).await.unwrap();
    assert_eq!(r3.uploaded, vec!["job/input/train/a.jsonl"]);
    assert_eq!(r3.deleted, vec!["job/input/train/sub/b.jsonl"]);
    let body =
        c.s3.get_object()
            .bucket(&b)
            .key("job/input/train/a.jsonl")
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
    assert_eq!(&body[..], b"{\"text\":\"z\"}\n");

    // A single file as the channel.
    let r4 = launcher::upload::sync_channel(
        &c.s3,
        &d.path().join("a.jsonl"),
        &format!("s3://{b}/job/input/one/"),
        "us-east-1",
        true,
    )
    .await
    .unwrap();
    assert_eq!(r4.uploaded, vec!["job/input/one/a.jsonl"]);
}

/// `oxtune submit` end to end against moto: upload + CreateTrainingJob, read back with Describe,
/// found by `oxtune list`, shown by `oxtune status`.
#[tokio::test]
async fn submit_then_describe_list_and_status() {
    let Some(ep) = moto() else { return };
    let c = clients(&ep).await;
    let b = bucket("submit");
    c.s3.create_bucket().bucket(&b).send().await.unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let base = format!("moto-{}", b.trim_start_matches("oxtune-submit-"));
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_oxtune"))
            .args(args)
            .env("HOME", home.path())
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_MAX_ATTEMPTS", "2")
            .env("HF_TOKEN", "hf_mototestTokenAbCdEfGhIjKlMnOpQrStUvWx")
            .output()
            .unwrap()
    };
    let output_path = format!("s3://{b}/oxtune");
    let job_file = fixtures.join("job.toml");
    let out = run(&[
        "submit",
        "--endpoint-url",
        &ep,
        "--name",
        &base,
        "--output-path",
        &output_path,
        job_file.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("hf_mototestToken"));
    let job_name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(job_name.starts_with(&format!("{base}-")) && job_name.len() == base.len() + 16, "{job_name}");
    assert!(stderr.contains("1 uploaded"), "{stderr}");
    assert!(
        stderr.contains("console: https://us-east-1.console.aws.amazon.com/sagemaker/home?region=us-east-1#/jobs/"),
        "{stderr}"
    );

    // The data is in S3 under <output>/<name>/input/train/.
    let key = format!("oxtune/{base}/input/train/train.jsonl");
    let head = c.s3.head_object().bucket(&b).key(&key).send().await.unwrap();
    assert_eq!(head.content_length(), Some(std::fs::metadata(fixtures.join("data/train.jsonl")).unwrap().len() as i64));

    // Describe returns what we sent.
    let d = c.sagemaker.describe_training_job().training_job_name(&job_name).send().await.unwrap();
    assert_eq!(d.role_arn(), Some("arn:aws:iam::123456789012:role/SageMakerTraining"));
    let algo = d.algorithm_specification().unwrap();
    assert_eq!(algo.training_image(), Some("123456789012.dkr.ecr.us-east-1.amazonaws.com/oxtune:0.1.0"));
    let hp = d.hyper_parameters().unwrap();
    assert_eq!(hp.get("epochs").map(String::as_str), Some("2"));
    assert_eq!(hp.get("learning_rate").map(String::as_str), Some("0.0002"));
    assert_eq!(hp.get("target_modules").map(String::as_str), Some(r#"["q_proj","k_proj","v_proj","o_proj"]"#));
    let channels: Vec<(String, String)> = d
        .input_data_config()
        .iter()
        .map(|ch| {
            (
                ch.channel_name().unwrap_or_default().to_string(),
                ch.data_source()
                    .and_then(|s| s.s3_data_source())
                    .and_then(|s| s.s3_uri())
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        channels,
        vec![
            ("train".to_string(), format!("s3://{b}/oxtune/{base}/input/train/")),
            ("validation".to_string(), "s3://oxtune-test-bucket/datasets/val/".to_string()),
        ]
    );
    let rc = d.resource_config().unwrap();
    assert_eq!(rc.instance_type().map(|t| t.as_str()), Some("ml.g5.xlarge"));
    assert_eq!(rc.volume_size_in_gb(), Some(100));
    assert_eq!(rc.keep_alive_period_in_seconds(), Some(600));
    let sc = d.stopping_condition().unwrap();
    assert_eq!((sc.max_runtime_in_seconds(), sc.max_wait_time_in_seconds()), (Some(7200), Some(14400)));
    assert_eq!(d.enable_managed_spot_training(), Some(true));
    assert_eq!(
        d.checkpoint_config().and_then(|c| c.s3_uri()),
        Some(format!("{output_path}/{job_name}/checkpoints").as_str())
    );
    assert_eq!(d.output_data_config().and_then(|o| o.s3_output_path()), Some(output_path.as_str()));
    let tags = c.sagemaker.list_tags().resource_arn(d.training_job_arn().unwrap()).send().await.unwrap();
    let mut tags: Vec<(String, String)> = tags
        .tags()
        .iter()
        .map(|t| (t.key().unwrap_or_default().to_string(), t.value().unwrap_or_default().to_string()))
        .collect();
    tags.sort();
    assert_eq!(tags, vec![("project".into(), "oxtune-tests".into()), ("team".into(), "nlp".into())]);

    // A second submission of the same job file skips the unchanged upload (new job name: the
    // timestamp suffix has one-second resolution). With --wait it follows the job to its end
    // (moto reports a created job as Completed at once) and exits with wait's code.
    std::thread::sleep(Duration::from_millis(1100));
    let out = run(&[
        "submit",
        "--endpoint-url",
        &ep,
        "--name",
        &base,
        "--output-path",
        &output_path,
        "--wait",
        job_file.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("0 uploaded (0 B), 1 unchanged"), "{stderr}");
    let second = stdout.lines().next().unwrap_or_default().to_string();
    assert!(second.starts_with(&format!("{base}-")) && second != job_name, "{stdout}");
    assert!(stdout.contains(&format!("job {second} finished: Completed")), "{stdout}");
    assert!(!stdout.contains("hf_mototestToken") && !stderr.contains("hf_mototestToken"));

    // list and status through the CLI.
    let out = run(&["list", "--endpoint-url", &ep, "--name-contains", &base, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = rows.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert!(names.contains(&job_name.as_str()), "{names:?}");
    assert_eq!(rows[0]["instance"], "1×ml.g5.xlarge");

    let out = run(&["status", "--endpoint-url", &ep, &job_name]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("status:     Completed / Completed")
            && stdout.contains(&format!("model:       {output_path}/{job_name}/output/model.tar.gz")),
        "{stdout}"
    );

    // Describe of a job that does not exist.
    let out = run(&["status", "--endpoint-url", &ep, "no-such-job-xyz"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no training job named `no-such-job-xyz`"));
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

async fn put(c: &Clients, stream: &str, lines: &[&str]) {
    let mut req = c.logs.put_log_events().log_group_name(LOG_GROUP).log_stream_name(stream);
    let t = now_ms();
    for (i, l) in lines.iter().enumerate() {
        req = req.log_events(
            aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                .timestamp(t + i as i64)
                .message(*l)
                .build()
                .unwrap(),
        );
    }
    let out = req.send().await.unwrap();
    assert!(out.rejected_log_events_info().is_none(), "moto rejected events: {:?}", out.rejected_log_events_info());
}

#[tokio::test]
async fn logs_read_and_follow() {
    let Some(ep) = moto() else { return };
    let c = clients(&ep).await;
    let job = bucket("logs");
    let _ = c.logs.create_log_group().log_group_name(LOG_GROUP).send().await; // may exist already
    let s1 = format!("{job}/algo-1-1700000000");
    let s2 = format!("{job}/algo-2-1700000000");
    for s in [&s1, &s2] {
        c.logs.create_log_stream().log_group_name(LOG_GROUP).log_stream_name(s).send().await.unwrap();
    }
    put(&c, &s1, &["loading model", "METRIC step=1 epoch=0.01 loss=3.0"]).await;
    put(&c, &s2, &["worker 2 ready"]).await;

    let mut cursor = LogCursor::default();
    let first = cursor.poll(&c, &job).await.unwrap();
    let msgs: Vec<&str> = first.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(msgs, ["loading model", "METRIC step=1 epoch=0.01 loss=3.0", "worker 2 ready"]);
    assert_eq!(cursor.stream_count(), 2);

    // Following: only new events come back.
    assert!(cursor.poll(&c, &job).await.unwrap().is_empty());
    put(&c, &s1, &["METRIC step=2 epoch=0.02 loss=2.5"]).await;
    let next = cursor.poll(&c, &job).await.unwrap();
    assert_eq!(next.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>(), ["METRIC step=2 epoch=0.02 loss=2.5"]);

    // Streams of other jobs with a shared prefix are not mixed in.
    let other = format!("{job}x/algo-1-1");
    c.logs.create_log_stream().log_group_name(LOG_GROUP).log_stream_name(&other).send().await.unwrap();
    put(&c, &other, &["not mine"]).await;
    assert!(cursor.poll(&c, &job).await.unwrap().is_empty());

    // `oxtune logs` prints both hosts with a prefix and redacts tokens.
    put(&c, &s2, &["token hf_abcdefghijklmnopqrstuvwxyz0123456789 must not show"]).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oxtune"))
        .args(["logs", "--endpoint-url", &ep, "--region", "us-east-1", &job])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("[algo-1] loading model") && stdout.contains("[algo-2] worker 2 ready"), "{stdout}");
    assert!(
        !stdout.contains("abcdefghijklmnopqrstuvwxyz0123456789") && stdout.contains("hf_***REDACTED***"),
        "{stdout}"
    );
}
