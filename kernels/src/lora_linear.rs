//! The LoRA branch of an adapted linear: delta = s · B(A(dropout(x))), f32 math (as PEFT, which
//! keeps adapters in f32 and casts the input to them).
//!
//! Shapes: x [..., in], A [r, in], B [out, r] (f32, trainable) → delta [..., out] f32.
//! Dropout: m = keep-mask / keep, drawn per element from a counter-based hash of (seed, index),
//! so the mask needs no state, is identical on CPU and GPU, and the backward recomputes it from
//! the seed instead of storing it.
//! Forward:  xm = x ⊙ m, h = xm Aᵀ [n, r], delta = s · h Bᵀ.
//! Backward: dh = s · dy B, dB = s · dyᵀ h, dA = dhᵀ xm, dx = (dh A) ⊙ m.
//! Memory: the graph keeps x (which the frozen base keeps anyway), h [n, r] and the seed — not the
//! f32 copy of the masked input that composed autograd would keep for every adapted projection.
//! Traffic: forward reads x once (cast + mask fused into one pass on CUDA when dropout is on);
//! backward reads x again to rebuild xm.

use candle_core::{bail, DType, Device, Result, Tensor, D};

use crate::custom_backward;

/// Dropout of the LoRA input: keep probability and the mask's seed.
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    pub keep: f64,
    pub seed: u64,
}

pub fn lora_delta(x: &Tensor, a: &Tensor, b: &Tensor, scale: f64, dropout: Option<Dropout>) -> Result<Tensor> {
    crate::profile::forward("lora_delta", || {
        let (r, in_f) = a.dims2()?;
        let (out_f, rb) = b.dims2()?;
        if rb != r || x.dim(D::Minus1)? != in_f || a.dtype() != DType::F32 || b.dtype() != DType::F32 {
            bail!("lora_delta: x {:?}, A {:?} {:?}, B {:?} {:?}", x.dims(), a.dims(), a.dtype(), b.dims(), b.dtype())
        }
        let dropout = effective_dropout("lora_delta", dropout)?;
        let mut out_dims = x.dims().to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = out_f;
        }
        let x2 = x.flatten_to(D::Minus2)?;
        let (ad, bd) = (a.detach(), b.detach());
        let xm = masked(&x2.detach(), dropout)?;
        let h = xm.matmul(&ad.t()?)?;
        let delta = (h.matmul(&bd.t()?)? * scale)?;
        drop(xm);
        let xd = x2.detach();
        let need = [x.track_op(), a.track_op(), b.track_op()];
        let y = custom_backward::ternary("lora_delta", &x2, a, b, delta, move |dy| {
            let dh = (dy.to_dtype(DType::F32)?.matmul(&bd)? * scale)?;
            let db = if need[2] { Some((dy.to_dtype(DType::F32)?.t()?.matmul(&h)? * scale)?) } else { None };
            let xm = if need[1] { Some(masked(&xd, dropout)?) } else { None };
            let da = xm.map(|xm| dh.t()?.matmul(&xm)).transpose()?;
            let dx = if need[0] {
                let g = dh.matmul(&ad)?;
                let g = match dropout {
                    Some(d) => {
                        let m = mask(g.dims2()?, d, g.device())?;
                        (g * m)?
                    }
                    None => g,
                };
                Some(g.to_dtype(xd.dtype())?)
            } else {
                None
            };
            Ok([dx, da, db])
        })?;
        y.reshape(out_dims)
    })
}

/// The dropout that applies (None for keep = 1), or an error naming `op` for a keep outside (0, 1].
pub(crate) fn effective_dropout(op: &str, dropout: Option<Dropout>) -> Result<Option<Dropout>> {
    let dropout = dropout.filter(|d| d.keep < 1.0);
    if let Some(d) = dropout {
        if d.keep.is_nan() || d.keep <= 0.0 {
            bail!("{op}: keep probability {} must be in (0, 1]", d.keep)
        }
    }
    Ok(dropout)
}

/// x [n, in] in f32, times the dropout mask when there is one.
pub(crate) fn masked(x: &Tensor, dropout: Option<Dropout>) -> Result<Tensor> {
    let xf = x.to_dtype(DType::F32)?;
    match dropout {
        Some(d) => xf.mul(&mask(xf.dims2()?, d, xf.device())?),
        None => Ok(xf),
    }
}

/// The scaled keep-mask [n, in] (values 0 or 1/keep, f32) for `d` on `device`.
pub fn mask((n, cols): (usize, usize), d: Dropout, device: &Device) -> Result<Tensor> {
    if let Some(dev) = crate::launch::Gpu::for_device(device) {
        return gpu::mask(&dev, n * cols, d)?.reshape((n, cols));
    }
    let scale = (1.0 / d.keep) as f32;
    let threshold = keep_threshold(d.keep);
    let m: Vec<f32> = (0..(n * cols) as u64).map(|i| if hash(d.seed, i) < threshold { scale } else { 0.0 }).collect();
    Tensor::from_vec(m, (n, cols), device)
}

/// Element i is kept when the top 32 bits of hash(seed, i) are below keep·2³².
fn keep_threshold(keep: f64) -> u32 {
    (keep * 4_294_967_296.0).min(4_294_967_295.0) as u32
}

/// splitmix64 of seed ⊕ golden·(i+1), top 32 bits. The CUDA kernel (`cuda/lora_linear.cu`) computes the
/// same function, so CPU and GPU draw identical masks.
fn hash(seed: u64, i: u64) -> u32 {
    let mut z = seed ^ 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i.wrapping_add(1));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 32) as u32
}

mod gpu {
    use candle_core::{DType, Result, Tensor};

    use super::{keep_threshold, Dropout};
    use crate::launch::{self, Arg, Gpu};

    const MAX_BLOCKS: usize = 65535 * 32;

    pub fn mask(dev: &Gpu, n: usize, d: Dropout) -> Result<Tensor> {
        let out = dev.output(n, DType::F32)?;
        let args = [
            Arg::Buf(launch::buf(&out)?),
            Arg::I64(n as i64),
            Arg::I64(d.seed as i64),
            Arg::I64(keep_threshold(d.keep) as i64),
            Arg::F32((1.0 / d.keep) as f32),
        ];
        let grid = launch::blocks(n, launch::lora_linear::K_THREADS, MAX_BLOCKS);
        dev.launch(&launch::lora_linear::OXT_DROPOUT_MASK_F32, (grid, 1, 1), 0, &args)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_keeps_about_keep_and_is_deterministic() {
        let d = Dropout { keep: 0.9, seed: 42 };
        let m = mask((100, 100), d, &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let kept = m.iter().filter(|v| **v > 0.0).count();
        assert!((8800..=9200).contains(&kept), "{kept} of 10000 kept at keep=0.9");
        assert!(m.iter().all(|v| *v == 0.0 || (*v - 1.0 / 0.9).abs() < 1e-6));
        let again = mask((100, 100), d, &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(m, again);
        let other = mask((100, 100), Dropout { seed: 43, ..d }, &Device::Cpu).unwrap();
        assert_ne!(m, other.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
}
