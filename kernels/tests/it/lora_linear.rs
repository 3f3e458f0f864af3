//! lora_delta: forward and gradients (x, A, B) vs composed candle autograd with the same dropout
//! mask, finite differences in f64 space (f32 op, so a loose check), and no gradient without tracking.

use crate::common::{assert_close, check_grads, Rng, BF16, F32_BWD, F32_FWD};
use candle_core::{DType, Device, Result, Tensor};
use kernels::lora_linear::{lora_delta, mask, Dropout};

/// The composed reference: s · ((x ⊙ m) Aᵀ) Bᵀ with candle autograd.
fn reference(x: &Tensor, a: &Tensor, b: &Tensor, scale: f64, dropout: Option<Dropout>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let x2 = x.flatten_to(candle_core::D::Minus2)?.to_dtype(DType::F32)?;
    let x2 = match dropout {
        Some(d) => x2.mul(&mask(x2.dims2()?, d, &Device::Cpu)?)?,
        None => x2,
    };
    let y = (x2.matmul(&a.t()?)?.matmul(&b.t()?)? * scale)?;
    let mut out = dims;
    let last = out.len() - 1;
    out[last] = b.dim(0)?;
    y.reshape(out)
}

#[test]
fn matches_composed_autograd() {
    let mut rng = Rng::new(3);
    for (xdt, fwd, bwd) in [(DType::F32, F32_FWD, F32_BWD), (DType::BF16, BF16, BF16)] {
        for dropout in [None, Some(Dropout { keep: 0.7, seed: 99 })] {
            let (inf, outf, r, scale) = (24, 10, 4, 2.0);
            let x = rng.tensor(&[2, 5, inf], 1.0, xdt);
            let a = rng.tensor(&[r, inf], 0.3, DType::F32);
            let b = rng.tensor(&[outf, r], 0.3, DType::F32);
            let what = format!("{xdt:?} dropout={dropout:?}");
            let got = lora_delta(&x, &a, &b, scale, dropout).unwrap();
            assert_eq!(got.dims(), [2, 5, outf]);
            assert_close(&what, &got, &reference(&x, &a, &b, scale, dropout).unwrap(), fwd);
            check_grads(
                &what,
                |t: &[Tensor]| lora_delta(&t[0], &t[1], &t[2], scale, dropout),
                |t: &[Tensor]| reference(&t[0], &t[1], &t[2], scale, dropout),
                &[x, a, b],
                &mut rng,
                bwd,
            );
        }
    }
}

#[test]
fn finite_differences_through_dropout() {
    // f32 op: central differences with a large step, checked loosely (the exact check is the
    // autograd comparison above; this one guards the reference itself).
    let mut rng = Rng::new(5);
    let d = Some(Dropout { keep: 0.8, seed: 7 });
    let x = rng.tensor(&[3, 8], 1.0, DType::F32);
    let a = rng.tensor(&[2, 8], 0.5, DType::F32);
    let b = rng.tensor(&[4, 2], 0.5, DType::F32);
    let r = rng.tensor(&[3, 4], 1.0, DType::F32);
    let loss = |x: &Tensor, a: &Tensor, b: &Tensor| -> f64 {
        (lora_delta(x, a, b, 1.5, d).unwrap() * &r).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64
    };
    let vars: Vec<candle_core::Var> = [&x, &a, &b].iter().map(|t| candle_core::Var::from_tensor(t).unwrap()).collect();
    let l = (lora_delta(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor(), 1.5, d).unwrap() * &r)
        .unwrap()
        .sum_all()
        .unwrap();
    let g = l.backward().unwrap();
    for (which, v) in vars.iter().enumerate() {
        let grad = g.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let base = v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for at in [0, base.len() / 2, base.len() - 1] {
            let shifted = |delta: f32| {
                let mut data = base.clone();
                data[at] += delta;
                let t = Tensor::from_vec(data, v.dims(), &Device::Cpu).unwrap();
                let mut ts = [x.clone(), a.clone(), b.clone()];
                ts[which] = t;
                loss(&ts[0], &ts[1], &ts[2])
            };
            let numeric = (shifted(1e-2) - shifted(-1e-2)) / 2e-2;
            let an = grad[at] as f64;
            assert!((numeric - an).abs() <= 2e-3 + 1e-2 * an.abs(), "input {which} coord {at}: {an} vs {numeric}");
        }
    }
}
