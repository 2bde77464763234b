//! The centre variable: a flat float32 vector split into shards, and the update clock.
//!
//! Commits and pulls walk the shards in order with hand-over-hand locking: an operation takes the
//! lock of shard `i + 1` before it lets go of shard `i`. So up to one operation per shard runs at
//! once (no lock is ever held over the whole vector), yet no operation can overtake another: every
//! commit is applied whole and in one global order, and every pull copies a state that really
//! existed (the centre after exactly `clock` commits). The clock is read and advanced while shard 0
//! is held, which makes a commit's staleness exact and atomic with its application.
//!
//! No commit may make a centre value infinite, and a refused commit must change nothing, though
//! shards are applied one after another. So the centre keeps `bound`, an upper bound on every
//! `|C|` once the commits in flight are applied: a commit whose worst case keeps it below
//! `f32::MAX` goes straight through; only one that might not takes every shard and checks exactly.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use crate::error::{check_len, Error, Result};
use crate::rules::{self, Rule};

/// 64 Ki floats (256 KiB) per shard: small enough to pipeline commits, large enough that locking is noise.
pub const SHARD_LEN: usize = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The clock after this commit (for synchronous rounds: after the round it completed).
    pub clock: u64,
    /// Commits applied between the worker's last pull and this commit.
    pub staleness: u64,
}

/// Commit values known to be finite, with their largest magnitude: checked once, where it is
/// cheapest (the server checks each chunk as it arrives from the socket, while it is still in cache).
#[derive(Debug, Clone, Copy)]
pub struct Finite<'a> {
    values: &'a [f32],
    max_abs: f32,
}

impl<'a> Finite<'a> {
    pub fn check(values: &'a [f32]) -> Result<Self> {
        let max_abs = rules::finite_max_abs(values).ok_or_else(|| {
            Error::rejected("commit contains NaN or infinity; the centre is unchanged")
        })?;
        Ok(Finite { values, max_abs })
    }

    /// For values whose check the caller has just made: `max_abs` is what `finite_max_abs` gave.
    pub(crate) fn checked(values: &'a [f32], max_abs: f32) -> Self {
        Finite { values, max_abs }
    }
}

/// Each float32 operation rounds, so a bound is trusted only this far below `f32::MAX`.
fn below_max(bound: f64) -> bool {
    bound * (1.0 + 1e-6) <= f64::from(f32::MAX)
}

const OVERFLOW: &str = "commit would make the centre infinite; the centre is unchanged";

pub struct Centre {
    rule: Rule,
    len: usize,
    shards: Vec<RwLock<Vec<f32>>>,
    clock: AtomicU64,
    rounds: Option<SyncRounds>,
    /// How long a synchronous round may wait for its last worker before it is abandoned.
    round_timeout: Option<Duration>,
    closed: AtomicBool,
    /// `f64` bits of an upper bound on every `|C|` once the commits in flight are applied; changed
    /// only by a commit that holds shard 0 (asynchronous rules) or the round lock (sync).
    bound: AtomicU64,
}

struct SyncRounds {
    workers: u32,
    scale: f32,
    sum: Vec<Mutex<Vec<f32>>>,
    state: Mutex<RoundState>,
    done: Condvar,
}

#[derive(Default)]
struct RoundState {
    round: u64,
    /// Advances when a round is abandoned, so its waiters know theirs will never complete.
    generation: u64,
    joined: Vec<u32>,
    added: u32,
    /// The sum of the joined commits' largest magnitudes.
    growth: f64,
    /// Why the last abandoned round was abandoned, for its waiters.
    abandoned_because: String,
}

impl SyncRounds {
    /// Drops the current round: its sum is cleared and its waiters learn it will not complete.
    /// The caller holds the state lock and has seen every joined contribution fully added.
    fn abandon(&self, st: &mut RoundState, because: String) {
        for sum in &self.sum {
            sum.lock().fill(0.0);
        }
        st.joined.clear();
        st.added = 0;
        st.growth = 0.0;
        st.abandoned_because = because;
        st.generation += 1;
        self.done.notify_all();
    }
}

fn split(values: &[f32]) -> Vec<Vec<f32>> {
    values.chunks(SHARD_LEN).map(<[f32]>::to_vec).collect()
}

impl Centre {
    pub fn new(rule: Rule, initial: &[f32]) -> Result<Centre> {
        if initial.is_empty() {
            return Err(Error::invalid("the centre needs at least one parameter"));
        }
        let max_abs = rules::finite_max_abs(initial)
            .ok_or_else(|| Error::invalid("initial weights contain NaN or infinity"))?;
        let rounds = match rule {
            Rule::Sync { workers, scale } => Some(SyncRounds {
                workers,
                scale,
                sum: split(&vec![0.0; initial.len()])
                    .into_iter()
                    .map(Mutex::new)
                    .collect(),
                state: Mutex::new(RoundState::default()),
                done: Condvar::new(),
            }),
            _ => None,
        };
        Ok(Centre {
            rule,
            len: initial.len(),
            shards: split(initial).into_iter().map(RwLock::new).collect(),
            clock: AtomicU64::new(0),
            rounds,
            round_timeout: None,
            closed: AtomicBool::new(false),
            bound: AtomicU64::new(f64::from(max_abs).to_bits()),
        })
    }

    /// Abandon a synchronous round that has waited `limit` for its last worker: its waiters get
    /// an error, its partial sum is dropped, and the next commits start the round afresh.
    pub fn with_round_timeout(mut self, limit: Option<Duration>) -> Self {
        self.round_timeout = limit;
        self
    }

    /// Starts the clock at `clock`: a run resumed from a checkpoint continues its count.
    pub fn with_clock(self, clock: u64) -> Self {
        self.clock.store(clock, Ordering::Release);
        if let Some(rounds) = &self.rounds {
            rounds.state.lock().round = clock;
        }
        self
    }

    /// A new attempt of `worker` has started, so its old attempt is gone: a synchronous round that
    /// the old attempt joined can never complete and is abandoned now (its waiters get an error,
    /// the centre is unchanged), rather than when the round timeout expires. Returns whether a
    /// round was abandoned.
    pub fn release_worker(&self, worker: u32) -> bool {
        let Some(rounds) = &self.rounds else {
            return false;
        };
        let mut st = rounds.state.lock();
        if !st.joined.contains(&worker) {
            return false;
        }
        // Only once no contribution is half-added can the round's sum be cleared.
        while (st.added as usize) < st.joined.len() {
            rounds.done.wait_for(&mut st, Duration::from_millis(10));
        }
        let because = format!(
            "synchronous round {} was abandoned: worker {worker} restarted; the centre is unchanged \
             and the round can be retried",
            st.round
        );
        rounds.abandon(&mut st, because);
        true
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn rule(&self) -> Rule {
        self.rule
    }
    pub fn clock(&self) -> u64 {
        self.clock.load(Ordering::Acquire)
    }

    /// Wakes every commit waiting for a synchronous round; they fail with `Closed`.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(rounds) = &self.rounds {
            let _state = rounds.state.lock();
            rounds.done.notify_all();
        }
    }

    /// Copies a consistent snapshot of the centre into `out` and returns its clock.
    pub fn pull(&self, out: &mut [f32]) -> Result<u64> {
        check_len("pull buffer", out.len(), "the centre", self.len)?;
        let mut guard = self.shards[0].read();
        let clock = self.clock.load(Ordering::Acquire);
        for (i, chunk) in out.chunks_mut(SHARD_LEN).enumerate() {
            if i > 0 {
                guard = self.shards[i].read(); // takes shard i before releasing shard i - 1
            }
            chunk.copy_from_slice(&guard);
        }
        Ok(clock)
    }

    /// Applies one commit whole, or nothing at all if it is invalid.
    ///
    /// `sent` is the centre this worker last pulled (needed by `adaptive`); `reply` receives `E`
    /// (`elastic`) or the new centre (`sync`); `worker` identifies the contributor of a sync round.
    pub fn commit(
        &self,
        delta: Finite<'_>,
        last_pull_clock: u64,
        sent: Option<&[f32]>,
        reply: Option<&mut [f32]>,
        worker: u32,
    ) -> Result<Applied> {
        check_len("commit", delta.values.len(), "the centre", self.len)?;
        match self.rule {
            Rule::Sync { .. } => {
                let reply = reply.ok_or_else(|| {
                    Error::invalid("sync commits need a reply buffer for the new centre")
                })?;
                check_len("reply buffer", reply.len(), "the centre", self.len)?;
                self.commit_sync(delta, reply, worker)
            }
            rule => self.commit_async(rule, delta, last_pull_clock, sent, reply),
        }
    }

    fn commit_async(
        &self,
        rule: Rule,
        delta: Finite<'_>,
        last_pull_clock: u64,
        sent: Option<&[f32]>,
        mut reply: Option<&mut [f32]>,
    ) -> Result<Applied> {
        let sent = match rule {
            Rule::Adaptive { .. } => {
                let s =
                    sent.ok_or_else(|| Error::rejected("adaptive commits need a pull first"))?;
                check_len("last pulled centre", s.len(), "the centre", self.len)?;
                s
            }
            _ => &[],
        };
        if let Rule::Elastic { .. } = rule {
            let r = reply
                .as_deref()
                .ok_or_else(|| Error::invalid("elastic commits need a reply buffer"))?;
            check_len("reply buffer", r.len(), "the centre", self.len)?;
        }

        let mut guard = self.shards[0].write();
        let now = self.clock.load(Ordering::Acquire);
        if last_pull_clock > now {
            return Err(Error::rejected(format!(
                "commit is based on clock {last_pull_clock} but the centre is only at {now}"
            )));
        }
        let staleness = now - last_pull_clock;
        let dyn_scale = 1.0 / (staleness as f32 + 1.0);
        let applied = Applied {
            clock: now + 1,
            staleness,
        };
        let apply = |i: usize, shard: &mut [f32], reply: &mut Option<&mut [f32]>| {
            let range = i * SHARD_LEN..i * SHARD_LEN + shard.len();
            let d = &delta.values[range.clone()];
            match rule {
                Rule::Add { scale } => rules::add_scaled(shard, d, scale),
                Rule::DynSgd => rules::add_scaled(shard, d, dyn_scale),
                Rule::Adaptive { gamma } => rules::adaptive(shard, d, &sent[range], gamma),
                Rule::Elastic { alpha } => {
                    let out = reply.as_deref_mut().expect("checked above");
                    rules::elastic(shard, d, &mut out[range], alpha)
                }
                Rule::Sync { .. } => unreachable!("sync commits take commit_sync"),
            }
        };

        let bound = f64::from_bits(self.bound.load(Ordering::Relaxed));
        let Some(next) = next_bound(rule, bound, f64::from(delta.max_abs), dyn_scale) else {
            // This commit might overflow: hold every shard, so no commit is in flight, and check it
            // on a copy of each shard before anything is changed.
            let mut guards = vec![guard];
            guards.extend(self.shards[1..].iter().map(|s| s.write()));
            let (mut now_max, mut then_max) = (0f32, 0f32);
            let mut scratch = Vec::with_capacity(SHARD_LEN);
            for (i, shard) in guards.iter().enumerate() {
                scratch.clear();
                scratch.extend_from_slice(shard);
                apply(i, &mut scratch, &mut reply);
                now_max = now_max.max(rules::finite_max_abs(shard).expect("the centre is finite"));
                match rules::finite_max_abs(&scratch) {
                    Some(m) => then_max = then_max.max(m),
                    None => {
                        self.bound
                            .store(f64::from(now_max).to_bits(), Ordering::Relaxed);
                        return Err(Error::rejected(OVERFLOW));
                    }
                }
            }
            self.clock.store(now + 1, Ordering::Release);
            for (i, shard) in guards.iter_mut().enumerate() {
                apply(i, shard, &mut reply);
            }
            self.bound
                .store(f64::from(then_max).to_bits(), Ordering::Relaxed);
            return Ok(applied);
        };
        self.bound.store(next.to_bits(), Ordering::Relaxed);
        self.clock.store(now + 1, Ordering::Release);
        for i in 0..self.shards.len() {
            if i > 0 {
                guard = self.shards[i].write(); // takes shard i before releasing shard i - 1
            }
            apply(i, &mut guard, &mut reply);
        }
        Ok(applied)
    }

    fn commit_sync(&self, delta: Finite<'_>, reply: &mut [f32], worker: u32) -> Result<Applied> {
        let rounds = self.rounds.as_ref().expect("sync rule has rounds");
        let started = Instant::now();
        let (my_round, my_generation) = {
            let mut st = rounds.state.lock();
            self.check_open()?;
            if st.joined.contains(&worker) {
                return Err(Error::rejected(format!(
                    "worker {worker} already committed to round {}; wait for the round to complete",
                    st.round
                )));
            }
            if st.joined.len() as u32 == rounds.workers {
                return Err(Error::rejected(format!(
                    "round {} already has its {} workers; worker {worker} is one too many",
                    st.round, rounds.workers
                )));
            }
            st.joined.push(worker);
            st.growth += f64::from(delta.max_abs);
            (st.round, st.generation)
        };
        for (sum, d) in rounds.sum.iter().zip(delta.values.chunks(SHARD_LEN)) {
            rules::add_scaled(&mut sum.lock(), d, 1.0);
        }
        let mut st = rounds.state.lock();
        st.added += 1;
        if st.added == rounds.workers {
            // Every contribution of this round is in the sum: apply it and start the next round.
            // Nothing else changes the centre meanwhile: commits wait for this round to complete.
            let bound = f64::from_bits(self.bound.load(Ordering::Relaxed));
            let next = bound + f64::from(rounds.scale) * st.growth;
            let next = if below_max(next) {
                next
            } else {
                match self.sync_result_max(rounds) {
                    Some(m) => f64::from(m),
                    None => {
                        let because = format!("synchronous round {}: {OVERFLOW}", st.round);
                        rounds.abandon(&mut st, because.clone());
                        return Err(Error::rejected(because));
                    }
                }
            };
            for (shard, sum) in self.shards.iter().zip(&rounds.sum) {
                let mut sum = sum.lock();
                rules::add_scaled(&mut shard.write(), &sum, rounds.scale);
                sum.fill(0.0);
            }
            self.bound.store(next.to_bits(), Ordering::Relaxed);
            self.clock.fetch_add(1, Ordering::AcqRel);
            st.round += 1;
            st.joined.clear();
            st.added = 0;
            st.growth = 0.0;
            rounds.done.notify_all();
        } else {
            loop {
                if st.generation != my_generation {
                    return Err(Error::rejected(st.abandoned_because.clone()));
                }
                if st.round != my_round {
                    break;
                }
                self.check_open()?;
                let overdue = self
                    .round_timeout
                    .is_some_and(|limit| started.elapsed() >= limit);
                // Only once no contribution is half-added can the round's sum be cleared.
                if overdue && st.added as usize == st.joined.len() {
                    rounds.abandon(&mut st, self.overdue(my_round));
                    return Err(Error::rejected(st.abandoned_because.clone()));
                }
                rounds.done.wait_for(&mut st, Duration::from_millis(100));
            }
        }
        drop(st);
        // Nothing changes the centre until every worker, this one included, commits again.
        let clock = self.pull(reply)?;
        Ok(Applied {
            clock,
            staleness: 0,
        })
    }

    fn overdue(&self, round: u64) -> String {
        let limit = self.round_timeout.unwrap_or_default();
        format!(
            "synchronous round {round} was abandoned: not every worker committed within {:.1} s; \
             the centre is unchanged and the round can be retried",
            limit.as_secs_f64()
        )
    }

    /// The largest `|C|` once the round's sum is applied, or `None` if a value would be infinite.
    fn sync_result_max(&self, rounds: &SyncRounds) -> Option<f32> {
        let mut scratch = Vec::with_capacity(SHARD_LEN);
        let mut max = 0f32;
        for (shard, sum) in self.shards.iter().zip(&rounds.sum) {
            scratch.clear();
            scratch.extend_from_slice(&shard.read());
            rules::add_scaled(&mut scratch, &sum.lock(), rounds.scale);
            max = max.max(rules::finite_max_abs(&scratch)?);
        }
        Some(max)
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed(
                "the parameter server is shutting down".into(),
            ));
        }
        Ok(())
    }
}

/// The bound on `|C|` once a commit whose largest magnitude is `m` is applied to a centre bounded
/// by `bound`, or `None` if that bound might not be finite (then the commit is checked exactly).
fn next_bound(rule: Rule, bound: f64, m: f64, dyn_scale: f32) -> Option<f64> {
    let (next, worst) = match rule {
        Rule::Add { scale } => (bound + f64::from(scale) * m, 0.0),
        Rule::DynSgd => (bound + f64::from(dyn_scale) * m, 0.0),
        // The step is `D` divided by at least 1, and an infinite drift only makes it 0.
        Rule::Adaptive { .. } => (bound + m, 0.0),
        // `C + alpha (W - C)`: between C and W for alpha <= 1; `W - C` itself must stay finite.
        Rule::Elastic { alpha } => {
            let alpha = f64::from(alpha);
            let next = if alpha <= 1.0 {
                bound.max(m)
            } else {
                bound + alpha * (m + bound)
            };
            (next, (m + bound) * alpha.max(1.0))
        }
        Rule::Sync { .. } => unreachable!("sync commits take commit_sync"),
    };
    (below_max(next) && below_max(worst)).then_some(next * (1.0 + 1e-6))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::thread;

    fn finite(values: &[f32]) -> Finite<'_> {
        Finite::check(values).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        // Integer-valued commits of any length and count, from two threads, sum exactly.
        #[test]
        fn any_commits_sum_exactly(
            len in 1usize..(2 * SHARD_LEN + 100),
            commits in proptest::collection::vec(-50i32..50, 1..12),
        ) {
            let centre = Arc::new(Centre::new(Rule::Add { scale: 1.0 }, &vec![0.0; len]).unwrap());
            let halves: Vec<Vec<i32>> = commits.chunks(commits.len().div_ceil(2)).map(<[i32]>::to_vec).collect();
            let handles: Vec<_> = halves.into_iter().map(|values| {
                let centre = Arc::clone(&centre);
                thread::spawn(move || for v in values {
                    centre.commit(finite(&vec![v as f32; len]), 0, None, None, 0).unwrap();
                })
            }).collect();
            for h in handles {
                h.join().unwrap();
            }
            let mut out = vec![0.0; len];
            prop_assert_eq!(centre.pull(&mut out).unwrap(), commits.len() as u64);
            let total: i32 = commits.iter().sum();
            prop_assert!(out.iter().all(|&v| v == total as f32));
        }
    }

    fn add() -> Rule {
        Rule::Add { scale: 1.0 }
    }

    #[test]
    fn concurrent_integer_commits_sum_exactly() {
        let n = 3 * SHARD_LEN + 17;
        let centre = Arc::new(Centre::new(add(), &vec![0.0; n]).unwrap());
        let threads: Vec<_> = (0..8u32)
            .map(|t| {
                let centre = Arc::clone(&centre);
                thread::spawn(move || {
                    let delta: Vec<f32> = (0..n).map(|j| ((j as u32 % 7) + t) as f32).collect();
                    for _ in 0..25 {
                        centre
                            .commit(Finite::check(&delta).unwrap(), 0, None, None, t)
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut out = vec![0.0; n];
        assert_eq!(centre.pull(&mut out).unwrap(), 200);
        for (j, v) in out.iter().enumerate() {
            let expected: u32 = (0..8).map(|t| 25 * ((j as u32 % 7) + t)).sum();
            assert_eq!(*v, expected as f32, "index {j}");
        }
    }

    #[test]
    fn pulls_see_whole_commits_only() {
        // Every commit adds 1 everywhere, so a consistent snapshot is constant and equals its clock.
        let n = 5 * SHARD_LEN;
        let centre = Arc::new(Centre::new(add(), &vec![0.0; n]).unwrap());
        let writer = {
            let centre = Arc::clone(&centre);
            thread::spawn(move || {
                let ones = vec![1.0; n];
                for _ in 0..300 {
                    centre.commit(finite(&ones), 0, None, None, 0).unwrap();
                }
            })
        };
        let mut out = vec![0.0; n];
        for _ in 0..300 {
            let clock = centre.pull(&mut out).unwrap();
            assert!(
                out.iter().all(|&v| v == clock as f32),
                "torn snapshot at clock {clock}"
            );
        }
        writer.join().unwrap();
    }

    #[test]
    fn dynsgd_scales_by_staleness() {
        let centre = Centre::new(Rule::DynSgd, &[0.0; 4]).unwrap();
        let a = centre.commit(finite(&[4.0; 4]), 0, None, None, 0).unwrap();
        assert_eq!(
            a,
            Applied {
                clock: 1,
                staleness: 0
            }
        );
        let b = centre.commit(finite(&[4.0; 4]), 0, None, None, 1).unwrap();
        assert_eq!(
            b,
            Applied {
                clock: 2,
                staleness: 1
            }
        );
        let mut out = [0.0; 4];
        centre.pull(&mut out).unwrap();
        assert_eq!(out, [6.0; 4]);
    }

    #[test]
    fn invalid_commits_change_nothing() {
        let centre = Centre::new(add(), &[1.0; 3]).unwrap();
        assert!(Finite::check(&[1.0, f32::NAN, 1.0]).is_err());
        assert!(centre.commit(finite(&[1.0; 2]), 0, None, None, 0).is_err());
        assert!(centre.commit(finite(&[1.0; 3]), 5, None, None, 0).is_err());
        let mut out = [0.0; 3];
        assert_eq!(centre.pull(&mut out).unwrap(), 0);
        assert_eq!(out, [1.0; 3]);
    }

    fn snapshot(centre: &Centre) -> Vec<f32> {
        let mut out = vec![0.0; centre.len()];
        centre.pull(&mut out).unwrap();
        out
    }

    #[test]
    fn a_commit_that_would_overflow_is_refused_whole() {
        // Two shards and a bit: the overflow is in the last one, after shards that would fit.
        let n = 2 * SHARD_LEN + 3;
        let centre = Centre::new(add(), &vec![0.0; n]).unwrap();
        let mut big = vec![1.0f32; n];
        big[n - 1] = 3e38;
        centre.commit(finite(&big), 0, None, None, 0).unwrap();
        let err = centre.commit(finite(&big), 1, None, None, 0).unwrap_err();
        assert!(err.to_string().contains("infinite"), "{err}");
        let after = snapshot(&centre);
        assert_eq!(centre.clock(), 1);
        assert!(after[..n - 1].iter().all(|&v| v == 1.0));
        assert_eq!(after[n - 1], 3e38);
        // Taking the value back down is fine, and the bound follows the centre back down.
        big[n - 1] = -3e38;
        centre.commit(finite(&big), 1, None, None, 0).unwrap();
        big[n - 1] = 3e38;
        centre.commit(finite(&big), 2, None, None, 0).unwrap();
        assert_eq!(snapshot(&centre)[n - 1], 3e38);
        assert_eq!(centre.clock(), 3);
    }

    #[test]
    fn concurrent_commits_near_the_limit_are_applied_whole_or_not_at_all() {
        // Steps of 2^126: the centre holds k * 2^126 exactly, and k = +-4 would be infinite.
        let step = 2f32.powi(126);
        let n = SHARD_LEN + 5;
        let centre = Arc::new(Centre::new(add(), &vec![0.0; n]).unwrap());
        let net: i64 = (0..4u64)
            .map(|t| {
                let centre = Arc::clone(&centre);
                thread::spawn(move || {
                    let mut rng = t + 1;
                    let mut net = 0i64;
                    for _ in 0..300 {
                        rng = rng
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let sign = if rng >> 63 == 1 { 1.0 } else { -1.0 };
                        let delta = vec![sign * step; n];
                        if centre.commit(finite(&delta), 0, None, None, 0).is_ok() {
                            net += sign as i64;
                        }
                    }
                    net
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        let after = snapshot(&centre);
        assert!(
            after.iter().all(|&v| v == net as f32 * step),
            "{net} {:?}",
            &after[..2]
        );
        assert!(net.abs() <= 3);
    }

    #[test]
    fn elastic_and_adaptive_commits_never_overflow() {
        let elastic = Centre::new(Rule::Elastic { alpha: 2.0 }, &[-3e38, 1.0]).unwrap();
        let mut e = [0.0; 2];
        // W - C alone would be infinite.
        let err = elastic
            .commit(finite(&[3e38, 1.0]), 0, None, Some(&mut e), 0)
            .unwrap_err();
        assert!(err.to_string().contains("infinite"), "{err}");
        assert_eq!(snapshot(&elastic), [-3e38, 1.0]);
        // alpha <= 1 stays between C and W: no growth in the bound, so many commits go through.
        let calm = Centre::new(Rule::Elastic { alpha: 0.5 }, &[3e38, -3e38]).unwrap();
        for _ in 0..1000 {
            calm.commit(finite(&[1e38, -1e38]), 0, None, Some(&mut e), 0)
                .unwrap();
        }
        assert!(snapshot(&calm).iter().all(|v| v.is_finite()));

        let adaptive = Centre::new(Rule::Adaptive { gamma: 1.0 }, &[3e38]).unwrap();
        let sent = [-3e38]; // the drift itself overflows: the step becomes 0, never NaN
        adaptive
            .commit(finite(&[3e38]), 0, Some(&sent), None, 0)
            .unwrap();
        assert_eq!(snapshot(&adaptive), [3e38]);
    }

    #[test]
    fn a_sync_round_that_would_overflow_is_abandoned() {
        let centre = Arc::new(
            Centre::new(
                Rule::Sync {
                    workers: 2,
                    scale: 1.0,
                },
                &[3e38, 0.0],
            )
            .unwrap(),
        );
        let waiter = {
            let centre = Arc::clone(&centre);
            thread::spawn(move || {
                centre.commit(finite(&[2e38, 1.0]), 0, None, Some(&mut [0.0; 2]), 0)
            })
        };
        thread::sleep(Duration::from_millis(100));
        let last = centre.commit(finite(&[1.0, 1.0]), 0, None, Some(&mut [0.0; 2]), 1);
        for outcome in [last, waiter.join().unwrap()] {
            let err = outcome.unwrap_err();
            assert!(err.to_string().contains("infinite"), "{err}");
        }
        assert_eq!(snapshot(&centre), [3e38, 0.0]);
        assert_eq!(centre.clock(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        // Whatever finite commits arrive, the centre stays finite, and a refused one changes nothing.
        #[test]
        fn the_centre_stays_finite(
            commits in proptest::collection::vec(proptest::collection::vec(-3.4e38f32..3.4e38, 3), 1..12),
            scale in 0.1f32..4.0,
        ) {
            let centre = Centre::new(Rule::Add { scale }, &[0.0; 3]).unwrap();
            for delta in &commits {
                let before = snapshot(&centre);
                let clock = centre.clock();
                let exact: Vec<f32> = before.iter().zip(delta).map(|(c, d)| c + scale * d).collect();
                match centre.commit(finite(delta), clock, None, None, 0) {
                    Ok(_) => prop_assert_eq!(snapshot(&centre), exact),
                    Err(_) => {
                        prop_assert!(exact.iter().any(|v| !v.is_finite()));
                        prop_assert_eq!(snapshot(&centre), before);
                    }
                }
            }
        }
    }

    #[test]
    fn sync_round_waits_for_every_worker_and_resets() {
        let centre = Arc::new(
            Centre::new(
                Rule::Sync {
                    workers: 3,
                    scale: 1.0,
                },
                &[0.0; 5],
            )
            .unwrap(),
        );
        for round in 1..=2u64 {
            let handles: Vec<_> = (0..3u32)
                .map(|w| {
                    let centre = Arc::clone(&centre);
                    thread::spawn(move || {
                        let mut reply = [0.0; 5];
                        let applied = centre
                            .commit(finite(&[(w + 1) as f32; 5]), 0, None, Some(&mut reply), w)
                            .unwrap();
                        (applied, reply)
                    })
                })
                .collect();
            for h in handles {
                let (applied, reply) = h.join().unwrap();
                assert_eq!(applied.clock, round);
                assert_eq!(reply, [6.0 * round as f32; 5]);
            }
        }
    }

    #[test]
    fn an_incomplete_round_is_abandoned_after_its_timeout() {
        let rule = Rule::Sync {
            workers: 3,
            scale: 1.0,
        };
        let centre = Arc::new(
            Centre::new(rule, &[0.0; 4])
                .unwrap()
                .with_round_timeout(Some(Duration::from_millis(150))),
        );
        let waiters: Vec<_> = (0..2u32)
            .map(|w| {
                let centre = Arc::clone(&centre);
                thread::spawn(move || {
                    centre.commit(finite(&[1.0; 4]), 0, None, Some(&mut [0.0; 4]), w)
                })
            })
            .collect();
        for w in waiters {
            let err = w.join().unwrap().unwrap_err().to_string();
            assert!(err.contains("abandoned"), "{err}");
        }
        // Nothing was applied, and a fresh round with all three workers completes normally.
        let mut out = [9.0; 4];
        assert_eq!(centre.pull(&mut out).unwrap(), 0);
        assert_eq!(out, [0.0; 4]);
        let round: Vec<_> = (0..3u32)
            .map(|w| {
                let centre = Arc::clone(&centre);
                thread::spawn(move || {
                    centre.commit(finite(&[2.0; 4]), 0, None, Some(&mut [0.0; 4]), w)
                })
            })
            .collect();
        for r in round {
            assert_eq!(r.join().unwrap().unwrap().clock, 1);
        }
        centre.pull(&mut out).unwrap();
        assert_eq!(out, [6.0; 4]);
    }

    #[test]
    fn sync_refuses_a_second_commit_in_one_round() {
        let centre = Arc::new(
            Centre::new(
                Rule::Sync {
                    workers: 2,
                    scale: 1.0,
                },
                &[0.0; 2],
            )
            .unwrap(),
        );
        let first = {
            let centre = Arc::clone(&centre);
            thread::spawn(move || centre.commit(finite(&[1.0; 2]), 0, None, Some(&mut [0.0; 2]), 0))
        };
        while centre
            .rounds
            .as_ref()
            .unwrap()
            .state
            .lock()
            .joined
            .is_empty()
        {
            thread::yield_now();
        }
        let again = centre
            .commit(finite(&[1.0; 2]), 0, None, Some(&mut [0.0; 2]), 0)
            .unwrap_err();
        assert!(again.to_string().contains("already committed"), "{again}");
        centre.close();
        assert!(matches!(first.join().unwrap(), Err(Error::Closed(_))));
    }
}
