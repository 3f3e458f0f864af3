//! `oxtune local` end to end with the real CPU `train` binary and the trainer's tiny demo
//! model (`train demo` writes it): an injected spot interruption (SIGTERM mid-run), a restart
//! that resumes from the checkpoint, and SageMaker-style packed outputs.
//!
//! The `train` binary is the one `cargo test --workspace` builds next to this test
//! (target/<profile>/train), or `$OXTUNE_TRAIN_BIN`. Without it the test fails when `CI` is set,
//! else prints a loud SKIPPED line.

use std::process::Command;

use crate::common::{demo_channels, tar_names, train_binary};

#[test]
fn local_run_with_interruption_resumes_and_packs_outputs() {
    let Some(train) = train_binary() else { return };
    let d = tempfile::tempdir().unwrap();
    // 1. The demo tree (tiny random Llama + tokenizer + data), from the trainer itself.
    let data = demo_channels(&train, d.path());

    // 2. A job file over those channels, with the demo's hyperparameters.
    let steps: u64 = std::env::var("OXTUNE_E2E_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let mut hp = trainer::demo::demo_hyperparameters(Some(steps), trainer::demo::DemoFamily::Llama);
    hp.insert("logging_steps".into(), "1".into());
    hp.insert("save_steps".into(), "0".into()); // only the SIGTERM checkpoint
    hp.insert("eval_steps".into(), "0".into());
    let mut job = String::from("name = \"e2e-local\"\n[sagemaker]\ninstance_type = \"ml.g5.xlarge\"\nmax_runtime = \"30m\"\n[hyperparameters]\n");
    for (k, v) in &hp {
        job.push_str(&format!("{k} = {}\n", toml::Value::String(v.clone())));
    }
    job.push_str("[channels]\n");
    for ch in ["train", "validation", "model"] {
        job.push_str(&format!("{ch} = {}\n", toml::Value::String(data.join(ch).display().to_string())));
    }
    let job_file = d.path().join("job.toml");
    std::fs::write(&job_file, job).unwrap();

    // 3. Run it with an injected interruption.
    // Interrupt once step 2 is logged (deterministic, whatever the machine's speed).
    let work = d.path().join("work");
    let out = Command::new(env!("CARGO_BIN_EXE_oxtune"))
        .args(["local", "--exact-name", "--stop-grace", "60s", "--interrupt-after-step", "2", "--train-bin"])
        .arg(&train)
        .arg("--work-dir")
        .arg(&work)
        .arg(&job_file)
        .env("OXTUNE_DEVICE", "cpu")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}\n{stderr}");
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("simulated spot interruption — sending SIGTERM"), "{all}");
    assert!(
        all.contains("attempt 1 ended") && all.contains("exit code 143"),
        "the trainer should exit 143 after checkpointing:\n{all}"
    );
    assert!(!all.contains("checkpoints kept for the restart: none"), "no checkpoint was written on SIGTERM:\n{all}");
    let resumed =
        all.lines().find(|l| l.contains("Resuming from checkpoint")).unwrap_or_else(|| panic!("no resume:\n{all}"));
    let step: u64 = resumed.rsplit(' ').next().unwrap().trim().parse().unwrap();
    assert!(step > 0 && step < steps, "resumed at step {step} of {steps}");
    assert!(stderr.contains("Completed after 2 attempt(s)"), "{stderr}");
    // After the restart the run continued from there to the end.
    let after = all.split("Resuming from checkpoint").nth(1).unwrap();
    assert!(after.contains(&format!("METRIC step={steps} ")), "{all}");
    assert!(!after.contains("METRIC step=1 "), "restarted from scratch:\n{all}");

    // 4. Outputs packed like SageMaker.
    let model = tar_names(&work.join("output/model.tar.gz"));
    assert!(model.iter().any(|n| n.ends_with("adapter_model.safetensors")), "{model:?}");
    assert!(model.iter().any(|n| n.ends_with("adapter_config.json")), "{model:?}");
    assert!(work.join("output/output.tar.gz").is_file());
    // The synthesised /opt/ml kept its checkpoints.
    assert!(std::fs::read_dir(work.join("opt_ml/checkpoints")).unwrap().next().is_some());
}
