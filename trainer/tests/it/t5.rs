//! The T5 family (FLAN-T5's architecture) against transformers and PEFT on the committed fixture
//! tests/fixtures/t5 (made by tests/fixtures/scripts/make_t5.py): relative position buckets, logits
//! of the base and with a PEFT LoRA adapter, the loss, and every LoRA gradient.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use trainer::lora::LoraConfig;
use trainer::model::t5::{relative_bucket, T5Config, T5};
use trainer::model::weights::Weights;
use trainer::model::{ForwardCtx, LoadOptions};
use trainer::rng::Rng;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/t5")
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

fn ids(t: &Tensor) -> Tensor {
    t.to_dtype(DType::U32).unwrap()
}

/// The T5 checkpoint in `dir` in f32, with fresh LoRA adapters (config, init seed) when given.
fn load(dir: &Path, lora: Option<(&LoraConfig, u64)>, opts: &LoadOptions) -> T5 {
    let path = dir.join("config.json");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cfg = T5Config::from_json(&json, &path).unwrap();
    let mut rng = Rng::new(lora.map_or(0, |(_, seed)| seed));
    let w = Weights::open(dir).unwrap();
    T5::from_weights(&w, &cfg, DType::F32, &Device::Cpu, lora.map(|(l, _)| (l, &mut rng)), opts).unwrap()
}

/// PEFT's default T5 targets (q, v) with the fixture adapter's r = 4, α = 8.
fn peft_default_lora() -> LoraConfig {
    LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, use_rslora: false, targets: vec!["q".into(), "v".into()] }
}

/// The fixture's base model, with the PEFT adapter when `adapter`.
fn model(adapter: bool) -> T5 {
    let lora = peft_default_lora();
    let m = load(&dir().join("base"), adapter.then_some((&lora, 1)), &LoadOptions::default());
    if adapter {
        let file = dir().join("adapter/adapter_model.safetensors");
        trainer::model::linear::load_peft_adapter(&file, &m.adapters(), &m.device).unwrap();
    }
    m
}

/// `steps` AdamW steps (lr 1e-2, clipping at 1) of the adapters on the fixture's batch; the loss
/// before each step.
fn train(m: &T5, steps: usize) -> Vec<f32> {
    let r = reference();
    let adamw = trainer::optim::AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let mut opt = trainer::optim::AdamW::new(trainer::lora::trainable_vars(&m.adapters()), adamw).unwrap();
    let labels: Vec<Vec<i64>> = r["labels"].to_vec2().unwrap();
    let (input, mask) = (ids(&r["input_ids"]), &r["attention_mask"]);
    let mut losses = vec![];
    for _ in 0..steps {
        let loss = m.loss(&input, mask, &labels, &mut ForwardCtx::eval()).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        let grads = loss.backward().unwrap();
        let g: Vec<Tensor> = opt.params().iter().map(|p| grads.get(p.as_tensor()).unwrap().clone()).collect();
        opt.step(&g, 1e-2, 1.0).unwrap();
    }
    losses
}

fn logits(m: &T5, r: &HashMap<String, Tensor>) -> Tensor {
    let mut ctx = ForwardCtx::eval();
    let enc = m.encode(&ids(&r["input_ids"]), &r["attention_mask"], &mut ctx).unwrap();
    let h = m.decode(&ids(&r["decoder_input_ids"]), &enc, &r["attention_mask"], &mut ctx).unwrap();
    m.logits(&h).unwrap()
}

#[test]
fn t5_relative_position_buckets_match_transformers() {
    let r = reference();
    for (name, bidirectional) in [("buckets_bidirectional", true), ("buckets_causal", false)] {
        let want: Vec<i64> = r[name].to_vec1().unwrap();
        let got: Vec<i64> = (-40i64..=40).map(|p| relative_bucket(p, bidirectional, 32, 128) as i64).collect();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn t5_logits_match_transformers_with_and_without_a_peft_adapter() {
    let r = reference();
    let d = max_diff(&logits(&model(false), &r), &r["base_logits"]);
    assert!(d < 1e-4, "base logits differ from transformers by {d}");
    let with = logits(&model(true), &r);
    let d = max_diff(&with, &r["lora_logits"]);
    assert!(d < 1e-4, "LoRA logits differ from PEFT by {d}");
    // The adapter changes the output (so the check above is not the base model's twice).
    assert!(max_diff(&with, &r["base_logits"]) > 1e-2);
}

#[test]
fn t5_loss_and_lora_gradients_match_transformers_and_peft() {
    let r = reference();
    let m = model(true);
    let labels: Vec<Vec<i64>> = r["labels"].to_vec2().unwrap();
    let dec: Vec<Vec<i64>> = r["decoder_input_ids"].to_vec2().unwrap();
    let shifted: Vec<Vec<i64>> =
        m.shift_right(&labels).iter().map(|row| row.iter().map(|&x| x as i64).collect()).collect();
    assert_eq!(shifted, dec, "labels shifted right as transformers' _shift_right");
    let loss = m.loss(&ids(&r["input_ids"]), &r["attention_mask"], &labels, &mut ForwardCtx::eval()).unwrap();
    let want = r["lora_loss"].to_scalar::<f32>().unwrap();
    let got = loss.to_scalar::<f32>().unwrap();
    assert!((got - want).abs() < 1e-5, "loss {got} vs transformers {want}");
    let grads = loss.backward().unwrap();
    let adapters = m.adapters();
    assert_eq!(adapters.len(), 2 * 2 + 2 * 2 * 2, "q and v of every self- and cross-attention");
    for (module, a) in adapters {
        for (which, var) in [('A', &a.a), ('B', &a.b)] {
            let key = format!("grad.{}", trainer::lora::peft_key(module, which));
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {key}"));
            let want = &r[&key];
            let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6);
            let d = max_diff(g, want);
            assert!(d <= 1e-4 * scale.max(1.0), "{key}: gradient differs from PEFT by {d} (max {scale})");
        }
    }
}

#[test]
fn t5_configs_are_read_or_refused_clearly() {
    let p = Path::new("config.json");
    let flan_like = serde_json::json!({"vocab_size": 32128, "d_model": 512, "d_kv": 64, "d_ff": 1024, "num_heads": 6,
        "num_layers": 8, "feed_forward_proj": "gelu", "is_gated_act": true, "tie_word_embeddings": false});
    let c = T5Config::from_json(&flan_like, p).unwrap();
    assert!(c.gated_gelu && c.num_decoder_layers == 8 && c.buckets == 32 && c.max_distance == 128);
    assert!(!c.scale_decoder_outputs, "FLAN-T5 (tie_word_embeddings: false) does not rescale the decoder output");
    let bad = serde_json::json!({"vocab_size": 1, "d_model": 1, "d_kv": 1, "d_ff": 1, "num_heads": 1, "num_layers": 1,
        "feed_forward_proj": "gated-silu"});
    let e = T5Config::from_json(&bad, p).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("gated-silu"), "{e}");
    let missing = serde_json::json!({"vocab_size": 1});
    assert!(T5Config::from_json(&missing, p).unwrap_err().to_string().contains("is missing"));
}

#[test]
fn t5_cached_decoding_equals_teacher_forcing_and_greedy_equals_transformers() {
    let r = reference();
    let m = model(true);
    let mut ctx = ForwardCtx::eval();
    let enc = m.encode(&ids(&r["input_ids"]), &r["attention_mask"], &mut ctx).unwrap();
    let mut cache = m.start_decoding(&enc, &r["attention_mask"], &mut ctx).unwrap();
    let dec = ids(&r["decoder_input_ids"]);
    for t in 0..dec.dim(1).unwrap() {
        let h = m.decode_step(&dec.narrow(1, t, 1).unwrap(), &mut cache, &mut ctx).unwrap();
        let want = r["lora_logits"].narrow(1, t, 1).unwrap();
        let d = max_diff(&m.logits(&h).unwrap(), &want);
        assert!(d < 1e-4, "step {t}: cached decoding differs from teacher forcing (PEFT) by {d}");
    }
    assert_eq!(cache.len, 6);

    // Greedy generation of the base model against transformers' `generate`.
    let base = model(false);
    let input: Vec<Vec<i64>> = r["input_ids"].to_vec2().unwrap();
    let mask: Vec<Vec<i64>> = r["attention_mask"].to_vec2().unwrap();
    let prompts: Vec<Vec<u32>> = input
        .iter()
        .zip(&mask)
        .map(|(row, m)| row.iter().zip(m).filter(|(_, &k)| k == 1).map(|(&t, _)| t as u32).collect())
        .collect();
    let cfg = trainer::generate::SamplingConfig {
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        max_new_tokens: 8,
        eos_ids: vec![base.cfg.eos_token_id],
        stop_strings: vec![],
    };
    // Any tokenizer decodes the fixture's 96 ids; generation compares ids only.
    let (_d, tok) = demo_tokenizer();
    let base = trainer::model::Model::Seq2Seq(base);
    let got = trainer::generate::generate(&base, &tok, &prompts, &cfg, &mut Rng::new(0), true).unwrap();
    let want: Vec<Vec<i64>> = r["greedy_ids"].to_vec2().unwrap();
    for (g, w) in got.iter().map(|c| &c.ids).zip(&want) {
        // transformers' rows start with the decoder start token and are padded after an early EOS.
        let w: Vec<u32> = w[1..].iter().map(|&x| x as u32).collect();
        assert_eq!(g[..], w[..g.len()], "greedy ids differ from transformers");
        assert!(w[g.len()..].iter().all(|&x| x == 0));
    }
}

/// The demo tokenizer in a temporary directory.
fn demo_tokenizer() -> (tempfile::TempDir, trainer::data::TokenizerBundle) {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("tokenizer.json"), trainer::demo::TOKENIZER_JSON).unwrap();
    std::fs::write(d.path().join("tokenizer_config.json"), trainer::demo::TOKENIZER_CONFIG_JSON).unwrap();
    let tok = trainer::data::TokenizerBundle::load(d.path()).unwrap();
    (d, tok)
}

#[test]
fn seq2seq_examples_from_the_trainer_formats() {
    use trainer::data::{read_path, seq2seq_examples, DataSpec};
    let (dir, tok) = demo_tokenizer();
    let samsum = dir.path().join("samsum.jsonl");
    std::fs::write(
        &samsum,
        "{\"dialogue\": \"Amanda: I baked cookies. Do you want some?\\nJerry: Sure!\", \"summary\": \"Amanda baked cookies and will bring Jerry some.\"}\n\
         {\"dialogue\": \"A: hi\", \"summary\": \"\"}\n",
    )
    .unwrap();
    let records = read_path(&samsum, &DataSpec { prompt_only: true, ..Default::default() }).unwrap().records;
    let r = seq2seq_examples(&records, &tok, 512, 4, false).unwrap();
    assert_eq!((r.examples.len(), r.dropped_no_target, r.truncated_targets, r.truncated_sources), (1, 1, 1, 0));
    let ex = &r.examples[0];
    let full_target = tok.encode("Amanda baked cookies and will bring Jerry some.", false).unwrap();
    assert_eq!(ex.target_ids[..3], full_target[..3], "the target keeps its start");
    assert_eq!(ex.target_ids[3], tok.eos_id().unwrap(), "and ends with EOS, as a T5 tokenizer encodes it");
    assert!(ex.source_ids.len() > 4 && r.source_tokens == ex.source_ids.len() && r.target_tokens == 4);

    let chat = dir.path().join("chat.jsonl");
    std::fs::write(&chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}]}\n")
        .unwrap();
    let records = read_path(&chat, &DataSpec::default()).unwrap().records;
    let e = seq2seq_examples(&records, &tok, 512, 512, false).unwrap_err().to_string();
    assert!(e.contains("chat.jsonl:1") && e.contains("no chat template"), "{e}");
    let skipped = seq2seq_examples(&records, &tok, 512, 512, true).unwrap();
    assert_eq!((skipped.examples.len(), skipped.skipped.len()), (0, 1));
}

/// LoRA on every linear layer of the fixture's base, trained for a few AdamW steps on its batch:
/// the first and last loss.
fn train_steps(quantize: bool, steps: usize) -> (f32, f32, T5) {
    let targets = ["q", "k", "v", "o", "wi_0", "wi_1", "wo"].map(String::from).to_vec();
    let lora = LoraConfig { r: 8, alpha: 16.0, dropout: 0.0, use_rslora: false, targets };
    let opts = LoadOptions { quantize_nf4: quantize.then(trainer::quant::nf4::Nf4Options::default) };
    let m = load(&dir().join("base"), Some((&lora, 7)), &opts);
    let losses = train(&m, steps);
    (losses[0], *losses.last().unwrap(), m)
}

#[test]
fn t5_lora_and_qlora_training_lowers_the_loss() {
    let (first, last, m) = train_steps(false, 25);
    assert!(last < 0.7 * first, "LoRA: loss {first} → {last}");
    assert!(m.quantized_modules().is_empty());
    let (first, last, m) = train_steps(true, 25);
    assert!(last < 0.7 * first, "QLoRA: loss {first} → {last}");
    let q = m.quantized_modules();
    // Every projection but the feed-forward output is NF4: 4 + 2 per encoder block, 4 + 4 + 2 per decoder block.
    assert_eq!(q.len(), 2 * 6 + 2 * 10, "{q:?}");
    assert!(q.iter().all(|n| !n.ends_with(".wo")), "wo stays dense: {q:?}");
}

/// The adapter oxtune writes for T5 (PEFT's default targets q, v; 10 LoRA steps on the fixture,
/// deterministic) is committed as tests/fixtures/t5/rust_adapter; tests/fixtures/scripts/t5_peft_logits.py
/// loaded it with `PeftModel.from_pretrained` (every key used) and recorded its logits. Set
/// OXTUNE_REGENERATE_T5_ADAPTER=1 to rewrite the committed adapter from this code, then rerun that script.
#[test]
fn t5_adapter_written_by_oxtune_loads_in_peft_with_the_same_logits() {
    let r = reference();
    let lora = peft_default_lora();
    let m = load(&dir().join("base"), Some((&lora, 3)), &LoadOptions::default());
    train(&m, 10);
    let out = tempfile::tempdir().unwrap();
    trainer::lora::save_adapter_tensors(&out.path().join("adapter_model.safetensors"), &m.adapters()).unwrap();
    let config = trainer::lora::peft_config_json(&lora, "tests/fixtures/t5/base", trainer::lora::TASK_SEQ_2_SEQ_LM);
    std::fs::write(out.path().join("adapter_config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let committed = dir().join("rust_adapter");
    if std::env::var_os("OXTUNE_REGENERATE_T5_ADAPTER").is_some() {
        std::fs::create_dir_all(&committed).unwrap();
        for f in ["adapter_model.safetensors", "adapter_config.json"] {
            std::fs::copy(out.path().join(f), committed.join(f)).unwrap();
        }
    }
    // What this code writes is the committed adapter.
    let ours = candle_core::safetensors::load(out.path().join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    let theirs = candle_core::safetensors::load(committed.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (k, t) in &ours {
        let d = max_diff(t, theirs.get(k).unwrap_or_else(|| panic!("{k} missing from the committed adapter")));
        assert!(d < 1e-4, "{k} differs from the committed adapter by {d}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(committed.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["task_type"], "SEQ_2_SEQ_LM");
    // PEFT's logits with that adapter are ours.
    let peft =
        candle_core::safetensors::load(dir().join("rust_adapter_peft_logits.safetensors"), &Device::Cpu).unwrap();
    let d = max_diff(&logits(&m, &r), &peft["logits"]);
    assert!(d < 1e-4, "logits with the oxtune adapter differ from PEFT's by {d}");
    assert!(max_diff(&peft["logits"], &r["lora_logits"]) > 1e-3, "a trained adapter, not the fixture's");
}

/// `merge_adapter` for T5: the merged checkpoint has exactly the base checkpoint's tensor names (so
/// transformers loads it as the base) and, loaded without an adapter, gives the adapted model's logits.
#[test]
fn t5_merged_checkpoint_keeps_the_names_and_gives_the_adapted_logits() {
    let r = reference();
    let m = model(true);
    let merged = tempfile::tempdir().unwrap();
    let tensors: std::collections::BTreeMap<String, Tensor> =
        m.merged_state_dict(DType::F32).unwrap().into_iter().collect();
    trainer::lora::save_safetensors(&merged.path().join("model.safetensors"), &tensors).unwrap();
    std::fs::copy(dir().join("base/config.json"), merged.path().join("config.json")).unwrap();
    let base = candle_core::safetensors::load(dir().join("base/model.safetensors"), &Device::Cpu).unwrap();
    let mut want: Vec<&String> = base.keys().collect();
    want.sort();
    assert_eq!(tensors.keys().collect::<Vec<_>>(), want, "merged tensor names = the checkpoint's");
    let reloaded = load(merged.path(), None, &LoadOptions::default());
    let d = max_diff(&logits(&reloaded, &r), &r["lora_logits"]);
    assert!(d < 1e-4, "merged logits differ from PEFT's adapted logits by {d}");
}

/// A Hub FLAN-T5 stores its LM head apart from the shared embedding (`tie_word_embeddings: false`):
/// tests/fixtures/t5_untied (tests/fixtures/scripts/make_t5_untied.py) is such a checkpoint with the
/// logits transformers computes after `from_pretrained` (which keeps the stored head, unscaled).
#[test]
fn t5_with_a_stored_untied_head_gives_transformers_logits() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/t5_untied");
    let r = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let m = load(&dir, None, &LoadOptions::default());
    assert!(!m.cfg.scale_decoder_outputs);
    let d = max_diff(&logits(&m, &r), &r["logits"]);
    assert!(d < 1e-4, "logits differ from transformers by {d}");
    // The merged checkpoint keeps the stored head under its name.
    let merged: Vec<String> = m.merged_state_dict(DType::F32).unwrap().into_iter().map(|(n, _)| n).collect();
    assert!(merged.iter().any(|n| n == "lm_head.weight"));
}
