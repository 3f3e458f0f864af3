//! nf4_linear: forward/backward vs a dequantise-then-matmul reference, finite differences in f64,
//! the row-block loop, double-quantised absmax, nibble order, and no weight/bias gradient.

use crate::common::nf4::{weight, Lcg, CODE};
use candle_core::{DType, Device, Tensor, Var};
use kernels::nf4_linear::{nf4_linear, nf4_linear_chunked, Nf4Absmax, Nf4Packed};

/// Host-side dequantisation straight from the definition.
fn dequant_host(w: &Nf4Packed) -> Vec<f32> {
    let p = w.packed.to_vec1::<u8>().unwrap();
    let n = w.shape.0 * w.shape.1;
    let absmax: Vec<f32> = match &w.absmax {
        Nf4Absmax::F32(a) => a.to_vec1().unwrap(),
        Nf4Absmax::Double { q, nested, map, offset, nested_blocksize } => {
            let (q, nested, map) =
                (q.to_vec1::<u8>().unwrap(), nested.to_vec1::<f32>().unwrap(), map.to_vec1::<f32>().unwrap());
            q.iter().enumerate().map(|(i, &c)| map[c as usize] * nested[i / nested_blocksize] + offset).collect()
        }
    };
    let v: Vec<f32> = (0..n)
        .map(|e| {
            let nib = if e % 2 == 0 { p[e / 2] >> 4 } else { p[e / 2] & 15 };
            CODE[nib as usize] * absmax[e / w.blocksize]
        })
        .collect();
    // Rounded through the storage dtype (RNE), as bitsandbytes returns it.
    Tensor::new(v, &Device::Cpu)
        .unwrap()
        .to_dtype(w.store_dtype)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn randn(shape: &[usize], seed: u64, dt: DType) -> Tensor {
    let mut r = Lcg(seed);
    let n: usize = shape.iter().product();
    Tensor::new((0..n).map(|_| r.unit() * 2.0 - 1.0).collect::<Vec<f32>>(), &Device::Cpu)
        .unwrap()
        .reshape(shape)
        .unwrap()
        .to_dtype(dt)
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn nibble_order_high_first() {
    let d = Device::Cpu;
    let w = Nf4Packed {
        packed: Tensor::new(&[0x0Fu8, 0x7A], &d).unwrap(),
        absmax: Nf4Absmax::F32(Tensor::new(&[2.0f32], &d).unwrap()),
        code: Tensor::new(&CODE, &d).unwrap(),
        blocksize: 64,
        shape: (1, 3),
        store_dtype: DType::F32,
    };
    let v = w.dequantize(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(v, vec![-2.0, 2.0, 0.0]);
}

#[test]
fn dequantize_matches_definition() {
    for (double, store, (o, i)) in [
        (false, DType::F32, (5, 37)),
        (true, DType::F32, (9, 71)),
        (true, DType::BF16, (13, 29)),
        (false, DType::BF16, (3, 64)),
    ] {
        let w = weight(o, i, double, store, 11 + o as u64);
        let want = dequant_host(&w);
        let got = w.dequantize(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got, want, "double={double} store={store:?} shape {o}x{i}");
        // Row ranges starting at odd elements.
        for r0 in 0..o {
            let rows = w.dequantize_rows(r0, (r0 + 2).min(o), DType::F32).unwrap();
            let flat = rows.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(flat, want[r0 * i..(r0 + 2).min(o) * i].to_vec());
        }
    }
}

#[test]
fn forward_and_backward_match_dequantise_then_matmul() {
    for (double, (o, i), chunk) in [(false, (24, 37), 1 << 20), (true, (24, 37), 37 * 5), (true, (31, 50), 50)] {
        let w = weight(o, i, double, DType::F32, 5 + i as u64);
        let wd = w.dequantize(DType::F32).unwrap();
        let x = Var::from_tensor(&randn(&[2, 3, i], 1, DType::F32)).unwrap();
        let b = randn(&[o], 2, DType::F32);
        let y = nf4_linear_chunked(x.as_tensor(), &w, Some(&b), DType::F32, chunk).unwrap();
        let want = x.as_tensor().broadcast_matmul(&wd.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
        assert_eq!(y.dims(), &[2, 3, o]);
        assert!(max_diff(&y, &want) < 1e-5, "forward {}", max_diff(&y, &want));
        let r = randn(&[2, 3, o], 3, DType::F32);
        let grads = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = grads.get(x.as_tensor()).expect("input gradient");
        let want_dx = r.broadcast_matmul(&wd).unwrap();
        assert!(max_diff(dx, &want_dx) < 1e-5, "dx {}", max_diff(dx, &want_dx));
    }
}

#[test]
fn finite_differences_f64() {
    let w = weight(6, 10, true, DType::F32, 77);
    let x0 = randn(&[3, 10], 4, DType::F64);
    let r = randn(&[3, 6], 5, DType::F64);
    let loss = |x: &Tensor| -> f64 {
        (nf4_linear_chunked(x, &w, None, DType::F64, 20).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let x = Var::from_tensor(&x0).unwrap();
    let y = nf4_linear_chunked(x.as_tensor(), &w, None, DType::F64, 20).unwrap();
    assert_eq!(y.dtype(), DType::F64);
    let grads = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let base = x0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let h = 1e-6;
    for k in 0..base.len() {
        let mut p = base.clone();
        p[k] += h;
        let mut m = base.clone();
        m[k] -= h;
        let tp = Tensor::from_vec(p, (3, 10), &Device::Cpu).unwrap();
        let tm = Tensor::from_vec(m, (3, 10), &Device::Cpu).unwrap();
        let fd = (loss(&tp) - loss(&tm)) / (2.0 * h);
        assert!((fd - dx[k]).abs() < 1e-6 * (1.0 + fd.abs()), "element {k}: fd {fd} vs {}", dx[k]);
    }
}

#[test]
fn no_weight_or_bias_gradient() {
    let w = weight(8, 16, false, DType::F32, 9);
    let x = Var::from_tensor(&randn(&[4, 16], 6, DType::F32)).unwrap();
    let b = Var::from_tensor(&randn(&[8], 7, DType::F32)).unwrap();
    let y = nf4_linear(x.as_tensor(), &w, Some(b.as_tensor()), DType::F32).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(x.as_tensor()).is_some());
    assert!(grads.get(b.as_tensor()).is_none(), "bias is frozen");
    assert!(grads.get(&w.packed).is_none());
    if let Nf4Absmax::F32(a) = &w.absmax {
        assert!(grads.get(a).is_none());
    }
}

#[test]
fn bf16_compute() {
    let w = weight(16, 64, true, DType::BF16, 3);
    let x = randn(&[2, 64], 8, DType::F32);
    let y = nf4_linear(&x, &w, None, DType::BF16).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    let want = x.matmul(&w.dequantize(DType::F32).unwrap().t().unwrap()).unwrap();
    assert!(max_diff(&y, &want) < 0.1, "bf16 {}", max_diff(&y, &want));
}

#[test]
fn shape_errors() {
    let w = weight(4, 8, false, DType::F32, 1);
    assert!(nf4_linear(&randn(&[2, 7], 1, DType::F32), &w, None, DType::F32).is_err());
    assert!(nf4_linear(&randn(&[2, 8], 1, DType::F32), &w, Some(&randn(&[3], 1, DType::F32)), DType::F32).is_err());
}
