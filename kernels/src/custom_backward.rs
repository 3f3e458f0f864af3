//! Attach a hand-written backward to a value computed without autograd.
//!
//! Math: forward `y = value` (computed by the caller with untracked ops on detached inputs);
//! backward `dx_i = bwd(dy)_i`. The closure receives `dy` and returns the input gradients.
//!
//! Why this shape: candle only builds graph nodes through its own ops or `CustomOp{1,2,3}`
//! (`BackpropOp` cannot be built outside candle), and a custom op's device forward only sees raw
//! storage. So the caller computes the value with ordinary tensor ops (any device) or as a plain f32
//! vector (CPU), and a custom op whose `cpu_fwd`/`cuda_fwd`/`metal_fwd` hands out that value's
//! storage turns it into a graph node.
//!
//! Contract for `bwd`: capture only detached tensors (inputs via `Tensor::detach`), so the ops it
//! runs build no graph of their own; return gradients shaped like the inputs (dtype is fixed up).
//!
//! Memory traffic: a tensor value costs one extra read + write of the output in the forward (the copy;
//! the original is dropped right after, because the op hands its value out exactly once); a host
//! value (`Value::Host`, f32 data of the fused CPU paths) becomes the node's storage as it is. The graph then keeps only
//! what `bwd` captures — by convention detached inputs the graph holds anyway, plus small stats.

use std::sync::Mutex;

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, Layout, MetalStorage, Result, Shape, Storage,
    Tensor,
};

use crate::profile;

/// A forward value: a tensor, or f32 data on the host that the graph node takes over as its storage
/// without the copy a tensor needs (the fused CPU paths build their outputs as plain vectors).
pub enum Value {
    Tensor(Tensor),
    Host { data: Vec<f32>, shape: Shape },
}

impl Value {
    pub fn host(data: Vec<f32>, dims: &[usize]) -> Value {
        Value::Host { data, shape: Shape::from_dims(dims) }
    }

    pub fn into_tensor(self) -> Result<Tensor> {
        match self {
            Value::Tensor(t) => Ok(t),
            Value::Host { data, shape } => Tensor::from_vec(data, shape, &candle_core::Device::Cpu),
        }
    }
}

impl From<Tensor> for Value {
    fn from(t: Tensor) -> Value {
        Value::Tensor(t)
    }
}

type Backward<const N: usize> = Box<dyn Fn(&Tensor) -> Result<[Option<Tensor>; N]> + Send + Sync>;

/// One input: `bwd(dy)` returns the gradient for `x`.
pub fn unary<F>(name: &'static str, x: &Tensor, value: impl Into<Value>, bwd: F) -> Result<Tensor>
where
    F: Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
{
    let value = value.into();
    if !x.track_op() {
        return value.into_tensor();
    }
    x.apply_op1(Surface::<1>::new(name, value, move |g| Ok([Some(bwd(g)?)])))
}

/// Two inputs: `bwd(dy)` returns `[da, db]`; `None` means no gradient for that input.
pub fn binary<F>(name: &'static str, a: &Tensor, b: &Tensor, value: impl Into<Value>, bwd: F) -> Result<Tensor>
where
    F: Fn(&Tensor) -> Result<[Option<Tensor>; 2]> + Send + Sync + 'static,
{
    let value = value.into();
    if !a.track_op() && !b.track_op() {
        return value.into_tensor();
    }
    a.apply_op2(b, Surface::new(name, value, bwd))
}

/// Three inputs: `bwd(dy)` returns `[da, db, dc]`.
pub fn ternary<F>(
    name: &'static str,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    value: impl Into<Value>,
    bwd: F,
) -> Result<Tensor>
where
    F: Fn(&Tensor) -> Result<[Option<Tensor>; 3]> + Send + Sync + 'static,
{
    let value = value.into();
    if !a.track_op() && !b.track_op() && !c.track_op() {
        return value.into_tensor();
    }
    a.apply_op3(b, c, Surface::new(name, value, bwd))
}

/// The custom op: hands out the precomputed value once, then runs the stored backward.
struct Surface<const N: usize> {
    name: &'static str,
    // Taken by the (single) device forward so the graph node does not keep a second copy alive.
    value: Mutex<Option<Value>>,
    bwd: Backward<N>,
    /// The profile label at forward time, so the backward is booked to the same layer.
    label: String,
}

impl<const N: usize> Surface<N> {
    fn new<F>(name: &'static str, value: Value, bwd: F) -> Self
    where
        F: Fn(&Tensor) -> Result<[Option<Tensor>; N]> + Send + Sync + 'static,
    {
        let value = match value {
            Value::Tensor(t) => Value::Tensor(t.detach()),
            host => host,
        };
        Self { name, value: Mutex::new(Some(value)), bwd: Box::new(bwd), label: profile::label() }
    }

    /// The value, handed out once.
    fn take(&self) -> Result<Value> {
        let value = match self.value.lock() {
            Ok(mut slot) => slot.take(),
            Err(_) => bail!("{}: value lock poisoned", self.name),
        };
        match value {
            Some(v) => Ok(v),
            None => bail!("{}: forward value already consumed", self.name),
        }
    }

    /// The value's storage on the device `pick` selects: host data as it is, a tensor densely copied.
    fn surface<S>(&self, pick: fn(&Storage) -> Option<&S>, host: fn(Vec<f32>) -> Option<S>) -> Result<(S, Shape)>
    where
        S: BackendStorage,
        S::Device: BackendDevice<Storage = S>,
    {
        let value = match self.take()? {
            Value::Host { data, shape } => match host(data) {
                Some(s) => return Ok((s, shape)),
                None => bail!("{}: a host value cannot be the output of a device op", self.name),
            },
            Value::Tensor(t) => t,
        };
        let (storage, layout) = value.storage_and_layout();
        let Some(src) = pick(&storage) else { bail!("{}: value is on a different device than the inputs", self.name) };
        Ok((dense_copy(src, layout)?, layout.shape().clone()))
    }

    /// Runs the backward and checks each gradient against its input (shape, dtype, tracking).
    fn grads(&self, args: [&Tensor; N], grad: &Tensor) -> Result<[Option<Tensor>; N]> {
        let mut grads = profile::timed(profile::Phase::Backward, self.name, &self.label, || (self.bwd)(grad))?;
        for (g, arg) in grads.iter_mut().zip(args) {
            // An untracked input gets no entry in the GradStore.
            if !arg.track_op() {
                *g = None;
            }
            if let Some(t) = g.as_mut() {
                if t.dims() != arg.dims() {
                    bail!("{}: gradient shape {:?} != input shape {:?}", self.name, t.dims(), arg.dims())
                }
                if t.dtype() != arg.dtype() {
                    *t = t.to_dtype(arg.dtype())?;
                }
            }
        }
        Ok(grads)
    }
}

/// Copies a strided view into a fresh contiguous buffer on the same device.
fn dense_copy<S>(src: &S, layout: &Layout) -> Result<S>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
    let mut dst = src.device().zeros_impl(layout.shape(), src.dtype())?;
    src.copy_strided_src(&mut dst, 0, layout)?;
    Ok(dst)
}

fn cpu_host(data: Vec<f32>) -> Option<CpuStorage> {
    Some(CpuStorage::F32(data))
}

fn no_host<S>(_: Vec<f32>) -> Option<S> {
    None
}

fn cpu(s: &Storage) -> Option<&CpuStorage> {
    match s {
        Storage::Cpu(s) => Some(s),
        _ => None,
    }
}

fn cuda(s: &Storage) -> Option<&CudaStorage> {
    match s {
        Storage::Cuda(s) => Some(s),
        _ => None,
    }
}

fn metal(s: &Storage) -> Option<&MetalStorage> {
    match s {
        Storage::Metal(s) => Some(s),
        _ => None,
    }
}

impl CustomOp1 for Surface<1> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.surface(cpu, cpu_host)
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.surface(cuda, no_host)
    }
    fn metal_fwd(&self, _: &MetalStorage, _: &Layout) -> Result<(MetalStorage, Shape)> {
        self.surface(metal, no_host)
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let [g] = self.grads([arg], grad)?;
        Ok(g)
    }
}

impl CustomOp2 for Surface<2> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.surface(cpu, cpu_host)
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.surface(cuda, no_host)
    }
    fn metal_fwd(&self, _: &MetalStorage, _: &Layout, _: &MetalStorage, _: &Layout) -> Result<(MetalStorage, Shape)> {
        self.surface(metal, no_host)
    }
    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let [ga, gb] = self.grads([a, b], grad)?;
        Ok((ga, gb))
    }
}

impl CustomOp3 for Surface<3> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.surface(cpu, cpu_host)
    }
    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.surface(cuda, no_host)
    }
    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        self.surface(metal, no_host)
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [ga, gb, gc] = self.grads([a, b, c], grad)?;
        Ok((ga, gb, gc))
    }
}
