//! Linear layer with a frozen weight: y = x wᵀ + b.
//!
//! Shapes: x [..., in], w [out, in], b [out] → y [..., out] in w's dtype (x is cast to it first).
//! Forward:  y = x wᵀ + b.
//! Backward: dx = dy w. w and b are frozen: no dw = dyᵀ x (an [out, in] tensor) is ever computed
//!           or allocated — candle's own matmul backward always builds it, which is what this avoids.
//! Memory traffic (m = rows of x): forward reads x (m·in), w (out·in), writes y (m·out) plus one
//! copy of y (custom_backward); backward reads dy (m·out), w (out·in), writes dx (m·in).
//! The graph keeps x and a handle on w, both alive anyway.

use candle_core::{bail, Result, Tensor, D};

use crate::{cpu, custom_backward};

pub fn frozen_linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    crate::profile::forward("frozen_linear", || {
        let (out_f, in_f) = w.dims2()?;
        if x.rank() < 2 || x.dim(D::Minus1)? != in_f {
            bail!("frozen_linear: x {:?} does not match w [{out_f}, {in_f}] (want [..., {in_f}])", x.dims())
        }
        if let Some(b) = bias {
            if b.dims() != [out_f] {
                bail!("frozen_linear: bias {:?} != [{out_f}]", b.dims())
            }
        }
        let x = if x.dtype() == w.dtype() { x.clone() } else { x.to_dtype(w.dtype())? };
        let w = w.detach();
        let bias = bias.map(|b| b.detach().to_dtype(w.dtype())).transpose()?;
        if cpu::eligible(&[&x, &w]) {
            let w = w.contiguous()?;
            let y = fused_cpu::forward(&x.detach(), &w, bias.as_ref())?;
            return custom_backward::unary("frozen_linear", &x, y, move |dy| fused_cpu::input_grad(dy, &w));
        }
        // The forward is plain tensor ops, so it already runs on CUDA (cuBLAS) as is.
        let y = forward(&x.detach(), &w, bias.as_ref())?;
        custom_backward::unary("frozen_linear", &x, y, move |dy| input_grad(dy, &w))
    })
}

fn forward(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let y = x.flatten_to(D::Minus2)?.matmul(&w.t()?)?;
    let y = match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    if let Some(last) = dims.last_mut() {
        *last = w.dim(0)?;
    }
    y.reshape(dims)
}

fn input_grad(dy: &Tensor, w: &Tensor) -> Result<Tensor> {
    let mut dims = dy.dims().to_vec();
    let dx = dy.flatten_to(D::Minus2)?.matmul(w)?;
    if let Some(last) = dims.last_mut() {
        *last = w.dim(1)?;
    }
    dx.reshape(dims)
}

/// f32 on the CPU through `cpu::matmul` (which keeps a decode step's thin products off the AVX-512
/// GEMM path); the output becomes the graph node's storage without a copy.
mod fused_cpu {
    use candle_core::{DType, Result, Tensor, D};

    use crate::cpu::{self, Mat};
    use crate::custom_backward::Value;

    pub fn forward(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Value> {
        let (out_f, in_f) = w.dims2()?;
        let x2 = x.flatten_to(D::Minus2)?.contiguous()?;
        let n = x2.dim(0)?;
        let mut y = vec![0f32; n * out_f];
        cpu::read(&x2, |x| {
            cpu::read(w, |w| {
                cpu::matmul(&mut y, out_f, Mat::rows(x, n, in_f), Mat::rows(w, out_f, in_f).t(), 1.0, false, true)
            })
        })???;
        if let Some(bias) = bias {
            cpu::read(&bias.contiguous()?, |b| {
                y.chunks_exact_mut(out_f).for_each(|row| row.iter_mut().zip(b).for_each(|(y, b)| *y += b))
            })?;
        }
        let mut dims = x.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = out_f;
        }
        Ok(Value::host(y, &dims))
    }

    /// dx = dy w.
    pub fn input_grad(dy: &Tensor, w: &Tensor) -> Result<Tensor> {
        let (out_f, in_f) = w.dims2()?;
        let dy2 = dy.to_dtype(DType::F32)?.flatten_to(D::Minus2)?.contiguous()?;
        let n = dy2.dim(0)?;
        let mut dx = vec![0f32; n * in_f];
        cpu::read(&dy2, |dy| {
            cpu::read(w, |w| {
                cpu::matmul(&mut dx, in_f, Mat::rows(dy, n, out_f), Mat::rows(w, out_f, in_f), 1.0, false, true)
            })
        })???;
        let mut dims = dy.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = in_f;
        }
        cpu::tensor(dx, &dims)
    }
}
