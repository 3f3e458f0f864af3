//! The harness works end to end on the CPU: tiny architecture, real steps through the trainer's
//! loops, and every result field the report reads is present and sane. No timing is asserted.

use benches::{arch, run, BenchConfig, GrpoShape, Method};
use candle_core::{DType, Device};
use serde_json::Value;

fn config(method: Method) -> BenchConfig {
    BenchConfig {
        method,
        arch: arch("tiny").unwrap(),
        seq: 32,
        batch: 2,
        steps: 2,
        warmup: 1,
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        gradient_checkpointing: false,
        device: Device::Cpu,
        dtype: DType::F32,
        seed: 7,
        grpo: GrpoShape { prompts: 2, generations: 2, completion: 6, prompt_len: 5 },
    }
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("`{key}` missing or not a number in {v}"))
}

fn finite_losses(v: &Value, n: usize) {
    let losses = v["losses"].as_array().expect("losses");
    assert_eq!(losses.len(), n, "one loss per step (warm-up included)");
    assert!(losses.iter().all(|l| l.as_f64().is_some_and(f64::is_finite)), "{losses:?}");
}

#[test]
fn lora_and_qlora_report_throughput_flops_and_losses() {
    for method in [Method::Lora, Method::Qlora] {
        let v = run(&config(method)).unwrap();
        assert_eq!(v["impl"], "oxtune");
        assert_eq!(v["status"], "ok");
        assert_eq!(v["method"], method.name());
        assert_eq!(v["device"], "cpu");
        assert!(num(&v, "tokens_per_sec") > 0.0);
        assert_eq!(num(&v, "tokens_per_step"), 64.0);
        assert_eq!(v["step_times_s"].as_array().unwrap().len(), 2, "timed steps only");
        assert!(num(&v, "step_time_s") > 0.0);
        assert!(num(&v, "flops_per_token") > 0.0 && num(&v, "model_tflops_per_sec") > 0.0);
        assert!(num(&v, "trainable_params") > 0.0);
        finite_losses(&v, 3);
        assert!(v["peak_memory_bytes"].is_null(), "no memory readout on the CPU");
        assert_eq!(v["hyperparameters"]["method"], method.name());
    }
}

#[test]
fn grpo_reports_step_time_and_generation_rate() {
    let v = run(&config(Method::Grpo)).unwrap();
    assert_eq!(v["method"], "grpo");
    assert!(num(&v, "step_time_s") > 0.0);
    assert!(num(&v, "generation_tokens_per_sec") > 0.0);
    let len = num(&v, "completion_length_mean");
    assert!(len > 0.0 && len <= 6.0, "{len}");
    finite_losses(&v, 3);
}

#[test]
fn gemm_reports_a_rate() {
    let v = benches::gemm(&Device::Cpu, DType::F32, 64, 2).unwrap();
    assert!(num(&v, "tflops") > 0.0);
}
