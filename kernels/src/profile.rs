//! Wall time per op, forward and backward, for the CPU step breakdown (`oxtune-bench lora --profile`).
//!
//! Off unless [`enable`] is called: then every op of this crate adds its forward time (at its entry
//! point) and its backward time (in `custom_backward`) to a table keyed by (phase, op, label). The
//! label is whatever [`set_label`] last set on the calling thread when the op's forward ran (the
//! decoder sets "layer N"), so a backward is booked to the layer whose forward made it. CPU ops are
//! synchronous, so the times are real; on a GPU they would only measure launches.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<BTreeMap<Key, Tally>> = Mutex::new(BTreeMap::new());

thread_local! {
    static LABEL: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Forward,
    Backward,
    Optimizer,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::Optimizer => "optimizer",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub phase: Phase,
    pub op: &'static str,
    pub label: String,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub calls: u64,
    pub seconds: f64,
}

/// Turns recording on or off (off by default) and empties the table.
pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
    take();
}

pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The label ops on this thread are booked under from now on ("" = none).
pub fn set_label(label: &str) {
    if enabled() {
        LABEL.with(|l| label.clone_into(&mut l.borrow_mut()));
    }
}

/// The calling thread's label (empty when recording is off).
pub(crate) fn label() -> String {
    if enabled() {
        LABEL.with(|l| l.borrow().clone())
    } else {
        String::new()
    }
}

/// Runs `f`, booking its wall time to (phase, op, label) when recording is on.
pub(crate) fn timed<T>(phase: Phase, op: &'static str, label: &str, f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    let start = Instant::now();
    let out = f();
    let seconds = start.elapsed().as_secs_f64();
    if let Ok(mut table) = TABLE.lock() {
        let t = table.entry(Key { phase, op, label: label.to_string() }).or_default();
        t.calls += 1;
        t.seconds += seconds;
    }
    out
}

/// A forward pass of `op` under the thread's current label.
pub(crate) fn forward<T>(op: &'static str, f: impl FnOnce() -> T) -> T {
    timed(Phase::Forward, op, &label(), f)
}

/// Everything recorded since the last `take` (or `enable`), and a fresh table.
pub fn take() -> Vec<(Key, Tally)> {
    match TABLE.lock() {
        Ok(mut table) => std::mem::take(&mut *table).into_iter().collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn books_calls_under_phase_op_and_label_only_when_on() {
        // One test owns the global switch, so parallel tests cannot interleave with it.
        forward("idle", || ());
        enable(true);
        set_label("layer 0");
        let v = forward("op_a", || 7);
        assert_eq!(v, 7);
        forward("op_a", || ());
        timed(Phase::Backward, "op_a", "layer 0", || ());
        set_label("");
        forward("op_b", || ());
        let got = take();
        enable(false);
        let find = |phase, op: &str, label: &str| {
            got.iter().find(|(k, _)| k.phase == phase && k.op == op && k.label == label).map(|(_, t)| t.calls)
        };
        assert_eq!(find(Phase::Forward, "op_a", "layer 0"), Some(2));
        assert_eq!(find(Phase::Backward, "op_a", "layer 0"), Some(1));
        assert_eq!(find(Phase::Forward, "op_b", ""), Some(1));
        assert_eq!(find(Phase::Forward, "idle", ""), None);
        assert_eq!(got.len(), 3);
    }
}
