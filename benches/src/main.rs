//! `oxtune-bench`: one benchmark run → one JSON line (stdout, and appended to `--json FILE`).
//! See benches/README.md.

use std::io::Write;
use std::path::PathBuf;

use anyhow::bail;
use benches::{BenchConfig, GrpoShape, Method};
use candle_core::{DType, Device};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "oxtune-bench", about = "oxtune benchmark harness (random-weight architectures, real training steps)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum DeviceArg {
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    /// bf16 on CUDA, f32 on the CPU (as the trainer's dtype=auto).
    Auto,
    Bf16,
    F32,
}

#[derive(clap::Args)]
struct Common {
    /// tiny | llama-3.2-1b | llama-3.1-8b | path to a config.json
    #[arg(long, default_value = "tiny")]
    arch: String,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    #[arg(long, value_enum, default_value = "auto")]
    dtype: DtypeArg,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct Train {
    #[command(flatten)]
    common: Common,
    /// Tokens per row.
    #[arg(long, default_value_t = 2048)]
    seq: usize,
    /// Rows per optimizer step (GRPO: sequences per micro-batch).
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Timed optimizer steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// LoRA alpha (default 2 × rank).
    #[arg(long)]
    alpha: Option<f64>,
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    #[arg(long)]
    gradient_checkpointing: bool,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// GRPO: prompts per step.
    #[arg(long, default_value_t = 8)]
    prompts: usize,
    /// GRPO: completions per prompt.
    #[arg(long, default_value_t = 8)]
    generations: usize,
    /// GRPO: max completion tokens.
    #[arg(long, default_value_t = 256)]
    completion: usize,
    /// GRPO: prompt tokens.
    #[arg(long, default_value_t = 64)]
    prompt_len: usize,
    /// Time every op (forward, backward, optimizer; per op and per layer) and write the per-step
    /// breakdown as markdown to this file (CPU; the result line gains a `profile` field).
    #[arg(long)]
    profile: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// LoRA on all linear layers (trainer::train::sft::train).
    Lora(Train),
    /// QLoRA: NF4 (double quant) base + LoRA (trainer::train::sft::train).
    Qlora(Train),
    /// GRPO rounds: generation + policy step (trainer::train::grpo::train).
    Grpo(Train),
    /// Emulated CUDA kernel launches per second (the host emulation's cost; CPU only).
    Emulator {
        /// Forward+backward runs per case.
        #[arg(long, default_value_t = 3)]
        iters: usize,
        /// Append the result as one JSON line to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Greedy generation with the KV cache (trainer::generate, as evaluation runs it).
    Generate {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 4)]
        batch: usize,
        #[arg(long, default_value_t = 32)]
        prompt_len: usize,
        /// New tokens per row (every row runs to this length: no EOS).
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        #[arg(long, default_value_t = 5)]
        iters: usize,
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        #[arg(long, default_value_t = 16)]
        rank: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Measured bf16 matmul throughput (n×n×n products).
    Gemm {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 8192)]
        n: usize,
        #[arg(long, default_value_t = 50)]
        iters: usize,
    },
}

fn device(arg: DeviceArg) -> anyhow::Result<Device> {
    match arg {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Cuda if cfg!(feature = "cuda") => Ok(Device::new_cuda(0)?),
        DeviceArg::Cuda => bail!("--device cuda: this oxtune-bench was built without `--features cuda`"),
    }
}

fn dtype(arg: DtypeArg, dev: &Device) -> DType {
    match arg {
        DtypeArg::Bf16 => DType::BF16,
        DtypeArg::F32 => DType::F32,
        DtypeArg::Auto if dev.is_cuda() => DType::BF16,
        DtypeArg::Auto => DType::F32,
    }
}

fn emit(common: &Common, v: &serde_json::Value) -> anyhow::Result<()> {
    let line = serde_json::to_string(v)?;
    if let Some(p) = &common.json {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p)?;
        writeln!(f, "{line}")?;
    }
    println!("RESULT {line}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (method, t) = match cli.cmd {
        Cmd::Gemm { common, n, iters } => {
            let dev = device(common.device)?;
            let v = benches::gemm(&dev, dtype(common.dtype, &dev), n, iters)?;
            return emit(&common, &v);
        }
        Cmd::Generate { common, batch, prompt_len, new_tokens, iters, warmup, rank, seed } => {
            let dev = device(common.device)?;
            let cfg = BenchConfig {
                method: Method::Lora,
                arch: benches::arch(&common.arch)?,
                seq: prompt_len + new_tokens,
                batch,
                steps: 1,
                warmup,
                rank,
                alpha: 2.0 * rank as f64,
                dropout: 0.0,
                gradient_checkpointing: false,
                dtype: dtype(common.dtype, &dev),
                device: dev,
                seed,
                grpo: GrpoShape { prompts: 1, generations: 1, completion: new_tokens, prompt_len },
            };
            let shape = benches::GenerateShape { batch, prompt_len, new_tokens, iters };
            return emit(&common, &benches::generation(&cfg, &shape)?);
        }
        Cmd::Emulator { iters, json } => {
            let v = benches::emulator::run(iters)?;
            let common = Common { arch: String::new(), device: DeviceArg::Cpu, dtype: DtypeArg::Auto, json };
            return emit(&common, &v);
        }
        Cmd::Lora(t) => (Method::Lora, t),
        Cmd::Qlora(t) => (Method::Qlora, t),
        Cmd::Grpo(t) => (Method::Grpo, t),
    };
    let dev = device(t.common.device)?;
    let cfg = BenchConfig {
        method,
        arch: benches::arch(&t.common.arch)?,
        seq: t.seq,
        batch: t.batch,
        steps: t.steps,
        warmup: t.warmup,
        rank: t.rank,
        alpha: t.alpha.unwrap_or(2.0 * t.rank as f64),
        dropout: t.dropout,
        gradient_checkpointing: t.gradient_checkpointing,
        dtype: dtype(t.common.dtype, &dev),
        device: dev,
        seed: t.seed,
        grpo: GrpoShape {
            prompts: t.prompts,
            generations: t.generations,
            completion: t.completion,
            prompt_len: t.prompt_len,
        },
    };
    kernels::profile::enable(t.profile.is_some());
    let mut v = benches::run(&cfg)?;
    if let Some(path) = &t.profile {
        let wall = v["wall_s_all_steps"].as_f64().unwrap_or(f64::NAN);
        let (p, md) = benches::profile::report(&kernels::profile::take(), cfg.warmup + cfg.steps, wall);
        std::fs::write(path, md).map_err(|e| anyhow::anyhow!("--profile {}: {e}", path.display()))?;
        v["profile"] = p;
    }
    emit(&t.common, &v)
}
