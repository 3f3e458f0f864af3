//! Ranks as threads of one process: each deposits its buffer, waits for the others, and sums all
//! of them in rank order (0, 1, …), so every rank holds the same bits and a run reproduces
//! exactly. A rank that fails aborts the group: the others get [`DistError::PeerFailed`] instead
//! of waiting for it forever.

use std::sync::{Arc, Condvar, Mutex};

use super::{Collective, DistError};

struct State {
    slots: Vec<Vec<f32>>,
    arrived: usize,
    generation: u64,
    failed: Option<(usize, String)>,
}

struct Shared {
    world: usize,
    state: Mutex<State>,
    turn: Condvar,
}

/// One rank of an in-process group (see the module docs).
pub struct ThreadGroup {
    rank: usize,
    shared: Arc<Shared>,
}

impl ThreadGroup {
    /// The `world` members of a new group, rank 0 first.
    pub fn new(world: usize) -> Vec<ThreadGroup> {
        let state = State { slots: vec![Vec::new(); world], arrived: 0, generation: 0, failed: None };
        let shared = Arc::new(Shared { world, state: Mutex::new(state), turn: Condvar::new() });
        (0..world).map(|rank| ThreadGroup { rank, shared: shared.clone() }).collect()
    }

    /// Waits until every rank has arrived (or one failed).
    fn barrier(&self) -> Result<(), DistError> {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let generation = st.generation;
        st.arrived += 1;
        if st.arrived == self.shared.world {
            st.arrived = 0;
            st.generation += 1;
            self.shared.turn.notify_all();
        }
        while st.generation == generation && st.failed.is_none() {
            st = self.shared.turn.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        match &st.failed {
            Some((rank, reason)) => Err(DistError::PeerFailed { rank: *rank, reason: reason.clone() }),
            None => Ok(()),
        }
    }
}

impl Collective for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), DistError> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner()).slots[self.rank] = buf.to_vec();
        self.barrier()?;
        {
            let st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            for (rank, slot) in st.slots.iter().enumerate() {
                if slot.len() != buf.len() {
                    return Err(DistError::Mismatch { rank, got: slot.len(), want: buf.len() });
                }
            }
            buf.copy_from_slice(&st.slots[0]);
            for slot in &st.slots[1..] {
                for (b, x) in buf.iter_mut().zip(slot) {
                    *b += x;
                }
            }
        }
        // Nobody deposits the next buffer before every rank has read this one.
        self.barrier()
    }

    fn abort(&self, reason: &str) {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.failed.get_or_insert((self.rank, reason.to_string()));
        self.shared.turn.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_in_rank_order_and_every_rank_gets_the_same_bits() {
        let group = ThreadGroup::new(3);
        let out: Vec<Vec<f32>> = std::thread::scope(|s| {
            let handles: Vec<_> = group
                .iter()
                .map(|g| {
                    s.spawn(move || {
                        let mut all = Vec::new();
                        for round in 0..3 {
                            let mut buf = vec![g.rank() as f32 + round as f32, 1e8, 1.0];
                            g.all_reduce_sum(&mut buf).unwrap();
                            all.extend(buf);
                        }
                        all
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // (1e8 + 1e8) + 1e8 in f32, rank 0 first; 0+1+2 (+3·round).
        assert_eq!(out[0][..3], [3.0, 3e8, 3.0]);
        assert_eq!(out[0][3..6], [6.0, 3e8, 3.0]);
        assert!(out.iter().all(|o| o == &out[0]));
    }

    #[test]
    fn a_failed_rank_releases_the_others() {
        let group = ThreadGroup::new(2);
        std::thread::scope(|s| {
            let waiting = s.spawn(|| group[1].all_reduce_sum(&mut [1.0]));
            group[0].abort("out of memory");
            let err = waiting.join().unwrap().unwrap_err().to_string();
            assert!(err.contains("rank 0 failed: out of memory"), "{err}");
        });
        let mut short = ThreadGroup::new(2);
        let b = short.pop().unwrap();
        let a = short.pop().unwrap();
        std::thread::scope(|s| {
            let h = s.spawn(move || b.all_reduce_sum(&mut [1.0, 2.0]));
            let e = a.all_reduce_sum(&mut [1.0]).unwrap_err().to_string();
            assert!(e.contains("disagree"), "{e}");
            let _ = h.join().unwrap();
        });
    }
}
