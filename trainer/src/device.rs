//! Where a job computes, and in which dtype.
//!
//! `OXTUNE_DEVICE` (environment): unset (or `auto`) = the first CUDA GPU when the build has `cuda`
//! and one is usable, else the CPU, saying why in the log; `cuda` = the first GPU or a clean failure
//! that names what is missing (a CPU-only build, no NVIDIA driver, no device); `cpu` forces the CPU;
//! `emulated-cuda` (a test aid) runs the GPU code path — every fused kernel in `kernels/cuda/`, bf16
//! by default — on the CPU through the host emulation of CUDA, so the path a GPU job takes can be
//! checked on a machine without one.

use candle_core::{DType, Device};

use crate::error::TrainError;
use crate::spec::DTypeChoice;

/// The environment variable that picks the device.
pub const DEVICE_VAR: &str = "OXTUNE_DEVICE";

/// The device of one job.
#[derive(Debug, Clone)]
pub struct JobDevice {
    pub device: Device,
    /// CPU tensors whose ops run the CUDA kernels under the host emulation (see module docs).
    pub emulated_cuda: bool,
}

impl JobDevice {
    /// Reads `OXTUNE_DEVICE` from `env` (the process environment, passed in so tests can set it).
    pub fn select(env: &[(String, String)]) -> Result<JobDevice, TrainError> {
        let choice = device_choice(env);
        match choice.as_deref() {
            None | Some("") | Some("auto") => Ok(JobDevice { device: first_gpu_or_cpu(), emulated_cuda: false }),
            Some("cuda") => Ok(JobDevice { device: first_gpu()?, emulated_cuda: false }),
            Some("cpu") => Ok(JobDevice { device: Device::Cpu, emulated_cuda: false }),
            Some("emulated-cuda") => Ok(JobDevice { device: Device::Cpu, emulated_cuda: true }),
            Some(other) => Err(TrainError::BadInput(format!(
                "{DEVICE_VAR}={other} is not a device: use auto (the default: the first GPU when there is one, else the CPU), cuda (a GPU or a failure), cpu or emulated-cuda (the GPU code path on the CPU, for tests)"
            ))),
        }
    }

    /// Turns the emulation on for the calling thread (the one that trains): the kernels choose
    /// their path per thread.
    pub fn enter(&self) {
        kernels::launch::emulate_on_this_thread(self.emulated_cuda);
    }

    /// Under emulation: which kernels ran and how often (one info line), so a test can check that
    /// the job went through every fused kernel.
    pub fn report_launches(&self) {
        if self.emulated_cuda {
            let counts = kernels::launch::emulated::take_launch_counts();
            let list: Vec<String> = counts.iter().map(|(k, n)| format!("{k}={n}")).collect();
            tracing::info!("Emulated CUDA launches: {}", list.join(" "));
        }
    }

    /// `dtype=auto`: bf16 wherever the fused kernels run (GPU or emulated), f32 on the plain CPU.
    pub fn dtype(&self, choice: DTypeChoice) -> DType {
        match choice {
            DTypeChoice::F32 => DType::F32,
            DTypeChoice::Bf16 => DType::BF16,
            DTypeChoice::Auto if matches!(self.device, Device::Cpu) && !self.emulated_cuda => DType::F32,
            DTypeChoice::Auto => DType::BF16,
        }
    }

    /// As printed at start-up and written to the summary: `cpu`, `cuda:0` or `emulated-cuda`.
    pub fn name(&self) -> String {
        match &self.device {
            Device::Cpu if self.emulated_cuda => "emulated-cuda".into(),
            Device::Cpu => "cpu".into(),
            Device::Cuda(_) => format!("cuda:{}", gpu_ordinal()),
            other => format!("{other:?}"),
        }
    }
}

/// Ranks (processes) this host runs: one per GPU — `num_gpus` of them when set, refused when the
/// host has fewer — or, where the job computes on the CPU, `num_gpus` CPU ranks (0 = one).
pub fn local_ranks(env: &[(String, String)], num_gpus: usize) -> Result<usize, TrainError> {
    let choice = device_choice(env);
    let gpus = match choice.as_deref() {
        Some("cpu") | Some("emulated-cuda") => 0,
        Some("cuda") => gpu_count().max(1),
        _ => gpu_count(),
    };
    match (gpus, num_gpus) {
        (0, n) => Ok(n.max(1)),
        (g, 0) => Ok(g),
        (g, n) if n <= g => Ok(n),
        (g, n) => Err(TrainError::BadInput(format!(
            "num_gpus={n} but this host has {g} GPU(s): lower num_gpus or pick an instance type with {n} GPUs"
        ))),
    }
}

/// What `OXTUNE_DEVICE` says, trimmed and lower-cased.
fn device_choice(env: &[(String, String)]) -> Option<String> {
    crate::sagemaker::env_value(env, DEVICE_VAR).map(|v| v.trim().to_ascii_lowercase())
}

/// GPUs the driver reports (0 in a CPU-only build or without a driver).
fn gpu_count() -> usize {
    #[cfg(feature = "cuda")]
    if std::env::var_os(NO_DRIVER_VAR).is_none() {
        return candle_core::cuda::cudarc::driver::CudaContext::device_count().map(|n| n.max(0) as usize).unwrap_or(0);
    }
    0
}

/// The GPU a worker computes on: its local rank (0 outside a multi-rank job).
fn gpu_ordinal() -> usize {
    std::env::var(crate::dist::worker::LOCAL_RANK_VAR).ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Set by the image's entrypoint when the host has no NVIDIA driver and the image's stand-in
/// `libcuda.so.1` (every call answers "no driver") is what train loaded.
pub const NO_DRIVER_VAR: &str = "OXTUNE_NO_NVIDIA_DRIVER";

fn first_gpu_or_cpu() -> Device {
    if cfg!(feature = "cuda") {
        match first_gpu() {
            Ok(d) => return d,
            Err(e) => tracing::warn!("{e}; training on the CPU"),
        }
    }
    Device::Cpu
}

/// The first CUDA GPU, or why there is none: a CPU-only build, no NVIDIA driver, or no device.
fn first_gpu() -> Result<Device, TrainError> {
    if !cfg!(feature = "cuda") {
        return Err(TrainError::Unsupported(format!(
            "{DEVICE_VAR}=cuda but this train was built without CUDA: use the image (or `cargo build --release --features cuda`), or {DEVICE_VAR}=cpu"
        )));
    }
    if std::env::var_os(NO_DRIVER_VAR).is_some() {
        return Err(TrainError::Unsupported(
            "no CUDA GPU: the NVIDIA driver library (libcuda.so.1) is not in this container — run it with GPUs \
             (`docker run --gpus all`, podman with the NVIDIA CDI device, or a GPU instance type on SageMaker)"
                .into(),
        ));
    }
    Device::new_cuda(gpu_ordinal()).map_err(|e| {
        TrainError::Unsupported(format!(
            "no usable CUDA GPU ({e}): check that the host has an NVIDIA GPU and driver r580+ and that the container sees them"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(v: &str) -> Vec<(String, String)> {
        vec![(DEVICE_VAR.to_string(), v.to_string())]
    }

    #[test]
    fn choices() {
        let cpu = JobDevice::select(&env("CPU")).unwrap();
        assert_eq!((cpu.name(), cpu.dtype(DTypeChoice::Auto)), ("cpu".to_string(), DType::F32));
        let emu = JobDevice::select(&env("emulated-cuda")).unwrap();
        assert_eq!((emu.name(), emu.dtype(DTypeChoice::Auto)), ("emulated-cuda".to_string(), DType::BF16));
        assert_eq!(emu.dtype(DTypeChoice::F32), DType::F32);
        let err = JobDevice::select(&env("tpu")).unwrap_err().to_string();
        assert!(err.contains("OXTUNE_DEVICE=tpu") && err.contains("emulated-cuda"), "{err}");
        if !cfg!(feature = "cuda") {
            let err = JobDevice::select(&env("cuda")).unwrap_err().to_string();
            assert!(err.contains("built without CUDA") && err.contains("OXTUNE_DEVICE=cpu"), "{err}");
            assert_eq!(JobDevice::select(&env("auto")).unwrap().name(), "cpu", "auto falls back to the CPU");
        }
    }
}
