//! Random weights without a checkpoint: the tensors a Hugging Face checkpoint of `cfg` would hold,
//! drawn when asked for (benchmarks of large architectures; nothing is written to disk and nothing
//! is kept here, so each tensor exists once, in the decoder that asked for it).
//!
//! Values follow transformers' `from_config` initialisation: projections, embeddings and lm_head
//! N(0, initializer_range = 0.02), norms 1, biases 0. Host-side draws use the seeded [`Rng`] (the
//! same values for the same seed); on a GPU the normal draws come from the device's generator.
//!
//! With `nf4` set, every decoder projection is served as a bitsandbytes 4-bit tensor set
//! (`weight` U8 codes, `.absmax`, `.quant_map`, `.nested_*`, `.quant_state.bitsandbytes__nf4`), so
//! the decoder loads it as an already-quantised checkpoint. One random matrix per projection shape
//! is quantised with the trainer's own NF4 codec and every layer gets its own device copy of it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Tensor};

use super::config::{module_group, ModelConfig};
use crate::quant::nf4::{Absmax, Nf4Options, Nf4Weight, NESTED_BLOCKSIZE};
use crate::rng::Rng;

/// transformers' default `initializer_range` for Llama, Mistral and Qwen2.
pub const INIT_STD: f64 = 0.02;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Init {
    Normal,
    Ones,
    Zeros,
}

/// One part of a bitsandbytes 4-bit projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Nf4Part {
    Packed,
    Absmax,
    QuantMap,
    NestedAbsmax,
    NestedQuantMap,
    State,
}

#[derive(Clone, Debug)]
enum Entry {
    Dense { shape: Vec<usize>, init: Init },
    Nf4 { shape: [usize; 2], part: Nf4Part },
}

/// A random checkpoint of `cfg`; see the module docs.
pub struct RandomWeights {
    entries: BTreeMap<String, Entry>,
    seed: u64,
    /// The checkpoint's dtype (what `get_raw` returns for dense tensors, and what NF4 rounds to).
    stored: DType,
    nf4: Option<Nf4Options>,
    quantised: Mutex<HashMap<[usize; 2], Arc<Nf4Weight>>>,
}

impl RandomWeights {
    /// Tensors of `cfg` stored in bf16; NF4 decoder projections when `nf4` is given.
    pub fn new(cfg: &ModelConfig, seed: u64, nf4: Option<Nf4Options>) -> RandomWeights {
        let mut entries = BTreeMap::new();
        let h = cfg.hidden_size;
        let dense = |shape: Vec<usize>, init: Init| Entry::Dense { shape, init };
        entries.insert("model.embed_tokens.weight".to_string(), dense(vec![cfg.vocab_size, h], Init::Normal));
        if !cfg.tie_word_embeddings {
            entries.insert("lm_head.weight".to_string(), dense(vec![cfg.vocab_size, h], Init::Normal));
        }
        entries.insert("model.norm.weight".to_string(), dense(vec![h], Init::Ones));
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            entries.insert(format!("{p}.input_layernorm.weight"), dense(vec![h], Init::Ones));
            entries.insert(format!("{p}.post_attention_layernorm.weight"), dense(vec![h], Init::Ones));
            for (module, inf, outf) in cfg.projection_shapes() {
                let name = format!("{p}.{}.{module}", module_group(module));
                let bias = match module {
                    "q_proj" | "k_proj" | "v_proj" => cfg.qkv_bias(),
                    "o_proj" => cfg.o_bias(),
                    _ => cfg.mlp_bias(),
                };
                if bias {
                    entries.insert(format!("{name}.bias"), dense(vec![outf], Init::Zeros));
                }
                let w = format!("{name}.weight");
                match nf4 {
                    None => {
                        entries.insert(w, dense(vec![outf, inf], Init::Normal));
                    }
                    Some(opts) => {
                        let shape = [outf, inf];
                        let mut parts = vec![
                            ("", Nf4Part::Packed),
                            (".absmax", Nf4Part::Absmax),
                            (".quant_map", Nf4Part::QuantMap),
                            (".quant_state.bitsandbytes__nf4", Nf4Part::State),
                        ];
                        if opts.double_quant {
                            parts.push((".nested_absmax", Nf4Part::NestedAbsmax));
                            parts.push((".nested_quant_map", Nf4Part::NestedQuantMap));
                        }
                        for (suffix, part) in parts {
                            entries.insert(format!("{w}{suffix}"), Entry::Nf4 { shape, part });
                        }
                    }
                }
            }
        }
        RandomWeights { entries, seed, stored: DType::BF16, nf4, quantised: Mutex::new(HashMap::new()) }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// Shape of a dense tensor (None for unknown names and NF4 parts).
    pub fn dense_shape(&self, name: &str) -> Option<&[usize]> {
        match self.entries.get(name)? {
            Entry::Dense { shape, .. } => Some(shape),
            Entry::Nf4 { .. } => None,
        }
    }

    /// A fresh tensor `name` in `dtype` on `device`; None for unknown names.
    pub fn get(&self, name: &str, dtype: DType, device: &Device) -> Option<Result<Tensor>> {
        let entry = self.entries.get(name)?;
        Some(match entry {
            Entry::Dense { shape, init } => self.dense(name, shape, *init, dtype, device),
            Entry::Nf4 { shape, part } => self.nf4_part(*shape, *part, device),
        })
    }

    /// As stored in a checkpoint: dense tensors in the checkpoint dtype, NF4 parts as bitsandbytes stores them.
    pub fn get_raw(&self, name: &str, device: &Device) -> Option<Result<Tensor>> {
        self.get(name, self.stored, device)
    }

    fn dense(&self, name: &str, shape: &[usize], init: Init, dtype: DType, device: &Device) -> Result<Tensor> {
        match init {
            Init::Ones => Tensor::ones(shape, dtype, device),
            Init::Zeros => Tensor::zeros(shape, dtype, device),
            Init::Normal if device.is_cpu() => {
                let n: usize = shape.iter().product();
                Tensor::from_vec(normal_values(self.seed, name, n), shape, device)?.to_dtype(dtype)
            }
            // A GPU draws its own normals (seeded by `Device::set_seed`), so nothing large crosses the bus.
            Init::Normal => Tensor::randn(0f32, INIT_STD as f32, shape, device)?.to_dtype(dtype),
        }
    }

    /// The quantised random matrix of this projection shape (made once, on the host).
    fn quantised(&self, shape: [usize; 2]) -> Arc<Nf4Weight> {
        let mut cache = self.quantised.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(shape)
            .or_insert_with(|| {
                let values = normal_values(self.seed, &format!("nf4-{}x{}", shape[0], shape[1]), shape[0] * shape[1]);
                Arc::new(Nf4Weight::quantize(&values, shape, self.stored, self.nf4.unwrap_or_default()))
            })
            .clone()
    }

    fn nf4_part(&self, shape: [usize; 2], part: Nf4Part, device: &Device) -> Result<Tensor> {
        let w = self.quantised(shape);
        match (part, &w.absmax) {
            (Nf4Part::Packed, _) => Tensor::from_slice(&w.packed, (w.packed.len(), 1), device),
            (Nf4Part::QuantMap, _) => Tensor::from_slice(&w.code, w.code.len(), device),
            (Nf4Part::Absmax, Absmax::F32(a)) => Tensor::from_slice(a, a.len(), device),
            (Nf4Part::Absmax, Absmax::Double { dq, .. }) => Tensor::from_slice(&dq.q, dq.q.len(), device),
            (Nf4Part::NestedAbsmax, Absmax::Double { dq, .. }) => {
                Tensor::from_slice(&dq.nested_absmax, dq.nested_absmax.len(), device)
            }
            (Nf4Part::NestedQuantMap, Absmax::Double { map, .. }) => Tensor::from_slice(map, map.len(), device),
            (Nf4Part::NestedAbsmax | Nf4Part::NestedQuantMap, Absmax::F32(_)) => {
                candle_core::bail!("random NF4 weights without double quantisation have no nested absmax")
            }
            (Nf4Part::State, absmax) => {
                let mut state = serde_json::json!({
                    "quant_type": "nf4",
                    "blocksize": w.blocksize,
                    "dtype": "bfloat16",
                    "shape": [shape[0], shape[1]],
                });
                if let Absmax::Double { dq, .. } = absmax {
                    state["nested_blocksize"] = NESTED_BLOCKSIZE.into();
                    state["nested_offset"] = f64::from(dq.offset).into();
                }
                let bytes = state.to_string().into_bytes();
                Tensor::from_vec(bytes.clone(), bytes.len(), device)
            }
        }
    }
}

/// `n` values from N(0, INIT_STD), seeded by (seed, name).
fn normal_values(seed: u64, name: &str, n: usize) -> Vec<f32> {
    let mut rng = Rng::derive(seed, name);
    (0..n).map(|_| (rng.normal() * INIT_STD) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::Weights;
    use crate::model::{Decoder, ForwardCtx, LoadOptions};

    fn tiny() -> ModelConfig {
        ModelConfig::from_json_str(
            r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":64,"intermediate_size":128,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,
            "rms_norm_eps":1e-5,"max_position_embeddings":256,"tie_word_embeddings":false}"#,
        )
        .unwrap()
    }

    fn forward(model: &Decoder) -> Vec<f32> {
        let ids = Tensor::new(&[[1u32, 5, 9, 2]], &Device::Cpu).unwrap();
        let pos = Tensor::new(&[[0u32, 1, 2, 3]], &Device::Cpu).unwrap();
        let h = model.hidden(&ids, &pos, None, &mut ForwardCtx::eval()).unwrap();
        model.logits(&h).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn dense_random_decoder_is_seeded_and_finite() {
        let cfg = tiny();
        let load = |seed| {
            let w = Weights::random(&cfg, seed, None);
            Decoder::from_weights(&w, &cfg, DType::F32, &Device::Cpu, None, &LoadOptions::default()).unwrap()
        };
        let (a, b, c) = (forward(&load(1)), forward(&load(1)), forward(&load(2)));
        assert_eq!(a.len(), 4 * 100);
        assert!(a.iter().all(|x| x.is_finite()));
        assert_eq!(a, b, "same seed, same weights");
        assert_ne!(a, c, "another seed, other weights");
        let w = Weights::random(&cfg, 1, None);
        assert!(w.contains("lm_head.weight") && !w.contains("model.layers.0.self_attn.q_proj.bias"));
        assert!(w.get("model.norm.weight", &[64], DType::F32, &Device::Cpu).is_ok());
        assert!(w.get("model.norm.weight", &[65], DType::F32, &Device::Cpu).is_err(), "shape is checked");
    }

    #[test]
    fn nf4_random_decoder_loads_as_a_bitsandbytes_checkpoint() {
        let cfg = tiny();
        for double_quant in [true, false] {
            let opts = Nf4Options { double_quant, ..Nf4Options::default() };
            let w = Weights::random(&cfg, 3, Some(opts));
            assert!(w.contains("model.layers.1.mlp.down_proj.weight.quant_state.bitsandbytes__nf4"));
            let model =
                Decoder::from_weights(&w, &cfg, DType::F32, &Device::Cpu, None, &LoadOptions::default()).unwrap();
            assert!(model.is_quantized());
            assert!(forward(&model).iter().all(|x| x.is_finite()));
        }
    }
}
