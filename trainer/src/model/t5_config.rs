//! A T5 `config.json` (T5 v1.1, FLAN-T5) and what follows from it alone: the relative position
//! buckets and every tensor of the checkpoint with its shape (random checkpoints for the demo,
//! parameter counts).
//! Facts: shared/reference/distributed-and-t5.md §5 (transformers `configuration_t5.py`, `modeling_t5.py`).

use std::path::Path;

use super::ModelError;

/// The hyperparameters of a T5 `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    pub num_decoder_layers: usize,
    pub buckets: usize,
    pub max_distance: usize,
    pub eps: f64,
    /// `gated-gelu` (FLAN-T5, T5 v1.1): gelu_new(wi_0·x) ⊙ wi_1·x; otherwise relu(wi·x).
    pub gated_gelu: bool,
    /// Decoder output × d_model^-0.5 before the head: transformers 5's `scale_decoder_outputs`, or
    /// (configs written before it) `tie_word_embeddings` — original T5 scales, v1.1 / FLAN-T5 do not.
    pub scale_decoder_outputs: bool,
    pub pad_token_id: u32,
    pub eos_token_id: u32,
    pub decoder_start_token_id: u32,
}

impl T5Config {
    pub fn from_json(v: &serde_json::Value, path: &Path) -> std::result::Result<T5Config, ModelError> {
        let bad = |problem: String| ModelError::Config { path: path.to_path_buf(), problem };
        let int = |k: &str, default: Option<usize>| -> std::result::Result<usize, ModelError> {
            match v.get(k).and_then(|x| x.as_u64()) {
                Some(n) => Ok(n as usize),
                None => default.ok_or_else(|| bad(format!("`{k}` is missing or not a number"))),
            }
        };
        let proj = v.get("feed_forward_proj").and_then(|x| x.as_str()).unwrap_or("relu");
        // Some FLAN configs say `gelu` with `is_gated_act: true`: gating is derived from both.
        let gated = proj.starts_with("gated-") || v.get("is_gated_act").and_then(|x| x.as_bool()).unwrap_or(false);
        let act = proj.trim_start_matches("gated-");
        let gated_gelu = match (gated, act) {
            (true, "gelu" | "gelu_new") => true,
            (false, "relu") => false,
            _ => {
                return Err(bad(format!(
                    "feed_forward_proj `{proj}`: only gated-gelu (FLAN-T5, T5 v1.1) and relu (T5) are supported"
                )))
            }
        };
        let num_layers = int("num_layers", None)?;
        Ok(T5Config {
            vocab_size: int("vocab_size", None)?,
            d_model: int("d_model", None)?,
            d_kv: int("d_kv", None)?,
            d_ff: int("d_ff", None)?,
            num_heads: int("num_heads", None)?,
            num_layers,
            num_decoder_layers: int("num_decoder_layers", Some(num_layers))?,
            buckets: int("relative_attention_num_buckets", Some(32))?,
            max_distance: int("relative_attention_max_distance", Some(128))?,
            eps: v.get("layer_norm_epsilon").and_then(|x| x.as_f64()).unwrap_or(1e-6),
            gated_gelu,
            scale_decoder_outputs: v
                .get("scale_decoder_outputs")
                .or_else(|| v.get("tie_word_embeddings"))
                .and_then(|x| x.as_bool())
                .unwrap_or(true),
            pad_token_id: int("pad_token_id", Some(0))? as u32,
            eos_token_id: int("eos_token_id", Some(1))? as u32,
            decoder_start_token_id: int("decoder_start_token_id", Some(0))? as u32,
        })
    }

    /// (d_model, inner attention width = heads × d_kv).
    pub(super) fn attention_shape(&self) -> (usize, usize) {
        (self.d_model, self.num_heads * self.d_kv)
    }
}

/// transformers' `_relative_position_bucket`: the bucket of `memory − query` (f32 logarithm, as torch).
pub fn relative_bucket(relative: i64, bidirectional: bool, buckets: usize, max_distance: usize) -> u32 {
    let mut n = buckets as i64;
    let mut bucket = 0i64;
    let distance = if bidirectional {
        n /= 2;
        if relative > 0 {
            bucket += n;
        }
        relative.abs()
    } else {
        (-relative).max(0)
    };
    let max_exact = n / 2;
    if distance < max_exact {
        return (bucket + distance) as u32;
    }
    let ratio = (distance as f32 / max_exact as f32).ln() / (max_distance as f32 / max_exact as f32).ln();
    let large = max_exact + (ratio * (n - max_exact) as f32) as i64;
    (bucket + large.min(n - 1)) as u32
}

impl T5Config {
    /// All parameters of a checkpoint of this config (the head stored).
    pub fn param_count(&self) -> u64 {
        self.checkpoint_shapes().iter().map(|(_, s)| s.iter().product::<usize>() as u64).sum()
    }

    /// Every tensor of a `T5ForConditionalGeneration` checkpoint of this config with its shape, in
    /// checkpoint order (the LM head stored, as FLAN-T5 stores it).
    pub fn checkpoint_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, inner) = self.attention_shape();
        let mut out = vec![("shared.weight".to_string(), vec![self.vocab_size, d])];
        let ff: &[&str] = if self.gated_gelu { &["wi_0", "wi_1"] } else { &["wi"] };
        for (stack, n) in [("encoder", self.num_layers), ("decoder", self.num_decoder_layers)] {
            for i in 0..n {
                let p = format!("{stack}.block.{i}.layer");
                let attention = |out: &mut Vec<(String, Vec<usize>)>, name: String| {
                    for m in ["q", "k", "v"] {
                        out.push((format!("{name}.{m}.weight"), vec![inner, d]));
                    }
                    out.push((format!("{name}.o.weight"), vec![d, inner]));
                };
                attention(&mut out, format!("{p}.0.SelfAttention"));
                if i == 0 {
                    out.push((
                        format!("{p}.0.SelfAttention.relative_attention_bias.weight"),
                        vec![self.buckets, self.num_heads],
                    ));
                }
                out.push((format!("{p}.0.layer_norm.weight"), vec![d]));
                let f = if stack == "decoder" {
                    attention(&mut out, format!("{p}.1.EncDecAttention"));
                    out.push((format!("{p}.1.layer_norm.weight"), vec![d]));
                    2
                } else {
                    1
                };
                for w in ff {
                    out.push((format!("{p}.{f}.DenseReluDense.{w}.weight"), vec![self.d_ff, d]));
                }
                out.push((format!("{p}.{f}.DenseReluDense.wo.weight"), vec![d, self.d_ff]));
                out.push((format!("{p}.{f}.layer_norm.weight"), vec![d]));
            }
            out.push((format!("{stack}.final_layer_norm.weight"), vec![d]));
        }
        out.push(("lm_head.weight".to_string(), vec![self.vocab_size, d]));
        out
    }
}
