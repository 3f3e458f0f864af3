//! What the ops' fused CPU paths share: f32 access to candle's CPU storage, a checked wrapper around
//! the `gemm` crate (the engine behind candle's CPU matmul) for products on sub-blocks, and row loops
//! with vectorised math (`vmath`). The fused paths take contiguous f32 tensors on the CPU; other
//! dtypes (bf16 on the CPU, f64 in the finite-difference tests) keep the ops' tensor compositions.
//! Work is split over rayon's threads (`RAYON_NUM_THREADS`, as candle's matmul) in fixed pieces, so
//! results do not depend on the number of threads that happen to run them.

pub mod vmath;

use candle_core::{bail, CpuStorage, DType, Device, Result, Storage, Tensor};
use rayon::prelude::*;

/// Products with at most this many rows of `a` (a decode step's tokens) skip `gemm`, whose AVX-512
/// path is slower than a dot product per output for them (measured: greedy decoding at batch 4 ran
/// at half the tokens/s of the AVX2 path), and run as dot products or row updates instead.
const THIN: usize = 16;

/// True when every tensor is f32 on the CPU (the fused CPU paths' domain).
pub fn eligible(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// Calls `f` with the f32 elements of `t` in row-major order (copied only when `t` is a strided view).
pub fn read<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        bail!("fused CPU op: want an f32 CPU tensor, got {:?} on {:?}", t.dtype(), t.device().location())
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(f(&data[start..end])),
        None => {
            drop(storage);
            let dense = t.flatten_all()?.to_vec1::<f32>()?;
            Ok(f(&dense))
        }
    }
}

/// A CPU f32 tensor of `shape` that owns `data` (no copy).
pub fn tensor(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// A matrix view: element (i, j) is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major rows × cols starting at `data[0]`.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat { data, rows, cols, rs: cols, cs: 1 }
    }

    /// The transpose (a view).
    pub fn t(self) -> Self {
        Mat { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, ..self }
    }

    fn fits(&self) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// dst (row-major m × n, row stride `dst_rs`) = beta·a·b, or dst += beta·a·b when `accumulate`.
/// `threads`: split the product over rayon's threads (false inside an already-parallel loop).
pub fn matmul(
    dst: &mut [f32],
    dst_rs: usize,
    a: Mat,
    b: Mat,
    beta: f32,
    accumulate: bool,
    threads: bool,
) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let dst_fits = m == 0 || n == 0 || (m - 1) * dst_rs + n <= dst.len();
    if b.rows != k || !a.fits() || !b.fits() || !dst_fits || dst_rs < n {
        bail!("fused CPU matmul: [{m}×{k}]·[{}×{n}] into {} elements (row stride {dst_rs})", b.rows, dst.len())
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            (0..m).for_each(|i| dst[i * dst_rs..i * dst_rs + n].fill(0.0));
        }
        return Ok(());
    }
    if m <= THIN && a.cs == 1 && thin(dst, dst_rs, a, b, beta, accumulate, threads) {
        return Ok(());
    }
    let parallelism = match rayon::current_num_threads() {
        t if threads && t > 1 => gemm::Parallelism::Rayon(t),
        _ => gemm::Parallelism::None,
    };
    // SAFETY: every index the product touches was bounds-checked above (`fits`, `dst_fits`), the
    // strides are non-negative, and `dst` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
    Ok(())
}

/// `matmul` for a thin `a` (contiguous rows), when b has unit stride along k (dot products: each
/// column of b streamed once against four rows of a, columns in parallel) or along n (row updates);
/// false for other layouts.
fn thin(dst: &mut [f32], dst_rs: usize, a: Mat, b: Mat, beta: f32, accumulate: bool, threads: bool) -> bool {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let a_row = |i: usize| &a.data[i * a.rs..i * a.rs + k];
    let store = |d: &mut f32, v: f32| *d = if accumulate { *d + v } else { v };
    if b.rs == 1 {
        // Column j of b is b.data[j·cs ..][..k]: out[j][i] = a_i · b_j, then scattered into dst.
        let mut out = vec![0f32; n * m];
        let col = |(j, out): (usize, &mut [f32])| {
            let bj = &b.data[j * b.cs..j * b.cs + k];
            let mut quad = out.chunks_exact_mut(4);
            for (q, o) in (&mut quad).enumerate() {
                let i = 4 * q;
                vmath::dot4(a_row(i), a_row(i + 1), a_row(i + 2), a_row(i + 3), bj, o);
                o.iter_mut().for_each(|o| *o *= beta);
            }
            let done = m / 4 * 4;
            for (i, o) in quad.into_remainder().iter_mut().enumerate() {
                *o = beta * vmath::dot(a_row(done + i), bj);
            }
        };
        if threads && n * k >= 1 << 16 {
            out.par_chunks_mut(m).enumerate().with_min_len(64).for_each(col);
        } else {
            out.chunks_mut(m).enumerate().for_each(col);
        }
        for (j, col) in out.chunks(m).enumerate() {
            for (i, v) in col.iter().enumerate() {
                store(&mut dst[i * dst_rs + j], *v);
            }
        }
        return true;
    }
    if b.cs == 1 {
        for i in 0..m {
            let row = &mut dst[i * dst_rs..i * dst_rs + n];
            if !accumulate {
                row.fill(0.0);
            }
            for (p, &x) in a_row(i).iter().enumerate() {
                vmath::axpy(row, beta * x, &b.data[p * b.rs..p * b.rs + n]);
            }
        }
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_matches_the_definition_on_views_and_accumulates() {
        let a: Vec<f32> = (0..6).map(|x| x as f32).collect(); // 2×3
        let b: Vec<f32> = (0..12).map(|x| (x as f32) * 0.5 - 2.0).collect(); // 3×4
        let mut c = vec![1.0f32; 2 * 5];
        matmul(&mut c, 5, Mat::rows(&a, 2, 3), Mat::rows(&b, 3, 4), 2.0, true, true).unwrap();
        for i in 0..2 {
            for j in 0..4 {
                let want: f32 = (0..3).map(|p| a[i * 3 + p] * b[p * 4 + j]).sum::<f32>() * 2.0 + 1.0;
                assert!((c[i * 5 + j] - want).abs() < 1e-5, "({i},{j}) {} vs {want}", c[i * 5 + j]);
            }
            assert_eq!(c[i * 5 + 4], 1.0, "the padding column is not touched");
        }
        // aᵀ·a through a transposed view: 3×3, overwriting.
        let mut g = vec![7.0f32; 9];
        matmul(&mut g, 3, Mat::rows(&a, 2, 3).t(), Mat::rows(&a, 2, 3), 1.0, false, false).unwrap();
        assert_eq!(g[0], 9.0);
        assert_eq!(g[4], 1.0 + 16.0);
        assert!(matmul(&mut g, 3, Mat::rows(&a, 2, 3), Mat::rows(&a, 2, 3), 1.0, false, false).is_err());
    }

    /// Thin products (dot products or row updates) agree with gemm's on the same operands.
    #[test]
    fn thin_products_match_gemm() {
        let (k, n) = (300, 257);
        let a: Vec<f32> = (0..40 * k).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 53) % 97) as f32 / 48.0 - 1.0).collect();
        for m in [1, 4, 6, THIN] {
            let a = Mat::rows(&a[..m * k], m, k);
            for b in [Mat::rows(&w, n, k).t(), Mat::rows(&w, k, n)] {
                let (mut thin_out, mut wide_out) = (vec![0.5f32; m * n], vec![0.5f32; 17 * n]);
                matmul(&mut thin_out, n, a, b, 0.5, true, true).unwrap();
                // The same product through gemm: pad `a` to more rows than THIN.
                let mut big = vec![0f32; 17 * k];
                big[..m * k].copy_from_slice(&a.data[..m * k]);
                wide_out[m * n..].fill(0.0);
                matmul(&mut wide_out, n, Mat::rows(&big, 17, k), b, 0.5, true, true).unwrap();
                for (i, (x, y)) in thin_out.iter().zip(&wide_out[..m * n]).enumerate() {
                    assert!((x - y).abs() <= 1e-4 * y.abs().max(1.0), "m={m} element {i}: {x} vs {y}");
                }
            }
        }
    }
}
