//! A frozen linear with its LoRA branch as one op: y = x wᵀ + b + s · B(A(dropout(x))).
//!
//! Shapes: x [..., in], w [out, in] (frozen), bias [out], A [r, in], B [out, r] (f32, trainable).
//! The math and the dropout mask are those of `frozen_linear` + `lora_delta` (this op is their sum):
//! Forward:  h = (x ⊙ m) Aᵀ [n, r], y = x wᵀ + b + s · h Bᵀ.
//! Backward: dh = s · dy B, dB = s · dyᵀ h, dA = dhᵀ (x ⊙ m), dx = dy w + (dh A) ⊙ m. No dw.
//! f32 on the CPU: the LoRA product accumulates into the base product's output buffer and dh A into
//! dy w's, so there is no delta tensor, no separate scale pass, no add and no second output copy;
//! the graph keeps x, h [n, r] and the mask's seed. Elsewhere (CUDA, bf16): the two ops, added.

use candle_core::{bail, DType, Device, Result, Tensor, D};

use crate::cpu::{self, Mat};
use crate::frozen_linear::frozen_linear;
use crate::lora_linear::{effective_dropout, lora_delta, mask, masked, Dropout};
use crate::{custom_backward, profile};

/// The LoRA branch of an adapted linear: A, B, scale and dropout.
#[derive(Clone, Copy)]
pub struct Lora<'a> {
    pub a: &'a Tensor,
    pub b: &'a Tensor,
    pub scale: f64,
    pub dropout: Option<Dropout>,
}

pub fn adapted_linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, lora: Lora) -> Result<Tensor> {
    let mut ts = vec![x, w, lora.a, lora.b];
    ts.extend(bias);
    if !cpu::eligible(&ts) {
        let y = frozen_linear(x, w, bias)?;
        let delta = lora_delta(x, lora.a, lora.b, lora.scale, lora.dropout)?.to_dtype(y.dtype())?;
        return y + delta;
    }
    profile::forward("adapted_linear", || fused_cpu(x, w, bias, lora))
}

fn fused_cpu(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, lora: Lora) -> Result<Tensor> {
    let (out_f, in_f) = w.dims2()?;
    let (r, a_in) = lora.a.dims2()?;
    if x.rank() < 2 || x.dim(D::Minus1)? != in_f || a_in != in_f || lora.b.dims() != [out_f, r] {
        bail!(
            "adapted_linear: x {:?}, w {:?}, A {:?}, B {:?} do not fit together",
            x.dims(),
            w.dims(),
            lora.a.dims(),
            lora.b.dims()
        )
    }
    if bias.is_some_and(|b| b.dims() != [out_f]) {
        bail!("adapted_linear: bias {:?} != [{out_f}]", bias.map(|b| b.dims().to_vec()))
    }
    let dropout = effective_dropout("adapted_linear", lora.dropout)?;
    let mut out_dims = x.dims().to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = out_f;
    }
    let x2 = x.flatten_to(D::Minus2)?;
    let n = x2.dim(0)?;
    let xd = x2.detach().contiguous()?;
    let (w, a, b) = (w.detach().contiguous()?, lora.a.detach().contiguous()?, lora.b.detach().contiguous()?);
    let xm = masked(&xd, dropout)?;
    let (mut h, mut y) = (vec![0f32; n * r], vec![0f32; n * out_f]);
    cpu::read(&xm, |xm| {
        cpu::read(&a, |a| cpu::matmul(&mut h, r, Mat::rows(xm, n, in_f), Mat::rows(a, r, in_f).t(), 1.0, false, true))
    })???;
    cpu::read(&xd, |x| {
        cpu::read(&w, |w| {
            cpu::matmul(&mut y, out_f, Mat::rows(x, n, in_f), Mat::rows(w, out_f, in_f).t(), 1.0, false, true)
        })
    })???;
    let s = lora.scale as f32;
    cpu::read(&b, |b| cpu::matmul(&mut y, out_f, Mat::rows(&h, n, r), Mat::rows(b, out_f, r).t(), s, true, true))??;
    if let Some(bias) = bias {
        cpu::read(&bias.detach().contiguous()?, |bias| {
            y.chunks_exact_mut(out_f).for_each(|row| row.iter_mut().zip(bias).for_each(|(y, b)| *y += b))
        })?;
    }
    drop(xm);
    let y = custom_backward::Value::host(y, &[n, out_f]);
    let need = [x.track_op(), lora.a.track_op(), lora.b.track_op()];
    let y = custom_backward::ternary("adapted_linear", &x2, lora.a, lora.b, y, move |dy| {
        let dy = dy.to_dtype(DType::F32)?.contiguous()?;
        let mut dh = vec![0f32; n * r];
        let grads = cpu::read(&dy, |dy| -> Result<[Option<Vec<f32>>; 3]> {
            let dy_m = Mat::rows(dy, n, out_f);
            cpu::read(&b, |b| cpu::matmul(&mut dh, r, dy_m, Mat::rows(b, out_f, r), s, false, true))??;
            let db = if need[2] {
                let mut db = vec![0f32; out_f * r];
                cpu::matmul(&mut db, r, dy_m.t(), Mat::rows(&h, n, r), s, false, true)?;
                Some(db)
            } else {
                None
            };
            let m = dropout.map(|d| mask((n, in_f), d, &Device::Cpu)).transpose()?;
            let da = if need[1] {
                let mut da = vec![0f32; r * in_f];
                let xm = match &m {
                    Some(m) => (&xd * m)?,
                    None => xd.clone(),
                };
                cpu::read(&xm, |xm| {
                    cpu::matmul(&mut da, in_f, Mat::rows(&dh, n, r).t(), Mat::rows(xm, n, in_f), 1.0, false, true)
                })??;
                Some(da)
            } else {
                None
            };
            let dx = if need[0] {
                let mut dx = vec![0f32; n * in_f];
                cpu::read(&w, |w| cpu::matmul(&mut dx, in_f, dy_m, Mat::rows(w, out_f, in_f), 1.0, false, true))??;
                cpu::read(&a, |a| -> Result<()> {
                    let (dh, a) = (Mat::rows(&dh, n, r), Mat::rows(a, r, in_f));
                    match &m {
                        None => cpu::matmul(&mut dx, in_f, dh, a, 1.0, true, true),
                        Some(m) => {
                            let mut g = vec![0f32; n * in_f];
                            cpu::matmul(&mut g, in_f, dh, a, 1.0, false, true)?;
                            cpu::read(m, |m| dx.iter_mut().zip(g).zip(m).for_each(|((dx, g), m)| *dx += g * m))
                        }
                    }
                })??;
                Some(dx)
            } else {
                None
            };
            Ok([dx, da, db])
        })??;
        let [dx, da, db] = grads;
        Ok([
            dx.map(|v| cpu::tensor(v, &[n, in_f])).transpose()?,
            da.map(|v| cpu::tensor(v, &[r, in_f])).transpose()?,
            db.map(|v| cpu::tensor(v, &[out_f, r])).transpose()?,
        ])
    })?;
    y.reshape(out_dims)
}
