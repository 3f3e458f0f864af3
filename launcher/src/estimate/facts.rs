//! What the estimate needs to know about a model: parameter counts and the per-token memory and
//! FLOPs of one training step (the formulas are the module docs of `estimate`). A T5 token is an
//! encoder input or a decoder target: its per-token figures are the two stacks' weighted by the
//! data's share of input tokens.

use serde::Serialize;
use trainer::model::config::ModelConfig;
use trainer::model::t5::T5Config;
use trainer::model::Arch;

use super::{Method, ADAPTER_BYTES_PER_PARAM, NF4_BYTES_PER_PARAM};

/// Model-derived sizes shared by every instance.
#[derive(Debug, Clone, Serialize)]
pub struct ModelFacts {
    pub params: u64,
    pub linear_params: u64,
    pub matmul_params: u64,
    pub lora_params: u64,
    pub layers: u64,
    pub hidden: u64,
    pub intermediate: u64,
    pub q_dim: u64,
    pub kv_dim: u64,
    pub heads: u64,
    pub vocab: u64,
    pub largest_linear: u64,
    /// Linear weights QLoRA keeps dense (T5's feed-forward output `wo`, as transformers does).
    pub dense_linear_params: u64,
    /// Matmul weights a trained token passes through (decoder-only: all of them; T5: the stack
    /// it is in, and the LM head for targets, weighted by the input share).
    pub token_matmul_params: f64,
    pub token_lora_params: f64,
    /// Layers a token's activations are kept in (T5: its stack; a decoder layer's cross-attention
    /// counted as a third of a layer more).
    pub token_layers: f64,
    /// Causal-attention units per token (the encoder's bidirectional attention is two, a T5 decoder
    /// layer's self- plus cross-attention three).
    pub attention_layers: f64,
}

impl ModelFacts {
    /// `source_share`: T5's fraction of training tokens that are encoder inputs (ignored otherwise).
    pub fn new(arch: &Arch, lora_r: usize, targets: &[&str], source_share: f64) -> ModelFacts {
        match arch {
            Arch::Causal(c) => ModelFacts::decoder_only(c, lora_r, targets),
            Arch::Seq2Seq(c) => ModelFacts::t5(c, lora_r, targets, source_share.clamp(0.0, 1.0)),
        }
    }

    pub fn decoder_only(c: &ModelConfig, lora_r: usize, targets: &[&str]) -> ModelFacts {
        let hd = c.head_dim() as u64;
        let largest_linear = c.projection_shapes().iter().map(|(_, i, o)| (*i as u64) * (*o as u64)).max().unwrap_or(0);
        let lm_head = (c.vocab_size * c.hidden_size) as u64;
        ModelFacts {
            params: c.param_count(),
            linear_params: c.linear_param_count(),
            matmul_params: c.linear_param_count() + lm_head,
            lora_params: c.lora_param_count(lora_r, targets),
            layers: c.num_hidden_layers as u64,
            hidden: c.hidden_size as u64,
            intermediate: c.intermediate_size as u64,
            q_dim: c.num_attention_heads as u64 * hd,
            kv_dim: c.num_kv_heads() as u64 * hd,
            heads: c.num_attention_heads as u64,
            vocab: c.vocab_size as u64,
            largest_linear,
            dense_linear_params: 0,
            token_matmul_params: (c.linear_param_count() + lm_head) as f64,
            token_lora_params: c.lora_param_count(lora_r, targets) as f64,
            token_layers: c.num_hidden_layers as f64,
            attention_layers: c.num_hidden_layers as f64,
        }
    }

    fn t5(c: &T5Config, lora_r: usize, targets: &[&str], s: f64) -> ModelFacts {
        let shapes = c.checkpoint_shapes();
        // Projections: every 2-D tensor but the embedding, the head and the position-bias tables.
        let is_projection = |n: &str| n.contains(".layer.") && !n.contains("layer_norm") && !n.contains("relative");
        let (mut linear, mut largest, mut dense) = ([0u64; 2], 0u64, 0u64);
        let mut lora = [0u64; 2];
        for (name, sh) in shapes.iter().filter(|(n, _)| is_projection(n)) {
            let stack = usize::from(name.starts_with("decoder"));
            let (out, inp) = (sh[0] as u64, sh[1] as u64);
            linear[stack] += out * inp;
            largest = largest.max(out * inp);
            let leaf = name.trim_end_matches(".weight").rsplit('.').next().unwrap_or("");
            if leaf == "wo" {
                dense += out * inp;
            }
            if targets.contains(&leaf) {
                lora[stack] += lora_r as u64 * (out + inp);
            }
        }
        let lm_head = (c.vocab_size * c.d_model) as u64;
        let inner = (c.num_heads * c.d_kv) as u64;
        let (enc, dec) = (c.num_layers as f64, c.num_decoder_layers as f64);
        ModelFacts {
            params: c.param_count(),
            linear_params: linear[0] + linear[1],
            matmul_params: linear[0] + linear[1] + lm_head,
            lora_params: lora[0] + lora[1],
            layers: (c.num_layers + c.num_decoder_layers) as u64,
            hidden: c.d_model as u64,
            intermediate: c.d_ff as u64,
            q_dim: inner,
            kv_dim: inner,
            heads: c.num_heads as u64,
            vocab: c.vocab_size as u64,
            largest_linear: largest,
            dense_linear_params: dense,
            token_matmul_params: s * linear[0] as f64 + (1.0 - s) * (linear[1] + lm_head) as f64,
            token_lora_params: s * lora[0] as f64 + (1.0 - s) * lora[1] as f64,
            token_layers: s * enc + (1.0 - s) * dec * (4.0 / 3.0),
            attention_layers: s * 2.0 * enc + (1.0 - s) * 3.0 * dec,
        }
    }

    /// Bytes of weights resident on the GPU.
    pub fn weight_bytes(&self, method: Method) -> f64 {
        match method {
            Method::Lora | Method::Grpo => 2.0 * self.params as f64,
            Method::Qlora => {
                let nf4 = self.linear_params - self.dense_linear_params;
                let quantised = nf4 as f64 * NF4_BYTES_PER_PARAM;
                let rest = 2.0 * (self.params - nf4) as f64;
                let dequant_buffer = 2.0 * self.largest_linear as f64;
                quantised + rest + dequant_buffer
            }
        }
    }

    pub fn adapter_bytes(&self) -> f64 {
        ADAPTER_BYTES_PER_PARAM * self.lora_params as f64
    }

    /// `A_layer`: bytes saved for backward per token per decoder layer (see module docs).
    pub fn layer_activation_bytes_per_token(
        &self,
        lora_r: usize,
        n_targets: usize,
        seq: u64,
        scores_saved: bool,
    ) -> f64 {
        let (h, q, kv, i) = (self.hidden as f64, self.q_dim as f64, self.kv_dim as f64, self.intermediate as f64);
        let mut a = 2.0 * (4.0 * h + 2.0 * q + 2.0 * kv + 3.0 * i)
            + 2.0 * (n_targets * lora_r) as f64
            + 4.0 * self.heads as f64;
        if scores_saved {
            a += 4.0 * self.heads as f64 * seq as f64;
        }
        a
    }

    /// Activation bytes for `tokens` tokens in flight (B·T), with or without checkpointing.
    pub fn activation_bytes(&self, tokens: u64, a_layer: f64, checkpointing: bool, ce_chunk: u64) -> f64 {
        let bt = tokens as f64;
        let (h, i, l) = (self.hidden as f64, self.intermediate as f64, self.token_layers);
        let layers = if checkpointing { bt * l * 2.0 * h + bt * a_layer } else { bt * l * a_layer };
        let final_norm = bt * 4.0 * h;
        let logits = (ce_chunk.min(tokens) as f64) * self.vocab as f64 * 8.0;
        let grads_in_flight = bt * 4.0 * (h + i);
        layers + final_norm + logits + grads_in_flight
    }

    /// KV-cache bytes for `seqs` sequences of `len` tokens (bf16 keys and values).
    pub fn kv_cache_bytes(&self, seqs: u64, len: u64) -> f64 {
        2.0 * 2.0 * (self.layers * self.kv_dim) as f64 * (seqs * len) as f64
    }

    /// Model FLOPs per trained token (no recomputation), performance.md §6.2.
    pub fn train_flops_per_token(&self, seq: f64) -> f64 {
        4.0 * self.token_matmul_params + 6.0 * self.token_lora_params + 6.0 * self.attention_units() * seq
    }

    /// Extra hardware FLOPs per token when every layer's forward is recomputed.
    pub fn recompute_flops_per_token(&self, seq: f64) -> f64 {
        2.0 * self.token_matmul_params + 2.0 * self.token_lora_params + 2.0 * self.attention_units() * seq
    }

    /// Forward-only FLOPs per token (GRPO reference model, prefill).
    pub fn forward_flops_per_token(&self, seq: f64) -> f64 {
        2.0 * self.token_matmul_params + 2.0 * self.attention_units() * seq
    }

    /// `L·d` of the attention term: causal-attention units × heads × head dim.
    fn attention_units(&self) -> f64 {
        self.attention_layers * self.q_dim as f64
    }
}
