//! Causal self-attention with GQA, packed-sample segments and a KV-cache offset.
//!
//! Shapes: q [b, hq, tq, d], k/v [b, hkv, tk, d], hq = g·hkv (query head h reads kv head h / g),
//! tq ≤ tk; query i sits at absolute position p = tk − tq + i. segment_ids [b, tk] (optional).
//! Mask: query p may read key j iff j ≤ p and (no segments or seg[j] == seg[p]). Key p always
//! qualifies, so no row is empty; masked scores get −1e30 (finite, so even an all-masked row would
//! give a uniform softmax rather than NaN).
//! Forward (f32): S = scale·q kᵀ + mask, m = rowmax S, l = Σ exp(S − m), O = exp(S − m) v / l,
//!           lse = m + ln l (saved, [b, hq, tq]).
//! Backward: P = exp(S − lse) (recomputed), dV = Pᵀ dO, dP = dO vᵀ, δ = rowsum(P ⊙ dP),
//!           dS = P ⊙ (dP − δ), dQ = scale · dS k, dK = scale · dSᵀ q.
//! GQA without repeating k/v: q is viewed as [b, hkv, g·tq, d], so each kv head serves its g query
//! heads in one matmul and dK/dV sum over the group inside the matmul.
//! Memory traffic (CPU path): the score matrix [b, hq, tq, tk] in f32 is materialised a few times
//! in each pass; the graph keeps q, k, v, segment_ids and lse — not P or the mask. The future flash
//! kernel keeps the same saved state (lse) and never materialises S.

use candle_core::{bail, DType, Device, Result, Tensor, D};

use crate::{compute_dtype, custom_backward};

/// Score added at masked positions.
const MASKED: f64 = 1e30;

pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segment_ids: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    crate::profile::forward("causal_attention", || {
        let geo = Geometry::new(q, k, v, segment_ids)?;
        let segment_ids = segment_ids.map(Tensor::detach);
        let attn = Attention { geo, segment_ids, scale, q: q.detach(), k: k.detach(), v: v.detach() };
        let need = [q.track_op(), k.track_op(), v.track_op()];
        if let Some(dev) = gpu::eligible(&attn) {
            let attn = gpu::Flash { dev, attn: attn.contiguous()? };
            let (out, lse) = attn.forward()?;
            return custom_backward::ternary("causal_attention", q, k, v, out.clone(), move |dout| {
                attn.backward(&out, &lse, dout, need)
            });
        }
        if fused_cpu::eligible(&attn) {
            let attn = attn.contiguous_f32()?;
            let (out, lse) = fused_cpu::forward(&attn)?;
            return custom_backward::ternary("causal_attention", q, k, v, out, move |dout| {
                fused_cpu::backward(&attn, &lse, dout, need)
            });
        }
        let (out, lse) = attn.forward()?;
        custom_backward::ternary("causal_attention", q, k, v, out, move |dout| attn.backward(&lse, dout, need))
    })
}

#[derive(Clone, Copy)]
struct Geometry {
    b: usize,
    hq: usize,
    hkv: usize,
    tq: usize,
    tk: usize,
    d: usize,
}

impl Geometry {
    fn new(q: &Tensor, k: &Tensor, v: &Tensor, seg: Option<&Tensor>) -> Result<Self> {
        let (b, hq, tq, d) = q.dims4()?;
        let (bk, hkv, tk, dk) = k.dims4()?;
        if v.dims() != k.dims() || bk != b || dk != d {
            bail!("causal_attention: q {:?}, k {:?}, v {:?} disagree", q.dims(), k.dims(), v.dims())
        }
        if hkv == 0 || hq % hkv != 0 || tq == 0 || tq > tk {
            bail!("causal_attention: need hq % hkv == 0 and 0 < tq <= tk, got q {:?}, k {:?}", q.dims(), k.dims())
        }
        if let Some(seg) = seg {
            if seg.dims() != [b, tk] || seg.dtype().is_float() {
                bail!("causal_attention: segment_ids {:?} {:?}, want [{b}, {tk}] integer", seg.dims(), seg.dtype())
            }
        }
        Ok(Self { b, hq, hkv, tq, tk, d })
    }

    /// Query heads per kv head.
    fn g(&self) -> usize {
        self.hq / self.hkv
    }

    /// Additive mask, 0 where allowed and −MASKED elsewhere: [b or 1, 1, 1, tq, tk], dtype `c`.
    fn mask_bias(&self, seg: Option<&Tensor>, device: &Device, c: DType) -> Result<Tensor> {
        let Self { b, tq, tk, .. } = *self;
        let q_pos = Tensor::arange((tk - tq) as u32, tk as u32, device)?.reshape((tq, 1))?;
        let k_pos = Tensor::arange(0u32, tk as u32, device)?.reshape((1, tk))?;
        let causal = k_pos.broadcast_le(&q_pos)?; // [tq, tk] u8
        let allowed = match seg {
            None => causal.unsqueeze(0)?,
            Some(seg) => {
                let seg_q = seg.narrow(1, tk - tq, tq)?.reshape((b, tq, 1))?;
                let seg_k = seg.reshape((b, 1, tk))?;
                seg_q.broadcast_eq(&seg_k)?.broadcast_mul(&causal)?
            }
        };
        let rows = allowed.dim(0)?;
        allowed.to_dtype(c)?.affine(MASKED, -MASKED)?.reshape((rows, 1, 1, tq, tk))
    }
}

/// Everything the backward needs: detached inputs, segment ids and the scale.
struct Attention {
    geo: Geometry,
    // The mask is rebuilt from these in each pass rather than kept ([b, tq, tk] vs [b, tk]).
    segment_ids: Option<Tensor>,
    scale: f64,
    q: Tensor,
    k: Tensor,
    v: Tensor,
}

impl Attention {
    fn compute_dtype(&self) -> DType {
        compute_dtype(self.q.dtype())
    }

    /// q as [b, hkv, g·tq, d] in the compute dtype (a reshape: query heads of one kv head are adjacent).
    fn grouped(&self, t: &Tensor) -> Result<Tensor> {
        let Geometry { b, hkv, tq, d, .. } = self.geo;
        t.to_dtype(self.compute_dtype())?.reshape((b, hkv, self.geo.g() * tq, d))
    }

    fn ungrouped(&self, t: &Tensor) -> Result<Tensor> {
        let Geometry { b, hq, tq, d, .. } = self.geo;
        t.reshape((b, hq, tq, d))
    }

    /// Masked, scaled scores [b, hkv, g·tq, tk].
    fn scores(&self, qg: &Tensor, k: &Tensor) -> Result<Tensor> {
        let Geometry { b, hkv, tq, tk, .. } = self.geo;
        let g = self.geo.g();
        let bias = self.geo.mask_bias(self.segment_ids.as_ref(), qg.device(), self.compute_dtype())?;
        let s = (qg.matmul(&k.t()?)? * self.scale)?;
        s.reshape((b, hkv, g, tq, tk))?.broadcast_add(&bias)?.reshape((b, hkv, g * tq, tk))
    }

    /// (output [b, hq, tq, d] in q's dtype, lse [b, hkv, g·tq, 1] in the compute dtype).
    fn forward(&self) -> Result<(Tensor, Tensor)> {
        let c = self.compute_dtype();
        let qg = self.grouped(&self.q)?;
        let s = self.scores(&qg, &self.k.to_dtype(c)?)?;
        let m = s.max_keepdim(D::Minus1)?;
        let e = s.broadcast_sub(&m)?.exp()?;
        drop(s);
        let l = e.sum_keepdim(D::Minus1)?;
        // Normalise after P·V: g·tq·d divisions instead of g·tq·tk.
        let o = e.matmul(&self.v.to_dtype(c)?)?.broadcast_div(&l)?;
        let lse = (l.log()? + m)?;
        Ok((self.ungrouped(&o)?.to_dtype(self.q.dtype())?, lse))
    }

    fn backward(&self, lse: &Tensor, dout: &Tensor, need: [bool; 3]) -> Result<[Option<Tensor>; 3]> {
        let c = self.compute_dtype();
        let (qg, k, v) = (self.grouped(&self.q)?, self.k.to_dtype(c)?, self.v.to_dtype(c)?);
        let dout = self.grouped(dout)?;
        let p = self.scores(&qg, &k)?.broadcast_sub(lse)?.exp()?;
        let dv = if need[2] { Some(p.t()?.matmul(&dout)?.to_dtype(self.v.dtype())?) } else { None };
        if !need[0] && !need[1] {
            return Ok([None, None, dv]);
        }
        let dp = dout.matmul(&v.t()?)?;
        let delta = (&p * &dp)?.sum_keepdim(D::Minus1)?;
        let ds = ((p * dp.broadcast_sub(&delta)?)? * self.scale)?;
        let dq = if need[0] { Some(self.ungrouped(&ds.matmul(&k)?)?.to_dtype(self.q.dtype())?) } else { None };
        let dk = if need[1] { Some(ds.t()?.matmul(&qg)?.to_dtype(self.k.dtype())?) } else { None };
        Ok([dq, dk, dv])
    }
}

/// f32 on the CPU, in blocks of query rows: a block's scores S = scale·q kᵀ against keys 0..(its
/// last query's position) only — the causal upper triangle beyond the block is never computed —
/// masked, turned into P row by row in place, then O = P v; the backward recomputes P per block as
/// the module comment says. Forward tasks are (batch, query head) pairs, backward tasks (batch, kv
/// head) pairs (each owns its dK, dV and its group's dQ), spread over rayon's threads.
mod fused_cpu {
    use candle_core::{DType, Result, Tensor};
    use rayon::prelude::*;

    use super::{Attention, Geometry};
    use crate::cpu::{self, vmath, Mat};
    use crate::custom_backward::Value;

    /// Query rows per block.
    const BQ: usize = 64;

    pub fn eligible(a: &Attention) -> bool {
        cpu::eligible(&[&a.q, &a.k, &a.v])
    }

    impl Attention {
        pub(super) fn contiguous_f32(self) -> Result<Self> {
            let seg = self.segment_ids.map(|s| s.to_dtype(DType::I64)?.contiguous()).transpose()?;
            Ok(Self {
                q: self.q.contiguous()?,
                k: self.k.contiguous()?,
                v: self.v.contiguous()?,
                segment_ids: seg,
                ..self
            })
        }
    }

    /// A block of query rows of one (batch, head): rows i0..i0+len of that head's queries.
    struct Block<'a> {
        geo: &'a Geometry,
        seg: Option<&'a [i64]>,
        batch: usize,
        /// First query row of the block and its row count.
        i0: usize,
        len: usize,
    }

    impl Block<'_> {
        /// Keys the block's last row may read: 0..kend.
        fn kend(&self) -> usize {
            self.geo.tk - self.geo.tq + self.i0 + self.len
        }

        /// Masks row r of `s` (−∞ where not allowed, 0.0 past the row's own position) and returns
        /// the prefix 0..=p that holds its allowed keys.
        fn mask<'s>(&self, s: &'s mut [f32], r: usize) -> &'s mut [f32] {
            let p = self.geo.tk - self.geo.tq + self.i0 + r;
            let (allowed, past) = s.split_at_mut(p + 1);
            past.fill(0.0);
            if let Some(seg) = self.seg {
                let seg = &seg[self.batch * self.geo.tk..(self.batch + 1) * self.geo.tk];
                for (x, sj) in allowed.iter_mut().zip(seg) {
                    if *sj != seg[p] {
                        *x = f32::NEG_INFINITY;
                    }
                }
            }
            allowed
        }
    }

    /// (out [b, hq, tq, d], lse per query row [b·hq·tq]).
    pub fn forward(a: &Attention) -> Result<(Value, Vec<f32>)> {
        let geo = a.geo;
        let Geometry { b, hq, tq, tk, d, .. } = geo;
        let g = geo.g();
        let seg = a.segment_ids.as_ref().map(|s| s.flatten_all()?.to_vec1::<i64>()).transpose()?;
        let mut out = vec![0f32; b * hq * tq * d];
        let mut lse = vec![0f32; b * hq * tq];
        let scale = a.scale as f32;
        cpu::read(&a.q, |q| {
            cpu::read(&a.k, |k| {
                cpu::read(&a.v, |v| {
                    let heads = out.par_chunks_mut(tq * d).zip(lse.par_chunks_mut(tq)).enumerate();
                    heads.try_for_each(|(bh, (out, lse))| -> Result<()> {
                        let (batch, h) = (bh / hq, bh % hq);
                        let kv = (batch * geo.hkv + h / g) * tk * d;
                        let (k, v) = (&k[kv..kv + tk * d], &v[kv..kv + tk * d]);
                        let q = &q[bh * tq * d..(bh + 1) * tq * d];
                        let mut s = vec![0f32; BQ.min(tq) * tk];
                        for i0 in (0..tq).step_by(BQ) {
                            let blk = Block { geo: &geo, seg: seg.as_deref(), batch, i0, len: BQ.min(tq - i0) };
                            let (len, kend) = (blk.len, blk.kend());
                            let s = &mut s[..len * kend];
                            let qb = Mat::rows(&q[i0 * d..(i0 + len) * d], len, d);
                            cpu::matmul(s, kend, qb, Mat::rows(k, kend, d).t(), scale, false, false)?;
                            let mut inv = [0f32; BQ];
                            for r in 0..len {
                                let row = blk.mask(&mut s[r * kend..(r + 1) * kend], r);
                                let m = vmath::max(row);
                                let l = vmath::exp_shifted(row, m);
                                lse[i0 + r] = m + l.ln();
                                inv[r] = 1.0 / l;
                            }
                            let o = &mut out[i0 * d..(i0 + len) * d];
                            cpu::matmul(o, d, Mat::rows(s, len, kend), Mat::rows(v, kend, d), 1.0, false, false)?;
                            for (row, inv) in o.chunks_exact_mut(d).zip(inv) {
                                vmath::scale(row, inv);
                            }
                        }
                        Ok(())
                    })
                })
            })
        })????;
        Ok((Value::host(out, &[b, hq, tq, d]), lse))
    }

    pub fn backward(a: &Attention, lse: &[f32], dout: &Tensor, need: [bool; 3]) -> Result<[Option<Tensor>; 3]> {
        let geo = a.geo;
        let Geometry { b, hq, hkv, tq, tk, d } = geo;
        let g = geo.g();
        let seg = a.segment_ids.as_ref().map(|s| s.flatten_all()?.to_vec1::<i64>()).transpose()?;
        let dout = dout.to_dtype(DType::F32)?.contiguous()?;
        let (mut dq, mut dk, mut dv) =
            (vec![0f32; b * hq * tq * d], vec![0f32; b * hkv * tk * d], vec![0f32; b * hkv * tk * d]);
        let scale = a.scale as f32;
        // Few tasks: let each product use the threads instead.
        let threads = b * hkv < rayon::current_num_threads();
        cpu::read(&a.q, |q| {
            cpu::read(&a.k, |k| {
                cpu::read(&a.v, |v| {
                    cpu::read(&dout, |dout| {
                        let tasks =
                            dq.par_chunks_mut(g * tq * d).zip(dk.par_chunks_mut(tk * d)).zip(dv.par_chunks_mut(tk * d));
                        tasks.enumerate().try_for_each(|(bk, ((dq, dk), dv))| -> Result<()> {
                            let batch = bk / hkv;
                            let (k, v) = (&k[bk * tk * d..(bk + 1) * tk * d], &v[bk * tk * d..(bk + 1) * tk * d]);
                            let mut p = vec![0f32; BQ.min(tq) * tk];
                            let mut ds = vec![0f32; BQ.min(tq) * tk];
                            for j in 0..g {
                                let bh = bk * g + j;
                                let q = &q[bh * tq * d..(bh + 1) * tq * d];
                                let dout = &dout[bh * tq * d..(bh + 1) * tq * d];
                                let lse = &lse[bh * tq..(bh + 1) * tq];
                                for i0 in (0..tq).step_by(BQ) {
                                    let blk = Block { geo: &geo, seg: seg.as_deref(), batch, i0, len: BQ.min(tq - i0) };
                                    let (len, kend) = (blk.len, blk.kend());
                                    let (p, ds) = (&mut p[..len * kend], &mut ds[..len * kend]);
                                    let qb = Mat::rows(&q[i0 * d..(i0 + len) * d], len, d);
                                    let dob = Mat::rows(&dout[i0 * d..(i0 + len) * d], len, d);
                                    cpu::matmul(p, kend, qb, Mat::rows(k, kend, d).t(), scale, false, threads)?;
                                    for r in 0..len {
                                        let row = blk.mask(&mut p[r * kend..(r + 1) * kend], r);
                                        vmath::exp_shifted(row, lse[i0 + r]);
                                    }
                                    let pm = Mat::rows(p, len, kend);
                                    cpu::matmul(&mut dv[..kend * d], d, pm.t(), dob, 1.0, true, threads)?;
                                    cpu::matmul(ds, kend, dob, Mat::rows(v, kend, d).t(), 1.0, false, threads)?;
                                    for (prow, dsrow) in p.chunks_exact(kend).zip(ds.chunks_exact_mut(kend)) {
                                        let delta = vmath::dot(prow, dsrow);
                                        for (x, pj) in dsrow.iter_mut().zip(prow) {
                                            *x = pj * (*x - delta) * scale;
                                        }
                                    }
                                    let dsm = Mat::rows(ds, len, kend);
                                    let dqb = &mut dq[(j * tq + i0) * d..(j * tq + i0 + len) * d];
                                    cpu::matmul(dqb, d, dsm, Mat::rows(k, kend, d), 1.0, false, threads)?;
                                    cpu::matmul(&mut dk[..kend * d], d, dsm.t(), qb, 1.0, true, threads)?;
                                }
                            }
                            Ok(())
                        })
                    })
                })
            })
        })?????;
        let dq = cpu::tensor(dq, &[b, hq, tq, d])?;
        let (dk, dv) = (cpu::tensor(dk, &[b, hkv, tk, d])?, cpu::tensor(dv, &[b, hkv, tk, d])?);
        Ok([need[0].then_some(dq), need[1].then_some(dk), need[2].then_some(dv)])
    }
}

/// Flash-style kernels (`cuda/attention.cu`): bf16, head dim 32, 64 or 128, tensor cores. The forward
/// saves lse [b, hq, tq] (f32); the backward recomputes P tile by tile.
mod gpu {
    use candle_core::{DType, Result, Tensor};

    use super::{Attention, Geometry};
    // Tile sizes (query rows per forward block, keys per backward block, rows per delta block) and
    // the kernels come from attention.cu's launch contract.
    use crate::launch::{self, attention, Arg, Buf, Gpu};

    pub fn eligible(a: &Attention) -> Option<Gpu> {
        let Geometry { b, hq, hkv, d, .. } = a.geo;
        let shapes_ok = matches!(d, 32 | 64 | 128) && b <= 65535 && hq <= 65535 && hkv <= 65535;
        Gpu::of(&a.q).filter(|_| shapes_ok && a.q.dtype() == DType::BF16)
    }

    impl Attention {
        pub(super) fn contiguous(self) -> Result<Self> {
            let seg = self.segment_ids.map(|s| s.to_dtype(DType::U32)?.contiguous()).transpose()?;
            Ok(Self {
                q: self.q.contiguous()?,
                k: self.k.to_dtype(DType::BF16)?.contiguous()?,
                v: self.v.to_dtype(DType::BF16)?.contiguous()?,
                segment_ids: seg,
                ..self
            })
        }
    }

    pub struct Flash {
        pub dev: Gpu,
        pub attn: Attention,
    }

    impl Flash {
        fn seg_ptr(&self) -> Result<Buf> {
            launch::buf_or_null(self.attn.segment_ids.as_ref())
        }

        fn dims(&self) -> [Arg; 6] {
            let Geometry { b, hq, hkv, tq, tk, .. } = self.attn.geo;
            [
                Arg::I32(b as i32),
                Arg::I32(hq as i32),
                Arg::I32(hkv as i32),
                Arg::I32(tq as i32),
                Arg::I32(tk as i32),
                Arg::F32(self.attn.scale as f32),
            ]
        }

        /// (out [b, hq, tq, d] bf16, lse [b, hq, tq] f32).
        pub fn forward(&self) -> Result<(Tensor, Tensor)> {
            let a = &self.attn;
            let Geometry { b, hq, tq, d, .. } = a.geo;
            let out = self.dev.output((b, hq, tq, d), DType::BF16)?;
            let lse = self.dev.output((b, hq, tq), DType::F32)?;
            let mut args = vec![
                Arg::Buf(launch::buf(&a.q)?),
                Arg::Buf(launch::buf(&a.k)?),
                Arg::Buf(launch::buf(&a.v)?),
                Arg::Buf(self.seg_ptr()?),
                Arg::Buf(launch::buf(&out)?),
                Arg::Buf(launch::buf(&lse)?),
            ];
            args.extend(self.dims());
            let grid = (tq.div_ceil(attention::K_FWD_BQ) as u32, hq as u32, b as u32);
            let kernel = match d {
                32 => &attention::OXT_ATTN_FWD_BF16_D32,
                64 => &attention::OXT_ATTN_FWD_BF16_D64,
                _ => &attention::OXT_ATTN_FWD_BF16_D128,
            };
            self.dev.launch(kernel, grid, 0, &args)?;
            Ok((out, lse))
        }

        pub fn backward(
            &self,
            out: &Tensor,
            lse: &Tensor,
            dout: &Tensor,
            need: [bool; 3],
        ) -> Result<[Option<Tensor>; 3]> {
            let a = &self.attn;
            let Geometry { b, hq, hkv, tq, tk, d } = a.geo;
            let dout = dout.to_dtype(DType::BF16)?.contiguous()?;
            let rows = b * hq * tq;
            let delta = self.dev.output(rows, DType::F32)?;
            let args = [
                Arg::Buf(launch::buf(out)?),
                Arg::Buf(launch::buf(&dout)?),
                Arg::Buf(launch::buf(&delta)?),
                Arg::I64(rows as i64),
                Arg::I32(d as i32),
            ];
            let grid = launch::blocks(rows, attention::K_DELTA_ROWS_PER_BLOCK, i32::MAX as usize);
            self.dev.launch(&attention::OXT_ATTN_BWD_DELTA_BF16, (grid, 1, 1), 0, &args)?;
            let dq_acc = self.dev.zeros((b, hq, tq, d), DType::F32)?;
            let dk = self.dev.output((b, hkv, tk, d), DType::BF16)?;
            let dv = self.dev.output((b, hkv, tk, d), DType::BF16)?;
            let mut args = vec![
                Arg::Buf(launch::buf(&a.q)?),
                Arg::Buf(launch::buf(&a.k)?),
                Arg::Buf(launch::buf(&a.v)?),
                Arg::Buf(self.seg_ptr()?),
                Arg::Buf(launch::buf(&dout)?),
                Arg::Buf(launch::buf(lse)?),
                Arg::Buf(launch::buf(&delta)?),
                Arg::Buf(launch::buf(&dq_acc)?),
                Arg::Buf(launch::buf(&dk)?),
                Arg::Buf(launch::buf(&dv)?),
            ];
            args.extend(self.dims());
            let (keys, kernel) = match d {
                32 => (attention::K_BWD_BK_D32, &attention::OXT_ATTN_BWD_BF16_D32),
                64 => (attention::K_BWD_BK_D64, &attention::OXT_ATTN_BWD_BF16_D64),
                _ => (attention::K_BWD_BK_D128, &attention::OXT_ATTN_BWD_BF16_D128),
            };
            let grid = (tk.div_ceil(keys) as u32, hkv as u32, b as u32);
            self.dev.launch(kernel, grid, 0, &args)?;
            let dq = dq_acc.to_dtype(a.q.dtype())?;
            Ok([need[0].then_some(dq), need[1].then_some(dk), need[2].then_some(dv)])
        }
    }
}
