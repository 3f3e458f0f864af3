//! Batched sampling with the KV cache, for decoder-only models (prompts left-padded — padding is
//! its own attention segment, positions start at 0 at each prompt's first token — prefilled once,
//! then decoded one token per step for every row) and for T5 (the encoder run once, the decoder
//! one token per step). It stands above the model and
//! the data (it decodes text to match stop strings), beside the GRPO loop and evaluation, its users.

use candle_core::{DType, Result, Tensor};

use crate::data::TokenizerBundle;
use crate::model::t5::T5;
use crate::model::{Decoder, ForwardCtx, KvCache, Model};
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

/// Sample one token id from a row of logits. Only as many candidates as top-k / top-p can keep
/// are ranked (partial selection, then a sort of that prefix): sorting a 128k vocabulary per row
/// per decode step would dominate generation time.
pub fn sample(logits: &[f32], cfg: &SamplingConfig, rng: &mut Rng) -> u32 {
    if cfg.temperature <= 0.0 || logits.len() < 2 {
        return argmax(logits);
    }
    let n = logits.len();
    let max = logits[argmax(logits) as usize] as f64;
    let weight = |i: usize| ((logits[i] as f64 - max) / cfg.temperature).exp();
    let k = if cfg.top_k > 0 { cfg.top_k.min(n) } else { n };
    if k == n && cfg.top_p >= 1.0 {
        // Nothing is cut: draw over the whole vocabulary in id order (one exp per token).
        let w: Vec<f64> = (0..n).map(weight).collect();
        return draw(rng, w.iter().sum(), w.into_iter().enumerate());
    }
    let mut ranked = Ranked::new(logits);
    let total: f64 = if k == n { (0..n).map(weight).sum() } else { ranked.top(k).iter().map(|&i| weight(i)).sum() };
    // Nucleus: the shortest rank prefix (within top-k) whose share of that mass reaches top_p.
    let mut keep = k;
    if cfg.top_p < 1.0 {
        let (mut cum, mut scanned, mut m) = (0.0, 0, 64.min(k));
        'scan: loop {
            let top = ranked.top(m);
            while scanned < m {
                cum += weight(top[scanned]) / total;
                scanned += 1;
                if cum >= cfg.top_p {
                    keep = scanned;
                    break 'scan;
                }
            }
            if m == k {
                break;
            }
            m = (m * 4).min(k);
        }
    }
    let top = ranked.top(keep);
    let kept: f64 = top.iter().map(|&i| weight(i)).sum();
    draw(rng, kept, top.iter().map(|&i| (i, weight(i))))
}

/// Token ids in rank order (highest logit first, lower id first on ties), sorted lazily:
/// only the prefix asked for so far.
struct Ranked<'a> {
    logits: &'a [f32],
    idx: Vec<usize>,
    sorted: usize,
}

impl<'a> Ranked<'a> {
    fn new(logits: &'a [f32]) -> Self {
        Self { logits, idx: (0..logits.len()).collect(), sorted: 0 }
    }

    fn top(&mut self, m: usize) -> &[usize] {
        let m = m.min(self.idx.len());
        if m > self.sorted {
            let logits = self.logits;
            let by_rank = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
            let rest = &mut self.idx[self.sorted..];
            let want = m - self.sorted;
            if want < rest.len() {
                rest.select_nth_unstable_by(want - 1, by_rank);
            }
            rest[..want].sort_unstable_by(by_rank);
            self.sorted = m;
        }
        &self.idx[..m]
    }
}

/// Inverse-CDF draw from unnormalised weights summing to `total`.
fn draw(rng: &mut Rng, total: f64, weights: impl Iterator<Item = (usize, f64)>) -> u32 {
    let u = rng.next_f64() * total;
    let (mut cum, mut last) = (0.0, 0);
    for (i, w) in weights {
        cum += w;
        last = i;
        if u < cum {
            return i as u32;
        }
    }
    last as u32
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0))).map(|(i, _)| i as u32).unwrap_or(0)
}

/// Generate one completion per prompt row (repeat a prompt to get a group) with a decoder-only
/// model or an encoder–decoder. `adapters` selects policy or base.
pub fn generate(
    model: &Model,
    tok: &TokenizerBundle,
    prompts: &[Vec<u32>],
    cfg: &SamplingConfig,
    rng: &mut Rng,
    adapters: bool,
) -> Result<Vec<Completion>> {
    generate_streaming(model, tok, prompts, cfg, rng, adapters, &mut |_, _| {})
}

/// [`generate`], calling `on_token(row, token)` for every token as soon as it is sampled.
pub fn generate_streaming(
    model: &Model,
    tok: &TokenizerBundle,
    prompts: &[Vec<u32>],
    cfg: &SamplingConfig,
    rng: &mut Rng,
    adapters: bool,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<Vec<Completion>> {
    let ctx = ForwardCtx { adapters, dropout_rng: None, checkpoint: None };
    let mut rows = Rows { tok, cfg, on_token, out: vec![vec![]; prompts.len()], finish: vec![None; prompts.len()] };
    match model {
        Model::Causal(m) => decoder_rows(m, prompts, &mut rows, rng, ctx)?,
        Model::Seq2Seq(m) => seq2seq_rows(m, prompts, &mut rows, rng, ctx)?,
    }
    Ok(rows
        .out
        .into_iter()
        .zip(rows.finish)
        .map(|(ids, f)| {
            let text = tok.decode(&ids, true).unwrap_or_default();
            Completion { ids, text, finish: f.unwrap_or(Finish::Length) }
        })
        .collect())
}

/// The rows being generated: the tokens so far and how each row ended.
struct Rows<'a> {
    tok: &'a TokenizerBundle,
    cfg: &'a SamplingConfig,
    on_token: &'a mut dyn FnMut(usize, u32),
    out: Vec<Vec<u32>>,
    finish: Vec<Option<Finish>>,
}

impl Rows<'_> {
    /// Samples the next token of every unfinished row from `logits` [b, vocab]; a finished row is
    /// fed `pad`. Returns the tokens to feed and whether generation is over.
    fn step(&mut self, logits: &Tensor, pad: u32, step: usize, rng: &mut Rng) -> Result<(Vec<u32>, bool)> {
        let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut next = Vec::with_capacity(rows.len());
        for (r, row) in rows.iter().enumerate() {
            if self.finish[r].is_some() {
                next.push(pad);
                continue;
            }
            let t = sample(row, self.cfg, rng);
            self.out[r].push(t);
            (self.on_token)(r, t);
            if self.cfg.eos_ids.contains(&t) {
                self.finish[r] = Some(Finish::Eos);
            } else if !self.cfg.stop_strings.is_empty() {
                let tail_start = self.out[r].len().saturating_sub(16);
                let tail = self.tok.decode(&self.out[r][tail_start..], false).unwrap_or_default();
                if self.cfg.stop_strings.iter().any(|s| tail.contains(s.as_str())) {
                    self.finish[r] = Some(Finish::StopString);
                }
            }
            next.push(t);
        }
        let over = self.finish.iter().all(Option::is_some) || step + 1 >= self.cfg.max_new_tokens;
        Ok((next, over))
    }
}

/// Decoder-only: prompts left-padded (padding is its own attention segment), prefilled once, then
/// one token per step on the KV cache.
fn decoder_rows(
    model: &Decoder,
    prompts: &[Vec<u32>],
    rows: &mut Rows,
    rng: &mut Rng,
    mut ctx: ForwardCtx,
) -> Result<()> {
    let b = prompts.len();
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let pad = rows.tok.pad_id();
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
    let hidden = model.hidden_cached(
        &Tensor::from_vec(ids, (b, width), dev)?,
        &Tensor::from_vec(pos, (b, width), dev)?,
        &segments,
        &mut cache,
        &mut ctx,
    )?;
    let mut logits = model.logits(&hidden.narrow(1, width - 1, 1)?.detach())?.squeeze(1)?;
    let ones = Tensor::ones((b, 1), DType::U32, dev)?;
    for step in 0..rows.cfg.max_new_tokens {
        let (next, over) = rows.step(&logits, pad, step, rng)?;
        if over {
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
    Ok(())
}

/// Encoder–decoder (T5): each prompt is encoded once (right-padded, masked), then the decoder runs
/// one token per step on its KV cache from the decoder start token (the cross-attention keys and
/// values computed once).
fn seq2seq_rows(model: &T5, prompts: &[Vec<u32>], rows: &mut Rows, rng: &mut Rng, mut ctx: ForwardCtx) -> Result<()> {
    let (b, dev) = (prompts.len(), &model.device);
    let pad = model.cfg.pad_token_id;
    let sources: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let (ids, mask, s) = crate::data::pad_sources(&sources, pad);
    let mask = Tensor::from_vec(mask, (b, s), dev)?;
    let enc = model.encode(&Tensor::from_vec(ids, (b, s), dev)?, &mask, &mut ctx)?;
    let mut cache = model.start_decoding(&enc, &mask, &mut ctx)?;
    let mut next = vec![model.cfg.decoder_start_token_id; b];
    for step in 0..rows.cfg.max_new_tokens {
        let h = model.decode_step(&Tensor::from_vec(next, (b, 1), dev)?, &mut cache, &mut ctx)?;
        let over;
        (next, over) = rows.step(&model.logits(&h.detach())?.squeeze(1)?, pad, step, rng)?;
        if over {
            break;
        }
    }
    Ok(())
}

/// The text before the first stop string: the stop string is not part of the answer (generation
/// stops once one appears, so the completion may end with it).
pub fn cut_at_stop(text: &str, stops: &[String]) -> String {
    let end = stops.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min().unwrap_or(text.len());
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_end_before_the_first_stop_string() {
        let stops = vec!["\n\n".to_string(), "###".to_string()];
        assert_eq!(cut_at_stop("Paris### more", &stops), "Paris");
        assert_eq!(cut_at_stop("a\n\nb###", &stops), "a");
        assert_eq!(cut_at_stop("no stop", &stops), "no stop");
    }

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

    /// The lazily ranked prefix keeps exactly the set a full sort would (ties to the lower id),
    /// including a nucleus longer than the first 64-candidate batch, and draws in proportion.
    #[test]
    fn partial_ranking_keeps_what_a_full_sort_keeps() {
        let mut rng = Rng::new(7);
        let logits: Vec<f32> =
            (0..1000).map(|i| if i % 10 == 3 { 1.5 } else { (rng.next_f64() * 2.0) as f32 }).collect();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        for (top_p, top_k) in [(0.3, 0), (0.9, 0), (1.0, 250), (0.5, 400), (1.0, 1)] {
            let k = if top_k > 0 { top_k } else { logits.len() };
            let w: Vec<f64> = order[..k].iter().map(|&i| (logits[i] as f64 - logits[order[0]] as f64).exp()).collect();
            let total: f64 = w.iter().sum();
            let mut keep = k;
            let mut cum = 0.0;
            for (n, x) in w.iter().enumerate() {
                cum += x / total;
                if top_p < 1.0 && cum >= top_p {
                    keep = n + 1;
                    break;
                }
            }
            assert!(keep > 64 || top_k == 1, "case ({top_p}, {top_k}) must cross the first batch");
            let kept: std::collections::HashSet<u32> = order[..keep].iter().map(|&i| i as u32).collect();
            let kept_mass: f64 = w[..keep].iter().sum();
            let mut hits = 0usize;
            for _ in 0..3000 {
                let t = sample(&logits, &cfg(1.0, top_p, top_k), &mut rng);
                assert!(kept.contains(&t), "({top_p}, {top_k}) drew {t} outside the kept set");
                hits += usize::from(t == order[0] as u32);
            }
            let p0 = w[0] / kept_mass;
            assert!((hits as f64 / 3000.0 - p0).abs() < 0.03, "({top_p}, {top_k}): top id {hits}/3000 vs p={p0}");
        }
    }
}
