//! ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum, computed exactly as Python's `rouge-score` 0.1.2 does
//! (`RougeScorer(types, use_stemmer=…, split_summaries=False)`), so scores compare with published
//! numbers and with anyone's Python evaluation:
//!
//! - tokens: lower-case the text, replace every run of characters outside `[a-z0-9]` by a space,
//!   split on spaces, drop empty tokens (so text in other scripts has no tokens and scores 0); with
//!   the stemmer, tokens longer than 3 letters are Porter-stemmed as NLTK does (`porter`);
//! - ROUGE-N: clipped n-gram overlap; precision = overlap / max(candidate n-grams, 1), recall =
//!   overlap / max(reference n-grams, 1);
//! - ROUGE-L: longest common subsequence over the whole texts (0 when either side has no tokens);
//! - ROUGE-Lsum: summary-level LCS: both texts split into sentences on `\n`, the union of each
//!   reference sentence's LCS with every candidate sentence, tokens counted at most as often as
//!   they occur on both sides;
//! - F = 2·P·R / (P + R), 0 when P + R = 0, in that order of operations (bit-identical floats).

use std::collections::HashMap;

/// Precision, recall and F1 of one ROUGE type.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Score {
    pub precision: f64,
    pub recall: f64,
    pub fmeasure: f64,
}

impl Score {
    fn new(precision: f64, recall: f64) -> Score {
        let fmeasure = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
        Score { precision, recall, fmeasure }
    }
}

/// The four ROUGE types summarisation papers report.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct RougeScores {
    pub rouge1: Score,
    pub rouge2: Score,
    #[serde(rename = "rougeL")]
    pub rouge_l: Score,
    #[serde(rename = "rougeLsum")]
    pub rouge_lsum: Score,
}

/// rouge-score's options that change the numbers; recorded beside every score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct RougeOptions {
    pub use_stemmer: bool,
}

impl RougeOptions {
    /// The options in rouge-score's own terms, for summaries and reports.
    pub fn describe(&self) -> String {
        format!(
            "rouge-score 0.1.2: default tokenizer, use_stemmer={}, split_summaries=false (sentences on \\n)",
            if self.use_stemmer { "True" } else { "False" }
        )
    }
}

/// rouge-score's default tokenizer.
pub fn tokenize(text: &str, opts: RougeOptions) -> Vec<String> {
    let mut tokens = words(text);
    if opts.use_stemmer {
        for t in tokens.iter_mut().filter(|t| t.len() > 3) {
            *t = super::porter::stem(t);
        }
    }
    tokens
}

/// Lower-case `[a-z0-9]` runs.
fn words(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut tokens = Vec::new();
    let mut cur = String::new();
    for c in lower.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            cur.push(c);
        } else if !cur.is_empty() {
            tokens.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        tokens.push(cur);
    }
    tokens
}

/// All four scores of `prediction` against `target` (the reference).
pub fn score(target: &str, prediction: &str, opts: RougeOptions) -> RougeScores {
    let t = tokenize(target, opts);
    let p = tokenize(prediction, opts);
    RougeScores {
        rouge1: rouge_n(&t, &p, 1),
        rouge2: rouge_n(&t, &p, 2),
        rouge_l: rouge_l(&t, &p),
        rouge_lsum: rouge_lsum(target, prediction, opts),
    }
}

fn ngrams(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    if tokens.len() >= n {
        for w in tokens.windows(n) {
            *counts.entry(w).or_insert(0) += 1;
        }
    }
    counts
}

/// ROUGE-N over token lists.
pub fn rouge_n(target: &[String], prediction: &[String], n: usize) -> Score {
    let (t, p) = (ngrams(target, n), ngrams(prediction, n));
    let overlap: usize = t.iter().map(|(g, c)| (*c).min(p.get(g).copied().unwrap_or(0))).sum();
    let (t_total, p_total): (usize, usize) = (t.values().sum(), p.values().sum());
    Score::new(overlap as f64 / p_total.max(1) as f64, overlap as f64 / t_total.max(1) as f64)
}

/// LCS length table, (|a| + 1) × (|b| + 1), row-major.
fn lcs_table(a: &[String], b: &[String]) -> Vec<Vec<usize>> {
    let mut t = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            t[i][j] = if a[i - 1] == b[j - 1] { t[i - 1][j - 1] + 1 } else { t[i - 1][j].max(t[i][j - 1]) };
        }
    }
    t
}

/// ROUGE-L over token lists.
pub fn rouge_l(target: &[String], prediction: &[String]) -> Score {
    if target.is_empty() || prediction.is_empty() {
        return Score::default();
    }
    let lcs = lcs_table(target, prediction)[target.len()][prediction.len()] as f64;
    Score::new(lcs / prediction.len() as f64, lcs / target.len() as f64)
}

/// Indices into `r` of one LCS of `r` and `c`, chosen as rouge-score's backtrack chooses it (on a
/// tie it moves up, not left), because the union in ROUGE-Lsum depends on which LCS it is.
fn lcs_indices(r: &[String], c: &[String]) -> Vec<usize> {
    let t = lcs_table(r, c);
    let (mut i, mut j) = (r.len(), c.len());
    let mut out = Vec::new();
    while i > 0 && j > 0 {
        if r[i - 1] == c[j - 1] {
            out.push(i - 1);
            i -= 1;
            j -= 1;
        } else if t[i][j - 1] > t[i - 1][j] {
            j -= 1;
        } else {
            i -= 1;
        }
    }
    out.reverse();
    out
}

/// Sentences on `\n`, empty ones dropped, each tokenised.
fn sentences(text: &str, opts: RougeOptions) -> Vec<Vec<String>> {
    text.split('\n').filter(|s| !s.is_empty()).map(|s| tokenize(s, opts)).collect()
}

/// ROUGE-Lsum over whole texts.
pub fn rouge_lsum(target: &str, prediction: &str, opts: RougeOptions) -> Score {
    let (refs, cands) = (sentences(target, opts), sentences(prediction, opts));
    let m: usize = refs.iter().map(Vec::len).sum();
    let n: usize = cands.iter().map(Vec::len).sum();
    if refs.is_empty() || cands.is_empty() || m == 0 || n == 0 {
        return Score::default();
    }
    let mut count_r: HashMap<&str, usize> = HashMap::new();
    let mut count_c: HashMap<&str, usize> = HashMap::new();
    for t in refs.iter().flatten() {
        *count_r.entry(t.as_str()).or_insert(0) += 1;
    }
    for t in cands.iter().flatten() {
        *count_c.entry(t.as_str()).or_insert(0) += 1;
    }
    let mut hits = 0usize;
    for r in &refs {
        let mut union: Vec<usize> = cands.iter().flat_map(|c| lcs_indices(r, c)).collect();
        union.sort_unstable();
        union.dedup();
        for i in union {
            let tok = r[i].as_str();
            let (cc, cr) = (count_c.get(tok).copied().unwrap_or(0), count_r.get(tok).copied().unwrap_or(0));
            if cc > 0 && cr > 0 {
                hits += 1;
                count_c.insert(tok, cc - 1);
                count_r.insert(tok, cr - 1);
            }
        }
    }
    Score::new(hits as f64 / n as f64, hits as f64 / m as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_lowercase_ascii_alphanumerics() {
        let plain = RougeOptions::default();
        assert_eq!(tokenize("The Cat's 3rd-place, café!", plain), ["the", "cat", "s", "3rd", "place", "caf"]);
        assert!(tokenize("日本語のテキスト", plain).is_empty());
        assert!(tokenize("", plain).is_empty());
        let stemmed = RougeOptions { use_stemmer: true };
        assert_eq!(tokenize("Cats are running happily", stemmed), ["cat", "are", "run", "happili"]);
    }

    #[test]
    fn hand_computed_scores() {
        // reference "the cat sat on the mat", candidate "the cat on the mat": 5 of 6 unigrams.
        let o = RougeOptions::default();
        let s = score("the cat sat on the mat", "the cat on the mat", o);
        assert_eq!((s.rouge1.precision, s.rouge1.recall), (1.0, 5.0 / 6.0));
        assert_eq!((s.rouge2.precision, s.rouge2.recall), (3.0 / 4.0, 3.0 / 5.0));
        assert_eq!(s.rouge_l.recall, 5.0 / 6.0);
        assert_eq!(s.rouge_lsum, s.rouge_l, "one sentence: Lsum is L");
        assert_eq!(score("", "x", o).rouge1, Score::default());
        // Two sentences against one: the union LCS counts each token at most once.
        let s = score("a b c\nd e", "a b d e", o);
        assert_eq!(s.rouge_lsum.recall, 4.0 / 5.0);
    }
}
