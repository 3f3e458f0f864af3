//! Scores of one prediction against its reference, and their means over a test set: exact match
//! (with a stated normalisation), ROUGE (as Python's `rouge-score`) and reward values. Pure text in,
//! numbers out — the launcher scores a live endpoint's answers with the same code.

use std::collections::BTreeMap;

use super::rouge::{self, RougeOptions, RougeScores};

/// How both sides are normalised before exact match compares them. The default trims the ends,
/// collapses runs of whitespace and ignores case; `punctuation` also drops punctuation characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ExactMatchOptions {
    pub strip: bool,
    pub whitespace: bool,
    pub case: bool,
    pub punctuation: bool,
}

impl Default for ExactMatchOptions {
    fn default() -> Self {
        ExactMatchOptions { strip: true, whitespace: true, case: true, punctuation: false }
    }
}

/// The option names, as the `eval_exact_match` hyperparameter takes them.
pub const EXACT_MATCH_OPTIONS: &[&str] = &["strip", "whitespace", "case", "punctuation", "none"];

impl ExactMatchOptions {
    /// From option names (`none` alone = plain string equality); an unknown name is returned as the error.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<ExactMatchOptions, String> {
        let mut o = ExactMatchOptions { strip: false, whitespace: false, case: false, punctuation: false };
        for n in names {
            match n.trim().to_ascii_lowercase().as_str() {
                "strip" => o.strip = true,
                "whitespace" => o.whitespace = true,
                "case" => o.case = true,
                "punctuation" => o.punctuation = true,
                "none" | "" => {}
                other => return Err(other.to_string()),
            }
        }
        Ok(o)
    }

    /// The options as names, for the record beside the scores.
    pub fn describe(&self) -> String {
        let on: Vec<&str> = [
            (self.strip, "strip"),
            (self.whitespace, "whitespace"),
            (self.case, "case"),
            (self.punctuation, "punctuation"),
        ]
        .iter()
        .filter(|(b, _)| *b)
        .map(|(_, n)| *n)
        .collect();
        if on.is_empty() {
            "none (plain string equality)".into()
        } else {
            on.join(",")
        }
    }

    pub fn normalise(&self, text: &str) -> String {
        let mut t: String =
            if self.punctuation { text.chars().filter(|c| !is_punctuation(*c)).collect() } else { text.to_string() };
        if self.case {
            t = t.to_lowercase();
        }
        if self.whitespace {
            t = t.split_whitespace().collect::<Vec<_>>().join(" ");
        } else if self.strip {
            t = t.trim().to_string();
        }
        t
    }
}

/// ASCII punctuation and the Unicode punctuation people type (quotes, dashes, ellipsis, CJK marks).
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(c, '\u{2010}'..='\u{2027}' | '\u{3001}'..='\u{3003}' | '\u{00A1}' | '\u{00BF}' | '\u{00AB}' | '\u{00BB}')
}

/// 1 when the normalised texts are equal.
pub fn exact_match(reference: &str, prediction: &str, opts: ExactMatchOptions) -> f64 {
    f64::from(opts.normalise(reference) == opts.normalise(prediction))
}

/// Every score of one prediction.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CaseScores {
    pub exact_match: f64,
    pub rouge1: f64,
    pub rouge2: f64,
    #[serde(rename = "rougeL")]
    pub rouge_l: f64,
    #[serde(rename = "rougeLsum")]
    pub rouge_lsum: f64,
    /// Reward function name → value; `reward` is their weighted sum (as GRPO trains on it).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rewards: BTreeMap<String, f64>,
}

/// Exact match and the ROUGE F-measures of one prediction (rewards are added by the caller).
pub fn score_text(reference: &str, prediction: &str, em: ExactMatchOptions, rouge_opts: RougeOptions) -> CaseScores {
    let r: RougeScores = rouge::score(reference, prediction, rouge_opts);
    CaseScores {
        exact_match: exact_match(reference, prediction, em),
        rouge1: r.rouge1.fmeasure,
        rouge2: r.rouge2.fmeasure,
        rouge_l: r.rouge_l.fmeasure,
        rouge_lsum: r.rouge_lsum.fmeasure,
        rewards: BTreeMap::new(),
    }
}

/// Means over a test set, keyed by the metric names of the `METRIC` line (`test_rouge1`, …).
pub fn aggregate(scores: &[CaseScores]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    if scores.is_empty() {
        return out;
    }
    let n = scores.len() as f64;
    let mean = |f: &dyn Fn(&CaseScores) -> f64| scores.iter().map(f).sum::<f64>() / n;
    out.insert("test_exact_match".to_string(), mean(&|s| s.exact_match));
    out.insert("test_rouge1".to_string(), mean(&|s| s.rouge1));
    out.insert("test_rouge2".to_string(), mean(&|s| s.rouge2));
    out.insert("test_rougeL".to_string(), mean(&|s| s.rouge_l));
    out.insert("test_rougeLsum".to_string(), mean(&|s| s.rouge_lsum));
    for name in scores[0].rewards.keys() {
        let key = if name == "reward" { "test_reward".to_string() } else { format!("test_reward_{name}") };
        out.insert(key, mean(&|s| s.rewards.get(name).copied().unwrap_or(0.0)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_match_normalisation_is_what_it_says() {
        let default = ExactMatchOptions::default();
        assert_eq!(exact_match("Paris", "  paris \n", default), 1.0);
        assert_eq!(exact_match("New  York", "new york", default), 1.0);
        assert_eq!(exact_match("Paris.", "Paris", default), 0.0, "punctuation counts unless asked");
        let punct = ExactMatchOptions::parse(["strip", "case", "punctuation", "whitespace"]).unwrap();
        assert_eq!(exact_match("Paris.", "“paris”", punct), 1.0);
        let none = ExactMatchOptions::parse(["none"]).unwrap();
        assert_eq!(exact_match("Paris", "Paris ", none), 0.0);
        assert_eq!(none.describe(), "none (plain string equality)");
        assert_eq!(ExactMatchOptions::parse(["strip", "lower"]), Err("lower".to_string()));
        assert_eq!(default.describe(), "strip,whitespace,case");
    }

    #[test]
    fn aggregates_are_means_named_as_metrics() {
        let o = (ExactMatchOptions::default(), RougeOptions::default());
        let mut a = score_text("the cat sat", "the cat sat", o.0, o.1);
        let mut b = score_text("the cat sat", "a dog", o.0, o.1);
        a.rewards.insert("reward".into(), 1.0);
        b.rewards.insert("reward".into(), 0.0);
        let m = aggregate(&[a, b]);
        assert_eq!(m["test_exact_match"], 0.5);
        assert_eq!(m["test_rouge1"], 0.5);
        assert_eq!(m["test_reward"], 0.5);
        assert!(aggregate(&[]).is_empty());
    }
}
