//! The switches of one forward pass: adapters on or off, training dropout, activation recompute.

use kernels::recompute::SideGrads;

use crate::rng::Rng;

/// Per-forward switches.
#[derive(Clone)]
pub struct ForwardCtx {
    /// Adapters on (policy) or off (the frozen base, e.g. the GRPO reference policy).
    pub adapters: bool,
    /// Some = training: LoRA dropout draws from this RNG.
    pub dropout_rng: Option<Rng>,
    /// Some = activation checkpointing per decoder layer (training without a KV cache): adapter
    /// gradients of recomputed layers arrive here instead of in the backward's GradStore.
    pub checkpoint: Option<SideGrads>,
}

impl ForwardCtx {
    pub fn eval() -> ForwardCtx {
        ForwardCtx { adapters: true, dropout_rng: None, checkpoint: None }
    }

    /// Training: dropout from `rng`; checkpointing when `checkpoint` is Some.
    pub fn train(rng: Rng, checkpoint: Option<SideGrads>) -> ForwardCtx {
        ForwardCtx { adapters: true, dropout_rng: Some(rng), checkpoint }
    }
}
