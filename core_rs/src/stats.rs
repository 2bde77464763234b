//! Counters the server keeps while it runs: plain atomics and one small per-worker map.
//!
//! The schema is written once, here: `counters!` below lists the server's counters and makes the
//! live atomics (`Counters`), the copy taken of them (`Snapshot`) and the named values of that copy
//! (`Snapshot::fields`, named by `STATS_FIELDS`). The stats reply on the wire, the client's
//! decoding of it and Python's `ParameterServer.stats()` all follow `Snapshot::fields`; the
//! per-worker entries follow `WorkerStats::fields` the same way.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::protocol::{Progress, Traffic};

/// Defines the server counters, each a `u64` that only goes up. Snapshots name them after the
/// centre's `clock` and before `workers_connected`, the two values that are not counters.
macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// The live counters, updated by every connection's thread.
        #[derive(Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
            workers: Mutex<BTreeMap<u32, WorkerStats>>,
            epochs: Mutex<BTreeMap<u32, EpochStats>>,
        }

        /// The counters at one moment, with the centre's clock and every worker's statistics.
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct Snapshot {
            pub clock: u64,
            $($(#[$doc])* pub $name: u64,)*
            pub workers: BTreeMap<u32, WorkerStats>,
        }

        /// The names of `Snapshot::fields`, in order.
        pub const STATS_FIELDS: [&str; 2 + [$(stringify!($name)),*].len()] =
            ["clock", $(stringify!($name),)* "workers_connected"];

        impl Snapshot {
            /// Every server-level value, named as in `STATS_FIELDS` and in that order.
            pub fn fields(&self) -> [(&'static str, u64); STATS_FIELDS.len()] {
                let values = [self.clock, $(self.$name,)* self.workers_connected()];
                std::array::from_fn(|i| (STATS_FIELDS[i], values[i]))
            }
        }

        impl Counters {
            pub fn snapshot(&self, clock: u64) -> Snapshot {
                Snapshot {
                    clock,
                    $($name: self.$name.load(Ordering::Relaxed),)*
                    workers: self.workers.lock().clone(),
                }
            }
        }
    };
}

counters! {
    commits,
    rejected,
    pulls,
    bytes_in,
    bytes_out,
    /// Bytes of commit frames alone (a part of `bytes_in`), to show what compression saves.
    commit_bytes,
    connections,
    auth_failures,
    protocol_errors,
    /// Connections dropped because their peer was too slow: silent past the idle timeout, past the
    /// handshake deadline, or still in its handshake when newer connections needed the room.
    timeouts,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkerStats {
    pub connected: u32,
    pub commits: u64,
    pub pulls: u64,
    pub last_staleness: u64,
    pub max_staleness: u64,
    pub staleness_sum: u64,
    /// As the worker last reported it with an applied commit.
    pub samples: u64,
    pub epoch: u32,
    /// The first logs value of its last applied commit (its window's mean loss); NaN if none.
    pub loss: f32,
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            connected: 0,
            commits: 0,
            pulls: 0,
            last_staleness: 0,
            max_staleness: 0,
            staleness_sum: 0,
            samples: 0,
            epoch: 0,
            loss: f32::NAN,
        }
    }
}

/// One epoch's logs over every worker: each value weighted by the samples of the window it
/// was reported for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpochStats {
    /// Window samples of the epoch's applied commits, all workers together.
    pub samples: u64,
    /// Per logs value: the sum of value × window samples...
    pub sums: Vec<f64>,
    /// ...and the samples whose value was finite (a non-finite value is left out of its mean).
    pub counted: Vec<u64>,
}

impl EpochStats {
    /// Each logs value's mean over the epoch's samples; NaN where none was finite.
    pub fn means(&self) -> Vec<f64> {
        self.sums
            .iter()
            .zip(&self.counted)
            .map(|(&sum, &n)| if n == 0 { f64::NAN } else { sum / n as f64 })
            .collect()
    }

    fn add(&mut self, samples: u64, logs: &[f32]) {
        self.samples += samples;
        if self.sums.len() < logs.len() {
            self.sums.resize(logs.len(), 0.0);
            self.counted.resize(logs.len(), 0);
        }
        for (k, v) in logs.iter().enumerate() {
            if v.is_finite() {
                self.sums[k] += f64::from(*v) * samples as f64;
                self.counted[k] += samples;
            }
        }
    }
}

/// One value of a worker's statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stat {
    Count(u64),
    Real(f64),
}

const WORKER_FIELDS: usize = 9;

/// The names of `WorkerStats::fields`, in order.
pub fn worker_stats_fields() -> [&'static str; WORKER_FIELDS] {
    WorkerStats::default().fields().map(|(name, _)| name)
}

impl WorkerStats {
    pub fn mean_staleness(&self) -> f64 {
        if self.commits == 0 {
            0.0
        } else {
            self.staleness_sum as f64 / self.commits as f64
        }
    }

    /// What the server shows of one worker, named and in order.
    pub fn fields(&self) -> [(&'static str, Stat); WORKER_FIELDS] {
        use Stat::{Count, Real};
        [
            ("connected", Count(self.connected.into())),
            ("commits", Count(self.commits)),
            ("pulls", Count(self.pulls)),
            ("last_staleness", Count(self.last_staleness)),
            ("max_staleness", Count(self.max_staleness)),
            ("mean_staleness", Real(self.mean_staleness())),
            ("samples", Count(self.samples)),
            ("epoch", Count(self.epoch.into())),
            ("loss", Real(self.loss.into())),
        ]
    }
}

impl Snapshot {
    pub fn workers_connected(&self) -> u64 {
        self.workers.values().map(|w| u64::from(w.connected)).sum()
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// The server counts the frames of all its connections together.
impl Traffic for &Counters {
    fn sent(&mut self, bytes: u64) {
        bump(&self.bytes_out, bytes);
    }
    fn received(&mut self, bytes: u64) {
        bump(&self.bytes_in, bytes);
    }
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

    /// Counts an applied commit and adds its window to its epoch's logs. The window's samples
    /// are what the worker reported beyond its previous commit, on any attempt. Returns whether
    /// the commit may have raised the smallest epoch (`min_epoch`): the worker's first commit,
    /// or one in another epoch than its last.
    pub fn worker_committed(&self, worker: u32, staleness: u64, progress: &Progress) -> bool {
        bump(&self.commits, 1);
        let mut workers = self.workers.lock();
        let w = workers.entry(worker).or_default();
        let moved = w.commits == 0 || w.epoch != progress.epoch;
        w.commits += 1;
        w.last_staleness = staleness;
        w.max_staleness = w.max_staleness.max(staleness);
        w.staleness_sum += staleness;
        let window = progress.samples.saturating_sub(w.samples);
        w.samples = progress.samples;
        w.epoch = progress.epoch;
        w.loss = progress.logs.first().copied().unwrap_or(f32::NAN);
        drop(workers);
        if window > 0 {
            let mut epochs = self.epochs.lock();
            epochs
                .entry(progress.epoch)
                .or_default()
                .add(window, &progress.logs);
        }
        moved
    }

    /// The smallest epoch of the last applied commits of workers `0..workers`; `None` until
    /// every one of them has an applied commit.
    pub fn min_epoch(&self, workers: u32) -> Option<u32> {
        let map = self.workers.lock();
        let (committed, min) = map
            .range(..workers)
            .filter(|(_, w)| w.commits > 0)
            .fold((0u32, u32::MAX), |(n, min), (_, w)| {
                (n + 1, min.min(w.epoch))
            });
        (committed == workers).then_some(min)
    }

    /// Every epoch's logs so far, by epoch.
    pub fn epochs(&self) -> BTreeMap<u32, EpochStats> {
        self.epochs.lock().clone()
    }

    /// The samples `worker` reported with its last applied commit (0 if none).
    pub fn worker_samples(&self, worker: u32) -> u64 {
        self.workers.lock().get(&worker).map_or(0, |w| w.samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_follow_the_schema() {
        let counters = Counters::default();
        counters.add(&counters.commits, 3);
        counters.add(&counters.timeouts, 2);
        counters.worker_connected(4, 1);
        counters.worker_connected(9, 1);
        let fields = counters.snapshot(17).fields();
        assert_eq!(fields.map(|(name, _)| name), STATS_FIELDS);
        assert_eq!(
            STATS_FIELDS,
            [
                "clock",
                "commits",
                "rejected",
                "pulls",
                "bytes_in",
                "bytes_out",
                "commit_bytes",
                "connections",
                "auth_failures",
                "protocol_errors",
                "timeouts",
                "workers_connected",
            ]
        );
        let value = |name| fields.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(
            (value("clock"), value("commits"), value("timeouts")),
            (17, 3, 2)
        );
        assert_eq!((value("workers_connected"), value("pulls")), (2, 0));
    }

    #[test]
    fn worker_fields() {
        let counters = Counters::default();
        counters.worker_connected(1, 1);
        let progress = Progress {
            samples: 64,
            epoch: 3,
            logs: vec![0.25, 0.5],
        };
        counters.worker_committed(1, 2, &progress);
        counters.worker_committed(1, 4, &progress);
        let w = counters.snapshot(0).workers[&1];
        assert_eq!(w.fields().map(|(name, _)| name), worker_stats_fields());
        assert_eq!(
            worker_stats_fields(),
            [
                "connected",
                "commits",
                "pulls",
                "last_staleness",
                "max_staleness",
                "mean_staleness",
                "samples",
                "epoch",
                "loss",
            ]
        );
        let f = w.fields();
        assert_eq!(f[1].1, Stat::Count(2));
        assert_eq!(f[4].1, Stat::Count(4));
        assert_eq!(f[5].1, Stat::Real(3.0));
        assert_eq!(f[7].1, Stat::Count(3));
        assert_eq!(f[8].1, Stat::Real(0.25));
        // The second commit reported no new samples: only the first one's window counts.
        assert_eq!(counters.epochs()[&3].samples, 64);
        counters.worker_connected(2, 1);
        let loss = counters.snapshot(0).workers[&2].fields()[8].1;
        assert!(matches!(loss, Stat::Real(x) if x.is_nan()));
    }

    #[test]
    fn epoch_means_weigh_each_window_by_its_samples() {
        let counters = Counters::default();
        let commit = |worker, samples, epoch, logs: &[f32]| {
            let logs = logs.to_vec();
            let progress = Progress {
                samples,
                epoch,
                logs,
            };
            counters.worker_committed(worker, 0, &progress);
        };
        // Worker 0: 10 samples at loss 1, then 30 more at loss 2 with a metric of 0.5.
        commit(0, 10, 0, &[1.0]);
        commit(0, 40, 0, &[2.0, 0.5]);
        // Worker 1: 20 samples whose loss was NaN (left out of the loss, counted in samples).
        commit(1, 20, 0, &[f32::NAN, 0.25]);
        // Worker 1's task is retried: its new attempt goes on from 20 samples.
        commit(1, 30, 1, &[4.0]);
        // A commit that trained nothing (a flush) adds nothing.
        commit(1, 30, 1, &[100.0]);
        let epochs = counters.epochs();
        assert_eq!(epochs.keys().copied().collect::<Vec<_>>(), [0, 1]);
        let e0 = &epochs[&0];
        assert_eq!((e0.samples, e0.counted.clone()), (60, vec![40, 50]));
        let means = e0.means();
        assert!((means[0] - (10.0 + 60.0) / 40.0).abs() < 1e-12, "{means:?}");
        assert!((means[1] - (15.0 + 5.0) / 50.0).abs() < 1e-12, "{means:?}");
        assert_eq!((epochs[&1].samples, epochs[&1].means()), (10, vec![4.0]));
        let w1 = counters.snapshot(0).workers[&1];
        assert_eq!((w1.samples, w1.epoch, w1.loss), (30, 1, 100.0));
        // Workers 0 and 1 have committed, in epochs 0 and 1; worker 2 only connected.
        counters.worker_connected(2, 1);
        assert_eq!(
            (counters.min_epoch(2), counters.min_epoch(3)),
            (Some(0), None)
        );
        assert_eq!(counters.min_epoch(1), Some(0));
        let only_nan = EpochStats {
            samples: 5,
            sums: vec![0.0],
            counted: vec![0],
        };
        assert!(only_nan.means()[0].is_nan());
    }
}
