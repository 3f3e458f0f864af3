//! Measured memory guarantees, with a counting global allocator. Counts are per thread (the test
//! thread allocates every tensor it keeps), so tests running beside it do not mix in.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use crate::common::reference;
use crate::common::Rng;
use candle_core::{DType, Device, Result, Tensor, Var};
use kernels::{cross_entropy::linear_log_probs, frozen_linear::frozen_linear};

struct Counting;

thread_local! {
    // Bytes this thread holds (frees of other threads' blocks can make it dip below zero).
    static CURRENT: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn grew(bytes: usize) {
    let now = CURRENT.get() + bytes as isize;
    CURRENT.set(now);
    PEAK.set(PEAK.get().max(now));
}

fn shrank(bytes: usize) {
    CURRENT.set(CURRENT.get() - bytes as isize);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        shrank(layout.size());
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak heap bytes above the level at entry while `f` runs (its results dropped inside).
fn peak_during(f: impl FnOnce()) -> usize {
    let base = CURRENT.get();
    PEAK.set(base);
    f();
    (PEAK.get() - base).max(0) as usize
}

type Head = fn(&Tensor, &Tensor, &Tensor, usize) -> Result<Tensor>;

#[test]
fn chunked_log_probs_never_hold_full_logits() {
    let (n, v, d, chunk) = (512, 4096, 64, 64);
    let mut rng = Rng::new(61);
    let h = Var::from_tensor(&rng.tensor(&[n, d], 1.0, DType::F32)).unwrap();
    let w = rng.tensor(&[v, d], 0.1, DType::F32);
    let t = Tensor::new(rng.u32s(n, v).as_slice(), &Device::Cpu).unwrap();
    let run = |f: Head| {
        let grads = f(&h, &w, &t, chunk).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&h).is_some());
    };
    // Warm up thread pools and matmul scratch space so they are not charged to either side.
    run(linear_log_probs);
    run(reference::linear_log_probs);

    let chunked = peak_during(|| run(linear_log_probs));
    let full = peak_during(|| run(reference::linear_log_probs));
    let logits_bytes = n * v * 4;
    eprintln!("peak heap: chunked {chunked} B, reference {full} B, n·v·4 = {logits_bytes} B");
    assert!(chunked < logits_bytes, "chunked peak {chunked} B >= full logits {logits_bytes} B");
    assert!(full > logits_bytes, "reference peak {full} B should exceed {logits_bytes} B");
}

#[test]
fn frozen_linear_backward_allocates_no_weight_gradient() {
    // A weight well above the CPU GEMM's packing buffers (capped by cache sizes; a 512² one is packed whole).
    let (rows, out_f, in_f) = (4, 2048, 2048);
    let mut rng = Rng::new(62);
    let x = Var::from_tensor(&rng.tensor(&[rows, in_f], 1.0, DType::F32)).unwrap();
    let w = rng.tensor(&[out_f, in_f], 0.1, DType::F32);
    let run = |f: fn(&Tensor, &Tensor, Option<&Tensor>) -> Result<Tensor>| {
        let grads = f(&x, &w, None).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_some());
    };
    run(frozen_linear);
    run(reference::frozen_linear);

    let ours = peak_during(|| run(frozen_linear));
    let matmul = peak_during(|| run(reference::frozen_linear));
    let weight_bytes = out_f * in_f * 4;
    eprintln!("peak heap: frozen_linear {ours} B, reference {matmul} B, weight {weight_bytes} B");
    assert!(ours < weight_bytes / 4, "frozen_linear peak {ours} B is weight-sized ({weight_bytes} B)");
    assert!(matmul >= weight_bytes, "reference peak {matmul} B should include a weight gradient");
}
