//! oxtune trainer library. From the top down (imports run one way, see ARCHITECTURE.md):
//! [`job`] is the script of one training job; it uses the `/opt/ml` contract ([`sagemaker`]), the
//! job spec ([`spec`]), the device choice ([`device`]), the loops ([`train`]) and the outputs
//! ([`output`]). Below them: the model ([`model`]), LoRA, NF4 quantisation, the optimizer, the
//! GRPO loss and reward functions, evaluation scores, data, checkpoints on disk and the
//! metric/report format.
//! The `train` binary is a thin wrapper over [`job::run`].

pub mod checkpoint;
pub mod choice;
pub mod data;
pub mod demo;
pub mod device;
pub mod dist;
pub mod error;
pub mod eval;
pub mod generate;
pub mod grpo_loss;
pub mod inference;
pub mod job;
pub mod lora;
pub mod model;
pub mod optim;
pub mod output;
pub mod quant;
pub mod report;
pub mod rewards;
pub mod rng;
pub mod sagemaker;
pub mod spec;
pub mod supervise;
pub mod track;
pub mod train;

pub use error::TrainError;
