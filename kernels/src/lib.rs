//! Training ops for oxtune: every op the decoder uses, with a forward and a backward that candle's
//! autograd (`Tensor::backward`) can run. Each op has one dispatch function: the CPU path (tensor-op
//! compositions) or its fused CUDA kernel (`cuda/*.cu`, launched through `launch::Gpu` on a GPU with
//! feature `cuda`, or on the host emulation of CUDA), with the same signature either way.
//!
//! Precision: norm, softmax and log-softmax run in f32 (f64 when the input is f64, which the tests
//! use for finite differences); results come back in the input dtype. Inputs: F32 and BF16
//! (F16/F64 work too).

pub mod adamw;
pub mod adapted_linear;
pub mod attention;
pub mod cpu;
pub mod cross_entropy;
pub mod custom_backward;
pub mod frozen_linear;
pub mod launch;
pub mod lora_linear;
pub mod nf4_linear;
pub mod profile;
pub mod recompute;
pub mod rms_norm;
pub mod rope;
pub mod swiglu;

use candle_core::DType;

/// The dtype an op computes in for an input of dtype `dt`: f32, or f64 for f64 inputs.
pub(crate) fn compute_dtype(dt: DType) -> DType {
    if dt == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}
