//! Records → sequence-to-sequence examples (the T5 family) and their micro-batches: the prompt
//! side of a row (prompt, instruction + input, question, dialogue, …) goes to the encoder, its
//! completion (output, answer, summary, …) to the decoder, each as its tokens and then EOS — what
//! a T5 tokenizer's special tokens give (`</s>` appended, no BOS), for any tokenizer. T5 has no
//! chat template: chat rows are refused with what to give instead.

use super::{Content, DataError, Prompt, Record, RowRef, TokenizerBundle};

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

/// One side of a pair as the encoder or decoder reads it: the text's tokens, then EOS.
pub fn encoder_ids(tok: &TokenizerBundle, text: &str) -> Result<Vec<u32>, DataError> {
    let mut ids = tok.encode(text, false)?;
    ids.extend(tok.eos_id().filter(|e| ids.last() != Some(e)));
    Ok(ids)
}

/// What a row holds that is not an input/target pair, for a sequence-to-sequence model.
pub fn not_a_pair(content: &Content) -> &'static str {
    match content {
        Content::Messages(_) => "chat `messages` rows cannot train a sequence-to-sequence (T5) model: it has no chat template; give input/target pairs (prompt/completion, instruction/input/output, question/answer, dialogue/summary)",
        _ => "a plain-text row has no target for the decoder; give input/target pairs (prompt/completion, instruction/input/output, question/answer, dialogue/summary)",
    }
}

/// The encoder input of `record` for generation (evaluation, `train generate`): its prompt side
/// as training encodes it, the completion as the reference; inputs longer than `max_tokens` keep
/// their start (and EOS), as training truncates them. Chat rows are refused (no chat template).
pub fn encoder_prompt_of(record: &Record, tok: &TokenizerBundle, max_tokens: usize) -> Result<Prompt, DataError> {
    let (text, reference) = match &record.content {
        Content::PromptCompletion { prompt, completion } => {
            (prompt.clone(), (!completion.is_empty()).then(|| completion.clone()))
        }
        Content::Text(t) => (t.clone(), None),
        other => {
            return Err(DataError::BadRow {
                path: record.source.file.clone(),
                line: record.source.line,
                problem: not_a_pair(other).into(),
            })
        }
    };
    let mut ids = encoder_ids(tok, &text)?;
    let before = ids.len();
    truncate(&mut ids, max_tokens.max(1), tok.eos_id());
    Ok(Prompt { text, truncated: before - ids.len(), ids, reference })
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
                let problem = not_a_pair(other);
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
        let mut source_ids = encoder_ids(tok, prompt)?;
        let mut target_ids = encoder_ids(tok, completion)?;
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

/// One micro-batch of pairs: sources right-padded to the longest in the batch, labels padded
/// with −100 (ignored) to the longest target.
#[derive(Debug, Clone, PartialEq)]
pub struct Seq2SeqBatch {
    pub batch: usize,
    pub source_len: usize,
    /// `[batch, source_len]`, padding = the pad id.
    pub source_ids: Vec<u32>,
    /// `[batch, source_len]`: 1 on tokens, 0 on padding.
    pub source_mask: Vec<u32>,
    /// Per row: the target, then −100.
    pub labels: Vec<Vec<i64>>,
    pub target_tokens: usize,
    /// Source and target tokens without padding.
    pub tokens: usize,
}

/// Encoder inputs right-padded with `pad` to the longest (at least 1 wide): `(ids, mask, width)`,
/// row-major, the mask 1 on tokens and 0 on padding — how training, GRPO and generation feed T5.
pub fn pad_sources(sources: &[&[u32]], pad: u32) -> (Vec<u32>, Vec<u32>, usize) {
    let width = sources.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
    let mut ids = Vec::with_capacity(sources.len() * width);
    let mut mask = Vec::with_capacity(sources.len() * width);
    for s in sources {
        ids.extend(s.iter().copied().chain(std::iter::repeat_n(pad, width - s.len())));
        mask.extend((0..width).map(|i| u32::from(i < s.len())));
    }
    (ids, mask, width)
}

/// Cut examples (taken in `order`) into micro-batches of `batch_size` rows: within consecutive
/// windows of `64 * batch_size` indices, sorted by source length (longest first, stable) so each
/// batch pads little, as the decoder families' unpacked batching does. Deterministic given `order`.
pub fn make_seq2seq_batches(
    examples: &[Seq2SeqExample],
    order: &[usize],
    batch_size: usize,
    pad_id: u32,
) -> Vec<Seq2SeqBatch> {
    let bs = batch_size.max(1);
    let picked: Vec<&Seq2SeqExample> = order.iter().filter_map(|&i| examples.get(i)).collect();
    let mut out = Vec::new();
    for window in picked.chunks(64 * bs) {
        let mut sorted = window.to_vec();
        sorted.sort_by_key(|e| std::cmp::Reverse(e.source_ids.len()));
        for rows in sorted.chunks(bs) {
            let sources: Vec<&[u32]> = rows.iter().map(|e| e.source_ids.as_slice()).collect();
            let (source_ids, source_mask, source_len) = pad_sources(&sources, pad_id);
            let t = rows.iter().map(|e| e.target_ids.len()).max().unwrap_or(0).max(1);
            let mut b = Seq2SeqBatch {
                batch: rows.len(),
                source_len,
                source_ids,
                source_mask,
                labels: Vec::with_capacity(rows.len()),
                target_tokens: 0,
                tokens: 0,
            };
            for e in rows {
                let mut labels: Vec<i64> = e.target_ids.iter().map(|&x| i64::from(x)).collect();
                labels.resize(t, -100);
                b.labels.push(labels);
                b.target_tokens += e.target_ids.len();
                b.tokens += e.source_ids.len() + e.target_ids.len();
            }
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(source: usize, target: usize) -> Seq2SeqExample {
        Seq2SeqExample {
            source_ids: (1..=source as u32).collect(),
            target_ids: (10..10 + target as u32).collect(),
            source: crate::data::RowRef { file: "t.jsonl".into(), line: 1 },
        }
    }

    #[test]
    fn batches_pad_sources_and_ignore_padded_labels() {
        let examples = vec![ex(2, 3), ex(4, 1), ex(3, 2)];
        let b = make_seq2seq_batches(&examples, &[0, 1, 2], 2, 0);
        assert_eq!(b.len(), 2);
        // Longest source first within the window.
        assert_eq!((b[0].batch, b[0].source_len), (2, 4));
        assert_eq!(b[0].source_ids, vec![1, 2, 3, 4, 1, 2, 3, 0]);
        assert_eq!(b[0].source_mask, vec![1, 1, 1, 1, 1, 1, 1, 0]);
        assert_eq!(b[0].labels, vec![vec![10, -100], vec![10, 11]]);
        assert_eq!((b[0].target_tokens, b[0].tokens), (3, 10));
        assert_eq!(b[1].labels, vec![vec![10, 11, 12]]);
        assert_eq!(make_seq2seq_batches(&examples, &[2, 0], 1, 0).len(), 2);
    }

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
