//! Every CUDA kernel against its CPU reference, on a real GPU (feature `cuda`).
//!
//! Each case draws fresh random inputs, runs the op on the CPU (the reference path) and on CUDA
//! (the fused kernels) with every kernel output poisoned with NaN before the launch, then compares
//! forward values and input gradients of Σ out ⊙ r (r random). Any NaN fails. Tolerances per
//! dtype: bf16 outputs 2e-2 (relative and of max |ref|; bf16 has 8 mantissa bits and the kernels
//! sum in a different order); f32 optimizer state 1e-5; NF4 dequantisation bit-exact.
//! These tests need a GPU and fail without one: they are built with
//! `cargo nextest archive --features cuda` and run on the GPU machine by
//! `kernels/scripts/gpu-tests.sh`.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use common::{assert_close, grads, Rng, Tol, BF16};
use kernels::adamw::{self, AdamWConfig};
use kernels::attention::causal_attention;
use kernels::cross_entropy::linear_log_probs;
use kernels::lora_linear::{lora_delta, Dropout};
use kernels::nf4_linear::{nf4_linear, DEFAULT_CHUNK_ELEMS};
use kernels::{rms_norm::rms_norm, rope, swiglu::swiglu};

fn gpu() -> Device {
    kernels::cuda::set_poison_outputs(true);
    Device::new_cuda(0)
        .expect("these tests need a CUDA GPU (run them on the GPU machine: kernels/scripts/gpu-tests.sh)")
}

/// Forward and input gradients of `op` on CPU and GPU; `inputs` are CPU tensors (trainable ones).
fn gpu_vs_cpu<F>(what: &str, op: F, inputs: &[Tensor], rng: &mut Rng, fwd: Tol, bwd: Tol)
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    let dev = gpu();
    let want = op(inputs).unwrap();
    let r = rng.tensor(want.dims(), 1.0, DType::F64);
    let cpu_vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let gpu_inputs: Vec<Tensor> = inputs.iter().map(|t| t.to_device(&dev).unwrap()).collect();
    let gpu_vars: Vec<Var> = gpu_inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let got = op(&gpu_inputs).unwrap().to_device(&Device::Cpu).unwrap();
    assert_close(&format!("{what}: forward"), &got, &want, fwd);
    let want_g = grads(&op, &cpu_vars, &r);
    let got_g = grads(&op, &gpu_vars, &r.to_device(&dev).unwrap());
    for (i, (g, w)) in got_g.iter().zip(&want_g).enumerate() {
        assert_close(&format!("{what}: grad of input {i}"), &g.to_device(&Device::Cpu).unwrap(), w, bwd);
    }
}

#[test]
fn rms_norm_matches_cpu() {
    let mut rng = Rng::new(1);
    for (rows, d) in [(7, 64), (33, 4096), (5, 100), (1, 8)] {
        let x = rng.tensor(&[rows, d], 1.0, DType::BF16);
        let w = rng.tensor(&[d], 0.5, DType::BF16).to_device(&gpu()).unwrap();
        let wc = w.to_device(&Device::Cpu).unwrap();
        // The weight lives where the input does.
        let op = |x: &[Tensor]| match x[0].device() {
            Device::Cpu => rms_norm(&x[0], &wc, 1e-5),
            _ => rms_norm(&x[0], &w, 1e-5),
        };
        gpu_vs_cpu(&format!("rms_norm {rows}x{d}"), op, &[x], &mut rng, BF16, BF16);
    }
}

#[test]
fn rope_matches_cpu() {
    let mut rng = Rng::new(2);
    for (b, h, t, d, shared) in [(2, 4, 9, 64, false), (1, 8, 33, 128, true), (3, 2, 5, 32, false)] {
        let inv: Vec<f32> = (0..d / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / d as f32)).collect();
        let pos_b = if shared { 1 } else { b };
        let pos: Vec<u32> = (0..pos_b * t).map(|i| (i % t) as u32 * 3 + 1).collect();
        let pos = Tensor::from_vec(pos, (pos_b, t), &Device::Cpu).unwrap();
        let (cos, sin) = rope::rope_tables(&inv, &pos, DType::BF16).unwrap();
        let dev = gpu();
        let (gcos, gsin) = (cos.to_device(&dev).unwrap(), sin.to_device(&dev).unwrap());
        let x = rng.tensor(&[b, h, t, d], 1.0, DType::BF16);
        let op = |x: &[Tensor]| match x[0].device() {
            Device::Cpu => rope::rope(&x[0], &cos, &sin),
            _ => rope::rope(&x[0], &gcos, &gsin),
        };
        gpu_vs_cpu(&format!("rope {b}x{h}x{t}x{d}"), op, &[x], &mut rng, BF16, BF16);
    }
}

#[test]
fn swiglu_matches_cpu() {
    let mut rng = Rng::new(3);
    for n in [1usize, 255, 4099, 1 << 16] {
        let g = rng.tensor(&[n], 3.0, DType::BF16);
        let u = rng.tensor(&[n], 1.0, DType::BF16);
        gpu_vs_cpu(&format!("swiglu n={n}"), |x: &[Tensor]| swiglu(&x[0], &x[1]), &[g, u], &mut rng, BF16, BF16);
    }
}

#[test]
fn attention_matches_cpu() {
    let mut rng = Rng::new(4);
    for d in [64usize, 128] {
        for (hq, hkv) in [(4, 4), (8, 2), (4, 1)] {
            for (tq, tk) in [(1, 1), (17, 17), (130, 130), (3, 70)] {
                for packed in [false, true] {
                    let b = 2;
                    let seg = packed.then(|| {
                        // Three samples per row, of uneven lengths.
                        let ids: Vec<u32> = (0..b * tk).map(|i| 1 + ((i % tk) * 3 / tk) as u32).collect();
                        Tensor::from_vec(ids, (b, tk), &Device::Cpu).unwrap()
                    });
                    let dev = gpu();
                    let gseg = seg.as_ref().map(|s| s.to_device(&dev).unwrap());
                    let q = rng.tensor(&[b, hq, tq, d], 1.0, DType::BF16);
                    let k = rng.tensor(&[b, hkv, tk, d], 1.0, DType::BF16);
                    let v = rng.tensor(&[b, hkv, tk, d], 1.0, DType::BF16);
                    let scale = 1.0 / (d as f64).sqrt();
                    let op = |x: &[Tensor]| {
                        let s = if x[0].device().is_cpu() { seg.as_ref() } else { gseg.as_ref() };
                        causal_attention(&x[0], &x[1], &x[2], s, scale)
                    };
                    let what = format!("attention d={d} hq={hq} hkv={hkv} tq={tq} tk={tk} packed={packed}");
                    gpu_vs_cpu(&what, op, &[q, k, v], &mut rng, BF16, BF16);
                }
            }
        }
    }
}

#[test]
fn cross_entropy_matches_cpu() {
    let mut rng = Rng::new(5);
    for (n, d, v, chunk) in [(9, 64, 1000, 4), (70, 128, 32000, 64), (3, 32, 17, 1)] {
        let dev = gpu();
        let w = rng.tensor(&[v, d], 0.05, DType::BF16);
        let gw = w.to_device(&dev).unwrap();
        let t = Tensor::from_vec(rng.u32s(n, v), n, &Device::Cpu).unwrap();
        let gt = t.to_device(&dev).unwrap();
        let h = rng.tensor(&[n, d], 1.0, DType::BF16);
        let op = |x: &[Tensor]| match x[0].device() {
            Device::Cpu => linear_log_probs(&x[0], &w, &t, chunk),
            _ => linear_log_probs(&x[0], &gw, &gt, chunk),
        };
        gpu_vs_cpu(&format!("cross entropy n={n} v={v} chunk={chunk}"), op, &[h], &mut rng, BF16, BF16);
    }
}

#[test]
fn nf4_dequantisation_is_bit_exact_and_linear_matches_cpu() {
    let dev = gpu();
    let mut rng = Rng::new(6);
    for (out_f, in_f, double, store) in [
        (64, 128, false, DType::BF16),
        (33, 65, true, DType::BF16),
        (48, 96, true, DType::F16),
        (7, 9, false, DType::F32),
    ] {
        let w = common::nf4::weight(out_f, in_f, double, store, 11);
        let gw = w.to_device(&dev).unwrap();
        let what = format!("nf4 {out_f}x{in_f} double={double} store={store:?}");
        // Odd row ranges start mid-byte when in_f is odd.
        for (r0, r1) in [(0, out_f), (1, out_f.min(4)), (out_f / 2, out_f)] {
            let want = w.dequantize_rows(r0, r1, DType::BF16).unwrap();
            let got = gw.dequantize_rows(r0, r1, DType::BF16).unwrap().to_device(&Device::Cpu).unwrap();
            let (a, b) = (got.to_dtype(DType::F32).unwrap(), want.to_dtype(DType::F32).unwrap());
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(diff, 0.0, "{what}: rows {r0}..{r1} differ from the CPU dequantisation by up to {diff}");
        }
        let x = rng.tensor(&[5, in_f], 1.0, DType::BF16);
        let op = |x: &[Tensor]| match x[0].device() {
            Device::Cpu => nf4_linear(&x[0], &w, None, DType::BF16),
            _ => nf4_linear(&x[0], &gw, None, DType::BF16),
        };
        gpu_vs_cpu(&what, op, &[x], &mut rng, BF16, BF16);
    }
    assert!(DEFAULT_CHUNK_ELEMS > 0);
}

#[test]
fn fused_adamw_matches_cpu() {
    let dev = gpu();
    let mut rng = Rng::new(7);
    let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
    let shapes: [&[usize]; 4] = [&[16, 4096], &[4096, 16], &[3], &[1000, 7]];
    let init: Vec<Tensor> = shapes.iter().map(|s| rng.tensor(s, 0.1, DType::F32)).collect();
    // (max_norm, gradient scale): clipping active, inactive, and off.
    for (max_norm, gscale) in [(1.0, 1.0), (1e6, 1e-3), (0.0, 1.0)] {
        let mut states = vec![];
        for device in [Device::Cpu, dev.clone()] {
            let params: Vec<Var> =
                init.iter().map(|t| Var::from_tensor(&t.to_device(&device).unwrap()).unwrap()).collect();
            let mut m: Vec<Tensor> = params.iter().map(|p| p.zeros_like().unwrap()).collect();
            let mut v: Vec<Tensor> = params.iter().map(|p| p.zeros_like().unwrap()).collect();
            let mut norms = vec![];
            let mut grng = Rng::new(70);
            for t in 1..=3 {
                let g: Vec<Tensor> =
                    shapes.iter().map(|s| grng.tensor(s, gscale, DType::F32).to_device(&device).unwrap()).collect();
                let step = adamw::Step { params: &params, grads: &g, m: &mut m, v: &mut v, t, lr: 1e-3, max_norm };
                norms.push(adamw::step(&cfg, step).unwrap());
            }
            let cpu = |ts: Vec<Tensor>| ts.into_iter().map(|t| t.to_device(&Device::Cpu).unwrap()).collect::<Vec<_>>();
            states.push((cpu(params.iter().map(|p| p.as_tensor().clone()).collect()), cpu(m), cpu(v), norms));
        }
        let tol = Tol { rtol: 1e-5, atol_of_max: 1e-6 };
        let (want, got) = (&states[0], &states[1]);
        for (i, (n_want, n_got)) in want.3.iter().zip(&got.3).enumerate() {
            assert!((n_want - n_got).abs() <= 1e-5 * n_want.abs(), "step {i}: norm {n_got} vs {n_want}");
        }
        for i in 0..shapes.len() {
            let what = format!("adamw max_norm={max_norm} param {i}");
            assert_close(&format!("{what}: p"), &got.0[i], &want.0[i], tol);
            assert_close(&format!("{what}: m"), &got.1[i], &want.1[i], tol);
            assert_close(&format!("{what}: v"), &got.2[i], &want.2[i], tol);
        }
    }
}

#[test]
fn lora_delta_with_dropout_matches_cpu() {
    let mut rng = Rng::new(8);
    for (n, inf, outf, r) in [(7, 64, 48, 4), (300, 4096, 1024, 16)] {
        for dropout in [None, Some(Dropout { keep: 0.95, seed: 1234 })] {
            let x = rng.tensor(&[n, inf], 1.0, DType::BF16);
            let a = rng.tensor(&[r, inf], 0.05, DType::F32);
            let b = rng.tensor(&[outf, r], 0.05, DType::F32);
            let op = |t: &[Tensor]| lora_delta(&t[0], &t[1], &t[2], 2.0, dropout);
            // The mask is the same hash on both devices, so only rounding differs (f32 GEMMs).
            let tol = Tol { rtol: 1e-3, atol_of_max: 1e-4 };
            gpu_vs_cpu(&format!("lora n={n} in={inf} r={r} dropout={dropout:?}"), op, &[x, a, b], &mut rng, tol, BF16);
        }
    }
}
