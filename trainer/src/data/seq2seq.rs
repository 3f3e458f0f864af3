//! Records → sequence-to-sequence examples (the T5 family): the prompt side of a row (prompt,
//! instruction + input, question, dialogue, …) goes to the encoder, its completion (output,
//! answer, summary, …) to the decoder, each tokenised with the tokenizer's special tokens (T5
//! appends `</s>`) as transformers' seq2seq scripts do. T5 has no chat template: chat rows are
//! refused with what to give instead.

use super::{Content, DataError, Record, RowRef, TokenizerBundle};

/// One encoder input and its decoder target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seq2SeqExample {
    pub source_ids: Vec<u32>,
    pub target_ids: Vec<u32>,
    pub source: RowRef,
}

/// The result of [`seq2seq_examples`].
#[derive(Debug, Clone, Default)]
pub struct Seq2SeqReport {
    pub examples: Vec<Seq2SeqExample>,
    /// Inputs cut to `max_source_length` / targets cut to `max_target_length` (the start is kept).
    pub truncated_sources: usize,
    pub truncated_targets: usize,
    /// Rows with an empty target (nothing to learn).
    pub dropped_no_target: usize,
    pub source_tokens: usize,
    pub target_tokens: usize,
    /// Bad rows skipped with `skip_bad_rows`.
    pub skipped: Vec<(RowRef, String)>,
}

/// Keep the first `max` tokens; a final EOS stays the last token (transformers truncates before
/// it adds the special tokens).
fn truncate(ids: &mut Vec<u32>, max: usize, eos: Option<u32>) -> bool {
    if ids.len() <= max {
        return false;
    }
    let last = ids.last().copied();
    ids.truncate(max);
    if let (Some(e), Some(l)) = (eos, last) {
        if l == e && max > 0 {
            ids[max - 1] = e;
        }
    }
    true
}

/// Examples from records, with the truncation counted.
pub fn seq2seq_examples(
    records: &[Record],
    tok: &TokenizerBundle,
    max_source: usize,
    max_target: usize,
    skip_bad_rows: bool,
) -> Result<Seq2SeqReport, DataError> {
    let mut report = Seq2SeqReport::default();
    let eos = tok.eos_id();
    for rec in records {
        let (prompt, completion) = match &rec.content {
            Content::PromptCompletion { prompt, completion } => (prompt, completion),
            other => {
                let problem = match other {
                    Content::Messages(_) => "chat `messages` rows cannot train a sequence-to-sequence (T5) model: it has no chat template; give input/target pairs (prompt/completion, instruction/input/output, question/answer, dialogue/summary)",
                    _ => "a plain-text row has no target for the decoder; give input/target pairs (prompt/completion, instruction/input/output, question/answer, dialogue/summary)",
                };
                if skip_bad_rows {
                    report.skipped.push((rec.source.clone(), problem.to_string()));
                    continue;
                }
                return Err(DataError::BadRow {
                    path: rec.source.file.clone(),
                    line: rec.source.line,
                    problem: problem.into(),
                });
            }
        };
        let mut source_ids = tok.encode(prompt, true)?;
        let mut target_ids = tok.encode(completion, true)?;
        if completion.trim().is_empty() {
            report.dropped_no_target += 1;
            continue;
        }
        report.truncated_sources += usize::from(truncate(&mut source_ids, max_source.max(1), eos));
        report.truncated_targets += usize::from(truncate(&mut target_ids, max_target.max(1), eos));
        report.source_tokens += source_ids.len();
        report.target_tokens += target_ids.len();
        report.examples.push(Seq2SeqExample { source_ids, target_ids, source: rec.source.clone() });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncation_keeps_the_start_and_a_final_eos() {
        let mut v = vec![5, 6, 7, 8, 1];
        assert!(truncate(&mut v, 3, Some(1)));
        assert_eq!(v, vec![5, 6, 1]);
        let mut v = vec![5, 6, 7, 8];
        assert!(truncate(&mut v, 3, Some(1)));
        assert_eq!(v, vec![5, 6, 7]);
        let mut v = vec![5, 1];
        assert!(!truncate(&mut v, 3, Some(1)));
        assert_eq!(v, vec![5, 1]);
    }
}
