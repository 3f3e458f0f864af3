//! One decoder for Llama 2/3/3.1/3.2, Mistral and Qwen2/2.5, driven by config.json:
//! embedding → N × [RMSNorm → attention (RoPE, causal, GQA) → RMSNorm → SwiGLU MLP] → RMSNorm → lm_head.
//! Every op goes through the `kernels` crate so fused GPU kernels slot in without touching this file.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor, Var, D};
use kernels::recompute::SideGrads;

use super::config::ModelConfig;
use super::forward::ForwardCtx;
use super::linear::{BaseWeight, Linear};
use super::weights::Weights;
use super::ModelError;
use crate::lora::{LoraAdapter, LoraConfig};
use crate::quant::nf4::{self, BnbQuantState, Nf4Options};
use crate::rng::Rng;

/// Keys and values of every layer for the tokens decoded so far: [b, kv_heads, t, head_dim] each.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new() -> KvCache {
        KvCache::default()
    }

    /// Tokens held per row.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map(|(k, _)| k.dims()[2]).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keep only the given batch rows (finished sequences leave the batch).
    pub fn select_rows(&mut self, rows: &Tensor) -> Result<()> {
        for l in self.layers.iter_mut().flatten() {
            *l = (l.0.index_select(rows, 0)?, l.1.index_select(rows, 0)?);
        }
        Ok(())
    }
}

struct Layer {
    input_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// What every layer of one forward pass shares.
struct LayerEnv {
    cos: Tensor,
    sin: Tensor,
    segment_ids: Option<Tensor>,
    /// (query heads, kv heads, head dim).
    heads: (usize, usize, usize),
    eps: f64,
}

impl Layer {
    /// One decoder layer on the residual stream x [b, t, hidden]; `cache` appends this layer's
    /// keys and values (incremental decoding).
    fn forward(
        &self,
        env: &LayerEnv,
        x: &Tensor,
        ctx: &mut ForwardCtx,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (hq, hkv, hd) = env.heads;
        let hn = kernels::rms_norm::rms_norm(x, &self.input_norm, env.eps)?;
        let heads = |y: Tensor, n: usize| -> Result<Tensor> { y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous() };
        let q = heads(self.q.forward(&hn, ctx)?, hq)?;
        let k = heads(self.k.forward(&hn, ctx)?, hkv)?;
        let v = heads(self.v.forward(&hn, ctx)?, hkv)?;
        let q = kernels::rope::rope(&q, &env.cos, &env.sin)?;
        let k = kernels::rope::rope(&k, &env.cos, &env.sin)?;
        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        let scale = 1.0 / (hd as f64).sqrt();
        let attn = kernels::attention::causal_attention(&q, &k, &v, env.segment_ids.as_ref(), scale)?;
        let attn = attn.transpose(1, 2)?.contiguous()?.reshape((b, t, hq * hd))?;
        let x = (x + self.o.forward(&attn, ctx)?)?;
        let hn = kernels::rms_norm::rms_norm(&x, &self.post_norm, env.eps)?;
        let act = kernels::swiglu::swiglu(&self.gate.forward(&hn, ctx)?, &self.up.forward(&hn, ctx)?)?;
        x + self.down.forward(&act, ctx)?
    }

    fn adapter_vars(&self) -> Vec<Var> {
        [&self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down]
            .into_iter()
            .filter_map(|l| l.lora.as_ref())
            .flat_map(|a| [a.a.clone(), a.b.clone()])
            .collect()
    }
}

/// `layer` under activation checkpointing: only x is kept; the backward recomputes the layer with
/// the dropout RNG as it was before this forward, so the masks repeat exactly.
fn checkpointed(
    layer: &Arc<Layer>,
    env: &Arc<LayerEnv>,
    x: &Tensor,
    ctx: &mut ForwardCtx,
    side: SideGrads,
) -> Result<Tensor> {
    let before = ctx.clone();
    // The value is computed on a detached input; its graph (the activations) is dropped right here.
    let value = layer.forward(env, &x.detach(), ctx, None)?.detach();
    let (layer, env) = (layer.clone(), env.clone());
    let params = if ctx.adapters { layer.adapter_vars() } else { vec![] };
    kernels::recompute::recompute(x, value, params, side, move |xv| {
        let mut replay = before.clone();
        layer.forward(&env, xv, &mut replay, None)
    })
}

pub struct Decoder {
    pub cfg: ModelConfig,
    pub dtype: DType,
    pub device: Device,
    embed: Tensor,
    // Arc: a checkpointed layer's backward holds its layer to recompute it.
    layers: Vec<Arc<Layer>>,
    norm: Tensor,
    /// [vocab, hidden]; the embedding matrix itself when tied.
    lm_head: Tensor,
    inv_freq: Vec<f32>,
}

/// How [`Decoder::load_with`] treats the base weights.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// QLoRA: quantise every decoder projection to NF4 while loading (embeddings, norms and lm_head
    /// stay dense). A checkpoint saved by bitsandbytes in 4-bit is loaded as NF4 either way.
    pub quantize_nf4: Option<Nf4Options>,
}

impl Decoder {
    /// Load a HF checkpoint directory; adapters are created for the targeted modules when `lora` is given.
    pub fn load(
        dir: &Path,
        cfg: &ModelConfig,
        dtype: DType,
        device: &Device,
        lora: Option<(&LoraConfig, &mut Rng)>,
    ) -> std::result::Result<Decoder, ModelError> {
        Decoder::load_with(dir, cfg, dtype, device, lora, &LoadOptions::default())
    }

    /// [`Decoder::load`] with options (QLoRA quantise-while-loading).
    pub fn load_with(
        dir: &Path,
        cfg: &ModelConfig,
        dtype: DType,
        device: &Device,
        lora: Option<(&LoraConfig, &mut Rng)>,
        opts: &LoadOptions,
    ) -> std::result::Result<Decoder, ModelError> {
        Decoder::from_weights(&Weights::open(dir)?, cfg, dtype, device, lora, opts)
    }

    /// [`Decoder::load_with`] from opened weights: a checkpoint, or [`Weights::random`] (benchmarks).
    pub fn from_weights(
        w: &Weights,
        cfg: &ModelConfig,
        dtype: DType,
        device: &Device,
        lora: Option<(&LoraConfig, &mut Rng)>,
        opts: &LoadOptions,
    ) -> std::result::Result<Decoder, ModelError> {
        let dir = w.dir();
        if let Some(qc) = &cfg.quantization_config {
            let method = qc.get("quant_method").and_then(|v| v.as_str()).unwrap_or("");
            let four = qc.get("load_in_4bit").and_then(|v| v.as_bool()).unwrap_or(false);
            let qtype = qc.get("bnb_4bit_quant_type").and_then(|v| v.as_str()).unwrap_or("nf4");
            if method != "bitsandbytes" || !four || qtype != "nf4" {
                return Err(ModelError::Unsupported(format!(
                    "{}: quantization_config {method} (load_in_4bit={four}, quant_type={qtype}); only bitsandbytes 4-bit nf4 checkpoints (or unquantised ones) can be loaded",
                    dir.display()
                )));
            }
        }
        let h = cfg.hidden_size;
        let embed = w.get("model.embed_tokens.weight", &[cfg.vocab_size, h], dtype, device)?;
        let lm_head = if w.contains("lm_head.weight") {
            w.get("lm_head.weight", &[cfg.vocab_size, h], dtype, device)?
        } else if cfg.tie_word_embeddings {
            embed.clone()
        } else {
            return Err(ModelError::MissingTensor {
                dir: dir.to_path_buf(),
                name: "lm_head.weight".into(),
                hint: "config.json says tie_word_embeddings=false".into(),
            });
        };
        let norm = w.get("model.norm.weight", &[h], dtype, device)?;
        let mut lora = lora;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let shapes = cfg.projection_shapes();
            let mut proj = |module: &str, bias: bool| -> std::result::Result<Linear, ModelError> {
                let (_, inf, outf) = *shapes.iter().find(|(n, _, _)| *n == module).expect("known projection");
                let name = format!("{p}.{}.{module}", super::config::module_group(module));
                let b = if bias { Some(w.get(&format!("{name}.bias"), &[outf], dtype, device)?) } else { None };
                let base = load_base(w, dir, &name, [outf, inf], dtype, device, b, opts)?;
                let adapter = match lora.as_mut() {
                    Some((lcfg, rng)) if lcfg.targets_module(&name) => {
                        Some(LoraAdapter::init(inf, outf, lcfg, rng, device)?)
                    }
                    _ => None,
                };
                Ok(Linear { name, in_features: inf, out_features: outf, base, lora: adapter })
            };
            let qkv_bias = cfg.qkv_bias();
            let q = proj("q_proj", qkv_bias)?;
            let k = proj("k_proj", qkv_bias)?;
            let v = proj("v_proj", qkv_bias)?;
            let o = proj("o_proj", cfg.o_bias())?;
            let gate = proj("gate_proj", cfg.mlp_bias())?;
            let up = proj("up_proj", cfg.mlp_bias())?;
            let down = proj("down_proj", cfg.mlp_bias())?;
            layers.push(Arc::new(Layer {
                input_norm: w.get(&format!("{p}.input_layernorm.weight"), &[h], dtype, device)?,
                post_norm: w.get(&format!("{p}.post_attention_layernorm.weight"), &[h], dtype, device)?,
                q,
                k,
                v,
                o,
                gate,
                up,
                down,
            }));
        }
        Ok(Decoder {
            cfg: cfg.clone(),
            dtype,
            device: device.clone(),
            embed,
            layers,
            norm,
            lm_head,
            inv_freq: cfg.inv_freq()?,
        })
    }

    /// Final hidden states [b, t, hidden] for `input_ids` [b, t] (u32) at `positions` [b, t] (u32).
    /// `segment_ids` [b, t] separates packed samples (and padding, id 0); None = one causal sequence per row.
    pub fn hidden(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        segment_ids: Option<&Tensor>,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        self.forward_layers(input_ids, positions, segment_ids, None, ctx)
    }

    /// Incremental decoding: `input_ids` [b, t_new] are appended after the tokens already in `cache`.
    /// `segment_ids` covers all keys, cached and new: [b, t_cached + t_new].
    pub fn hidden_cached(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        segment_ids: &Tensor,
        cache: &mut KvCache,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        self.forward_layers(input_ids, positions, Some(segment_ids), Some(cache), ctx)
    }

    fn forward_layers(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        segment_ids: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let cfg = &self.cfg;
        let mut x = self.embed.index_select(&input_ids.flatten_all()?, 0)?.reshape((b, t, cfg.hidden_size))?;
        let (cos, sin) = kernels::rope::rope_tables(&self.inv_freq, positions, self.dtype)?;
        let env = Arc::new(LayerEnv {
            cos,
            sin,
            segment_ids: segment_ids.cloned(),
            heads: (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim()),
            eps: cfg.rms_norm_eps,
        });
        if let Some(c) = cache.as_deref_mut() {
            c.layers.resize_with(self.layers.len(), || None);
        }
        for (li, layer) in self.layers.iter().enumerate() {
            if kernels::profile::enabled() {
                kernels::profile::set_label(&format!("layer {li}"));
            }
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[li]);
            x = match (&ctx.checkpoint, slot) {
                (Some(side), None) => checkpointed(layer, &env, &x, ctx, side.clone())?,
                (_, slot) => layer.forward(&env, &x, ctx, slot)?,
            };
        }
        kernels::profile::set_label("head");
        kernels::rms_norm::rms_norm(&x, &self.norm, env.eps)
    }

    /// Full logits [b, t, vocab] in f32 — for evaluation, parity tests and sampling; training uses `target_log_probs`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        kernels::frozen_linear::frozen_linear(hidden, &self.lm_head, None)?.to_dtype(DType::F32)
    }

    /// log p(target) per position, [b·t] f32, through the chunked lm_head + log-softmax (full logits never exist).
    pub fn target_log_probs(&self, hidden: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let h2 = hidden.flatten_to(D::Minus2)?;
        let chunk = (8 * 1024 * 1024 / self.cfg.vocab_size.max(1)).max(1);
        kernels::cross_entropy::linear_log_probs(&h2, &self.lm_head, &targets.flatten_all()?, chunk)
    }

    /// True when the decoder projections are NF4 (QLoRA).
    pub fn is_quantized(&self) -> bool {
        self.linears().any(|l| l.is_nf4())
    }

    fn linears(&self) -> impl Iterator<Item = &Linear> {
        self.layers.iter().flat_map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down])
    }

    /// (module path, adapter) for every adapted projection, in model order.
    pub fn adapters(&self) -> Vec<(&str, &LoraAdapter)> {
        self.linears().filter_map(|l| l.lora.as_ref().map(|a| (l.name.as_str(), a))).collect()
    }

    /// Trainable parameters in a stable order: for each adapter, A then B.
    pub fn trainable_vars(&self) -> Vec<Var> {
        crate::lora::trainable_vars(&self.adapters())
    }

    pub fn trainable_param_count(&self) -> usize {
        self.trainable_vars().iter().map(|v| v.elem_count()).sum()
    }

    /// Merged weights (W + scale·B·A) in `dtype` under HF tensor names, for export.
    pub fn merged_state_dict(&self, dtype: DType) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed.to_dtype(dtype)?)];
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), layer.input_norm.to_dtype(dtype)?));
            out.push((format!("{p}.post_attention_layernorm.weight"), layer.post_norm.to_dtype(dtype)?));
            for lin in [&layer.q, &layer.k, &layer.v, &layer.o, &layer.gate, &layer.up, &layer.down] {
                out.push((format!("{}.weight", lin.name), lin.merged_weight_f32()?.to_dtype(dtype)?));
                if let Some(b) = lin.bias() {
                    out.push((format!("{}.bias", lin.name), b.to_dtype(dtype)?));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.to_dtype(dtype)?));
        if !self.cfg.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), self.lm_head.to_dtype(dtype)?));
        }
        Ok(out)
    }

    /// Set adapter weights from a PEFT adapter file (resume, or loading a trained adapter).
    pub fn load_adapter_tensors(&self, path: &Path) -> std::result::Result<(), ModelError> {
        super::linear::load_peft_adapter(path, &self.adapters(), &self.device)
    }
}

/// One projection's frozen base weight: a bitsandbytes 4-bit tensor set when the checkpoint has one,
/// NF4-quantised while loading when asked (one matrix dense on the host at a time), else dense.
#[allow(clippy::too_many_arguments)]
pub(super) fn load_base(
    w: &Weights,
    dir: &Path,
    name: &str,
    shape: [usize; 2],
    dtype: DType,
    device: &Device,
    bias: Option<Tensor>,
    opts: &LoadOptions,
) -> std::result::Result<BaseWeight, ModelError> {
    let wname = format!("{name}.weight");
    let state_name = format!("{wname}.quant_state.bitsandbytes__nf4");
    if w.contains(&state_name) {
        return Ok(BaseWeight::Nf4 { w: load_bnb(w, dir, &wname, shape, device)?, bias, compute: dtype });
    }
    match opts.quantize_nf4 {
        Some(q) => {
            let dense = w.get(&wname, &shape, DType::F32, &Device::Cpu)?;
            let stored = w.get_raw(&wname, &Device::Cpu)?.dtype();
            let values = dense.flatten_all()?.to_vec1::<f32>()?;
            drop(dense);
            let nf = nf4::Nf4Weight::quantize(&values, shape, stored, q);
            Ok(BaseWeight::Nf4 { w: nf.to_packed(device)?, bias, compute: dtype })
        }
        None => Ok(BaseWeight::Dense { w: w.get(&wname, &shape, dtype, device)?, bias }),
    }
}

/// A bitsandbytes-saved 4-bit weight (`P.weight` + `.absmax`, `.quant_map`, `.nested_*`, `.quant_state.*`).
fn load_bnb(
    w: &Weights,
    dir: &Path,
    wname: &str,
    shape: [usize; 2],
    device: &Device,
) -> std::result::Result<kernels::nf4_linear::Nf4Packed, ModelError> {
    let bad = |problem: String| ModelError::Config { path: dir.to_path_buf(), problem: format!("{wname}: {problem}") };
    let state_bytes = w.get_raw(&format!("{wname}.quant_state.bitsandbytes__nf4"), &Device::Cpu)?.flatten_all()?;
    let state = BnbQuantState::parse(&state_bytes.to_vec1::<u8>()?).map_err(bad)?;
    if state.quant_type != "nf4" {
        return Err(ModelError::Unsupported(format!(
            "{wname}: bitsandbytes quant_type `{}`; only nf4 is supported",
            state.quant_type
        )));
    }
    if state.shape != shape {
        return Err(ModelError::BadShape {
            dir: dir.to_path_buf(),
            name: wname.to_string(),
            found: state.shape.to_vec(),
            expected: shape.to_vec(),
        });
    }
    let packed = w.get_raw(wname, device)?.flatten_all()?;
    let code = w.get_raw(&format!("{wname}.quant_map"), device)?.flatten_all()?.to_dtype(DType::F32)?;
    let absmax_t = w.get_raw(&format!("{wname}.absmax"), device)?.flatten_all()?;
    let absmax = if absmax_t.dtype() == DType::U8 {
        let offset = state.nested_offset.ok_or_else(|| bad("double-quantised absmax but no nested_offset".into()))?;
        kernels::nf4_linear::Nf4Absmax::Double {
            q: absmax_t,
            nested: w.get_raw(&format!("{wname}.nested_absmax"), device)?.flatten_all()?.to_dtype(DType::F32)?,
            map: w.get_raw(&format!("{wname}.nested_quant_map"), device)?.flatten_all()?.to_dtype(DType::F32)?,
            offset,
            nested_blocksize: state.nested_blocksize.unwrap_or(nf4::NESTED_BLOCKSIZE),
        }
    } else {
        kernels::nf4_linear::Nf4Absmax::F32(absmax_t.to_dtype(DType::F32)?)
    };
    let p = kernels::nf4_linear::Nf4Packed {
        packed,
        absmax,
        code,
        blocksize: state.blocksize,
        shape: (shape[0], shape[1]),
        store_dtype: state.dtype,
    };
    p.validate().map_err(|e| bad(e.to_string()))?;
    Ok(p)
}
