//! The kernels crate's integration tests, one binary: each op against its reference on the CPU,
//! every CUDA kernel against its CPU path on every device (`devices`), and the host emulation of
//! CUDA itself (`emulator`: launch limits, its checks, and mutations it must catch).

mod common;

mod adapted_linear;
mod attention;
mod cross_entropy;
mod custom_backward;
mod devices;
mod emulator;
mod frozen_linear;
mod lora_linear;
mod nf4;
mod peak_memory;
mod rms_norm;
mod rope;
mod swiglu;
