//! `list` (recent jobs with instance, duration and cost) and `compare` (jobs side by side).

use std::collections::BTreeSet;

use serde::Serialize;

use super::{describe, job_cost, secs, JobInfo};
use crate::aws::{explain, Clients, ErrorContext};
use crate::catalogue::PriceTable;
use crate::clock::{now_epoch, utc_datetime};
use crate::error::Error;
use crate::format::{fmt_duration, fmt_usd, table};

/// Summaries for `list`.
#[derive(Debug, Clone, Serialize)]
pub struct ListRow {
    pub name: String,
    pub status: String,
    pub created: Option<f64>,
    pub instance: String,
    pub duration_seconds: Option<f64>,
    pub cost_usd: Option<f64>,
    pub cost_final: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<String>,
    pub name_contains: Option<String>,
    pub created_after: Option<f64>,
    pub max: usize,
    /// Describe each job for instance and cost (one extra call per job).
    pub details: bool,
}

pub async fn list(clients: &Clients, f: &ListFilter, prices: &PriceTable) -> Result<Vec<ListRow>, Error> {
    let ctx =
        ErrorContext { operation: "ListTrainingJobs".into(), region: clients.region.clone(), ..Default::default() };
    let mut rows = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut req = clients
            .sagemaker
            .list_training_jobs()
            .sort_by(aws_sdk_sagemaker::types::SortBy::CreationTime)
            .sort_order(aws_sdk_sagemaker::types::SortOrder::Descending)
            .max_results(100.min(f.max.max(1)) as i32)
            .set_next_token(next.clone());
        if let Some(s) = &f.status {
            req = req.status_equals(aws_sdk_sagemaker::types::TrainingJobStatus::from(s.as_str()));
        }
        if let Some(n) = &f.name_contains {
            req = req.name_contains(n);
        }
        if let Some(t) = f.created_after {
            req = req.creation_time_after(aws_sdk_sagemaker::primitives::DateTime::from_secs_f64(t));
        }
        let page = req.send().await.map_err(|e| explain(&e, &ctx))?;
        for s in page.training_job_summaries() {
            let start = secs(s.training_end_time()).and(secs(s.creation_time()));
            rows.push(ListRow {
                name: s.training_job_name().unwrap_or_default().to_string(),
                status: s.training_job_status().map(|x| x.as_str().to_string()).unwrap_or_default(),
                created: secs(s.creation_time()),
                instance: String::new(),
                duration_seconds: match (start, secs(s.training_end_time())) {
                    (Some(a), Some(b)) => Some(b - a),
                    _ => None,
                },
                cost_usd: None,
                cost_final: false,
            });
            if rows.len() >= f.max {
                break;
            }
        }
        next = page.next_token().map(str::to_string);
        if next.is_none() || rows.len() >= f.max {
            break;
        }
    }
    if f.details {
        let now = now_epoch();
        for r in rows.iter_mut() {
            if let Ok(info) = describe(clients, &r.name).await {
                r.instance = format!("{}×{}", info.instance_count, info.instance_type);
                r.duration_seconds = info.training_seconds.map(|t| t as f64).or(r.duration_seconds);
                if let Some(c) = job_cost(&info, prices, now) {
                    r.cost_usd = Some(c.usd);
                    r.cost_final = c.is_final;
                }
            }
        }
    }
    Ok(rows)
}

pub fn render_list(rows: &[ListRow]) -> String {
    if rows.is_empty() {
        return "no training jobs match\n".into();
    }
    let mut t = vec![vec![
        "name".to_string(),
        "status".into(),
        "created".into(),
        "instance".into(),
        "duration".into(),
        "cost".into(),
    ]];
    for r in rows {
        t.push(vec![
            r.name.clone(),
            r.status.clone(),
            r.created.map(utc_datetime).unwrap_or_default(),
            if r.instance.is_empty() { "—".into() } else { r.instance.clone() },
            r.duration_seconds.map(fmt_duration).unwrap_or_else(|| "—".into()),
            match r.cost_usd {
                Some(c) if r.cost_final => fmt_usd(c),
                Some(c) => format!("≤{}", fmt_usd(c)),
                None => "—".into(),
            },
        ]);
    }
    table(&t)
}

/// Side-by-side comparison: rows of (label, values per job, differ?).
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub jobs: Vec<String>,
    pub rows: Vec<ComparisonRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComparisonRow {
    pub section: String,
    pub key: String,
    pub values: Vec<Option<String>>,
    pub differs: bool,
}

pub fn compare(infos: &[JobInfo], prices: &PriceTable) -> Comparison {
    let mut rows = Vec::new();
    let mut push = |section: &str, key: &str, values: Vec<Option<String>>| {
        let distinct: BTreeSet<_> = values.iter().collect();
        rows.push(ComparisonRow { section: section.into(), key: key.into(), differs: distinct.len() > 1, values });
    };
    let now = now_epoch();
    push("job", "status", infos.iter().map(|i| Some(format!("{}/{}", i.status, i.secondary_status))).collect());
    push("job", "instance", infos.iter().map(|i| Some(format!("{}×{}", i.instance_count, i.instance_type))).collect());
    push("job", "spot", infos.iter().map(|i| Some(i.spot.to_string())).collect());
    push("job", "billable_seconds", infos.iter().map(|i| i.billable_seconds.map(|b| b.to_string())).collect());
    push("job", "cost", infos.iter().map(|i| job_cost(i, prices, now).map(|c| fmt_usd(c.usd))).collect());
    let hp_keys: BTreeSet<&String> = infos.iter().flat_map(|i| i.hyperparameters.keys()).collect();
    for k in hp_keys {
        push("hyperparameter", k, infos.iter().map(|i| i.hyperparameters.get(k).cloned()).collect());
    }
    let metric_keys: BTreeSet<&String> = infos.iter().flat_map(|i| i.final_metrics.keys()).collect();
    for k in metric_keys {
        push("metric", k, infos.iter().map(|i| i.final_metrics.get(k).map(|v| format!("{v}"))).collect());
    }
    Comparison { jobs: infos.iter().map(|i| i.name.clone()).collect(), rows }
}

pub fn render_comparison(c: &Comparison) -> String {
    let mut t = vec![std::iter::once(String::new())
        .chain(std::iter::once("".to_string()))
        .chain(c.jobs.iter().cloned())
        .collect::<Vec<_>>()];
    let mut section = String::new();
    for r in &c.rows {
        if r.section != section {
            section = r.section.clone();
        }
        let mut row = vec![if r.differs { "≠".to_string() } else { " ".into() }, format!("{}.{}", r.section, r.key)];
        row.extend(r.values.iter().map(|v| v.clone().unwrap_or_else(|| "—".into())));
        t.push(row);
    }
    let mut s = table(&t);
    s.push_str("≠ marks rows that differ between the jobs\n");
    s
}
