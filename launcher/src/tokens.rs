//! Exact token counts through the trainer's own tokenisation (`trainer::data::count_tokens`),
//! so the estimate and `prepare-data` see the same tokens the job will train on; a byte-based
//! estimate where no tokenizer is at hand.

use std::path::Path;

use crate::calibration::Calibration;
use crate::error::Error;
use crate::estimate::TokenCount;

/// Token totals of one data file or directory.
#[derive(Debug, Clone, Default)]
pub struct Tokenized {
    pub tokens: u64,
    pub samples: u64,
    /// Tokens per example (after truncation to the spec's max_seq_length).
    pub lengths: Vec<u64>,
    /// Examples cut to max_seq_length.
    pub truncated: u64,
}

/// Read and tokenise `data` with the tokenizer files in `tokenizer_dir` exactly as the job will.
pub fn tokenize_file(data: &Path, tokenizer_dir: &Path, spec: &trainer::data::DataSpec) -> Result<Tokenized, Error> {
    let report = trainer::data::count_tokens(data, tokenizer_dir, spec).map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(Tokenized {
        tokens: report.total_tokens as u64,
        samples: report.examples.len() as u64,
        lengths: report.examples.iter().map(|e| e.input_ids.len() as u64).collect(),
        truncated: report.truncated as u64,
    })
}

/// Token count of a data file: exact with a tokenizer, else estimated from bytes. `seq2seq` (a T5
/// base): inputs and targets are counted apart, as the job tokenises and truncates them.
pub fn count_data_tokens(
    data: &Path,
    tokenizer_dir: Option<&Path>,
    spec: &trainer::spec::JobSpec,
    cal: &Calibration,
    seq2seq: bool,
) -> Result<TokenCount, Error> {
    let bytes = data_bytes(data)?;
    if let Some(dir) = tokenizer_dir {
        if dir.join("tokenizer.json").is_file() {
            let exact = if seq2seq { exact_seq2seq_tokens(data, dir, spec) } else { exact_tokens(data, dir, spec) };
            match exact {
                Ok(tc) => return Ok(TokenCount { data_bytes: Some(bytes), ..tc }),
                Err(e) => eprintln!("warning: exact token count failed ({e}); estimating from bytes"),
            }
        }
    }
    // Rows: the trainer's reader counts them exactly, without a tokenizer.
    let records = trainer::data::read_path(data, &trainer::data::DataSpec { skip_bad_rows: true, ..spec.data.clone() })
        .map(|r| r.records)
        .ok();
    let rows = records.as_ref().map(|r| r.len() as u64);
    // Without a tokenizer, a T5 job's input share is its share of the pairs' characters.
    let source_share = records.filter(|_| seq2seq).and_then(|records| {
        let (mut src, mut all) = (0usize, 0usize);
        for r in &records {
            if let trainer::data::Content::PromptCompletion { prompt, completion } = &r.content {
                src += prompt.len();
                all += prompt.len() + completion.len();
            }
        }
        (all > 0).then(|| src as f64 / all as f64)
    });
    let tokens = (bytes as f64 / cal.trainer.bytes_per_token).ceil() as u64;
    Ok(TokenCount {
        tokens,
        samples: rows,
        exact: false,
        source: format!(
            "estimated from {} at {} bytes/token ({}); give --tokenizer DIR for an exact count",
            crate::format::fmt_bytes(bytes),
            cal.trainer.bytes_per_token,
            cal.trainer.bytes_per_token_source
        ),
        data_bytes: Some(bytes),
        source_share,
    })
}

fn data_bytes(p: &Path) -> Result<u64, Error> {
    Ok(crate::upload::list_local(p)?.iter().map(|f| f.size).sum())
}

/// Tokenise exactly as the job will.
fn exact_tokens(data: &Path, tokenizer_dir: &Path, spec: &trainer::spec::JobSpec) -> Result<TokenCount, Error> {
    let t = tokenize_file(data, tokenizer_dir, &spec.data)?;
    Ok(TokenCount {
        tokens: t.tokens,
        samples: Some(t.samples),
        exact: true,
        source: format!("tokenised with {}", tokenizer_dir.display()),
        data_bytes: None,
        source_share: None,
    })
}

/// T5 pairs tokenised and cut to max_source_length / max_target_length exactly as the job will.
fn exact_seq2seq_tokens(data: &Path, tokenizer_dir: &Path, spec: &trainer::spec::JobSpec) -> Result<TokenCount, Error> {
    let invalid = |e: trainer::data::DataError| Error::Invalid(e.to_string());
    let tok = trainer::data::TokenizerBundle::load(tokenizer_dir).map_err(invalid)?;
    let read = trainer::data::read_path(data, &spec.data).map_err(invalid)?;
    let (src, tgt) = (spec.max_source_length, spec.max_target_length);
    let r = trainer::data::seq2seq_examples(&read.records, &tok, src, tgt, spec.data.skip_bad_rows).map_err(invalid)?;
    let tokens = (r.source_tokens + r.target_tokens) as u64;
    Ok(TokenCount {
        tokens,
        samples: Some(r.examples.len() as u64),
        exact: true,
        source: format!("input/target pairs tokenised with {}", tokenizer_dir.display()),
        data_bytes: None,
        source_share: (tokens > 0).then(|| r.source_tokens as f64 / tokens as f64),
    })
}
