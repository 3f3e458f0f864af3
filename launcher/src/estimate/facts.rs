//! What the estimate needs to know about a model: parameter counts and the per-token memory and
//! FLOPs of one training step (the formulas are the module docs of `estimate`).

use serde::Serialize;
use trainer::model::config::ModelConfig;

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
}

impl ModelFacts {
    pub fn new(c: &ModelConfig, lora_r: usize, targets: &[&str]) -> ModelFacts {
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
        }
    }

    /// Bytes of weights resident on the GPU.
    pub fn weight_bytes(&self, method: Method) -> f64 {
        match method {
            Method::Lora | Method::Grpo => 2.0 * self.params as f64,
            Method::Qlora => {
                let quantised = self.linear_params as f64 * NF4_BYTES_PER_PARAM;
                let rest = 2.0 * (self.params - self.linear_params) as f64;
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
        let (h, i, l) = (self.hidden as f64, self.intermediate as f64, self.layers as f64);
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
        4.0 * self.matmul_params as f64 + 6.0 * self.lora_params as f64 + 6.0 * (self.layers * self.q_dim) as f64 * seq
    }

    /// Extra hardware FLOPs per token when every layer's forward is recomputed.
    pub fn recompute_flops_per_token(&self, seq: f64) -> f64 {
        2.0 * self.matmul_params as f64 + 2.0 * self.lora_params as f64 + 2.0 * (self.layers * self.q_dim) as f64 * seq
    }

    /// Forward-only FLOPs per token (GRPO reference model, prefill).
    pub fn forward_flops_per_token(&self, seq: f64) -> f64 {
        2.0 * self.matmul_params as f64 + 2.0 * (self.layers * self.q_dim) as f64 * seq
    }
}
