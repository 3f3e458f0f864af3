//! The `oxtune` binary: dry-run snapshot, every limit violation rejected before any network
//! call, estimate/prices/prepare-data output, and clear credential errors.
//!
//! "No network" is proven by pointing every endpoint at 127.0.0.1:1 (nothing listens there) and
//! clearing AWS credentials: a command that reached the network would fail with exit code 1 and a
//! connection or credentials message; validation failures exit with 2 before that.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DEAD_ENDPOINT: &str = "http://127.0.0.1:1";
const FAKE_TOKEN: &str = "hf_TESTtokenDoNotPrintAbCdEfGhIjKlMnOpQrStUv";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The binary with a scrubbed environment: no AWS credentials or profile, no config files.
fn oxtune(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_oxtune"));
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") || k == "HF_TOKEN" || k.starts_with("OXTUNE_") {
            c.env_remove(k);
        }
    }
    c.env("HOME", home)
        .env("AWS_CONFIG_FILE", home.join("nonexistent-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("nonexistent-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("OXTUNE_CACHE_DIR", home.join("cache"));
    c
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string())
}

#[test]
fn dry_run_prints_the_exact_request() {
    let home = tempfile::tempdir().unwrap();
    let out = oxtune(home.path())
        .args(["submit", "--dry-run", "--exact-name", "--endpoint-url", DEAD_ENDPOINT])
        .arg(fixtures().join("job.toml"))
        .env("HF_TOKEN", FAKE_TOKEN)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stdout.contains(FAKE_TOKEN) && !stderr.contains(FAKE_TOKEN), "the token leaked");
    let mut got: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let mut want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("dry_run_expected.json")).unwrap()).unwrap();
    // MetricDefinitions follow the trainer's metric line (trainer::report), which the trainer owns:
    // compare them with the trainer's list, and the rest of the request with the snapshot.
    let defs = got["AlgorithmSpecification"].as_object_mut().unwrap().remove("MetricDefinitions").unwrap();
    want["AlgorithmSpecification"].as_object_mut().unwrap().remove("MetricDefinitions");
    let trainer_defs: Vec<serde_json::Value> = trainer::report::metric_definitions()
        .into_iter()
        .map(|(n, r)| serde_json::json!({ "Name": n, "Regex": r }))
        .collect();
    assert_eq!(defs, serde_json::Value::Array(trainer_defs));
    assert_eq!(
        got, want,
        "dry-run request changed; if intended, update tests/fixtures/dry_run_expected.json:\n{stdout}"
    );
    assert_eq!(got["Environment"]["HF_TOKEN"], "***REDACTED***");
    assert!(stderr.contains("estimate:") && stderr.contains("nothing was uploaded or created"), "{stderr}");
}

/// The dry-run request's MetricDefinitions match the trainer's real metric line.
#[test]
fn metric_definitions_match_the_trainer_line() {
    let line = trainer::report::MetricRecord {
        step: 120,
        epoch: 0.4,
        loss: Some(1.8123),
        lr: Some(1.9e-4),
        grad_norm: Some(0.74),
        tokens_per_sec: Some(15210.0),
        eval_loss: None,
        ..Default::default()
    }
    .line();
    let defs = trainer::report::metric_definitions();
    let mut seen = std::collections::BTreeMap::new();
    for (name, regex) in &defs {
        assert!(regex.len() <= 500 && name.len() <= 255);
        let re = regex::Regex::new(regex).unwrap();
        if let Some(c) = re.captures(&line) {
            seen.insert(name.clone(), c[1].to_string());
        }
    }
    assert!(defs.len() <= 40);
    assert_eq!(seen.get("train:loss").map(String::as_str), Some("1.8123"), "{line} / {seen:?}");
    assert_eq!(seen.get("train:step").map(String::as_str), Some("120"));
    assert!(!seen.contains_key("validation:loss"), "eval_loss must not match a train line");
}

/// A job file with one thing changed, submitted for real against a dead endpoint.
fn submit_variant(edit: impl FnOnce(&mut toml::Table), extra_args: &[&str]) -> (Option<i32>, String) {
    let home = tempfile::tempdir().unwrap();
    let mut job: toml::Table = toml::from_str(&std::fs::read_to_string(fixtures().join("job.toml")).unwrap()).unwrap();
    edit(&mut job);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::copy(fixtures().join("data/train.jsonl"), dir.path().join("data/train.jsonl")).unwrap();
    let path = dir.path().join("job.toml");
    std::fs::write(&path, toml::to_string(&job).unwrap()).unwrap();
    let out = oxtune(home.path())
        .args(["submit", "--endpoint-url", DEAD_ENDPOINT])
        .args(extra_args)
        .arg(&path)
        .env("AWS_ENDPOINT_URL", DEAD_ENDPOINT)
        .env("HF_TOKEN", FAKE_TOKEN)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(!stdout.contains(FAKE_TOKEN) && !stderr.contains(FAKE_TOKEN));
    (out.status.code(), format!("{stdout}{stderr}"))
}

fn table(job: &mut toml::Table, key: &str) -> toml::Table {
    job.get(key).and_then(|v| v.as_table()).cloned().unwrap_or_default()
}

fn set(job: &mut toml::Table, section: &str, key: &str, v: toml::Value) {
    let mut t = table(job, section);
    t.insert(key.into(), v);
    job.insert(section.into(), toml::Value::Table(t));
}

#[test]
fn every_limit_violation_is_rejected_before_any_network_call() {
    use toml::Value as V;
    type Edit = Box<dyn FnOnce(&mut toml::Table)>;
    let long_name = "a".repeat(64);
    let many = |n: usize, prefix: &str, value: &str| -> toml::Table {
        (0..n).map(|i| (format!("{prefix}{i}"), V::String(value.into()))).collect()
    };
    let cases: Vec<(&str, Edit, Vec<&str>, &str)> = vec![
        ("name > 63", Box::new(|_| {}), vec!["--exact-name", "--name", &long_name], "the limit is 1–63"),
        (
            "name pattern",
            Box::new(|j| {
                j.insert("name".into(), V::String("llama_sft".into()));
            }),
            vec![],
            "contains `_`",
        ),
        (
            "101 hyperparameters",
            Box::new(move |j| {
                j.insert("hyperparameters".into(), V::Table(many(101, "k", "1")));
            }),
            vec![],
            "101 hyperparameters; SageMaker allows at most 100",
        ),
        (
            "hyperparameter key > 256",
            Box::new(|j| set(j, "hyperparameters", &"k".repeat(257), V::String("1".into()))),
            vec![],
            "the limit is 256",
        ),
        (
            "hyperparameter value > 2500",
            Box::new(|j| set(j, "hyperparameters", "base_model", V::String("m".repeat(2501)))),
            vec![],
            "value is 2501 characters; the limit is 2500",
        ),
        (
            "HF_TOKEN as hyperparameter",
            Box::new(|j| set(j, "hyperparameters", "hf_token", V::String("x".into()))),
            vec![],
            "looks like a secret",
        ),
        (
            "101 environment variables",
            Box::new(move |j| {
                j.insert("environment".into(), V::Table(many(101, "VAR_", "1")));
            }),
            vec![],
            "environment variables; the limit is 100",
        ),
        (
            "environment value > 512",
            Box::new(|j| set(j, "environment", "BIG", V::String("v".repeat(513)))),
            vec![],
            "value is 513 characters; the limit is 512",
        ),
        (
            "environment key pattern",
            Box::new(|j| set(j, "environment", "1BAD-KEY", V::String("v".into()))),
            vec![],
            "must match [a-zA-Z_][a-zA-Z0-9_]*",
        ),
        (
            "21 channels",
            Box::new(|j| {
                let mut t = table(j, "channels");
                for i in 0..20 {
                    t.insert(format!("extra{i}"), V::String(format!("s3://b/c{i}/")));
                }
                j.insert("channels".into(), V::Table(t));
            }),
            vec![],
            "channels; the limit is 20",
        ),
        (
            "channel name pattern",
            Box::new(|j| set(j, "channels", "bad/name", V::String("s3://b/x/".into()))),
            vec![],
            "channel name `bad/name`",
        ),
        (
            "channel S3 URI",
            Box::new(|j| set(j, "channels", "extra", V::String("s3:///nobucket".into()))),
            vec![],
            "is not an S3 URI",
        ),
        (
            "51 tags",
            Box::new(move |j| set(j, "sagemaker", "tags", V::Table(many(51, "t", "v")))),
            vec![],
            "51 tags; the limit is 50",
        ),
        (
            "tag key reserved",
            Box::new(|j| {
                let mut t = toml::Table::new();
                t.insert("aws:team".into(), V::String("x".into()));
                set(j, "sagemaker", "tags", V::Table(t));
            }),
            vec![],
            "reserved prefix aws:",
        ),
        (
            "max_wait < max_runtime",
            Box::new(|j| set(j, "sagemaker", "max_wait", V::String("1h".into()))),
            vec![],
            "MaxWaitTimeInSeconds 3600 is less than MaxRuntimeInSeconds 7200",
        ),
        (
            "max_wait without spot",
            Box::new(|j| set(j, "sagemaker", "spot", V::Boolean(false))),
            vec![],
            "max_wait is only valid with spot = true",
        ),
        (
            "keep-alive > 6h",
            Box::new(|j| set(j, "sagemaker", "keep_alive", V::String("7h".into()))),
            vec![],
            "KeepAlivePeriodInSeconds 25200 is out of range 0–21600",
        ),
        (
            "max runtime > 28 days",
            Box::new(|j| {
                set(j, "sagemaker", "max_runtime", V::String("29d".into()));
                set(j, "sagemaker", "max_wait", V::String("60d".into()));
            }),
            vec![],
            "out of range 1–2419200",
        ),
        (
            "role ARN",
            Box::new(|j| set(j, "sagemaker", "role", V::String("SageMakerTraining".into()))),
            vec![],
            "RoleArn `SageMakerTraining`",
        ),
        (
            "user ARN",
            Box::new(|j| set(j, "sagemaker", "role", V::String("arn:aws:iam::123456789012:user/dev".into()))),
            vec![],
            "is not a role ARN",
        ),
        (
            "image URI",
            Box::new(|j| set(j, "sagemaker", "image", V::String("oxtune:latest".into()))),
            vec![],
            "TrainingImage `oxtune:latest`",
        ),
        (
            "image without tag",
            Box::new(|j| {
                set(j, "sagemaker", "image", V::String("123456789012.dkr.ecr.us-east-1.amazonaws.com/oxtune".into()))
            }),
            vec![],
            "has no tag",
        ),
        (
            "image in another region",
            Box::new(|j| {
                set(
                    j,
                    "sagemaker",
                    "image",
                    V::String("123456789012.dkr.ecr.eu-west-1.amazonaws.com/oxtune:0.1.0".into()),
                )
            }),
            vec![],
            "the image is in eu-west-1 but the job runs in us-east-1",
        ),
        (
            "unknown hyperparameter",
            Box::new(|j| set(j, "hyperparameters", "learning_rat", V::String("1e-4".into()))),
            vec![],
            "did you mean `learning_rate`",
        ),
        (
            "bad hyperparameter value",
            Box::new(|j| set(j, "hyperparameters", "lora_r", V::String("abc".into()))),
            vec![],
            "`lora_r`",
        ),
        (
            "missing train data",
            Box::new(|j| set(j, "channels", "train", V::String("data/missing.jsonl".into()))),
            vec![],
            "does not exist",
        ),
        (
            "p3 has no bf16",
            Box::new(|j| set(j, "sagemaker", "instance_type", V::String("ml.p3.2xlarge".into()))),
            vec![],
            "no bfloat16",
        ),
        (
            "pipe mode",
            Box::new(|j| set(j, "sagemaker", "input_mode", V::String("Pipe".into()))),
            vec![],
            "Pipe is not read by the oxtune trainer",
        ),
        ("max cost", Box::new(|_| {}), vec!["--max-cost", "0.01"], "exceeds --max-cost"),
        (
            "does not fit",
            Box::new(|j| {
                set(j, "hyperparameters", "base_model", V::String("meta-llama/Llama-3.3-70B-Instruct".into()));
            }),
            vec![],
            "will not fit this job",
        ),
    ];
    let mut failures = Vec::new();
    for (what, edit, args, want) in cases {
        let (code, out) = submit_variant(edit, &args);
        if code != Some(2) || !out.contains(want) || out.contains("could not reach") || out.contains("credentials") {
            failures.push(format!("--- {what}: exit {code:?}, wanted `{want}`:\n{out}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn missing_credentials_are_explained() {
    let home = tempfile::tempdir().unwrap();
    let out = oxtune(home.path())
        .args(["status", "some-job", "--region", "us-east-1", "--endpoint-url", DEAD_ENDPOINT])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no AWS credentials found")
            && stderr.contains("aws configure")
            && stderr.contains("aws sso login"),
        "{stderr}"
    );
}

/// `--profile` picks credentials and region from the shared config files (the standard chain);
/// reaching the (dead) endpoint of the profile's region proves both were used. An unknown
/// profile is a missing-credentials error that names it.
#[test]
fn named_profile_supplies_credentials_and_region() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("nonexistent-config"), "[profile ml]\nregion = eu-west-1\n").unwrap();
    std::fs::write(
        home.path().join("nonexistent-credentials"),
        "[ml]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = secret\n",
    )
    .unwrap();
    let out = oxtune(home.path())
        .args(["stop", "some-job", "--profile", "ml", "--endpoint-url", DEAD_ENDPOINT])
        .env("AWS_MAX_ATTEMPTS", "1")
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("could not reach the SageMaker endpoint for eu-west-1"), "{stderr}");

    let out = oxtune(home.path())
        .args(["stop", "some-job", "--profile", "nosuch", "--region", "us-east-1", "--endpoint-url", DEAD_ENDPOINT])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no AWS credentials found for profile `nosuch`"), "{stderr}");
}

#[test]
fn unreachable_endpoint_is_explained() {
    let home = tempfile::tempdir().unwrap();
    let out = oxtune(home.path())
        .args(["stop", "some-job", "--region", "us-east-1", "--endpoint-url", DEAD_ENDPOINT])
        .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_MAX_ATTEMPTS", "1")
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("could not reach the SageMaker endpoint"), "{stderr}");
}

#[test]
fn estimate_json_and_table() {
    let home = tempfile::tempdir().unwrap();
    let out = oxtune(home.path())
        .args([
            "estimate",
            "--model",
            "llama-3.1-8b",
            "--tokens",
            "5000000",
            "--max-seq-length",
            "2048",
            "--batch",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert!(rows.len() >= 29);
    assert_eq!(rows.iter().filter(|r| r["cheapest"] == true).count(), 1);
    let p3 = rows.iter().find(|r| r["instance_type"] == "ml.p3.2xlarge").unwrap();
    assert_eq!(p3["supported"], false);
    assert_eq!(p3["fits"], false);
    assert!(p3["reason"].as_str().unwrap().contains("no bfloat16"), "{p3}");

    let out = oxtune(home.path())
        .args([
            "estimate",
            "--model",
            "qwen2.5-7b",
            "--method",
            "qlora",
            "--tokens",
            "1000000",
            "--instance",
            "ml.g5.xlarge",
            "--instance",
            "ml.g6e.xlarge",
            "--region",
            "eu-west-1",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("◀ cheapest that fits") && stdout.contains("~1.577"), "{stdout}");
    assert!(stdout.contains("prices marked ~ are estimates"), "{stdout}");

    // The catalogue the issue names, with FLAN-T5 XL listed as not supported.
    let out = oxtune(home.path()).args(["estimate", "--list-models"]).output().unwrap();
    let (stdout, _) = text(&out);
    for name in [
        "llama-2-7b",
        "llama-2-13b",
        "llama-3.2-1b",
        "llama-3.2-3b",
        "llama-3.1-8b",
        "llama-3.3-70b",
        "mistral-7b-v0.1",
        "mistral-7b-v0.3",
        "qwen2.5-0.5b",
        "qwen2.5-1.5b",
        "qwen2.5-3b",
        "qwen2.5-7b",
        "qwen2.5-14b",
        "qwen2.5-32b",
        "qwen2.5-72b",
    ] {
        assert!(stdout.lines().any(|l| l.starts_with(&format!("{name} ")) && l.contains('B')), "{name}:\n{stdout}");
    }
    for (name, size) in [("flan-t5-small", "0.08B"), ("flan-t5-xl", "2.85B"), ("flan-t5-xxl", "11.14B")] {
        let line = stdout.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{stdout}"));
        assert!(line.contains(size), "{line}");
    }

    // A T5 estimate from data: inputs and targets counted apart; a decoder-only target name is dropped.
    let data = home.path().join("pairs.jsonl");
    std::fs::write(
        &data,
        "{\"dialogue\": \"A: hello there, how are you today?\", \"summary\": \"greeting\"}\n".repeat(50),
    )
    .unwrap();
    let out = oxtune(home.path())
        .args(["estimate", "--model", "google/flan-t5-xl", "--data"])
        .arg(&data)
        .args(["--instance", "ml.g5.2xlarge", "--json"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["facts"]["params"], 2_849_757_184u64, "{v}");
    assert!(v["rows"][0]["fits"].as_bool().unwrap(), "{v}");
}

#[test]
fn estimate_from_job_file_estimates_tokens_from_bytes() {
    let home = tempfile::tempdir().unwrap();
    let out = oxtune(home.path()).arg("estimate").arg(fixtures().join("job.toml")).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // 2715 bytes / 4 bytes per token → 679 tokens; not exact, and said so.
    assert!(stdout.contains("679 tokens/epoch") && stdout.contains("estimated from"), "{stdout}");
    assert!(stdout.contains("meta-llama/Llama-3.2-1B"), "{stdout}");
}

#[test]
fn prices_show_sources_and_estimates() {
    let home = tempfile::tempdir().unwrap();
    let out = oxtune(home.path()).args(["prices", "--region", "us-west-2"]).output().unwrap();
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("ml.p3.2xlarge") && stdout.contains("not offered") && stdout.contains("no bf16 (unsupported)"),
        "{stdout}"
    );
    assert!(stdout.contains("unsupported V100:"), "p3 is shown unsupported with the reason:\n{stdout}");
    // us-west-2: read from the Price List API by a third party (API3P), or copied from us-east-1
    // (SAMEUS) and then shown as an estimate with `~`.
    let row = |name: &str| stdout.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_default().to_string();
    assert!(row("ml.g5.xlarge").contains(" 1.408 ") && row("ml.g5.xlarge").contains("API3P"), "{stdout}");
    assert!(row("ml.p5.48xlarge").contains("~63.296") && row("ml.p5.48xlarge").contains("SAMEUS"), "{stdout}");
    assert!(stdout.contains("API3P:") && stdout.contains("SAMEUS: DERIVED 2026-11-23"), "{stdout}");

    // eu-west-1: every rate derived (us-east-1 × 1.12), marked `~`, with the rule and its date.
    let out = oxtune(home.path()).args(["prices", "--region", "eu-west-1"]).output().unwrap();
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("~1.577") && stdout.contains("EU: DERIVED 2026-11-23") && stdout.contains("x 1.12"),
        "{stdout}"
    );
    let out = oxtune(home.path()).args(["prices", "--region", "eu-west-1", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["prices"]["ml.g5.xlarge"]["source"].as_str().unwrap().contains("us-east-1 rate x 1.12"), "{v}");
}

/// `oxtune prices refresh --region R --file index.csv` with a committed sample in the AWS bulk CSV
/// layout (tests/fixtures/prices/README.md lists which rows must be kept), then the cached
/// table is what `prices` and `estimate` use.
#[test]
fn prices_refresh_reads_the_bulk_csv_sample() {
    let home = tempfile::tempdir().unwrap();
    let csv = fixtures().join("prices/sagemaker-index-sample.csv");
    let out =
        oxtune(home.path()).args(["prices", "refresh", "--region", "us-east-1", "--file"]).arg(&csv).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(text(&out).1.contains("cached 3 training rates for us-east-1"), "{:?}", text(&out));
    assert!(home.path().join("cache/prices/us-east-1.toml").is_file());
    let out = oxtune(home.path()).args(["prices", "--region", "us-east-1", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rates: std::collections::BTreeMap<String, f64> = v["prices"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, p)| (k.clone(), p["usd_per_hour"].as_f64().unwrap()))
        .collect();
    let want: std::collections::BTreeMap<String, f64> =
        [("ml.g5.xlarge", 1.408), ("ml.g6.xlarge", 1.127), ("ml.p5.48xlarge", 63.296)]
            .into_iter()
            .map(|(k, p)| (k.to_string(), p))
            .collect();
    assert_eq!(rates, want);
    assert!(v["origin"].as_str().unwrap().contains("2026-09-24"), "{v}");
    assert!(v["prices"]["ml.g5.xlarge"]["source"]
        .as_str()
        .unwrap()
        .contains("AWS bulk price list published 2026-09-24"));
    // The estimate prices with the refreshed table (no `~`: a published rate).
    let out = oxtune(home.path())
        .args(["estimate", "--model", "llama-3.2-1b", "--tokens", "100000", "--instance", "ml.g6.xlarge", "--json"])
        .args(["--region", "us-east-1"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rows"][0]["usd_per_hour"], 1.127, "{v}");

    // The same file for a region it does not cover is refused, naming what it has.
    let out =
        oxtune(home.path()).args(["prices", "refresh", "--region", "ap-south-1", "--file"]).arg(&csv).output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no SageMaker Training on-demand rows for ap-south-1, only for eu-west-1, us-east-1"),
        "{stderr}"
    );

    let out = oxtune(home.path())
        .args(["prices", "refresh", "--region", "eu-west-1", "--url", "http://127.0.0.1:1/index.csv"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("cannot download the AWS price list") && stderr.contains("offline"), "{stderr}");
}

#[test]
fn prepare_data_converts_and_reports() {
    let home = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("alpaca.json");
    std::fs::write(&input, r#"[{"instruction":"Say hi","input":"","output":"hi"},{"instruction":"Add","input":"1+1","output":""},{"instruction":"x"}]"#).unwrap();
    let out = oxtune(home.path()).args(["prepare-data", "--to", "messages"]).arg(&input).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("3 read, 1 written, 2 dropped"), "{stdout}");
    let written = std::fs::read_to_string(d.path().join("alpaca.messages.jsonl")).unwrap();
    assert_eq!(written.lines().count(), 1);
}

/// TXT (one sample per line) → `--to text`, and plain text refused for a prompt/response target
/// with the reason; CSV with mapped columns → `--to instruction`; nothing writable → exit 2.
#[test]
fn prepare_data_txt_and_csv_targets() {
    let home = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let txt = d.path().join("notes.txt");
    std::fs::write(&txt, "first document\n\nsecond document\n").unwrap();
    let out = oxtune(home.path()).args(["prepare-data", "--to", "text"]).arg(&txt).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("2 read, 2 written, 0 dropped"), "{stdout}");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(d.path().join("notes.text.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows, [serde_json::json!({"text": "first document"}), serde_json::json!({"text": "second document"})]);

    let out = oxtune(home.path()).args(["prepare-data", "--to", "messages", "--check"]).arg(&txt).output().unwrap();
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(2), "nothing could be written: {stdout}");
    assert!(stdout.contains("2 × plain text has no prompt/response; use --to text (rows 1, 3)"), "{stdout}");

    let csv = d.path().join("qa.csv");
    std::fs::write(&csv, "question,answer,category\nWhat is 2+2?,4,math\nName a colour,,misc\n").unwrap();
    let out = oxtune(home.path())
        .args(["prepare-data", "--to", "instruction", "--prompt-field", "question", "--completion-field", "answer"])
        .args(["--json", "-o"])
        .arg(d.path().join("out.jsonl"))
        .arg(&csv)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((report["rows_read"].as_u64(), report["rows_written"].as_u64()), (Some(2), Some(1)), "{stdout}");
    let written = std::fs::read_to_string(d.path().join("out.jsonl")).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(written.trim()).unwrap(),
        serde_json::json!({"instruction": "What is 2+2?", "output": "4"})
    );
}

/// A SAMSum-shaped CSV (`dialogue,summary`) needs no flags: the trainer's detection maps the pair and
/// the report names the mapping; keys nothing recognises fail with this program's flags as the remedy.
#[test]
fn prepare_data_recognises_column_pairs_and_names_its_own_flags() {
    let home = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let csv = d.path().join("survey.csv");
    std::fs::write(
        &csv,
        "id,dialogue,summary
1,\"A: hi\nB: hello\",They greet.\n",
    )
    .unwrap();
    let out = oxtune(home.path())
        .args(["prepare-data", "--to", "instruction", "-o"])
        .arg(d.path().join("o.jsonl"))
        .arg(&csv)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("columns `dialogue` → prompt, `summary` → completion"), "{stdout}");
    let written = std::fs::read_to_string(d.path().join("o.jsonl")).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(written.trim()).unwrap(),
        serde_json::json!({"instruction": "A: hi\nB: hello", "output": "They greet."})
    );

    let odd = d.path().join("odd.csv");
    std::fs::write(&odd, "speech,gist\nhello,hi\n").unwrap();
    let out = oxtune(home.path()).args(["prepare-data", "--check"]).arg(&odd).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    let all = format!("{stdout}{stderr}");
    assert!(all.contains("`speech`") && all.contains("--prompt-field") && all.contains("--completion-field"), "{all}");
    assert!(!all.contains("hyperparameters"), "names prepare-data's flags, not the trainer's hyperparameters: {all}");
}

fn demo_assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/assets/demo")
}

/// With a tokenizer the estimate counts tokens exactly as the job will (trainer::data::count_tokens).
#[test]
fn estimate_counts_tokens_exactly_with_a_tokenizer() {
    let home = tempfile::tempdir().unwrap();
    let data = demo_assets().join("train.jsonl");
    let out = oxtune(home.path())
        .args([
            "estimate",
            "--model",
            "llama-3.2-1b",
            "--max-seq-length",
            "256",
            "--json",
            "--instance",
            "ml.g5.xlarge",
        ])
        .arg("--data")
        .arg(&data)
        .arg("--tokenizer")
        .arg(demo_assets())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["tokens_exact"], true, "{stdout}");
    let spec = trainer::data::DataSpec { max_seq_length: 256, ..Default::default() };
    let want = trainer::data::count_tokens(&data, &demo_assets(), &spec).unwrap().total_tokens as u64;
    assert_eq!(v["tokens_per_epoch"].as_u64(), Some(want));
}

#[test]
fn prepare_data_token_histogram() {
    let home = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let out = oxtune(home.path())
        .args(["prepare-data", "--to", "messages", "--max-seq-length", "64", "--json", "-o"])
        .arg(d.path().join("out.jsonl"))
        .arg("--tokenizer")
        .arg(demo_assets())
        .arg(demo_assets().join("train.jsonl"))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let t = &v["token_lengths"];
    assert!(t["total_tokens"].as_u64().unwrap() > 0, "{stdout}");
    let counted: u64 = t["histogram"].as_array().unwrap().iter().map(|b| b[1].as_u64().unwrap()).sum();
    assert_eq!(counted, v["rows_written"].as_u64().unwrap());
}

/// Every subcommand's arguments are consistent (clap checks them when --help is built).
#[test]
fn every_command_parses() {
    let home = tempfile::tempdir().unwrap();
    for cmd in [
        "estimate",
        "prices",
        "submit",
        "status",
        "list",
        "stop",
        "logs",
        "wait",
        "compare",
        "prepare-data",
        "local",
        "deploy",
        "invoke",
        "endpoints",
        "undeploy",
    ] {
        let out = oxtune(home.path()).args([cmd, "--help"]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = oxtune(home.path()).args(["prices", "refresh", "--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    // SageMaker gives the container 120 s between SIGTERM and SIGKILL; `local` does the same.
    let out = oxtune(home.path()).args(["local", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let grace = help.lines().skip_while(|l| !l.contains("--stop-grace")).take(3).collect::<Vec<_>>().join("\n");
    assert!(grace.contains("[default: 120s]"), "{help}");
    for flag in
        ["--interrupt-after ", "--interrupt-after-step", "--image", "--docker", "--gpus", "--train-bin", "--fresh"]
    {
        assert!(help.contains(flag), "local has no {flag}:\n{help}");
    }
}

/// `deploy`, `invoke` and `undeploy` refuse bad input with exit 2 and no AWS call.
#[test]
fn deploy_bad_input_is_refused_before_any_network_call() {
    let home = tempfile::tempdir().unwrap();
    let missing = home.path().join("prompts.jsonl");
    let bad_rows = home.path().join("bad.jsonl");
    std::fs::write(&bad_rows, "{\"prompt\": \"ok\"}\n{\"prompt\": \"unterminated\n").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["deploy", "my-job", "--instance", "ml.g5.2xlarg"], "did you mean `ml.g5.2xlarge`"),
        (vec!["deploy", "my-job", "--instance", "ml.m5.xlarge"], "GPU instances it knows"),
        (vec!["deploy", "my_job"], "contains `_`"),
        (vec!["deploy", "my-job", "--name=ep-"], "must start and end"),
        (vec!["deploy", "s3://bucket/model"], "needs --role"),
        (vec!["deploy", "s3://bucket/model", "--role", "arn:aws:iam::1:user/me"], "12-digit account"),
        (vec!["deploy", "my-job", "--count", "0"], "--count"),
        (vec!["deploy", "my-job", "--timeout", "soon"], "--timeout"),
        (vec!["deploy", "my-job", "--adapter-on", "s3://b/base/", "--container", "tgi"], "LMI container only"),
        (vec!["deploy", "my-job", "--adapter-on", "/local/base"], "--adapter-on"),
        (vec!["invoke", "ep", "--file", missing.to_str().unwrap()], "prompts.jsonl"),
        (vec!["invoke", "ep", "--file", bad_rows.to_str().unwrap()], "bad.jsonl:2"),
        (vec!["undeploy", "my_ep"], "contains `_`"),
    ];
    for (args, want) in cases {
        let out = oxtune(home.path())
            .args(&args)
            .args(["--region", "us-east-1", "--endpoint-url", DEAD_ENDPOINT])
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stdout}{stderr}");
        assert!(stderr.contains(want), "{args:?}: want `{want}` in:\n{stderr}");
    }
}

/// `--deployable` (or `deployable = true`) uploads the model uncompressed and merges the adapter;
/// with `merge_adapter = false` it is a contradiction, refused.
#[test]
fn deployable_jobs_merge_and_upload_uncompressed() {
    let home = tempfile::tempdir().unwrap();
    let out = oxtune(home.path())
        .args(["submit", "--dry-run", "--exact-name", "--deployable", "--endpoint-url", DEAD_ENDPOINT])
        .arg(fixtures().join("job.toml"))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let req: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(req["OutputDataConfig"]["CompressionType"], "NONE");
    assert_eq!(req["HyperParameters"]["merge_adapter"], "true");
    let (code, text) = submit_variant(
        |j| {
            set(j, "sagemaker", "deployable", toml::Value::Boolean(true));
            set(j, "hyperparameters", "merge_weights", toml::Value::Boolean(false));
        },
        &[],
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("`merge_weights` is `false`"), "{text}");
}
