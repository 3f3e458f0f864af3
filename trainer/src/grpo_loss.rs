//! GRPO's group-relative advantages and clipped policy loss with a KL term,
//! following TRL's GRPOTrainer names and normalisations.
//!
//! Per token: ρ = exp(logp − logp_old), l = −min(ρ·A, clip(ρ, 1−ε, 1+ε_high)·A) + β·KL,
//! KL = exp(ref − logp) − (ref − logp) − 1 (the k3 estimator; ref = adapters off).

use candle_core::{DType, Result, Tensor, D};

use crate::choice::choice_enum;

choice_enum! {
    /// `scale_rewards`: how advantages are scaled (`true`/`false` are TRL's older names).
    pub enum ScaleRewards {
        /// (r − group mean) / (group std + 1e-4)
        Group = "group" | "true",
        /// (r − group mean) / (batch std + 1e-4)
        Batch = "batch",
        /// r − group mean
        None = "none" | "false",
    }
}

choice_enum! {
    /// `loss_type`: how token losses are averaged.
    pub enum LossType {
        /// Mean over each sequence's tokens, then over sequences.
        Grpo = "grpo",
        /// Sum over tokens / tokens in the micro-batch.
        Bnpo = "bnpo",
        /// Sum over tokens / (sequences × max_completion_length).
        DrGrpo = "dr_grpo",
        /// Sum over tokens / completion tokens of the whole optimizer step.
        Dapo = "dapo",
    }
}

/// Group-normalised advantages; `rewards` are laid out group by group (`group` completions per prompt).
/// Standard deviations are unbiased (Bessel-corrected), as torch's `std`.
pub fn advantages(rewards: &[f64], group: usize, scale: ScaleRewards) -> Vec<f64> {
    advantages_in_step(rewards, rewards, group, scale)
}

/// [`advantages`] of one rank's `rewards`, where `step` holds every reward of the optimizer step
/// (all ranks'): the batch standard deviation is the whole step's, groups stay within a rank.
pub fn advantages_in_step(rewards: &[f64], step: &[f64], group: usize, scale: ScaleRewards) -> Vec<f64> {
    let std = |v: &[f64]| -> f64 {
        if v.len() < 2 {
            return 0.0;
        }
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
    };
    let batch_std = std(step);
    rewards
        .chunks(group.max(1))
        .flat_map(|g| {
            let mean = g.iter().sum::<f64>() / g.len() as f64;
            let denom = match scale {
                ScaleRewards::Group => std(g) + 1e-4,
                ScaleRewards::Batch => batch_std + 1e-4,
                ScaleRewards::None => 1.0,
            };
            g.iter().map(move |r| (r - mean) / denom).collect::<Vec<_>>()
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
pub struct LossConfig {
    pub epsilon: f64,
    pub epsilon_high: f64,
    pub beta: f64,
    pub loss_type: LossType,
    pub max_completion_length: usize,
    /// Micro-batches per optimizer step (TRL divides the grpo/bnpo/dr_grpo losses by it).
    pub accumulation_steps: usize,
    /// Completion tokens of the whole optimizer step (the dapo normaliser).
    pub step_tokens: f64,
}

/// Statistics of one loss evaluation (over masked tokens).
#[derive(Debug, Clone, Copy, Default)]
pub struct LossStats {
    pub kl: f64,
    pub clip_fraction: f64,
    pub tokens: f64,
}

/// The GRPO loss for a micro-batch. All per-token tensors are [B, T] f32; `adv` is [B]; `mask` is 1 on completion tokens.
pub fn grpo_loss(
    logp: &Tensor,
    old_logp: &Tensor,
    ref_logp: Option<&Tensor>,
    adv: &Tensor,
    mask: &Tensor,
    cfg: &LossConfig,
) -> Result<(Tensor, LossStats)> {
    let (b, _t) = logp.dims2()?;
    let adv = adv.unsqueeze(1)?;
    let ratio = (logp - old_logp)?.exp()?;
    let clipped = ratio.clamp(1.0 - cfg.epsilon, 1.0 + cfg.epsilon_high)?;
    let l1 = ratio.broadcast_mul(&adv)?;
    let l2 = clipped.broadcast_mul(&adv)?;
    let mut per_token = l1.minimum(&l2)?.neg()?;
    let mut kl_mean = 0.0;
    let tokens = mask.sum_all()?.to_scalar::<f32>()? as f64;
    if let (Some(r), true) = (ref_logp, cfg.beta != 0.0) {
        let d = (r - logp)?;
        let kl = ((d.exp()? - &d)? - 1.0)?;
        kl_mean = kl.detach().mul(mask)?.sum_all()?.to_scalar::<f32>()? as f64 / tokens.max(1.0);
        per_token = (per_token + (kl * cfg.beta)?)?;
    }
    let masked = per_token.mul(mask)?;
    let ga = cfg.accumulation_steps.max(1) as f64;
    let loss = match cfg.loss_type {
        LossType::Grpo => {
            let per_seq = masked.sum(D::Minus1)?.div(&mask.sum(D::Minus1)?.clamp(1.0, f64::INFINITY)?)?;
            (per_seq.mean_all()? / ga)?
        }
        LossType::Bnpo => (masked.sum_all()? / (tokens.max(1.0) * ga))?,
        LossType::DrGrpo => (masked.sum_all()? / (b as f64 * cfg.max_completion_length as f64 * ga))?,
        LossType::Dapo => (masked.sum_all()? / cfg.step_tokens.max(1.0))?,
    };
    // Clipping is active where the ratio left the trust region in the direction the advantage pushes.
    let r = ratio.detach().to_dtype(DType::F32)?;
    let a = adv.broadcast_as(r.shape())?;
    let low = r.lt(1.0 - cfg.epsilon)?.to_dtype(DType::F32)?.mul(&a.lt(0.0)?.to_dtype(DType::F32)?)?;
    let high = r.gt(1.0 + cfg.epsilon_high)?.to_dtype(DType::F32)?.mul(&a.gt(0.0)?.to_dtype(DType::F32)?)?;
    let clipped_tokens = (low + high)?.mul(mask)?.sum_all()?.to_scalar::<f32>()? as f64;
    Ok((loss, LossStats { kl: kl_mean, clip_fraction: clipped_tokens / tokens.max(1.0), tokens }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn advantages_by_hand() {
        // Group [1, 0, 0, 1]: mean 0.5, unbiased std √(1/3) = 0.57735.
        let a = advantages(&[1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0], 4, ScaleRewards::Group);
        let s = (1.0f64 / 3.0).sqrt() + 1e-4;
        assert!((a[0] - 0.5 / s).abs() < 1e-12 && (a[1] + 0.5 / s).abs() < 1e-12);
        assert!(a[4..].iter().all(|x| *x == 0.0), "identical rewards give zero advantage");
        let n = advantages(&[1.0, 3.0], 2, ScaleRewards::None);
        assert_eq!(n, vec![-1.0, 1.0]);
        // Batch scaling: std over all 4 rewards [1,3,5,7] = 2.582; group means 2 and 6.
        let b = advantages(&[1.0, 3.0, 5.0, 7.0], 2, ScaleRewards::Batch);
        let bs = (20.0f64 / 3.0).sqrt() + 1e-4;
        assert!((b[0] + 1.0 / bs).abs() < 1e-12 && (b[3] - 1.0 / bs).abs() < 1e-12);
    }

    fn t(v: &[f32], shape: (usize, usize)) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }

    fn cfg(loss_type: LossType) -> LossConfig {
        LossConfig {
            epsilon: 0.2,
            epsilon_high: 0.2,
            beta: 0.0,
            loss_type,
            max_completion_length: 4,
            accumulation_steps: 1,
            step_tokens: 3.0,
        }
    }

    #[test]
    fn loss_variants_by_hand() {
        // Two sequences; logp == old_logp so ρ = 1 and each token's loss is −A.
        let lp = t(&[-1.0, -2.0, -3.0, -1.0, -1.0, -1.0], (2, 3));
        let adv = Tensor::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let mask = t(&[1.0, 1.0, 0.0, 1.0, 0.0, 0.0], (2, 3));
        let run =
            |c: LossConfig| grpo_loss(&lp, &lp, None, &adv, &mask, &c).unwrap().0.to_scalar::<f32>().unwrap() as f64;
        // Token losses: seq0 [−1, −1], seq1 [+2]. Sum = 0, tokens 3.
        assert!((run(cfg(LossType::Grpo)) - ((-1.0 + 2.0) / 2.0)).abs() < 1e-6); // mean(−1, 2)
        assert!(run(cfg(LossType::Bnpo)).abs() < 1e-6); // 0 / 3
        assert!(run(cfg(LossType::DrGrpo)).abs() < 1e-6); // 0 / (2·4)
        let mut c = cfg(LossType::Grpo);
        c.accumulation_steps = 2;
        assert!((run(c) - 0.25).abs() < 1e-6, "divided by accumulation steps");
        let mask1 = t(&[1.0, 1.0, 1.0, 0.0, 0.0, 0.0], (2, 3));
        let l = grpo_loss(&lp, &lp, None, &adv, &mask1, &cfg(LossType::Dapo)).unwrap().0.to_scalar::<f32>().unwrap();
        assert!((l as f64 + 1.0).abs() < 1e-6, "dapo: −3 / step_tokens 3");
        let l = grpo_loss(&lp, &lp, None, &adv, &mask1, &cfg(LossType::DrGrpo)).unwrap().0.to_scalar::<f32>().unwrap();
        assert!((l as f64 + 3.0 / 8.0).abs() < 1e-6, "dr_grpo: −3 / (2·4)");
    }

    #[test]
    fn clipping_and_kl_at_known_inputs() {
        // ρ = e^{0.5} ≈ 1.6487 > 1.2 with A = +1: clipped to 1.2 → loss −1.2. ρ = e^{−0.5} ≈ 0.6065 < 0.8 with A = −1:
        // min(−0.6065, −0.8) = −0.8 → loss +0.8.
        let old = t(&[-1.0, -1.0], (2, 1));
        let new = t(&[-0.5, -1.5], (2, 1));
        let adv = Tensor::new(&[1.0f32, -1.0], &Device::Cpu).unwrap();
        let mask = t(&[1.0, 1.0], (2, 1));
        let (loss, stats) = grpo_loss(&new, &old, None, &adv, &mask, &cfg(LossType::Bnpo)).unwrap();
        assert!((loss.to_scalar::<f32>().unwrap() as f64 - (-1.2 + 0.8) / 2.0).abs() < 1e-6);
        assert!((stats.clip_fraction - 1.0).abs() < 1e-12);
        // KL(ref = −1, logp = −0.5): d = −0.5 → e^{−0.5} + 0.5 − 1 = 0.106531; (ref = −1, logp = −1.5): d = 0.5 → e^{0.5} − 1.5 = 0.148721.
        let mut c = cfg(LossType::Bnpo);
        c.beta = 0.1;
        let (loss_kl, stats) = grpo_loss(&new, &old, Some(&old), &adv, &mask, &c).unwrap();
        let kl = ((-0.5f64).exp() + 0.5 - 1.0 + (0.5f64).exp() - 0.5 - 1.0) / 2.0;
        assert!((stats.kl - kl).abs() < 1e-6, "{}", stats.kl);
        assert!((loss_kl.to_scalar::<f32>().unwrap() as f64 - (-0.2 + 0.1 * kl)).abs() < 1e-6);
    }
}
