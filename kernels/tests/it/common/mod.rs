//! Shared test helpers: a seedable PRNG, closeness checks and a finite-difference gradient check.
#![allow(dead_code)]

pub mod device;
pub mod nf4;
pub mod reference;

use candle_core::{DType, Device, Result, Tensor, Var};

/// splitmix64: tiny, deterministic, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Normal(0, scale²) tensor of the given dtype on the CPU.
    pub fn tensor(&mut self, dims: &[usize], scale: f64, dtype: DType) -> Tensor {
        let n = dims.iter().product();
        let data: Vec<f64> = (0..n).map(|_| self.normal() * scale).collect();
        Tensor::from_vec(data, dims, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
    }

    pub fn var(&mut self, dims: &[usize], scale: f64, dtype: DType) -> Var {
        Var::from_tensor(&self.tensor(dims, scale, dtype)).unwrap()
    }

    pub fn u32s(&mut self, n: usize, below: usize) -> Vec<u32> {
        (0..n).map(|_| self.below(below) as u32).collect()
    }
}

/// Elementwise |got − want| ≤ atol + rtol·|want|, with atol relative to max|want|.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub rtol: f64,
    pub atol_of_max: f64,
}

/// f32 forward: 1e-5 relative, 1e-5 of the largest magnitude absolute.
pub const F32_FWD: Tol = Tol { rtol: 1e-5, atol_of_max: 1e-5 };
/// f32 gradients: different but equivalent formulas (closed form vs. autograd chain).
pub const F32_BWD: Tol = Tol { rtol: 1e-4, atol_of_max: 1e-5 };
/// bf16: 8 mantissa bits, 2e-2 relative, 2e-2 of the largest magnitude absolute.
pub const BF16: Tol = Tol { rtol: 2e-2, atol_of_max: 2e-2 };

pub fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: Tol) {
    assert_close_scaled(what, got, want, tol, 0.0)
}

/// As [`assert_close`], with the absolute tolerance taken of max(max|want|, `min_scale`).
pub fn assert_close_scaled(what: &str, got: &Tensor, want: &Tensor, tol: Tol, min_scale: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    let (g, w) = (to_f64(got), to_f64(want));
    let max = w.iter().fold(min_scale, |m, x| m.max(x.abs()));
    let atol = tol.atol_of_max * max.max(1e-30);
    let mut worst = (0usize, 0f64);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!(a.is_finite(), "{what}: non-finite value {a} at {i}");
        let excess = (a - b).abs() - (atol + tol.rtol * b.abs());
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    let i = worst.0;
    assert!(worst.1 <= 0.0, "{what}: element {i}: got {} want {} (tol {tol:?}, max|want| {max})", g[i], w[i]);
}

/// Σ out ⊙ r as a scalar loss (r fixed random weights so every output element matters).
pub fn weighted_loss(out: &Tensor, r: &Tensor) -> Tensor {
    (out.to_dtype(DType::F64).unwrap() * r).unwrap().sum_all().unwrap()
}

/// Gradients of Σ out ⊙ r for each input, through `op`, one per input (zeros if absent).
pub fn grads<F>(op: F, inputs: &[Var], r: &Tensor) -> Vec<Tensor>
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    let xs: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let loss = weighted_loss(&op(&xs).unwrap(), r);
    let store = loss.backward().unwrap();
    inputs.iter().map(|v| store.get(v).cloned().unwrap_or_else(|| v.zeros_like().unwrap())).collect()
}

/// Compares `op`'s input gradients with `reference`'s (both via candle autograd).
pub fn check_grads<F, G>(what: &str, op: F, reference: G, inputs: &[Tensor], rng: &mut Rng, tol: Tol)
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
    G: Fn(&[Tensor]) -> Result<Tensor>,
{
    let out = reference(inputs).unwrap();
    let r = rng.tensor(out.dims(), 1.0, DType::F64);
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let got = grads(op, &vars, &r);
    let want = grads(reference, &vars, &r);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_close(&format!("{what}: grad of input {i}"), g, w, tol);
    }
}

/// Central-difference check, in f64, of the gradient of Σ op(inputs) ⊙ r at `samples` random
/// coordinates of every input.
pub fn finite_difference_check<F>(what: &str, op: F, inputs: &[Tensor], rng: &mut Rng, samples: usize)
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    const H: f64 = 1e-5;
    let out = op(inputs).unwrap();
    let r = rng.tensor(out.dims(), 1.0, DType::F64);
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let analytic = grads(&op, &vars, &r);
    let loss_at = |xs: &[Tensor]| weighted_loss(&op(xs).unwrap(), &r).to_scalar::<f64>().unwrap();
    for (which, input) in inputs.iter().enumerate() {
        assert_eq!(input.dtype(), DType::F64, "{what}: finite differences need f64 inputs");
        let base = to_f64(input);
        let grad = to_f64(&analytic[which]);
        for _ in 0..samples {
            let at = rng.below(base.len());
            let shifted = |delta: f64| {
                let mut data = base.clone();
                data[at] += delta;
                let mut xs = inputs.to_vec();
                xs[which] = Tensor::from_vec(data, input.dims(), input.device()).unwrap();
                loss_at(&xs)
            };
            let numeric = (shifted(H) - shifted(-H)) / (2.0 * H);
            let err = (numeric - grad[at]).abs();
            assert!(
                err <= 1e-6 + 1e-5 * numeric.abs(),
                "{what}: input {which} coord {at}: analytic {} vs numeric {numeric}",
                grad[at]
            );
        }
    }
}
