//! Activation recompute (activation checkpointing): keep a block's input, drop everything inside it, recompute in backward.
//!
//! Math: y = f(x; θ). Forward: the caller runs f on detached x and passes the value in; the graph
//! keeps only x. Backward: recompute y' = f(x') on x' = a fresh variable holding x, take
//! s = Σ(y' ⊙ dy) and backpropagate s, which gives dx = ∂s/∂x' (returned to the outer graph) and
//! dθ = ∂s/∂θ for the block's trainable parameters θ. candle's backward only returns gradients of
//! a custom op's inputs, so dθ is added to a side store, [`SideGrads`], that the training loop
//! reads together with the outer GradStore.
//! Cost: one extra forward of the block per backward. Memory: the block's activations exist only
//! while one block's backward runs, instead of for all blocks from forward to backward.
//! The recompute must reproduce the forward exactly (same dropout masks): the caller hands in a
//! closure holding a snapshot of any RNG state the forward consumed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{bail, Result, Tensor, TensorId, Var};

use crate::custom_backward;

/// Gradients of parameters used inside checkpointed blocks, summed over blocks and backward passes.
#[derive(Clone, Default)]
pub struct SideGrads(Arc<Mutex<HashMap<TensorId, Tensor>>>);

impl SideGrads {
    pub fn new() -> SideGrads {
        SideGrads::default()
    }

    /// Removes and returns the gradient gathered for `param`.
    pub fn take(&self, param: &Tensor) -> Result<Option<Tensor>> {
        match self.0.lock() {
            Ok(mut m) => Ok(m.remove(&param.id())),
            Err(_) => bail!("recompute: side gradient store poisoned"),
        }
    }

    fn add(&self, param: &Tensor, g: Tensor) -> Result<()> {
        let Ok(mut m) = self.0.lock() else { bail!("recompute: side gradient store poisoned") };
        let sum = match m.remove(&param.id()) {
            Some(prev) => (prev + g)?,
            None => g,
        };
        m.insert(param.id(), sum);
        Ok(())
    }
}

/// Wraps `value` = f(x) (computed by the caller on detached x) as a graph node whose backward
/// recomputes `replay(x)` and sends parameter gradients of `params` to `side`.
/// `x` is made a graph node even when it is not tracked, so blocks whose input needs no gradient
/// (the first decoder layer) still train their parameters.
pub fn recompute<F>(x: &Tensor, value: Tensor, params: Vec<Var>, side: SideGrads, replay: F) -> Result<Tensor>
where
    F: Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
{
    let x_in = if x.track_op() { x.clone() } else { Var::from_tensor(x)?.as_tensor().clone() };
    let saved = x.detach();
    custom_backward::unary("recompute", &x_in, value, move |dy| {
        let xv = Var::from_tensor(&saved)?;
        let y = replay(xv.as_tensor())?;
        let s = (y * dy.to_dtype(saved.dtype())?)?.sum_all()?;
        let grads = s.backward()?;
        for p in &params {
            if let Some(g) = grads.get(p.as_tensor()) {
                side.add(p.as_tensor(), g.clone())?;
            }
        }
        match grads.get(xv.as_tensor()) {
            Some(dx) => Ok(dx.clone()),
            None => saved.zeros_like(),
        }
    })
}
