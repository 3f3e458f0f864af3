//! Launches on a real GPU through cudarc, on the device's single candle stream (so launches are
//! ordered with candle's own ops and a buffer freed after a launch is released in stream order).

use candle_core::cuda::cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};
use candle_core::cuda::{CudaDevice, CudaStorage, CudaStorageSlice};
use candle_core::{bail, DType, Error, Result};

use super::{Arg, Module};

/// Device address of the first element of a CUDA storage.
pub(super) fn base_address(cs: &CudaStorage, dtype: DType) -> Result<u64> {
    let stream = cs.device.cuda_stream();
    fn base<T>(s: &CudaSlice<T>, stream: &candle_core::cuda::cudarc::driver::CudaStream) -> u64 {
        s.device_ptr(stream).0
    }
    Ok(match &cs.slice {
        CudaStorageSlice::U8(s) => base(s, &stream),
        CudaStorageSlice::U32(s) => base(s, &stream),
        CudaStorageSlice::I64(s) => base(s, &stream),
        CudaStorageSlice::BF16(s) => base(s, &stream),
        CudaStorageSlice::F16(s) => base(s, &stream),
        CudaStorageSlice::F32(s) => base(s, &stream),
        _ => bail!("cuda kernels do not take {dtype:?} tensors"),
    })
}

pub(super) fn launch(
    dev: &CudaDevice,
    module: &Module,
    func: &str,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    shared_mem_bytes: u32,
    args: &[Arg],
) -> Result<()> {
    let f = dev.get_or_load_custom_func(func, module.name, module.ptx)?;
    let mut b = f.builder();
    for a in args {
        match a {
            Arg::Buf(p) => b.arg(&p.addr),
            Arg::I32(v) => b.arg(v),
            Arg::I64(v) => b.arg(v),
            Arg::F32(v) => b.arg(v),
        };
    }
    let cfg = LaunchConfig { grid_dim: grid, block_dim: block, shared_mem_bytes };
    // SAFETY: the argument list matches the kernel's signature (each call site mirrors the launch
    // contract in its .cu file, and the same list is checked against the signature under
    // emulation) and every pointer comes from a live tensor of the stated size.
    unsafe { b.launch(cfg) }.map_err(|e| Error::Cuda(Box::new(e)))?;
    Ok(())
}
