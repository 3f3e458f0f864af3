//! Hugging Face `config.json` for the decoder families we support.

use std::path::Path;

use serde::Deserialize;

use super::ModelError;

/// Model families that share our one decoder implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
}

impl Family {
    pub fn name(&self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
        }
    }
}

/// The submodule holding a projection in HF checkpoints: `self_attn` or `mlp`.
pub fn module_group(projection: &str) -> &'static str {
    if matches!(projection, "gate_proj" | "up_proj" | "down_proj") {
        "mlp"
    } else {
        "self_attn"
    }
}

/// RoPE frequency scaling variants we implement.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (transformers "linear").
    Linear {
        factor: f64,
    },
    /// Llama 3.1 frequency-band scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers v5 writes RoPE settings here instead of rope_theta/rope_scaling.
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub quantization_config: Option<serde_json::Value>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}

/// The two fields that name a model's family; everything else depends on the family.
#[derive(Deserialize)]
struct Identity {
    #[serde(default)]
    model_type: String,
    #[serde(default)]
    architectures: Vec<String>,
}

/// Supported families, as the "not supported" message lists them.
const SUPPORTED: &str = "llama (Llama 2/3/3.1/3.2), mistral, qwen2 (Qwen2/2.5), t5 (FLAN-T5, T5 v1.1)";

fn family_of(model_type: &str, architectures: &[String]) -> Result<Family, ModelError> {
    let mt = model_type.to_ascii_lowercase();
    let arch = architectures.first().map(|a| a.to_ascii_lowercase()).unwrap_or_default();
    match mt.as_str() {
        "llama" => Ok(Family::Llama),
        "mistral" => Ok(Family::Mistral),
        "qwen2" => Ok(Family::Qwen2),
        "" if arch.starts_with("llama") => Ok(Family::Llama),
        "" if arch.starts_with("mistral") => Ok(Family::Mistral),
        "" if arch.starts_with("qwen2") => Ok(Family::Qwen2),
        // Read as T5 by `Arch`; here (decoder-only callers) it is the wrong kind of model.
        "t5" => Err(ModelError::Unsupported(
            "model_type `t5` is an encoder–decoder; this takes the decoder-only families (llama, mistral, qwen2)".into(),
        )),
        "" => Err(ModelError::Unsupported(format!(
            "config.json names no model_type (architectures {architectures:?}); supported families: {SUPPORTED}"
        ))),
        _ => Err(ModelError::Unsupported(format!(
            "model_type `{model_type}` is not supported; supported families: {SUPPORTED} (architectures {architectures:?})"
        ))),
    }
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io { path: path.to_path_buf(), source: e })?;
        Self::from_json_at(&text, path)
    }

    /// [`ModelConfig::from_json_str`] of the text of `path`, its errors naming that file.
    pub fn from_json_at(text: &str, path: &Path) -> Result<Self, ModelError> {
        Self::from_json_str(text).map_err(|e| match e {
            ModelError::Config { problem, .. } => ModelError::Config { path: path.to_path_buf(), problem },
            other => other,
        })
    }

    /// The family is decided first, from `model_type` / `architectures` alone, so an unsupported
    /// model gets "not supported" rather than a schema error about a field its family lacks; then
    /// the family's fields are parsed, and a missing or mistyped one is named with the family.
    pub fn from_json_str(text: &str) -> Result<Self, ModelError> {
        let config_err = |problem: String| ModelError::Config { path: "config.json".into(), problem };
        let identity: Identity = serde_json::from_str(text).map_err(|e| config_err(format!("{e}")))?;
        let family = family_of(&identity.model_type, &identity.architectures)?;
        let cfg: ModelConfig =
            serde_json::from_str(text).map_err(|e| config_err(format!("not a valid {} config: {e}", family.name())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ModelError> {
        let err = |problem: String| ModelError::Config { path: "config.json".into(), problem };
        self.family()?;
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return Err(err(format!("hidden_act `{act}` is not supported (only silu / SwiGLU)")));
            }
        }
        if self.num_attention_heads == 0 || !self.num_attention_heads.is_multiple_of(self.num_kv_heads()) {
            return Err(err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.num_kv_heads()
            )));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(err(format!("head_dim {} must be even for RoPE", self.head_dim())));
        }
        self.rope()?;
        Ok(())
    }

    pub fn family(&self) -> Result<Family, ModelError> {
        family_of(&self.model_type, &self.architectures)
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Qwen2 hard-codes bias on q/k/v; Llama has an optional `attention_bias` (q/k/v/o).
    pub fn qkv_bias(&self) -> bool {
        matches!(self.family(), Ok(Family::Qwen2)) || self.attention_bias.unwrap_or(false)
    }

    pub fn o_bias(&self) -> bool {
        !matches!(self.family(), Ok(Family::Qwen2)) && self.attention_bias.unwrap_or(false)
    }

    pub fn mlp_bias(&self) -> bool {
        self.mlp_bias.unwrap_or(false)
    }

    /// The attention window, when the model actually applies one.
    pub fn effective_sliding_window(&self) -> Option<usize> {
        match self.family() {
            Ok(Family::Mistral) => self.sliding_window,
            Ok(Family::Qwen2) if self.use_sliding_window.unwrap_or(false) => self.sliding_window,
            _ => None,
        }
    }

    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(|v| v.as_f64())
            .or(self.rope_theta)
            .unwrap_or(10000.0)
    }

    /// RoPE scaling from v4 `rope_scaling` or v5 `rope_parameters`.
    pub fn rope(&self) -> Result<RopeScaling, ModelError> {
        let src = self.rope_scaling.as_ref().filter(|v| !v.is_null()).or(self.rope_parameters.as_ref());
        let Some(v) = src else { return Ok(RopeScaling::None) };
        let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(|t| t.as_str()).unwrap_or("default");
        let num = |k: &str, default: Option<f64>| -> Result<f64, ModelError> {
            v.get(k).and_then(|x| x.as_f64()).or(default).ok_or_else(|| ModelError::Config {
                path: "config.json".into(),
                problem: format!("rope scaling `{kind}` needs `{k}`"),
            })
        };
        match kind {
            "default" => Ok(RopeScaling::None),
            "linear" => Ok(RopeScaling::Linear { factor: num("factor", None)? }),
            "llama3" => Ok(RopeScaling::Llama3 {
                factor: num("factor", None)?,
                low_freq_factor: num("low_freq_factor", Some(1.0))?,
                high_freq_factor: num("high_freq_factor", Some(4.0))?,
                original_max_position_embeddings: num("original_max_position_embeddings", Some(8192.0))?,
            }),
            other => Err(ModelError::Unsupported(format!(
                "rope type `{other}` is not supported yet (supported: default, linear, llama3)"
            ))),
        }
    }

    /// Inverse RoPE frequencies per rotary pair (length head_dim/2), scaling applied.
    pub fn inv_freq(&self) -> Result<Vec<f32>, ModelError> {
        let d = self.head_dim();
        let theta = self.rope_theta();
        let base: Vec<f64> = (0..d / 2).map(|i| 1.0 / theta.powf((2 * i) as f64 / d as f64)).collect();
        let scaled = match self.rope()? {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: orig,
            } => {
                let low_wavelen = orig / low_freq_factor;
                let high_wavelen = orig / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen > low_wavelen {
                            f / factor
                        } else if wavelen < high_wavelen {
                            f
                        } else {
                            let smooth = (orig / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        };
        Ok(scaled.into_iter().map(|f| f as f32).collect())
    }

    /// (in, out) features of each linear projection in a decoder layer.
    pub fn projection_shapes(&self) -> [(&'static str, usize, usize); 7] {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim();
        let kv = self.num_kv_heads() * self.head_dim();
        let i = self.intermediate_size;
        [
            ("q_proj", h, q),
            ("k_proj", h, kv),
            ("v_proj", h, kv),
            ("o_proj", q, h),
            ("gate_proj", h, i),
            ("up_proj", h, i),
            ("down_proj", i, h),
        ]
    }

    /// Weights of all decoder linear projections (no embeddings, lm_head, norms, biases).
    pub fn linear_param_count(&self) -> u64 {
        let per_layer: usize = self.projection_shapes().iter().map(|(_, i, o)| i * o).sum();
        (per_layer * self.num_hidden_layers) as u64
    }

    /// All parameters; lm_head counted once when tied to the embeddings.
    pub fn param_count(&self) -> u64 {
        let emb = (self.vocab_size * self.hidden_size) as u64;
        let head = if self.tie_word_embeddings { 0 } else { emb };
        let norms = ((2 * self.num_hidden_layers + 1) * self.hidden_size) as u64;
        let kv = self.num_kv_heads() * self.head_dim();
        let q = self.num_attention_heads * self.head_dim();
        let biases = if self.qkv_bias() { ((q + 2 * kv) * self.num_hidden_layers) as u64 } else { 0 };
        self.linear_param_count() + emb + head + norms + biases
    }

    /// LoRA parameters (A and B) for rank `r` on the named projections of every layer.
    pub fn lora_param_count(&self, r: usize, targets: &[&str]) -> u64 {
        let per_layer: usize =
            self.projection_shapes().iter().filter(|(n, _, _)| targets.contains(n)).map(|(_, i, o)| r * (i + o)).sum();
        (per_layer * self.num_hidden_layers) as u64
    }

    /// EOS ids (config may hold an int or a list).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_u64()).map(|n| n as u32).collect(),
            _ => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA_8B: &str = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":4096,"intermediate_size":14336,
      "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"vocab_size":128256,"rms_norm_eps":1e-5,
      "rope_theta":500000.0,"rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
      "original_max_position_embeddings":8192,"rope_type":"llama3"},"tie_word_embeddings":false,"hidden_act":"silu",
      "max_position_embeddings":131072}"#;

    #[test]
    fn llama_8b_counts() {
        let c = ModelConfig::from_json_str(LLAMA_8B).unwrap();
        // 32 × (4096·(4096+1024+1024) + 4096·4096 + 3·4096·14336) = 6,979,321,856
        assert_eq!(c.linear_param_count(), 6_979_321_856);
        assert_eq!(c.param_count(), 6_979_321_856 + 2 * 128256 * 4096 + 65 * 4096);
        // r=16 on all seven: 32 × 16 × Σ(in+out) = 41,943,040 (formats.md §6.2: "42M").
        assert_eq!(c.lora_param_count(16, crate::lora::LINEAR_MODULES), 41_943_040);
    }

    #[test]
    fn llama3_rope_scaling_bands() {
        let c = ModelConfig::from_json_str(LLAMA_8B).unwrap();
        let f = c.inv_freq().unwrap();
        assert_eq!(f.len(), 64);
        // Highest frequency (short wavelength) unchanged, lowest divided by the factor.
        assert!((f[0] - 1.0).abs() < 1e-7);
        let base_last = 1.0 / 500000f64.powf(126.0 / 128.0);
        assert!(((f[63] as f64) - base_last / 8.0).abs() / (base_last / 8.0) < 1e-5);
    }

    #[test]
    fn rope_parameters_v5_form() {
        let text = LLAMA_8B
            .replace("\"rope_theta\":500000.0,\"rope_scaling\"", "\"rope_parameters\"")
            .replace("\"rope_type\":\"llama3\"}", "\"rope_type\":\"llama3\",\"rope_theta\":500000.0}");
        let c = ModelConfig::from_json_str(&text).unwrap();
        assert_eq!(c.rope_theta(), 500000.0);
        assert!(matches!(c.rope().unwrap(), RopeScaling::Llama3 { factor, .. } if factor == 8.0));
    }

    #[test]
    fn unsupported_family_is_clear() {
        let text = LLAMA_8B.replace("\"model_type\":\"llama\"", "\"model_type\":\"gemma2\"");
        let err = ModelConfig::from_json_str(&text).unwrap_err().to_string();
        assert!(err.contains("gemma2") && err.contains("supported families"), "{err}");
    }

    #[test]
    fn family_is_decided_before_its_fields() {
        // A BART config has none of the decoder's fields: the family decides the message.
        let bart = r#"{"architectures":["BartForConditionalGeneration"],"model_type":"bart","d_model":512,"vocab_size":50265}"#;
        let err = ModelConfig::from_json_str(bart).unwrap_err().to_string();
        assert!(err.contains("model_type `bart` is not supported; supported families: llama"), "{err}");
        assert!(err.contains("t5 (FLAN-T5"), "{err}");
        // A supported family missing a field names the family and the field.
        let text = LLAMA_8B.replace("\"hidden_size\":4096,", "");
        let err = ModelConfig::from_json_str(&text).unwrap_err().to_string();
        assert!(err.contains("not a valid llama config") && err.contains("missing field `hidden_size`"), "{err}");
    }
}
