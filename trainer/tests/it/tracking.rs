//! MLflow tracking from `train`, against a real `mlflow server` the test command starts on
//! loopback (tests/mlflow/server.sh; its endpoint in OXTUNE_MLFLOW_ENDPOINT): a job's params, tags,
//! metrics with their steps and artifacts read back through MLflow's REST API; a stopped and
//! resumed job is one run; an unreachable server leaves the outputs as they are with one warning;
//! a bad URI is bad input. And the SigV4 signature of a SageMaker MLflow request against botocore's
//! signer on fixed credentials and time.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use serde_json::{json, Value};

use crate::common::{loss_bits, rows, text, Job};

fn endpoint() -> String {
    std::env::var("OXTUNE_MLFLOW_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "OXTUNE_MLFLOW_ENDPOINT is not set: the tracking tests need a real MLflow server. Run ./tests/run.sh \
             (it starts one), or export OXTUNE_MLFLOW_ENDPOINT=$(tests/mlflow/server.sh start)"
        )
    })
}

/// An experiment name no other test run uses.
fn experiment(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("it-{tag}-{}-{nanos}", std::process::id())
}

fn get(path: &str, query: &[(&str, &str)]) -> Value {
    let mut req = ureq::get(&format!("{}{path}", endpoint()));
    for (k, v) in query {
        req = req.query(k, v);
    }
    req.call().unwrap_or_else(|e| panic!("GET {path}: {e}")).into_json().unwrap()
}

fn post(path: &str, body: Value) -> Value {
    ureq::post(&format!("{}{path}", endpoint()))
        .send_json(body)
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
        .into_json()
        .unwrap()
}

/// The runs of experiment `name`.
fn runs(name: &str) -> Vec<Value> {
    let id = get("/api/2.0/mlflow/experiments/get-by-name", &[("experiment_name", name)])["experiment"]
        ["experiment_id"]
        .as_str()
        .unwrap()
        .to_string();
    let found = post("/api/2.0/mlflow/runs/search", json!({ "experiment_ids": [id], "max_results": 10 }));
    found["runs"].as_array().cloned().unwrap_or_default()
}

fn pairs(run: &Value, what: &str) -> std::collections::BTreeMap<String, String> {
    run["data"][what]
        .as_array()
        .map(|a| a.iter().map(|p| (p["key"].as_str().unwrap().into(), p["value"].as_str().unwrap().into())).collect())
        .unwrap_or_default()
}

/// (step, value) of one metric's history.
fn history(run_id: &str, key: &str) -> Vec<(u64, f64)> {
    let h = get("/api/2.0/mlflow/metrics/get-history", &[("run_id", run_id), ("metric_key", key)]);
    let mut v: Vec<(u64, f64)> = h["metrics"]
        .as_array()
        .map(|a| a.iter().map(|m| (m["step"].as_u64().unwrap(), m["value"].as_f64().unwrap())).collect())
        .unwrap_or_default();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

fn summary_losses(j: &Job) -> Vec<(u64, f64)> {
    j.summary()["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| Some((r["step"].as_u64()?, r.get("loss")?.as_f64()?)))
        .collect()
}

const HP: [(&str, &str); 7] = [
    ("max_steps", "6"),
    ("lora_r", "4"),
    ("per_device_batch_size", "2"),
    ("max_seq_length", "32"),
    ("logging_steps", "1"),
    ("save_steps", "2"),
    ("seed", "5"),
];

#[test]
fn a_job_logs_params_tags_metrics_and_artifacts() {
    let exp = experiment("logs");
    let job = Job::new(&HP, &rows(24));
    let out = job
        .command(&[])
        .env("MLFLOW_TRACKING_URI", endpoint())
        .env("MLFLOW_EXPERIMENT_NAME", &exp)
        .env("TRAINING_JOB_NAME", "tracked-2026-12-07-21-30-00-123")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let log = text(&out);
    assert!(log.contains("Tracking in MLflow at") && !log.contains("WARN"), "{log}");

    let runs = runs(&exp);
    assert_eq!(runs.len(), 1, "one run per job");
    let run = &runs[0];
    let id = run["info"]["run_id"].as_str().unwrap();
    assert_eq!(run["info"]["run_name"], "tracked-2026-12-07-21-30-00-123");
    assert_eq!(run["info"]["status"], "FINISHED");
    let params = pairs(run, "params");
    assert_eq!(params.get("lora_r").map(String::as_str), Some("4"));
    assert_eq!(params.get("max_steps").map(String::as_str), Some("6"));
    assert!(params.len() > 30, "every resolved hyperparameter: {params:?}");
    let tags = pairs(run, "tags");
    assert_eq!(tags.get("oxtune.version").map(String::as_str), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(tags.get("sagemaker.training_job_name").map(String::as_str), Some("tracked-2026-12-07-21-30-00-123"));
    assert_eq!(tags.get("oxtune.data_sha256").map(|s| s.len()), Some(64), "{tags:?}");
    assert!(tags.contains_key("oxtune.model") && tags.contains_key("oxtune.base_config_sha256"), "{tags:?}");

    // The loss curve: every logged step with the value the summary has.
    let tracked = history(id, "loss");
    let summary = summary_losses(&job);
    assert_eq!(tracked.iter().map(|m| m.0).collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>());
    for ((s1, v1), (s2, v2)) in tracked.iter().zip(&summary) {
        assert!(s1 == s2 && (v1 - v2).abs() < 1e-9, "step {s1}: {v1} vs the summary's {v2}");
    }
    assert_eq!(history(id, "lr").len(), 6);

    let listed = get("/api/2.0/mlflow/artifacts/list", &[("run_id", id)]);
    let files: Vec<&str> = listed["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    for f in ["adapter_config.json", "loss_curve.svg", "training_summary.json"] {
        assert!(files.contains(&f), "{f} not in {files:?}");
    }
    let run_file: Value =
        serde_json::from_str(&std::fs::read_to_string(job.root().join("checkpoints/mlflow-run.json")).unwrap())
            .unwrap();
    assert_eq!(run_file["run_id"], id);
}

#[test]
fn a_stopped_and_resumed_job_is_one_run() {
    let exp = experiment("resume");
    let hp: Vec<(&str, &str)> = HP.iter().map(|&(k, v)| if k == "max_steps" { (k, "40") } else { (k, v) }).collect();
    let job = Job::new(&hp, &rows(24));
    let tracked = |c: &mut std::process::Command| {
        c.env("MLFLOW_TRACKING_URI", endpoint()).env("MLFLOW_EXPERIMENT_NAME", &exp);
    };
    let mut cmd = job.command(&[]);
    tracked(&mut cmd);
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().starts_with("METRIC step=3 ") {
            break;
        }
    }
    assert!(std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success());
    lines.for_each(drop);
    assert_eq!(child.wait().unwrap().code(), Some(143));
    let first = runs(&exp);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["info"]["status"], "KILLED", "a stopped job's run says so until it resumes");

    let mut cmd = job.command(&[]);
    tracked(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("MLflow: continuing run"), "{}", text(&out));
    let runs = runs(&exp);
    assert_eq!(runs.len(), 1, "the resumed job continues its run");
    assert_eq!(runs[0]["info"]["status"], "FINISHED");
    let steps: Vec<u64> = history(runs[0]["info"]["run_id"].as_str().unwrap(), "loss").iter().map(|m| m.0).collect();
    assert_eq!(steps, (1..=40).collect::<Vec<_>>(), "each step once, across both attempts");
}

#[test]
fn an_unreachable_server_costs_one_warning_and_changes_no_output() {
    let plain = Job::new(&HP, &rows(24));
    assert!(plain.run(&[]).status.success());
    let tracked = Job::new(&HP, &rows(24));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = tracked
        .command(&[])
        .env("MLFLOW_TRACKING_URI", format!("http://127.0.0.1:{port}"))
        .env("OXTUNE_MLFLOW_FINISH_WAIT", "2")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let log = text(&out);
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("MLflow tracking at http://127.0.0.1") && warnings[0].contains("The job goes on"),
        "{log}"
    );
    let adapter = |j: &Job| std::fs::read(j.root().join("model/adapter_model.safetensors")).unwrap();
    assert!(adapter(&plain) == adapter(&tracked), "the adapter differs with an unreachable tracking server");
    assert_eq!(loss_bits(&plain.summary()), loss_bits(&tracked.summary()));
}

#[test]
fn a_bad_tracking_uri_is_bad_input_before_training() {
    let job = Job::new(&HP, &rows(24));
    let out = job.command(&[]).env("MLFLOW_TRACKING_URI", "ftp://mlflow.example.com").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let failure = job.failure().unwrap();
    assert!(
        failure.contains("MLFLOW_TRACKING_URI=ftp://mlflow.example.com is not an MLflow tracking server"),
        "{failure}"
    );
    assert!(!job.root().join("model/adapter_model.safetensors").exists());
}

/// botocore (in the moto venv the test command makes) signs the same request with the same
/// credentials and time; the signatures must match.
#[test]
fn sigv4_matches_botocore() {
    use std::time::{Duration, SystemTime};
    use trainer::track::sigv4::{sign_with, Creds};
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/launcher/.venv/bin/python");
    assert!(python.exists(), "{} is missing: run tests/launcher/moto.sh install (tests/run.sh does)", python.display());
    let creds = Creds {
        key: "AKIDEXAMPLE".into(),
        secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        token: Some("session-token".into()),
        expires: None,
    };
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_679_000);
    let arn = "arn:aws:sagemaker:eu-west-1:123456789012:mlflow-tracking-server/team";
    let cases = [
        ("POST", "https://eu-west-1.experiments.sagemaker.aws/api/2.0/mlflow/runs/log-batch", r#"{"run_id":"abc","metrics":[]}"#),
        ("GET", "https://eu-west-1.experiments.sagemaker.aws/api/2.0/mlflow/experiments/get-by-name?experiment_name=my%20exp", ""),
    ];
    for (method, url, body) in cases {
        let ct = (!body.is_empty()).then_some("application/json");
        let ours = sign_with(method, url, body.as_bytes(), ct, "eu-west-1", arn, &creds, at).unwrap();
        let auth = ours.iter().find(|(k, _)| k.eq_ignore_ascii_case("authorization")).unwrap().1.clone();
        let script = r#"
import hashlib, json, sys
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
method, url, body, ct, arn = sys.argv[1:6]
headers = {"x-mlflow-sm-tracking-server-arn": arn, "X-Amz-Content-SHA256": hashlib.sha256(body.encode()).hexdigest()}
if ct:
    headers["Content-Type"] = ct
req = AWSRequest(method=method, url=url, data=body.encode() if body else None, headers=headers)
ts = "20261207T213000Z"
req.context["timestamp"] = ts
req.headers["X-Amz-Date"] = ts
req.headers["X-Amz-Security-Token"] = "session-token"
auth = SigV4Auth(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token"), "sagemaker-mlflow", "eu-west-1")
cr = auth.canonical_request(req)
sig = auth.signature(auth.string_to_sign(req, cr), req)
signed = auth.signed_headers(auth.headers_to_sign(req))
print(json.dumps({"signature": sig, "signed_headers": signed}))
"#;
        let out = std::process::Command::new(&python)
            .args(["-c", script, method, url, body, ct.unwrap_or(""), arn])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let boto: Value = serde_json::from_slice(&out.stdout).unwrap();
        let want = format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261207/eu-west-1/sagemaker-mlflow/aws4_request, SignedHeaders={}, Signature={}",
            boto["signed_headers"].as_str().unwrap(),
            boto["signature"].as_str().unwrap()
        );
        assert_eq!(auth, want, "{method} {url}");
    }
}
