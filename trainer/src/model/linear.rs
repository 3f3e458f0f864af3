//! A decoder projection: a frozen base weight plus an optional LoRA adapter.

use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};

use super::forward::ForwardCtx;
use super::ModelError;
use crate::lora::LoraAdapter;

/// The frozen base weight. QLoRA adds an NF4 variant beside `Dense`; callers only see `Linear`.
pub enum BaseWeight {
    /// `w` [out, in] in the compute dtype, `bias` [out].
    Dense { w: Tensor, bias: Option<Tensor> },
    /// QLoRA: NF4 weight dequantised on the fly into `compute` dtype; `bias` [out] in `compute`.
    Nf4 { w: kernels::nf4_linear::Nf4Packed, bias: Option<Tensor>, compute: DType },
}

pub struct Linear {
    /// Module path as in the HF checkpoint, e.g. `model.layers.0.self_attn.q_proj`.
    pub name: String,
    pub in_features: usize,
    pub out_features: usize,
    pub base: BaseWeight,
    pub lora: Option<LoraAdapter>,
}

impl Linear {
    /// y = base(x) + scale·B(A(dropout(x))). The base never receives a weight gradient.
    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        if let (BaseWeight::Dense { w, bias }, Some(lora)) = (&self.base, &self.lora) {
            if ctx.adapters {
                let branch = lora.branch(ctx.dropout_rng.as_mut());
                return kernels::adapted_linear::adapted_linear(x, w, bias.as_ref(), branch);
            }
        }
        let y = match &self.base {
            BaseWeight::Dense { w, bias } => kernels::frozen_linear::frozen_linear(x, w, bias.as_ref())?,
            BaseWeight::Nf4 { w, bias, compute } => kernels::nf4_linear::nf4_linear(x, w, bias.as_ref(), *compute)?,
        };
        match &self.lora {
            Some(lora) if ctx.adapters => {
                let delta = lora.forward(x, ctx.dropout_rng.as_mut())?.to_dtype(y.dtype())?;
                y + delta
            }
            _ => Ok(y),
        }
    }

    /// The dense base weight in f32 (dequantised for quantised bases).
    pub fn base_weight_f32(&self) -> Result<Tensor> {
        match &self.base {
            BaseWeight::Dense { w, .. } => w.to_dtype(DType::F32),
            BaseWeight::Nf4 { w, .. } => w.dequantize(DType::F32),
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        match &self.base {
            BaseWeight::Dense { bias, .. } | BaseWeight::Nf4 { bias, .. } => bias.as_ref(),
        }
    }

    pub fn is_nf4(&self) -> bool {
        matches!(self.base, BaseWeight::Nf4 { .. })
    }

    /// W + scale·B·A in f32 (the base weight alone without an adapter).
    pub fn merged_weight_f32(&self) -> Result<Tensor> {
        let w = self.base_weight_f32()?;
        match &self.lora {
            Some(lora) => w + lora.delta_weight()?,
            None => Ok(w),
        }
    }
}

/// Set every adapter from a PEFT adapter file (PEFT's tensor keys for each module path): resume, or
/// loading a trained adapter, for every model family.
pub fn load_peft_adapter(
    path: &Path,
    adapters: &[(&str, &LoraAdapter)],
    device: &Device,
) -> std::result::Result<(), ModelError> {
    let tensors = candle_core::safetensors::load(path, device)
        .map_err(|e| ModelError::Config { path: path.to_path_buf(), problem: format!("invalid safetensors: {e}") })?;
    for (module, lora) in adapters {
        for (which, var) in [('A', &lora.a), ('B', &lora.b)] {
            let key = crate::lora::peft_key(module, which);
            let t = tensors.get(&key).ok_or_else(|| ModelError::MissingTensor {
                dir: path.to_path_buf(),
                name: key.clone(),
                hint: "the adapter does not match this model's target_modules / rank".into(),
            })?;
            if t.dims() != var.dims() {
                return Err(ModelError::BadShape {
                    dir: path.to_path_buf(),
                    name: key,
                    found: t.dims().to_vec(),
                    expected: var.dims().to_vec(),
                });
            }
            var.set(&t.to_dtype(DType::F32)?)?;
        }
    }
    Ok(())
}
