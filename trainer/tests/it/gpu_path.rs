//! The GPU code path of `train` — bf16 and every fused kernel of `kernels/cuda/` — against the CPU
//! path (f32, the kernels' CPU references), on every GPU path this machine has: the host emulation
//! of CUDA always (`OXTUNE_DEVICE=emulated-cuda`), a real GPU in a `--features cuda` build. The demo
//! covers the LoRA path's kernels, a QLoRA job the NF4 one.

use crate::common::{rows, text, Job};

/// QLoRA (the NF4 kernel) on a tiny model: a head dim the attention kernels take (64), 3 steps.
const JOB: &[(&str, &str)] = &[
    ("max_steps", "3"),
    ("lora_r", "4"),
    ("lora_dropout", "0.1"),
    ("per_device_batch_size", "2"),
    ("max_seq_length", "32"),
    ("logging_steps", "1"),
    ("learning_rate", "1e-2"),
];

/// (step, training loss) of every logged step in a training summary's history.
fn step_losses(summary: &serde_json::Value) -> Vec<(u64, f64)> {
    summary["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| Some((r["step"].as_u64()?, r.get("loss")?.as_f64()?)))
        .collect()
}

/// Runs the job on `device`; returns the console text and the per-step losses.
fn losses(job: &Job, device: &str, extra: &[&str]) -> (String, Vec<(u64, f64)>) {
    let out = job.command(extra).env("OXTUNE_DEVICE", device).output().unwrap();
    assert!(out.status.success(), "{device}:\n{}", text(&out));
    (text(&out), step_losses(&job.summary()))
}

fn job() -> Job {
    let job = Job::new(JOB, &rows(12));
    let mut cfg = crate::common::tiny_config_json(2, 128);
    cfg["num_attention_heads"] = serde_json::json!(2);
    cfg["num_key_value_heads"] = serde_json::json!(1);
    crate::common::write_model(&job.channel("model"), &cfg, 3);
    job
}

/// The loss of each step on the GPU path is the CPU path's within bf16's error: bf16 weights and
/// activations against the f32 reference drift by a few percent over a few steps.
fn assert_same_curve(cpu: &[(u64, f64)], gpu: &[(u64, f64)], log: &str) {
    assert_eq!(cpu.iter().map(|p| p.0).collect::<Vec<_>>(), gpu.iter().map(|p| p.0).collect::<Vec<_>>());
    assert_eq!(cpu.len(), 3, "{cpu:?}");
    for ((step, c), (_, g)) in cpu.iter().zip(gpu) {
        assert!(
            (c - g).abs() <= 0.03 * c.abs() + 0.02,
            "step {step}: GPU path {g} vs CPU {c}\n{cpu:?}\n{gpu:?}\n{log}"
        );
    }
}

macro_rules! on_every_gpu_path {
    ($(#[$meta:meta])* fn $name:ident($dev:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn body($dev: &str) $body
            #[test]
            fn emulated_cuda() {
                body("emulated-cuda")
            }
            #[cfg(feature = "cuda")]
            #[test]
            fn cuda() {
                body("cuda")
            }
        }
    };
}

/// `train demo` for 3 steps with LoRA dropout on (the mask kernel) on `device`: console text and losses.
fn demo(device: &str) -> (String, Vec<(u64, f64)>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("demo");
    let out = std::process::Command::new(crate::common::train_bin())
        .args(["demo", "--steps", "3", "--logging_steps", "1", "--lora_dropout", "0.05", "--ml-root"])
        .arg(&root)
        .env("OXTUNE_DEVICE", device)
        .output()
        .unwrap();
    assert!(out.status.success(), "{device}:\n{}", text(&out));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("model/training_summary.json")).unwrap()).unwrap();
    (text(&out), step_losses(&summary))
}

on_every_gpu_path! {
    fn demo_matches_cpu(device) {
        let (cpu_log, cpu) = demo("cpu");
        assert!(cpu_log.contains("device cpu") && cpu_log.contains("dtype F32"), "{cpu_log}");
        let (log, gpu) = demo(device);
        assert!(log.contains("dtype BF16"), "{log}");
        assert_same_curve(&cpu, &gpu, &log);
        if device == "emulated-cuda" {
            assert!(log.contains("device emulated-cuda"), "{log}");
            let launches = log.lines().find(|l| l.starts_with("Emulated CUDA launches:")).unwrap_or_else(|| panic!("{log}"));
            for kernel in [
                "oxt_rms_norm_fwd_bf16", "oxt_rms_norm_bwd_bf16", "oxt_rope_bf16", "oxt_swiglu_fwd_bf16",
                "oxt_swiglu_bwd_bf16", "oxt_attn_fwd_bf16_d32", "oxt_attn_bwd_delta_bf16", "oxt_attn_bwd_bf16_d32",
                "oxt_ce_fwd_bf16", "oxt_ce_bwd_bf16", "oxt_dropout_mask_f32", "oxt_grad_sumsq_f32",
                "oxt_clip_scale_f32", "oxt_adamw_f32",
            ] {
                assert!(launches.contains(&format!("{kernel}=")), "{kernel} did not run: {launches}");
            }
        }
    }
}

on_every_gpu_path! {
    fn qlora_job_matches_cpu(device) {
        let job = job();
        let (_, cpu) = losses(&job, "cpu", &["--method", "qlora"]);
        let (log, gpu) = losses(&job, device, &["--method", "qlora"]);
        assert!(log.contains("dtype BF16"), "{log}");
        assert_same_curve(&cpu, &gpu, &log);
        if device == "emulated-cuda" {
            assert!(log.contains("oxt_nf4_dequant_bf16="), "the NF4 kernel did not run:\n{log}");
        }
    }
}

on_every_gpu_path! {
    /// T5 (LoRA, then QLoRA) on the GPU path: the kernels whose math T5 shares run (RMSNorm — T5's
    /// layer norm is RMS without mean or bias —, chunked cross-entropy, dropout, clipping, AdamW, NF4),
    /// attention, cross-attention and gated-GELU as composed candle ops; losses are the CPU path's.
    fn t5_job_matches_cpu(device) {
        let job = Job::new_t5(JOB, &rows(12));
        for method in ["lora", "qlora"] {
            let (_, cpu) = losses(&job, "cpu", &["--method", method]);
            let (log, gpu) = losses(&job, device, &["--method", method]);
            assert!(log.contains("dtype BF16") && log.contains("t5 family"), "{log}");
            assert_same_curve(&cpu, &gpu, &log);
            if device == "emulated-cuda" {
                let launches = log.lines().find(|l| l.starts_with("Emulated CUDA launches:")).unwrap_or_else(|| panic!("{log}"));
                let mut expected = vec![
                    "oxt_rms_norm_fwd_bf16", "oxt_rms_norm_bwd_bf16", "oxt_ce_fwd_bf16", "oxt_ce_bwd_bf16",
                    "oxt_dropout_mask_f32", "oxt_grad_sumsq_f32", "oxt_clip_scale_f32", "oxt_adamw_f32",
                ];
                if method == "qlora" {
                    expected.push("oxt_nf4_dequant_bf16");
                }
                for kernel in expected {
                    assert!(launches.contains(&format!("{kernel}=")), "{method}: {kernel} did not run: {launches}");
                }
            }
        }
    }
}
