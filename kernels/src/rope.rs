//! Rotary position embeddings, HF "rotate_half" convention (halves, not interleaved pairs).
//!
//! Tables: angle[b, t, i] = pos[b, t] · inv_freq[i] (f32), cos/sin = cos/sin(angle) cast to `dtype`,
//!         shape [b, t, d/2]. Positions are per batch row, so packed samples can restart at 0.
//! Apply, x [b, h, t, d], x1 = x[..., :d/2], x2 = x[..., d/2:], c/s broadcast over h (math in f32):
//! Forward:  y = cat(x1·c − x2·s, x2·c + x1·s)           (a rotation of each (x1_i, x2_i) pair)
//! Backward: dx = cat(dy1·c + dy2·s, dy2·c − dy1·s)      (the transposed rotation)
//! Memory traffic: forward reads x, cos, sin, writes y (+ one copy of y); backward reads dy, cos,
//! sin, writes dx. The backward needs only the tables (the op is linear in x).

use candle_core::{bail, DType, Result, Tensor, D};

use crate::{compute_dtype, cpu, custom_backward};

pub fn rope_tables(inv_freq: &[f32], positions: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
    let (b, t) = positions.dims2()?;
    if inv_freq.is_empty() || positions.dtype().is_float() {
        bail!("rope_tables: need non-empty inv_freq and integer positions, got {:?}", positions.dtype())
    }
    let half = inv_freq.len();
    let inv = Tensor::from_slice(inv_freq, (1, 1, half), positions.device())?;
    let angle = positions.to_dtype(DType::F32)?.reshape((b, t, 1))?.broadcast_mul(&inv)?;
    Ok((angle.cos()?.to_dtype(dtype)?, angle.sin()?.to_dtype(dtype)?))
}

/// `cos`/`sin`: [b, t, d/2] (or [1, t, d/2], broadcast over the batch).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    crate::profile::forward("rope", || {
        let (b, _h, t, d) = x.dims4()?;
        let (cb, ct, half) = cos.dims3()?;
        if d % 2 != 0 || half * 2 != d || ct != t || (cb != b && cb != 1) || sin.dims() != cos.dims() {
            bail!("rope: x {:?} vs cos {:?} / sin {:?} (want [{b}, {t}, {}])", x.dims(), cos.dims(), sin.dims(), d / 2)
        }
        // [b, 1, t, d/2] in the compute dtype, broadcast over heads.
        let c = compute_dtype(x.dtype());
        let cos = cos.detach().to_dtype(c)?.unsqueeze(1)?;
        let sin = sin.detach().to_dtype(c)?.unsqueeze(1)?;
        if let Some(dev) = gpu::eligible(x) {
            let (cos, sin) = (gpu::table(&cos)?, gpu::table(&sin)?);
            let y = gpu::rotate(&dev, &x.detach().contiguous()?, &cos, &sin, 1.0)?;
            return custom_backward::unary("rope", x, y, move |dy| gpu::rotate(&dev, dy, &cos, &sin, -1.0));
        }
        if cpu::eligible(&[x, &cos, &sin]) {
            let (cos, sin) = (cos.contiguous()?, sin.contiguous()?);
            let y = fused_cpu::rotate(&x.detach(), &cos, &sin, 1.0)?;
            return custom_backward::unary("rope", x, y, move |dy| {
                fused_cpu::rotate(dy, &cos, &sin, -1.0)?.into_tensor()
            });
        }
        let y = rotate(&x.detach(), &cos, &sin, 1.0)?;
        custom_backward::unary("rope", x, y, move |dy| rotate(dy, &cos, &sin, -1.0))
    })
}

/// cat(x1·c − dir·x2·s, x2·c + dir·x1·s): dir = 1 rotates forward, −1 applies the transpose.
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor, dir: f64) -> Result<Tensor> {
    let half = cos.dim(D::Minus1)?;
    let xf = x.to_dtype(cos.dtype())?;
    let (x1, x2) = (xf.narrow(D::Minus1, 0, half)?, xf.narrow(D::Minus1, half, half)?);
    let sin = (sin * dir)?;
    let y1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(&sin)?)?;
    let y2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(&sin)?)?;
    Tensor::cat(&[y1, y2], D::Minus1)?.to_dtype(x.dtype())
}

/// f32 on the CPU: one pass over x, (batch, head) planes spread over rayon's threads.
mod fused_cpu {
    use candle_core::{DType, Result, Tensor};
    use rayon::prelude::*;

    use crate::cpu;
    use crate::custom_backward::Value;

    /// As [`super::rotate`]; cos/sin are contiguous [cb, 1, t, d/2] f32.
    pub fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor, dir: f32) -> Result<Value> {
        let (_b, h, t, d) = x.dims4()?;
        let (cb, half) = (cos.dim(0)?, d / 2);
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let mut y = vec![0f32; x.elem_count()];
        cpu::read(&x, |x| {
            cpu::read(cos, |cos| {
                cpu::read(sin, |sin| {
                    y.par_chunks_mut(t * d).zip(x.par_chunks(t * d)).enumerate().for_each(|(plane, (y, x))| {
                        let table = if cb == 1 { 0 } else { plane / h } * t * half;
                        let (cos, sin) = (&cos[table..table + t * half], &sin[table..table + t * half]);
                        for (((y, x), c), s) in y
                            .chunks_exact_mut(d)
                            .zip(x.chunks_exact(d))
                            .zip(cos.chunks_exact(half))
                            .zip(sin.chunks_exact(half))
                        {
                            let (x1, x2) = x.split_at(half);
                            let (y1, y2) = y.split_at_mut(half);
                            for i in 0..half {
                                let s = dir * s[i];
                                y1[i] = x1[i] * c[i] - x2[i] * s;
                                y2[i] = x2[i] * c[i] + x1[i] * s;
                            }
                        }
                    })
                })
            })
        })???;
        Ok(Value::host(y, x.dims()))
    }
}

/// Fused kernel (`cuda/rope.cu`): bf16 on CUDA; one kernel for both directions.
mod gpu {
    use candle_core::{DType, Result, Tensor};

    use crate::launch::{self, Arg, Gpu};

    pub fn eligible(x: &Tensor) -> Option<Gpu> {
        Gpu::of(x).filter(|_| x.dtype() == DType::BF16)
    }

    /// [cb, 1, t, d/2] compute-dtype table → contiguous bf16 [cb, t, d/2].
    pub fn table(t: &Tensor) -> Result<Tensor> {
        t.squeeze(1)?.to_dtype(DType::BF16)?.contiguous()
    }

    pub fn rotate(dev: &Gpu, x: &Tensor, cos: &Tensor, sin: &Tensor, dir: f32) -> Result<Tensor> {
        let x = x.to_dtype(DType::BF16)?.contiguous()?;
        let (b, h, t, d) = x.dims4()?;
        let cb = cos.dim(0)?;
        let y = dev.output(x.shape(), DType::BF16)?;
        let pairs = b * h * t * (d / 2);
        let args = [
            Arg::Buf(launch::buf(&x)?),
            Arg::Buf(launch::buf(cos)?),
            Arg::Buf(launch::buf(sin)?),
            Arg::Buf(launch::buf(&y)?),
            Arg::I32(b as i32),
            Arg::I32(h as i32),
            Arg::I32(t as i32),
            Arg::I32(d as i32),
            Arg::I32(cb as i32),
            Arg::F32(dir),
        ];
        let grid = launch::blocks(pairs, launch::rope::K_THREADS, i32::MAX as usize);
        dev.launch(&launch::rope::OXT_ROPE_BF16, (grid, 1, 1), 0, &args)?;
        Ok(y)
    }
}
