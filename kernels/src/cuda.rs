//! Launch glue for our CUDA kernels (feature `cuda`): PTX modules built by `build.rs` from
//! `kernels/cuda/*.cu`, device addresses of contiguous tensors, output allocation, launches.
//!
//! Kernels take raw device addresses of contiguous row-major buffers (see each `.cu` file's launch
//! contract). Outputs are fresh tensors the kernel fills completely; `set_poison_outputs(true)`
//! (tests) fills them with NaN first, so an element a kernel forgets to write fails the comparison.
//! All work goes to the device's single candle stream, so launches are ordered with candle's own
//! ops and a buffer freed after a launch is released in stream order.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::cuda::cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};
use candle_core::cuda::{CudaDevice, CudaStorageSlice};
use candle_core::{bail, DType, Device, Error, Result, Shape, Storage, Tensor};

/// One PTX module per `.cu` file.
pub(crate) struct Module {
    pub name: &'static str,
    pub ptx: &'static str,
}

macro_rules! module {
    ($ident:ident, $file:literal) => {
        pub(crate) const $ident: Module =
            Module { name: concat!("oxtune_", $file), ptx: include_str!(concat!(env!("OUT_DIR"), "/", $file, ".ptx")) };
    };
}

module!(ADAMW, "adamw");
module!(ATTENTION, "attention");
module!(CROSS_ENTROPY, "cross_entropy");
module!(DROPOUT, "dropout");
module!(NF4, "nf4");
module!(RMS_NORM, "rms_norm");
module!(ROPE, "rope");
module!(SWIGLU, "swiglu");

static POISON: AtomicBool = AtomicBool::new(false);

/// Tests: fill every kernel output with NaN before the launch.
pub fn set_poison_outputs(on: bool) {
    POISON.store(on, Ordering::SeqCst);
}

/// A kernel argument, pushed in order.
pub(crate) enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
}

/// The CUDA device of `t`, or None for other devices (the caller falls back to its composed path).
pub(crate) fn device_of(t: &Tensor) -> Option<CudaDevice> {
    match t.device() {
        Device::Cuda(d) => Some(d.clone()),
        _ => None,
    }
}

/// Device address of the first element of a contiguous tensor.
pub(crate) fn ptr(t: &Tensor) -> Result<u64> {
    let (storage, layout) = t.storage_and_layout();
    if !layout.is_contiguous() {
        bail!("cuda kernel input {:?} is not contiguous (call .contiguous() first)", t.dims())
    }
    let Storage::Cuda(cs) = &*storage else { bail!("cuda kernel input is on {:?}, not CUDA", t.device()) };
    let stream = cs.device.cuda_stream();
    fn base<T>(s: &CudaSlice<T>, stream: &candle_core::cuda::cudarc::driver::CudaStream) -> u64 {
        s.device_ptr(stream).0
    }
    let addr = match &cs.slice {
        CudaStorageSlice::U8(s) => base(s, &stream),
        CudaStorageSlice::U32(s) => base(s, &stream),
        CudaStorageSlice::I64(s) => base(s, &stream),
        CudaStorageSlice::BF16(s) => base(s, &stream),
        CudaStorageSlice::F16(s) => base(s, &stream),
        CudaStorageSlice::F32(s) => base(s, &stream),
        _ => bail!("cuda kernels do not take {:?} tensors", t.dtype()),
    };
    Ok(addr + (layout.start_offset() * t.dtype().size_in_bytes()) as u64)
}

/// A fresh output tensor for a kernel to fill (NaN-poisoned in tests).
pub(crate) fn output<S: Into<Shape>>(shape: S, dtype: DType, dev: &CudaDevice) -> Result<Tensor> {
    let dev = Device::Cuda(dev.clone());
    if POISON.load(Ordering::SeqCst) && dtype.is_float() {
        Tensor::full(f32::NAN, shape, &dev)?.to_dtype(dtype)
    } else {
        Tensor::zeros(shape, dtype, &dev)
    }
}

/// A zero-filled buffer (accumulators the kernel adds into).
pub(crate) fn zeros<S: Into<Shape>>(shape: S, dtype: DType, dev: &CudaDevice) -> Result<Tensor> {
    Tensor::zeros(shape, dtype, &Device::Cuda(dev.clone()))
}

/// Launch `func` from `module` on the device's stream.
pub(crate) fn launch(
    dev: &CudaDevice,
    module: &Module,
    func: &str,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    shared_mem_bytes: u32,
    args: &[Arg],
) -> Result<()> {
    if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
        return Ok(()); // nothing to do (empty tensor)
    }
    let f = dev.get_or_load_custom_func(func, module.name, module.ptx)?;
    let mut b = f.builder();
    for a in args {
        match a {
            Arg::Ptr(p) => b.arg(p),
            Arg::I32(v) => b.arg(v),
            Arg::I64(v) => b.arg(v),
            Arg::F32(v) => b.arg(v),
        };
    }
    let cfg = LaunchConfig { grid_dim: grid, block_dim: block, shared_mem_bytes };
    // SAFETY: the argument list matches the kernel's signature (each call site mirrors the launch
    // contract in its .cu file) and every pointer comes from a live tensor of the stated size.
    unsafe { b.launch(cfg) }.map_err(|e| Error::Cuda(Box::new(e)))?;
    Ok(())
}

/// ceil(n / d) as a grid dimension, capped at `cap`.
pub(crate) fn blocks(n: usize, d: usize, cap: usize) -> u32 {
    n.div_ceil(d).clamp(1, cap) as u32
}
