//! Batched sampling with the KV cache: prompts are left-padded (padding is its
//! own attention segment, positions start at 0 at each prompt's first token),
//! prefilled once, then decoded one token per step for every row.

use candle_core::{DType, Result, Tensor};

use crate::data::TokenizerBundle;
use crate::model::{Decoder, ForwardCtx, KvCache};
use crate::rng::Rng;

#[derive(Debug, Clone)]
pub struct SamplingConfig {
    /// 0 = greedy.
    pub temperature: f64,
    /// Nucleus mass kept (1.0 = off).
    pub top_p: f64,
    /// Most likely tokens kept (0 = off).
    pub top_k: usize,
    pub max_new_tokens: usize,
    pub eos_ids: Vec<u32>,
    pub stop_strings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Eos,
    StopString,
    Length,
}

#[derive(Debug, Clone)]
pub struct Completion {
    /// Generated tokens, including the EOS or the token that completed a stop string.
    pub ids: Vec<u32>,
    pub text: String,
    pub finish: Finish,
}

/// Sample one token id from a row of logits.
pub fn sample(logits: &[f32], cfg: &SamplingConfig, rng: &mut Rng) -> u32 {
    if cfg.temperature <= 0.0 {
        return argmax(logits);
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if cfg.top_k > 0 {
        idx.truncate(cfg.top_k);
    }
    let max = logits[idx[0]] as f64;
    let mut probs: Vec<f64> = idx.iter().map(|&i| ((logits[i] as f64 - max) / cfg.temperature).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if cfg.top_p < 1.0 {
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (n, p) in probs.iter().enumerate() {
            cum += p;
            if cum >= cfg.top_p {
                keep = n + 1;
                break;
            }
        }
        probs.truncate(keep);
        idx.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let u = rng.next_f64();
    let mut cum = 0.0;
    for (n, p) in probs.iter().enumerate() {
        cum += p;
        if u < cum {
            return idx[n] as u32;
        }
    }
    idx[probs.len() - 1] as u32
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0))).map(|(i, _)| i as u32).unwrap_or(0)
}

/// Generate one completion per prompt row (repeat a prompt to get a group). `adapters` selects policy or base.
pub fn generate(
    model: &Decoder,
    tok: &TokenizerBundle,
    prompts: &[Vec<u32>],
    cfg: &SamplingConfig,
    rng: &mut Rng,
    adapters: bool,
) -> Result<Vec<Completion>> {
    let b = prompts.len();
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let pad = tok.pad_id();
    let (mut ids, mut pos, mut seg) =
        (Vec::with_capacity(b * width), Vec::with_capacity(b * width), Vec::with_capacity(b * width));
    for p in prompts {
        let padn = width - p.len();
        ids.extend(std::iter::repeat_n(pad, padn).chain(p.iter().copied()));
        pos.extend(std::iter::repeat_n(0u32, padn).chain(0..p.len() as u32));
        seg.extend(std::iter::repeat_n(0u32, padn).chain(std::iter::repeat_n(1u32, p.len())));
    }
    let dev = &model.device;
    let mut segments = Tensor::from_vec(seg, (b, width), dev)?;
    let mut cache = KvCache::new();
    let mut ctx = ForwardCtx { adapters, dropout_rng: None, checkpoint: None };
    let hidden = model.hidden_cached(
        &Tensor::from_vec(ids, (b, width), dev)?,
        &Tensor::from_vec(pos, (b, width), dev)?,
        &segments,
        &mut cache,
        &mut ctx,
    )?;
    let mut logits = model.logits(&hidden.narrow(1, width - 1, 1)?.detach())?.squeeze(1)?;
    let mut out: Vec<Vec<u32>> = vec![vec![]; b];
    let mut finish: Vec<Option<Finish>> = vec![None; b];
    let ones = Tensor::ones((b, 1), DType::U32, dev)?;
    for step in 0..cfg.max_new_tokens {
        let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut next = Vec::with_capacity(b);
        for (r, row) in rows.iter().enumerate() {
            if finish[r].is_some() {
                next.push(pad);
                continue;
            }
            let t = sample(row, cfg, rng);
            out[r].push(t);
            if cfg.eos_ids.contains(&t) {
                finish[r] = Some(Finish::Eos);
            } else if !cfg.stop_strings.is_empty() {
                let tail_start = out[r].len().saturating_sub(16);
                let tail = tok.decode(&out[r][tail_start..], false).unwrap_or_default();
                if cfg.stop_strings.iter().any(|s| tail.contains(s.as_str())) {
                    finish[r] = Some(Finish::StopString);
                }
            }
            next.push(t);
        }
        if finish.iter().all(Option::is_some) || step + 1 == cfg.max_new_tokens {
            break;
        }
        let positions: Vec<u32> = prompts.iter().map(|p| (p.len() + step) as u32).collect();
        segments = Tensor::cat(&[&segments, &ones], 1)?;
        let hidden = model.hidden_cached(
            &Tensor::from_vec(next, (b, 1), dev)?,
            &Tensor::from_vec(positions, (b, 1), dev)?,
            &segments,
            &mut cache,
            &mut ctx,
        )?;
        logits = model.logits(&hidden.detach())?.squeeze(1)?;
    }
    Ok(out
        .into_iter()
        .zip(finish)
        .map(|(ids, f)| {
            let text = tok.decode(&ids, true).unwrap_or_default();
            Completion { ids, text, finish: f.unwrap_or(Finish::Length) }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(temperature: f64, top_p: f64, top_k: usize) -> SamplingConfig {
        SamplingConfig { temperature, top_p, top_k, max_new_tokens: 1, eos_ids: vec![], stop_strings: vec![] }
    }

    #[test]
    fn greedy_top_k_and_top_p() {
        let logits = [0.0f32, 3.0, 1.0, 2.9];
        let mut rng = Rng::new(1);
        assert_eq!(sample(&logits, &cfg(0.0, 1.0, 0), &mut rng), 1);
        for _ in 0..200 {
            let t = sample(&logits, &cfg(1.0, 1.0, 2), &mut rng);
            assert!(t == 1 || t == 3, "top-k 2 keeps ids 1 and 3");
            // p(1) ≈ 0.49, p(3) ≈ 0.45: top_p 0.4 keeps only the first.
            assert_eq!(sample(&logits, &cfg(1.0, 0.4, 0), &mut rng), 1);
        }
        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            counts[sample(&logits, &cfg(1.0, 1.0, 0), &mut rng) as usize] += 1;
        }
        let z: f64 = logits.iter().map(|l| (*l as f64).exp()).sum();
        for (i, c) in counts.iter().enumerate() {
            let p = (logits[i] as f64).exp() / z;
            assert!((*c as f64 / 4000.0 - p).abs() < 0.03, "id {i}: {c} vs p={p}");
        }
    }
}
