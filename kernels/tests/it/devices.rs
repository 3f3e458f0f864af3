//! Every CUDA kernel against its CPU reference, on every device (`on_every_device!`): the host
//! emulation of CUDA always, a real GPU when there is one.
//!
//! Each case draws fresh random inputs, runs the op on the CPU (the reference path) and on the
//! device (the fused kernels, every output NaN-poisoned before the launch), then compares forward
//! values and input gradients of Σ out ⊙ r (r random). Any NaN fails. Tolerances per dtype (the
//! GPU's): bf16 outputs 2e-2 (relative and of max |ref|; bf16 has 8 mantissa bits and the kernels
//! sum in a different order); f32 optimizer state 1e-5; NF4 dequantisation bit-exact.
//! Shapes cover tails (sizes that are not multiples of the block or tile), GQA ratios, packed
//! sequences, KV-cache offsets and unaligned (scalar) paths, and stay small for the emulator.

use candle_core::{DType, Device, Result, Tensor, Var};
use kernels::adamw::{self, AdamWConfig};
use kernels::attention::causal_attention;
use kernels::cross_entropy::linear_log_probs;
use kernels::lora_linear::{lora_delta, Dropout};
use kernels::nf4_linear::nf4_linear;
use kernels::{rms_norm::rms_norm, rope, swiglu::swiglu};

use crate::common::device::TestDevice;
use crate::common::{assert_close, assert_close_scaled, grads, Rng, Tol, BF16};
use crate::on_every_device;

/// The absolute part of a gradient tolerance is taken of max(max|reference|, this): inputs and
/// upstream gradients are O(1), and a gradient that cancels exactly on the CPU (one key: dS = 0)
/// keeps bf16 rounding noise in the kernel (delta is computed from the bf16 output).
const GRAD_SCALE_FLOOR: f64 = 1e-3;

/// `t` on the device of `like` (weights captured by an op follow its input).
fn like(t: &Tensor, like: &Tensor) -> Tensor {
    t.to_device(like.device()).unwrap()
}

/// Forward and input gradients of `op` on `dev` against the CPU path; `inputs` are CPU tensors.
pub fn parity<F>(dev: &TestDevice, what: &str, op: F, inputs: &[Tensor], rng: &mut Rng, fwd: Tol, bwd: Tol)
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    let what = format!("{what} on {}", dev.name());
    let want = op(inputs).unwrap();
    let r = rng.tensor(want.dims(), 1.0, DType::F64);
    let cpu_vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let dev_inputs: Vec<Tensor> = inputs.iter().map(|t| dev.put(t)).collect();
    let dev_vars: Vec<Var> = dev_inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let got = dev.run(|| op(&dev_inputs)).unwrap().to_device(&Device::Cpu).unwrap();
    assert_close(&format!("{what}: forward"), &got, &want, fwd);
    let want_g = grads(&op, &cpu_vars, &r);
    let got_g = dev.run(|| grads(&op, &dev_vars, &dev.put(&r)));
    for (i, (g, w)) in got_g.iter().zip(&want_g).enumerate() {
        let g = g.to_device(&Device::Cpu).unwrap();
        assert_close_scaled(&format!("{what}: grad of input {i}"), &g, w, bwd, GRAD_SCALE_FLOOR);
    }
}

pub fn rms_norm_case(dev: &TestDevice, rng: &mut Rng, rows: usize, d: usize) {
    let x = rng.tensor(&[rows, d], 1.0, DType::BF16);
    let w = rng.tensor(&[d], 0.5, DType::BF16);
    let op = |x: &[Tensor]| rms_norm(&x[0], &like(&w, &x[0]), 1e-5);
    parity(dev, &format!("rms_norm {rows}x{d}"), op, &[x], rng, BF16, BF16);
}

pub fn rope_case(dev: &TestDevice, rng: &mut Rng, (b, h, t, d): (usize, usize, usize, usize), shared: bool) {
    let inv: Vec<f32> = (0..d / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / d as f32)).collect();
    let pos_b = if shared { 1 } else { b };
    let pos: Vec<u32> = (0..pos_b * t).map(|i| (i % t) as u32 * 3 + 1).collect();
    let pos = Tensor::from_vec(pos, (pos_b, t), &Device::Cpu).unwrap();
    let (cos, sin) = rope::rope_tables(&inv, &pos, DType::BF16).unwrap();
    let x = rng.tensor(&[b, h, t, d], 1.0, DType::BF16);
    let op = |x: &[Tensor]| rope::rope(&x[0], &like(&cos, &x[0]), &like(&sin, &x[0]));
    parity(dev, &format!("rope {b}x{h}x{t}x{d} shared={shared}"), op, &[x], rng, BF16, BF16);
}

pub fn swiglu_case(dev: &TestDevice, rng: &mut Rng, n: usize) {
    let g = rng.tensor(&[n], 3.0, DType::BF16);
    let u = rng.tensor(&[n], 1.0, DType::BF16);
    parity(dev, &format!("swiglu n={n}"), |x: &[Tensor]| swiglu(&x[0], &x[1]), &[g, u], rng, BF16, BF16);
}

pub struct AttnShape {
    pub b: usize,
    pub d: usize,
    pub hq: usize,
    pub hkv: usize,
    pub tq: usize,
    pub tk: usize,
    pub packed: bool,
}

pub fn attention_case(dev: &TestDevice, rng: &mut Rng, s: AttnShape) {
    let AttnShape { b, d, hq, hkv, tq, tk, packed } = s;
    // Three samples per row, of uneven lengths.
    let seg = packed.then(|| {
        let ids: Vec<u32> = (0..b * tk).map(|i| 1 + ((i % tk) * 3 / tk) as u32).collect();
        Tensor::from_vec(ids, (b, tk), &Device::Cpu).unwrap()
    });
    let q = rng.tensor(&[b, hq, tq, d], 1.0, DType::BF16);
    let k = rng.tensor(&[b, hkv, tk, d], 1.0, DType::BF16);
    let v = rng.tensor(&[b, hkv, tk, d], 1.0, DType::BF16);
    let scale = 1.0 / (d as f64).sqrt();
    let op = |x: &[Tensor]| {
        let s = seg.as_ref().map(|s| like(s, &x[0]));
        causal_attention(&x[0], &x[1], &x[2], s.as_ref(), scale)
    };
    let what = format!("attention b={b} d={d} hq={hq} hkv={hkv} tq={tq} tk={tk} packed={packed}");
    parity(dev, &what, op, &[q, k, v], rng, BF16, BF16);
}

pub fn cross_entropy_case(dev: &TestDevice, rng: &mut Rng, (n, d, v): (usize, usize, usize), chunk: usize) {
    let w = rng.tensor(&[v, d], 0.05, DType::BF16);
    let t = Tensor::from_vec(rng.u32s(n, v), n, &Device::Cpu).unwrap();
    let h = rng.tensor(&[n, d], 1.0, DType::BF16);
    let op = |x: &[Tensor]| linear_log_probs(&x[0], &like(&w, &x[0]), &like(&t, &x[0]), chunk);
    parity(dev, &format!("cross entropy n={n} d={d} v={v} chunk={chunk}"), op, &[h], rng, BF16, BF16);
}

pub fn nf4_case(dev: &TestDevice, rng: &mut Rng, (out_f, in_f): (usize, usize), double: bool, store: DType) {
    let w = crate::common::nf4::weight(out_f, in_f, double, store, 11);
    let gw = w.to_device(&dev.device()).unwrap();
    let what = format!("nf4 {out_f}x{in_f} double={double} store={store:?} on {}", dev.name());
    // Odd row ranges start mid-byte when in_f is odd.
    for (r0, r1) in [(0, out_f), (1, out_f.min(4)), (out_f / 2, out_f)] {
        let want = w.dequantize_rows(r0, r1, DType::BF16).unwrap();
        let got = dev.run(|| gw.dequantize_rows(r0, r1, DType::BF16)).unwrap().to_device(&Device::Cpu).unwrap();
        let (a, b) = (got.to_dtype(DType::F32).unwrap(), want.to_dtype(DType::F32).unwrap());
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0, "{what}: rows {r0}..{r1} differ from the CPU dequantisation by up to {diff}");
    }
    let x = rng.tensor(&[5, in_f], 1.0, DType::BF16);
    let op = |x: &[Tensor]| match x[0].device() {
        Device::Cpu if !kernels::launch::emulating() => nf4_linear(&x[0], &w, None, DType::BF16),
        _ => nf4_linear(&x[0], &gw, None, DType::BF16),
    };
    parity(dev, &what, op, &[x], rng, BF16, BF16);
}

pub fn adamw_case(dev: &TestDevice, rng: &mut Rng, shapes: &[&[usize]], max_norm: f64, gscale: f64) {
    let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
    let init: Vec<Tensor> = shapes.iter().map(|s| rng.tensor(s, 0.1, DType::F32)).collect();
    let mut states = vec![];
    for on_dev in [false, true] {
        let device = if on_dev { dev.device() } else { Device::Cpu };
        let params: Vec<Var> = init.iter().map(|t| Var::from_tensor(&t.to_device(&device).unwrap()).unwrap()).collect();
        let mut m: Vec<Tensor> = params.iter().map(|p| p.zeros_like().unwrap()).collect();
        let mut v: Vec<Tensor> = params.iter().map(|p| p.zeros_like().unwrap()).collect();
        let mut norms = vec![];
        let mut grng = Rng::new(70);
        for t in 1..=3 {
            let g: Vec<Tensor> =
                shapes.iter().map(|s| grng.tensor(s, gscale, DType::F32).to_device(&device).unwrap()).collect();
            let step = adamw::Step { params: &params, grads: &g, m: &mut m, v: &mut v, t, lr: 1e-3, max_norm };
            let norm = if on_dev { dev.run(|| adamw::step(&cfg, step)) } else { adamw::step(&cfg, step) };
            norms.push(norm.unwrap());
        }
        let cpu = |ts: Vec<Tensor>| ts.into_iter().map(|t| t.to_device(&Device::Cpu).unwrap()).collect::<Vec<_>>();
        states.push((cpu(params.iter().map(|p| p.as_tensor().clone()).collect()), cpu(m), cpu(v), norms));
    }
    let tol = Tol { rtol: 1e-5, atol_of_max: 1e-6 };
    let (want, got) = (&states[0], &states[1]);
    for (i, (n_want, n_got)) in want.3.iter().zip(&got.3).enumerate() {
        assert!((n_want - n_got).abs() <= 1e-5 * n_want.abs(), "step {i}: norm {n_got} vs {n_want} on {}", dev.name());
    }
    for i in 0..shapes.len() {
        let what = format!("adamw max_norm={max_norm} param {i} on {}", dev.name());
        assert_close(&format!("{what}: p"), &got.0[i], &want.0[i], tol);
        assert_close(&format!("{what}: m"), &got.1[i], &want.1[i], tol);
        assert_close(&format!("{what}: v"), &got.2[i], &want.2[i], tol);
    }
}

pub fn lora_case(
    dev: &TestDevice,
    rng: &mut Rng,
    (n, inf, outf, r): (usize, usize, usize, usize),
    dropout: Option<Dropout>,
) {
    let x = rng.tensor(&[n, inf], 1.0, DType::BF16);
    let a = rng.tensor(&[r, inf], 0.05, DType::F32);
    let b = rng.tensor(&[outf, r], 0.05, DType::F32);
    let op = |t: &[Tensor]| lora_delta(&t[0], &t[1], &t[2], 2.0, dropout);
    // The mask is the same hash on both devices, so only rounding differs (f32 GEMMs).
    let tol = Tol { rtol: 1e-3, atol_of_max: 1e-4 };
    parity(dev, &format!("lora n={n} in={inf} r={r} dropout={dropout:?}"), op, &[x, a, b], rng, tol, BF16);
}

on_every_device! {
    fn rms_norm_matches_cpu(dev) {
        let mut rng = Rng::new(1);
        // Vector path (d % 8 == 0, several strides per thread), scalar tail path, one tiny row.
        for (rows, d) in [(7, 64), (3, 4096), (5, 100), (1, 8)] {
            rms_norm_case(dev, &mut rng, rows, d);
        }
    }
}

on_every_device! {
    fn rope_matches_cpu(dev) {
        let mut rng = Rng::new(2);
        for (shape, shared) in [((2, 4, 9, 64), false), ((1, 8, 33, 128), true), ((3, 2, 5, 32), false)] {
            rope_case(dev, &mut rng, shape, shared);
        }
    }
}

on_every_device! {
    fn swiglu_matches_cpu(dev) {
        let mut rng = Rng::new(3);
        for n in [1usize, 255, 4099, 1 << 16] {
            swiglu_case(dev, &mut rng, n);
        }
    }
}

on_every_device! {
    fn attention_matches_cpu(dev) {
        let mut rng = Rng::new(4);
        for d in [32usize, 64, 128] {
            for (hq, hkv) in [(4, 4), (8, 2), (4, 1)] {
                // Single row, tails of the 64/32-row tiles, more than one tile, a KV-cache offset.
                for (tq, tk) in [(1, 1), (17, 17), (130, 130), (3, 70)] {
                    for packed in [false, true] {
                        attention_case(dev, &mut rng, AttnShape { b: 2, d, hq, hkv, tq, tk, packed });
                    }
                }
            }
        }
    }
}

on_every_device! {
    fn cross_entropy_matches_cpu(dev) {
        let mut rng = Rng::new(5);
        for (shape, chunk) in [((9, 64, 1000), 4), ((70, 128, 32000), 64), ((3, 32, 17), 1)] {
            cross_entropy_case(dev, &mut rng, shape, chunk);
        }
    }
}

on_every_device! {
    fn nf4_dequantisation_is_bit_exact_and_linear_matches_cpu(dev) {
        let mut rng = Rng::new(6);
        for (shape, double, store) in
            [((64, 128), false, DType::BF16), ((33, 65), true, DType::BF16), ((48, 96), true, DType::F16), ((7, 9), false, DType::F32)]
        {
            nf4_case(dev, &mut rng, shape, double, store);
        }
    }
}

on_every_device! {
    fn fused_adamw_matches_cpu(dev) {
        let mut rng = Rng::new(7);
        let shapes: [&[usize]; 4] = [&[16, 4096], &[4096, 16], &[3], &[1000, 7]];
        // (max_norm, gradient scale): clipping active, inactive, and off.
        for (max_norm, gscale) in [(1.0, 1.0), (1e6, 1e-3), (0.0, 1.0)] {
            adamw_case(dev, &mut rng, &shapes, max_norm, gscale);
        }
    }
}

on_every_device! {
    fn lora_delta_with_dropout_matches_cpu(dev) {
        let mut rng = Rng::new(8);
        for shape in [(7, 64, 48, 4), (300, 4096, 1024, 16)] {
            for dropout in [None, Some(Dropout { keep: 0.95, seed: 1234 })] {
                lora_case(dev, &mut rng, shape, dropout);
            }
        }
    }
}
