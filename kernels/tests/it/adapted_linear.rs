//! adapted_linear (frozen linear + LoRA branch in one op; fused on the CPU in f32) against the sum of
//! the reference frozen linear and the composed LoRA branch, forward and gradients for x, A and B,
//! with and without bias and dropout; bf16 takes the two-op path and must agree too.

use crate::common::{assert_close, check_grads, reference, Rng, BF16, F32_BWD, F32_FWD};
use candle_core::{DType, Device, Result, Tensor};
use kernels::adapted_linear::{adapted_linear, Lora};
use kernels::lora_linear::{mask, Dropout};

fn composed(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    a: &Tensor,
    b: &Tensor,
    l: (f64, Option<Dropout>),
) -> Result<Tensor> {
    let (scale, dropout) = l;
    let y = reference::frozen_linear(x, w, bias)?;
    let x2 = x.flatten_to(candle_core::D::Minus2)?.to_dtype(DType::F32)?;
    let x2 = match dropout {
        Some(d) => x2.mul(&mask(x2.dims2()?, d, &Device::Cpu)?)?,
        None => x2,
    };
    let delta = (x2.matmul(&a.t()?)?.matmul(&b.t()?)? * scale)?.reshape(y.dims())?;
    let delta = delta.to_dtype(y.dtype())?;
    y + delta
}

#[test]
fn matches_frozen_linear_plus_lora_branch() {
    let mut rng = Rng::new(71);
    let (inf, outf, r, scale) = (40, 24, 4, 2.0);
    for (dtype, fwd, bwd) in [(DType::F32, F32_FWD, F32_BWD), (DType::BF16, BF16, BF16)] {
        for dropout in [None, Some(Dropout { keep: 0.7, seed: 5 })] {
            for with_bias in [false, true] {
                let x = rng.tensor(&[2, 9, inf], 1.0, dtype);
                let w = rng.tensor(&[outf, inf], 0.2, dtype);
                let bias = with_bias.then(|| rng.tensor(&[outf], 1.0, dtype));
                let a = rng.tensor(&[r, inf], 0.3, DType::F32);
                let b = rng.tensor(&[outf, r], 0.3, DType::F32);
                let what = format!("{dtype:?} dropout={dropout:?} bias={with_bias}");
                let op = |t: &[Tensor]| {
                    adapted_linear(&t[0], &w, bias.as_ref(), Lora { a: &t[1], b: &t[2], scale, dropout })
                };
                let want = |t: &[Tensor]| composed(&t[0], &w, bias.as_ref(), &t[1], &t[2], (scale, dropout));
                let got = op(&[x.clone(), a.clone(), b.clone()]).unwrap();
                assert_eq!((got.dims(), got.dtype()), ([2, 9, outf].as_slice(), dtype));
                assert_close(&what, &got, &want(&[x.clone(), a.clone(), b.clone()]).unwrap(), fwd);
                check_grads(&what, op, want, &[x, a, b], &mut rng, bwd);
            }
        }
    }
}

#[test]
fn rejects_mismatched_shapes_and_bad_dropout() {
    let mut rng = Rng::new(72);
    let x = rng.tensor(&[3, 8], 1.0, DType::F32);
    let w = rng.tensor(&[5, 8], 1.0, DType::F32);
    let a = rng.tensor(&[2, 8], 1.0, DType::F32);
    let b = rng.tensor(&[5, 2], 1.0, DType::F32);
    let lora = Lora { a: &a, b: &b, scale: 1.0, dropout: None };
    assert!(adapted_linear(&x, &w, None, lora).is_ok());
    let wrong_b = rng.tensor(&[4, 2], 1.0, DType::F32);
    let e = adapted_linear(&x, &w, None, Lora { b: &wrong_b, ..lora }).unwrap_err().to_string();
    assert!(e.contains("do not fit"), "{e}");
    let wrong_bias = rng.tensor(&[4], 1.0, DType::F32);
    assert!(adapted_linear(&x, &w, Some(&wrong_bias), lora).is_err());
    let bad = Lora { dropout: Some(Dropout { keep: 0.0, seed: 1 }), ..lora };
    assert!(adapted_linear(&x, &w, None, bad).unwrap_err().to_string().contains("keep probability"));
}
