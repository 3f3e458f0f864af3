use crate::common::reference;
use crate::common::{assert_close, check_grads, finite_difference_check, Rng, BF16, F32_BWD, F32_FWD};
use candle_core::{DType, Device, Tensor, Var};
use kernels::swiglu::swiglu;

#[test]
fn matches_reference() {
    let mut rng = Rng::new(21);
    for (dtype, fwd, bwd) in [(DType::F32, F32_FWD, F32_BWD), (DType::BF16, BF16, BF16)] {
        for dims in [vec![7, 6], vec![2, 5, 11]] {
            let gate = rng.tensor(&dims, 2.0, dtype);
            let up = rng.tensor(&dims, 1.0, dtype);
            let what = format!("{dtype:?} {dims:?}");
            let y = swiglu(&gate, &up).unwrap();
            assert_eq!(y.dtype(), dtype);
            assert_close(&what, &y, &reference::swiglu(&gate, &up).unwrap(), fwd);
            check_grads(
                &what,
                |v: &[Tensor]| swiglu(&v[0], &v[1]),
                |v: &[Tensor]| reference::swiglu(&v[0], &v[1]),
                &[gate, up],
                &mut rng,
                bwd,
            );
        }
    }
}

#[test]
fn finite_differences() {
    let mut rng = Rng::new(22);
    let gate = rng.tensor(&[3, 5], 2.0, DType::F64);
    let up = rng.tensor(&[3, 5], 1.0, DType::F64);
    finite_difference_check("swiglu", |v| swiglu(&v[0], &v[1]), &[gate, up], &mut rng, 6);
}

/// Only the tracked input gets a gradient.
#[test]
fn gradient_only_where_tracked() {
    let mut rng = Rng::new(23);
    let gate = rng.var(&[2, 4], 1.0, DType::F32);
    let up = rng.tensor(&[2, 4], 1.0, DType::F32);
    let grads = swiglu(&gate, &up).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&gate).is_some());
    assert!(grads.get(&up).is_none());
}

/// Saturated gates: silu(−200) = 0 and silu(200) = 200 with finite gradients.
#[test]
fn extreme_gates_are_finite() {
    let gate = Var::new(&[-200f32, -30.0, 0.0, 30.0, 200.0], &Device::Cpu).unwrap();
    let up = Var::new(&[1f32; 5], &Device::Cpu).unwrap();
    let y = swiglu(&gate, &up).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    let want = Tensor::new(&[0f32, -2.8072e-12, 0.0, 30.0, 200.0], &Device::Cpu).unwrap();
    assert_close("y", &y, &want, F32_FWD);
    for v in [&gate, &up] {
        assert!(crate::common::to_f64(grads.get(v).unwrap()).iter().all(|g| g.is_finite()));
    }
}

#[test]
fn rejects_mismatch() {
    let mut rng = Rng::new(24);
    let gate = rng.tensor(&[2, 4], 1.0, DType::F32);
    assert!(swiglu(&gate, &rng.tensor(&[2, 5], 1.0, DType::F32)).is_err());
    assert!(swiglu(&gate, &rng.tensor(&[2, 4], 1.0, DType::BF16)).is_err());
}
