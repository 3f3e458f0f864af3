//! `oxtune compare --experiment NAME`: an MLflow experiment's runs, best first by a metric, with
//! the params that tell them apart.

use serde::Serialize;
use trainer::track::mlflow::RunInfo;

/// Which way a metric improves: losses, perplexity and KL downwards, scores and rewards upwards.
pub fn lower_is_better(metric: &str) -> bool {
    let m = metric.to_ascii_lowercase();
    ["loss", "perplexity", "kl", "error", "time"].iter().any(|w| m.contains(w))
}

/// The metric to rank by when the user names none: the validation loss where runs have it, else
/// the training loss.
pub fn default_metric(runs: &[RunInfo]) -> &'static str {
    let has = |k: &str| runs.iter().any(|r| r.metrics.iter().any(|(m, _)| m == k));
    if has("eval_loss") {
        "eval_loss"
    } else {
        "loss"
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunRow {
    pub run_id: String,
    pub name: String,
    pub status: String,
    /// The ranking metric's latest value (`None`: the run has not logged it).
    pub value: Option<f64>,
    /// The params that differ between the runs listed, in `params` order.
    pub params: Vec<Option<String>>,
    /// Other metrics shown beside it.
    pub metrics: Vec<Option<f64>>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExperimentView {
    pub experiment: String,
    pub metric: String,
    pub lower_is_better: bool,
    pub params: Vec<String>,
    pub metrics: Vec<String>,
    pub runs: Vec<RunRow>,
}

/// Metrics shown beside the ranking one, when runs have them.
const SHOWN: [&str; 4] = ["loss", "eval_loss", "test_rougeL", "test_exact_match"];

/// Ranks `runs` by `metric` (runs without it last, newest first among them) and keeps the params
/// whose values differ between them.
pub fn view(experiment: &str, runs: &[RunInfo], metric: &str) -> ExperimentView {
    let lower = lower_is_better(metric);
    let value = |r: &RunInfo, k: &str| r.metrics.iter().find(|(m, _)| m == k).map(|(_, v)| *v);
    let param = |r: &RunInfo, k: &str| r.params.iter().find(|(p, _)| p == k).map(|(_, v)| v.clone());
    let mut sorted: Vec<&RunInfo> = runs.iter().collect();
    sorted.sort_by(|a, b| match (value(a, metric), value(b, metric)) {
        (Some(x), Some(y)) if lower => x.total_cmp(&y),
        (Some(x), Some(y)) => y.total_cmp(&x),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => b.start_ms.cmp(&a.start_ms),
    });
    let mut keys: Vec<String> = runs.iter().flat_map(|r| r.params.iter().map(|(k, _)| k.clone())).collect();
    keys.sort();
    keys.dedup();
    keys.retain(|k| {
        let first = runs.first().and_then(|r| param(r, k));
        runs.iter().any(|r| param(r, k) != first)
    });
    let metrics: Vec<String> = SHOWN
        .iter()
        .filter(|k| **k != metric && runs.iter().any(|r| value(r, k).is_some()))
        .map(|k| k.to_string())
        .collect();
    let rows = sorted
        .iter()
        .map(|r| RunRow {
            run_id: r.run_id.clone(),
            name: r.name.clone(),
            status: r.status.clone(),
            value: value(r, metric),
            params: keys.iter().map(|k| param(r, k)).collect(),
            metrics: metrics.iter().map(|k| value(r, k)).collect(),
        })
        .collect();
    ExperimentView {
        experiment: experiment.to_string(),
        metric: metric.to_string(),
        lower_is_better: lower,
        params: keys,
        metrics,
        runs: rows,
    }
}

pub fn render(v: &ExperimentView) -> String {
    let num = |x: Option<f64>| x.map(|x| format!("{x:.4}")).unwrap_or_else(|| "—".into());
    let mut header = vec!["#".to_string(), "run".into(), "status".into(), v.metric.clone()];
    header.extend(v.metrics.iter().cloned());
    header.extend(v.params.iter().cloned());
    let mut t = vec![header];
    for (i, r) in v.runs.iter().enumerate() {
        let mut row = vec![(i + 1).to_string(), r.name.clone(), r.status.clone(), num(r.value)];
        row.extend(r.metrics.iter().map(|m| num(*m)));
        row.extend(r.params.iter().map(|p| p.clone().unwrap_or_else(|| "—".into())));
        t.push(row);
    }
    let mut s = format!(
        "experiment {}: {} run(s), best first by {} ({} is better)\n",
        v.experiment,
        v.runs.len(),
        v.metric,
        if v.lower_is_better { "lower" } else { "higher" }
    );
    s.push_str(&crate::format::table(&t));
    if v.params.is_empty() && v.runs.len() > 1 {
        s.push_str("(the runs share every param)\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, start: u64, params: &[(&str, &str)], metrics: &[(&str, f64)]) -> RunInfo {
        RunInfo {
            run_id: format!("id-{name}"),
            name: name.into(),
            experiment_id: "1".into(),
            artifact_uri: String::new(),
            status: "FINISHED".into(),
            start_ms: start,
            params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn best_first_with_the_params_that_differ() {
        let runs = [
            run("a", 1, &[("lora_r", "8"), ("seed", "1")], &[("eval_loss", 1.5), ("test_rougeL", 0.3)]),
            run("b", 2, &[("lora_r", "16"), ("seed", "1")], &[("eval_loss", 1.2), ("test_rougeL", 0.2)]),
            run("c", 3, &[("lora_r", "32"), ("seed", "1")], &[]),
        ];
        assert_eq!(default_metric(&runs), "eval_loss");
        let v = view("e", &runs, "eval_loss");
        assert_eq!(v.runs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["b", "a", "c"]);
        assert_eq!(v.params, ["lora_r"]);
        let v = view("e", &runs, "test_rougeL");
        assert!(!v.lower_is_better);
        assert_eq!(v.runs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        let text = render(&v);
        assert!(text.contains("best first by test_rougeL (higher is better)") && text.contains("lora_r"), "{text}");
    }
}
