//! The model a job tunes: a decoder-only [`Decoder`] or a [`T5`] encoder–decoder, each with its
//! LoRA adapters. What the training frame, checkpoints, evaluation and outputs need from a model
//! (adapters, trainable variables, merged weights, the PEFT task type) is asked here, once; what
//! differs (the loss of a micro-batch, generation) is chosen by the variant where it is used.

use std::path::Path;

use candle_core::{DType, Device, Result, Tensor, Var};

use super::arch::Arch;
use super::decoder::{Decoder, LoadOptions};
use super::t5::T5;
use super::weights::Weights;
use super::ModelError;
use crate::lora::{LoraAdapter, LoraConfig, TASK_CAUSAL_LM, TASK_SEQ_2_SEQ_LM};
use crate::rng::Rng;

// One per job: boxing the larger variant would save nothing.
#[allow(clippy::large_enum_variant)]
pub enum Model {
    Causal(Decoder),
    Seq2Seq(T5),
}

impl Model {
    /// The checkpoint in `dir` as `arch` says, with fresh adapters on the targeted modules when
    /// `lora` is given (NF4 base projections with `opts.quantize_nf4`).
    pub fn load(
        dir: &Path,
        arch: &Arch,
        dtype: DType,
        device: &Device,
        lora: Option<(&LoraConfig, &mut Rng)>,
        opts: &LoadOptions,
    ) -> std::result::Result<Model, ModelError> {
        Ok(match arch {
            Arch::Causal(cfg) => Model::Causal(Decoder::load_with(dir, cfg, dtype, device, lora, opts)?),
            Arch::Seq2Seq(cfg) => {
                Model::Seq2Seq(T5::from_weights(&Weights::open(dir)?, cfg, dtype, device, lora, opts)?)
            }
        })
    }

    /// T5: prompts are the encoder's input (no chat template), completions the decoder's output.
    pub fn is_seq2seq(&self) -> bool {
        matches!(self, Model::Seq2Seq(_))
    }

    pub fn device(&self) -> &Device {
        match self {
            Model::Causal(m) => &m.device,
            Model::Seq2Seq(m) => &m.device,
        }
    }

    /// (module path, adapter) for every adapted projection, in checkpoint order.
    pub fn adapters(&self) -> Vec<(&str, &LoraAdapter)> {
        match self {
            Model::Causal(m) => m.adapters(),
            Model::Seq2Seq(m) => m.adapters(),
        }
    }

    /// Trainable parameters in a stable order: for each adapter, A then B.
    pub fn trainable_vars(&self) -> Vec<Var> {
        crate::lora::trainable_vars(&self.adapters())
    }

    pub fn trainable_param_count(&self) -> usize {
        self.adapters().iter().map(|(_, a)| a.a.elem_count() + a.b.elem_count()).sum()
    }

    /// True when base projections are NF4 (QLoRA).
    pub fn is_quantized(&self) -> bool {
        match self {
            Model::Causal(m) => m.is_quantized(),
            Model::Seq2Seq(m) => !m.quantized_modules().is_empty(),
        }
    }

    /// Every checkpoint tensor with the adapters merged, under the checkpoint's names.
    pub fn merged_state_dict(&self, dtype: DType) -> Result<Vec<(String, Tensor)>> {
        match self {
            Model::Causal(m) => m.merged_state_dict(dtype),
            Model::Seq2Seq(m) => m.merged_state_dict(dtype),
        }
    }

    /// Set the adapters from a PEFT adapter file (resume, or a trained adapter).
    pub fn load_adapter_tensors(&self, path: &Path) -> std::result::Result<(), ModelError> {
        super::linear::load_peft_adapter(path, &self.adapters(), self.device())
    }

    /// PEFT's `task_type` for the adapter config.
    pub fn task_type(&self) -> &'static str {
        match self {
            Model::Causal(_) => TASK_CAUSAL_LM,
            Model::Seq2Seq(_) => TASK_SEQ_2_SEQ_LM,
        }
    }

    /// The architecture in a few words, for checkpoint fingerprints.
    pub fn identity(&self) -> String {
        match self {
            Model::Causal(m) => format!("{} L{} H{}", m.cfg.model_type, m.cfg.num_hidden_layers, m.cfg.hidden_size),
            Model::Seq2Seq(m) => format!("t5 L{}+{} H{}", m.cfg.num_layers, m.cfg.num_decoder_layers, m.cfg.d_model),
        }
    }
}
