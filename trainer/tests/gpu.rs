//! The trainer on a GPU (feature `cuda`): the same demo job on CUDA (bf16, fused kernels) and on
//! the CPU (f32 reference) must give the same loss curve within bf16 tolerance, and the GPU run
//! must say which device it used. Needs a GPU: built with `cargo nextest archive --features cuda`
//! and run on the GPU machine by `kernels/scripts/gpu-tests.sh`.
#![cfg(feature = "cuda")]

use std::process::Command;

/// The `train` binary: nextest's archive remaps it to NEXTEST_BIN_EXE_train on the GPU machine.
fn train_bin() -> String {
    std::env::var("NEXTEST_BIN_EXE_train").unwrap_or_else(|_| env!("CARGO_BIN_EXE_train").to_string())
}

/// Runs the demo for `steps` steps; returns (stdout+stderr, [(step, loss)]).
fn demo(device: Option<&str>, steps: u32) -> (String, Vec<(u64, f64)>) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(train_bin());
    c.args(["demo", "--steps", &steps.to_string(), "--ml-root"]).arg(dir.path());
    c.env_remove("OXTUNE_DEVICE");
    if let Some(d) = device {
        c.env("OXTUNE_DEVICE", d);
    }
    let out = c.output().unwrap();
    let log = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "demo failed on {device:?}:\n{log}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("model/training_summary.json")).unwrap())
            .unwrap();
    let losses = summary["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| Some((r["step"].as_u64()?, r.get("loss")?.as_f64()?)))
        .collect();
    (log, losses)
}

#[test]
fn demo_loss_curve_on_gpu_matches_cpu() {
    let (cpu_log, cpu) = demo(Some("cpu"), 30);
    let (gpu_log, gpu) = demo(None, 30);
    assert!(cpu_log.contains("device cpu"), "{cpu_log}");
    assert!(
        gpu_log.contains("device cuda:0") && gpu_log.contains("dtype BF16"),
        "GPU run did not use the GPU:\n{gpu_log}"
    );
    assert_eq!(cpu.iter().map(|p| p.0).collect::<Vec<_>>(), gpu.iter().map(|p| p.0).collect::<Vec<_>>());
    assert!(cpu.len() >= 3, "{cpu:?}");
    for ((step, c), (_, g)) in cpu.iter().zip(&gpu) {
        // bf16 weights and activations against the f32 reference: a few percent over 30 steps.
        assert!(
            (c - g).abs() <= 0.03 * c.abs() + 0.02,
            "step {step}: GPU loss {g} vs CPU loss {c}\nCPU {cpu:?}\nGPU {gpu:?}"
        );
    }
}
