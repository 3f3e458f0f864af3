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

use crate::custom_backward;

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
