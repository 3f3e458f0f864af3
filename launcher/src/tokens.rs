//! Exact token counts through the trainer's own tokenisation (`trainer::data::count_tokens`),
//! so the estimate and `prepare-data` see the same tokens the job will train on.

use crate::error::Error;
use std::path::Path;

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
