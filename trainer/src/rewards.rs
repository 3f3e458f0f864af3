//! Reward functions: built-in (final-answer match, regex format, length, valid JSON) and an
//! external scorer program speaking JSON lines. GRPO trains on them; evaluation reports them on
//! held-out data.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    #[error("reward `{name}`: {problem}")]
    Config { name: String, problem: String },
    #[error("reward program {program}: {problem}")]
    Program { program: String, problem: String },
}

/// What a reward function sees for one completion.
pub struct RewardInput<'a> {
    pub prompt: &'a str,
    pub completion: &'a str,
    pub completion_tokens: usize,
    /// Every dataset column other than the prompt.
    pub columns: &'a Map<String, Value>,
}

pub enum RewardFn {
    /// 1 when the completion's final answer equals the `field` column's, after numeric normalisation.
    ExactMatch { field: String },
    /// 1 when the regex matches the completion (e.g. reasoning/answer tags).
    Format { regex: Regex },
    /// −completion_tokens / max_tokens: prefers shorter completions.
    Length { max_tokens: usize },
    /// 1 when the completion (or its ```json fenced block) parses as JSON.
    Json,
    /// A user program: JSON lines in on stdin, one score per line out.
    External(ExternalScorer),
}

impl RewardFn {
    pub fn name(&self) -> String {
        match self {
            RewardFn::ExactMatch { .. } => "exact_match".into(),
            RewardFn::Format { .. } => "format".into(),
            RewardFn::Length { .. } => "length".into(),
            RewardFn::Json => "json".into(),
            RewardFn::External(e) => format!("external:{}", e.program.display()),
        }
    }

    /// Scores for a batch, one per input, in order.
    pub fn score(&self, inputs: &[RewardInput]) -> Result<Vec<f64>, RewardError> {
        match self {
            RewardFn::ExactMatch { field } => inputs
                .iter()
                .map(|i| {
                    let reference = i.columns.get(field).ok_or_else(|| RewardError::Config {
                        name: "exact_match".into(),
                        problem: format!(
                            "the dataset has no `{field}` column (columns: {}); set answer_field",
                            i.columns.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    })?;
                    let reference = match reference {
                        Value::String(s) => extract_answer(s).unwrap_or_else(|| s.trim().to_string()),
                        other => other.to_string(),
                    };
                    Ok(f64::from(extract_answer(i.completion).is_some_and(|a| normalise(&a) == normalise(&reference))))
                })
                .collect(),
            RewardFn::Format { regex } => Ok(inputs.iter().map(|i| f64::from(regex.is_match(i.completion))).collect()),
            RewardFn::Length { max_tokens } => {
                Ok(inputs.iter().map(|i| -(i.completion_tokens as f64) / (*max_tokens).max(1) as f64).collect())
            }
            RewardFn::Json => Ok(inputs.iter().map(|i| f64::from(is_json(i.completion))).collect()),
            RewardFn::External(e) => e.score(inputs),
        }
    }
}

/// Every reward function's scores and their weighted sum, per input.
#[derive(Debug, Clone, Default)]
pub struct WeightedScores {
    /// (function name, one score per input), in the job's order.
    pub per_fn: Vec<(String, Vec<f64>)>,
    pub total: Vec<f64>,
}

/// Scores every input with each function (one call per function, so an external program runs
/// once for the whole batch) and sums them with their weights.
pub fn score_weighted<'f>(
    weighted: impl IntoIterator<Item = (&'f RewardFn, f64)>,
    inputs: &[RewardInput],
) -> Result<WeightedScores, RewardError> {
    let mut out = WeightedScores { per_fn: vec![], total: vec![0.0; inputs.len()] };
    for (f, w) in weighted {
        let scores = f.score(inputs)?;
        for (t, s) in out.total.iter_mut().zip(&scores) {
            *t += w * s;
        }
        out.per_fn.push((f.name(), scores));
    }
    Ok(out)
}

/// The final answer of a completion: the last `\boxed{…}`, else the text after `####`, else the last number.
pub fn extract_answer(text: &str) -> Option<String> {
    if let Some(start) = text.rfind("\\boxed{") {
        let body = &text[start + 7..];
        let mut depth = 1;
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(body[..i].trim().to_string());
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(pos) = text.rfind("####") {
        let rest = text[pos + 4..].lines().next().unwrap_or("").trim();
        if !rest.is_empty() {
            return Some(rest.to_string());
        }
    }
    static NUM: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let re = NUM.get_or_init(|| Regex::new(r"-?\d[\d,]*(?:\.\d+)?").expect("valid regex"));
    re.find_iter(text).last().map(|m| m.as_str().to_string())
}

/// Canonical form for comparison: numbers without `$`, `,`, `%`, trailing `.` or `.0`; other text trimmed, lower-case.
pub fn normalise(answer: &str) -> String {
    let t = answer.trim().trim_end_matches('.').trim();
    let numeric: String = t.chars().filter(|c| !matches!(c, '$' | ',' | '%' | ' ')).collect();
    match numeric.parse::<f64>() {
        Ok(v) if v.is_finite() => {
            if v.fract() == 0.0 && v.abs() < 1e15 {
                format!("{}", v as i64)
            } else {
                format!("{v}")
            }
        }
        _ => t.to_lowercase(),
    }
}

fn is_json(text: &str) -> bool {
    let t = text.trim();
    let body = match (t.find("```json"), t.rfind("```")) {
        (Some(s), Some(e)) if e > s + 7 => &t[s + 7..e],
        _ => t,
    };
    serde_json::from_str::<Value>(body.trim()).is_ok()
}

/// An external scorer: `program` is run once per batch; it reads one JSON object per line on stdin
/// (`{"prompt", "completion", <other columns>}`) and must print one number per line, in order.
pub struct ExternalScorer {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub timeout: Duration,
}

impl ExternalScorer {
    fn fail(&self, problem: String) -> RewardError {
        RewardError::Program { program: self.program.display().to_string(), problem }
    }

    pub fn score(&self, inputs: &[RewardInput]) -> Result<Vec<f64>, RewardError> {
        let mut lines = String::new();
        for i in inputs {
            let mut obj = i.columns.clone();
            obj.insert("prompt".into(), Value::String(i.prompt.to_string()));
            obj.insert("completion".into(), Value::String(i.completion.to_string()));
            lines.push_str(&Value::Object(obj).to_string());
            lines.push('\n');
        }
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                self.fail(format!("cannot start it ({e}); ship it in a channel or the image and make it executable"))
            })?;
        let mut stdin = child.stdin.take().ok_or_else(|| self.fail("no stdin".into()))?;
        // Feed stdin and drain stdout/stderr on threads so a chatty or slow program cannot deadlock us.
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(lines.as_bytes());
        });
        let stdout = child.stdout.take().ok_or_else(|| self.fail("no stdout".into()))?;
        let stderr = child.stderr.take().ok_or_else(|| self.fail("no stderr".into()))?;
        let out_reader =
            std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<_>>());
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
            s
        });
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() > self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(self.fail(format!(
                        "did not finish within {:.0} s for a batch of {} lines and was killed; raise reward_timeout or make it faster",
                        self.timeout.as_secs_f64(),
                        inputs.len()
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(self.fail(format!("waiting for it failed: {e}"))),
            }
        };
        let _ = writer.join();
        let out = out_reader.join().unwrap_or_default();
        let err = err_reader.join().unwrap_or_default();
        let tail = |s: &str| s.chars().rev().take(400).collect::<Vec<_>>().into_iter().rev().collect::<String>();
        if !status.success() {
            return Err(self.fail(format!("exited with {status}; its stderr ends with: {}", tail(&err))));
        }
        if out.len() != inputs.len() {
            return Err(self.fail(format!(
                "printed {} lines for {} inputs; it must print exactly one score per input line (stderr: {})",
                out.len(),
                inputs.len(),
                tail(&err)
            )));
        }
        out.iter()
            .enumerate()
            .map(|(n, line)| {
                line.trim().parse::<f64>().map_err(|_| {
                    self.fail(format!(
                        "line {} of its output is `{}`, not a number (one score per line expected)",
                        n + 1,
                        tail(line)
                    ))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(completion: &'a str, columns: &'a Map<String, Value>) -> RewardInput<'a> {
        RewardInput { prompt: "p", completion, completion_tokens: 10, columns }
    }

    #[test]
    fn answers_are_extracted_and_normalised() {
        assert_eq!(extract_answer("so the total is \\boxed{1{,}000}").as_deref(), Some("1{,}000"));
        assert_eq!(extract_answer("reasoning...\n#### 72\n").as_deref(), Some("72"));
        assert_eq!(extract_answer("first 3 then 4.50 dollars").as_deref(), Some("4.50"));
        assert_eq!(normalise("$1,200.0"), "1200");
        assert_eq!(normalise("4.50"), "4.5");
        assert_eq!(normalise(" Paris. "), "paris");
        let cols: Map<String, Value> =
            serde_json::from_str(r#"{"answer": "Natalia sold 48/2 = 24 clips.\n#### 72"}"#).unwrap();
        let f = RewardFn::ExactMatch { field: "answer".into() };
        let s = f
            .score(&[input("The answer is 72.", &cols), input("#### 71", &cols), input("\\boxed{72}", &cols)])
            .unwrap();
        assert_eq!(s, vec![1.0, 0.0, 1.0]);
        let missing = f.score(&[input("1", &Map::new())]).unwrap_err().to_string();
        assert!(missing.contains("`answer`"), "{missing}");
    }

    #[test]
    fn format_length_and_json() {
        let cols = Map::new();
        let f = RewardFn::Format { regex: Regex::new(r"(?s)^<think>.*</think>\s*<answer>.*</answer>$").unwrap() };
        assert_eq!(
            f.score(&[input("<think>x</think> <answer>1</answer>", &cols), input("1", &cols)]).unwrap(),
            vec![1.0, 0.0]
        );
        assert_eq!(RewardFn::Length { max_tokens: 40 }.score(&[input("x", &cols)]).unwrap(), vec![-0.25]);
        let j = RewardFn::Json
            .score(&[input("{\"a\": 1}", &cols), input("```json\n[1,2]\n```", &cols), input("{a:", &cols)])
            .unwrap();
        assert_eq!(j, vec![1.0, 1.0, 0.0]);
    }
}
