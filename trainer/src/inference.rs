//! A model from local files, outside a training job: `train generate` (try a few prompts, tokens
//! streamed as they come) and `train evaluate` (score a test file as the job's evaluation does).
//! The model is a Hugging Face checkpoint directory (a base, or a merged model) of a decoder-only
//! family or T5; an adapter is a PEFT LoRA directory (`adapter_config.json` + `adapter_model.safetensors`, as `train` writes it)
//! put on top of the base.

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::DType;

use crate::data::{self, Content, DataSpec, Message, Prompt, Record, RowRef, TokenizerBundle};
use crate::device::JobDevice;
use crate::error::{io_err, TrainError};
use crate::eval::{self, EvalConfig, EvalRun};
use crate::generate::{cut_at_stop, generate_streaming, Finish, SamplingConfig};
use crate::model::{hub, Arch, LoadOptions, Model, ModelError};
use crate::rng::Rng;

/// A model ready to generate: weights (with the adapter when one was given), tokenizer, stop tokens.
pub struct LoadedModel {
    pub model: Model,
    pub tok: TokenizerBundle,
    pub eos_ids: Vec<u32>,
    /// With an adapter: generate with it on (a merged model or a base has none).
    pub adapters: bool,
}

/// Loads `model_dir` on `device` in `dtype`, with the PEFT adapter in `adapter_dir` when given.
pub fn load(
    model_dir: &Path,
    adapter_dir: Option<&Path>,
    device: &JobDevice,
    dtype: DType,
) -> Result<LoadedModel, TrainError> {
    let dir = hub::checked_model_dir(model_dir.to_path_buf(), " (give --model the base or merged model directory)")?;
    if let Some(a) = adapter_dir {
        check_adapter_dir(a)?;
    }
    let arch = Arch::from_file(&dir.join("config.json"))?;
    let tok = TokenizerBundle::load(&dir)?;
    tok.check_matches_model(arch.vocab_size(), &dir)?;
    let opts = LoadOptions::default();
    let model = match adapter_dir {
        None => Model::load(&dir, &arch, dtype, &device.device, None, &opts)?,
        Some(adapter) => {
            let config_path = adapter.join("adapter_config.json");
            let text = std::fs::read_to_string(&config_path).map_err(io_err(&config_path))?;
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                TrainError::BadInput(format!(
                    "{}: not JSON ({e}); is --adapter a PEFT adapter directory?",
                    config_path.display()
                ))
            })?;
            let lora = crate::lora::lora_config_from_peft(&json)
                .map_err(|e| TrainError::BadInput(format!("{}: {e}", config_path.display())))?;
            // The adapter's values replace the initialisation, so its seed does not matter.
            let mut rng = Rng::new(0);
            let model = Model::load(&dir, &arch, dtype, &device.device, Some((&lora, &mut rng)), &opts)?;
            model.load_adapter_tensors(&adapter.join(crate::checkpoint::ADAPTER_FILE))?;
            model
        }
    };
    let eos_ids = arch.eos_ids(&tok);
    Ok(LoadedModel { model, tok, eos_ids, adapters: adapter_dir.is_some() })
}

/// A prompt typed on the command line: for a decoder-only model a user turn (after `system`, when
/// given) through the chat template when the tokenizer has one, else the text as it is; for T5 the
/// encoder's input (`system` is refused: T5 has no system turn).
pub fn text_prompt(m: &LoadedModel, text: &str, system: Option<&str>) -> Result<Prompt, TrainError> {
    let seq2seq = m.model.is_seq2seq();
    if seq2seq && system.is_some() {
        return Err(TrainError::BadInput(
            "--system: a T5 model has no chat template or system turn; put the instruction into --prompt".into(),
        ));
    }
    let content = if m.tok.has_chat_template() && !seq2seq {
        let mut msgs: Vec<Message> = system.map(|s| Message::new("system", s)).into_iter().collect();
        msgs.push(Message::new("user", text));
        Content::Messages(msgs)
    } else {
        Content::Text(text.to_string())
    };
    let record =
        Record { content, extra: Default::default(), source: RowRef { file: PathBuf::from("--prompt"), line: 1 } };
    Ok(data::prompt_for(&record, &m.tok, usize::MAX, seq2seq)?)
}

/// Prompts from a file in any format the trainer reads (chat rows lose their final assistant turn,
/// prompt/completion rows their completion; T5 refuses chat rows).
pub fn file_prompts(m: &LoadedModel, file: &Path, spec: &DataSpec) -> Result<Vec<Prompt>, TrainError> {
    let read = data::read_path(file, spec)?;
    let encoder = m.model.is_seq2seq();
    Ok(read.records.iter().map(|r| data::prompt_for(r, &m.tok, usize::MAX, encoder)).collect::<Result<_, _>>()?)
}

/// How `train generate` samples.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    pub top_p: f64,
    pub stop_strings: Vec<String>,
    pub seed: u64,
}

/// Generates a completion for every prompt in turn, writing its text to `out` as the tokens arrive
/// (the text is decoded again at each token, so multi-byte characters and merged pieces come out
/// whole). Returns each completion's text and how it ended.
pub fn stream(
    m: &LoadedModel,
    prompts: &[Prompt],
    opts: &GenerateOptions,
    out: &mut dyn Write,
) -> Result<Vec<(String, Finish)>, TrainError> {
    let sampling = SamplingConfig {
        temperature: opts.temperature,
        top_p: opts.top_p,
        top_k: 0,
        max_new_tokens: opts.max_new_tokens.max(1),
        eos_ids: m.eos_ids.clone(),
        stop_strings: opts.stop_strings.clone(),
    };
    let mut rng = Rng::derive(opts.seed, "generate");
    let mut done = Vec::with_capacity(prompts.len());
    for p in prompts {
        let mut ids: Vec<u32> = Vec::new();
        let mut shown = String::new();
        let mut write_err = None;
        let mut on_token = |_row: usize, t: u32| {
            if m.eos_ids.contains(&t) {
                return;
            }
            ids.push(t);
            let text = m.tok.decode(&ids, true).unwrap_or_default();
            // Only whole new text: a partial UTF-8 sequence decodes to U+FFFD until it completes.
            if let Some(new) = text.strip_prefix(shown.as_str()).filter(|n| !n.ends_with('\u{FFFD}')) {
                if let Err(e) = out.write_all(new.as_bytes()).and_then(|_| out.flush()) {
                    write_err.get_or_insert(e);
                }
                shown = text;
            }
        };
        let c = generate_streaming(
            &m.model,
            &m.tok,
            std::slice::from_ref(&p.ids),
            &sampling,
            &mut rng,
            m.adapters,
            &mut on_token,
        )?;
        // A text that ended inside a multi-byte character was held back: write what is left.
        let full = m.tok.decode(&ids, true).unwrap_or_default();
        if let Some(rest) = full.strip_prefix(shown.as_str()).filter(|r| !r.is_empty()) {
            if let Err(e) = out.write_all(rest.as_bytes()) {
                write_err.get_or_insert(e);
            }
        }
        let c = c.into_iter().next().ok_or_else(|| TrainError::Unsupported("generation returned nothing".into()))?;
        // The returned answer ends before a stop string; the streamed text already showed it.
        let text = cut_at_stop(&c.text, &opts.stop_strings);
        if let Some(e) = write_err {
            return Err(TrainError::Io { path: "standard output".into(), source: e });
        }
        let _ = writeln!(out);
        done.push((text, c.finish));
    }
    Ok(done)
}

/// `train evaluate`: the job's evaluation over `file` with `cfg`, predictions and summary written
/// into `out_dir` (`eval_predictions.jsonl`, `eval_summary.json`).
pub fn evaluate_file(
    m: &LoadedModel,
    file: &Path,
    spec: &DataSpec,
    cfg: &EvalConfig,
    out_dir: &Path,
) -> Result<EvalRun, TrainError> {
    let read = data::read_path(file, spec)?;
    let cases = eval::cases(&read.records, &m.tok, cfg, m.model.is_seq2seq())?;
    if cases.is_empty() {
        return Err(TrainError::BadInput(format!("{}: no rows to evaluate", file.display())));
    }
    tracing::info!("Evaluating {} cases from {}", cases.len(), file.display());
    let run = eval::run(&m.model, &m.tok, &cases, cfg, &m.eos_ids, &[], m.adapters)?;
    std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let preds = out_dir.join("eval_predictions.jsonl");
    eval::write_predictions(&preds, &cases, &run, None).map_err(io_err(&preds))?;
    let summary = out_dir.join("eval_summary.json");
    let json = eval::summary_json(cfg, cases.len(), &run, None);
    std::fs::write(&summary, serde_json::to_string_pretty(&json).unwrap_or_default() + "\n")
        .map_err(io_err(&summary))?;
    Ok(run)
}

/// An adapter directory without the files `train` writes is bad input, named.
pub fn check_adapter_dir(dir: &Path) -> Result<(), TrainError> {
    for f in ["adapter_config.json", crate::checkpoint::ADAPTER_FILE] {
        if !dir.join(f).is_file() {
            return Err(TrainError::Model(ModelError::NotFound(format!(
                "{} has no {f}: --adapter takes a PEFT LoRA adapter directory (what `train` writes into model/)",
                dir.display()
            ))));
        }
    }
    Ok(())
}
