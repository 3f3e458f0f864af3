//! `oxtune local` supervision with a stand-in trainer (tests/launcher/fake-train.sh):
//! completion and packing, an injected spot interruption with restart and resume, the max
//! runtime (SIGTERM, then SIGKILL after the grace period) and failure reporting.
//! The same flow with the real CPU `train` binary is in tests/local_e2e.rs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use launcher::jobfile::{resolve, Job, JobFile, Overrides};
use launcher::local::{run, Engine, LocalOptions, LocalStatus};
use launcher::redact::Redactor;

use crate::common::tar_names;

fn fake_train() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/launcher/fake-train.sh")
}

fn job(dir: &Path, env: &[(&str, &str)], max_runtime: &str) -> Job {
    std::fs::write(dir.join("train.jsonl"), "{\"prompt\":\"a\",\"completion\":\"b\"}\n").unwrap();
    let mut text = format!(
        "name = \"local-test\"\n[sagemaker]\ninstance_type = \"ml.g5.xlarge\"\nmax_runtime = \"{max_runtime}\"\n[hyperparameters]\nepochs = 1\nlora_r = 8\n[channels]\ntrain = \"train.jsonl\"\n[environment]\n"
    );
    for (k, v) in env {
        text.push_str(&format!("{k} = \"{v}\"\n"));
    }
    let f: JobFile = toml::from_str(&text).unwrap();
    resolve(Some((&dir.join("job.toml"), f)), &Overrides { exact_name: true, ..Default::default() }, &|_| None, 0)
        .unwrap()
}

fn opts(dir: &Path, job: &Job) -> LocalOptions {
    LocalOptions {
        work_dir: dir.join("work"),
        train_bin: Some(fake_train()),
        image: None,
        engine: None,
        gpus: "none".into(),
        max_runtime: job.max_runtime(),
        stop_grace: Duration::from_millis(500),
        interrupt_after: None,
        interrupt_after_step: None,
        fresh: false,
        copy_channels: false,
    }
}

#[test]
fn completes_and_packs_like_sagemaker() {
    let d = tempfile::tempdir().unwrap();
    let j = job(d.path(), &[("FAKE_TRAIN_STEPS", "3"), ("HF_TOKEN", "hf_localSecretTokenValue1234567890abcdef")], "1h");
    let mut log = Vec::new();
    let mut red = Redactor::default();
    red.add("hf_localSecretTokenValue1234567890abcdef");
    let out = run(&j, &opts(d.path(), &j), &red, &mut log).unwrap();
    let log = String::from_utf8(log).unwrap();
    assert_eq!(out.status, LocalStatus::Completed, "{log}");
    assert_eq!(out.attempts, 1);
    assert!(log.contains("job local-test hyperparameters: {\"epochs\":\"1\",\"lora_r\":\"8\"}"), "{log}");
    assert!(log.contains("channels: train"), "{log}");
    assert!(log.contains("METRIC step=3"), "{log}");
    assert_eq!(tar_names(out.model_tar.as_ref().unwrap()), ["adapter_model.safetensors"]);
    assert_eq!(tar_names(out.output_tar.as_ref().unwrap()), ["summary.json"]);
    let rc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.ml_root.join("input/config/resourceconfig.json")).unwrap())
            .unwrap();
    assert_eq!(rc["current_host"], "algo-1");
}

#[test]
fn injected_interruption_restarts_and_resumes_from_the_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let j = job(d.path(), &[("FAKE_TRAIN_STEPS", "20"), ("FAKE_TRAIN_SLEEP", "0.05")], "1h");
    let mut o = opts(d.path(), &j);
    o.interrupt_after = Some(Duration::from_millis(400));
    let mut log = Vec::new();
    let out = run(&j, &o, &Redactor::default(), &mut log).unwrap();
    let log = String::from_utf8(log).unwrap();
    assert_eq!(out.status, LocalStatus::Completed, "{log}");
    assert_eq!(out.attempts, 2, "{log}");
    assert_eq!(out.checkpoints_before_restart, ["step"], "{log}");
    assert!(log.contains("simulated spot interruption — sending SIGTERM"), "{log}");
    assert!(log.contains("received SIGTERM, checkpoint saved at step"), "{log}");
    assert!(log.contains("attempt 1 ended") && log.contains("exit code 143"), "{log}");
    assert!(log.contains("resuming from checkpoint at step"), "{log}");
    // The second attempt continued; it did not start over at step 1.
    let second = log.split("resuming from checkpoint").nth(1).unwrap();
    assert!(!second.contains("METRIC step=1 "), "{log}");
    assert!(second.contains("METRIC step=20"), "{log}");
}

#[test]
fn interruption_after_a_logged_step() {
    let d = tempfile::tempdir().unwrap();
    let j = job(d.path(), &[("FAKE_TRAIN_STEPS", "8"), ("FAKE_TRAIN_SLEEP", "0.05")], "1h");
    let mut o = opts(d.path(), &j);
    o.interrupt_after_step = Some(3);
    let mut log = Vec::new();
    let out = run(&j, &o, &Redactor::default(), &mut log).unwrap();
    let log = String::from_utf8(log).unwrap();
    assert_eq!((out.status, out.attempts), (LocalStatus::Completed, 2), "{log}");
    let first = log.split("simulated spot interruption").next().unwrap();
    assert!(first.contains("METRIC step=3 "), "{log}");
    assert!(log.contains("resuming from checkpoint at step"), "{log}");
}

#[test]
fn max_runtime_sends_sigterm_and_stops() {
    let d = tempfile::tempdir().unwrap();
    let j = job(d.path(), &[("FAKE_TRAIN_STEPS", "1000"), ("FAKE_TRAIN_SLEEP", "0.05")], "1s");
    let mut log = Vec::new();
    let out = run(&j, &opts(d.path(), &j), &Redactor::default(), &mut log).unwrap();
    let log = String::from_utf8(log).unwrap();
    assert_eq!(out.status, LocalStatus::Stopped, "{log}");
    assert_eq!(out.exit_code, Some(143));
    assert!(log.contains("max runtime reached — sending SIGTERM"), "{log}");
    assert!(out.model_tar.is_some());
}

#[test]
fn sigkill_after_the_grace_period() {
    let d = tempfile::tempdir().unwrap();
    let j = job(d.path(), &[("FAKE_TRAIN_STEPS", "1000"), ("FAKE_TRAIN_IGNORE_TERM", "1")], "1s");
    let started = std::time::Instant::now();
    let mut log = Vec::new();
    let out = run(&j, &opts(d.path(), &j), &Redactor::default(), &mut log).unwrap();
    let log = String::from_utf8(log).unwrap();
    assert_eq!(out.status, LocalStatus::Stopped, "{log}");
    assert_eq!(out.exit_code, None, "killed by a signal: {log}");
    assert!(log.contains("ignoring SIGTERM") && log.contains("sending SIGKILL"), "{log}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn failure_file_becomes_the_failure_reason() {
    let d = tempfile::tempdir().unwrap();
    let j = job(d.path(), &[("FAKE_TRAIN_STEPS", "2"), ("FAKE_TRAIN_FAIL", "1")], "1h");
    let mut log = Vec::new();
    let out = run(&j, &opts(d.path(), &j), &Redactor::default(), &mut log).unwrap();
    assert_eq!(out.status, LocalStatus::Failed);
    assert_eq!(out.failure_reason.as_deref(), Some("AlgorithmError: boom: bad data at train.jsonl:3, exit code: 2"));
    assert!(out.model_tar.is_none() && out.output_tar.is_some());
}

#[test]
fn secrets_in_the_trainer_output_are_redacted() {
    let d = tempfile::tempdir().unwrap();
    // The fake trainer prints its hyperparameters; put a token-shaped value in the environment
    // and make sure the streamed log never shows what the redactor knows.
    let j = job(d.path(), &[("FAKE_TRAIN_STEPS", "1")], "1h");
    let mut red = Redactor::default();
    red.add("local-test"); // the job name appears in the log: use it as the "secret"
    let mut log = Vec::new();
    run(&j, &opts(d.path(), &j), &red, &mut log).unwrap();
    let log = String::from_utf8(log).unwrap();
    let trainer_lines: Vec<&str> = log.lines().filter(|l| l.starts_with("job ")).collect();
    assert!(
        !trainer_lines.is_empty()
            && trainer_lines.iter().all(|l| !l.contains("local-test") && l.contains("***REDACTED***")),
        "{log}"
    );
}

#[test]
fn the_container_engine_is_the_one_asked_for_or_docker_then_podman() {
    let d = tempfile::tempdir().unwrap();
    let (both, only_podman, none) = (d.path().join("both"), d.path().join("podman"), d.path().join("none"));
    for (dir, programs) in [(&both, &["docker", "podman"][..]), (&only_podman, &["podman"][..]), (&none, &[][..])] {
        std::fs::create_dir_all(dir).unwrap();
        for p in programs {
            std::fs::write(dir.join(p), "#!/bin/sh\n").unwrap();
        }
    }
    let choose = |e: Option<Engine>, dir: &Path| Engine::choose_on(e, Some(dir.as_os_str()));
    assert_eq!(choose(None, &both).unwrap(), Engine::Docker, "docker first when both are there");
    assert_eq!(choose(None, &only_podman).unwrap(), Engine::Podman);
    assert_eq!(choose(Some(Engine::Podman), &both).unwrap(), Engine::Podman, "--engine wins");
    let e = choose(Some(Engine::Docker), &only_podman).unwrap_err().to_string();
    assert!(e.contains("--engine docker") && e.contains("not on PATH"), "{e}");
    let e = choose(None, &none).unwrap_err().to_string();
    assert!(e.contains("neither `docker` nor `podman`"), "{e}");
}
