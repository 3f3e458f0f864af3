//! Tests that concern devices run on every available device through one macro,
//! [`on_every_device!`](crate::on_every_device): the emulated CUDA device always (the host
//! emulation, on CPU tensors), a real GPU when the crate is built with `cuda` and one is present
//! (otherwise that variant says it skips; `OXTUNE_REQUIRE_GPU=1` turns the skip into a failure).
//!
//! Emulated runs are deterministic: each test's launches take seeds derived from the test's name
//! (and `OXTUNE_EMU_SEED_BASE`, to explore other schedules and layouts). A test that passes
//! appends its launches per kernel to `$OXTUNE_EMU_LAUNCH_LOG` (when set), which the launch
//! coverage report of the test command reads.

use std::io::Write;

use candle_core::{Device, Tensor};
use kernels::launch::{self, emulated};

pub enum TestDevice {
    /// CPU tensors, kernels through the host emulation of CUDA.
    Emulated,
    #[cfg(feature = "cuda")]
    Cuda(Device),
}

impl TestDevice {
    pub fn name(&self) -> &'static str {
        match self {
            TestDevice::Emulated => "emulated CUDA",
            #[cfg(feature = "cuda")]
            TestDevice::Cuda(_) => "CUDA GPU",
        }
    }

    /// Where this device's tensors live.
    pub fn device(&self) -> Device {
        match self {
            TestDevice::Emulated => Device::Cpu,
            #[cfg(feature = "cuda")]
            TestDevice::Cuda(d) => d.clone(),
        }
    }

    pub fn put(&self, t: &Tensor) -> Tensor {
        t.to_device(&self.device()).unwrap()
    }

    /// Runs `f` with this device's kernels: for the emulated device, the thread emulates CUDA
    /// while `f` runs (also when `f` panics).
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Off;
        impl Drop for Off {
            fn drop(&mut self) {
                launch::emulate_on_this_thread(false);
            }
        }
        let _off = matches!(self, TestDevice::Emulated).then(|| {
            launch::emulate_on_this_thread(true);
            Off
        });
        f()
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// Runs `body` on the emulated device as test `name`, recording its launches when it passes.
pub fn run_emulated(name: &str, body: impl FnOnce(&TestDevice)) {
    let base = std::env::var("OXTUNE_EMU_SEED_BASE").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    emulated::set_seed(fnv(name) ^ base);
    emulated::take_launch_counts();
    struct Report<'a>(&'a str);
    impl Drop for Report<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!(
                    "{}: failed on the emulated CUDA device (deterministic: it repeats when rerun; \
                     OXTUNE_EMU_SEED_BASE=<n> tries other thread orders and fragment layouts)",
                    self.0
                );
            }
        }
    }
    let report = Report(name);
    body(&TestDevice::Emulated);
    drop(report);
    record_launches(name, &emulated::take_launch_counts());
}

/// Appends `test kernel count` lines for a passing test to `$OXTUNE_EMU_LAUNCH_LOG`.
pub fn record_launches(test: &str, counts: &std::collections::BTreeMap<String, u64>) {
    let Ok(path) = std::env::var("OXTUNE_EMU_LAUNCH_LOG") else { return };
    let text: String = counts.iter().map(|(k, n)| format!("{test}\t{k}\t{n}\n")).collect();
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
    f.write_all(text.as_bytes()).unwrap(); // one append per test: lines of parallel tests do not interleave
}

/// Runs `body` on the CUDA GPU, or says why it skips.
#[cfg(feature = "cuda")]
pub fn run_cuda(name: &str, body: impl FnOnce(&TestDevice)) {
    match Device::new_cuda(0) {
        Ok(d) => {
            launch::set_poison_outputs(true);
            body(&TestDevice::Cuda(d))
        }
        Err(e) if std::env::var_os("OXTUNE_REQUIRE_GPU").is_some() => panic!("{name}: no CUDA GPU: {e}"),
        Err(e) => eprintln!("SKIPPED {name} on CUDA GPU: no usable GPU ({e})"),
    }
}

/// `on_every_device! { fn name(dev) { ... } }`: a module `name` with one test per device.
#[macro_export]
macro_rules! on_every_device {
    ($(#[$meta:meta])* fn $name:ident($dev:ident) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body($dev: &$crate::common::device::TestDevice) $body

            #[test]
            fn emulated() {
                $crate::common::device::run_emulated(concat!(module_path!(), "::emulated"), body);
            }

            #[cfg(feature = "cuda")]
            #[test]
            fn cuda() {
                $crate::common::device::run_cuda(concat!(module_path!(), "::cuda"), body);
            }
        }
    };
}
