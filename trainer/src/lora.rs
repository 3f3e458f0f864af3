//! LoRA adapters: initialisation, forward, merge, and the PEFT on-disk format.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor, Var};

use crate::rng::Rng;
use kernels::lora_linear::{lora_delta, Dropout};

/// LoRA target modules: explicit names or all linear projections of the decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    AllLinear,
    Names(Vec<String>),
}

/// Module names the decoder has; `all-linear` means all of them (PEFT excludes lm_head too).
pub const LINEAR_MODULES: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
/// The projections of T5 blocks as PEFT names them (`wi` in the original T5's ungated feed-forward,
/// `wi_0` / `wi_1` in T5 v1.1 and FLAN-T5).
pub const T5_LINEAR_MODULES: &[&str] = &["q", "k", "v", "o", "wi_0", "wi_1", "wi", "wo"];

/// One adapter: `A` [r, in] and `B` [out, r], trainable, always f32.
pub struct LoraAdapter {
    pub a: Var,
    pub b: Var,
    pub scale: f64,
    pub dropout: f64,
}

/// What every adapter in a model shares.
#[derive(Debug, Clone)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub use_rslora: bool,
    pub targets: Vec<String>,
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Whether a module path (e.g. `model.layers.3.mlp.up_proj`) gets an adapter.
    pub fn targets_module(&self, path: &str) -> bool {
        let leaf = path.rsplit('.').next().unwrap_or(path);
        self.targets.iter().any(|t| t == leaf)
    }
}

impl LoraAdapter {
    /// PEFT's default init: A ~ kaiming-uniform(a=√5) = U(−1/√in, 1/√in), B = 0,
    /// so an untrained adapter leaves the model unchanged.
    pub fn init(
        in_features: usize,
        out_features: usize,
        cfg: &LoraConfig,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<LoraAdapter> {
        let bound = 1.0 / (in_features as f64).sqrt();
        let a: Vec<f32> = (0..cfg.r * in_features).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect();
        let a = Var::from_vec(a, (cfg.r, in_features), device)?;
        let b = Var::zeros((out_features, cfg.r), DType::F32, device)?;
        Ok(LoraAdapter { a, b, scale: cfg.scale(), dropout: cfg.dropout })
    }

    /// scale·B(A(dropout(x))) in f32; `x` [..., in]. Dropout only when a training RNG is given:
    /// one draw seeds the whole mask (`kernels::lora_linear`, recomputed in the backward).
    pub fn forward(&self, x: &Tensor, dropout_rng: Option<&mut Rng>) -> Result<Tensor> {
        let l = self.branch(dropout_rng);
        lora_delta(x, l.a, l.b, l.scale, l.dropout)
    }

    /// The branch as the kernels take it; draws the dropout seed when training with dropout.
    pub fn branch(&self, dropout_rng: Option<&mut Rng>) -> kernels::adapted_linear::Lora<'_> {
        let dropout = match dropout_rng {
            Some(rng) if self.dropout > 0.0 => Some(Dropout { keep: 1.0 - self.dropout, seed: rng.next_u64() }),
            _ => None,
        };
        kernels::adapted_linear::Lora { a: self.a.as_tensor(), b: self.b.as_tensor(), scale: self.scale, dropout }
    }

    /// scale·B·A [out, in] in f32: what merging adds to the base weight.
    pub fn delta_weight(&self) -> Result<Tensor> {
        self.b.as_tensor().matmul(self.a.as_tensor())? * self.scale
    }
}

/// PEFT tensor key of an adapter matrix for a module path.
/// The trainable variables of `adapters` in a stable order: for each adapter, A then B.
pub fn trainable_vars(adapters: &[(&str, &LoraAdapter)]) -> Vec<candle_core::Var> {
    adapters.iter().flat_map(|(_, a)| [a.a.clone(), a.b.clone()]).collect()
}

pub fn peft_key(module: &str, which: char) -> String {
    format!("base_model.model.{module}.lora_{which}.weight")
}

/// PEFT's task type of a decoder-only model's adapter.
pub const TASK_CAUSAL_LM: &str = "CAUSAL_LM";
/// PEFT's task type of an encoder–decoder (T5) model's adapter.
pub const TASK_SEQ_2_SEQ_LM: &str = "SEQ_2_SEQ_LM";

/// `adapter_config.json` as PEFT writes it (keys per formats.md §1).
pub fn peft_config_json(cfg: &LoraConfig, base_model_name_or_path: &str, task_type: &str) -> serde_json::Value {
    let mut targets = cfg.targets.clone();
    targets.sort();
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": targets,
        "exclude_modules": null,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": cfg.use_rslora,
        "use_dora": false,
        "modules_to_save": null,
        "init_lora_weights": true,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": true,
        "revision": null,
    })
}

/// The settings of a PEFT `adapter_config.json` this trainer can load (LoRA, no DoRA, one rank for
/// every module); the error says which key is missing or unsupported.
pub fn lora_config_from_peft(json: &serde_json::Value) -> std::result::Result<LoraConfig, String> {
    let peft_type = json.get("peft_type").and_then(|v| v.as_str()).unwrap_or("LORA");
    if !peft_type.eq_ignore_ascii_case("LORA") {
        return Err(format!("peft_type `{peft_type}` is not LoRA"));
    }
    if json.get("use_dora").and_then(|v| v.as_bool()).unwrap_or(false) {
        return Err("use_dora=true adapters are not supported".into());
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if json.get(key).and_then(|v| v.as_object()).is_some_and(|m| !m.is_empty()) {
            return Err(format!("`{key}` (per-module ranks) is not supported"));
        }
    }
    let r = json.get("r").and_then(|v| v.as_u64()).filter(|r| *r > 0).ok_or("missing or invalid `r`")? as usize;
    let alpha = json.get("lora_alpha").and_then(|v| v.as_f64()).ok_or("missing or invalid `lora_alpha`")?;
    let targets = match json.get("target_modules") {
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
        // Targets match module leaf names, and the two families' names differ: either family's all.
        Some(serde_json::Value::String(s)) if s == "all-linear" => {
            LINEAR_MODULES.iter().chain(T5_LINEAR_MODULES).map(|s| s.to_string()).collect()
        }
        _ => return Err("missing `target_modules` (a list of module names)".into()),
    };
    Ok(LoraConfig {
        r,
        alpha,
        dropout: json.get("lora_dropout").and_then(|v| v.as_f64()).unwrap_or(0.0),
        use_rslora: json.get("use_rslora").and_then(|v| v.as_bool()).unwrap_or(false),
        targets,
    })
}

/// Write `adapter_model.safetensors` (metadata format=pt, like PEFT) from (module path, adapter) pairs.
pub fn save_adapter_tensors(path: &Path, adapters: &[(&str, &LoraAdapter)]) -> Result<()> {
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    for (module, lora) in adapters {
        tensors.insert(peft_key(module, 'A'), lora.a.as_tensor().to_dtype(DType::F32)?.contiguous()?);
        tensors.insert(peft_key(module, 'B'), lora.b.as_tensor().to_dtype(DType::F32)?.contiguous()?);
    }
    save_safetensors(path, &tensors)
}

/// Save tensors with PEFT/transformers' `{"format": "pt"}` metadata.
pub fn save_safetensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let metadata: std::collections::HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let data: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    safetensors::tensor::serialize_to_file(data, Some(metadata), path)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrained_adapter_is_a_no_op_and_init_bound_holds() {
        let cfg = LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, use_rslora: false, targets: vec!["q_proj".into()] };
        let mut rng = Rng::new(1);
        let lora = LoraAdapter::init(16, 8, &cfg, &mut rng, &Device::Cpu).unwrap();
        let bound = 1.0 / 4.0;
        let a = lora.a.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(a.iter().all(|v| v.abs() <= bound) && a.iter().any(|v| v.abs() > bound * 0.5));
        let x = Tensor::ones((2, 3, 16), DType::F32, &Device::Cpu).unwrap();
        let y = lora.forward(&x, None).unwrap();
        assert_eq!(y.dims(), &[2, 3, 8]);
        assert_eq!(y.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        assert!(cfg.targets_module("model.layers.0.self_attn.q_proj"));
        assert!(!cfg.targets_module("model.layers.0.self_attn.k_proj"));
        let rs = LoraConfig { use_rslora: true, ..cfg };
        assert!((rs.scale() - 4.0).abs() < 1e-12);
    }
}
