//! oxtune benchmark harness: real training steps of the trainer's own loops (`trainer::train::sft::train`
//! for LoRA/QLoRA, `trainer::train::grpo::train` for GRPO) on random-weight architectures built in memory
//! (`trainer::model::Weights::random`, no checkpoint on disk), plus a bf16 GEMM to measure the
//! device's matmul peak. Every run yields one JSON object (see `benches/README.md` for the fields).

pub mod emulator;
pub mod memory;
pub mod profile;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use trainer::data::{Example, RowRef, TokenizerBundle, TrainSet};
use trainer::model::{Decoder, LoadOptions, Model, ModelConfig};
use trainer::quant::nf4::Nf4Options;
use trainer::report::MetricRecord;
use trainer::rng::Rng;
use trainer::sagemaker::StopFlag;
use trainer::spec::JobSpec;
use trainer::train::grpo::{self, GrpoInputs, PromptRow};
use trainer::train::sft::{self, SftInputs};

/// What a run measures: the trainer's own method choice.
pub use trainer::spec::Method;

/// An architecture: its HF config.json values and where they come from.
#[derive(Debug, Clone)]
pub struct Arch {
    pub name: String,
    pub cfg: ModelConfig,
    pub source: String,
}

/// `tiny` (4-layer Llama, for CPU smoke runs), `llama-3.2-1b`, `llama-3.1-8b`
/// (benches/configs/, copied from launcher/data/models/), or a path to a config.json.
pub fn arch(name: &str) -> anyhow::Result<Arch> {
    let (text, source) = match name {
        "tiny" => (
            include_str!("../configs/tiny.json").to_string(),
            "benches/configs/tiny.json (a 4-layer Llama for CPU smoke runs)".into(),
        ),
        "llama-3.2-1b" => (
            include_str!("../configs/llama-3.2-1b.json").to_string(),
            "benches/configs/llama-3.2-1b.json (= launcher/data/models/llama-3.2-1b.json, meta-llama/Llama-3.2-1B)"
                .into(),
        ),
        "llama-3.1-8b" => (
            include_str!("../configs/llama-3.1-8b.json").to_string(),
            "benches/configs/llama-3.1-8b.json (= launcher/data/models/llama-3.1-8b.json, meta-llama/Llama-3.1-8B)"
                .into(),
        ),
        path => (
            std::fs::read_to_string(path).with_context(|| {
                format!("--arch {path}: not tiny, llama-3.2-1b, llama-3.1-8b or a readable config.json")
            })?,
            path.to_string(),
        ),
    };
    let cfg = ModelConfig::from_json_str(&text).map_err(|e| anyhow::anyhow!("--arch {name}: {e}"))?;
    Ok(Arch { name: name.to_string(), cfg, source })
}

/// GRPO round shape: `prompts` prompts × `generations` completions of at most `completion` tokens.
#[derive(Debug, Clone, Copy)]
pub struct GrpoShape {
    pub prompts: usize,
    pub generations: usize,
    pub completion: usize,
    pub prompt_len: usize,
}

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub method: Method,
    pub arch: Arch,
    /// Tokens per row (LoRA/QLoRA).
    pub seq: usize,
    /// Rows per optimizer step (LoRA/QLoRA); GRPO: sequences per micro-batch.
    pub batch: usize,
    /// Timed optimizer steps, after `warmup` untimed ones.
    pub steps: usize,
    pub warmup: usize,
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub gradient_checkpointing: bool,
    pub device: Device,
    pub dtype: DType,
    pub seed: u64,
    pub grpo: GrpoShape,
}

/// Model FLOPs per trained token, exactly as `oxtune estimate` counts them
/// (launcher/src/estimate.rs `ModelFacts::train_flops_per_token`, performance.md §6.2):
/// `4·N_mm + 6·N_lora + 6·L·T·d`, N_mm = decoder projections + lm_head, N_lora = LoRA A and B on
/// all seven projections, d = heads × head_dim, T = sequence length. No recomputation counted.
pub fn train_flops_per_token(cfg: &ModelConfig, rank: usize, seq: usize) -> f64 {
    let matmul = cfg.linear_param_count() + (cfg.vocab_size * cfg.hidden_size) as u64;
    let lora = cfg.lora_param_count(rank, trainer::lora::LINEAR_MODULES);
    let q_dim = (cfg.num_attention_heads * cfg.head_dim()) as f64;
    4.0 * matmul as f64 + 6.0 * lora as f64 + 6.0 * cfg.num_hidden_layers as f64 * q_dim * seq as f64
}

pub const FLOPS_FORMULA: &str = "4*N_mm + 6*N_lora + 6*L*T*d (N_mm = decoder projection weights + lm_head; N_lora = LoRA A+B params on q,k,v,o,gate,up,down; L layers; d = heads*head_dim; T = sequence length); launcher/src/estimate.rs train_flops_per_token";

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F32 => "f32",
        _ => "other",
    }
}

fn device_name(d: &Device) -> &'static str {
    if d.is_cuda() {
        "cuda"
    } else {
        "cpu"
    }
}

/// The hyperparameters a SageMaker job of this benchmark would get.
pub fn hyperparameters(c: &BenchConfig) -> BTreeMap<String, String> {
    let total = (c.warmup + c.steps).max(1);
    let mut hp: BTreeMap<String, String> = [
        ("method", c.method.name().to_string()),
        ("lora_r", c.rank.to_string()),
        ("lora_alpha", c.alpha.to_string()),
        ("lora_dropout", c.dropout.to_string()),
        ("target_modules", "all-linear".into()),
        ("learning_rate", "2e-4".into()),
        ("lr_scheduler", "constant".into()),
        ("max_steps", total.to_string()),
        ("max_grad_norm", "1.0".into()),
        ("gradient_checkpointing", c.gradient_checkpointing.to_string()),
        ("dtype", if c.dtype == DType::BF16 { "bf16" } else { "f32" }.into()),
        ("logging_steps", "1".into()),
        ("save_steps", "0".into()),
        ("seed", c.seed.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    match c.method {
        Method::Lora | Method::Qlora => {
            hp.insert("per_device_batch_size".into(), c.batch.to_string());
            hp.insert("max_seq_length".into(), c.seq.to_string());
            hp.insert("packing".into(), "true".into());
            hp.insert("train_on".into(), "all".into());
            if c.method == Method::Qlora {
                hp.insert("bnb_4bit_use_double_quant".into(), "true".into());
            }
        }
        Method::Grpo => {
            let g = c.grpo;
            let per_step = g.prompts * g.generations;
            let micro = c.batch.clamp(1, per_step);
            if !per_step.is_multiple_of(micro) {
                hp.insert("per_device_batch_size".into(), per_step.to_string());
                hp.insert("gradient_accumulation_steps".into(), "1".into());
            } else {
                hp.insert("per_device_batch_size".into(), micro.to_string());
                hp.insert("gradient_accumulation_steps".into(), (per_step / micro).to_string());
            }
            hp.insert("num_generations".into(), g.generations.to_string());
            hp.insert("max_completion_length".into(), g.completion.to_string());
            hp.insert("max_prompt_length".into(), g.prompt_len.max(1).to_string());
            hp.insert("max_seq_length".into(), (g.prompt_len + g.completion).max(8).to_string());
            hp.insert("temperature".into(), "1.0".into());
            hp.insert("reward_funcs".into(), "length".into());
            hp.insert("log_completions_steps".into(), "0".into());
            hp.insert("beta".into(), "0.0".into());
        }
    }
    hp
}

/// The random-weight model of `c` with LoRA adapters, built in memory.
fn build_model(c: &BenchConfig, spec: &JobSpec) -> anyhow::Result<Model> {
    let nf4 = (c.method == Method::Qlora).then_some(Nf4Options { double_quant: true, ..Nf4Options::default() });
    if c.device.is_cuda() {
        c.device.set_seed(c.seed)?;
    }
    let weights = trainer::model::weights::Weights::random(&c.arch.cfg, c.seed, nf4);
    let lora = spec.lora_config(trainer::lora::LINEAR_MODULES).map_err(|e| anyhow::anyhow!(e))?;
    let mut init_rng = Rng::derive(spec.seed, "lora-init");
    let opts = LoadOptions { quantize_nf4: nf4 };
    Ok(Model::Causal(Decoder::from_weights(
        &weights,
        &c.arch.cfg,
        c.dtype,
        &c.device,
        Some((&lora, &mut init_rng)),
        &opts,
    )?))
}

/// Random token ids below `vocab` (the values do not change the work done).
fn random_ids(rng: &mut Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(vocab) as u32).collect()
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Runs one benchmark and returns its result object.
pub fn run(c: &BenchConfig) -> anyhow::Result<Value> {
    if c.steps == 0 {
        bail!("--steps must be at least 1 (timed steps after warm-up)");
    }
    let spec = JobSpec::from_hyperparameters(&hyperparameters(c)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let t_build = Instant::now();
    let model = build_model(c, &spec)?;
    c.device.synchronize()?;
    let build_s = t_build.elapsed().as_secs_f64();
    let after_build = memory::stats(&c.device)?;
    memory::reset_peak(&c.device)?;
    eprintln!(
        "oxtune-bench: {} {} on {} ({}), model built in {build_s:.1}s, {} trainable parameters",
        c.method.name(),
        c.arch.name,
        device_name(&c.device),
        dtype_name(c.dtype),
        model.trainable_param_count()
    );
    let mut out = json!({
        "impl": "oxtune",
        "status": "ok",
        "method": c.method.name(),
        "arch": c.arch.name,
        "arch_source": c.arch.source,
        "device": device_name(&c.device),
        "dtype": dtype_name(c.dtype),
        "rank": c.rank,
        "lora_alpha": c.alpha,
        "lora_dropout": c.dropout,
        "target_modules": "all-linear",
        "gradient_checkpointing": c.gradient_checkpointing,
        "warmup": c.warmup,
        "steps": c.steps,
        "seed": c.seed,
        "trainable_params": model.trainable_param_count(),
        "model_build_s": build_s,
        "weight_memory_bytes": after_build.used,
        "version": env!("CARGO_PKG_VERSION"),
        "cuda_build": cfg!(feature = "cuda"),
        "hyperparameters": hyperparameters(c),
    });
    let t0 = Instant::now();
    let measured = match c.method {
        Method::Lora | Method::Qlora => run_sft(c, &spec, &model)?,
        Method::Grpo => run_grpo(c, &spec, &model)?,
    };
    c.device.synchronize()?;
    let wall = t0.elapsed().as_secs_f64();
    let mem = memory::stats(&c.device)?;
    merge(&mut out, measured);
    merge(
        &mut out,
        json!({
            "wall_s_all_steps": wall,
            "peak_memory_bytes": mem.used_high,
            "peak_reserved_bytes": mem.reserved_high,
            "device_used_bytes": mem.device_used,
            "memory_note": if c.device.is_cuda() {
                "peak = CU_MEMPOOL_ATTR_USED_MEM_HIGH of the device's memory pool, reset after the model was built (covers warm-up and timed steps; weights included)"
            } else {
                "not measured on the CPU"
            },
        }),
    );
    Ok(out)
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

/// Timed records: the steps after warm-up.
fn timed<'a>(c: &BenchConfig, history: &'a [MetricRecord]) -> anyhow::Result<Vec<&'a MetricRecord>> {
    let steps: Vec<&MetricRecord> = history.iter().filter(|r| r.eval_loss.is_none()).collect();
    if steps.len() != c.warmup + c.steps {
        bail!("expected {} step records, the loop logged {}", c.warmup + c.steps, steps.len());
    }
    Ok(steps[c.warmup..].to_vec())
}

/// LoRA / QLoRA: `trainer::train::sft::train` on packed rows of exactly `seq` random tokens.
fn run_sft(c: &BenchConfig, spec: &JobSpec, model: &Model) -> anyhow::Result<Value> {
    let total = c.warmup + c.steps;
    let mut rng = Rng::derive(c.seed, "bench-data");
    let vocab = c.arch.cfg.vocab_size;
    // seq + 1 tokens per example: after the causal shift each fills one packed row exactly.
    let train: Vec<Example> = (0..total * c.batch)
        .map(|i| Example {
            input_ids: random_ids(&mut rng, c.seq + 1, vocab),
            loss_mask: vec![1; c.seq + 1],
            source: RowRef { file: "<random tokens>".into(), line: i + 1 },
        })
        .collect();
    let ckpt = tempfile::tempdir()?;
    let stop = StopFlag::manual();
    let outcome = sft::train(SftInputs {
        spec,
        model,
        train: &TrainSet::Causal(train),
        validation: &TrainSet::Causal(vec![]),
        pad_id: 0,
        checkpoint_dir: ckpt.path(),
        stop: &stop,
        dist: &trainer::dist::Solo,
        tracker: &trainer::track::Tracker::off(),
    })?;
    let history = &outcome.state.history;
    let tokens_per_step = (c.batch * c.seq) as f64;
    let rec = timed(c, history)?;
    let step_times: Vec<f64> =
        rec.iter().map(|r| tokens_per_step / r.tokens_per_sec.unwrap_or(f64::NAN).max(1e-12)).collect();
    let time: f64 = step_times.iter().sum();
    let tokens_per_sec = tokens_per_step * step_times.len() as f64 / time;
    let fpt = train_flops_per_token(&c.arch.cfg, c.rank, c.seq);
    let losses: Vec<Option<f64>> = history.iter().map(|r| r.loss).collect();
    Ok(json!({
        "seq": c.seq,
        "batch": c.batch,
        "tokens_per_step": tokens_per_step,
        "tokens_per_sec": tokens_per_sec,
        "step_time_s": mean(&step_times),
        "step_times_s": step_times,
        "losses": losses,
        "flops_per_token": fpt,
        "flops_formula": FLOPS_FORMULA,
        "model_tflops_per_sec": tokens_per_sec * fpt / 1e12,
        "timing_note": "per-step time from the trainer's own METRIC tokens_per_sec (logging_steps=1; every step ends with host reads of the loss and the grad norm, which wait for the device)",
    }))
}

/// The demo tokenizer, for GRPO's decode step (token ids beyond its vocabulary decode to nothing;
/// the `length` reward reads only token counts).
fn bench_tokenizer() -> anyhow::Result<(tempfile::TempDir, TokenizerBundle)> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("tokenizer.json"), trainer::demo::TOKENIZER_JSON)?;
    std::fs::write(dir.path().join("tokenizer_config.json"), trainer::demo::TOKENIZER_CONFIG_JSON)?;
    let tok = TokenizerBundle::load(dir.path())?;
    Ok((dir, tok))
}

/// GRPO: `trainer::train::grpo::train` with `prompts` random prompts per step.
fn run_grpo(c: &BenchConfig, spec: &JobSpec, model: &Model) -> anyhow::Result<Value> {
    let g = c.grpo;
    let total = c.warmup + c.steps;
    let (tok_dir, tok) = bench_tokenizer()?;
    let mut rng = Rng::derive(c.seed, "bench-prompts");
    let vocab = c.arch.cfg.vocab_size;
    let prompts: Vec<PromptRow> = (0..total * g.prompts)
        .map(|_| PromptRow {
            text: String::new(),
            ids: random_ids(&mut rng, g.prompt_len.max(1), vocab),
            columns: Default::default(),
        })
        .collect();
    let rewards = grpo::build_rewards(spec, tok_dir.path())?;
    let (ckpt, out_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let stop = StopFlag::manual();
    let outcome = grpo::train(GrpoInputs {
        spec,
        model,
        tok: &tok,
        prompts: &prompts,
        rewards: &rewards,
        eos_ids: c.arch.cfg.eos_token_ids(),
        checkpoint_dir: ckpt.path(),
        output_data_dir: out_dir.path(),
        stop: &stop,
        dist: &trainer::dist::Solo,
        tracker: &trainer::track::Tracker::off(),
    })?;
    let history = &outcome.state.history;
    let rec = timed(c, history)?;
    let get = |r: &MetricRecord, k: &str| r.extra.get(k).copied().unwrap_or(f64::NAN);
    let seqs = (g.prompts * g.generations) as f64;
    let step_times: Vec<f64> = rec.iter().map(|r| get(r, "step_time")).collect();
    let gen_tokens: Vec<f64> = rec.iter().map(|r| get(r, "completion_length") * seqs).collect();
    let gen_secs: Vec<f64> =
        rec.iter().zip(&gen_tokens).map(|(r, n)| n / get(r, "generation_tokens_per_sec").max(1e-12)).collect();
    let losses: Vec<Option<f64>> = history.iter().map(|r| r.loss).collect();
    Ok(json!({
        "prompts": g.prompts,
        "generations": g.generations,
        "max_completion_length": g.completion,
        "prompt_len": g.prompt_len,
        "step_time_s": mean(&step_times),
        "step_times_s": step_times,
        "generation_tokens_per_sec": gen_tokens.iter().sum::<f64>() / gen_secs.iter().sum::<f64>(),
        "generation_s": mean(&gen_secs),
        "completion_length_mean": mean(&rec.iter().map(|r| get(r, "completion_length")).collect::<Vec<_>>()),
        "losses": losses,
        "timing_note": "step_time and generation_tokens_per_sec from the trainer's own GRPO METRIC records (generation ends with a host read of the last logits; the step ends with a host read of the grad norm)",
    }))
}

/// What `oxtune-bench generate` measures: greedy decoding with the KV cache.
pub struct GenerateShape {
    pub batch: usize,
    pub prompt_len: usize,
    pub new_tokens: usize,
    /// Timed runs (after `c.warmup` untimed ones).
    pub iters: usize,
}

/// Greedy generation through `trainer::generate::generate` (the evaluation's and `train generate`'s
/// path): `batch` random prompts of `prompt_len` tokens, exactly `new_tokens` new tokens each (no
/// EOS, so every row runs to the end), the LoRA adapters of `c` on. Time = wall time of each whole
/// call (prefill + decode); tokens/s = batch × new_tokens ÷ the median time.
pub fn generation(c: &BenchConfig, g: &GenerateShape) -> anyhow::Result<Value> {
    if g.iters == 0 || g.new_tokens == 0 || g.batch == 0 {
        bail!("--iters, --new-tokens and --batch must be at least 1");
    }
    let spec = JobSpec::from_hyperparameters(&hyperparameters(c)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let model = build_model(c, &spec)?;
    let (_tok_dir, tok) = bench_tokenizer()?;
    let mut rng = Rng::derive(c.seed, "bench-prompts");
    let prompts: Vec<Vec<u32>> =
        (0..g.batch).map(|_| random_ids(&mut rng, g.prompt_len.max(1), c.arch.cfg.vocab_size)).collect();
    let cfg = trainer::generate::SamplingConfig {
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        max_new_tokens: g.new_tokens,
        eos_ids: vec![],
        stop_strings: vec![],
    };
    let mut secs = Vec::new();
    for i in 0..c.warmup + g.iters {
        let t = Instant::now();
        let out = trainer::generate::generate(&model, &tok, &prompts, &cfg, &mut Rng::new(c.seed), true)?;
        c.device.synchronize()?;
        if out.iter().any(|o| o.ids.len() != g.new_tokens) {
            bail!("a row stopped before {} tokens", g.new_tokens);
        }
        if i >= c.warmup {
            secs.push(t.elapsed().as_secs_f64());
        }
    }
    let mut sorted = secs.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    Ok(json!({
        "impl": "oxtune",
        "status": "ok",
        "method": "generate",
        "arch": c.arch.name,
        "device": device_name(&c.device),
        "dtype": dtype_name(c.dtype),
        "rank": c.rank,
        "batch": g.batch,
        "prompt_len": g.prompt_len,
        "new_tokens": g.new_tokens,
        "warmup": c.warmup,
        "iters": g.iters,
        "seconds": secs,
        "median_s": median,
        "tokens_per_sec": (g.batch * g.new_tokens) as f64 / median,
        "timing_note": "wall time of each trainer::generate::generate call (prefill + greedy decode with the KV cache, LoRA adapters on), median of the timed runs",
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// Measured bf16 matmul throughput: `iters` products of two `n × n` bf16 matrices (cuBLAS on
/// CUDA), timed between device synchronisations after 3 warm-up products. FLOPs = 2·n³ each.
pub fn gemm(device: &Device, dtype: DType, n: usize, iters: usize) -> anyhow::Result<Value> {
    let a = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    for _ in 0..3 {
        a.matmul(&b)?;
    }
    device.synchronize()?;
    let t0 = Instant::now();
    for _ in 0..iters.max(1) {
        a.matmul(&b)?;
    }
    device.synchronize()?;
    let secs = t0.elapsed().as_secs_f64();
    let flops = 2.0 * (n as f64).powi(3) * iters.max(1) as f64;
    Ok(json!({
        "impl": "oxtune",
        "status": "ok",
        "method": "gemm",
        "device": device_name(device),
        "dtype": dtype_name(dtype),
        "n": n,
        "iters": iters.max(1),
        "seconds": secs,
        "tflops": flops / secs / 1e12,
        "note": "candle matmul (cuBLAS on CUDA), C = A·B, all n×n, 2·n³ FLOPs per product",
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_are_the_launchers_formula_for_8b() {
        // Llama-3.1-8B, r=16 on all seven projections, T=2048, by hand with estimate.rs' formula:
        // N_mm = 32·(2·4096² + 2·1024·4096 + 3·4096·14336) + 128256·4096 = 7,504,658,432
        // N_lora = 32·16·(2·8192 + 2·5120 + 3·18432) = 41,943,040;  6·L·T·d = 6·32·2048·4096.
        let want = 4.0 * 7_504_658_432f64 + 6.0 * 41_943_040f64 + 6.0 * 32.0 * 2048.0 * 4096.0;
        let a = arch("llama-3.1-8b").unwrap();
        assert_eq!(train_flops_per_token(&a.cfg, 16, 2048), want);
        assert!((want / 1e9 - 31.88).abs() < 0.01);
    }
}
