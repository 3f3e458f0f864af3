//! Training progress as the one stable metric line, the launcher's metric
//! regexes derived from it, the progress display, and the loss-curve plot.
//!
//! `METRIC step=120 epoch=0.40 loss=1.8123 lr=1.9e-4 grad_norm=0.74 tokens_per_sec=15210`
//! Change the format here only: `metric_definitions` follows it.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Prefix of every metric line.
pub const METRIC_PREFIX: &str = "METRIC";

/// Keys SageMaker should scrape, in line order. `eval_loss` appears on validation lines, `test_*`
/// on the evaluation line after training; the rest on GRPO lines.
pub const METRIC_KEYS: &[&str] = &[
    "step",
    "epoch",
    "loss",
    "lr",
    "grad_norm",
    "tokens_per_sec",
    "eval_loss",
    "reward",
    "reward_std",
    "reward_exact_match",
    "reward_format",
    "reward_length",
    "reward_json",
    "reward_external",
    "kl",
    "clip_fraction",
    "completion_length",
    "completion_length_max",
    "truncated_fraction",
    "generation_tokens_per_sec",
    "step_time",
    "test_exact_match",
    "test_rouge1",
    "test_rouge2",
    "test_rougeL",
    "test_rougeLsum",
    "test_reward",
    "test_reward_exact_match",
    "test_reward_format",
    "test_reward_length",
    "test_reward_json",
    "test_reward_external",
];

/// One logged value set. Absent fields are not printed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MetricRecord {
    pub step: u64,
    pub epoch: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grad_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tokens_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eval_loss: Option<f64>,
    /// Method-specific values (GRPO rewards, KL, ...), printed after the common keys.
    #[serde(flatten, default)]
    pub extra: std::collections::BTreeMap<String, f64>,
}

impl MetricRecord {
    /// The metric line, e.g. `METRIC step=120 epoch=0.40 loss=1.8123 lr=1.9e-4 grad_norm=0.74 tokens_per_sec=15210`.
    pub fn line(&self) -> String {
        let mut s = format!("{METRIC_PREFIX} step={} epoch={:.2}", self.step, self.epoch);
        if let Some(v) = self.loss {
            let _ = write!(s, " loss={v:.4}");
        }
        if let Some(v) = self.lr {
            let _ = write!(s, " lr={v:.1e}");
        }
        if let Some(v) = self.grad_norm {
            let _ = write!(s, " grad_norm={v:.2}");
        }
        if let Some(v) = self.tokens_per_sec {
            let _ = write!(s, " tokens_per_sec={v:.0}");
        }
        if let Some(v) = self.eval_loss {
            let _ = write!(s, " eval_loss={v:.4}");
        }
        for (k, v) in &self.extra {
            let _ = write!(s, " {k}={v:.4}");
        }
        s
    }
}

/// SageMaker MetricDefinitions (name, regex) matching [`MetricRecord::line`]. The first group is the value.
pub fn metric_definitions() -> Vec<(String, String)> {
    METRIC_KEYS
        .iter()
        .map(|k| {
            let name = match k.strip_prefix("test_") {
                _ if *k == "eval_loss" => "validation:loss".to_string(),
                Some(rest) => format!("test:{rest}"),
                None => format!("train:{k}"),
            };
            (name, format!("{METRIC_PREFIX} .*\\b{k}=([-+0-9.eE]+|nan|inf)"))
        })
        .collect()
}

/// Progress on stderr: a redrawn bar with rate and ETA on a terminal, plain lines otherwise
/// (the metric lines go to stdout either way).
pub struct Progress {
    total: u64,
    started: Instant,
    first_step: u64,
    tty: bool,
    last_plain: Instant,
}

impl Progress {
    pub fn new(total: u64, first_step: u64) -> Progress {
        Progress {
            total,
            started: Instant::now(),
            first_step,
            tty: std::io::stderr().is_terminal(),
            last_plain: Instant::now(),
        }
    }

    pub fn update(&mut self, step: u64, loss: f64) {
        let done = step.saturating_sub(self.first_step) as f64;
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { done / secs } else { 0.0 };
        let left = self.total.saturating_sub(step) as f64;
        let eta = if rate > 0.0 { left / rate } else { 0.0 };
        let msg = format!("step {step}/{} loss {loss:.4} {rate:.2} steps/s ETA {}", self.total, fmt_secs(eta));
        let mut err = std::io::stderr();
        if self.tty {
            let width = 30usize;
            let filled = ((step as f64 / self.total.max(1) as f64) * width as f64).round() as usize;
            let bar: String = "#".repeat(filled.min(width)) + &"-".repeat(width - filled.min(width));
            let _ = write!(err, "\r[{bar}] {msg}   ");
            if step >= self.total {
                let _ = writeln!(err);
            }
        } else if self.last_plain.elapsed().as_secs() >= 30 || step >= self.total {
            let _ = writeln!(err, "progress: {msg}");
            self.last_plain = Instant::now();
        }
        let _ = err.flush();
    }
}

pub fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// A self-contained SVG of the training (and validation) loss against the step.
pub fn loss_curve_svg(history: &[MetricRecord]) -> String {
    let train: Vec<(f64, f64)> = history.iter().filter_map(|r| r.loss.map(|l| (r.step as f64, l))).collect();
    let eval: Vec<(f64, f64)> = history.iter().filter_map(|r| r.eval_loss.map(|l| (r.step as f64, l))).collect();
    let all: Vec<&(f64, f64)> = train.iter().chain(eval.iter()).filter(|(_, l)| l.is_finite()).collect();
    let (w, h, pad) = (640.0, 360.0, 48.0);
    let mut svg = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    if all.is_empty() {
        svg.push_str("<text x=\"20\" y=\"30\">no loss values logged</text>\n</svg>\n");
        return svg;
    }
    let xmax = all.iter().map(|p| p.0).fold(1.0, f64::max);
    let ymin = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let ymax = all.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let yspan = (ymax - ymin).max(1e-9);
    let px = |x: f64| pad + x / xmax * (w - 2.0 * pad);
    let py = |y: f64| h - pad - (y - ymin) / yspan * (h - 2.0 * pad);
    let _ =
        writeln!(svg, "<line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>", h - pad, w - pad, h - pad);
    let _ = writeln!(svg, "<line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"black\"/>", h - pad);
    let _ = writeln!(svg, "<text x=\"{}\" y=\"{}\">step (max {xmax})</text>", w / 2.0 - 40.0, h - 12.0);
    let _ =
        writeln!(svg, "<text x=\"4\" y=\"{}\">{ymax:.3}</text><text x=\"4\" y=\"{}\">{ymin:.3}</text>", pad, h - pad);
    for (points, colour, label, y) in
        [(&train, "#1f77b4", "train loss", 20.0), (&eval, "#d62728", "validation loss", 36.0)]
    {
        if points.is_empty() {
            continue;
        }
        let pts: Vec<String> =
            points.iter().filter(|p| p.1.is_finite()).map(|(x, l)| format!("{:.1},{:.1}", px(*x), py(*l))).collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            pts.join(" ")
        );
        let _ = writeln!(svg, "<text x=\"{}\" y=\"{y}\" fill=\"{colour}\">{label}</text>", w - 160.0);
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_line_format_and_regexes_agree() {
        let mut r = MetricRecord {
            step: 120,
            epoch: 0.4,
            loss: Some(1.81234),
            lr: Some(1.9e-4),
            grad_norm: Some(0.74),
            tokens_per_sec: Some(15210.4),
            ..Default::default()
        };
        assert_eq!(r.line(), "METRIC step=120 epoch=0.40 loss=1.8123 lr=1.9e-4 grad_norm=0.74 tokens_per_sec=15210");
        r.extra.insert("reward".into(), 0.625);
        r.extra.insert("kl".into(), 0.0123);
        let line = r.line();
        let defs = metric_definitions();
        assert!(defs.len() <= 40, "SageMaker allows at most 40 metric definitions");
        for (name, re) in &defs {
            let re = regex::Regex::new(re).unwrap();
            let key = match name.split_once(':').unwrap() {
                ("validation", "loss") => "eval_loss".to_string(),
                ("test", k) => format!("test_{k}"),
                (_, k) => k.to_string(),
            };
            let want = line.split(' ').find_map(|kv| kv.strip_prefix(&format!("{key}=")));
            let got = re.captures(&line).map(|c| c[1].to_string());
            assert_eq!(got.as_deref(), want, "{name}: {re}");
        }
        // The evaluation line after training: `test_*` keys, scraped as `test:*`.
        let mut test = MetricRecord { step: 9, epoch: 1.0, ..Default::default() };
        test.extra.insert("test_rouge1".into(), 0.5);
        test.extra.insert("test_reward".into(), 0.25);
        test.extra.insert("test_reward_format".into(), 1.0);
        let test = test.line();
        for (name, want) in [("test:rouge1", "0.5000"), ("test:reward", "0.2500"), ("test:reward_format", "1.0000")] {
            let (_, re) = defs.iter().find(|(n, _)| n == name).unwrap();
            assert_eq!(&regex::Regex::new(re).unwrap().captures(&test).unwrap()[1], want, "{name} in {test}");
        }
        let eval = MetricRecord { step: 5, epoch: 1.0, eval_loss: Some(2.5), ..Default::default() }.line();
        let (_, re) = defs.iter().find(|(n, _)| n == "validation:loss").unwrap();
        assert_eq!(&regex::Regex::new(re).unwrap().captures(&eval).unwrap()[1], "2.5000");
        assert!(regex::Regex::new(&defs.iter().find(|(n, _)| n == "train:loss").unwrap().1)
            .unwrap()
            .captures(&eval)
            .is_none());
    }
}
