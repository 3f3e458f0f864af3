//! NCCL for ranks on GPUs: a step's flat gradient buffer is summed on the device by
//! `ncclAllReduce`, enqueued on the stream candle computes on — so it runs after backward and
//! before the optimizer without events or host copies.
//!
//! The TCP group stays underneath: rank 0 hands the NCCL id to the others through it (one
//! mechanism on one host and across hosts), it carries the small host-side sums (counts, votes,
//! checksums), and it is how a failure anywhere reaches every rank. NCCL itself never gives up on
//! a rank that has gone, so a rank waiting for an all-reduce polls the stream, NCCL's asynchronous
//! error and the TCP group, and aborts the communicator when either reports a failure.
//!
//! Raw calls through cudarc's `nccl::result` (the safe `Comm` hides the handle that
//! `ncclCommGetAsyncError` needs).

use std::sync::Mutex;
use std::time::Duration;

use candle_core::cuda::cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use candle_core::cuda::cudarc::nccl::{result, sys};
use candle_core::cuda::{CudaDevice, CudaStorage};
use candle_core::{CustomOp1, Layout, Shape, Tensor};

use super::tcp::TcpGroup;
use super::{Collective, DistError};

/// A communicator handle; aborted (never left half-used) when dropped.
struct RawComm(sys::ncclComm_t);

// SAFETY: the handle is used by one thread at a time (the `Mutex` in `NcclGroup`); NCCL allows a
// communicator to move between threads, only not concurrent calls on it.
unsafe impl Send for RawComm {}

impl Drop for RawComm {
    fn drop(&mut self) {
        // SAFETY: the handle came from ncclCommInitRank and is dropped once.
        let _ = unsafe { result::comm_abort(self.0) };
    }
}

/// Ranks on GPUs: NCCL for the gradients, the TCP group for the rest (see the module docs).
pub struct NcclGroup {
    tcp: TcpGroup,
    device: CudaDevice,
    /// `None` once aborted.
    comm: Mutex<Option<RawComm>>,
}

/// NCCL's name for a result code, with the communicator's last error where there is one.
fn nccl_error(what: &str, e: sys::ncclResult_t, comm: Option<sys::ncclComm_t>) -> DistError {
    // SAFETY: both return pointers to static (or per-thread) NUL-terminated strings or null.
    let text = |p: *const std::ffi::c_char| match p.is_null() {
        true => String::new(),
        false => unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned(),
    };
    let name = text(unsafe { sys::ncclGetErrorString(e) });
    let last = comm.map(|c| text(unsafe { sys::ncclGetLastError(c) })).unwrap_or_default();
    let last = if last.is_empty() { String::new() } else { format!(": {last}") };
    DistError::Protocol(format!("NCCL {what} failed ({e:?}, {name}){last}"))
}

fn cuda_error(what: &str, e: impl std::fmt::Debug) -> DistError {
    DistError::Protocol(format!("CUDA {what} failed: {e:?}"))
}

impl NcclGroup {
    /// The communicator of `tcp`'s ranks, one GPU each (this rank's is `device`): rank 0 makes
    /// the id and shares it over `tcp`; `ncclCommInitRank` returns once every rank has joined.
    pub fn new(tcp: TcpGroup, device: &CudaDevice) -> Result<NcclGroup, DistError> {
        let stream = device.cuda_stream();
        stream.context().bind_to_thread().map_err(|e| cuda_error("binding the GPU", e))?;
        let id = match tcp.rank() {
            0 => {
                let id = result::get_uniqueid().map_err(|e| nccl_error("ncclGetUniqueId", e.0, None))?;
                let bytes: Vec<u8> = id.internal.iter().map(|c| *c as u8).collect();
                tcp.share(Some(&bytes))?;
                id
            }
            _ => {
                let bytes = tcp.share(None)?;
                let internal: [std::ffi::c_char; 128] = std::array::from_fn(|i| *bytes.get(i).unwrap_or(&0) as _);
                if bytes.len() != internal.len() {
                    return Err(DistError::Protocol(format!(
                        "the NCCL id from rank 0 has {} bytes, not 128",
                        bytes.len()
                    )));
                }
                sys::ncclUniqueId { internal }
            }
        };
        let mut raw = std::mem::MaybeUninit::uninit();
        let world = tcp.world() as i32;
        // SAFETY: `raw` is written by NCCL on success and read only then.
        unsafe { result::comm_init_rank(raw.as_mut_ptr(), world, id, tcp.rank() as i32) }
            .map_err(|e| nccl_error("ncclCommInitRank", e.0, None))?;
        let comm = RawComm(unsafe { raw.assume_init() });
        if tcp.rank() == 0 {
            let v = result::get_nccl_version().unwrap_or(0);
            let (major, minor, patch) = (v / 10000, v / 100 % 100, v % 100);
            tracing::info!("Gradients are summed by NCCL {major}.{minor}.{patch} on the GPUs of {} ranks", tcp.world());
        }
        Ok(NcclGroup { tcp, device: device.clone(), comm: Mutex::new(Some(comm)) })
    }

    /// Waits for the work enqueued on the stream (the all-reduce among it), giving up — and
    /// aborting the communicator — as soon as NCCL or another rank reports a failure.
    fn wait(&self, comm: &mut Option<RawComm>) -> Result<(), DistError> {
        let stream = self.device.cuda_stream();
        let done = stream.record_event(None).map_err(|e| cuda_error("recording an event", e))?;
        loop {
            if done.try_is_complete().map_err(|e| cuda_error("waiting for the all-reduce", e))? {
                return Ok(());
            }
            let raw = comm.as_ref().map(|c| c.0).ok_or_else(aborted)?;
            let mut state = sys::ncclResult_t::ncclSuccess;
            // SAFETY: a live communicator; `state` is written by NCCL.
            let asked = unsafe { sys::ncclCommGetAsyncError(raw, &mut state) };
            let failed = match (asked, state) {
                (sys::ncclResult_t::ncclSuccess, sys::ncclResult_t::ncclSuccess)
                | (sys::ncclResult_t::ncclSuccess, sys::ncclResult_t::ncclInProgress) => None,
                (sys::ncclResult_t::ncclSuccess, e) | (e, _) => Some(nccl_error("all-reduce", e, Some(raw))),
            };
            if let Some(e) = failed.or_else(|| self.tcp.heard_failure()) {
                // Aborting releases the kernels that wait for a rank that will not come.
                comm.take();
                return Err(e);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

fn aborted() -> DistError {
    DistError::Protocol("the NCCL communicator was aborted after an earlier failure".into())
}

/// The all-reduce as a candle op, so it takes the tensor's device buffer where it lies.
struct AllReduce(sys::ncclComm_t);

impl CustomOp1 for AllReduce {
    fn name(&self) -> &'static str {
        "nccl-all-reduce"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("NCCL reduces GPU tensors only")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((from, to)) = l.contiguous_offsets() else {
            candle_core::bail!("the all-reduce buffer is not contiguous")
        };
        let src = s.as_cuda_slice::<f32>()?.slice(from..to);
        let dev = s.device.clone();
        let stream = dev.cuda_stream();
        let mut dst: CudaSlice<f32> = dev.alloc_zeros::<f32>(to - from)?;
        {
            let (sp, _src_done) = src.device_ptr(&stream);
            let (dp, _dst_done) = dst.device_ptr_mut(&stream);
            // SAFETY: both buffers hold `to - from` f32s on this stream's device; the comm was
            // built on this device and is used by this thread alone (the caller holds its lock).
            unsafe {
                result::all_reduce(
                    sp as _,
                    dp as _,
                    to - from,
                    sys::ncclDataType_t::ncclFloat32,
                    sys::ncclRedOp_t::ncclSum,
                    self.0,
                    stream.cu_stream() as _,
                )
            }
            .map_err(|e| candle_core::Error::Msg(format!("{}", nccl_error("ncclAllReduce", e.0, Some(self.0)))))?;
        }
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
    }
}

impl Collective for NcclGroup {
    fn rank(&self) -> usize {
        self.tcp.rank()
    }

    fn world(&self) -> usize {
        self.tcp.world()
    }

    /// Host buffers (a few counts, votes and checksums per step) go over TCP.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), DistError> {
        self.tcp.all_reduce_sum(buf)
    }

    fn abort(&self, reason: &str) {
        self.tcp.abort(reason);
    }

    fn all_reduce_tensor(&self, t: &Tensor) -> Result<Tensor, DistError> {
        if !t.device().is_cuda() {
            return super::all_reduce_via_host(self, t);
        }
        let mut comm = self.comm.lock().unwrap_or_else(|p| p.into_inner());
        let raw = comm.as_ref().map(|c| c.0).ok_or_else(aborted)?;
        let sum = t.to_dtype(candle_core::DType::F32)?.contiguous()?.apply_op1_no_bwd(&AllReduce(raw))?;
        self.wait(&mut comm)?;
        Ok(sum)
    }
}
