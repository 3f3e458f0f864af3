//! Plain, obviously-correct compositions of every op, differentiated by candle's own autograd.
//! They are the oracles of the tests, not fast paths: they materialise every intermediate (full
//! logits, repeated kv heads, weight gradients).
//! Same signatures and dtype rules as the real ops; math in f32 (f64 for f64 inputs).

use candle_core::{bail, DType, Result, Tensor, D};

/// The dtype the ops compute in: f32, or f64 for f64 inputs (as `kernels` does).
fn compute_dtype(dt: DType) -> DType {
    if dt == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// x wᵀ + b with candle's matmul (whose backward also builds a weight-sized gradient).
pub fn frozen_linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let y = x.to_dtype(w.dtype())?.flatten_to(D::Minus2)?.matmul(&w.t()?)?;
    let y = match bias {
        Some(b) => y.broadcast_add(&b.to_dtype(w.dtype())?)?,
        None => y,
    };
    if let Some(last) = dims.last_mut() {
        *last = w.dim(0)?;
    }
    y.reshape(dims)
}

/// HF Llama RMSNorm: normalise in f32, cast to x's dtype, multiply by the weight.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let xf = x.to_dtype(compute_dtype(x.dtype()))?;
    let rms = (xf.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?;
    xf.broadcast_div(&rms)?.to_dtype(x.dtype())?.broadcast_mul(&weight.to_dtype(x.dtype())?)
}

/// HF apply_rotary_pos_emb: x·cos + rotate_half(x)·sin with full-width (duplicated) tables.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let c = compute_dtype(x.dtype());
    let full = |t: &Tensor| -> Result<Tensor> { Tensor::cat(&[t, t], D::Minus1)?.to_dtype(c)?.unsqueeze(1) };
    let xf = x.to_dtype(c)?;
    let half = x.dim(D::Minus1)? / 2;
    let rotated =
        Tensor::cat(&[&xf.narrow(D::Minus1, half, half)?.neg()?, &xf.narrow(D::Minus1, 0, half)?], D::Minus1)?;
    (xf.broadcast_mul(&full(cos)?)? + rotated.broadcast_mul(&full(sin)?)?)?.to_dtype(x.dtype())
}

/// gate / (1 + exp(−gate)) · up.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let c = compute_dtype(gate.dtype());
    let g = gate.to_dtype(c)?;
    let silu = (&g / (g.neg()?.exp()? + 1.0)?)?;
    (silu * up.to_dtype(c)?)?.to_dtype(gate.dtype())
}

/// Softmax attention with kv heads repeated explicitly and the mask built element by element on
/// the host from the rule in `attention`'s docs.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segment_ids: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let (b, hq, tq, _d) = q.dims4()?;
    let (_, hkv, tk, _) = k.dims4()?;
    if hkv == 0 || hq % hkv != 0 || tq > tk {
        bail!("reference attention: bad shapes q {:?} k {:?}", q.dims(), k.dims())
    }
    let c = compute_dtype(q.dtype());
    let heads: Vec<u32> = (0..hq).map(|h| (h / (hq / hkv)) as u32).collect();
    let heads = Tensor::new(heads.as_slice(), q.device())?;
    let k = k.to_dtype(c)?.index_select(&heads, 1)?;
    let v = v.to_dtype(c)?.index_select(&heads, 1)?;

    let seg = segment_ids.map(|s| s.to_dtype(DType::U32)?.to_vec2::<u32>()).transpose()?;
    let mut bias = Vec::with_capacity(b * tq * tk);
    for bi in 0..b {
        for i in 0..tq {
            let p = tk - tq + i;
            for j in 0..tk {
                let same = seg.as_ref().is_none_or(|s| s[bi][j] == s[bi][p]);
                bias.push(if j <= p && same { 0.0 } else { -1e30 });
            }
        }
    }
    let bias = Tensor::from_vec(bias, (b, 1, tq, tk), q.device())?.to_dtype(c)?;

    let s = (q.to_dtype(c)?.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(&bias)?;
    let s = s.broadcast_sub(&s.max_keepdim(D::Minus1)?)?;
    let e = s.exp()?;
    let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    p.matmul(&v)?.to_dtype(q.dtype())
}

/// Full logits, full log-softmax, then the target column.
pub fn linear_log_probs(h: &Tensor, w: &Tensor, targets: &Tensor, _chunk_rows: usize) -> Result<Tensor> {
    let z = h.to_dtype(w.dtype())?.matmul(&w.t()?)?.to_dtype(compute_dtype(w.dtype()))?;
    let z = z.broadcast_sub(&z.max_keepdim(D::Minus1)?)?;
    let log_softmax = z.broadcast_sub(&z.exp()?.sum_keepdim(D::Minus1)?.log()?)?;
    log_softmax.gather(&targets.unsqueeze(1)?, D::Minus1)?.squeeze(1)
}
