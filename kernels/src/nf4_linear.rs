//! Linear layer over a frozen NF4 (bitsandbytes 4-bit NormalFloat) weight: y = x dequant(W)ᵀ + b.
//!
//! Shapes: x [..., in], W [out, in] stored as [`Nf4Packed`], b [out] → y [..., out] in `compute_dtype`
//! (x is cast to it first).
//! Dequantisation (bitsandbytes): element e of the row-major W is
//! `code[nibble(e)] * absmax[e / blocksize]` in f32, rounded to the weight's storage dtype, then
//! cast to the compute dtype. Byte i holds element 2i in its HIGH nibble and 2i+1 in the low one.
//! With double quantisation, `absmax[b] = map[q[b]] * nested[b / nested_blocksize] + offset` (f32).
//! Forward:  y = x Wᵀ + b, W dequantised one block of output rows at a time.
//! Backward: dx = dy W, again row-block-wise. W and b are frozen: no weight gradient exists.
//! Memory: at most one row block of W (≈ `DEFAULT_CHUNK_ELEMS` elements) is dense at a time; the graph
//! keeps x and a handle on the packed weight, never a dense copy of W.
//! Memory traffic (m = rows of x): forward reads x (m·in), the packed W (out·in/2 bytes + absmax),
//! writes one dense row block at a time and y (m·out); backward reads dy and the packed W again.

use candle_core::{bail, DType, Device, Result, Tensor, D};

use crate::custom_backward;

/// Elements of W dequantised at once by the CPU reference (4 M ≈ 16 MB in f32).
pub const DEFAULT_CHUNK_ELEMS: usize = 1 << 22;

/// The per-block scales of an NF4 weight.
#[derive(Clone, Debug)]
pub enum Nf4Absmax {
    /// F32 [n_blocks].
    F32(Tensor),
    /// Double quantisation: `q` U8 [n_blocks] codes into `map` F32 [256] (the signed dynamic map),
    /// `nested` F32 [ceil(n_blocks / nested_blocksize)], plus the f32 `offset`.
    Double { q: Tensor, nested: Tensor, map: Tensor, offset: f32, nested_blocksize: usize },
}

/// A packed NF4 weight, as bitsandbytes stores it (kernels-side view; the trainer's `quant` module
/// builds it from its own codec or from a bitsandbytes checkpoint).
#[derive(Clone, Debug)]
pub struct Nf4Packed {
    /// U8 [ceil(out·in / 2)]: two codes per byte, the first element in the high nibble.
    pub packed: Tensor,
    pub absmax: Nf4Absmax,
    /// F32 [16]: the NF4 code values (bitsandbytes' `quant_map`).
    pub code: Tensor,
    /// Elements per absmax block (64 in QLoRA).
    pub blocksize: usize,
    /// (out, in).
    pub shape: (usize, usize),
    /// The dtype the dequantised values are rounded to (the original weight dtype, e.g. bf16), as
    /// bitsandbytes' `dequantize_4bit` returns them.
    pub store_dtype: DType,
}

impl Nf4Packed {
    pub fn device(&self) -> &Device {
        self.packed.device()
    }

    /// The same weight on `device` (packed bytes and scales are copied as they are).
    pub fn to_device(&self, device: &Device) -> Result<Nf4Packed> {
        let absmax = match &self.absmax {
            Nf4Absmax::F32(a) => Nf4Absmax::F32(a.to_device(device)?),
            Nf4Absmax::Double { q, nested, map, offset, nested_blocksize } => Nf4Absmax::Double {
                q: q.to_device(device)?,
                nested: nested.to_device(device)?,
                map: map.to_device(device)?,
                offset: *offset,
                nested_blocksize: *nested_blocksize,
            },
        };
        Ok(Nf4Packed { packed: self.packed.to_device(device)?, absmax, code: self.code.to_device(device)?, ..*self })
    }

    pub fn elem_count(&self) -> usize {
        self.shape.0 * self.shape.1
    }

    /// Checks the tensors against `shape` and `blocksize`.
    pub fn validate(&self) -> Result<()> {
        let n = self.elem_count();
        let n_blocks = n.div_ceil(self.blocksize.max(1));
        if self.blocksize == 0 || !self.blocksize.is_multiple_of(2) {
            bail!("nf4: blocksize {} must be even and > 0", self.blocksize)
        }
        if self.packed.dtype() != DType::U8 || self.packed.elem_count() != n.div_ceil(2) {
            bail!("nf4: packed {:?} {:?} != U8 with {} bytes", self.packed.dtype(), self.packed.dims(), n.div_ceil(2))
        }
        if self.code.dims() != [16] {
            bail!("nf4: code table {:?} != [16]", self.code.dims())
        }
        match &self.absmax {
            Nf4Absmax::F32(a) => {
                if a.elem_count() != n_blocks {
                    bail!("nf4: absmax has {} values, want {n_blocks}", a.elem_count())
                }
            }
            Nf4Absmax::Double { q, nested, map, nested_blocksize, .. } => {
                if q.elem_count() != n_blocks || q.dtype() != DType::U8 {
                    bail!("nf4: quantised absmax {:?} {:?} != U8 [{n_blocks}]", q.dtype(), q.dims())
                }
                if *nested_blocksize == 0 || nested.elem_count() != n_blocks.div_ceil(*nested_blocksize) {
                    bail!("nf4: nested absmax has {} values for {n_blocks} blocks", nested.elem_count())
                }
                if map.elem_count() != 256 {
                    bail!("nf4: nested quant map has {} values, want 256", map.elem_count())
                }
            }
        }
        Ok(())
    }

    /// f32 absmax of blocks [b0, b1).
    fn absmax_range(&self, b0: usize, b1: usize) -> Result<Tensor> {
        match &self.absmax {
            Nf4Absmax::F32(a) => a.flatten_all()?.narrow(0, b0, b1 - b0)?.to_dtype(DType::F32),
            Nf4Absmax::Double { q, nested, map, offset, nested_blocksize: nb } => {
                let q = q.flatten_all()?.narrow(0, b0, b1 - b0)?.to_dtype(DType::U32)?;
                let vals = map.flatten_all()?.to_dtype(DType::F32)?.index_select(&q, 0)?;
                let (n0, n1) = (b0 / nb, b1.div_ceil(*nb));
                let nested = nested.flatten_all()?.to_dtype(DType::F32)?.narrow(0, n0, n1 - n0)?;
                let rep = nested.unsqueeze(1)?.broadcast_as((n1 - n0, *nb))?.flatten_all()?;
                let rep = rep.narrow(0, b0 - n0 * nb, b1 - b0)?;
                (vals * rep)?.affine(1.0, *offset as f64)
            }
        }
    }

    /// Dequantised elements [e0, e1) of the row-major W (e0 must be even), f32 rounded through `store_dtype`.
    fn dequant_elems(&self, e0: usize, e1: usize) -> Result<Tensor> {
        debug_assert!(e0.is_multiple_of(2) && e1 > e0);
        let bs = self.blocksize;
        // Byte pair table: byte b → (code[b >> 4], code[b & 15]), so one gather yields elements in order.
        let code = self.code.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec1::<f32>()?;
        let pairs: Vec<f32> = (0..256usize).flat_map(|b| [code[b >> 4], code[b & 15]]).collect();
        let pairs = Tensor::from_vec(pairs, (256, 2), self.device())?;
        let (p0, p1) = (e0 / 2, e1.div_ceil(2));
        let bytes = self.packed.flatten_all()?.narrow(0, p0, p1 - p0)?.to_dtype(DType::U32)?;
        let vals = pairs.index_select(&bytes, 0)?.flatten_all()?.narrow(0, 0, e1 - e0)?;
        let (b0, b1) = (e0 / bs, e1.div_ceil(bs));
        let scale = self.absmax_range(b0, b1)?;
        let scale = scale.unsqueeze(1)?.broadcast_as((b1 - b0, bs))?.flatten_all()?.narrow(0, e0 - b0 * bs, e1 - e0)?;
        let w = (vals * scale)?;
        if self.store_dtype == DType::F32 {
            Ok(w)
        } else {
            w.to_dtype(self.store_dtype)?.to_dtype(DType::F32)
        }
    }

    /// Rows [r0, r1) of W dequantised into `dtype`: [r1 - r0, in].
    pub fn dequantize_rows(&self, r0: usize, r1: usize, dtype: DType) -> Result<Tensor> {
        let inf = self.shape.1;
        if r1 <= r0 || r1 > self.shape.0 {
            bail!("nf4: row range {r0}..{r1} outside [0, {})", self.shape.0)
        }
        let (e0, e1) = (r0 * inf, r1 * inf);
        if let Some(dev) = crate::launch::Gpu::of(&self.packed).filter(|_| dtype == DType::BF16) {
            return gpu::dequant(&dev, self, e0, e1)?.reshape((r1 - r0, inf));
        }
        // Start at an even element so whole bytes are read; drop the extra leading element if any.
        let start = e0 - e0 % 2;
        let w = self.dequant_elems(start, e1)?.narrow(0, e0 - start, e1 - e0)?;
        w.reshape((r1 - r0, inf))?.to_dtype(dtype)
    }

    /// The whole W [out, in] in `dtype` (for merging, export and tests — not used by the forward).
    pub fn dequantize(&self, dtype: DType) -> Result<Tensor> {
        self.dequantize_rows(0, self.shape.0, dtype)
    }

    /// Output rows per dequantised block for a budget of `chunk_elems` elements.
    fn rows_per_chunk(&self, chunk_elems: usize) -> usize {
        (chunk_elems / self.shape.1.max(1)).clamp(1, self.shape.0.max(1))
    }
}

/// y = x dequant(W)ᵀ + b in `compute_dtype`; backward gives dx only.
pub fn nf4_linear(x: &Tensor, w: &Nf4Packed, bias: Option<&Tensor>, compute_dtype: DType) -> Result<Tensor> {
    nf4_linear_chunked(x, w, bias, compute_dtype, DEFAULT_CHUNK_ELEMS)
}

/// [`nf4_linear`] with an explicit dequantisation budget (elements of W dense at once); tests use
/// small budgets to exercise the row-block loop.
pub fn nf4_linear_chunked(
    x: &Tensor,
    w: &Nf4Packed,
    bias: Option<&Tensor>,
    compute_dtype: DType,
    chunk_elems: usize,
) -> Result<Tensor> {
    crate::profile::forward("nf4_linear", || {
        let (out_f, in_f) = w.shape;
        if x.rank() < 2 || x.dim(D::Minus1)? != in_f {
            bail!("nf4_linear: x {:?} does not match W [{out_f}, {in_f}] (want [..., {in_f}])", x.dims())
        }
        if let Some(b) = bias {
            if b.dims() != [out_f] {
                bail!("nf4_linear: bias {:?} != [{out_f}]", b.dims())
            }
        }
        w.validate()?;
        let x = if x.dtype() == compute_dtype { x.clone() } else { x.to_dtype(compute_dtype)? };
        let bias = bias.map(|b| b.detach().to_dtype(compute_dtype)).transpose()?;
        let rows = w.rows_per_chunk(chunk_elems);
        // On CUDA each row block is dequantised by a kernel (`cuda/nf4_linear.cu`) straight into bf16 and
        // multiplied by cuBLAS; only that block is ever dense.
        let y = forward(&x.detach(), w, bias.as_ref(), compute_dtype, rows)?;
        let w = w.clone();
        custom_backward::unary("nf4_linear", &x, y, move |dy| input_grad(dy, &w, compute_dtype, rows))
    })
}

fn forward(x: &Tensor, w: &Nf4Packed, bias: Option<&Tensor>, dt: DType, rows: usize) -> Result<Tensor> {
    let (out_f, _) = w.shape;
    let mut dims = x.dims().to_vec();
    let x2 = x.flatten_to(D::Minus2)?;
    let mut parts = Vec::with_capacity(out_f.div_ceil(rows));
    let mut r0 = 0;
    while r0 < out_f {
        let r1 = (r0 + rows).min(out_f);
        let wc = w.dequantize_rows(r0, r1, dt)?;
        parts.push(x2.matmul(&wc.t()?)?);
        r0 = r1;
    }
    let y = if parts.len() == 1 { parts.pop().expect("one part") } else { Tensor::cat(&parts, 1)? };
    let y = match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    if let Some(last) = dims.last_mut() {
        *last = out_f;
    }
    y.reshape(dims)
}

fn input_grad(dy: &Tensor, w: &Nf4Packed, dt: DType, rows: usize) -> Result<Tensor> {
    let (out_f, in_f) = w.shape;
    let mut dims = dy.dims().to_vec();
    let dy2 = dy.flatten_to(D::Minus2)?.to_dtype(dt)?;
    let mut dx: Option<Tensor> = None;
    let mut r0 = 0;
    while r0 < out_f {
        let r1 = (r0 + rows).min(out_f);
        let wc = w.dequantize_rows(r0, r1, dt)?;
        let part = dy2.narrow(1, r0, r1 - r0)?.contiguous()?.matmul(&wc)?;
        dx = Some(match dx {
            Some(acc) => (acc + part)?,
            None => part,
        });
        r0 = r1;
    }
    let Some(dx) = dx else { bail!("nf4_linear: weight has no rows") };
    if let Some(last) = dims.last_mut() {
        *last = in_f;
    }
    dx.reshape(dims)
}

/// Dequantisation kernel (`cuda/nf4_linear.cu`): elements [e0, e1) of W → bf16, rounded through the
/// storage dtype exactly as the CPU path does.
mod gpu {
    use candle_core::{bail, DType, Result, Tensor};

    use super::{Nf4Absmax, Nf4Packed};
    use crate::launch::{self, Arg, Gpu};

    const MAX_BLOCKS: usize = 65535 * 32;

    fn f32c(t: &Tensor) -> Result<Tensor> {
        t.flatten_all()?.to_dtype(DType::F32)?.contiguous()
    }

    pub fn dequant(dev: &Gpu, w: &Nf4Packed, e0: usize, e1: usize) -> Result<Tensor> {
        let n = e1 - e0;
        let store = match w.store_dtype {
            DType::F32 => 0,
            DType::BF16 => 1,
            DType::F16 => 2,
            other => bail!("nf4: storage dtype {other:?} is not supported on CUDA"),
        };
        let packed = w.packed.flatten_all()?.contiguous()?;
        let code = f32c(&w.code)?;
        // Unused pointers are null; the kernel reads `absmax` when it is non-null, else the double-quant triple.
        let (absmax, q, nested, map, offset, nb) = match &w.absmax {
            Nf4Absmax::F32(a) => (Some(f32c(a)?), None, None, None, 0f32, 1usize),
            Nf4Absmax::Double { q, nested, map, offset, nested_blocksize } => (
                None,
                Some(q.flatten_all()?.contiguous()?),
                Some(f32c(nested)?),
                Some(f32c(map)?),
                *offset,
                *nested_blocksize,
            ),
        };
        let out = dev.output(n, DType::BF16)?;
        let args = [
            Arg::Buf(launch::buf(&packed)?),
            Arg::Buf(launch::buf_or_null(absmax.as_ref())?),
            Arg::Buf(launch::buf_or_null(q.as_ref())?),
            Arg::Buf(launch::buf_or_null(nested.as_ref())?),
            Arg::Buf(launch::buf_or_null(map.as_ref())?),
            Arg::F32(offset),
            Arg::I32(nb as i32),
            Arg::Buf(launch::buf(&code)?),
            Arg::I32(w.blocksize as i32),
            Arg::I64(e0 as i64),
            Arg::I64(n as i64),
            Arg::I32(store),
            Arg::Buf(launch::buf(&out)?),
        ];
        let grid = launch::blocks(n, launch::nf4_linear::K_THREADS, MAX_BLOCKS);
        dev.launch(&launch::nf4_linear::OXT_NF4_DEQUANT_BF16, (grid, 1, 1), 0, &args)?;
        Ok(out)
    }
}
