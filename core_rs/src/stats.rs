//! Counters the server keeps while it runs: plain atomics and one small per-worker map.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::protocol::Progress;

#[derive(Default)]
pub struct Counters {
    pub commits: AtomicU64,
    pub rejected: AtomicU64,
    pub pulls: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Bytes of commit frames alone (a part of `bytes_in`), to show what compression saves.
    pub commit_bytes: AtomicU64,
    pub connections: AtomicU64,
    pub auth_failures: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// Connections dropped because their peer stayed silent too long.
    pub timeouts: AtomicU64,
    workers: Mutex<BTreeMap<u32, WorkerStats>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WorkerStats {
    pub connected: u32,
    pub commits: u64,
    pub pulls: u64,
    pub last_staleness: u64,
    pub max_staleness: u64,
    pub staleness_sum: u64,
    /// As the worker last reported it with a commit.
    pub samples: u64,
    pub loss: f32,
}

impl WorkerStats {
    pub fn mean_staleness(&self) -> f64 {
        if self.commits == 0 {
            0.0
        } else {
            self.staleness_sum as f64 / self.commits as f64
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub clock: u64,
    pub commits: u64,
    pub rejected: u64,
    pub pulls: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub commit_bytes: u64,
    pub connections: u64,
    pub auth_failures: u64,
    pub protocol_errors: u64,
    pub timeouts: u64,
    pub workers: BTreeMap<u32, WorkerStats>,
}

impl Snapshot {
    pub fn workers_connected(&self) -> u64 {
        self.workers.values().map(|w| u64::from(w.connected)).sum()
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Counters {
    pub fn add(&self, counter: &AtomicU64, by: u64) {
        bump(counter, by);
    }

    pub fn worker_connected(&self, worker: u32, delta: i32) {
        let mut workers = self.workers.lock();
        let w = workers.entry(worker).or_default();
        w.connected = w.connected.saturating_add_signed(delta);
    }

    pub fn worker_pulled(&self, worker: u32) {
        bump(&self.pulls, 1);
        self.workers.lock().entry(worker).or_default().pulls += 1;
    }

    pub fn worker_committed(&self, worker: u32, staleness: u64, progress: Progress) {
        bump(&self.commits, 1);
        let mut workers = self.workers.lock();
        let w = workers.entry(worker).or_default();
        w.commits += 1;
        w.last_staleness = staleness;
        w.max_staleness = w.max_staleness.max(staleness);
        w.staleness_sum += staleness;
        w.samples = progress.samples;
        w.loss = progress.loss;
    }

    /// The samples `worker` reported with its last applied commit (0 if none).
    pub fn worker_samples(&self, worker: u32) -> u64 {
        self.workers.lock().get(&worker).map_or(0, |w| w.samples)
    }

    pub fn snapshot(&self, clock: u64) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            clock,
            commits: get(&self.commits),
            rejected: get(&self.rejected),
            pulls: get(&self.pulls),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            commit_bytes: get(&self.commit_bytes),
            connections: get(&self.connections),
            auth_failures: get(&self.auth_failures),
            protocol_errors: get(&self.protocol_errors),
            timeouts: get(&self.timeouts),
            workers: self.workers.lock().clone(),
        }
    }
}
