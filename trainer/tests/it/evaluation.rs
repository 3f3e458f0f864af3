//! Evaluation on a held-out test channel, end to end through `train`: predictions, aggregates in
//! the summary, METRIC lines; bad test data and bad evaluation settings fail before training.

use crate::common::{rows, text, Job, SMALL_JOB};

fn hp_with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    SMALL_JOB.iter().copied().chain(extra.iter().copied()).collect()
}

fn write_test(job: &Job, channel: &str, body: &str) {
    std::fs::create_dir_all(job.channel(channel)).unwrap();
    std::fs::write(job.channel(channel).join("test.jsonl"), body).unwrap();
}

/// Runs the job, expects exit 2 before training, and returns the failure file's first line.
fn expect_input_failure(job: &Job) -> String {
    let out = job.run(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!job.root().join("model/adapter_model.safetensors").exists(), "failed before training");
    let failure = job.failure().unwrap_or_else(|| panic!("no failure file; output:\n{}", text(&out)));
    failure.lines().next().unwrap().to_string()
}

#[test]
fn test_channel_is_scored_after_training_and_on_the_base_model() {
    let hp = hp_with(&[("eval_max_new_tokens", "4"), ("eval_baseline", "true"), ("reward_funcs", "exact_match")]);
    let job = Job::new(&hp, &rows(16));
    write_test(&job, "test", &rows(5));
    let out = job.run(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let log = text(&out);
    let metric = |prefix: &str| log.lines().find(|l| l.contains("METRIC") && l.contains(prefix)).map(str::to_string);
    let tuned = metric(" test_rouge1=").unwrap_or_else(|| panic!("a METRIC line with test_rouge1:\n{log}"));
    for key in ["test_exact_match=", "test_rouge2=", "test_rougeL=", "test_rougeLsum=", "test_reward="] {
        assert!(tuned.contains(key), "{key} in {tuned}");
    }
    assert!(metric(" baseline_test_rouge1=").is_some(), "the baseline's METRIC line:\n{log}");

    let preds = std::fs::read_to_string(job.root().join("output/data/eval_predictions.jsonl")).unwrap();
    let preds: Vec<serde_json::Value> = preds.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(preds.len(), 5, "one line per test row");
    for (i, p) in preds.iter().enumerate() {
        assert_eq!(p["index"], i);
        assert_eq!(p["prompt"], format!("Add {} and {}:", i % 7, (i * 3) % 5));
        assert_eq!(p["reference"], format!(" {}", i % 7 + (i * 3) % 5));
        assert!(p["prediction"].is_string() && p["baseline_prediction"].is_string(), "{p}");
        assert!(p["completion_tokens"].as_u64().unwrap() <= 4, "eval_max_new_tokens caps it: {p}");
        let r1 = p["scores"]["rouge1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&r1), "{p}");
        assert!(p["scores"]["exact_match"].is_number() && p["baseline_scores"]["rougeL"].is_number(), "{p}");
    }

    let eval = &job.summary()["evaluation"];
    assert_eq!(eval["cases"], 5);
    let metrics = &eval["metrics"];
    let mean_r1 = preds.iter().map(|p| p["scores"]["rouge1"].as_f64().unwrap()).sum::<f64>() / 5.0;
    assert!((metrics["test_rouge1"].as_f64().unwrap() - mean_r1).abs() < 1e-9, "the aggregate is the mean: {eval}");
    let gain = eval["gain"]["test_rouge1"].as_f64().unwrap();
    let base = eval["baseline_metrics"]["test_rouge1"].as_f64().unwrap();
    assert!((gain - (mean_r1 - base)).abs() < 1e-9, "gain = tuned - baseline: {eval}");
    assert!(eval["options"].to_string().contains("stemmer"), "the ROUGE options are recorded: {eval}");
}

#[test]
fn a_bad_test_row_fails_the_job_before_training() {
    let job = Job::new(SMALL_JOB, &rows(16));
    let mut body = rows(2);
    body.push_str("{\"prompt\": \"broken\n");
    body.push_str(&rows(1));
    write_test(&job, "test", &body);
    let reason = expect_input_failure(&job);
    assert!(reason.contains("test.jsonl:3"), "names the file and line: {reason}");
}

#[test]
fn two_test_channels_are_ambiguous() {
    let job = Job::new(SMALL_JOB, &rows(16));
    write_test(&job, "test", &rows(2));
    write_test(&job, "evaluation", &rows(2));
    let reason = expect_input_failure(&job);
    assert!(reason.contains("test channels") && reason.contains("evaluation"), "{reason}");
}

#[test]
fn an_unknown_exact_match_normalisation_names_the_setting() {
    let job = Job::new(&hp_with(&[("eval_exact_match", "strip,lower")]), &rows(16));
    write_test(&job, "test", &rows(2));
    let reason = expect_input_failure(&job);
    assert!(reason.contains("eval_exact_match") && reason.contains("lower"), "{reason}");
}
