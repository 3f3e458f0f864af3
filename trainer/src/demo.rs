//! The embedded demo: a tiny Llama-architecture model — or with `--family t5` a tiny FLAN-T5-
//! architecture encoder–decoder — (random weights generated here, seeded) with the bundled
//! tokenizer and instruction dataset, written as a SageMaker `/opt/ml` tree so `train demo`
//! exercises exactly the job path.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{io_err, TrainError};
use crate::model::config::module_group;
use crate::model::t5::T5Config;
use crate::model::ModelConfig;
use crate::rng::Rng;
use crate::sagemaker::MlPaths;

pub const TOKENIZER_JSON: &str = include_str!("../assets/demo/tokenizer.json");
pub const TOKENIZER_CONFIG_JSON: &str = include_str!("../assets/demo/tokenizer_config.json");
pub const TRAIN_JSONL: &str = include_str!("../assets/demo/train.jsonl");
pub const VALIDATION_JSONL: &str = include_str!("../assets/demo/validation.jsonl");

/// Marks a directory as created by `train demo`, so it may be wiped on the next demo run.
const MARKER: &str = ".oxtune-demo";

/// Vocabulary size of the bundled tokenizer (base vocab + added tokens).
pub fn demo_vocab() -> Result<usize, TrainError> {
    let v: serde_json::Value =
        serde_json::from_str(TOKENIZER_JSON).map_err(|e| TrainError::BadInput(format!("demo tokenizer: {e}")))?;
    let base = v
        .pointer("/model/vocab")
        .and_then(|m| m.as_object())
        .map(|m| m.values().filter_map(|x| x.as_u64()).max().unwrap_or(0))
        .unwrap_or(0);
    let added = v
        .get("added_tokens")
        .and_then(|a| a.as_array())
        .map(|a| a.iter().filter_map(|t| t.get("id")?.as_u64()).max().unwrap_or(0))
        .unwrap_or(0);
    Ok(base.max(added) as usize + 1)
}

/// config.json of the demo model: Llama architecture, 4 layers, hidden 128, GQA 4:2, head dim 32.
pub fn demo_config_json() -> Result<serde_json::Value, TrainError> {
    Ok(serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "vocab_size": demo_vocab()?,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 512,
        "tie_word_embeddings": false,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "attention_bias": false,
        "mlp_bias": false
    }))
}

/// Which tiny model the demo trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoFamily {
    Llama,
    T5,
}

impl DemoFamily {
    pub fn parse(name: &str) -> Result<DemoFamily, String> {
        match name.to_ascii_lowercase().as_str() {
            "llama" => Ok(DemoFamily::Llama),
            "t5" | "flan-t5" => Ok(DemoFamily::T5),
            _ => Err(format!("--family `{name}`: the demo has a `llama` (default) and a `t5` model")),
        }
    }

    /// "tiny Llama-architecture model" / "tiny FLAN-T5-architecture model".
    pub fn describe(&self) -> &'static str {
        match self {
            DemoFamily::Llama => "tiny Llama-architecture model",
            DemoFamily::T5 => "tiny FLAN-T5-architecture encoder–decoder",
        }
    }
}

/// config.json of the T5 demo model: FLAN-T5's architecture (gated-GELU, untied head), 2 + 2
/// layers, d_model 128, 4 heads of 32; the demo tokenizer's pad is the decoder start token.
pub fn demo_t5_config_json() -> Result<serde_json::Value, TrainError> {
    Ok(serde_json::json!({
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "d_model": 128,
        "d_kv": 32,
        "d_ff": 256,
        "num_heads": 4,
        "num_layers": 2,
        "num_decoder_layers": 2,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu",
        "is_gated_act": true,
        "layer_norm_epsilon": 1e-6,
        "vocab_size": demo_vocab()?,
        "pad_token_id": 2,
        "eos_token_id": 1,
        "decoder_start_token_id": 2,
        "tie_word_embeddings": false,
        "scale_decoder_outputs": false,
        "is_encoder_decoder": true,
        "torch_dtype": "float32"
    }))
}

/// A T5 checkpoint of `cfg` with seeded random weights: embedding N(0, 1), projections N(0, 0.05),
/// position bias and head N(0, 0.1), unit norms.
pub fn write_random_t5_checkpoint(dir: &Path, cfg: &T5Config, seed: u64) -> Result<(), TrainError> {
    let mut rng = Rng::derive(seed, "demo-t5-weights");
    let mut t: BTreeMap<String, Tensor> = BTreeMap::new();
    for (name, shape) in cfg.checkpoint_shapes() {
        let tensor = if name.contains("layer_norm") {
            Tensor::ones(shape, DType::F32, &Device::Cpu)?
        } else {
            let std = match name.as_str() {
                "shared.weight" => 1.0,
                n if n == "lm_head.weight" || n.ends_with("relative_attention_bias.weight") => 0.1,
                _ => 0.05,
            };
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
            Tensor::from_vec(v, shape, &Device::Cpu)?
        };
        t.insert(name, tensor);
    }
    crate::lora::save_safetensors(&dir.join("model.safetensors"), &t)?;
    Ok(())
}

/// Write a HF checkpoint of `cfg` with seeded random weights (N(0, 0.02) projections, unit norms).
/// The lm_head gets a larger scale so a LoRA-only fine-tune can move the output distribution far.
pub fn write_random_checkpoint(dir: &Path, cfg: &ModelConfig, seed: u64) -> Result<(), TrainError> {
    let mut rng = Rng::derive(seed, "demo-weights");
    let mut normal = |shape: &[usize], std: f64| -> candle_core::Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    };
    let ones = |n: usize| Tensor::ones(n, DType::F32, &Device::Cpu);
    let h = cfg.hidden_size;
    let mut t: BTreeMap<String, Tensor> = BTreeMap::new();
    t.insert("model.embed_tokens.weight".into(), normal(&[cfg.vocab_size, h], 1.0)?);
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        t.insert(format!("{p}.input_layernorm.weight"), ones(h)?);
        t.insert(format!("{p}.post_attention_layernorm.weight"), ones(h)?);
        for (name, inf, outf) in cfg.projection_shapes() {
            t.insert(format!("{p}.{}.{name}.weight", module_group(name)), normal(&[outf, inf], 0.02)?);
        }
    }
    t.insert("model.norm.weight".into(), ones(h)?);
    t.insert("lm_head.weight".into(), normal(&[cfg.vocab_size, h], 0.1)?);
    crate::lora::save_safetensors(&dir.join("model.safetensors"), &t)?;
    Ok(())
}

/// Demo hyperparameters: what SageMaker would write (every value a string). T5 pairs are not packed.
pub fn demo_hyperparameters(steps: Option<u64>, family: DemoFamily) -> BTreeMap<String, String> {
    let mut hp: BTreeMap<String, String> = [
        ("lora_r", "16"),
        ("lora_alpha", "32"),
        ("lora_dropout", "0.0"),
        ("learning_rate", "3e-3"),
        ("lr_scheduler", "cosine"),
        ("warmup_steps", "10"),
        ("epochs", "3"),
        ("per_device_batch_size", "8"),
        ("max_seq_length", "128"),
        ("packing", "true"),
        ("logging_steps", "10"),
        ("eval_steps", "50"),
        ("save_steps", "50"),
        ("seed", "42"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if let Some(s) = steps {
        hp.insert("max_steps".into(), s.to_string());
    }
    if family == DemoFamily::T5 {
        hp.insert("packing".into(), "false".into());
        hp.insert("max_target_length".into(), "32".into());
    }
    hp
}

/// Create the demo `/opt/ml` tree under `root` (wiping a previous demo tree there).
pub fn prepare(root: &Path, steps: Option<u64>, family: DemoFamily) -> Result<MlPaths, TrainError> {
    if root.exists() {
        let is_demo = root.join(MARKER).exists();
        let empty = std::fs::read_dir(root).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !is_demo && !empty {
            return Err(TrainError::BadInput(format!(
                "{} exists and was not created by `train demo`; choose another --ml-root",
                root.display()
            )));
        }
        std::fs::remove_dir_all(root).map_err(io_err(root))?;
    }
    let paths = MlPaths::new(root);
    let model = paths.channel("model");
    for d in [paths.config_dir(), model.clone(), paths.channel("train"), paths.channel("validation")] {
        std::fs::create_dir_all(&d).map_err(io_err(&d))?;
    }
    std::fs::write(root.join(MARKER), "created by `train demo`\n").map_err(io_err(root))?;
    let write = |p: &Path, s: &str| std::fs::write(p, s).map_err(io_err(p));
    let cfg_json = match family {
        DemoFamily::Llama => demo_config_json()?,
        DemoFamily::T5 => demo_t5_config_json()?,
    };
    let config_path = model.join("config.json");
    write(&config_path, &serde_json::to_string_pretty(&cfg_json).unwrap_or_default())?;
    write(&model.join("tokenizer.json"), TOKENIZER_JSON)?;
    write(&model.join("tokenizer_config.json"), TOKENIZER_CONFIG_JSON)?;
    match family {
        DemoFamily::Llama => write_random_checkpoint(&model, &ModelConfig::from_file(&config_path)?, 0)?,
        DemoFamily::T5 => write_random_t5_checkpoint(&model, &T5Config::from_json(&cfg_json, &config_path)?, 0)?,
    }
    write(&paths.channel("train").join("train.jsonl"), TRAIN_JSONL)?;
    write(&paths.channel("validation").join("validation.jsonl"), VALIDATION_JSONL)?;
    let hp = serde_json::to_string_pretty(&demo_hyperparameters(steps, family)).unwrap_or_default();
    write(&paths.hyperparameters(), &hp)?;
    let channels = serde_json::json!({
        "train": {"ContentType": "application/jsonlines", "TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"},
        "validation": {"ContentType": "application/jsonlines", "TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"},
        "model": {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
    });
    write(&paths.config_dir().join("inputdataconfig.json"), &channels.to_string())?;
    write(
        &paths.config_dir().join("resourceconfig.json"),
        r#"{"current_host":"algo-1","hosts":["algo-1"],"network_interface_name":"eth0","current_instance_type":"local"}"#,
    )?;
    Ok(paths)
}
