//! Data parallelism on CPU ranks (threads of this process, `dist::threads::ThreadGroup`): two and
//! four ranks train the same adapter as one rank with the whole batch, every rank holds the same
//! adapter bit for bit, a run reproduces bit for bit, and only rank 0 writes checkpoints.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device};
use trainer::data::{DataSpec, TrainSet};
use trainer::dist::threads::ThreadGroup;
use trainer::dist::{Collective, Solo};
use trainer::model::{Arch, LoadOptions, Model};
use trainer::rng::Rng;
use trainer::sagemaker::StopFlag;
use trainer::spec::JobSpec;
use trainer::train::sft::{self, SftInputs};

use crate::common::{rows, tiny_config_json, write_model};

/// What one rank ends with: its adapter (flattened, in var order), logged losses and checkpoints.
struct RankResult {
    adapter: Vec<f32>,
    losses: Vec<f64>,
    checkpoints: usize,
}

/// `steps` SFT steps of `ga` micro-batches of 2 rows per rank on `world` ranks (threads).
fn train(model_dir: &Path, world: usize, ga: usize, dropout: &str, steps: usize) -> Vec<RankResult> {
    let hp: BTreeMap<String, String> = [
        ("max_steps", steps.to_string()),
        ("per_device_batch_size", "2".into()),
        ("gradient_accumulation_steps", ga.to_string()),
        ("max_seq_length", "32".into()),
        ("lora_r", "4".into()),
        ("lora_dropout", dropout.into()),
        ("learning_rate", "1e-2".into()),
        ("logging_steps", "1".into()),
        ("save_steps", "2".into()),
        ("seed", "3".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let spec = JobSpec::from_hyperparameters(&hp).unwrap();
    let data = model_dir.join("data.jsonl");
    std::fs::write(&data, rows(24)).unwrap();
    let tok = trainer::data::TokenizerBundle::load(model_dir).unwrap();
    let read = trainer::data::read_path(&data, &DataSpec::default()).unwrap();
    let train = TrainSet::Causal(trainer::data::tokenize(&read.records, &tok, &spec.data).unwrap().examples);
    let none = TrainSet::Causal(vec![]);
    let arch = Arch::from_file(&model_dir.join("config.json")).unwrap();
    let lora = spec.lora_config(arch.linear_modules()).unwrap();
    let group: Vec<Box<dyn Collective>> = match world {
        1 => vec![Box::new(Solo)],
        n => ThreadGroup::new(n).into_iter().map(|g| Box::new(g) as Box<dyn Collective>).collect(),
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = group
            .iter()
            .map(|member| {
                let (spec, train, none, arch, lora, tok) = (&spec, &train, &none, &arch, &lora, &tok);
                std::thread::Builder::new()
                    .stack_size(256 << 20)
                    .spawn_scoped(s, move || {
                        let mut rng = Rng::derive(spec.seed, "lora-init");
                        let opts = LoadOptions::default();
                        let model =
                            Model::load(model_dir, arch, DType::F32, &Device::Cpu, Some((lora, &mut rng)), &opts)
                                .unwrap();
                        let ckpt = tempfile::tempdir().unwrap();
                        let outcome = sft::train(SftInputs {
                            spec,
                            model: &model,
                            train,
                            validation: none,
                            pad_id: tok.pad_id(),
                            checkpoint_dir: ckpt.path(),
                            stop: &StopFlag::manual(),
                            dist: member.as_ref(),
                            tracker: &trainer::track::Tracker::off(),
                        })
                        .unwrap();
                        let adapter = model
                            .trainable_vars()
                            .iter()
                            .flat_map(|v| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())
                            .collect();
                        let losses = outcome.state.history.iter().filter_map(|r| r.loss).collect();
                        let checkpoints = std::fs::read_dir(ckpt.path()).map(|d| d.count()).unwrap_or(0);
                        RankResult { adapter, losses, checkpoints }
                    })
                    .unwrap()
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn two_and_four_ranks_train_the_adapter_one_rank_trains_on_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &tiny_config_json(2, 32), 7);
    // The same effective batch (8 micro-batches of 2 rows per step) on 1, 2 and 4 ranks.
    let one = train(dir.path(), 1, 8, "0", 4);
    let two = train(dir.path(), 2, 4, "0", 4);
    let four = train(dir.path(), 4, 2, "0", 4);
    assert_eq!(one[0].losses.len(), 4);
    let scale = one[0].adapter.iter().fold(0f32, |m, x| m.max(x.abs()));
    for (world, run) in [(2, &two), (4, &four)] {
        let d = max_diff(&run[0].adapter, &one[0].adapter);
        assert!(d <= 1e-4 * scale.max(1.0), "{world} ranks: adapter differs from one rank's by {d}");
        for (a, b) in run[0].losses.iter().zip(&one[0].losses) {
            assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "{world} ranks: loss {a} vs one rank's {b}");
        }
        for r in &run[1..] {
            assert!(r.adapter == run[0].adapter, "{world} ranks: the ranks' adapters are not bit-identical");
        }
        assert!(run[0].checkpoints > 0 && run[1..].iter().all(|r| r.checkpoints == 0), "rank 0 alone saves");
    }
}

#[test]
fn a_data_parallel_run_with_dropout_reproduces_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &tiny_config_json(2, 32), 7);
    let a = train(dir.path(), 2, 2, "0.1", 3);
    let b = train(dir.path(), 2, 2, "0.1", 3);
    assert!(a[0].adapter == b[0].adapter && a[0].losses == b[0].losses, "two runs of 2 ranks differ");
    assert!(a[1].adapter == a[0].adapter, "the ranks' adapters differ");
}
