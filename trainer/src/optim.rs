//! AdamW with decoupled weight decay (f32 moments), global grad-norm clipping,
//! and learning-rate schedules with warmup.

use candle_core::{DType, Result, Tensor, Var};

use crate::spec::Scheduler;

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// AdamW state for a fixed, ordered list of parameters.
pub struct AdamW {
    pub cfg: AdamWConfig,
    params: Vec<Var>,
    /// First and second moments, f32, same order as `params`.
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Optimizer steps taken (for bias correction).
    pub step: u64,
}

impl AdamW {
    pub fn new(params: Vec<Var>, cfg: AdamWConfig) -> Result<AdamW> {
        let m = params.iter().map(|p| p.zeros_like()?.to_dtype(DType::F32)).collect::<Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(AdamW { cfg, params, m, v, step: 0 })
    }

    pub fn params(&self) -> &[Var] {
        &self.params
    }

    /// One update with the given gradients (same order as params), as torch.optim.AdamW:
    /// p ← p·(1 − lr·wd); m ← β1 m + (1−β1) g; v ← β2 v + (1−β2) g²; p ← p − lr·m̂/(√v̂ + ε).
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        for (i, (p, g)) in self.params.iter().zip(grads).enumerate() {
            let g = g.to_dtype(DType::F32)?;
            self.m[i] = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?;
            self.v[i] = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let denom = ((&self.v[i] / bc2)?.sqrt()? + self.cfg.eps)?;
            let update = ((&self.m[i] / bc1)? / denom)?;
            let decayed = (p.as_tensor() * (1.0 - lr * self.cfg.weight_decay))?;
            p.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }
}

/// Add this backward pass's gradients of `vars` to `acc` (a parameter that got none adds zeros).
pub fn accumulate(acc: &mut Vec<Tensor>, store: &candle_core::backprop::GradStore, vars: &[Var]) -> Result<()> {
    for (i, v) in vars.iter().enumerate() {
        let g = match store.get(v.as_tensor()) {
            Some(g) => g.clone(),
            None => v.zeros_like()?,
        };
        if acc.len() <= i {
            acc.push(g);
        } else {
            acc[i] = (&acc[i] + g)?;
        }
    }
    Ok(())
}

/// √Σ‖g‖² over all gradients, in f64.
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut total = 0f64;
    for g in grads {
        total += g.to_dtype(DType::F32)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    Ok(total.sqrt())
}

/// Scale gradients so their global norm is at most `max_norm` (torch's clip_grad_norm_ rule). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}

/// Learning rate at optimizer step `step` (0-based, the step about to be taken), as transformers' schedulers.
pub fn lr_at(step: u64, total: u64, warmup: u64, peak: f64, kind: Scheduler) -> f64 {
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / total.saturating_sub(warmup).max(1) as f64;
    match kind {
        Scheduler::Constant => peak,
        Scheduler::Linear => peak * (1.0 - progress).max(0.0),
        Scheduler::Cosine => peak * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adamw_matches_hand_computed_first_steps() {
        let p = Var::from_vec(vec![1.0f32, -2.0], 2, &Device::Cpu).unwrap();
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
        let mut opt = AdamW::new(vec![p.clone()], cfg).unwrap();
        let g = Tensor::new(&[0.5f32, -1.0], &Device::Cpu).unwrap();
        opt.step(std::slice::from_ref(&g), 0.01).unwrap();
        // Step 1: m̂ = g, v̂ = g², update = sign(g) (up to ε); p = p(1 − 0.001) − 0.01·sign(g).
        let got = p.as_tensor().to_vec1::<f32>().unwrap();
        assert!((got[0] - (1.0 * 0.999 - 0.01)).abs() < 1e-6, "{got:?}");
        assert!((got[1] - (-2.0 * 0.999 + 0.01)).abs() < 1e-6, "{got:?}");
        opt.step(&[g], 0.01).unwrap();
        // Step 2 with the same g: m̂ = g and v̂ = g² again, so the update is sign(g) again.
        let got2 = p.as_tensor().to_vec1::<f32>().unwrap();
        assert!((got2[0] - ((1.0 * 0.999 - 0.01) * 0.999 - 0.01)).abs() < 1e-6, "{got2:?}");
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let mut gs = vec![Tensor::new(&[3.0f32], &Device::Cpu).unwrap(), Tensor::new(&[4.0f32], &Device::Cpu).unwrap()];
        let n = clip_grad_norm(&mut gs, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        assert!((global_norm(&gs).unwrap() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn schedules() {
        assert_eq!(lr_at(0, 100, 10, 1.0, Scheduler::Linear), 0.0);
        assert!((lr_at(5, 100, 10, 1.0, Scheduler::Linear) - 0.5).abs() < 1e-12);
        assert!((lr_at(10, 100, 10, 1.0, Scheduler::Linear) - 1.0).abs() < 1e-12);
        assert!((lr_at(55, 100, 10, 1.0, Scheduler::Linear) - 0.5).abs() < 1e-12);
        assert!((lr_at(55, 100, 10, 1.0, Scheduler::Cosine) - 0.5).abs() < 1e-12);
        assert_eq!(lr_at(99, 100, 0, 2.0, Scheduler::Constant), 2.0);
    }
}
