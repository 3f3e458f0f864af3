//! GPU memory readouts for the benchmark: the high-water mark of the memory pool candle allocates
//! from (cudarc uses `cuMemAllocAsync`, i.e. the device's current pool), comparable to
//! `torch.cuda.max_memory_allocated`, plus the device-wide used memory (`cuMemGetInfo`, what
//! nvidia-smi shows: context, cuBLAS workspaces and the pool's reserve included).
//! On the CPU nothing is measured (every readout is `None`).

use candle_core::Device;

/// Bytes, as read at one moment.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PoolStats {
    /// Bytes in live allocations now.
    pub used: Option<u64>,
    /// Highest `used` since the last [`reset_peak`].
    pub used_high: Option<u64>,
    /// Highest bytes the pool held from the driver since the last [`reset_peak`].
    pub reserved_high: Option<u64>,
    /// Device memory in use by everything (total − free).
    pub device_used: Option<u64>,
}

/// Current pool statistics of `device` (all `None` on the CPU).
pub fn stats(device: &Device) -> anyhow::Result<PoolStats> {
    device.synchronize()?;
    match device {
        Device::Cpu => Ok(PoolStats::default()),
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => cuda::stats(d),
        #[allow(unreachable_patterns)]
        _ => anyhow::bail!("memory readout: unsupported device {device:?}"),
    }
}

/// Resets the pool's high-water marks to the current usage (no-op on the CPU).
pub fn reset_peak(device: &Device) -> anyhow::Result<()> {
    device.synchronize()?;
    match device {
        Device::Cpu => Ok(()),
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => cuda::reset_peak(d),
        #[allow(unreachable_patterns)]
        _ => anyhow::bail!("memory readout: unsupported device {device:?}"),
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda::cudarc::driver::{result, sys};
    use candle_core::CudaDevice;

    use super::PoolStats;

    fn pool(d: &CudaDevice) -> anyhow::Result<sys::CUmemoryPool> {
        let stream = d.cuda_stream();
        let ctx = stream.context();
        ctx.bind_to_thread()?;
        // SAFETY: the device handle comes from a live context.
        Ok(unsafe { result::device::get_mem_pool(ctx.cu_device()) }?)
    }

    fn get(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> anyhow::Result<u64> {
        let mut v: u64 = 0;
        // SAFETY: the *_MEM_* attributes are cuuint64_t values.
        unsafe { result::mem_pool::get_attribute(pool, attr, &mut v as *mut u64 as *mut core::ffi::c_void) }?;
        Ok(v)
    }

    pub fn stats(d: &CudaDevice) -> anyhow::Result<PoolStats> {
        let p = pool(d)?;
        let (free, total) = result::mem_get_info()?;
        Ok(PoolStats {
            used: Some(get(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?),
            used_high: Some(get(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?),
            reserved_high: Some(get(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?),
            device_used: Some((total - free) as u64),
        })
    }

    pub fn reset_peak(d: &CudaDevice) -> anyhow::Result<()> {
        let p = pool(d)?;
        for attr in [
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
        ] {
            // Only 0 may be written: it resets the mark to the current value.
            let mut zero: u64 = 0;
            // SAFETY: as in `get`; the value is a cuuint64_t.
            unsafe { result::mem_pool::set_attribute(p, attr, &mut zero as *mut u64 as *mut core::ffi::c_void) }?;
        }
        Ok(())
    }
}
