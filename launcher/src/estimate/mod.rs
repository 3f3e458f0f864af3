//! `oxtune estimate`: GPU memory, training time and cost per instance type.
//!
//! # Memory model (bytes, per GPU)
//!
//! * **Weights.** LoRA / GRPO: bf16, `2 × N` (N = all parameters, lm_head once when tied).
//!   QLoRA: the decoder's linear weights in NF4 with double quantisation (formats.md §2):
//!   0.5 B/param for the codes + 1 B per 64-weight block for the 8-bit absmax + 4 B per
//!   256 blocks for the nested f32 absmax = `0.5 + 1/64 + 4/16384` B/param; embeddings,
//!   lm_head and norms stay bf16; plus one dequantised bf16 copy of the largest linear
//!   weight as a transient buffer.
//! * **Adapter + optimizer.** LoRA A/B in f32 (4 B) + f32 gradients (4 B) + AdamW first
//!   and second moments in f32 (8 B) = `16 × N_lora` (the trainer keeps LoRA weights and
//!   optimizer state in f32: trainer `dtype` help text).
//! * **Activations** per token per decoder layer, bf16, counting the tensors autograd keeps
//!   for the backward pass of one Llama-style layer whose base weights are frozen (no weight
//!   gradients, so the inputs of frozen matmuls are kept only where a LoRA A needs them or a
//!   nonlinearity needs them). This follows the accounting of Korthikanti et al. 2022
//!   ("Reducing Activation Recomputation in Large Transformer Models", §4.1), adapted to
//!   RMSNorm + GQA + SwiGLU, fused attention and no dropout masks:
//!
//!   `A_layer = 2·(4h + 2q + 2kv + 3i) + 2·n_targets·r + 4·heads` bytes, where
//!   `4h` = inputs and outputs of the two RMSNorms, `2q` = post-RoPE queries and the attention
//!   output (o_proj input), `2kv` = keys and values, `3i` = gate, up and silu(gate)·up (down_proj
//!   input), `n_targets·r` = the LoRA `A·x` intermediates, `4·heads` = the f32 log-sum-exp of
//!   fused attention. When the calibration says attention scores are materialised, add
//!   `4·heads·T` (bf16 scores and probabilities).
//!   Without checkpointing: `B·T·L·A_layer`. With per-layer checkpointing: the layer inputs
//!   `B·T·L·2h` plus one layer's activations while it is recomputed, `B·T·A_layer`.
//!   Both add the final norm (`B·T·4h`), one cross-entropy chunk of logits with its gradient in
//!   f32 (`min(chunk, B·T)·V·8`) and the activation gradients in flight (`B·T·4·(h+i)`).
//! * **CUDA context, cuBLAS workspace and allocator slack:** a constant from the calibration.
//! * A job fits when the total is at most `(1 − headroom) ×` the GPU memory nvidia-smi reports.
//!
//! # Time model
//!
//! Model FLOPs per token (performance.md §6.2): `4·N_mm + 6·N_lora + 6·L·T·d` where N_mm is
//! every matmul weight incl. lm_head, d = heads × head_dim and T the mean sequence length
//! (causal attention: forward `2·L·T·d`, ×3 with backward). Checkpointing adds a second
//! forward (`2·N_mm + 2·N_lora + 2·L·T·d`) of hardware work. Time = tokens × FLOPs/token ÷
//! (peak bf16 × efficiency) + billable start-up (image pull, model + data download) + upload.
//! GRPO adds generation: decoding is memory-bound, each decode step costs
//! `max((weight + KV bytes) / (bandwidth × bw_eff), 2·N_mm·S / (peak × eff))` for S sequences
//! in flight, and the policy step also runs a reference forward (`2·N_mm` per token).

mod facts;
mod render;

use serde::Serialize;
use trainer::model::Arch;

use crate::calibration::{Calibration, EfficiencyChoice};
use crate::catalogue::{Catalogue, Gpu, Instance, PriceTable};
use crate::format::GIB;

pub use facts::ModelFacts;
pub use render::render;

/// QLoRA bytes per quantised parameter: NF4 codes + u8 absmax per 64 + f32 nested absmax per 256 blocks.
pub const NF4_BYTES_PER_PARAM: f64 = 0.5 + 1.0 / 64.0 + 4.0 / (64.0 * 256.0);
/// f32 LoRA weight + f32 gradient + AdamW m and v in f32.
pub const ADAPTER_BYTES_PER_PARAM: f64 = 16.0;

/// The training method: the trainer's own choice enum, so a new method cannot go unestimated.
pub use trainer::spec::Method;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Checkpointing {
    /// Off when it fits without, else on.
    Auto,
    On,
    Off,
}

/// How many tokens the data holds and how we know.
#[derive(Debug, Clone, Serialize)]
pub struct TokenCount {
    /// Training tokens in one epoch (after truncation to max_seq_length when known).
    pub tokens: u64,
    /// Samples (rows) when known.
    pub samples: Option<u64>,
    /// True when tokenised with the model's tokenizer; false for a byte-based guess or a given number.
    pub exact: bool,
    /// Human-readable origin, printed with the estimate.
    pub source: String,
    /// Size of the dataset on disk, for the download time.
    pub data_bytes: Option<u64>,
    /// Sequence-to-sequence data (T5): the fraction of the tokens that are encoder inputs.
    pub source_share: Option<f64>,
}

impl TokenCount {
    /// A count the user gave (`--tokens`, `[estimate] tokens`).
    pub fn given(tokens: u64) -> TokenCount {
        TokenCount { tokens, samples: None, exact: true, source: "given".into(), data_bytes: None, source_share: None }
    }

    pub fn mean_len(&self) -> Option<f64> {
        self.samples.filter(|&s| s > 0).map(|s| self.tokens as f64 / s as f64)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GrpoParams {
    pub num_generations: u64,
    pub max_completion_length: u64,
    /// Mean prompt length in tokens.
    pub prompt_length: u64,
    /// Prompts in the dataset (one epoch).
    pub prompts: u64,
}

#[derive(Debug, Clone)]
pub struct EstimateInput {
    pub model_name: String,
    pub config: Arch,
    /// T5: the fraction of training tokens that are encoder inputs.
    pub source_share: f64,
    pub method: Method,
    pub lora_r: usize,
    pub targets: Vec<&'static str>,
    pub max_seq_length: u64,
    pub batch: u64,
    pub grad_accum: u64,
    pub epochs: f64,
    pub max_steps: Option<u64>,
    pub packing: bool,
    pub checkpointing: Checkpointing,
    pub tokens: TokenCount,
    pub grpo: Option<GrpoParams>,
    pub instance_count: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryBreakdown {
    pub weights_gib: f64,
    pub adapter_optimizer_gib: f64,
    pub activations_gib: f64,
    pub activations_checkpointed_gib: f64,
    /// GRPO: KV cache of the rollouts (0 otherwise).
    pub kv_cache_gib: f64,
    pub overhead_gib: f64,
    pub total_gib: f64,
    pub total_checkpointed_gib: f64,
    pub available_gib: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub instance_type: String,
    /// Instances of the type the job runs on.
    pub instance_count: u32,
    pub gpu: String,
    pub gpus: u32,
    /// GPUs of one instance that train.
    pub gpus_used: u32,
    /// Data-parallel ranks over all instances, and the throughput share each keeps.
    pub ranks: u32,
    pub scaling: f64,
    pub supported: bool,
    pub fits: bool,
    pub checkpointing: bool,
    pub reason: String,
    pub memory: MemoryBreakdown,
    pub efficiency: f64,
    pub efficiency_source: String,
    pub efficiency_measured: bool,
    pub train_seconds: f64,
    pub billable_seconds: f64,
    pub usd_per_hour: Option<f64>,
    pub price_is_estimate: bool,
    pub cost_on_demand: Option<f64>,
    pub cost_spot: Option<f64>,
    pub cost_spot_low: Option<f64>,
    pub cost_spot_high: Option<f64>,
    pub cheapest: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub model: String,
    pub method: Method,
    pub facts: ModelFacts,
    pub tokens_per_epoch: u64,
    pub tokens_source: String,
    pub tokens_exact: bool,
    pub tokens_total: f64,
    pub steps: u64,
    pub seq_for_attention: f64,
    pub flops_per_token: f64,
    pub region: String,
    pub prices_origin: String,
    pub calibration: String,
    pub instance_count: u32,
    pub provisioning_seconds: f64,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

/// `TYPE`, `N×TYPE` or `NxTYPE`: an instance type and how many (`default_count` without `N×`).
pub fn instance_choice(s: &str, default_count: u32) -> Result<(String, u32), String> {
    let s = s.trim();
    let split = s.split_once('×').or_else(|| s.split_once('x').filter(|(n, _)| n.parse::<u32>().is_ok()));
    match split {
        Some((n, t)) => match n.trim().parse::<u32>() {
            Ok(c) if c >= 1 => Ok((t.trim().to_string(), c)),
            _ => Err(format!("`{s}`: the count before × must be a whole number ≥ 1 (e.g. 2×ml.g5.12xlarge)")),
        },
        None => Ok((s.to_string(), default_count.max(1))),
    }
}

/// Compute the estimate for every instance in `instances` (all catalogued types when empty), each
/// `TYPE` or `N×TYPE` (see [`instance_choice`]; N defaults to the input's instance count).
pub fn estimate(
    input: &EstimateInput,
    catalogue: &Catalogue,
    prices: &PriceTable,
    cal: &Calibration,
    instances: &[String],
) -> Estimate {
    let facts = ModelFacts::new(&input.config, input.lora_r, &input.targets, input.source_share);
    let mut notes = Vec::new();
    let shape = run_shape(input, cal, &mut notes);
    let memory = job_memory(&facts, input, cal, &shape);
    let work = Work {
        train_flops: facts.train_flops_per_token(shape.mean_len),
        recompute_flops: facts.recompute_flops_per_token(shape.mean_len),
        grpo_extra_flops: if input.grpo.is_some() { facts.forward_flops_per_token(shape.mean_len) } else { 0.0 },
        overhead_s: billable_overhead_seconds(&facts, input, cal),
    };
    let count = input.instance_count.max(1);
    let wanted: Vec<(&Instance, u32)> = if instances.is_empty() {
        catalogue.instances.iter().map(|i| (i, count)).collect()
    } else {
        instances
            .iter()
            .filter_map(|w| instance_choice(w, count).ok())
            .filter_map(|(t, n)| catalogue.instance(&t).map(|i| (i, n)))
            .collect()
    };
    let mut rows: Vec<Row> = wanted
        .into_iter()
        .map(|(inst, n)| {
            instance_row(inst, n, catalogue.gpu_of(inst), input, &facts, &shape, &memory, &work, prices, cal)
        })
        .collect();
    mark_cheapest(&mut rows);
    notes.extend(row_notes(&rows, prices, cal));
    Estimate {
        model: input.model_name.clone(),
        method: input.method,
        facts,
        tokens_per_epoch: input.tokens.tokens,
        tokens_source: input.tokens.source.clone(),
        tokens_exact: input.tokens.exact,
        tokens_total: shape.tokens_total,
        steps: shape.steps,
        seq_for_attention: shape.mean_len,
        flops_per_token: work.train_flops,
        region: prices.region.clone(),
        prices_origin: prices.origin.clone(),
        calibration: cal.origin.clone(),
        instance_count: input.instance_count,
        provisioning_seconds: cal.overhead.provisioning_s,
        rows,
        notes,
    }
}

/// Sequence geometry and the tokens the run processes.
struct RunShape {
    /// Longest sequence of a micro-batch, and the tokens of one micro-batch in flight.
    seq_len: u64,
    micro_tokens: u64,
    /// Mean sequence length (attention FLOPs).
    mean_len: f64,
    tokens_total: f64,
    steps: u64,
}

fn run_shape(input: &EstimateInput, cal: &Calibration, notes: &mut Vec<String>) -> RunShape {
    let t_max = input.max_seq_length.max(1);
    let (seq_len, micro_tokens) = match &input.grpo {
        Some(g) => {
            let len = (g.prompt_length + g.max_completion_length).min(t_max);
            (len, input.batch * len)
        }
        None => (t_max, input.batch * t_max),
    };
    let mean_len = match (&input.grpo, input.tokens.mean_len()) {
        (Some(_), _) => seq_len as f64,
        (None, Some(m)) => m.min(t_max as f64),
        (None, None) => t_max as f64,
    };
    let padding = if input.packing || input.grpo.is_some() { 0.0 } else { cal.trainer.padding_overhead };
    let tokens_per_step = (input.batch * input.grad_accum) as f64 * if input.packing { t_max as f64 } else { mean_len };
    let (tokens_total, steps) = match (&input.grpo, input.max_steps) {
        (Some(_), Some(steps)) => {
            let seqs = (steps * input.batch * input.grad_accum) as f64;
            (seqs * seq_len as f64, steps)
        }
        (Some(g), None) => {
            let seqs = g.prompts as f64 * input.epochs * g.num_generations as f64;
            let steps = (seqs / (input.batch * input.grad_accum) as f64).ceil() as u64;
            (seqs * seq_len as f64, steps)
        }
        (None, Some(steps)) => (steps as f64 * tokens_per_step * (1.0 + padding), steps),
        (None, None) => {
            let toks = input.tokens.tokens as f64 * input.epochs;
            (toks * (1.0 + padding), (toks / tokens_per_step).ceil() as u64)
        }
    };
    if padding > 0.0 {
        notes.push(format!(
            "packing is off: +{:.0}% padded tokens assumed ({})",
            padding * 100.0,
            cal.trainer.padding_source
        ));
    }
    if !input.tokens.exact {
        notes.push(format!("token count is not exact: {}", input.tokens.source));
    }
    RunShape { seq_len, micro_tokens, mean_len, tokens_total, steps }
}

/// Memory of the job in bytes, the same on every GPU (only what is available differs).
struct JobMemory {
    weights: f64,
    adapter: f64,
    act_full: f64,
    act_ckpt: f64,
    kv: f64,
    overhead: f64,
    total_full: f64,
    total_ckpt: f64,
}

fn job_memory(facts: &ModelFacts, input: &EstimateInput, cal: &Calibration, shape: &RunShape) -> JobMemory {
    let scores_saved = cal.memory.attention_scores_saved;
    let a_layer =
        facts.layer_activation_bytes_per_token(input.lora_r, input.targets.len(), shape.seq_len, scores_saved);
    let act_full = facts.activation_bytes(shape.micro_tokens, a_layer, false, cal.memory.ce_chunk_tokens);
    let act_ckpt = facts.activation_bytes(shape.micro_tokens, a_layer, true, cal.memory.ce_chunk_tokens);
    let kv = match &input.grpo {
        Some(g) => facts.kv_cache_bytes(input.batch.max(g.num_generations), shape.seq_len),
        None => 0.0,
    };
    let weights = facts.weight_bytes(input.method);
    let adapter = facts.adapter_bytes();
    let overhead = cal.memory.cuda_overhead_gib * GIB;
    // Rollouts and the policy step do not overlap: the peak is the larger of the two.
    let total_full = weights + adapter + act_full.max(kv) + overhead;
    let total_ckpt = weights + adapter + act_ckpt.max(kv) + overhead;
    JobMemory { weights, adapter, act_full, act_ckpt, kv, overhead, total_full, total_ckpt }
}

/// FLOPs per token and the billable seconds outside training.
struct Work {
    train_flops: f64,
    recompute_flops: f64,
    grpo_extra_flops: f64,
    overhead_s: f64,
}

/// Billable overhead: image, model + data download, upload.
fn billable_overhead_seconds(facts: &ModelFacts, input: &EstimateInput, cal: &Calibration) -> f64 {
    let download_bytes = 2.0 * facts.params as f64
        + input.tokens.data_bytes.map(|b| b as f64).unwrap_or(input.tokens.tokens as f64 * cal.trainer.bytes_per_token);
    cal.overhead.startup_fixed_s + download_bytes / (cal.overhead.download_mb_per_s * 1e6) + cal.overhead.upload_fixed_s
}

/// One instance type: does the job fit its GPU, how long and how much.
#[allow(clippy::too_many_arguments)]
fn instance_row(
    inst: &Instance,
    count: u32,
    gpu: &Gpu,
    input: &EstimateInput,
    facts: &ModelFacts,
    shape: &RunShape,
    m: &JobMemory,
    work: &Work,
    prices: &PriceTable,
    cal: &Calibration,
) -> Row {
    let available = gpu.memory_mib as f64 * 1024.0 * 1024.0 * (1.0 - cal.memory.headroom_fraction);
    // GRPO trains on one GPU of one host; everything else on every GPU of every instance.
    let gpus_used = if cal.one_gpu_per_instance() || input.grpo.is_some() { 1 } else { inst.gpus };
    let ranks = if input.grpo.is_some() { 1 } else { gpus_used * count };
    let scaling = cal.scaling(ranks, count);
    let eff: EfficiencyChoice = cal.efficiency(&inst.gpu, input.method.name());
    let rate = prices.rate(&inst.instance_type);
    let memory = MemoryBreakdown {
        weights_gib: m.weights / GIB,
        adapter_optimizer_gib: m.adapter / GIB,
        activations_gib: m.act_full / GIB,
        activations_checkpointed_gib: m.act_ckpt / GIB,
        kv_cache_gib: m.kv / GIB,
        overhead_gib: m.overhead / GIB,
        total_gib: m.total_full / GIB,
        total_checkpointed_gib: m.total_ckpt / GIB,
        available_gib: available / GIB,
    };
    let checkpointing = match input.checkpointing {
        Checkpointing::On => true,
        Checkpointing::Off => false,
        Checkpointing::Auto => m.total_full > available,
    };
    let needed = if checkpointing { m.total_ckpt } else { m.total_full };
    let fits = gpu.bf16 && needed <= available;
    let reason = fit_reason(inst, gpu, input, m, available, checkpointing, fits);
    let peak = gpu.bf16_tflops * 1e12 * ranks as f64 * scaling;
    let mut train_s = f64::NAN;
    if gpu.bf16 && peak > 0.0 {
        let per_token =
            work.train_flops + if checkpointing { work.recompute_flops } else { 0.0 } + work.grpo_extra_flops;
        train_s = shape.tokens_total * per_token / (peak * eff.value);
        if let Some(g) = &input.grpo {
            train_s += grpo_generation_seconds(facts, g, input, m.weights, gpu, gpus_used, eff.value, cal);
        }
    }
    let billable = train_s + work.overhead_s;
    let cost = rate.map(|r| billable / 3600.0 * r * count as f64).filter(|c| c.is_finite());
    Row {
        instance_type: inst.instance_type.clone(),
        instance_count: count,
        gpu: inst.gpu.clone(),
        gpus: inst.gpus,
        gpus_used,
        ranks,
        scaling,
        supported: gpu.bf16,
        fits,
        checkpointing,
        reason,
        memory,
        efficiency: eff.value,
        efficiency_source: eff.source,
        efficiency_measured: eff.measured,
        train_seconds: train_s,
        billable_seconds: billable,
        usd_per_hour: rate,
        price_is_estimate: prices.is_estimate(&inst.instance_type),
        cost_on_demand: cost,
        cost_spot: cost.map(|c| c * (1.0 - cal.spot.typical_savings)),
        cost_spot_low: cost.map(|c| c * (1.0 - cal.spot.high_savings)),
        cost_spot_high: cost.map(|c| c * (1.0 - cal.spot.low_savings)),
        cheapest: false,
    }
}

/// Why the job fits or not, with what to change when it does not.
fn fit_reason(
    inst: &Instance,
    gpu: &Gpu,
    input: &EstimateInput,
    m: &JobMemory,
    available: f64,
    checkpointing: bool,
    fits: bool,
) -> String {
    let needed = if checkpointing { m.total_ckpt } else { m.total_full };
    if !gpu.bf16 {
        return format!("unsupported: {}", gpu.unsupported.clone().unwrap_or_else(|| "no bf16".into()));
    }
    if fits {
        return if checkpointing && input.checkpointing == Checkpointing::Auto {
            format!("fits with gradient checkpointing ({:.1} of {:.1} GiB)", needed / GIB, available / GIB)
        } else {
            format!("fits ({:.1} of {:.1} GiB)", needed / GIB, available / GIB)
        };
    }
    let act = if checkpointing { m.act_ckpt } else { m.act_full };
    let mut r = format!(
        "needs {:.1} GiB > {:.1} GiB usable on one {}: weights {:.1} + adapter/optimizer {:.1} + activations {:.1}{} + CUDA {:.1}",
        needed / GIB,
        available / GIB,
        inst.gpu,
        m.weights / GIB,
        m.adapter / GIB,
        act.max(m.kv) / GIB,
        if checkpointing { " (checkpointed)" } else { "" },
        m.overhead / GIB
    );
    if !checkpointing && m.total_ckpt <= available {
        r.push_str("; fits with gradient_checkpointing=true");
    } else if m.weights + m.adapter + m.overhead > available {
        r.push_str(if input.method == Method::Qlora {
            "; the weights alone do not fit"
        } else {
            "; the weights alone do not fit (try qlora)"
        });
    } else {
        r.push_str("; lower per_device_batch_size or max_seq_length");
    }
    r
}

/// Cheapest instance that fits (on-demand), ties broken by time.
fn mark_cheapest(rows: &mut [Row]) {
    if let Some(best) = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.fits && r.cost_on_demand.is_some())
        .min_by(|a, b| {
            let ka = (a.1.cost_on_demand.unwrap_or(f64::MAX), a.1.billable_seconds);
            let kb = (b.1.cost_on_demand.unwrap_or(f64::MAX), b.1.billable_seconds);
            ka.partial_cmp(&kb).unwrap_or(std::cmp::Ordering::Equal)
        })
        .map(|(i, _)| i)
    {
        rows[best].cheapest = true;
    }
}

/// Notes about the rows: GPUs priced but unused, estimated and missing prices.
fn row_notes(rows: &[Row], prices: &PriceTable, cal: &Calibration) -> Vec<String> {
    let mut notes = Vec::new();
    if cal.one_gpu_per_instance() && rows.iter().any(|r| r.gpus > 1) {
        notes.push(format!(
            "multi-GPU instances are priced whole but the trainer uses one GPU ({})",
            cal.trainer.gpus_used_source
        ));
    } else if rows.iter().any(|r| r.ranks == 1 && r.gpus * r.instance_count > 1) {
        notes.push("GRPO trains on one GPU of one host: the other GPUs are priced but idle".into());
    }
    if rows.iter().any(|r| r.ranks > 1) {
        notes.push(format!(
            "several GPUs train by data parallelism, one rank each: time assumes {:.0}% of linear scaling on one host, {:.0}% across hosts ({}); each GPU holds the whole job (the memory columns are per GPU); effective batch = batch × grad_accum × ranks, so fewer optimizer steps",
            cal.trainer.scaling_one_host * 100.0,
            cal.trainer.scaling_hosts * 100.0,
            cal.trainer.scaling_source
        ));
    }
    if rows.iter().any(|r| r.price_is_estimate) {
        notes.push(format!(
            "prices marked ~ are estimates for {}; run `oxtune prices refresh --region {}`",
            prices.region, prices.region
        ));
    }
    if rows.iter().any(|r| r.usd_per_hour.is_none() && r.supported) {
        notes.push(format!("instances without a price are not offered (or not priced) in {}", prices.region));
    }
    notes
}

/// Seconds spent generating GRPO rollouts over the whole run.
#[allow(clippy::too_many_arguments)]
fn grpo_generation_seconds(
    facts: &ModelFacts,
    g: &GrpoParams,
    input: &EstimateInput,
    weight_bytes: f64,
    gpu: &Gpu,
    gpus_used: u32,
    eff: f64,
    cal: &Calibration,
) -> f64 {
    let seqs_in_flight = input.batch.max(g.num_generations);
    let total_seqs = match input.max_steps {
        Some(steps) => (steps * input.batch * input.grad_accum) as f64,
        None => g.prompts as f64 * input.epochs * g.num_generations as f64,
    };
    let batches = (total_seqs / seqs_in_flight as f64).ceil();
    let bw = gpu.bandwidth_gbs * 1e9 * cal.generation.bandwidth_efficiency * gpus_used as f64;
    let peak = gpu.bf16_tflops * 1e12 * eff * gpus_used as f64;
    // Prefill: compute-bound forward over the prompts.
    let prefill = 2.0 * facts.matmul_params as f64 * (g.prompt_length * seqs_in_flight) as f64 / peak;
    // Decode: C steps; the KV cache read grows linearly, use its mean.
    let kv_mean = facts.kv_cache_bytes(seqs_in_flight, g.prompt_length + g.max_completion_length / 2);
    let step_mem = (weight_bytes + kv_mean) / bw;
    let step_compute = 2.0 * facts.matmul_params as f64 * seqs_in_flight as f64 / peak;
    let decode = g.max_completion_length as f64 * step_mem.max(step_compute);
    batches * (prefill + decode)
}
