//! Helpers the launcher's test modules share.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_sagemaker::config::Credentials;
use aws_smithy_mocks::{create_mock_http_client, MockResponseInterceptor, Rule, RuleMode};
use launcher::aws::{AwsOptions, Clients};

/// The moto_server of this test run (tests/launcher/moto.sh start; OXTUNE_MOTO_ENDPOINT). Without
/// it the tests fail when CI is set, else print a loud SKIPPED line (`None`).
pub fn moto_endpoint() -> Option<String> {
    match std::env::var("OXTUNE_MOTO_ENDPOINT") {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            if std::env::var_os("CI").is_some() {
                panic!("OXTUNE_MOTO_ENDPOINT is not set but CI is: start moto with tests/launcher/moto.sh start and export the endpoint");
            }
            eprintln!("\n*** SKIPPED moto test: OXTUNE_MOTO_ENDPOINT is not set (run `export OXTUNE_MOTO_ENDPOINT=$(tests/launcher/moto.sh start)`) ***\n");
            None
        }
    }
}

/// Clients of every service, all sent to moto.
pub async fn moto_clients(endpoint: &str) -> Clients {
    let mut o = AwsOptions::new(Some("us-east-1".into()), None, Some(endpoint.to_string()));
    o.static_credentials = Some(Credentials::new("testing", "testing", None, None, "moto"));
    // moto answers HTTP 500 for operations it does not implement: do not retry those slowly.
    o.max_attempts = 2;
    o.initial_backoff = Duration::from_millis(10);
    let sdk = launcher::aws::load_sdk_config(&o).await;
    launcher::aws::clients_from_config(&sdk, true).unwrap()
}

fn interceptor(rules: &[&Rule]) -> MockResponseInterceptor {
    let mut i = MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny);
    for r in rules {
        i = i.with_rule(r);
    }
    i
}

/// Real SDK clients (oxtune's retry policy, 1 ms backoff) whose HTTP layer is the SDK's mock
/// (aws-smithy-mocks), with the rules of each service.
pub fn mock_clients(sm: &[&Rule], logs: &[&Rule], s3: &[&Rule], runtime: &[&Rule]) -> Clients {
    let retry = RetryConfig::standard().with_max_attempts(3).with_initial_backoff(Duration::from_millis(1));
    let creds = Credentials::new("AKIDTEST", "secret", None, None, "test");
    let region = Region::new("us-east-1");
    macro_rules! conf {
        ($svc:ident, $rules:expr) => {
            $svc::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(region.clone())
                .credentials_provider(creds.clone())
                .retry_config(retry.clone())
                .http_client(create_mock_http_client())
                .interceptor(interceptor($rules))
                .build()
        };
    }
    Clients {
        region: "us-east-1".into(),
        sagemaker: aws_sdk_sagemaker::Client::from_conf(conf!(aws_sdk_sagemaker, sm)),
        runtime: aws_sdk_sagemakerruntime::Client::from_conf(conf!(aws_sdk_sagemakerruntime, runtime)),
        s3: aws_sdk_s3::Client::from_conf(conf!(aws_sdk_s3, s3)),
        logs: aws_sdk_cloudwatchlogs::Client::from_conf(conf!(aws_sdk_cloudwatchlogs, logs)),
    }
}

/// The entry names of a `.tar.gz` (as `model.tar.gz` / `output.tar.gz`), sorted.
pub fn tar_names(p: &Path) -> Vec<String> {
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(p).unwrap()));
    let mut v: Vec<String> = ar.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
    v.sort();
    v
}

/// The real CPU `train` binary, as `cargo test --workspace` builds it (target/<profile>/train), or
/// `$OXTUNE_TRAIN_BIN`. Missing: a failure in CI, a loud skip elsewhere (`None`).
pub fn train_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OXTUNE_TRAIN_BIN") {
        return Some(PathBuf::from(p));
    }
    // target/<profile>/deps/it-<hash> → target/<profile>/train
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.parent()?.join("train");
    if candidate.is_file() {
        return Some(candidate);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "the `train` binary is missing ({}): build the workspace (`cargo test --workspace`) or set OXTUNE_TRAIN_BIN",
            candidate.display()
        );
    }
    eprintln!(
        "\n*** SKIPPED a test with the real trainer: no `train` binary at {} (run `cargo build -p trainer` or set OXTUNE_TRAIN_BIN) ***\n",
        candidate.display()
    );
    None
}

/// The trainer's demo tree (tiny random Llama, tokenizer, data) written by `train demo --steps 1`
/// under `dir`; returns its `input/data` (the channels a job file can point at).
pub fn demo_channels(train: &Path, dir: &Path) -> PathBuf {
    let demo = dir.join("demo");
    let out = std::process::Command::new(train)
        .args(["demo", "--steps", "1", "--ml-root"])
        .arg(&demo)
        .env("OXTUNE_DEVICE", "cpu")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "train demo failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    demo.join("input/data").canonicalize().unwrap()
}
