//! What a checkpoint's `config.json` describes: one of the decoder-only families (the one
//! [`Decoder`](super::Decoder)) or the T5 encoder–decoder ([`T5`](super::t5::T5)). The job, `train
//! generate` and `train evaluate` read it once and load the matching model.

use std::path::Path;

use super::config::ModelConfig;
use super::t5::T5Config;
use super::ModelError;
use crate::data::TokenizerBundle;

/// A base model's architecture.
// One per job: boxing the larger variant would save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Arch {
    /// Llama, Mistral, Qwen2: next-token prediction over one sequence.
    Causal(ModelConfig),
    /// T5 v1.1 / FLAN-T5: the input goes to the encoder, the target to the decoder.
    Seq2Seq(T5Config),
}

/// `model_type: t5`, or a T5 architecture name when a config omits the type.
fn is_t5(v: &serde_json::Value) -> bool {
    let mt = v.get("model_type").and_then(|m| m.as_str()).unwrap_or("");
    let arch = v.pointer("/architectures/0").and_then(|a| a.as_str()).unwrap_or("");
    mt.eq_ignore_ascii_case("t5") || (mt.is_empty() && arch.starts_with("T5"))
}

impl Arch {
    pub fn from_file(path: &Path) -> Result<Arch, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io { path: path.to_path_buf(), source: e })?;
        Arch::from_json_str(&text, path)
    }

    /// `text` of a config.json; `path` names it in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Arch, ModelError> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ModelError::Config { path: path.to_path_buf(), problem: e.to_string() })?;
        if is_t5(&v) {
            return Ok(Arch::Seq2Seq(T5Config::from_json(&v, path)?));
        }
        ModelConfig::from_json_at(text, path).map(Arch::Causal)
    }

    /// All parameters of the checkpoint (a tied head counted once).
    pub fn param_count(&self) -> u64 {
        match self {
            Arch::Causal(c) => c.param_count(),
            Arch::Seq2Seq(c) => c.param_count(),
        }
    }

    /// `llama`, `mistral`, `qwen2` or `t5`.
    pub fn family_name(&self) -> Result<&'static str, ModelError> {
        match self {
            Arch::Causal(c) => Ok(c.family()?.name()),
            Arch::Seq2Seq(_) => Ok("t5"),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Arch::Causal(c) => c.vocab_size,
            Arch::Seq2Seq(c) => c.vocab_size,
        }
    }

    /// The projections LoRA can adapt, as PEFT names them (`all-linear` means all of these).
    pub fn linear_modules(&self) -> &'static [&'static str] {
        match self {
            Arch::Causal(_) => crate::lora::LINEAR_MODULES,
            Arch::Seq2Seq(c) if c.gated_gelu => &["q", "k", "v", "o", "wi_0", "wi_1", "wo"],
            Arch::Seq2Seq(_) => &["q", "k", "v", "o", "wi", "wo"],
        }
    }

    pub fn is_seq2seq(&self) -> bool {
        matches!(self, Arch::Seq2Seq(_))
    }

    /// The tokens that end a completion: the config's EOS ids and the tokenizer's.
    pub fn eos_ids(&self, tok: &TokenizerBundle) -> Vec<u32> {
        let mut ids = match self {
            Arch::Causal(c) => c.eos_token_ids(),
            Arch::Seq2Seq(c) => vec![c.eos_token_id],
        };
        ids.extend(tok.eos_id().filter(|e| !ids.contains(e)));
        ids
    }

    /// "N layers, hidden H" as the start-up log shows it.
    pub fn shape(&self) -> String {
        match self {
            Arch::Causal(c) => format!("{} layers, hidden {}", c.num_hidden_layers, c.hidden_size),
            Arch::Seq2Seq(c) => {
                format!("{} encoder + {} decoder layers, d_model {}", c.num_layers, c.num_decoder_layers, c.d_model)
            }
        }
    }
}
