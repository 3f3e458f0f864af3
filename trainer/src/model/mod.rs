//! The model: HF config (which architecture a checkpoint is: [`Arch`]), weight loading, linear
//! layers (frozen base + LoRA), the one decoder shared by the Llama, Mistral and Qwen2 families, the
//! T5 encoder–decoder, the model a job tunes ([`Model`]: either of them), and finding the base model
//! (local directory, channel or the Hugging Face Hub).

pub mod arch;
pub mod config;
pub mod decoder;
pub mod forward;
pub mod hub;
pub mod linear;
pub mod random;
pub mod t5;
pub mod t5_config;
pub mod tuned;
pub mod weights;

use std::path::PathBuf;

pub use arch::Arch;
pub use config::{Family, ModelConfig};
pub use decoder::{Decoder, KvCache, LoadOptions};
pub use forward::ForwardCtx;
pub use tuned::Model;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {problem}")]
    Config { path: PathBuf, problem: String },
    /// The base model could not be found (no channel, no directory, no config.json, Hub failed).
    #[error("{0}")]
    NotFound(String),
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("{dir}: no model weights (expected model.safetensors, model.safetensors.index.json with its shards, or *.safetensors)")]
    NoWeights { dir: PathBuf },
    #[error("{dir}: tensor `{name}` is missing from the checkpoint ({hint})")]
    MissingTensor { dir: PathBuf, name: String, hint: String },
    #[error("{dir}: tensor `{name}` has shape {found:?}, the config implies {expected:?}")]
    BadShape { dir: PathBuf, name: String, found: Vec<usize>, expected: Vec<usize> },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub fn is_user_error(&self) -> bool {
        !matches!(self, ModelError::Candle(_) | ModelError::Io { .. })
    }
}
