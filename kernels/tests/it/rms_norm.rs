use crate::common::reference;
use crate::common::{assert_close, check_grads, finite_difference_check, Rng, BF16, F32_BWD, F32_FWD};
use candle_core::{DType, Tensor};
use kernels::rms_norm::rms_norm;

const EPS: f64 = 1e-5;

#[test]
fn matches_reference() {
    let mut rng = Rng::new(11);
    for (dtype, fwd, bwd) in [(DType::F32, F32_FWD, F32_BWD), (DType::BF16, BF16, BF16)] {
        for dims in [vec![7, 6], vec![2, 5, 6], vec![1, 3, 16]] {
            let d = dims[dims.len() - 1];
            let x = rng.tensor(&dims, 2.0, dtype);
            let w = (rng.tensor(&[d], 0.3, DType::F32) + 1.0).unwrap().to_dtype(dtype).unwrap();
            let what = format!("{dtype:?} {dims:?}");
            let y = rms_norm(&x, &w, EPS).unwrap();
            assert_eq!(y.dtype(), dtype);
            assert_close(&what, &y, &reference::rms_norm(&x, &w, EPS).unwrap(), fwd);
            let w2 = w.clone();
            check_grads(
                &what,
                |v: &[Tensor]| rms_norm(&v[0], &w, EPS),
                |v: &[Tensor]| reference::rms_norm(&v[0], &w2, EPS),
                &[x],
                &mut rng,
                bwd,
            );
        }
    }
}

#[test]
fn finite_differences() {
    let mut rng = Rng::new(12);
    let w = (rng.tensor(&[6], 0.3, DType::F64) + 1.0).unwrap();
    let x = rng.tensor(&[2, 5, 6], 1.0, DType::F64);
    finite_difference_check("rms_norm", |xs| rms_norm(&xs[0], &w, EPS), &[x], &mut rng, 8);
}

/// The weight is frozen: no gradient for it even when it is a Var.
#[test]
fn weight_gets_no_gradient() {
    let mut rng = Rng::new(13);
    let x = rng.var(&[3, 6], 1.0, DType::F32);
    let w = rng.var(&[6], 1.0, DType::F32);
    let grads = rms_norm(&x, &w, EPS).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&x).is_some());
    assert!(grads.get(&w).is_none());
}

/// A zero row stays finite (eps keeps 1/rms bounded) in both directions.
#[test]
fn zero_rows_are_finite() {
    let x = candle_core::Var::zeros((2, 6), DType::F32, &candle_core::Device::Cpu).unwrap();
    let w = Tensor::ones(6, DType::F32, &candle_core::Device::Cpu).unwrap();
    let y = rms_norm(&x, &w, EPS).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert_close("y", &y, &x.zeros_like().unwrap(), F32_FWD);
    let dx = crate::common::to_f64(grads.get(&x).unwrap());
    assert!(dx.iter().all(|v| v.is_finite()));
}

#[test]
fn rejects_wrong_weight() {
    let mut rng = Rng::new(14);
    let x = rng.tensor(&[3, 6], 1.0, DType::F32);
    assert!(rms_norm(&x, &rng.tensor(&[5], 1.0, DType::F32), EPS).is_err());
}
