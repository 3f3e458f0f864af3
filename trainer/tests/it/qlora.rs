//! QLoRA: the NF4 codec against bitsandbytes 0.50.2 goldens (tests/fixtures/nf4), loading a
//! bitsandbytes-saved 4-bit checkpoint, quantise-while-loading, and a tiny training run.
//! Tolerances: single quantisation codes and absmax exact; double quant dequantised absmax within
//! 4 ulp-ish (1e-6 relative + 1e-7) because the offset is a mean whose f32 reduction order differs
//! from torch's; bnb checkpoint f32 logits vs bnb-dequantised golden 1e-4, bf16 compute vs bnb's
//! bf16 forward 0.15; quantise-while-loading vs the f32 model: max |Δlogit| ≤ 1.25 × bnb's own
//! NF4-vs-f32 error on the same weights + 0.05 (measured 1.35 vs bnb's 1.20: these tiny N(0, 0.1)
//! models amplify weight noise), and our NF4 of the bf16 weights dequantises to bnb's values
//! (≤ 1% of values one bf16 ulp apart, from the double-quant offset).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::common::{rows, text, Job};
use candle_core::{DType, Device, Tensor};
use trainer::model::{Decoder, ForwardCtx, LoadOptions, ModelConfig};
use trainer::quant::nf4::{self, Nf4Options, Nf4Weight};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn golden() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("nf4/nf4_golden.safetensors"), &Device::Cpu).unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap()
}

fn u8s(t: &Tensor) -> Vec<u8> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn code_table_and_dynamic_map_match_bnb() {
    let g = golden();
    assert_eq!(f32s(&g["nf4_code"]), nf4::NF4_CODE.to_vec());
    assert_eq!(f32s(&g["dynamic_map_signed"]), nf4::dynamic_map_signed().to_vec());
    for case in ["main", "tail", "nested", "special"] {
        assert_eq!(f32s(&g[&format!("{case}.dq.nested_quant_map")]), nf4::dynamic_map_signed().to_vec());
    }
}

#[test]
fn single_quant_codes_and_absmax_identical_to_bnb() {
    let g = golden();
    for case in ["main", "tail", "special"] {
        let w = f32s(&g[&format!("{case}.weight_f32")]);
        let (packed, absmax) = nf4::quantize(&w, 64);
        let want_packed = u8s(&g[&format!("{case}.packed")]);
        assert_eq!(packed.len(), want_packed.len(), "{case}");
        let differing: Vec<usize> = (0..packed.len()).filter(|&i| packed[i] != want_packed[i]).collect();
        assert!(differing.is_empty(), "{case}: packed bytes differ at {differing:?}");
        assert_eq!(absmax, f32s(&g[&format!("{case}.absmax")]), "{case}: absmax");
        let deq = nf4::dequantize(&packed, &absmax, w.len(), 64);
        assert_eq!(deq, f32s(&g[&format!("{case}.dequant_f32")]), "{case}: dequant");
    }
    // Odd element count: the pad nibble is 7 (the code of 0.0), as bnb's CPU backend writes it.
    let (p, _) = nf4::quantize(&f32s(&g["tail.weight_f32"]), 64);
    assert_eq!(p.last().copied().unwrap() & 15, 7);
}

#[test]
fn double_quant_matches_bnb() {
    let g = golden();
    let map = nf4::dynamic_map_signed();
    for case in ["main", "tail", "nested"] {
        let absmax = f32s(&g[&format!("{case}.absmax")]);
        let dq = nf4::double_quantize(&absmax);
        let want_offset = f32s(&g[&format!("{case}.dq.offset")])[0];
        assert!((dq.offset - want_offset).abs() <= 2.0 * f32::EPSILON * want_offset.abs(), "{case}: offset");
        let want_nested = f32s(&g[&format!("{case}.dq.nested_absmax")]);
        assert_eq!(dq.nested_absmax.len(), want_nested.len());
        for (a, b) in dq.nested_absmax.iter().zip(&want_nested) {
            assert!((a - b).abs() <= 4.0 * f32::EPSILON * b.abs(), "{case}: nested_absmax {a} vs {b}");
        }
        let want_q = u8s(&g[&format!("{case}.dq.absmax_q")]);
        let code_diffs = dq.q.iter().zip(&want_q).filter(|(a, b)| a != b).count();
        assert!(code_diffs <= 1, "{case}: {code_diffs} absmax codes differ");
        let ours = nf4::dequantize_absmax(&dq, &map);
        let want = f32s(&g[&format!("{case}.dq.absmax_dequant")]);
        for (a, b) in ours.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6 * b.abs() + 1e-7, "{case}: absmax dequant {a} vs {b}");
        }
    }
    // Whole-weight dequantisation with double quant (compact `nested` case has no dequant_f32).
    for case in ["main", "tail"] {
        let t = &g[&format!("{case}.weight_f32")];
        let (o, i) = t.dims2().unwrap();
        let nw = Nf4Weight::quantize(&f32s(t), [o, i], DType::F32, Nf4Options::default());
        let ours = nw.dequantize_f32();
        let want = f32s(&g[&format!("{case}.dq.dequant_f32")]);
        for (a, b) in ours.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6 * b.abs() + 1e-7, "{case}: double-quant dequant {a} vs {b}");
        }
        // The kernels-side view dequantises to the same values.
        let p = nw.to_packed(&Device::Cpu).unwrap();
        assert_eq!(f32s(&p.dequantize(DType::F32).unwrap()), ours);
    }
}

fn logits(m: &Decoder, ids: &Tensor) -> Tensor {
    let ids = ids.to_dtype(DType::U32).unwrap();
    let (b, t) = ids.dims2().unwrap();
    let pos = Tensor::arange(0u32, t as u32, &Device::Cpu).unwrap().unsqueeze(0).unwrap().repeat((b, 1)).unwrap();
    let h = m.hidden(&ids, &pos, None, &mut ForwardCtx::eval()).unwrap();
    m.logits(&h).unwrap()
}

#[test]
fn loads_bnb_4bit_checkpoint_and_matches_golden_logits() {
    let dir = fixtures().join("nf4/llama_nf4");
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let g = candle_core::safetensors::load(dir.join("golden.safetensors"), &Device::Cpu).unwrap();
    let m = Decoder::load(&dir, &cfg, DType::F32, &Device::Cpu, None).unwrap();
    assert!(m.is_quantized());
    let d = max_diff(&logits(&m, &g["input_ids"]), &g["logits_dequant_f32"]);
    assert!(d < 1e-4, "f32 compute vs bnb-dequantised golden: {d}");
    let m16 = Decoder::load(&dir, &cfg, DType::BF16, &Device::Cpu, None).unwrap();
    let d16 = max_diff(&logits(&m16, &g["input_ids"]), &g["logits_bnb_bf16"]);
    assert!(d16 < 0.15, "bf16 compute vs bnb's bf16 forward: {d16}");
}

#[test]
fn quantize_while_loading_matches_bnb_quantized_checkpoint_and_f32_model() {
    let dir = fixtures().join("parity/llama");
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let g = candle_core::safetensors::load(dir.join("golden.safetensors"), &Device::Cpu).unwrap();
    // Calibration: bnb's own NF4 model of these weights (f32 compute) vs the f32 model.
    let bnb_g =
        candle_core::safetensors::load(fixtures().join("nf4/llama_nf4/golden.safetensors"), &Device::Cpu).unwrap();
    let bnb_err = max_diff(&bnb_g["logits_dequant_f32"], &g["logits"]);
    for double_quant in [true, false] {
        let opts = LoadOptions { quantize_nf4: Some(Nf4Options { double_quant, ..Nf4Options::default() }) };
        let m = Decoder::load_with(&dir, &cfg, DType::F32, &Device::Cpu, None, &opts).unwrap();
        assert!(m.is_quantized());
        let d = max_diff(&logits(&m, &g["input_ids"]), &g["logits"]);
        let to_bnb = max_diff(&logits(&m, &g["input_ids"]), &bnb_g["logits_dequant_f32"]);
        println!("NF4 (double_quant={double_quant}) vs f32 logits: max |Δ| {d}; bnb's NF4 vs f32 {bnb_err}; ours vs bnb's {to_bnb}");
        assert!(d > 0.0 && d < 1.25 * bnb_err + 0.05, "NF4 quantisation error {d} vs bnb's {bnb_err}");
        // Not asserted: bnb's model also has bf16 embeddings, norms and lm_head and quantised the
        // bf16-rounded weights; the weight-by-weight check below pins the quantisation itself.
        let _ = to_bnb;
    }
    // bnb quantised the bf16 copy of the same weights: our quantise-then-dequantise of the
    // bf16-rounded parity weights should give the same model as the bnb checkpoint. Check via the
    // merged (dequantised) state dict of a quantised parity model against bnb's one, weight by weight.
    let bnb_dir = fixtures().join("nf4/llama_nf4");
    let bnb = Decoder::load(
        &bnb_dir,
        &ModelConfig::from_file(&bnb_dir.join("config.json")).unwrap(),
        DType::F32,
        &Device::Cpu,
        None,
    )
    .unwrap()
    .merged_state_dict(DType::F32)
    .unwrap();
    let st = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    for (name, want) in bnb.iter().filter(|(n, _)| n.contains("_proj")) {
        let w16 = st[name].to_dtype(DType::BF16).unwrap();
        let nw = Nf4Weight::quantize_tensor(&w16, Nf4Options::default()).unwrap();
        let ours = nw.dequantize_to_tensor(DType::F32, &Device::Cpu).unwrap();
        // Same codes; the double-quant offset (a mean, 1–2 ulp off torch's) can flip the bf16
        // rounding of a few values by one bf16 ulp (≤ 2e-3 for |w| < 0.5).
        let d = max_diff(&ours, want);
        let n_diff = f32s(&ours).iter().zip(f32s(want)).filter(|(a, b)| *a != b).count();
        assert!(d <= 2e-3 && n_diff * 100 <= ours.elem_count(), "{name}: max {d}, {n_diff} values differ from bnb's");
    }
}

#[test]
fn qlora_training_run_loss_falls_and_merges_bf16() {
    let hp = [
        ("method", "qlora"),
        ("max_steps", "12"),
        ("lora_r", "8"),
        ("learning_rate", "5e-3"),
        ("per_device_batch_size", "8"),
        ("max_seq_length", "32"),
        ("logging_steps", "1"),
        ("lora_dropout", "0"),
        ("merge_adapter", "true"),
    ];
    let job = Job::new(&hp, &rows(48));
    let out = job.run(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("QLoRA: decoder projections are NF4"), "{}", text(&out));
    let s = job.summary();
    assert_eq!(s["method"], "qlora");
    let losses: Vec<f64> =
        s["history"].as_array().unwrap().iter().filter_map(|r| r.get("loss").and_then(|l| l.as_f64())).collect();
    assert!(losses.len() >= 10, "{losses:?}");
    let first = losses[..3].iter().sum::<f64>() / 3.0;
    let last = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(last < first * 0.95, "QLoRA loss did not fall: {losses:?}");
    // A normal PEFT adapter naming the unquantised base.
    let model = job.root().join("model");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("adapter_config.json")).unwrap()).unwrap();
    assert!(cfg["base_model_name_or_path"].as_str().unwrap().ends_with("model"), "{cfg}");
    assert!(model.join("adapter_model.safetensors").exists());
    // Merged: dequantised, bf16, no quantization_config.
    let merged = model.join("merged");
    let mcfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(merged.join("config.json")).unwrap()).unwrap();
    assert_eq!(mcfg["torch_dtype"], "bfloat16");
    assert!(mcfg.get("quantization_config").is_none());
    let t = candle_core::safetensors::load(merged.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(t["model.layers.0.self_attn.q_proj.weight"].dtype(), DType::BF16);
}

#[test]
fn load_in_4bit_switch_and_fp4_refusal() {
    let hp = [("load-in-4bit", "true"), ("max_steps", "1"), ("lora_r", "4"), ("max_seq_length", "32")];
    let job = Job::new(&hp, &rows(8));
    let out = job.run(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(job.summary()["method"], "qlora");
    let job = Job::new(&[("method", "qlora"), ("bnb_4bit_quant_type", "fp4")], &rows(8));
    let out = job.run(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("fp4 is not implemented"), "{}", text(&out));
}
