//! `train`: the SageMaker training entrypoint.
//!
//! `train [train] [--ml-root DIR] [--<hyperparameter> VALUE]...` runs the job under `/opt/ml`;
//! `train demo` runs the embedded tiny demo through the same path; `train generate` and `train
//! evaluate` try a model (with an adapter) on prompts or a test file, outside a job.

use std::path::PathBuf;
use std::process::ExitCode as ProcessExit;

use trainer::job::{self, JobOptions};
use trainer::sagemaker::{ExitCode, MlPaths, StopFlag};
use trainer::TrainError;

const USAGE: &str = "\
Usage:
  train [train] [--ml-root DIR] [--<hyperparameter> VALUE | --<hyperparameter>=VALUE]...
  train demo [--ml-root DIR] [--steps N] [--family llama|t5] [--prepare-only] [--<hyperparameter> VALUE]...
  train generate --model DIR [--adapter DIR] (--prompt TEXT | --file FILE) [--system TEXT]
                 [--max-new-tokens N] [--temperature T] [--top-p P] [--stop TEXT]... [--seed N]
  train evaluate --model DIR [--adapter DIR] --file FILE [--output DIR] [--<eval_* or data hyperparameter> VALUE]...
  train --hyperparameters     print the hyperparameter reference (markdown)
  train --help | --version

Reads /opt/ml (or --ml-root, OXTUNE_ML_ROOT, SAGEMAKER_BASE_DIR): input/config/hyperparameters.json,
channels input/data/{train|training,validation,model}; writes model/, output/data/, checkpoints/;
on failure output/failure and a non-zero exit (2 bad input, 1 internal error, 143 stopped by SIGTERM
after checkpointing). Hyperparameters: CLI > OXTUNE_HP_<NAME> environment > hyperparameters.json > defaults.
`demo --prepare-only` writes the demo's /opt/ml tree and stops (to run it elsewhere, e.g. in the image);
`demo --family t5` trains a tiny FLAN-T5-architecture encoder-decoder instead of the tiny Llama.
`generate` streams each completion to stdout (chat template applied when the tokenizer has one; --file
takes any format the trainer reads); `evaluate` scores FILE as a job's test channel is scored and writes
eval_predictions.jsonl and eval_summary.json into --output (default ./eval-output). Both run where
OXTUNE_DEVICE says (the first GPU when there is one).
Diagnostics on stderr are coloured only on a terminal, and never with NO_COLOR set.
";

enum Command {
    Train,
    Demo { steps: Option<u64>, prepare_only: bool, family: trainer::demo::DemoFamily },
    Generate,
    Evaluate,
}

struct Args {
    command: Command,
    ml_root: Option<PathBuf>,
    hyperparameters: Vec<(String, String)>,
}

fn parse_args(raw: Vec<String>) -> Result<Option<Args>, String> {
    let mut it = raw.into_iter().peekable();
    let mut command = Command::Train;
    match it.peek().map(String::as_str) {
        Some("train") => {
            it.next();
        }
        Some("demo") => {
            it.next();
            command = Command::Demo { steps: None, prepare_only: false, family: trainer::demo::DemoFamily::Llama };
        }
        Some("generate") => {
            it.next();
            command = Command::Generate;
        }
        Some("evaluate") => {
            it.next();
            command = Command::Evaluate;
        }
        Some("serve") => {
            return Err(
                "this image trains models; it has no `serve` mode (deploy the adapter with an inference container)"
                    .into(),
            )
        }
        _ => {}
    }
    let mut args = Args { command, ml_root: None, hyperparameters: vec![] };
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("train {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "--hyperparameters" => {
                print!("{}", trainer::spec::markdown_table());
                return Ok(None);
            }
            "--prepare-only" => {
                if let Command::Demo { prepare_only, .. } = &mut args.command {
                    *prepare_only = true;
                    continue;
                }
                return Err("--prepare-only belongs to `train demo`".into());
            }
            _ => {}
        }
        let Some(flag) = a.strip_prefix("--") else {
            return Err(format!("unexpected argument `{a}`; hyperparameters are given as --name value\n\n{USAGE}"));
        };
        let (key, value) = match flag.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => {
                let v = it.next().ok_or_else(|| format!("--{flag} needs a value"))?;
                (flag.to_string(), v)
            }
        };
        match (key.as_str(), &mut args.command) {
            ("ml-root" | "ml_root", _) => args.ml_root = Some(PathBuf::from(value)),
            ("steps", Command::Demo { steps, .. }) => {
                *steps = Some(value.parse().map_err(|_| format!("--steps needs a whole number, got `{value}`"))?)
            }
            ("family", Command::Demo { family, .. }) => *family = trainer::demo::DemoFamily::parse(&value)?,
            _ => args.hyperparameters.push((key, value)),
        }
    }
    Ok(Some(args))
}

/// The library logs through `tracing`; this binary decides where it goes: the trainer's `info`
/// lines (the job's progress and the `METRIC` lines SageMaker parses) to stdout as bare text,
/// diagnostics to stderr at the level `OXTUNE_LOG` names (default `warn`).
fn init_logging() {
    use tracing_subscriber::{filter, fmt, prelude::*, EnvFilter};
    // In a multi-rank job rank 0 alone reports progress; the others only diagnostics.
    let quiet = std::env::var(trainer::dist::worker::RANK_VAR).is_ok_and(|r| r.trim() != "0");
    let progress = fmt::layer()
        .with_writer(std::io::stdout)
        .without_time()
        .with_level(false)
        .with_target(false)
        .with_ansi(false)
        .with_filter(filter::filter_fn(move |m| {
            !quiet && *m.level() == tracing::Level::INFO && m.target().starts_with("trainer")
        }));
    let diagnostics = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour_stderr())
        .with_filter(EnvFilter::try_from_env("OXTUNE_LOG").unwrap_or_else(|_| EnvFilter::new("warn")));
    tracing_subscriber::registry().with(progress).with(diagnostics).init();
}

/// Colour codes only where a person reads them: stderr is a terminal and NO_COLOR (no-color.org) is
/// unset or empty. Piped output (CloudWatch, `docker logs`, files) stays plain text.
fn colour_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn main() -> ProcessExit {
    init_logging();
    let args = match parse_args(std::env::args().skip(1).collect()) {
        Ok(Some(a)) => a,
        Ok(None) => return ProcessExit::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            let paths = MlPaths::from_env(None);
            if paths.root.exists() {
                let _ = paths.write_failure(&format!("Bad input: {msg}"), "");
            }
            return ProcessExit::from(ExitCode::BadInput as u8);
        }
    };
    let stop = match StopFlag::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return ProcessExit::from(ExitCode::Internal as u8);
        }
    };
    if matches!(args.command, Command::Generate | Command::Evaluate) {
        return try_model(args);
    }
    let paths = match &args.command {
        Command::Demo { steps, prepare_only, family } => {
            let root = args.ml_root.clone().unwrap_or_else(|| PathBuf::from("ml-demo"));
            match trainer::demo::prepare(&root, *steps, *family) {
                Ok(p) => {
                    println!("Demo: {} + bundled instruction data written to {}", family.describe(), root.display());
                    if *prepare_only {
                        println!("Not training (--prepare-only): run `train --ml-root {}` to train it", root.display());
                        return ProcessExit::SUCCESS;
                    }
                    p
                }
                Err(e) => return fail(&MlPaths::new(root), &e),
            }
        }
        Command::Train => MlPaths::from_env(args.ml_root.clone()),
        Command::Generate | Command::Evaluate => unreachable!("handled above"),
    };
    let env: Vec<(String, String)> = std::env::vars().collect();
    let opts = JobOptions { paths: paths.clone(), cli: args.hyperparameters, env, stop };
    match trainer::supervise::plan(&opts) {
        Ok(trainer::supervise::Plan::InProcess) => {}
        Ok(trainer::supervise::Plan::Ranks { topology, nccl }) => {
            let code = trainer::supervise::run(&topology, &nccl, &opts);
            // Rank 0's host has the outputs.
            if code == 0 && topology.host_index == 0 {
                println!("Outputs in {}", paths.model_dir().display());
            }
            return ProcessExit::from(code);
        }
        Err(e) => return fail(&paths, &e),
    }
    // Backprop walks the graph recursively: give it a large stack.
    let worker = std::thread::Builder::new().name("train".into()).stack_size(1 << 30).spawn(move || job::run(opts));
    let result = match worker {
        Ok(handle) => handle.join(),
        Err(e) => {
            eprintln!("error: cannot start the training thread: {e}");
            return ProcessExit::from(ExitCode::Internal as u8);
        }
    };
    match result {
        Ok(Ok(done)) => {
            if std::env::var(trainer::dist::worker::RANK_VAR).is_err() {
                println!("Outputs in {}", done.model_dir.display());
            }
            ProcessExit::SUCCESS
        }
        Ok(Err(e)) => fail(&paths, &e),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            let reason = format!("Internal error: the trainer crashed: {msg}. Please report this with the job's logs.");
            eprintln!("error: {reason}");
            write_failure(&paths, &reason, "");
            ProcessExit::from(ExitCode::Internal as u8)
        }
    }
}

/// The failure file, or in a worker of a multi-rank job the report its supervisor reads (the
/// supervisor writes `output/failure`, naming the rank).
fn write_failure(paths: &MlPaths, reason: &str, details: &str) {
    let written = match std::env::var_os(trainer::dist::worker::REPORT_VAR).filter(|p| !p.is_empty()) {
        Some(report) => std::fs::write(&report, format!("{}\n\n{}", reason.trim(), details.trim()))
            .map_err(|e| (PathBuf::from(report), e)),
        None => paths.write_failure(reason, details).map_err(|e| (paths.failure_file(), e)),
    };
    if let Err((path, e)) = written {
        eprintln!("error: could not write {}: {e}", path.display());
    }
}

/// The flags of `generate` / `evaluate`, taken out of the `--name value` pairs (either `-` or `_`).
struct Flags(Vec<(String, String)>);

impl Flags {
    fn take_all(&mut self, name: &str) -> Vec<String> {
        let (taken, rest): (Vec<_>, Vec<_>) = self.0.drain(..).partition(|(k, _)| k.replace('-', "_") == name);
        self.0 = rest;
        taken.into_iter().map(|(_, v)| v).collect()
    }
    fn take(&mut self, name: &str) -> Option<String> {
        self.take_all(name).pop()
    }
    fn number<T: std::str::FromStr>(&mut self, name: &str, default: T) -> Result<T, String> {
        match self.take(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{} needs a number, got `{v}`", name.replace('_', "-"))),
        }
    }
}

/// `train generate` / `train evaluate`: a model from local files, on the device OXTUNE_DEVICE picks.
fn try_model(args: Args) -> ProcessExit {
    let evaluate = matches!(args.command, Command::Evaluate);
    let result = (|| -> Result<(), TrainError> {
        let bad = TrainError::BadInput;
        let mut f = Flags(args.hyperparameters);
        let model =
            f.take("model").ok_or_else(|| bad("--model DIR is required (a base or merged model directory)".into()))?;
        let adapter = f.take("adapter").map(PathBuf::from);
        let env: Vec<(String, String)> = std::env::vars().collect();
        let device = trainer::device::JobDevice::select(&env)?;
        device.enter();
        let spec_of = |rest: Vec<(String, String)>| {
            let hp = rest.into_iter().collect();
            trainer::spec::JobSpec::from_hyperparameters(&hp).map_err(|e| bad(format!("{e}")))
        };
        // What runs where goes to stderr: stdout carries only the completions (or the scores).
        let load = |dtype| {
            let m = trainer::inference::load(model.as_ref(), adapter.as_deref(), &device, dtype)?;
            let with = adapter.as_ref().map(|a| format!(" + adapter {}", a.display())).unwrap_or_default();
            eprintln!("model {model}{with} on {} ({dtype:?})", device.name());
            Ok::<_, TrainError>(m)
        };
        if evaluate {
            let file = f.take("file").ok_or_else(|| bad("--file FILE is required (the test examples)".into()))?;
            let out_dir = PathBuf::from(f.take("output").unwrap_or_else(|| "eval-output".into()));
            let spec = spec_of(f.0)?;
            let m = load(device.dtype(spec.dtype))?;
            let run = trainer::inference::evaluate_file(&m, file.as_ref(), &spec.data, &spec.eval.config, &out_dir)?;
            let line = trainer::report::MetricRecord { extra: run.metrics.clone(), ..Default::default() }.line();
            println!("{line}");
            println!("Predictions and summary in {}", out_dir.display());
            return Ok(());
        }
        let prompts_text = f.take_all("prompt");
        let file = f.take("file");
        let system = f.take("system");
        let opts = trainer::inference::GenerateOptions {
            max_new_tokens: f.number("max_new_tokens", 256usize).map_err(bad)?,
            temperature: f.number("temperature", 0.0f64).map_err(bad)?,
            top_p: f.number("top_p", 1.0f64).map_err(bad)?,
            stop_strings: f.take_all("stop"),
            seed: f.number("seed", 42u64).map_err(bad)?,
        };
        if let Some((k, _)) = f.0.first() {
            return Err(bad(format!("generate does not take --{k}; see `train --help`")));
        }
        let spec = spec_of(vec![])?;
        let m = load(device.dtype(spec.dtype))?;
        let mut prompts = Vec::new();
        for p in &prompts_text {
            prompts.push(trainer::inference::text_prompt(&m, p, system.as_deref())?);
        }
        if let Some(file) = &file {
            prompts.extend(trainer::inference::file_prompts(&m, file.as_ref(), &spec.data)?);
        }
        if prompts.is_empty() {
            return Err(bad("nothing to generate from: give --prompt TEXT or --file FILE".into()));
        }
        trainer::inference::stream(&m, &prompts, &opts, &mut std::io::stdout().lock())?;
        Ok(())
    })();
    match result {
        Ok(()) => ProcessExit::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.reason());
            ProcessExit::from(e.exit_code() as u8)
        }
    }
}

fn fail(paths: &MlPaths, e: &TrainError) -> ProcessExit {
    let reason = e.reason();
    eprintln!("error: {reason}");
    let mut details = String::new();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        details.push_str(&format!("caused by: {s}\n"));
        src = s.source();
    }
    write_failure(paths, &reason, &details);
    ProcessExit::from(e.exit_code() as u8)
}
