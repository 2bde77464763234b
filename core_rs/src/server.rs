//! The TCP parameter server: one acceptor thread and one thread per worker connection, all plain
//! Rust (no Python objects), stopped cleanly by `Server::stop` or on drop.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::centre::{Applied, Centre, Finite};
use crate::codec::{self, Codec};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::protocol::{self as p, Conn, Op, Traffic};
use crate::rules::Rule;
use crate::stats::{Counters, EpochStats, Snapshot};

/// The shortest run secret a server accepts, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub secret: Vec<u8>,
    /// How long a connection may take, from accept to welcome, to prove it holds the secret.
    pub handshake_timeout: Duration,
    /// How long an authenticated worker may stay silent (between or inside frames) before it is
    /// dropped; `None`: as long as it likes.
    pub idle_timeout: Option<Duration>,
    /// Authenticated workers served at once.
    pub max_connections: usize,
    /// Connections still in their handshake; a new one beyond this closes the oldest, so silent or
    /// slow strangers cannot keep a worker out.
    pub max_unauthenticated: usize,
    /// Codec families workers may use (as `codec::families()` names them); `None`: all.
    pub accept_codecs: Option<Vec<String>>,
}

impl ServerConfig {
    pub fn new(host: impl Into<String>, port: u16, secret: Vec<u8>) -> Self {
        ServerConfig {
            host: host.into(),
            port,
            secret,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: None,
            max_connections: 1024,
            max_unauthenticated: 64,
            accept_codecs: None,
        }
    }
}

struct Shared {
    centre: Arc<Centre>,
    layout: Layout,
    secret: Vec<u8>,
    handshake_timeout: Duration,
    idle_timeout: Option<Duration>,
    max_connections: usize,
    max_unauthenticated: usize,
    accept_codecs: Option<Vec<String>>,
    stopping: AtomicBool,
    counters: Counters,
    /// The centre's clock when the driver asked the workers to stop (None: it has not). Commits
    /// applied after it are told to stop; the lock orders the request against the replies, so
    /// the workers of one synchronous round all get the same answer.
    stop_after: Mutex<Option<u64>>,
    /// The first failure a worker reported (`Op::Failed`): the run cannot succeed.
    failure: Mutex<Option<String>>,
    /// Bits of an f32; NaN: no learning rate set.
    learning_rate: AtomicU32,
    /// Highest sequence number applied or in flight, per (worker, attempt): a replay is refused.
    last_seq: Mutex<HashMap<(u32, u32), u64>>,
    /// The newest attempt seen per worker: Spark's retry of a task supersedes the old attempt.
    attempts: Mutex<HashMap<u32, u32>>,
    /// One lock, so that two commits never end the same epoch.
    epoch_ends: Mutex<EpochEnds>,
    conns: Mutex<Connections>,
}

/// The epochs that every worker has committed past, and the centre as each one ended.
#[derive(Default)]
struct EpochEnds {
    /// Workers of the run (ids `0..workers`); 0: epochs are not tracked.
    workers: u32,
    /// Epochs `0..ended` have ended.
    ended: u32,
    /// The centres not yet taken, by first epoch: epochs `first..end` that ended at one commit
    /// share one copy, so a worker that jumps far ahead costs one copy, not one per epoch.
    centres: BTreeMap<u32, (u32, Arc<Vec<f32>>)>,
}

impl EpochEnds {
    fn take(&mut self, epoch: u32) -> Option<Vec<f32>> {
        let (&first, &(end, _)) = self.centres.range(..=epoch).next_back()?;
        if epoch >= end {
            return None;
        }
        let (_, centre) = self.centres.remove(&first)?;
        if first < epoch {
            self.centres.insert(first, (epoch, Arc::clone(&centre)));
        }
        if epoch + 1 < end {
            self.centres.insert(epoch + 1, (end, Arc::clone(&centre)));
        }
        Some(Arc::unwrap_or_clone(centre))
    }
}

impl Shared {
    /// Keeps the first failure and asks every worker to stop at its next commit.
    fn failed(&self, message: String) {
        self.failure.lock().get_or_insert(message);
        self.stop_after.lock().get_or_insert(self.centre.clock());
    }

    /// The control block of the reply to a commit that left the centre at `clock`.
    fn control(&self, clock: u64) -> p::Control {
        let rate = f32::from_bits(self.learning_rate.load(Ordering::SeqCst));
        p::Control {
            stop: self.stop_after.lock().is_some_and(|asked| clock > asked),
            learning_rate: (!rate.is_nan()).then_some(rate),
        }
    }

    /// Ends the epochs that every tracked worker's last applied commit is past, storing the
    /// centre as it is now for them; called after a commit was applied and counted.
    fn end_epochs(&self) {
        let mut ends = self.epoch_ends.lock();
        if ends.workers == 0 {
            return;
        }
        let Some(reached) = self.counters.min_epoch(ends.workers) else {
            return;
        };
        if reached <= ends.ended {
            return;
        }
        let mut centre = vec![0.0; self.centre.len()];
        self.centre
            .pull(&mut centre)
            .expect("the buffer has the centre's length");
        let first = ends.ended;
        ends.centres.insert(first, (reached, Arc::new(centre)));
        ends.ended = reached;
    }
}

#[derive(Default)]
struct Connections {
    next_id: u64,
    live: HashMap<u64, TcpStream>,
    /// Connections in their handshake, oldest first.
    handshaking: VecDeque<u64>,
    authenticated: usize,
    threads: Vec<JoinHandle<()>>,
}

impl Connections {
    /// Moves connection `id` from the handshake to the authenticated workers, if there is room
    /// and it was not closed meanwhile to make room for a newer one.
    fn authenticate(&mut self, id: u64, max_connections: usize) -> Result<()> {
        let Some(at) = self.handshaking.iter().position(|&c| c == id) else {
            return Err(Error::Closed(
                "the handshake was closed to make room for newer connections".into(),
            ));
        };
        if self.authenticated >= max_connections {
            return Err(Error::Closed(format!(
                "too many connections to the parameter server (it serves {max_connections} workers)"
            )));
        }
        self.handshaking.remove(at);
        self.authenticated += 1;
        Ok(())
    }

    fn leave(&mut self, id: u64, authenticated: bool) {
        self.live.remove(&id);
        if authenticated {
            self.authenticated -= 1;
        } else {
            self.handshaking.retain(|&c| c != id);
        }
    }
}

pub struct Server {
    shared: Arc<Shared>,
    addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `host:port` (port 0 picks a free one) and serves `centre` until stopped.
    pub fn start(centre: Arc<Centre>, layout: Layout, config: ServerConfig) -> Result<Server> {
        for kind in config.accept_codecs.iter().flatten() {
            codec::check_family(kind)?;
        }
        if layout.num_params() != centre.len() {
            return Err(Error::invalid(format!(
                "layout has {} parameters but the centre has {}",
                layout.num_params(),
                centre.len()
            )));
        }
        if config.secret.len() < MIN_SECRET_LEN {
            return Err(Error::invalid(format!(
                "the run secret must be at least {MIN_SECRET_LEN} bytes"
            )));
        }
        let listener = TcpListener::bind((config.host.as_str(), config.port)).map_err(|e| {
            Error::Io(io::Error::new(
                e.kind(),
                format!("cannot listen on {}:{}: {e}", config.host, config.port),
            ))
        })?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            centre,
            layout,
            secret: config.secret,
            handshake_timeout: config.handshake_timeout,
            idle_timeout: config.idle_timeout,
            max_connections: config.max_connections,
            max_unauthenticated: config.max_unauthenticated.max(1),
            accept_codecs: config.accept_codecs,
            stopping: AtomicBool::new(false),
            counters: Counters::default(),
            stop_after: Mutex::new(None),
            failure: Mutex::new(None),
            learning_rate: AtomicU32::new(f32::NAN.to_bits()),
            last_seq: Mutex::new(HashMap::new()),
            attempts: Mutex::new(HashMap::new()),
            epoch_ends: Mutex::new(EpochEnds::default()),
            conns: Mutex::new(Connections::default()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("dk-ps-accept".into())
                .spawn(move || accept_loop(&shared, listener))?
        };
        Ok(Server {
            shared,
            addr,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn centre(&self) -> &Arc<Centre> {
        &self.shared.centre
    }

    pub fn stats(&self) -> Snapshot {
        self.shared.counters.snapshot(self.shared.centre.clock())
    }

    /// Every epoch's logs as the workers' applied commits reported them.
    pub fn epochs(&self) -> BTreeMap<u32, EpochStats> {
        self.shared.counters.epochs()
    }

    /// From now on the run has `workers` workers (ids `0..workers`): once each of them has an
    /// applied commit in an epoch after `e`, epoch `e` has ended, and a consistent copy of the
    /// centre, taken right after the commit that ended it, is kept until `take_epoch_centre(e)`.
    /// Epochs the workers are already past end now.
    pub fn track_epochs(&self, workers: u32) -> Result<()> {
        if workers == 0 {
            return Err(Error::invalid("track_epochs needs at least one worker"));
        }
        self.shared.epoch_ends.lock().workers = workers;
        self.shared.end_epochs();
        Ok(())
    }

    /// How many epochs have ended (epochs `0..epochs_ended()`).
    pub fn epochs_ended(&self) -> u32 {
        self.shared.epoch_ends.lock().ended
    }

    /// The centre as epoch `epoch` ended, handed over once: `None` if it has not ended or was
    /// taken.
    pub fn take_epoch_centre(&self, epoch: u32) -> Option<Vec<f32>> {
        self.shared.epoch_ends.lock().take(epoch)
    }

    /// The first failure a worker reported, if one has: the worker's own code failed, so the
    /// run cannot succeed (its workers are told to stop, as by `set_control`).
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.lock().clone()
    }

    /// What every commit reply carries from now on.
    pub fn set_control(&self, control: p::Control) {
        let shared = &self.shared;
        {
            let mut asked = shared.stop_after.lock();
            *asked = control
                .stop
                .then(|| asked.unwrap_or_else(|| shared.centre.clock()));
        }
        let rate = control.learning_rate.unwrap_or(f32::NAN);
        shared.learning_rate.store(rate.to_bits(), Ordering::SeqCst);
    }

    pub fn is_running(&self) -> bool {
        self.acceptor.is_some()
    }

    /// Stops accepting, closes every connection and joins every thread. Idempotent.
    pub fn stop(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the acceptor out of accept(); it sees the flag and drops the listener.
        let _ = TcpStream::connect_timeout(&wake_addr(self.addr), Duration::from_secs(1));
        let _ = acceptor.join();
        self.shared.centre.close();
        let threads = {
            let mut conns = self.shared.conns.lock();
            for stream in conns.live.values() {
                let _ = stream.shutdown(Shutdown::Both);
            }
            std::mem::take(&mut conns.threads)
        };
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wake_addr(addr: SocketAddr) -> SocketAddr {
    let mut a = addr;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            SocketAddr::V4(_) => [127, 0, 0, 1].into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    a
}

fn accept_loop(shared: &Arc<Shared>, listener: TcpListener) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else {
            // Out of file descriptors or a connection reset before accept: back off briefly.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        shared.counters.add(&shared.counters.connections, 1);
        let mut conns = shared.conns.lock();
        conns.threads.retain(|t| !t.is_finished());
        if conns.handshaking.len() >= shared.max_unauthenticated {
            // The oldest stranger has had the longest to prove itself; its thread sees the close.
            if let Some(oldest) = conns.handshaking.pop_front() {
                if let Some(s) = conns.live.get(&oldest) {
                    let _ = s.shutdown(Shutdown::Both);
                }
                shared.counters.add(&shared.counters.timeouts, 1);
            }
        }
        let id = conns.next_id;
        conns.next_id += 1;
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        conns.live.insert(id, clone);
        conns.handshaking.push_back(id);
        let worker_shared = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name(format!("dk-ps-conn-{id}"))
            .spawn(move || {
                let authenticated = Session::new(&worker_shared, stream, id).run();
                worker_shared.conns.lock().leave(id, authenticated);
            });
        match spawned {
            Ok(t) => conns.threads.push(t),
            Err(_) => conns.leave(id, false),
        }
    }
}

/// What a connection's thread knows about its worker.
struct Session<'a> {
    shared: &'a Shared,
    id: u64,
    conn: Conn<&'a Counters>,
    worker: Option<(u32, u32)>,
    /// The centre as last sent to this worker (the `Cs` of the adaptive rule; reused as reply buffer).
    sent: Vec<f32>,
    pulled: bool,
    received: Vec<f32>,
    commit_codec: Codec,
    pull_codec: Codec,
    /// Compressed bytes, in or out.
    encoded: Vec<u8>,
}

impl<'a> Session<'a> {
    fn new(shared: &'a Shared, stream: TcpStream, id: u64) -> Self {
        Session {
            shared,
            id,
            conn: Conn::new(stream, &shared.counters),
            worker: None,
            sent: Vec::new(),
            pulled: false,
            received: Vec::new(),
            commit_codec: Codec::None,
            pull_codec: Codec::None,
            encoded: Vec::new(),
        }
    }

    /// Serves the connection to its end; returns whether it was authenticated.
    fn run(mut self) -> bool {
        let counters = &self.shared.counters;
        let outcome = self.handshake().and_then(|()| {
            let (worker, _) = self.worker.expect("set by handshake");
            counters.worker_connected(worker, 1);
            let served = self.serve();
            counters.worker_connected(worker, -1);
            served
        });
        if let Err(err) = outcome {
            match &err {
                Error::Io(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    counters.add(&counters.timeouts, 1);
                    let silent = Error::Closed(match self.worker {
                        Some(_) => "the worker was silent for longer than the idle timeout".into(),
                        None => format!(
                            "the handshake did not complete within {:.1} s",
                            self.shared.handshake_timeout.as_secs_f64()
                        ),
                    });
                    let _ = self.conn.send_error(&silent);
                    let _ = self.conn.stream.shutdown(Shutdown::Both);
                    return self.worker.is_some();
                }
                Error::Io(_) => return self.worker.is_some(), // the peer went away: nothing to tell it
                Error::Authentication(_) => counters.add(&counters.auth_failures, 1),
                Error::Protocol(_) | Error::LayoutMismatch(_) => {
                    counters.add(&counters.protocol_errors, 1)
                }
                _ => {}
            }
            let _ = self.conn.send_error(&err);
        }
        let _ = self.conn.stream.shutdown(Shutdown::Both);
        self.worker.is_some()
    }

    fn handshake(&mut self) -> Result<()> {
        let shared = self.shared;
        let stream = &self.conn.stream;
        let until = Instant::now() + shared.handshake_timeout;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(shared.handshake_timeout))?;
        let server_nonce = p::nonce()?;
        self.conn.send(Op::Challenge, &server_nonce, &[])?;

        let mut reader = Deadline {
            stream: &self.conn.stream,
            until,
        };
        let header = p::read_header(&mut reader, p::SMALL_FRAME)?;
        if header.op != Op::Hello || header.len != p::HELLO_LEN {
            return Err(Error::protocol(format!(
                "expected a hello frame, got {:?} of {} bytes",
                header.op, header.len
            )));
        }
        let payload = p::read_small(&mut reader, header.len)?;
        self.conn
            .traffic
            .received(p::HEADER_LEN as u64 + header.len);
        let hello = p::Hello::decode(&payload)?;
        if !p::verify_hello(&shared.secret, &server_nonce, &hello) {
            return Err(Error::Authentication(
                "the worker does not hold this run's secret".into(),
            ));
        }
        if &hello.layout_hash != shared.layout.hash() {
            return Err(Error::LayoutMismatch(format!(
                "the worker's weights do not match the server's ({})",
                shared.layout.describe()
            )));
        }
        let (commit_codec, pull_codec) = p::decode_codecs(&hello.codecs)?;
        self.check_codecs(commit_codec, pull_codec)?;
        shared
            .conns
            .lock()
            .authenticate(self.id, shared.max_connections)?;
        self.worker = Some((hello.worker_id, hello.attempt));
        self.admit(hello.worker_id, hello.attempt)?;
        self.commit_codec = commit_codec;
        self.pull_codec = pull_codec;
        let welcome = p::Welcome {
            mac: p::welcome_mac(&shared.secret, &hello.client_nonce, &server_nonce),
            num_params: shared.centre.len() as u64,
            clock: shared.centre.clock(),
            rule_code: shared.centre.rule().code(),
            resume_samples: shared.counters.worker_samples(hello.worker_id),
        };
        self.conn.send(Op::Welcome, &welcome.encode(), &[])?;
        // Authenticated: from here on a worker may think for as long as the idle timeout allows.
        self.conn.stream.set_read_timeout(shared.idle_timeout)?;
        self.conn.stream.set_write_timeout(shared.idle_timeout)?;
        Ok(())
    }

    /// Admits a worker's attempt unless a newer one has started; a newer one releases the old.
    fn admit(&self, worker: u32, attempt: u32) -> Result<()> {
        let mut attempts = self.shared.attempts.lock();
        let newest = attempts.entry(worker).or_insert(attempt);
        if attempt < *newest {
            return Err(Error::rejected(format!(
                "attempt {attempt} of worker {worker} is stale: attempt {newest} has started"
            )));
        }
        if attempt > *newest {
            *newest = attempt;
            drop(attempts);
            self.shared.centre.release_worker(worker);
        }
        Ok(())
    }

    fn check_current(&self, worker: u32, attempt: u32) -> Result<()> {
        let newest = self.shared.attempts.lock().get(&worker).copied();
        match newest {
            Some(newest) if newest > attempt => Err(Error::rejected(format!(
                "attempt {attempt} of worker {worker} is stale: attempt {newest} has started"
            ))),
            _ => Ok(()),
        }
    }

    fn check_codecs(&self, commit: Codec, pull: Codec) -> Result<()> {
        if let Some(accepted) = &self.shared.accept_codecs {
            for codec in [commit, pull] {
                if !accepted.iter().any(|a| a == codec.kind()) {
                    return Err(Error::protocol(format!(
                        "this parameter server does not accept codec {}; it accepts: {}",
                        codec.name(),
                        accepted.join(", ")
                    )));
                }
            }
        }
        if !pull.can_pull() {
            return Err(Error::protocol(format!(
                "pulls can use {}, not {}",
                codec::one_of(&codec::pull_families()),
                pull.name()
            )));
        }
        if matches!(self.shared.centre.rule(), Rule::Elastic { .. }) && !commit.can_carry_weights()
        {
            return Err(Error::protocol(format!(
                "elastic commits carry weights, which {} cannot compress; use {}",
                commit.name(),
                codec::one_of(&codec::weight_families())
            )));
        }
        Ok(())
    }

    fn serve(&mut self) -> Result<()> {
        let n = self.shared.centre.len();
        // Any codec's commit, or a dense one (a residual flush), with the most logs.
        let max_vector = self.commit_codec.max_encoded_len(n).max(4 * n);
        // At least a small frame: a failure's message is one.
        let max_frame =
            ((p::COMMIT_HEAD_LEN + 4 * p::MAX_LOGS + max_vector) as u64).max(p::SMALL_FRAME);
        loop {
            let header = self.conn.read_header(max_frame)?;
            let expect = |len: u64| {
                if header.len == len {
                    Ok(())
                } else {
                    Err(Error::protocol(format!(
                        "{:?} frame must be {len} bytes, got {}",
                        header.op, header.len
                    )))
                }
            };
            match header.op {
                Op::Pull => {
                    expect(0)?;
                    self.pull()?;
                }
                Op::Commit => {
                    if header.len < p::COMMIT_HEAD_LEN as u64 {
                        return Err(Error::protocol("commit frame is shorter than its header"));
                    }
                    // Counted before the reply goes out, so a worker reading stats sees it.
                    let frame = p::HEADER_LEN as u64 + header.len;
                    let counters = &self.shared.counters;
                    counters.add(&counters.commit_bytes, frame);
                    self.commit(header.len)?;
                }
                Op::Stats => {
                    expect(0)?;
                    self.stats()?;
                }
                Op::Bye => {
                    expect(0)?;
                    return Ok(());
                }
                Op::Failed => {
                    if header.len > p::SMALL_FRAME {
                        return Err(Error::protocol("failure message is too long"));
                    }
                    let message = self.conn.read_small(header.len)?;
                    self.shared
                        .failed(String::from_utf8_lossy(&message).into_owned());
                    return Ok(());
                }
                op => {
                    return Err(Error::protocol(format!(
                        "unexpected {op:?} frame from a worker"
                    )))
                }
            }
        }
    }

    fn pull(&mut self) -> Result<()> {
        self.sent.resize(self.shared.centre.len(), 0.0);
        let clock = self.shared.centre.pull(&mut self.sent)?;
        self.pulled = true;
        self.shared
            .counters
            .worker_pulled(self.worker.expect("authenticated").0);
        let head = clock.to_le_bytes();
        if self.pull_codec == Codec::None {
            return self.conn.send_values(Op::Centre, &head, &self.sent);
        }
        self.pull_codec.encode(&self.sent, clock, &mut self.encoded);
        self.conn.send(Op::Centre, &head, &self.encoded)
    }

    fn commit(&mut self, payload_len: u64) -> Result<()> {
        let shared = self.shared;
        let (worker, attempt) = self.worker.expect("authenticated");
        let mut head = [0u8; p::COMMIT_HEAD_LEN];
        self.received.resize(shared.centre.len(), 0.0);
        // The whole frame is read before anything is checked or applied.
        self.conn.read_exact(&mut head)?;
        let head = p::decode_commit_head(&head)?;
        let body_len = head.body_len(payload_len)?;
        if self.commit_codec == Codec::None && body_len != 4 * self.received.len() {
            return Err(Error::protocol(format!(
                "a commit's vector must be {} bytes, got {body_len}",
                4 * self.received.len()
            )));
        }
        let mut logs = [0u8; 4 * p::MAX_LOGS];
        let logs = &mut logs[..head.logs_len()];
        self.conn.read_exact(logs)?;
        let progress = head.progress(logs);
        let dense = self.commit_codec == Codec::None || head.flags & p::DENSE != 0;
        let max_abs = if dense && body_len == 4 * self.received.len() {
            p::read_finite(&mut self.conn.stream, &mut self.received)?.ok_or_else(|| {
                Error::rejected("commit contains NaN or infinity; the centre is unchanged")
            })
        } else {
            p::read_growing(&mut self.conn.stream, body_len, &mut self.encoded)?;
            let codec = if dense {
                Codec::None
            } else {
                self.commit_codec
            };
            codec.decode(&self.encoded, &mut self.received)
        };

        let outcome = max_abs.and_then(|max_abs| {
            self.check_current(worker, attempt)?;
            self.check_seq(worker, attempt, &head)?;
            self.apply(worker, &head, max_abs)
        });
        match outcome {
            Ok(applied) => {
                let moved = shared
                    .counters
                    .worker_committed(worker, applied.staleness, &progress);
                // Only a worker's first commit, or its first in a new epoch, can end an epoch.
                if moved {
                    shared.end_epochs();
                }
                // A synchronous round's workers all stop after it, or all go on to the next.
                let reply_head = p::encode_committed(applied, shared.control(applied.clock));
                let values: &[f32] = if shared.centre.rule().replies_with_vector() {
                    &self.sent
                } else {
                    &[]
                };
                self.conn.send_values(Op::Committed, &reply_head, values)
            }
            Err(err @ (Error::Rejected(_) | Error::InvalidArgument(_))) => {
                shared.counters.add(&shared.counters.rejected, 1);
                // The frame was read whole, so the stream is still in step: say why and go on.
                let _ = self.conn.send_error(&err);
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    fn check_seq(&self, worker: u32, attempt: u32, head: &p::CommitHead) -> Result<()> {
        if head.worker_id != worker {
            return Err(Error::rejected(format!(
                "commit names worker {} but this connection belongs to worker {worker}",
                head.worker_id
            )));
        }
        let mut seqs = self.shared.last_seq.lock();
        let last = seqs.entry((worker, attempt)).or_insert(0);
        if head.seq <= *last {
            return Err(Error::rejected(format!(
                "duplicate commit: worker {worker} attempt {attempt} already sent sequence {}",
                *last
            )));
        }
        *last = head.seq;
        Ok(())
    }

    fn apply(&mut self, worker: u32, head: &p::CommitHead, max_abs: f32) -> Result<Applied> {
        let centre = &self.shared.centre;
        let rule = centre.rule();
        if matches!(rule, Rule::Adaptive { .. }) && !self.pulled {
            return Err(Error::rejected(
                "the adaptive rule needs a pull before the first commit",
            ));
        }
        let sent = self.pulled.then_some(&self.sent[..]);
        if rule.replies_with_vector() {
            let mut reply = std::mem::take(&mut self.sent);
            reply.resize(centre.len(), 0.0);
            let applied = centre.commit(
                Finite::checked(&self.received, max_abs),
                head.last_pull_clock,
                None,
                Some(&mut reply),
                worker,
            );
            self.sent = reply;
            if matches!(rule, Rule::Sync { .. }) && applied.is_ok() {
                self.pulled = true; // the reply is the new centre
            }
            applied
        } else {
            centre.commit(
                Finite::checked(&self.received, max_abs),
                head.last_pull_clock,
                sent,
                None,
                worker,
            )
        }
    }

    fn stats(&mut self) -> Result<()> {
        let snapshot = self.shared.counters.snapshot(self.shared.centre.clock());
        self.conn
            .send(Op::StatsReply, &p::encode_stats(&snapshot), &[])
    }
}

/// Reads so that all reads through it together end by `until`: a per-read timeout would let a
/// peer that sends a byte at a time take as long as it likes.
struct Deadline<'a> {
    stream: &'a TcpStream,
    until: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

/// Resolves `host:port` text the way both the server and the client accept it.
pub fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .map_err(|e| Error::invalid(format!("cannot resolve {addr:?}: {e}")))?
        .next()
        .ok_or_else(|| Error::invalid(format!("{addr:?} resolves to no address")))
}
