//! oxtune trainer library: the job spec, the SageMaker `/opt/ml` contract, data,
//! model, LoRA, optimizer, the SFT loop, checkpoints and outputs.
//! The `train` binary is a thin wrapper over [`job::run`].

pub mod checkpoint;
pub mod data;
pub mod demo;
pub mod error;
pub mod grpo;
pub mod job;
pub mod lora;
pub mod model;
pub mod optim;
pub mod output;
pub mod quant;
pub mod report;
pub mod rng;
pub mod run_state;
pub mod sagemaker;
pub mod sft;
pub mod spec;

pub use error::TrainError;
