//! AdamW with decoupled weight decay (f32 moments) and global grad-norm clipping; the
//! learning-rate schedule lives with the loops (`train::schedule`).

use candle_core::{DType, Result, Tensor, Var};

use kernels::recompute::SideGrads;

pub use kernels::adamw::AdamWConfig;

/// AdamW state for a fixed, ordered list of parameters.
pub struct AdamW {
    pub cfg: AdamWConfig,
    params: Vec<Var>,
    /// First and second moments, f32, same order as `params` (separate buffers: the CUDA update
    /// writes them in place).
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Optimizer steps taken (for bias correction).
    pub step: u64,
}

impl AdamW {
    pub fn new(params: Vec<Var>, cfg: AdamWConfig) -> Result<AdamW> {
        let zeros = || params.iter().map(|p| p.zeros_like()?.to_dtype(DType::F32)).collect::<Result<Vec<_>>>();
        let (m, v) = (zeros()?, zeros()?);
        Ok(AdamW { cfg, params, m, v, step: 0 })
    }

    pub fn params(&self) -> &[Var] {
        &self.params
    }

    /// Clips the gradients (same order as params) to a global norm of `max_norm` (≤ 0: no
    /// clipping), then one AdamW update as torch.optim.AdamW (`kernels::adamw`, fused on CUDA).
    /// Returns the global gradient norm before clipping.
    pub fn step(&mut self, grads: &[Tensor], lr: f64, max_norm: f64) -> Result<f64> {
        self.step += 1;
        let step = kernels::adamw::Step {
            params: &self.params,
            grads,
            m: &mut self.m,
            v: &mut self.v,
            t: self.step,
            lr,
            max_norm,
        };
        kernels::adamw::step(&self.cfg, step)
    }
}

/// Add this backward pass's gradients of `vars` to `acc` (a parameter that got none adds zeros).
/// With activation checkpointing, gradients of parameters inside recomputed layers come from `side`.
pub fn accumulate(
    acc: &mut Vec<Tensor>,
    store: &candle_core::backprop::GradStore,
    vars: &[Var],
    side: Option<&SideGrads>,
) -> Result<()> {
    for (i, v) in vars.iter().enumerate() {
        let from_side = match side {
            Some(s) => s.take(v.as_tensor())?,
            None => None,
        };
        let g = match (store.get(v.as_tensor()), from_side) {
            (Some(g), Some(s)) => (g + s)?,
            (Some(g), None) => g.clone(),
            (None, Some(s)) => s,
            (None, None) => v.zeros_like()?,
        };
        if acc.len() <= i {
            acc.push(g);
        } else {
            acc[i] = (&acc[i] + g)?;
        }
    }
    Ok(())
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
        opt.step(std::slice::from_ref(&g), 0.01, 0.0).unwrap();
        // Step 1: m̂ = g, v̂ = g², update = sign(g) (up to ε); p = p(1 − 0.001) − 0.01·sign(g).
        let got = p.as_tensor().to_vec1::<f32>().unwrap();
        assert!((got[0] - (1.0 * 0.999 - 0.01)).abs() < 1e-6, "{got:?}");
        assert!((got[1] - (-2.0 * 0.999 + 0.01)).abs() < 1e-6, "{got:?}");
        opt.step(&[g], 0.01, 0.0).unwrap();
        // Step 2 with the same g: m̂ = g and v̂ = g² again, so the update is sign(g) again.
        let got2 = p.as_tensor().to_vec1::<f32>().unwrap();
        assert!((got2[0] - ((1.0 * 0.999 - 0.01) * 0.999 - 0.01)).abs() < 1e-6, "{got2:?}");
    }

    #[test]
    fn clipping_scales_gradients_before_the_update() {
        // g = (3, 4), norm 5, max_norm 1 → g' = (0.6, 0.8); with β1 = β2 = 0 the update is
        // m/(√v + ε) = sign(g') = (1, 1) regardless, so check the norm and the moments instead.
        let p = Var::from_vec(vec![0.0f32, 0.0], 2, &Device::Cpu).unwrap();
        let cfg = AdamWConfig { beta1: 0.0, beta2: 0.0, eps: 1e-8, weight_decay: 0.0 };
        let mut opt = AdamW::new(vec![p], cfg).unwrap();
        let g = Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap();
        let norm = opt.step(&[g], 0.1, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let m = opt.m[0].to_vec1::<f32>().unwrap();
        assert!((m[0] - 0.6).abs() < 1e-5 && (m[1] - 0.8).abs() < 1e-5, "{m:?}");
    }
}
