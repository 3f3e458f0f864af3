//! Fixture helpers for the trainer's integration tests: tiny models written by
//! code, synthesised `/opt/ml` trees, and running the `train` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use trainer::model::ModelConfig;

/// A tiny Llama-architecture config over the demo tokenizer's vocabulary.
pub fn tiny_config_json(layers: usize, hidden: usize) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "intermediate_size": hidden * 2, "num_hidden_layers": layers,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": trainer::demo::demo_vocab().unwrap(),
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256,
        "tie_word_embeddings": false, "hidden_act": "silu", "torch_dtype": "float32"
    })
}

/// Write config.json, random weights and the demo tokenizer into `dir`.
pub fn write_model(dir: &Path, cfg: &serde_json::Value, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(cfg).unwrap()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), trainer::demo::TOKENIZER_JSON).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), trainer::demo::TOKENIZER_CONFIG_JSON).unwrap();
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    trainer::demo::write_random_checkpoint(dir, &cfg, seed).unwrap();
}

/// A tiny T5 (the demo's FLAN-T5 architecture, d_model 64) over the demo tokenizer's vocabulary.
pub fn tiny_t5_config_json() -> serde_json::Value {
    let mut c = trainer::demo::demo_t5_config_json().unwrap();
    for (k, v) in [("d_model", 64), ("d_kv", 16), ("d_ff", 128)] {
        c[k] = v.into();
    }
    c
}

/// Write a T5 config.json, random weights and the demo tokenizer into `dir`.
pub fn write_t5_model(dir: &Path, cfg: &serde_json::Value, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(cfg).unwrap()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), trainer::demo::TOKENIZER_JSON).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), trainer::demo::TOKENIZER_CONFIG_JSON).unwrap();
    let cfg = trainer::model::t5::T5Config::from_json(cfg, &path).unwrap();
    trainer::demo::write_random_t5_checkpoint(dir, &cfg, seed).unwrap();
}

/// A short LoRA job on the tiny model: 3 steps, a metric line per step.
pub const SMALL_JOB: &[(&str, &str)] = &[
    ("max_steps", "3"),
    ("lora_r", "4"),
    ("per_device_batch_size", "4"),
    ("max_seq_length", "32"),
    ("logging_steps", "1"),
];

/// Prompt/completion rows with a learnable pattern.
pub fn rows(n: usize) -> String {
    (0..n)
        .map(|i| {
            let (a, b) = (i % 7, (i * 3) % 5);
            serde_json::json!({"prompt": format!("Add {a} and {b}:"), "completion": format!(" {}", a + b)}).to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The `train` binary: nextest's archive (GPU machine) remaps it to NEXTEST_BIN_EXE_train.
pub fn train_bin() -> String {
    std::env::var("NEXTEST_BIN_EXE_train").unwrap_or_else(|_| env!("CARGO_BIN_EXE_train").to_string())
}

pub struct Job {
    pub dir: tempfile::TempDir,
}

impl Job {
    /// An /opt/ml tree with a tiny model channel, `train` data and hyperparameters (all strings, as SageMaker writes them).
    pub fn new(hp: &[(&str, &str)], train_rows: &str) -> Job {
        let dir = tempfile::tempdir().unwrap();
        let job = Job { dir };
        write_model(&job.channel("model"), &tiny_config_json(2, 32), 7);
        std::fs::create_dir_all(job.channel("train")).unwrap();
        std::fs::write(job.channel("train").join("data.jsonl"), train_rows).unwrap();
        job.set_hyperparameters(hp);
        job
    }

    /// [`Job::new`] with the tiny T5 as the `model` channel.
    pub fn new_t5(hp: &[(&str, &str)], train_rows: &str) -> Job {
        let job = Job::new(hp, train_rows);
        std::fs::remove_dir_all(job.channel("model")).unwrap();
        write_t5_model(&job.channel("model"), &tiny_t5_config_json(), 7);
        job
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn channel(&self, name: &str) -> PathBuf {
        self.root().join("input/data").join(name)
    }

    pub fn set_hyperparameters(&self, hp: &[(&str, &str)]) {
        let cfg = self.root().join("input/config");
        std::fs::create_dir_all(&cfg).unwrap();
        let map: serde_json::Map<String, serde_json::Value> =
            hp.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string()))).collect();
        std::fs::write(cfg.join("hyperparameters.json"), serde_json::Value::Object(map).to_string()).unwrap();
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(train_bin());
        c.arg("train").arg("--ml-root").arg(self.root()).args(args);
        c.env_remove("OXTUNE_ML_ROOT").env_remove("SAGEMAKER_BASE_DIR").env("OXTUNE_DEVICE", "cpu");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub fn failure(&self) -> Option<String> {
        std::fs::read_to_string(self.root().join("output/failure")).ok()
    }

    pub fn summary(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.root().join("model/training_summary.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

/// Per-step training losses from a summary's history, as exact f64 bits.
pub fn loss_bits(summary: &serde_json::Value) -> Vec<(u64, u64)> {
    summary["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| Some((r["step"].as_u64()?, r.get("loss")?.as_f64()?.to_bits())))
        .collect()
}

/// The step of the newest complete checkpoint under `dir`.
pub fn newest_checkpoint_step(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("checkpoint-")?.parse().ok())
        .max()
}

pub fn text(o: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}
