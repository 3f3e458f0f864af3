//! The T5 family (T5 v1.1 and FLAN-T5: `T5ForConditionalGeneration` checkpoints) as an
//! encoder–decoder: T5 layer norm (the RMS norm kernel: scale only, no mean, no bias), gated-GELU
//! (or ReLU) feed-forward, relative position bias computed once per stack from block 0's table,
//! attention without 1/√d scaling, cross-attention, the LM head (stored, or the shared embedding;
//! the decoder output rescaled by d_model^-0.5 only for original T5, as transformers does).
//! Projections are the decoder families' [`Linear`] (frozen base and LoRA, NF4 for QLoRA), named
//! as in the checkpoint so PEFT adapters load as they are.
//! Facts: shared/reference/distributed-and-t5.md §5 (transformers `modeling_t5.py`).

use candle_core::{DType, Device, Result, Tensor, D};

use super::decoder::{load_base, LoadOptions};
use super::forward::ForwardCtx;
use super::linear::Linear;
pub use super::t5_config::{relative_bucket, T5Config};
use super::weights::Weights;
use super::ModelError;
use crate::lora::{LoraAdapter, LoraConfig};
use crate::rng::Rng;

/// Additive bias of masked scores: exp() of it is exactly 0 in f32, as transformers' finfo.min.
const MASKED: f64 = -1e9;

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// Block 0 of each stack: the relative attention bias table [buckets, heads].
    relative_bias: Option<Tensor>,
}

/// Keys [b, h, tk, dk] (f32, for the unscaled scores) and values [b, h, tk, dk].
type KeyValues = (Tensor, Tensor);

impl Attention {
    fn key_values(&self, src: &Tensor, heads: (usize, usize), ctx: &mut ForwardCtx) -> Result<KeyValues> {
        let (b, tk, _) = src.dims3()?;
        let (h, dk) = heads;
        let split = |y: Tensor| -> Result<Tensor> { y.reshape((b, tk, h, dk))?.transpose(1, 2)?.contiguous() };
        Ok((split(self.k.forward(src, ctx)?)?.to_dtype(DType::F32)?, split(self.v.forward(src, ctx)?)?))
    }

    /// Queries from `x` [b, tq, d] over `kv`, with `bias` [1|b, h, tq, tk] added to the unscaled scores.
    fn attend(
        &self,
        x: &Tensor,
        kv: &KeyValues,
        bias: &Tensor,
        heads: (usize, usize),
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let (b, tq, _) = x.dims3()?;
        let (h, dk) = heads;
        let q = self.q.forward(x, ctx)?.reshape((b, tq, h, dk))?.transpose(1, 2)?.contiguous()?.to_dtype(DType::F32)?;
        let (k, v) = kv;
        let scores = q.matmul(&k.t()?)?.broadcast_add(bias)?;
        let p = softmax(&scores)?.to_dtype(v.dtype())?;
        let out = p.matmul(v)?.transpose(1, 2)?.contiguous()?.reshape((b, tq, h * dk))?;
        self.o.forward(&out, ctx)
    }

    fn forward(
        &self,
        x: &Tensor,
        src: &Tensor,
        bias: &Tensor,
        heads: (usize, usize),
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let kv = self.key_values(src, heads, ctx)?;
        self.attend(x, &kv, bias, heads, ctx)
    }

    fn linears(&self) -> [&Linear; 4] {
        [&self.q, &self.k, &self.v, &self.o]
    }
}

/// Softmax over the last dimension in f32 (the max is a constant for the gradient).
fn softmax(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

struct FeedForward {
    /// `wi_0` (gated) or `wi`.
    wi: Linear,
    /// `wi_1`, gated only.
    gate: Option<Linear>,
    wo: Linear,
}

impl FeedForward {
    fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let a = self.wi.forward(x, ctx)?;
        let hidden = match &self.gate {
            // gelu_new = the tanh approximation, candle's `gelu`.
            Some(g) => (a.gelu()? * g.forward(x, ctx)?)?,
            None => a.relu()?,
        };
        self.wo.forward(&hidden, ctx)
    }

    fn linears(&self) -> Vec<&Linear> {
        [Some(&self.wi), self.gate.as_ref(), Some(&self.wo)].into_iter().flatten().collect()
    }
}

struct Block {
    self_norm: Tensor,
    self_attn: Attention,
    /// Decoder blocks: cross-attention over the encoder output.
    cross: Option<(Tensor, Attention)>,
    ff_norm: Tensor,
    ff: FeedForward,
}

impl Block {
    /// Self-attention, cross-attention (decoder) and feed-forward projections, in checkpoint order.
    fn linears(&self) -> Vec<&Linear> {
        let mut v: Vec<&Linear> = self.self_attn.linears().to_vec();
        if let Some((_, c)) = &self.cross {
            v.extend(c.linears());
        }
        v.extend(self.ff.linears());
        v
    }
}

struct Stack {
    blocks: Vec<Block>,
    final_norm: Tensor,
    is_decoder: bool,
}

/// The state of incremental decoding (see [`T5::start_decoding`]).
pub struct T5Cache {
    cross: Vec<KeyValues>,
    own: Vec<Option<KeyValues>>,
    enc_bias: Tensor,
    /// Decoder tokens so far.
    pub len: usize,
}

/// A T5 encoder–decoder with optional LoRA adapters.
pub struct T5 {
    pub cfg: T5Config,
    pub dtype: DType,
    pub device: Device,
    shared: Tensor,
    encoder: Stack,
    decoder: Stack,
    lm_head: Tensor,
    /// The checkpoint stores `lm_head.weight` (FLAN-T5) rather than reusing `shared`.
    head_stored: bool,
}

/// What loading needs besides the weights.
struct Loader<'a, 'r> {
    w: &'a Weights,
    dtype: DType,
    device: &'a Device,
    lora: Option<(&'a LoraConfig, &'r mut Rng)>,
    opts: &'a LoadOptions,
}

impl Loader<'_, '_> {
    fn linear(&mut self, name: String, inf: usize, outf: usize) -> std::result::Result<Linear, ModelError> {
        // QLoRA keeps the feed-forward output `wo` unquantised, as transformers keeps it out of
        // 4-bit (`_keep_in_fp32_modules = ["wo"]`): T5's activations overflow there.
        let dense = LoadOptions { quantize_nf4: None };
        let opts = if name.ends_with(".wo") { &dense } else { self.opts };
        let base = load_base(self.w, self.w.dir(), &name, [outf, inf], self.dtype, self.device, None, opts)?;
        let adapter = match self.lora.as_mut() {
            Some((cfg, rng)) if cfg.targets_module(&name) => Some(LoraAdapter::init(inf, outf, cfg, rng, self.device)?),
            _ => None,
        };
        Ok(Linear { name, in_features: inf, out_features: outf, base, lora: adapter })
    }

    fn norm(&self, name: &str, d: usize) -> std::result::Result<Tensor, ModelError> {
        self.w.get(name, &[d], self.dtype, self.device)
    }

    fn attention(&mut self, p: &str, cfg: &T5Config, first: bool) -> std::result::Result<Attention, ModelError> {
        let (d, inner) = cfg.attention_shape();
        Ok(Attention {
            q: self.linear(format!("{p}.q"), d, inner)?,
            k: self.linear(format!("{p}.k"), d, inner)?,
            v: self.linear(format!("{p}.v"), d, inner)?,
            o: self.linear(format!("{p}.o"), inner, d)?,
            relative_bias: match first {
                true => Some(self.w.get(
                    &format!("{p}.relative_attention_bias.weight"),
                    &[cfg.buckets, cfg.num_heads],
                    DType::F32,
                    self.device,
                )?),
                false => None,
            },
        })
    }

    fn stack(&mut self, prefix: &str, cfg: &T5Config, is_decoder: bool) -> std::result::Result<Stack, ModelError> {
        let n = if is_decoder { cfg.num_decoder_layers } else { cfg.num_layers };
        let mut blocks = Vec::with_capacity(n);
        for i in 0..n {
            let p = format!("{prefix}.block.{i}.layer");
            let self_attn = self.attention(&format!("{p}.0.SelfAttention"), cfg, i == 0)?;
            let cross = match is_decoder {
                true => Some((
                    self.norm(&format!("{p}.1.layer_norm.weight"), cfg.d_model)?,
                    self.attention(&format!("{p}.1.EncDecAttention"), cfg, false)?,
                )),
                false => None,
            };
            let f = if is_decoder { 2 } else { 1 };
            let ffp = format!("{p}.{f}.DenseReluDense");
            let ff = if cfg.gated_gelu {
                FeedForward {
                    wi: self.linear(format!("{ffp}.wi_0"), cfg.d_model, cfg.d_ff)?,
                    gate: Some(self.linear(format!("{ffp}.wi_1"), cfg.d_model, cfg.d_ff)?),
                    wo: self.linear(format!("{ffp}.wo"), cfg.d_ff, cfg.d_model)?,
                }
            } else {
                FeedForward {
                    wi: self.linear(format!("{ffp}.wi"), cfg.d_model, cfg.d_ff)?,
                    gate: None,
                    wo: self.linear(format!("{ffp}.wo"), cfg.d_ff, cfg.d_model)?,
                }
            };
            blocks.push(Block {
                self_norm: self.norm(&format!("{p}.0.layer_norm.weight"), cfg.d_model)?,
                self_attn,
                cross,
                ff_norm: self.norm(&format!("{p}.{f}.layer_norm.weight"), cfg.d_model)?,
                ff,
            });
        }
        Ok(Stack {
            blocks,
            final_norm: self.norm(&format!("{prefix}.final_layer_norm.weight"), cfg.d_model)?,
            is_decoder,
        })
    }
}

impl T5 {
    pub fn from_weights(
        w: &Weights,
        cfg: &T5Config,
        dtype: DType,
        device: &Device,
        lora: Option<(&LoraConfig, &mut Rng)>,
        opts: &LoadOptions,
    ) -> std::result::Result<T5, ModelError> {
        let (v, d) = (cfg.vocab_size, cfg.d_model);
        let shared = w.get("shared.weight", &[v, d], dtype, device)?;
        // An untied head is stored as lm_head (FLAN-T5); a tied one is the shared embedding.
        let head_stored = w.contains("lm_head.weight");
        let head = if head_stored { w.get("lm_head.weight", &[v, d], dtype, device)? } else { shared.clone() };
        let lm_head = match cfg.scale_decoder_outputs {
            true => (head.to_dtype(DType::F32)? * (d as f64).powf(-0.5))?.to_dtype(dtype)?,
            false => head,
        };
        let mut l = Loader { w, dtype, device, lora, opts };
        let encoder = l.stack("encoder", cfg, false)?;
        let decoder = l.stack("decoder", cfg, true)?;
        Ok(T5 { cfg: cfg.clone(), dtype, device: device.clone(), shared, encoder, decoder, lm_head, head_stored })
    }

    /// Relative position bias [1, h, tq, tk] from a stack's table (queries at `q_offset`…).
    fn position_bias(
        &self,
        table: &Tensor,
        tq: usize,
        tk: usize,
        q_offset: usize,
        bidirectional: bool,
    ) -> Result<Tensor> {
        let mut ids = Vec::with_capacity(tq * tk);
        for i in 0..tq {
            for j in 0..tk {
                ids.push(relative_bucket(
                    j as i64 - (i + q_offset) as i64,
                    bidirectional,
                    self.cfg.buckets,
                    self.cfg.max_distance,
                ));
            }
        }
        let ids = Tensor::from_vec(ids, tq * tk, &self.device)?;
        table.index_select(&ids, 0)?.reshape((tq, tk, self.cfg.num_heads))?.permute((2, 0, 1))?.unsqueeze(0)
    }

    /// Additive key mask [b, 1, 1, tk] from a 1/0 mask [b, tk].
    fn key_mask(&self, mask: &Tensor) -> Result<Tensor> {
        let m = mask.to_dtype(DType::F32)?;
        ((1.0 - m)? * MASKED)?.unsqueeze(1)?.unsqueeze(1)
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        self.shared.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, self.cfg.d_model))
    }

    fn run_stack(
        &self,
        stack: &Stack,
        x: Tensor,
        self_bias: &Tensor,
        enc: Option<(&Tensor, &Tensor)>,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let heads = (self.cfg.num_heads, self.cfg.d_kv);
        let eps = self.cfg.eps;
        let mut x = x;
        for blk in &stack.blocks {
            let h = kernels::rms_norm::rms_norm(&x, &blk.self_norm, eps)?;
            x = (&x + blk.self_attn.forward(&h, &h, self_bias, heads, ctx)?)?;
            if let (Some((norm, cross)), Some((enc, enc_bias))) = (&blk.cross, enc) {
                let h = kernels::rms_norm::rms_norm(&x, norm, eps)?;
                x = (&x + cross.forward(&h, enc, enc_bias, heads, ctx)?)?;
            }
            let h = kernels::rms_norm::rms_norm(&x, &blk.ff_norm, eps)?;
            x = (&x + blk.ff.forward(&h, ctx)?)?;
        }
        kernels::rms_norm::rms_norm(&x, &stack.final_norm, eps)
    }

    /// Encoder output [b, s, d] for `input_ids` [b, s] (u32) with `mask` [b, s] (1 = token, 0 = padding).
    pub fn encode(&self, input_ids: &Tensor, mask: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let s = input_ids.dim(1)?;
        let table = self.encoder.blocks[0].self_attn.relative_bias.as_ref().expect("block 0 has the bias table");
        let bias = self.position_bias(table, s, s, 0, true)?.broadcast_add(&self.key_mask(mask)?)?;
        self.run_stack(&self.encoder, self.embed(input_ids)?, &bias, None, ctx)
    }

    /// Decoder hidden states [b, t, d] for `decoder_ids` [b, t] (teacher forcing: the targets shifted
    /// right behind the decoder start token) over the encoder output and its mask.
    pub fn decode(
        &self,
        decoder_ids: &Tensor,
        enc: &Tensor,
        enc_mask: &Tensor,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        debug_assert!(self.decoder.is_decoder);
        let t = decoder_ids.dim(1)?;
        let table = self.decoder.blocks[0].self_attn.relative_bias.as_ref().expect("block 0 has the bias table");
        let causal: Vec<f32> =
            (0..t).flat_map(|i| (0..t).map(move |j| if j > i { MASKED as f32 } else { 0.0 })).collect();
        let causal = Tensor::from_vec(causal, (1, 1, t, t), &self.device)?;
        let bias = self.position_bias(table, t, t, 0, false)?.broadcast_add(&causal)?;
        let enc_bias = self.key_mask(enc_mask)?;
        self.run_stack(&self.decoder, self.embed(decoder_ids)?, &bias, Some((enc, &enc_bias)), ctx)
    }

    /// Incremental decoding over `enc` [b, s, d]: the cross-attention keys and values of every
    /// decoder block are computed here once; self-attention keys and values grow with each step.
    pub fn start_decoding(&self, enc: &Tensor, enc_mask: &Tensor, ctx: &mut ForwardCtx) -> Result<T5Cache> {
        let heads = (self.cfg.num_heads, self.cfg.d_kv);
        let cross = self
            .decoder
            .blocks
            .iter()
            .map(|blk| blk.cross.as_ref().expect("decoder blocks cross-attend").1.key_values(enc, heads, ctx))
            .collect::<Result<Vec<_>>>()?;
        Ok(T5Cache { cross, own: vec![None; self.decoder.blocks.len()], enc_bias: self.key_mask(enc_mask)?, len: 0 })
    }

    /// Decoder hidden states [b, 1, d] of the next token `ids` [b, 1], appended to `cache`.
    pub fn decode_step(&self, ids: &Tensor, cache: &mut T5Cache, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let heads = (self.cfg.num_heads, self.cfg.d_kv);
        let eps = self.cfg.eps;
        let table = self.decoder.blocks[0].self_attn.relative_bias.as_ref().expect("block 0 has the bias table");
        // One query at position `len` over keys 0..=len: nothing to mask causally.
        let bias = self.position_bias(table, 1, cache.len + 1, cache.len, false)?;
        let mut x = self.embed(ids)?;
        for (i, blk) in self.decoder.blocks.iter().enumerate() {
            let h = kernels::rms_norm::rms_norm(&x, &blk.self_norm, eps)?;
            let (k, v) = blk.self_attn.key_values(&h, heads, ctx)?;
            let kv = match cache.own[i].take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            };
            x = (&x + blk.self_attn.attend(&h, &kv, &bias, heads, ctx)?)?;
            cache.own[i] = Some(kv);
            let (norm, cross) = blk.cross.as_ref().expect("decoder blocks cross-attend");
            let h = kernels::rms_norm::rms_norm(&x, norm, eps)?;
            x = (&x + cross.attend(&h, &cache.cross[i], &cache.enc_bias, heads, ctx)?)?;
            let h = kernels::rms_norm::rms_norm(&x, &blk.ff_norm, eps)?;
            x = (&x + blk.ff.forward(&h, ctx)?)?;
        }
        cache.len += 1;
        kernels::rms_norm::rms_norm(&x, &self.decoder.final_norm, eps)
    }

    /// Logits [b, t, vocab] in f32.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        kernels::frozen_linear::frozen_linear(hidden, &self.lm_head, None)?.to_dtype(DType::F32)
    }

    /// `labels` shifted right behind the decoder start token; ignored labels (−100) become padding.
    pub fn shift_right(&self, labels: &[Vec<i64>]) -> Vec<Vec<u32>> {
        labels
            .iter()
            .map(|row| {
                std::iter::once(self.cfg.decoder_start_token_id)
                    .chain(row[..row.len().saturating_sub(1)].iter().map(|&l| {
                        if l < 0 {
                            self.cfg.pad_token_id
                        } else {
                            l as u32
                        }
                    }))
                    .collect()
            })
            .collect()
    }

    /// log p(label) at every label position, `[b·t]` f32, through the chunked log-softmax of the
    /// decoder families (an ignored label, −100, scores token 0: callers mask it).
    pub fn label_log_probs(
        &self,
        input_ids: &Tensor,
        mask: &Tensor,
        labels: &[Vec<i64>],
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let (b, t) = (labels.len(), labels.first().map_or(0, Vec::len));
        let dec = Tensor::from_vec(self.shift_right(labels).concat(), (b, t), &self.device)?;
        let enc = self.encode(input_ids, mask, ctx)?;
        let hidden = self.decode(&dec, &enc, mask, ctx)?;
        let targets: Vec<u32> = labels.iter().flatten().map(|&l| l.max(0) as u32).collect();
        let chunk = (8 * 1024 * 1024 / self.cfg.vocab_size.max(1)).max(1);
        let targets = Tensor::from_vec(targets, b * t, &self.device)?;
        kernels::cross_entropy::linear_log_probs(&hidden.flatten_to(D::Minus2)?, &self.lm_head, &targets, chunk)
    }

    /// Σ −log p(label) over the labels that are not −100 (a scalar, still attached to the graph).
    pub fn summed_nll(
        &self,
        input_ids: &Tensor,
        mask: &Tensor,
        labels: &[Vec<i64>],
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let keep: Vec<f32> = labels.iter().flatten().map(|&l| f32::from(l >= 0)).collect();
        let n = keep.len();
        let logp = self.label_log_probs(input_ids, mask, labels, ctx)?;
        (logp * Tensor::from_vec(keep, n, &self.device)?)?.sum_all()?.neg()
    }

    /// transformers' loss: the mean cross-entropy over the labels that are not −100.
    pub fn loss(&self, input_ids: &Tensor, mask: &Tensor, labels: &[Vec<i64>], ctx: &mut ForwardCtx) -> Result<Tensor> {
        let n = labels.iter().flatten().filter(|&&l| l >= 0).count().max(1);
        self.summed_nll(input_ids, mask, labels, ctx)? / n as f64
    }

    fn linears(&self) -> impl Iterator<Item = &Linear> {
        [&self.encoder, &self.decoder].into_iter().flat_map(|s| s.blocks.iter()).flat_map(Block::linears)
    }

    /// (module path, adapter) for every adapted projection, in checkpoint order.
    pub fn adapters(&self) -> Vec<(&str, &LoraAdapter)> {
        self.linears().filter_map(|l| l.lora.as_ref().map(|a| (l.name.as_str(), a))).collect()
    }

    /// Every tensor of the checkpoint with the adapters merged into their projections (W + scale·B·A),
    /// under the checkpoint's names, in `dtype` — what `merge_adapter` writes for transformers'
    /// `AutoModelForSeq2SeqLM`.
    pub fn merged_state_dict(&self, dtype: DType) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![("shared.weight".to_string(), self.shared.to_dtype(dtype)?)];
        for (prefix, stack) in [("encoder", &self.encoder), ("decoder", &self.decoder)] {
            for (i, blk) in stack.blocks.iter().enumerate() {
                let p = format!("{prefix}.block.{i}.layer");
                let ff = if blk.cross.is_some() { 2 } else { 1 };
                out.push((format!("{p}.0.layer_norm.weight"), blk.self_norm.to_dtype(dtype)?));
                if let Some(t) = &blk.self_attn.relative_bias {
                    out.push((format!("{p}.0.SelfAttention.relative_attention_bias.weight"), t.to_dtype(dtype)?));
                }
                if let Some((norm, _)) = &blk.cross {
                    out.push((format!("{p}.1.layer_norm.weight"), norm.to_dtype(dtype)?));
                }
                out.push((format!("{p}.{ff}.layer_norm.weight"), blk.ff_norm.to_dtype(dtype)?));
                for lin in blk.linears() {
                    out.push((format!("{}.weight", lin.name), lin.merged_weight_f32()?.to_dtype(dtype)?));
                }
            }
            out.push((format!("{prefix}.final_layer_norm.weight"), stack.final_norm.to_dtype(dtype)?));
        }
        if self.head_stored {
            let d = self.cfg.d_model as f64;
            let head = if self.cfg.scale_decoder_outputs {
                (self.lm_head.to_dtype(DType::F32)? * d.sqrt())?
            } else {
                self.lm_head.clone()
            };
            out.push(("lm_head.weight".to_string(), head.to_dtype(dtype)?));
        }
        Ok(out)
    }

    /// Module paths whose base weight is NF4 (QLoRA).
    pub fn quantized_modules(&self) -> Vec<&str> {
        self.linears().filter(|l| l.is_nf4()).map(|l| l.name.as_str()).collect()
    }
}
