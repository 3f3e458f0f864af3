//! Where our CUDA kernels run, behind one interface: a real GPU through cudarc (feature `cuda`),
//! or the host emulation of CUDA on the CPU (`kernels/emu`: the same `.cu` sources compiled by
//! g++, each CUDA thread a fiber, with race, bounds and layout checks).
//!
//! Each op's launch glue (grids, blocks, shared memory, argument order, outputs) is written once
//! against [`Gpu`] and runs unchanged on both, so a wrong grid or argument list fails under
//! emulation as it would on a GPU. GEMMs are candle's `matmul` (cuBLAS on CUDA, candle's CPU GEMM
//! under emulation).
//!
//! Emulation is chosen per thread ([`emulate_on_this_thread`]): CPU tensors of the dtypes the
//! kernels take then run through the emulated kernels instead of the CPU reference paths.
//! Kernels take raw addresses of contiguous row-major buffers (see each `.cu` file's launch
//! contract). Outputs are fresh tensors the kernel fills completely; under emulation (and on a
//! GPU when [`set_poison_outputs`] is on) they are NaN-filled first, so an element a kernel
//! forgets to write fails the comparison.

#[cfg(feature = "cuda")]
mod cuda;
pub mod emulated;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{bail, DType, Device, Result, Shape, Storage, Tensor};

/// The device a kernel launch goes to.
#[derive(Clone)]
pub enum Gpu {
    #[cfg(feature = "cuda")]
    Cuda(candle_core::cuda::CudaDevice),
    /// CPU tensors, kernels run by the host emulation of CUDA.
    Emulated,
}

/// One `.cu` file: its kernels' module (PTX on CUDA; the emulator registers every entry point
/// by name).
pub(crate) struct Module {
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub name: &'static str,
    #[cfg(feature = "cuda")]
    pub ptx: &'static str,
}

macro_rules! module {
    ($ident:ident, $file:literal) => {
        pub(crate) const $ident: Module = Module {
            name: concat!("oxtune_", $file),
            #[cfg(feature = "cuda")]
            ptx: include_str!(concat!(env!("OUT_DIR"), "/", $file, ".ptx")),
        };
    };
}

module!(ADAMW, "adamw");
module!(ATTENTION, "attention");
module!(CROSS_ENTROPY, "cross_entropy");
module!(LORA_LINEAR, "lora_linear");
module!(NF4_LINEAR, "nf4_linear");
module!(RMS_NORM, "rms_norm");
module!(ROPE, "rope");
module!(SWIGLU, "swiglu");

/// One entry point of a module and the threads per block of its launch contract: generated from the
/// `.cu` sources (their `__launch_bounds__`), so the name and the block size are written once, there.
pub(crate) struct Kernel {
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub module: &'static Module,
    pub name: &'static str,
    pub threads: u32,
}

impl Kernel {
    /// The block of a 1-D launch.
    pub fn block(&self) -> (u32, u32, u32) {
        (self.threads, 1, 1)
    }
}

// Per `.cu` file (`launch::rms_norm`, …): a `Kernel` per entry point and its file-scope constants.
include!(concat!(env!("OUT_DIR"), "/launch_table.rs"));

thread_local! {
    static EMULATE: Cell<bool> = const { Cell::new(false) };
}

/// Runs the GPU code path of every op on this thread's CPU tensors through the host emulation
/// of CUDA (bf16 and the other dtypes the kernels take; other tensors keep the CPU path).
pub fn emulate_on_this_thread(on: bool) {
    EMULATE.with(|e| e.set(on));
}

/// Whether this thread emulates CUDA.
pub fn emulating() -> bool {
    EMULATE.with(Cell::get)
}

static POISON: AtomicBool = AtomicBool::new(false);

/// Tests: fill every kernel output with NaN before the launch on a real GPU (always done under
/// emulation).
pub fn set_poison_outputs(on: bool) {
    POISON.store(on, Ordering::SeqCst);
}

/// A buffer argument: address of the first byte, bytes the kernel may touch, and the byte offset
/// of the address within its allocation (the emulator keeps the GPU's 256-byte alignment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    pub addr: u64,
    pub len: u64,
    pub offset: u64,
}

impl Buf {
    /// A null pointer argument (an optional input that is absent).
    pub const NULL: Buf = Buf { addr: 0, len: 0, offset: 0 };
}

/// A kernel argument, pushed in order.
pub enum Arg {
    Buf(Buf),
    I32(i32),
    I64(i64),
    F32(f32),
}

impl Gpu {
    /// The device that runs `t`'s kernels: its CUDA device, or the emulation for a CPU tensor
    /// on a thread that emulates. None: the caller takes its CPU reference path.
    pub fn of(t: &Tensor) -> Option<Gpu> {
        Self::for_device(t.device())
    }

    /// The kernels' device for tensors on `device` (see [`Gpu::of`]).
    pub fn for_device(device: &Device) -> Option<Gpu> {
        match device {
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => Some(Gpu::Cuda(d.clone())),
            Device::Cpu if emulating() => Some(Gpu::Emulated),
            _ => None,
        }
    }

    /// The candle device its tensors live on.
    pub fn device(&self) -> Device {
        match self {
            #[cfg(feature = "cuda")]
            Gpu::Cuda(d) => Device::Cuda(d.clone()),
            Gpu::Emulated => Device::Cpu,
        }
    }

    /// A fresh output tensor for a kernel to fill (NaN-poisoned under emulation and in tests).
    pub(crate) fn output<S: Into<Shape>>(&self, shape: S, dtype: DType) -> Result<Tensor> {
        let poison = matches!(self, Gpu::Emulated) || POISON.load(Ordering::SeqCst);
        if poison && dtype.is_float() {
            Tensor::full(f32::NAN, shape, &self.device())?.to_dtype(dtype)
        } else {
            Tensor::zeros(shape, dtype, &self.device())
        }
    }

    /// A zero-filled buffer (accumulators the kernel adds into).
    pub(crate) fn zeros<S: Into<Shape>>(&self, shape: S, dtype: DType) -> Result<Tensor> {
        Tensor::zeros(shape, dtype, &self.device())
    }

    /// Launches `kernel` with its contract's block: on the device's stream, or run to completion by
    /// the emulator.
    pub(crate) fn launch(
        &self,
        kernel: &Kernel,
        grid: (u32, u32, u32),
        shared_mem_bytes: u32,
        args: &[Arg],
    ) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(()); // nothing to do (empty tensor)
        }
        let block = kernel.block();
        match self {
            #[cfg(feature = "cuda")]
            Gpu::Cuda(dev) => cuda::launch(dev, kernel.module, kernel.name, grid, block, shared_mem_bytes, args),
            Gpu::Emulated => emulated::launch(kernel.name, grid, block, shared_mem_bytes, args),
        }
    }
}

/// The buffer of a contiguous tensor (CUDA or CPU memory).
pub fn buf(t: &Tensor) -> Result<Buf> {
    let (storage, layout) = t.storage_and_layout();
    if !layout.is_contiguous() {
        bail!("kernel input {:?} is not contiguous (call .contiguous() first)", t.dims())
    }
    let size = t.dtype().size_in_bytes() as u64;
    let offset = layout.start_offset() as u64 * size;
    let base = match &*storage {
        #[cfg(feature = "cuda")]
        Storage::Cuda(cs) => cuda::base_address(cs, t.dtype())?,
        Storage::Cpu(cs) => emulated::base_address(cs)?,
        #[allow(unreachable_patterns)]
        _ => bail!("kernel input is on {:?}, which runs no kernels of ours", t.device()),
    };
    Ok(Buf { addr: base + offset, len: t.elem_count() as u64 * size, offset })
}

/// An optional buffer: null when absent.
pub fn buf_or_null(t: Option<&Tensor>) -> Result<Buf> {
    t.map(buf).transpose().map(|b| b.unwrap_or(Buf::NULL))
}

/// ceil(n / d) as a grid dimension, capped at `cap`.
pub(crate) fn blocks(n: usize, d: usize, cap: usize) -> u32 {
    n.div_ceil(d).clamp(1, cap) as u32
}
