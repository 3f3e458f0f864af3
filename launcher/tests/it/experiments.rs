//! `oxtune submit --mlflow` and `oxtune compare --experiment`, against the real MLflow server the
//! test command starts (tests/mlflow/server.sh; OXTUNE_MLFLOW_ENDPOINT).

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

fn endpoint() -> String {
    std::env::var("OXTUNE_MLFLOW_ENDPOINT").unwrap_or_else(|_| {
        panic!("OXTUNE_MLFLOW_ENDPOINT is not set: run ./tests/run.sh, or export OXTUNE_MLFLOW_ENDPOINT=$(tests/mlflow/server.sh start)")
    })
}

fn post(path: &str, body: Value) -> Value {
    ureq::post(&format!("{}{path}", endpoint()))
        .send_json(body)
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
        .into_json()
        .unwrap()
}

fn oxtune(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_oxtune"));
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") || k.starts_with("MLFLOW_") {
            c.env_remove(k);
        }
    }
    c.env("HOME", home).env("AWS_EC2_METADATA_DISABLED", "true").env("OXTUNE_CACHE_DIR", home.join("cache"));
    c
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// An experiment with three finished runs of different `lora_r`.
fn experiment() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let name = format!("launcher-{}-{nanos}", std::process::id());
    let id = post("/api/2.0/mlflow/experiments/create", json!({ "name": name }))["experiment_id"]
        .as_str()
        .unwrap()
        .to_string();
    for (run, r, eval_loss, rouge) in [("r8", "8", 1.5, 0.31), ("r16", "16", 1.2, 0.29), ("r32", "32", 1.3, 0.35)] {
        let created =
            post("/api/2.0/mlflow/runs/create", json!({ "experiment_id": id, "run_name": run, "start_time": 1 }));
        let run_id = created["run"]["info"]["run_id"].as_str().unwrap().to_string();
        post(
            "/api/2.0/mlflow/runs/log-batch",
            json!({
                "run_id": run_id,
                "params": [{ "key": "lora_r", "value": r }, { "key": "seed", "value": "1" }],
                "metrics": [
                    { "key": "eval_loss", "value": eval_loss + 1.0, "step": 1, "timestamp": 1 },
                    { "key": "eval_loss", "value": eval_loss, "step": 2, "timestamp": 2 },
                    { "key": "test_rougeL", "value": rouge, "step": 2, "timestamp": 2 }
                ]
            }),
        );
        post("/api/2.0/mlflow/runs/update", json!({ "run_id": run_id, "status": "FINISHED" }));
    }
    name
}

#[test]
fn compare_lists_an_experiments_runs_best_first() {
    let home = tempfile::tempdir().unwrap();
    let name = experiment();
    let out = oxtune(home.path()).args(["compare", "--experiment", &name, "--mlflow", &endpoint()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(shown.contains("3 run(s), best first by eval_loss (lower is better)"), "{shown}");
    let order = ["r16", "r32", "r8"];
    let at = |r: &str| shown.find(&format!(" {r} ")).unwrap_or_else(|| panic!("{r} missing:\n{shown}"));
    assert!(at(order[0]) < at(order[1]) && at(order[1]) < at(order[2]), "{shown}");
    assert!(shown.contains("lora_r") && !shown.contains("seed"), "only the params that differ:\n{shown}");

    let out = oxtune(home.path())
        .args(["compare", "--experiment", &name, "--metric", "test_rougeL", "--json"])
        .env("MLFLOW_TRACKING_URI", endpoint())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v["runs"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["r32", "r8", "r16"], "higher ROUGE first");
    assert_eq!(v["runs"][0]["value"], 0.35);
}

#[test]
fn compare_names_what_is_missing() {
    let home = tempfile::tempdir().unwrap();
    let out = oxtune(home.path()).args(["compare", "--experiment", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--mlflow URI or MLFLOW_TRACKING_URI"), "{}", text(&out));
    let out = oxtune(home.path())
        .args(["compare", "--experiment", "no-such-experiment-anywhere", "--mlflow", &endpoint()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("has no experiment `no-such-experiment-anywhere`"), "{}", text(&out));
    let out = oxtune(home.path()).args(["compare", "--experiment", "x", "--mlflow", "mlruns"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("MLFLOW_TRACKING_URI=mlruns is not an MLflow tracking server"), "{}", text(&out));
}

#[test]
fn submit_passes_the_tracking_server_and_refuses_a_bad_one() {
    let home = tempfile::tempdir().unwrap();
    let job = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/job.toml");
    let dry = |extra: &[&str]| {
        oxtune(home.path())
            .args(["submit", "--dry-run", "--exact-name", "--endpoint-url", "http://127.0.0.1:1"])
            .args(extra)
            .arg(&job)
            .env("HF_TOKEN", "hf_x")
            .output()
            .unwrap()
    };
    let out = dry(&["--mlflow", "http://mlflow.internal:5000", "--mlflow-experiment", "tuning"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let request: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(request["Environment"]["MLFLOW_TRACKING_URI"], "http://mlflow.internal:5000");
    assert_eq!(request["Environment"]["MLFLOW_EXPERIMENT_NAME"], "tuning");
    let out = dry(&["--mlflow", "./mlruns"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("is not an MLflow tracking server"), "{}", text(&out));
}
