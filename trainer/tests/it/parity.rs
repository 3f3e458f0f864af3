//! Logits parity with Hugging Face transformers and PEFT on committed golden
//! fixtures (made by tests/fixtures/scripts/*.py; versions in tests/fixtures/README.md).
//! Tolerances: f32 forward 1e-4 absolute on logits of magnitude ≤ ~4; bf16 weights 0.25.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use trainer::lora::LoraConfig;
use trainer::model::{Decoder, ForwardCtx, ModelConfig};
use trainer::rng::Rng;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn golden(dir: &Path, file: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join(file), &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

/// Logits [b, t, vocab] with one causal segment per row, or the given positions and segments.
fn logits(m: &Decoder, ids: &Tensor, positions: Option<&Tensor>, segments: Option<&Tensor>) -> Tensor {
    let ids = ids.to_dtype(DType::U32).unwrap();
    let (b, t) = ids.dims2().unwrap();
    let default_pos =
        Tensor::arange(0u32, t as u32, &Device::Cpu).unwrap().unsqueeze(0).unwrap().repeat((b, 1)).unwrap();
    let pos = positions.map(|p| p.to_dtype(DType::U32).unwrap()).unwrap_or(default_pos);
    let h = m.hidden(&ids, &pos, segments, &mut ForwardCtx::eval()).unwrap();
    m.logits(&h).unwrap()
}

fn check_case(case: &str) {
    let dir = fixtures().join("parity").join(case);
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let g = golden(&dir, "golden.safetensors");
    let inv: Vec<f32> = g["inv_freq"].to_vec1().unwrap();
    let ours = cfg.inv_freq().unwrap();
    for (a, b) in inv.iter().zip(&ours) {
        assert!((a - b).abs() <= 1e-6 * a.abs().max(1e-3), "{case}: inv_freq {a} vs {b}");
    }
    let m = Decoder::load(&dir, &cfg, DType::F32, &Device::Cpu, None).unwrap();
    let d = max_diff(&logits(&m, &g["input_ids"], None, None), &g["logits"]);
    assert!(d < 1e-4, "{case}: f32 logits differ from transformers by {d}");

    // Packing: two samples in one row, positions restart, no attention across them.
    let pos = &g["packed_position_ids"];
    let p: Vec<i64> = pos.flatten_all().unwrap().to_vec1().unwrap();
    let mut seg = vec![];
    let mut s = 0u32;
    for (i, &x) in p.iter().enumerate() {
        if i == 0 || x == 0 {
            s += 1;
        }
        seg.push(s);
    }
    assert_eq!(s, 2, "{case}: fixture has two packed samples");
    let seg = Tensor::from_vec(seg, (1, p.len()), &Device::Cpu).unwrap();
    let d = max_diff(&logits(&m, &g["packed_input_ids"], Some(pos), Some(&seg)), &g["packed_logits"]);
    assert!(d < 1e-4, "{case}: packed logits differ from separate runs by {d}");

    let m16 = Decoder::load(&dir, &cfg, DType::BF16, &Device::Cpu, None).unwrap();
    let d = max_diff(&logits(&m16, &g["input_ids"], None, None), &g["logits"]);
    assert!(d < 0.25, "{case}: bf16 logits differ from transformers' f32 by {d}");
}

#[test]
fn llama_matches_transformers() {
    check_case("llama");
}

#[test]
fn llama32_rope_scaling_and_tied_embeddings_match_transformers() {
    check_case("llama32");
    // The transformers v5 `rope_parameters` form of the same config gives the same frequencies.
    let dir = fixtures().join("parity/llama32");
    let v4 = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let v5 = ModelConfig::from_file(&dir.join("config_rope_parameters.json")).unwrap();
    assert_eq!(v4.inv_freq().unwrap(), v5.inv_freq().unwrap());
    assert!(v4.tie_word_embeddings);
}

#[test]
fn qwen2_qkv_bias_matches_transformers() {
    check_case("qwen2");
}

#[test]
fn mistral_sharded_gqa_matches_transformers() {
    check_case("mistral");
}

/// LoraConfig for a PEFT adapter directory (PEFT may list full module paths).
fn peft_lora(dir: &Path) -> LoraConfig {
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    let mut targets: Vec<String> = c["target_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().rsplit('.').next().unwrap().to_string())
        .collect();
    targets.sort();
    targets.dedup();
    LoraConfig {
        r: c["r"].as_u64().unwrap() as usize,
        alpha: c["lora_alpha"].as_f64().unwrap(),
        dropout: 0.0,
        use_rslora: c["use_rslora"].as_bool().unwrap_or(false),
        targets,
    }
}

#[test]
fn peft_written_adapter_gives_peft_logits() {
    let base = fixtures().join("parity/llama");
    let adapter = fixtures().join("peft/peft_made_adapter");
    let cfg = ModelConfig::from_file(&base.join("config.json")).unwrap();
    let m =
        Decoder::load(&base, &cfg, DType::F32, &Device::Cpu, Some((&peft_lora(&adapter), &mut Rng::new(0)))).unwrap();
    m.load_adapter_tensors(&adapter.join("adapter_model.safetensors")).unwrap();
    let g = golden(&fixtures().join("peft"), "peft_made_logits.safetensors");
    let d = max_diff(&logits(&m, &g["input_ids"], None, None), &g["logits"]);
    assert!(d < 1e-4, "adapter logits differ from PEFT's by {d}");
    assert!(max_diff(&g["logits"], &g["base_logits"]) > 1e-2, "the adapter changes the logits");
}

/// The adapter the Rust trainer wrote (tests/fixtures/peft/rust_adapter, made by
/// `cargo run -p trainer --example make_peft_fixture`) loads in PEFT and gives the logits PEFT computed
/// (tests/fixtures/scripts/peft_logits.py) — through our LoRA forward and through our merged model.
#[test]
fn rust_written_adapter_matches_peft_and_merged_forward() {
    let base = fixtures().join("parity/llama");
    let adapter = fixtures().join("peft/rust_adapter");
    let cfg = ModelConfig::from_file(&base.join("config.json")).unwrap();
    let m =
        Decoder::load(&base, &cfg, DType::F32, &Device::Cpu, Some((&peft_lora(&adapter), &mut Rng::new(0)))).unwrap();
    m.load_adapter_tensors(&adapter.join("adapter_model.safetensors")).unwrap();
    let g = golden(&fixtures().join("peft"), "rust_adapter_peft_logits.safetensors");
    let d = max_diff(&logits(&m, &g["input_ids"], None, None), &g["logits"]);
    assert!(d < 1e-4, "Rust LoRA forward differs from PEFT by {d}");

    let merged = tempfile::tempdir().unwrap();
    let m = trainer::model::Model::Causal(m);
    trainer::output::write_merged(merged.path(), &m, &base).unwrap();
    let mcfg = ModelConfig::from_file(&merged.path().join("config.json")).unwrap();
    let mm = Decoder::load(merged.path(), &mcfg, DType::F32, &Device::Cpu, None).unwrap();
    let d = max_diff(&logits(&mm, &g["input_ids"], None, None), &g["merged_logits"]);
    assert!(d < 1e-4, "Rust merged model differs from PEFT's merge_and_unload by {d}");

    // The committed adapter is what the current writer produces from the same tensors.
    let out = tempfile::tempdir().unwrap();
    trainer::output::write_adapter(out.path(), &m, &peft_lora(&adapter), "tests/fixtures/parity/llama").unwrap();
    let a = std::fs::read(out.path().join("adapter_model.safetensors")).unwrap();
    let b = std::fs::read(adapter.join("adapter_model.safetensors")).unwrap();
    assert!(a == b, "adapter file format changed; regenerate the fixture (see tests/fixtures/README.md)");
}
