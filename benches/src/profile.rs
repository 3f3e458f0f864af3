//! The CPU step breakdown of `oxtune-bench lora --profile FILE`: the kernels' per-op table
//! (`kernels::profile`) averaged per optimizer step, by op and phase and by layer, with the part of
//! the step no op accounts for (autograd bookkeeping, gradient accumulation, embedding lookup,
//! residual adds, reshapes).

use std::collections::BTreeMap;
use std::fmt::Write;

use kernels::profile::{Key, Phase, Tally};
use serde_json::{json, Value};

/// (JSON for the result line, markdown table) from the recorded table over `steps` steps whose
/// wall time was `wall_s` in all.
pub fn report(table: &[(Key, Tally)], steps: usize, wall_s: f64) -> (Value, String) {
    let steps = steps.max(1) as f64;
    let step_s = wall_s / steps;
    let mut by_op: BTreeMap<(&str, Phase), (u64, f64)> = BTreeMap::new();
    let mut by_label: BTreeMap<String, f64> = BTreeMap::new();
    for (k, t) in table {
        let e = by_op.entry((k.op, k.phase)).or_default();
        e.0 += t.calls;
        e.1 += t.seconds / steps;
        let label = if k.label.is_empty() { "(none)".to_string() } else { k.label.clone() };
        *by_label.entry(label).or_default() += t.seconds / steps;
    }
    let attributed: f64 = by_op.values().map(|v| v.1).sum();
    let mut rows: Vec<_> = by_op.into_iter().collect();
    rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    let pct = |s: f64| 100.0 * s / step_s.max(1e-12);
    let mut md = String::new();
    let _ = writeln!(md, "Mean optimizer step: {:.3} s ({} steps).\n", step_s, steps as usize);
    let _ = writeln!(md, "| op | phase | calls / step | ms / step | share of step |\n|---|---|---|---|---|");
    for ((op, phase), (calls, s)) in &rows {
        let _ = writeln!(
            md,
            "| {op} | {} | {:.0} | {:.1} | {:.1}% |",
            phase.name(),
            *calls as f64 / steps,
            s * 1e3,
            pct(*s)
        );
    }
    let other = step_s - attributed;
    let _ = writeln!(
        md,
        "| (no op: autograd, accumulation, embedding, adds, copies) | | | {:.1} | {:.1}% |",
        other * 1e3,
        pct(other)
    );
    let _ = writeln!(md, "\n| label | ms / step | share of step |\n|---|---|---|");
    let mut labels: Vec<_> = by_label.iter().collect();
    labels.sort_by_key(|(label, _)| natural(label));
    for (label, s) in &labels {
        let _ = writeln!(md, "| {label} | {:.1} | {:.1}% |", **s * 1e3, pct(**s));
    }
    let ops: Vec<Value> = rows
        .iter()
        .map(|((op, phase), (calls, s))| json!({"op": op, "phase": phase.name(), "calls": calls, "s_per_step": s}))
        .collect();
    let v = json!({
        "step_s": step_s,
        "ops": ops,
        "labels": by_label,
        "unattributed_s_per_step": other,
    });
    (v, md)
}

/// "layer 10" after "layer 9".
fn natural(label: &str) -> (String, usize) {
    match label.rsplit_once(' ') {
        Some((head, n)) if n.parse::<usize>().is_ok() => (head.to_string(), n.parse().unwrap_or(0)),
        _ => (label.to_string(), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(phase: Phase, op: &'static str, label: &str) -> Key {
        Key { phase, op, label: label.into() }
    }

    #[test]
    fn averages_per_step_and_leaves_the_rest_unattributed() {
        let table = vec![
            (key(Phase::Forward, "rms_norm", "layer 0"), Tally { calls: 4, seconds: 0.2 }),
            (key(Phase::Backward, "rms_norm", "layer 10"), Tally { calls: 4, seconds: 0.4 }),
            (key(Phase::Forward, "linear_log_probs", "head"), Tally { calls: 2, seconds: 0.6 }),
        ];
        let (v, md) = report(&table, 2, 4.0);
        assert_eq!(v["step_s"], 2.0);
        assert!((v["unattributed_s_per_step"].as_f64().unwrap() - 1.4).abs() < 1e-9);
        assert_eq!(v["ops"][0]["op"], "linear_log_probs");
        assert!((v["labels"]["layer 10"].as_f64().unwrap() - 0.2).abs() < 1e-9);
        let (l0, l10) = (md.find("| layer 0 |").unwrap(), md.find("| layer 10 |").unwrap());
        assert!(l0 < l10, "{md}");
        assert!(md.contains("| linear_log_probs | forward | 1 | 300.0 | 15.0% |"), "{md}");
    }
}
