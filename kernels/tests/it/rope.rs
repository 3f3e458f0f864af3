use crate::common::reference;
use crate::common::{assert_close, check_grads, finite_difference_check, Rng, BF16, F32_BWD, F32_FWD};
use candle_core::{DType, Device, Tensor};
use kernels::rope;

fn inv_freq(half: usize) -> Vec<f32> {
    (0..half).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / (2 * half) as f32)).collect()
}

/// Two rows: one plain 0..t, one with two packed samples restarting at 0.
fn positions(t: usize) -> Tensor {
    let row0: Vec<u32> = (0..t as u32).collect();
    let row1: Vec<u32> = (0..t as u32).map(|i| if i < 3 { i } else { i - 3 }).collect();
    Tensor::new(vec![row0, row1], &Device::Cpu).unwrap()
}

#[test]
fn tables_match_f64_math() {
    let (t, half) = (5, 3);
    let freqs = inv_freq(half);
    let pos = positions(t);
    let (cos, sin) = rope::rope_tables(&freqs, &pos, DType::F32).unwrap();
    assert_eq!(cos.dims(), [2, t, half]);
    let pos = pos.to_vec2::<u32>().unwrap();
    let angle = |b: usize, i: usize, f: usize| pos[b][i] as f64 * freqs[f] as f64;
    let build = |f: fn(f64) -> f64| {
        let data: Vec<f64> = (0..2)
            .flat_map(|b| (0..t).flat_map(move |i| (0..half).map(move |k| (b, i, k))))
            .map(|(b, i, k)| f(angle(b, i, k)))
            .collect();
        Tensor::from_vec(data, (2, t, half), &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap()
    };
    assert_close("cos", &cos, &build(f64::cos), F32_FWD);
    assert_close("sin", &sin, &build(f64::sin), F32_FWD);
    let (cos_bf, _) = rope::rope_tables(&freqs, &positions(t), DType::BF16).unwrap();
    assert_eq!(cos_bf.dtype(), DType::BF16);
}

#[test]
fn matches_reference() {
    let mut rng = Rng::new(31);
    for (dtype, fwd, bwd) in [(DType::F32, F32_FWD, F32_BWD), (DType::BF16, BF16, BF16)] {
        for (h, t, d) in [(3, 5, 6), (2, 5, 8)] {
            let (cos, sin) = rope::rope_tables(&inv_freq(d / 2), &positions(t), dtype).unwrap();
            let x = rng.tensor(&[2, h, t, d], 1.0, dtype);
            let what = format!("{dtype:?} h={h} t={t} d={d}");
            let y = rope::rope(&x, &cos, &sin).unwrap();
            assert_eq!(y.dtype(), dtype);
            assert_close(&what, &y, &reference::rope(&x, &cos, &sin).unwrap(), fwd);
            let (c2, s2) = (cos.clone(), sin.clone());
            check_grads(
                &what,
                |v: &[Tensor]| rope::rope(&v[0], &cos, &sin),
                |v: &[Tensor]| reference::rope(&v[0], &c2, &s2),
                &[x],
                &mut rng,
                bwd,
            );
        }
    }
}

#[test]
fn finite_differences() {
    let mut rng = Rng::new(32);
    let (cos, sin) = rope::rope_tables(&inv_freq(3), &positions(5), DType::F64).unwrap();
    let x = rng.tensor(&[2, 2, 5, 6], 1.0, DType::F64);
    finite_difference_check("rope", |v| rope::rope(&v[0], &cos, &sin), &[x], &mut rng, 8);
}

/// Rotations: norms are preserved, and q·k depends only on the position difference — so a sample
/// packed at offset 3 sees exactly what it would see at offset 0.
#[test]
fn relative_position_property() {
    let mut rng = Rng::new(33);
    let (t, d) = (6, 8);
    let (cos, sin) = rope::rope_tables(&inv_freq(d / 2), &positions(t), DType::F64).unwrap();
    let one = rng.tensor(&[1, 1, 1, d], 1.0, DType::F64);
    let x = one.broadcast_as((2, 1, t, d)).unwrap().contiguous().unwrap();
    let y = rope::rope(&x, &cos, &sin).unwrap();
    let norms = y.sqr().unwrap().sum_keepdim(3).unwrap();
    let want = x.sqr().unwrap().sum_keepdim(3).unwrap();
    assert_close("norms", &norms, &want, F32_FWD);
    // Row 1 restarts at position 0 at index 3: its vectors at 3..6 equal row 0's at 0..3.
    let restarted = y.narrow(0, 1, 1).unwrap().narrow(2, 3, 3).unwrap();
    let start = y.narrow(0, 0, 1).unwrap().narrow(2, 0, 3).unwrap();
    assert_close("restart", &restarted.contiguous().unwrap(), &start.contiguous().unwrap(), F32_FWD);
}

/// Tables with batch 1 broadcast over the batch; t = 1 (a decode step) works.
#[test]
fn broadcast_tables_and_single_step() {
    let mut rng = Rng::new(34);
    let pos = Tensor::new(&[[7u32]], &Device::Cpu).unwrap();
    let (cos, sin) = rope::rope_tables(&inv_freq(3), &pos, DType::F32).unwrap();
    let x = rng.tensor(&[3, 2, 1, 6], 1.0, DType::F32);
    let y = rope::rope(&x, &cos, &sin).unwrap();
    assert_close("y", &y, &reference::rope(&x, &cos, &sin).unwrap(), F32_FWD);
}

#[test]
fn rejects_bad_shapes() {
    let mut rng = Rng::new(35);
    let (cos, sin) = rope::rope_tables(&inv_freq(3), &positions(5), DType::F32).unwrap();
    assert!(rope::rope(&rng.tensor(&[2, 1, 4, 6], 1.0, DType::F32), &cos, &sin).is_err());
    assert!(rope::rope(&rng.tensor(&[2, 1, 5, 8], 1.0, DType::F32), &cos, &sin).is_err());
    assert!(rope::rope_tables(&[], &positions(5), DType::F32).is_err());
}
