//! LoRA gradients: finite differences through the whole decoder, a composed
//! candle-autograd reference for the LoRA linear, exact gradient accumulation,
//! and a measurement that the frozen base holds no weight gradient.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use kernels::recompute::SideGrads;
use trainer::data::{make_batches, BatchSpec, Example, RowRef};
use trainer::lora::{LoraAdapter, LoraConfig};
use trainer::model::linear::{BaseWeight, Linear};
use trainer::model::{Decoder, ForwardCtx, ModelConfig};
use trainer::optim::accumulate;
use trainer::rng::Rng;
use trainer::train::sft::{summed_nll, BatchTensors};

fn random(shape: &[usize], std: f64, rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec((0..n).map(|_| (rng.normal() * std) as f32).collect::<Vec<_>>(), shape, &Device::Cpu).unwrap()
}

fn model(dir: &std::path::Path) -> Decoder {
    model_with(dir, 16, 2, 0.0)
}

/// A tiny decoder with adapters on every projection and non-zero B (so A gets gradients too).
fn model_with(dir: &std::path::Path, hidden: usize, layers: usize, dropout: f64) -> Decoder {
    crate::common::write_model(dir, &crate::common::tiny_config_json(layers, hidden), 11);
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let lora = LoraConfig {
        r: 2,
        alpha: 4.0,
        dropout,
        use_rslora: false,
        targets: trainer::lora::LINEAR_MODULES.iter().map(|s| s.to_string()).collect(),
    };
    let mut rng = Rng::new(5);
    let m = Decoder::load(dir, &cfg, DType::F32, &Device::Cpu, Some((&lora, &mut rng))).unwrap();
    for (_, a) in m.adapters() {
        a.b.set(&random(a.b.dims(), 0.3, &mut rng)).unwrap();
    }
    m
}

fn example(ids: &[u32], first_target: usize) -> Example {
    Example {
        input_ids: ids.to_vec(),
        loss_mask: (0..ids.len()).map(|i| u8::from(i >= first_target)).collect(),
        source: RowRef { file: PathBuf::from("test"), line: 1 },
    }
}

fn examples() -> Vec<Example> {
    vec![
        example(&[1, 40, 41, 42, 43, 44, 45], 3),
        example(&[1, 50, 51, 52, 53], 2),
        example(&[1, 60, 61, 62, 63, 64], 4),
    ]
}

fn batches(batch_size: usize, packing: bool) -> Vec<trainer::data::Batch> {
    let ex = examples();
    let order: Vec<usize> = (0..ex.len()).collect();
    make_batches(&ex, &order, &BatchSpec { batch_size, max_seq_length: 16, packing, pad_id: 0 })
}

fn loss(m: &Decoder, bs: &[trainer::data::Batch]) -> Tensor {
    let n: usize = bs.iter().map(|b| b.target_tokens).sum();
    let mut total: Option<Tensor> = None;
    for b in bs {
        let t = BatchTensors::new(b, &Device::Cpu).unwrap();
        let l = (summed_nll(m, &t, &mut ForwardCtx::eval()).unwrap() / n as f64).unwrap();
        total = Some(match total {
            Some(acc) => (acc + l).unwrap(),
            None => l,
        });
    }
    total.unwrap()
}

#[test]
fn lora_gradients_match_finite_differences() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let bs = batches(3, true);
    let grads = loss(&m, &bs).backward().unwrap();
    let mut rng = Rng::new(9);
    let vars = m.trainable_vars();
    let mut checked = 0;
    for vi in [0usize, 3, 9, 17, vars.len() - 2, vars.len() - 1] {
        let var = &vars[vi];
        let g = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for _ in 0..3 {
            let i = rng.below(base.len());
            let eps = 1e-2f32;
            let eval = |delta: f32| {
                let mut v = base.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()).unwrap();
                loss(&m, &bs).to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
            };
            let fd = (eval(eps) - eval(-eps)) / (2.0 * eps as f64);
            var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap()).unwrap();
            let an = g[i] as f64;
            assert!(
                (fd - an).abs() <= 2e-3 + 2e-2 * an.abs(),
                "var {vi} coord {i}: analytic {an}, finite difference {fd}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 18);
}

#[test]
fn lora_linear_matches_composed_autograd_reference() {
    let mut rng = Rng::new(2);
    let (inf, outf, r, scale) = (6, 5, 3, 1.5);
    let w = random(&[outf, inf], 0.5, &mut rng);
    let bias = random(&[outf], 0.5, &mut rng);
    let adapter = LoraAdapter {
        a: Var::from_tensor(&random(&[r, inf], 0.5, &mut rng)).unwrap(),
        b: Var::from_tensor(&random(&[outf, r], 0.5, &mut rng)).unwrap(),
        scale,
        dropout: 0.0,
    };
    let (a, b) = (adapter.a.clone(), adapter.b.clone());
    let lin = Linear {
        name: "t".into(),
        in_features: inf,
        out_features: outf,
        base: BaseWeight::Dense { w: w.clone(), bias: Some(bias.clone()) },
        lora: Some(adapter),
    };
    let x = Var::from_tensor(&random(&[2, 3, inf], 1.0, &mut rng)).unwrap();
    let y = lin.forward(x.as_tensor(), &mut ForwardCtx::eval()).unwrap();
    // Reference: plain candle ops; autograd differentiates everything.
    let x2 = x.as_tensor().reshape((6, inf)).unwrap();
    let base = x2.matmul(&w.t().unwrap()).unwrap().broadcast_add(&bias).unwrap();
    let delta =
        (x2.matmul(&a.as_tensor().t().unwrap()).unwrap().matmul(&b.as_tensor().t().unwrap()).unwrap() * scale).unwrap();
    let y_ref = (base + delta).unwrap().reshape((2, 3, outf)).unwrap();
    let diff = (&y - &y_ref).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-5, "forward differs by {diff}");
    let weights = random(&[2, 3, outf], 1.0, &mut rng);
    let g = y.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
    let g_ref = y_ref.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
    for v in [&x, &a, &b] {
        let d = (g.get(v.as_tensor()).unwrap() - g_ref.get(v.as_tensor()).unwrap()).unwrap();
        let d = d.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "gradient differs by {d}");
    }
    assert!(g.get(&w).is_none(), "the frozen weight gets no gradient");
    assert!(g_ref.get(&w).is_none(), "w is not a Var here either; the decoder test below measures the model case");
}

#[test]
fn accumulated_micro_batches_equal_the_full_batch_gradient() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let full = loss(&m, &batches(3, false)).backward().unwrap();
    let micro = batches(1, false);
    assert_eq!(micro.len(), 3);
    let n: usize = micro.iter().map(|b| b.target_tokens).sum();
    let mut acc: Vec<Tensor> = vec![];
    for b in &micro {
        let t = BatchTensors::new(b, &Device::Cpu).unwrap();
        let g = (summed_nll(&m, &t, &mut ForwardCtx::eval()).unwrap() / n as f64).unwrap().backward().unwrap();
        for (i, v) in m.trainable_vars().iter().enumerate() {
            let gi = g.get(v.as_tensor()).unwrap().clone();
            if acc.len() <= i {
                acc.push(gi);
            } else {
                acc[i] = (&acc[i] + gi).unwrap();
            }
        }
    }
    for (i, v) in m.trainable_vars().iter().enumerate() {
        let f = full.get(v.as_tensor()).unwrap();
        let scale = f.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6);
        let d = (f - &acc[i]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d <= 1e-4 * scale, "param {i}: accumulated gradient differs by {d} (max |g| {scale})");
    }
}

#[test]
fn frozen_base_holds_no_weight_gradient_measured() {
    let dir = tempfile::tempdir().unwrap();
    let m = model_with(dir.path(), 64, 2, 0.0);
    let cfg = ModelConfig::from_file(&dir.path().join("config.json")).unwrap();
    let store = loss(&m, &batches(3, true)).backward().unwrap();
    // Every tensor left in the gradient store after backward.
    let held: Vec<Vec<usize>> = store.get_ids().filter_map(|id| store.get_id(*id)).map(|t| t.dims().to_vec()).collect();
    let held_bytes: usize = held.iter().map(|d| d.iter().product::<usize>() * 4).sum();
    let frozen: Vec<Vec<usize>> = cfg.projection_shapes().iter().map(|(_, i, o)| vec![*o, *i]).collect();
    for d in &held {
        assert!(!frozen.contains(d), "a gradient of frozen-weight shape {d:?} was allocated");
    }
    for v in m.trainable_vars() {
        assert!(store.get(v.as_tensor()).is_some(), "every LoRA parameter has a gradient");
    }
    // candle also keeps small gradients for untracked operands of binary ops (loss mask, norm weights,
    // first-layer activations); a weight gradient per frozen projection would dwarf them.
    let frozen_bytes = cfg.linear_param_count() as usize * 4;
    assert!(
        held_bytes < frozen_bytes / 2,
        "{held_bytes} B of gradients held vs {frozen_bytes} B of frozen projection weights"
    );
}

/// Activation checkpointing recomputes each layer in the backward: same loss, same gradients for
/// every adapter (first layer included), and the same LoRA dropout masks on the replay.
#[test]
fn checkpointed_layers_give_the_same_gradients() {
    let dir = tempfile::tempdir().unwrap();
    let m = model_with(dir.path(), 16, 3, 0.3);
    let vars = m.trainable_vars();
    let b = &batches(3, true)[0];
    let t = BatchTensors::new(b, &Device::Cpu).unwrap();
    let run = |side: Option<SideGrads>| {
        let mut ctx = ForwardCtx::train(Rng::new(3), side.clone());
        let loss = summed_nll(&m, &t, &mut ctx).unwrap();
        let mut grads = vec![];
        accumulate(&mut grads, &loss.backward().unwrap(), &vars, side.as_ref()).unwrap();
        (loss.to_scalar::<f32>().unwrap(), grads)
    };
    let (plain_loss, plain) = run(None);
    let (ckpt_loss, ckpt) = run(Some(SideGrads::new()));
    assert_eq!(plain_loss.to_bits(), ckpt_loss.to_bits(), "the forward value must not change");
    for (i, (p, c)) in plain.iter().zip(&ckpt).enumerate() {
        let scale = p.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(scale > 0.0, "param {i} got no gradient");
        let d = (p - c).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d <= 1e-5 * scale.max(1.0), "param {i}: checkpointed gradient differs by {d} (max |g| {scale})");
    }
    // A different dropout stream gives different gradients, so the equality above is not vacuous.
    let mut ctx = ForwardCtx::train(Rng::new(4), None);
    let other = summed_nll(&m, &t, &mut ctx).unwrap().to_scalar::<f32>().unwrap();
    assert_ne!(other.to_bits(), plain_loss.to_bits());
}
