use crate::common::reference;
use crate::common::{assert_close, check_grads, finite_difference_check, Rng, BF16, F32_BWD, F32_FWD};
use candle_core::{DType, Device, Tensor};
use kernels::cross_entropy::linear_log_probs;

fn targets(rng: &mut Rng, n: usize, v: usize) -> Tensor {
    Tensor::new(rng.u32s(n, v).as_slice(), &Device::Cpu).unwrap()
}

/// chunk_rows smaller than, equal to and larger than n (and one that does not divide n).
#[test]
fn matches_reference_for_all_chunkings() {
    let mut rng = Rng::new(51);
    let (n, d, v) = (7, 6, 11);
    for (dtype, fwd, bwd) in [(DType::F32, F32_FWD, F32_BWD), (DType::BF16, BF16, BF16)] {
        for chunk in [1, 3, 7, 10] {
            let h = rng.tensor(&[n, d], 1.0, dtype);
            let w = rng.tensor(&[v, d], 1.0, dtype);
            let t = targets(&mut rng, n, v);
            let what = format!("{dtype:?} chunk={chunk}");
            let got = linear_log_probs(&h, &w, &t, chunk).unwrap();
            assert_eq!(got.dtype(), DType::F32);
            assert_close(&what, &got, &reference::linear_log_probs(&h, &w, &t, chunk).unwrap(), fwd);
            let (w2, t2) = (w.clone(), t.clone());
            check_grads(
                &what,
                |x: &[Tensor]| linear_log_probs(&x[0], &w, &t, chunk),
                |x: &[Tensor]| reference::linear_log_probs(&x[0], &w2, &t2, chunk),
                &[h],
                &mut rng,
                bwd,
            );
        }
    }
}

#[test]
fn finite_differences() {
    let mut rng = Rng::new(52);
    let (n, d, v) = (7, 5, 9);
    let w = rng.tensor(&[v, d], 1.0, DType::F64);
    let t = targets(&mut rng, n, v);
    for chunk in [2, 7, 16] {
        let h = rng.tensor(&[n, d], 1.0, DType::F64);
        let op = |x: &[Tensor]| linear_log_probs(&x[0], &w, &t, chunk);
        finite_difference_check(&format!("linear_log_probs chunk={chunk}"), op, &[h], &mut rng, 8);
    }
}

/// h in f32 with a bf16 head: h is cast to the head's dtype and its gradient comes back in f32.
#[test]
fn mixed_dtypes() {
    let mut rng = Rng::new(53);
    let h = rng.var(&[4, 6], 1.0, DType::F32);
    let w = rng.tensor(&[10, 6], 1.0, DType::BF16);
    let t = targets(&mut rng, 4, 10);
    let got = linear_log_probs(&h, &w, &t, 3).unwrap();
    assert_close("logp", &got, &reference::linear_log_probs(&h, &w, &t, 3).unwrap(), BF16);
    let grads = got.sum_all().unwrap().backward().unwrap();
    assert_eq!(grads.get(&h).unwrap().dtype(), DType::F32);
}

/// log-probs are ≤ 0, exp sums to 1 over all targets, and large logits stay finite.
#[test]
fn normalised_and_stable() {
    let mut rng = Rng::new(54);
    let (d, v) = (4, 6);
    let h = rng.tensor(&[1, d], 100.0, DType::F32).broadcast_as((v, d)).unwrap().contiguous().unwrap();
    let w = rng.tensor(&[v, d], 10.0, DType::F32);
    let all = Tensor::arange(0u32, v as u32, &Device::Cpu).unwrap();
    let logp = crate::common::to_f64(&linear_log_probs(&h, &w, &all, 4).unwrap());
    assert!(logp.iter().all(|x| x.is_finite() && *x <= 1e-6));
    let total: f64 = logp.iter().map(|x| x.exp()).sum();
    assert!((total - 1.0).abs() < 1e-5, "Σ p = {total}");
}

/// The head is frozen: no gradient for w and nothing head-sized in the store.
#[test]
fn head_gets_no_gradient() {
    let mut rng = Rng::new(55);
    let (n, d, v) = (5, 4, 9);
    let h = rng.var(&[n, d], 1.0, DType::F32);
    let w = rng.var(&[v, d], 1.0, DType::F32);
    let t = targets(&mut rng, n, v);
    let grads = linear_log_probs(&h, &w, &t, 2).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&h).is_some());
    assert!(grads.get(&w).is_none());
    let head_sized = grads.get_ids().filter_map(|id| grads.get_id(*id)).filter(|g| g.elem_count() == v * d).count();
    assert_eq!(head_sized, 0);
}

#[test]
fn rejects_bad_inputs() {
    let mut rng = Rng::new(56);
    let h = rng.tensor(&[4, 6], 1.0, DType::F32);
    let w = rng.tensor(&[10, 6], 1.0, DType::F32);
    let t = targets(&mut rng, 4, 10);
    assert!(linear_log_probs(&h, &w, &t, 0).is_err());
    assert!(linear_log_probs(&h, &w, &targets(&mut rng, 3, 10), 2).is_err());
    assert!(linear_log_probs(&h, &rng.tensor(&[10, 5], 1.0, DType::F32), &t, 2).is_err());
}
