use crate::common::reference;
use crate::common::{assert_close, check_grads, finite_difference_check, Rng, Tol, BF16, F32_BWD, F32_FWD};
use candle_core::{DType, Device, Tensor, Var};
use kernels::attention::causal_attention;

/// Row 0: three packed samples; row 1: left padding (id 0) then two samples.
fn segments(tk: usize) -> Tensor {
    assert_eq!(tk, 7);
    Tensor::new(&[[1u32, 1, 1, 2, 2, 2, 3], [0, 0, 1, 1, 1, 2, 2]], &Device::Cpu).unwrap()
}

#[test]
fn matches_reference() {
    let mut rng = Rng::new(41);
    let d = 6;
    for (dtype, fwd, bwd) in [(DType::F32, F32_FWD, F32_BWD), (DType::BF16, BF16, BF16)] {
        for (hq, hkv) in [(2, 2), (4, 2), (4, 1)] {
            for tq in [7, 5, 1] {
                for with_seg in [false, true] {
                    let tk = 7;
                    let q = rng.tensor(&[2, hq, tq, d], 1.0, dtype);
                    let k = rng.tensor(&[2, hkv, tk, d], 1.0, dtype);
                    let v = rng.tensor(&[2, hkv, tk, d], 1.0, dtype);
                    let seg = with_seg.then(|| segments(tk));
                    let scale = 1.0 / (d as f64).sqrt();
                    let what = format!("{dtype:?} hq={hq} hkv={hkv} tq={tq} tk={tk} seg={with_seg}");
                    let y = causal_attention(&q, &k, &v, seg.as_ref(), scale).unwrap();
                    assert_eq!(y.dims(), [2, hq, tq, d]);
                    assert_eq!(y.dtype(), dtype);
                    let want = reference::causal_attention(&q, &k, &v, seg.as_ref(), scale).unwrap();
                    assert_close(&what, &y, &want, fwd);
                    let seg2 = seg.clone();
                    check_grads(
                        &what,
                        |x: &[Tensor]| causal_attention(&x[0], &x[1], &x[2], seg.as_ref(), scale),
                        |x: &[Tensor]| reference::causal_attention(&x[0], &x[1], &x[2], seg2.as_ref(), scale),
                        &[q, k, v],
                        &mut rng,
                        bwd,
                    );
                }
            }
        }
    }
}

#[test]
fn finite_differences() {
    let mut rng = Rng::new(42);
    let seg = segments(7);
    for (hq, hkv, tq) in [(4, 2, 7), (2, 1, 3), (1, 1, 7)] {
        let q = rng.tensor(&[2, hq, tq, 5], 1.0, DType::F64);
        let k = rng.tensor(&[2, hkv, 7, 5], 1.0, DType::F64);
        let v = rng.tensor(&[2, hkv, 7, 5], 1.0, DType::F64);
        let what = format!("attention hq={hq} hkv={hkv} tq={tq}");
        let op = |x: &[Tensor]| causal_attention(&x[0], &x[1], &x[2], Some(&seg), 0.4);
        finite_difference_check(&what, op, &[q, k, v], &mut rng, 8);
    }
}

/// Each packed sample sees exactly what it would see alone (no cross-sample attention).
#[test]
fn packed_sample_equals_sample_alone() {
    let mut rng = Rng::new(43);
    let (h, t, d) = (2, 7, 4);
    let seg = Tensor::new(&[[1u32, 1, 1, 2, 2, 2, 2]], &Device::Cpu).unwrap();
    let q = rng.tensor(&[1, h, t, d], 1.0, DType::F32);
    let k = rng.tensor(&[1, h, t, d], 1.0, DType::F32);
    let v = rng.tensor(&[1, h, t, d], 1.0, DType::F32);
    let packed = causal_attention(&q, &k, &v, Some(&seg), 0.5).unwrap();
    for (start, len) in [(0, 3), (3, 4)] {
        let cut = |x: &Tensor| x.narrow(2, start, len).unwrap().contiguous().unwrap();
        let alone = causal_attention(&cut(&q), &cut(&k), &cut(&v), None, 0.5).unwrap();
        assert_close(&format!("sample at {start}"), &cut(&packed), &alone, F32_FWD);
    }
}

/// A KV-cache decode step (tq = 1 against all keys) equals the last row of the full pass, and a
/// left-padded row gives the unpadded sample's outputs.
#[test]
fn decode_step_and_left_padding() {
    let mut rng = Rng::new(44);
    let (hq, hkv, t, d) = (4, 2, 6, 4);
    let q = rng.tensor(&[1, hq, t, d], 1.0, DType::F32);
    let k = rng.tensor(&[1, hkv, t, d], 1.0, DType::F32);
    let v = rng.tensor(&[1, hkv, t, d], 1.0, DType::F32);
    let full = causal_attention(&q, &k, &v, None, 0.5).unwrap();
    let step = causal_attention(&q.narrow(2, t - 1, 1).unwrap(), &k, &v, None, 0.5).unwrap();
    assert_close("decode step", &step, &full.narrow(2, t - 1, 1).unwrap().contiguous().unwrap(), F32_FWD);

    // Left-pad by 2 with junk keys marked id 0.
    let mut pad = |x: &Tensor| {
        let junk = rng.tensor(&[1, x.dim(1).unwrap(), 2, d], 5.0, DType::F32);
        Tensor::cat(&[&junk, x], 2).unwrap()
    };
    let (qp, kp, vp) = (pad(&q), pad(&k), pad(&v));
    let seg = Tensor::new(&[[0u32, 0, 1, 1, 1, 1, 1, 1]], &Device::Cpu).unwrap();
    let padded = causal_attention(&qp, &kp, &vp, Some(&seg), 0.5).unwrap();
    assert_close("left padded", &padded.narrow(2, 2, t).unwrap().contiguous().unwrap(), &full, F32_FWD);
}

/// GQA: hkv = 1 serving two query heads equals hkv = 2 with the kv head duplicated.
#[test]
fn gqa_equals_repeated_kv() {
    let mut rng = Rng::new(45);
    let q = rng.tensor(&[2, 2, 5, 4], 1.0, DType::F32);
    let k = rng.tensor(&[2, 1, 5, 4], 1.0, DType::F32);
    let v = rng.tensor(&[2, 1, 5, 4], 1.0, DType::F32);
    let rep = |x: &Tensor| Tensor::cat(&[x, x], 1).unwrap();
    let gqa = causal_attention(&q, &k, &v, None, 0.5).unwrap();
    let mha = causal_attention(&q, &rep(&k), &rep(&v), None, 0.5).unwrap();
    assert_close("gqa", &gqa, &mha, F32_FWD);
}

/// No NaN or inf: all-padding rows, single-key rows and huge logits, forward and backward.
#[test]
fn never_nan() {
    let mut rng = Rng::new(46);
    let q = Var::from_tensor(&rng.tensor(&[2, 2, 7, 4], 300.0, DType::F32)).unwrap();
    let k = Var::from_tensor(&rng.tensor(&[2, 2, 7, 4], 300.0, DType::F32)).unwrap();
    let v = Var::from_tensor(&rng.tensor(&[2, 2, 7, 4], 1.0, DType::F32)).unwrap();
    let seg = Tensor::new(&[[0u32, 0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 2, 3, 3]], &Device::Cpu).unwrap();
    for dtype in [DType::F32, DType::BF16] {
        let cast = |x: &Var| x.to_dtype(dtype).unwrap();
        let y = causal_attention(&cast(&q), &cast(&k), &cast(&v), Some(&seg), 1.0).unwrap();
        let grads = y.to_dtype(DType::F32).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(crate::common::to_f64(&y).iter().all(|x| x.is_finite()), "{dtype:?} forward");
        for x in [&q, &k, &v] {
            assert!(crate::common::to_f64(grads.get(x).unwrap()).iter().all(|g| g.is_finite()), "{dtype:?} grad");
        }
    }
    // A query whose only visible key is itself copies that key's value.
    let y = causal_attention(&q, &k, &v, Some(&seg), 1.0).unwrap();
    let lone = |x: &Tensor| x.narrow(0, 1, 1).unwrap().narrow(2, 3, 1).unwrap().contiguous().unwrap();
    assert_close("single key", &lone(&y), &lone(&v), Tol { rtol: 1e-6, atol_of_max: 1e-6 });
}

#[test]
fn rejects_bad_shapes() {
    let mut rng = Rng::new(47);
    let mut t = |dims: &[usize]| rng.tensor(dims, 1.0, DType::F32);
    let (q, k, v) = (t(&[1, 3, 4, 4]), t(&[1, 2, 4, 4]), t(&[1, 2, 4, 4]));
    assert!(causal_attention(&q, &k, &v, None, 1.0).is_err()); // 3 % 2 != 0
    let q = t(&[1, 2, 5, 4]);
    assert!(causal_attention(&q, &k, &v, None, 1.0).is_err()); // tq > tk
    let q = t(&[1, 2, 4, 4]);
    let seg = Tensor::new(&[[1u32, 1, 1]], &Device::Cpu).unwrap();
    assert!(causal_attention(&q, &k, &v, Some(&seg), 1.0).is_err());
}

/// Sequences longer than the CPU path's 64-row query blocks: several blocks per head, a KV-cache
/// offset (tq < tk), packed segments, and one kv head in all (the backward's single-task path).
#[test]
fn long_sequences_span_query_blocks() {
    let mut rng = Rng::new(47);
    let d = 8;
    for (b, hq, hkv, tq, tk) in [(2, 4, 2, 150, 160), (1, 2, 1, 130, 130)] {
        let ids: Vec<u32> = (0..b * tk).map(|i| ((i % tk) / 37) as u32).collect();
        let seg = Tensor::from_vec(ids, (b, tk), &Device::Cpu).unwrap();
        for seg in [None, Some(seg)] {
            let q = rng.tensor(&[b, hq, tq, d], 1.0, DType::F32);
            let k = rng.tensor(&[b, hkv, tk, d], 1.0, DType::F32);
            let v = rng.tensor(&[b, hkv, tk, d], 1.0, DType::F32);
            let scale = 1.0 / (d as f64).sqrt();
            let what = format!("b={b} hq={hq} hkv={hkv} tq={tq} tk={tk} seg={}", seg.is_some());
            let y = causal_attention(&q, &k, &v, seg.as_ref(), scale).unwrap();
            assert_close(&what, &y, &reference::causal_attention(&q, &k, &v, seg.as_ref(), scale).unwrap(), F32_FWD);
            let seg2 = seg.clone();
            check_grads(
                &what,
                |x: &[Tensor]| causal_attention(&x[0], &x[1], &x[2], seg.as_ref(), scale),
                |x: &[Tensor]| reference::causal_attention(&x[0], &x[1], &x[2], seg2.as_ref(), scale),
                &[q, k, v],
                &mut rng,
                F32_BWD,
            );
        }
    }
}
