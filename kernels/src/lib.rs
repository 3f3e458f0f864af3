//! Training ops for oxtune: every op the decoder uses, with a forward and a backward that candle's
//! autograd (`Tensor::backward`) can run. CPU paths are tensor-op compositions; a fused CUDA kernel
//! slots into each op's single dispatch function later (feature `cuda`) without changing signatures.
//!
//! Precision: norm, softmax and log-softmax run in f32 (f64 when the input is f64, which the tests
//! use for finite differences); results come back in the input dtype. Inputs: F32 and BF16
//! (F16/F64 work too).

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod custom_backward;
pub mod frozen_linear;
pub mod launch;
pub mod lora_linear;
pub mod nf4_linear;
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
