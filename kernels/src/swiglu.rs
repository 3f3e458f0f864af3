//! SwiGLU activation: y = silu(gate) · up, with s = sigmoid(gate), silu(g) = g·s.
//!
//! Shapes: gate, up [...] (same shape and dtype) → y in that dtype; math in f32.
//! Forward:  y = g·s·u.
//! Backward: dgate = dy · u · s · (1 + g·(1 − s)), dup = dy · g · s.
//! Memory traffic: forward reads gate, up, writes y (+ one copy of y); backward reads gate, up, dy,
//! writes dgate, dup. The graph keeps only gate and up.

use candle_core::{bail, Result, Tensor};

use crate::{compute_dtype, cpu, custom_backward};

pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    crate::profile::forward("swiglu", || {
        if gate.dims() != up.dims() || gate.dtype() != up.dtype() {
            bail!("swiglu: gate {:?} {:?} vs up {:?} {:?}", gate.dims(), gate.dtype(), up.dims(), up.dtype())
        }
        let (g, u) = (gate.detach(), up.detach());
        let (need_g, need_u) = (gate.track_op(), up.track_op());
        if let Some(dev) = gpu::eligible(&g) {
            let (g, u) = (g.contiguous()?, u.contiguous()?);
            let y = gpu::forward(&dev, &g, &u)?;
            return custom_backward::binary("swiglu", gate, up, y, move |dy| {
                let (dg, du) = gpu::backward(&dev, &g, &u, dy)?;
                Ok([need_g.then_some(dg), need_u.then_some(du)])
            });
        }
        if cpu::eligible(&[&g, &u]) {
            let (g, u) = (g.contiguous()?, u.contiguous()?);
            let y = fused_cpu::forward(&g, &u)?;
            return custom_backward::binary("swiglu", gate, up, y, move |dy| {
                let (dg, du) = fused_cpu::backward(&g, &u, dy)?;
                Ok([need_g.then_some(dg), need_u.then_some(du)])
            });
        }
        let y = forward(&g, &u)?;
        custom_backward::binary("swiglu", gate, up, y, move |dy| backward(&g, &u, dy, need_g, need_u))
    })
}

/// sigmoid(g) in the compute dtype; exp overflow for very negative g gives 1/inf = 0, not NaN.
fn sigmoid(g: &Tensor) -> Result<Tensor> {
    (g.neg()?.exp()? + 1.0)?.recip()
}

fn forward(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let c = compute_dtype(gate.dtype());
    let g = gate.to_dtype(c)?;
    let y = ((&g * sigmoid(&g)?)? * up.to_dtype(c)?)?;
    y.to_dtype(gate.dtype())
}

fn backward(gate: &Tensor, up: &Tensor, dy: &Tensor, need_g: bool, need_u: bool) -> Result<[Option<Tensor>; 2]> {
    let c = compute_dtype(gate.dtype());
    let (g, dy) = (gate.to_dtype(c)?, dy.to_dtype(c)?);
    let s = sigmoid(&g)?;
    let dgate = if need_g {
        // d silu / dg = s · (1 + g · (1 − s))
        let dsilu = ((&g * (1.0 - &s)?)? + 1.0)?.mul(&s)?;
        Some((&dy * up.to_dtype(c)?)?.mul(&dsilu)?.to_dtype(gate.dtype())?)
    } else {
        None
    };
    let dup = if need_u { Some((dy * (g * s)?)?.to_dtype(up.dtype())?) } else { None };
    Ok([dgate, dup])
}

/// Fused kernels (`cuda/swiglu.cu`): bf16 on CUDA.
mod gpu {
    use candle_core::{DType, Result, Tensor};

    use crate::launch::{self, Arg, Gpu};

    /// Grid cap of the grid-stride kernels.
    const MAX_BLOCKS: usize = 65535 * 32;

    pub fn eligible(g: &Tensor) -> Option<Gpu> {
        Gpu::of(g).filter(|_| g.dtype() == DType::BF16)
    }

    pub fn forward(dev: &Gpu, g: &Tensor, u: &Tensor) -> Result<Tensor> {
        let n = g.elem_count();
        let y = dev.output(g.shape(), DType::BF16)?;
        let args =
            [Arg::Buf(launch::buf(g)?), Arg::Buf(launch::buf(u)?), Arg::Buf(launch::buf(&y)?), Arg::I64(n as i64)];
        let grid = launch::blocks(n, launch::swiglu::K_THREADS, MAX_BLOCKS);
        dev.launch(&launch::swiglu::OXT_SWIGLU_FWD_BF16, (grid, 1, 1), 0, &args)?;
        Ok(y)
    }

    pub fn backward(dev: &Gpu, g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = g.elem_count();
        let dy = dy.to_dtype(DType::BF16)?.contiguous()?;
        let dg = dev.output(g.shape(), DType::BF16)?;
        let du = dev.output(g.shape(), DType::BF16)?;
        let args = [
            Arg::Buf(launch::buf(g)?),
            Arg::Buf(launch::buf(u)?),
            Arg::Buf(launch::buf(&dy)?),
            Arg::Buf(launch::buf(&dg)?),
            Arg::Buf(launch::buf(&du)?),
            Arg::I64(n as i64),
        ];
        let grid = launch::blocks(n, launch::swiglu::K_THREADS, MAX_BLOCKS);
        dev.launch(&launch::swiglu::OXT_SWIGLU_BWD_BF16, (grid, 1, 1), 0, &args)?;
        Ok((dg, du))
    }
}

/// f32 on the CPU: one pass each way (sigmoid through `vmath::exp`), in pieces over rayon's threads.
mod fused_cpu {
    use candle_core::{DType, Result, Tensor};
    use rayon::prelude::*;

    use crate::cpu::{self, vmath};
    use crate::custom_backward::Value;

    /// Elements per parallel piece.
    const PIECE: usize = 1 << 14;

    pub fn forward(g: &Tensor, u: &Tensor) -> Result<Value> {
        let mut y = vec![0f32; g.elem_count()];
        cpu::read(g, |g| {
            cpu::read(u, |u| {
                y.par_chunks_mut(PIECE)
                    .zip(g.par_chunks(PIECE))
                    .zip(u.par_chunks(PIECE))
                    .for_each(|((y, g), u)| vmath::swiglu(g, u, y))
            })
        })??;
        Ok(Value::host(y, g.dims()))
    }

    pub fn backward(g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut dg = dy.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut du = vec![0f32; dg.len()];
        cpu::read(g, |g| {
            cpu::read(u, |u| {
                let pieces = dg.par_chunks_mut(PIECE).zip(du.par_chunks_mut(PIECE));
                pieces
                    .zip(g.par_chunks(PIECE))
                    .zip(u.par_chunks(PIECE))
                    .for_each(|(((dg, du), g), u)| vmath::swiglu_grad(g, u, dg, du))
            })
        })??;
        Ok((cpu::tensor(dg, g.dims())?, cpu::tensor(du, g.dims())?))
    }
}
