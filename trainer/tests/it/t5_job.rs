//! T5 through the job path end to end (`train` on a tiny random T5 over the demo tokenizer):
//! sequence-to-sequence training lowers the loss, the adapter is a PEFT SEQ_2_SEQ_LM adapter on T5's
//! module names, the merged model has the base checkpoint's tensors, the test channel is scored,
//! and the options T5 does not take are refused before training.

use candle_core::{DType, Device};
use trainer::device::JobDevice;
use trainer::model::{Arch, LoadOptions, Model};

use crate::common::{loss_bits, rows, text, Job};

const HP: &[(&str, &str)] = &[
    ("max_steps", "40"),
    ("lora_r", "8"),
    ("per_device_batch_size", "4"),
    ("learning_rate", "1e-2"),
    ("logging_steps", "1"),
    ("save_steps", "0"),
    ("max_target_length", "4"),
    ("merge_adapter", "true"),
    ("eval_max_new_tokens", "4"),
    ("eval_baseline", "true"),
];

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn t5_job_trains_scores_the_test_channel_and_writes_seq2seq_outputs() {
    let job = Job::new_t5(HP, &rows(32));
    std::fs::create_dir_all(job.channel("test")).unwrap();
    std::fs::write(job.channel("test").join("test.jsonl"), rows(3)).unwrap();
    let out = job.run(&[]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("(t5 family, 2 encoder + 2 decoder layers, d_model 64"), "{log}");
    assert!(log.contains("train: 32 pairs,") && log.contains("targets cut to max_target_length=4"), "{log}");

    let summary = job.summary();
    assert_eq!(summary["model_family"], "t5", "{summary}");
    let losses: Vec<f64> = loss_bits(&summary).iter().map(|(_, b)| f64::from_bits(*b)).collect();
    assert_eq!(losses.len(), 40);
    let (first, last) = (mean(&losses[..5]), mean(&losses[35..]));
    assert!(last < 0.6 * first, "the loss falls: {first:.3} → {last:.3}");

    // PEFT's SEQ_2_SEQ_LM adapter on T5's own module names (all-linear = every T5 projection).
    let model_dir = job.root().join("model");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["task_type"], "SEQ_2_SEQ_LM");
    let mut targets: Vec<&str> =
        cfg["target_modules"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    targets.sort();
    assert_eq!(targets, ["k", "o", "q", "v", "wi_0", "wi_1", "wo"]);
    let tensors = candle_core::safetensors::load(model_dir.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    assert!(tensors.contains_key("base_model.model.decoder.block.1.layer.1.EncDecAttention.q.lora_A.weight"));
    assert_eq!(tensors.len(), 2 * (2 * 7 + 2 * 11), "A and B of 7 projections per encoder block, 11 per decoder block");

    // The merged model holds exactly the base checkpoint's tensors and loads as a T5 without adapters.
    let merged = model_dir.join("merged");
    let base = candle_core::safetensors::load(job.channel("model").join("model.safetensors"), &Device::Cpu).unwrap();
    let m = candle_core::safetensors::load(merged.join("model.safetensors"), &Device::Cpu).unwrap();
    let (mut a, mut b): (Vec<&String>, Vec<&String>) = (base.keys().collect(), m.keys().collect());
    a.sort();
    b.sort();
    assert_eq!(a, b);
    let arch = Arch::from_file(&merged.join("config.json")).unwrap();
    assert!(arch.is_seq2seq());
    Model::load(&merged, &arch, DType::F32, &Device::Cpu, None, &LoadOptions::default()).unwrap();

    // The test channel: a METRIC line for the tuned model and the base, one prediction per row.
    assert!(log.lines().any(|l| l.starts_with("METRIC") && l.contains(" test_rouge1=")), "{log}");
    assert!(log.lines().any(|l| l.starts_with("METRIC") && l.contains(" baseline_test_rouge1=")), "{log}");
    let preds = std::fs::read_to_string(job.root().join("output/data/eval_predictions.jsonl")).unwrap();
    assert_eq!(preds.lines().count(), 3);
    assert_eq!(summary["evaluation"]["cases"], 3);

    // `train generate` loads the base with the job's adapter and answers a prompt.
    let device = JobDevice::select(&[("OXTUNE_DEVICE".into(), "cpu".into())]).unwrap();
    let loaded = trainer::inference::load(&job.channel("model"), Some(&model_dir), &device, DType::F32).unwrap();
    let prompt = trainer::inference::text_prompt(&loaded, "Add 1 and 2:", None).unwrap();
    assert_eq!(prompt.ids.last(), Some(&1), "an encoder input ends with EOS");
    let opts = trainer::inference::GenerateOptions {
        max_new_tokens: 4,
        temperature: 0.0,
        top_p: 1.0,
        stop_strings: vec![],
        seed: 1,
    };
    let done = trainer::inference::stream(&loaded, &[prompt], &opts, &mut Vec::new()).unwrap();
    assert_eq!(done.len(), 1);
}

/// Runs the job and expects it to stop before training with exit `code`; the failure's first line.
fn refused(job: &Job, code: i32) -> String {
    let out = job.run(&[]);
    assert_eq!(out.status.code(), Some(code), "{}", text(&out));
    assert!(!job.root().join("model/adapter_model.safetensors").exists());
    job.failure().unwrap_or_else(|| panic!("no failure file:\n{}", text(&out))).lines().next().unwrap().to_string()
}

#[test]
fn t5_refuses_what_it_does_not_take_before_training() {
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        [("max_steps", "2")].iter().chain(extra).copied().collect()
    };
    let f = refused(&Job::new_t5(&with(&[("packing", "true")]), &rows(8)), 2);
    assert!(f.contains("packing=true") && f.contains("set packing=false"), "{f}");
    let f = refused(&Job::new_t5(&with(&[("target_modules", "q_proj,v_proj")]), &rows(8)), 2);
    assert!(
        f.contains("no `q_proj` module") && f.contains("q, k, v, o, wi_0, wi_1, wo") && f.contains("t5 family"),
        "{f}"
    );
    let f = refused(&Job::new_t5(&with(&[("dtype", "f16")]), &rows(8)), 2);
    assert!(f.contains("dtype") && f.contains("T5's feed-forward overflows in fp16"), "{f}");
    let chat = "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}]}\n";
    let f = refused(&Job::new_t5(&with(&[]), chat), 2);
    assert!(f.contains("data.jsonl:1") && f.contains("no chat template"), "{f}");
    // A decoder-only model refuses T5's module names the same way.
    let f = refused(&Job::new(&with(&[("target_modules", "q,v")]), &rows(8)), 2);
    assert!(f.contains("no `q` module") && f.contains("q_proj"), "{f}");
}

/// T5 names are accepted by the spec whatever the model; a name of neither family is not.
#[test]
fn target_module_names_of_both_families_resolve() {
    let hp = |v: &str| [("target_modules".to_string(), v.to_string())].into_iter().collect();
    assert!(trainer::spec::JobSpec::from_hyperparameters(&hp("q,v,wi_0")).is_ok());
    let e = trainer::spec::JobSpec::from_hyperparameters(&hp("wi_2")).unwrap_err().to_string();
    assert!(e.contains("wi_2") && e.contains("(T5)"), "{e}");
}

/// GRPO with a T5 policy: the encoder reads the prompt, completions are the decoder's labels. On the
/// toy task of the decoder families' test (the format reward pays 1 for an `e`) the mean reward rises.
#[test]
fn t5_grpo_learning_raises_mean_reward() {
    let (job, _, first, last) = crate::grpo::letter_e_task(Job::new_t5, "5e-2", "0.04");
    assert!(last > first + 0.2, "mean reward should rise: first steps {first:.3}, last steps {last:.3}");
    let cfg = std::fs::read_to_string(job.root().join("model/adapter_config.json")).unwrap();
    assert!(cfg.contains("SEQ_2_SEQ_LM"), "{cfg}");
}
