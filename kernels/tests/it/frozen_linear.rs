use crate::common::reference;
use crate::common::{assert_close, check_grads, finite_difference_check, Rng, BF16, F32_BWD, F32_FWD};
use candle_core::{DType, Result, Tensor};
use kernels::frozen_linear::frozen_linear;

/// Forward and x-gradient against the reference for several ranks, with and without bias.
/// Only x is differentiated: w and b are frozen.
#[test]
fn matches_reference_f32_and_bf16() {
    let mut rng = Rng::new(1);
    for (dtype, fwd, bwd) in [(DType::F32, F32_FWD, F32_BWD), (DType::BF16, BF16, BF16)] {
        for x_dims in [vec![7, 6], vec![2, 5, 6], vec![2, 3, 1, 6]] {
            for with_bias in [false, true] {
                let x = rng.tensor(&x_dims, 1.0, dtype);
                let w = rng.tensor(&[5, 6], 0.5, dtype);
                let b = with_bias.then(|| rng.tensor(&[5], 1.0, dtype));
                let what = format!("{dtype:?} x{x_dims:?} bias={with_bias}");
                let y = frozen_linear(&x, &w, b.as_ref()).unwrap();
                assert_eq!(y.dtype(), dtype);
                assert_close(&what, &y, &reference::frozen_linear(&x, &w, b.as_ref()).unwrap(), fwd);
                check_grads(
                    &what,
                    |v: &[Tensor]| frozen_linear(&v[0], &w, b.as_ref()),
                    |v: &[Tensor]| reference::frozen_linear(&v[0], &w, b.as_ref()),
                    &[x],
                    &mut rng,
                    bwd,
                );
            }
        }
    }
}

#[test]
fn casts_x_to_weight_dtype() {
    let mut rng = Rng::new(2);
    let x = rng.var(&[3, 4], 1.0, DType::F32);
    let w = rng.tensor(&[2, 4], 1.0, DType::BF16);
    let y = frozen_linear(&x, &w, None).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    let grads = y.to_dtype(DType::F32).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = grads.get(&x).expect("x gradient");
    assert_eq!(dx.dtype(), DType::F32);
    // d Σy / dx = column sums of w, for every row.
    let want = w.to_dtype(DType::F32).unwrap().sum_keepdim(0).unwrap().broadcast_as((3, 4)).unwrap();
    assert_close("dx", dx, &want.contiguous().unwrap(), BF16);
}

#[test]
fn finite_differences() {
    let mut rng = Rng::new(3);
    let w = rng.tensor(&[5, 6], 0.7, DType::F64);
    let b = rng.tensor(&[5], 1.0, DType::F64);
    let x = rng.tensor(&[2, 3, 6], 1.0, DType::F64);
    finite_difference_check("frozen_linear", |xs| frozen_linear(&xs[0], &w, Some(&b)), &[x], &mut rng, 6);
}

/// The memory guarantee: backward through frozen_linear stores no weight-sized tensor at all,
/// while candle's matmul (the reference) does — so this test would catch a regression.
#[test]
fn backward_allocates_no_weight_gradient() {
    let mut rng = Rng::new(4);
    let (out_f, in_f) = (8, 6);
    let x = rng.var(&[2, 3, in_f], 1.0, DType::F32);
    let w = rng.tensor(&[out_f, in_f], 1.0, DType::F32);
    let b = rng.tensor(&[out_f], 1.0, DType::F32);
    let weight_sized = |grads: &candle_core::backprop::GradStore| {
        grads
            .get_ids()
            .filter_map(|id| grads.get_id(*id))
            .filter(|g| g.elem_count() == out_f * in_f || g.dims() == [in_f, out_f])
            .count()
    };

    let grads = frozen_linear(&x, &w, Some(&b)).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&x).is_some());
    assert!(grads.get(&w).is_none() && grads.get(&b).is_none());
    assert_eq!(weight_sized(&grads), 0, "frozen_linear stored a weight-sized gradient");

    let grads = reference::frozen_linear(&x, &w, Some(&b)).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(weight_sized(&grads) > 0, "the reference matmul should store a weight gradient");
}

/// Two projections of the same input (q and k of one hidden state) accumulate into one gradient.
#[test]
fn gradients_accumulate_across_uses() {
    let mut rng = Rng::new(5);
    let x = rng.var(&[4, 6], 1.0, DType::F32);
    let (w1, w2) = (rng.tensor(&[3, 6], 1.0, DType::F32), rng.tensor(&[5, 6], 1.0, DType::F32));
    let loss = |f: fn(&Tensor, &Tensor, Option<&Tensor>) -> Result<Tensor>| {
        let a = f(&x, &w1, None).unwrap().sum_all().unwrap();
        let b = f(&x, &w2, None).unwrap().sqr().unwrap().sum_all().unwrap();
        (a + b).unwrap().backward().unwrap().get(&x).unwrap().clone()
    };
    assert_close("dx", &loss(frozen_linear), &loss(reference::frozen_linear), F32_BWD);
}

#[test]
fn untracked_input_builds_no_graph() {
    let mut rng = Rng::new(6);
    let x = rng.tensor(&[4, 6], 1.0, DType::F32);
    let w = rng.tensor(&[3, 6], 1.0, DType::F32);
    let y = frozen_linear(&x, &w, None).unwrap();
    assert!(!y.track_op());
    assert_close("y", &y, &reference::frozen_linear(&x, &w, None).unwrap(), F32_FWD);
}

#[test]
fn rejects_mismatched_shapes() {
    let mut rng = Rng::new(7);
    let w = rng.tensor(&[3, 6], 1.0, DType::F32);
    assert!(frozen_linear(&rng.tensor(&[4, 5], 1.0, DType::F32), &w, None).is_err());
    assert!(frozen_linear(&rng.tensor(&[6], 1.0, DType::F32), &w, None).is_err());
    let bad_bias = rng.tensor(&[4], 1.0, DType::F32);
    assert!(frozen_linear(&rng.tensor(&[4, 6], 1.0, DType::F32), &w, Some(&bad_bias)).is_err());
}
