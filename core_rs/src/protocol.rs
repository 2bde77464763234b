//! The wire protocol: length-prefixed binary frames, little-endian.
//!
//! Every frame is a 16-byte header — magic `DKPS`, version, op, two reserved zero bytes and a
//! u64 payload length — followed by the payload. The server greets each connection with a
//! challenge; the worker proves it holds the run's secret with an HMAC-SHA256 over both nonces,
//! its identity and its layout hash, and the server proves the same back. See `docs/protocol.md`.
//!
//! Every number on the wire is named here: ops, error codes, rule codes, codec ids, the layout of
//! each message. `Conn` is the one way both sides write and read frames, counting their bytes.

use std::io::{Read, Write};
use std::net::TcpStream;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::centre::Applied;
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::stats::Snapshot;
/// The names of a `StatsReply`'s values, in order (the schema is in `stats`).
pub use crate::stats::STATS_FIELDS;

#[cfg(target_endian = "big")]
compile_error!("the wire format reads float32 payloads in place and assumes a little-endian host");

pub const MAGIC: [u8; 4] = *b"DKPS";
/// 4: commits carry the worker's epoch and its window's logs; commit replies carry the control
/// block (stop, learning rate) the driver sets.
pub const VERSION: u8 = 4;
pub const HEADER_LEN: usize = 16;
pub const NONCE_LEN: usize = 32;
pub const MAC_LEN: usize = 32;
/// Largest frame allowed before authentication (and for any frame without a vector).
pub const SMALL_FRAME: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Challenge = 1,
    Hello = 2,
    Welcome = 3,
    Error = 4,
    Pull = 5,
    Centre = 6,
    Commit = 7,
    Committed = 8,
    Stats = 9,
    StatsReply = 10,
    Bye = 11,
    /// A worker's last word: its own code failed, with this message (UTF-8), and it is leaving.
    Failed = 12,
}

impl Op {
    pub fn from_u8(v: u8) -> Option<Op> {
        use Op::*;
        [
            Challenge, Hello, Welcome, Error, Pull, Centre, Commit, Committed, Stats, StatsReply,
            Bye, Failed,
        ]
        .into_iter()
        .find(|op| *op as u8 == v)
    }
}

/// Error codes carried by an `Error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    Authentication = 1,
    LayoutMismatch = 2,
    Protocol = 3,
    Rejected = 4,
    Closed = 5,
}

impl ErrorCode {
    pub fn from_u16(v: u16) -> Option<ErrorCode> {
        use ErrorCode::*;
        [Authentication, LayoutMismatch, Protocol, Rejected, Closed]
            .into_iter()
            .find(|code| *code as u16 == v)
    }

    pub fn of(err: &Error) -> ErrorCode {
        match err {
            Error::Authentication(_) => ErrorCode::Authentication,
            Error::LayoutMismatch(_) => ErrorCode::LayoutMismatch,
            Error::Rejected(_) | Error::InvalidArgument(_) => ErrorCode::Rejected,
            Error::Closed(_) => ErrorCode::Closed,
            Error::Protocol(_) | Error::Io(_) => ErrorCode::Protocol,
        }
    }

    /// The error a client raises for an `Error` frame from the server.
    /// An unknown code reads as a protocol error.
    pub fn into_error(code: u16, message: String) -> Error {
        match ErrorCode::from_u16(code) {
            Some(ErrorCode::Authentication) => Error::Authentication(message),
            Some(ErrorCode::LayoutMismatch) => Error::LayoutMismatch(message),
            Some(ErrorCode::Rejected) => Error::Rejected(message),
            Some(ErrorCode::Closed) => Error::Closed(message),
            Some(ErrorCode::Protocol) | None => Error::Protocol(message),
        }
    }
}

/// Update-rule codes, sent in the welcome so a client knows what a commit reply carries.
pub mod rule_code {
    pub const ADD: u8 = 1;
    pub const DYNSGD: u8 = 2;
    pub const ADAPTIVE: u8 = 3;
    /// Its commit replies carry `E`.
    pub const ELASTIC: u8 = 4;
    /// Its commit replies carry the new centre.
    pub const SYNC: u8 = 5;
}

/// Codec ids, sent in the hello (`encode_codecs`).
pub mod codec_id {
    pub const NONE: u8 = 0;
    pub const FP16: u8 = 1;
    pub const BF16: u8 = 2;
    /// Parameter 1: stochastic rounding.
    pub const INT8: u8 = 3;
    /// Parameter: the ratio.
    pub const TOPK: u8 = 4;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub op: Op,
    pub len: u64,
}

pub fn encode_header(op: Op, len: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4] = VERSION;
    h[5] = op as u8;
    h[8..].copy_from_slice(&len.to_le_bytes());
    h
}

/// Parses and bounds-checks a header; `max_len` is the largest payload the reader will accept.
pub fn decode_header(bytes: &[u8; HEADER_LEN], max_len: u64) -> Result<Header> {
    if bytes[..4] != MAGIC {
        return Err(Error::protocol("bad magic: not a distkeras-plus frame"));
    }
    if bytes[4] != VERSION {
        return Err(Error::protocol(format!(
            "protocol version {} is not supported (this side speaks {VERSION})",
            bytes[4]
        )));
    }
    let op =
        Op::from_u8(bytes[5]).ok_or_else(|| Error::protocol(format!("unknown op {}", bytes[5])))?;
    if bytes[6] != 0 || bytes[7] != 0 {
        return Err(Error::protocol("reserved header bytes must be zero"));
    }
    let len = u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes"));
    if len > max_len {
        return Err(Error::protocol(format!(
            "{op:?} frame of {len} bytes exceeds the limit of {max_len}"
        )));
    }
    Ok(Header { op, len })
}

pub fn read_header(r: &mut impl Read, max_len: u64) -> Result<Header> {
    let mut h = [0u8; HEADER_LEN];
    r.read_exact(&mut h)?;
    decode_header(&h, max_len)
}

/// Writes a frame whose payload is `head` followed by `body`; returns the bytes written.
pub fn write_frame(w: &mut impl Write, op: Op, head: &[u8], body: &[u8]) -> Result<u64> {
    let len = (head.len() + body.len()) as u64;
    let mut first = Vec::with_capacity(HEADER_LEN + head.len());
    first.extend_from_slice(&encode_header(op, len));
    first.extend_from_slice(head);
    w.write_all(&first)?;
    if !body.is_empty() {
        w.write_all(body)?;
    }
    Ok(HEADER_LEN as u64 + len)
}

/// Reads `values` chunk by chunk, checking each chunk for NaN or infinity while it is still in
/// cache. Reads everything either way, so the stream stays in step; returns the largest `|value|`,
/// or `None` if any is not finite.
pub fn read_finite(r: &mut impl Read, values: &mut [f32]) -> Result<Option<f32>> {
    let mut max = Some(0f32);
    for chunk in values.chunks_mut(1 << 15) {
        r.read_exact(bytemuck::cast_slice_mut(chunk))?;
        max = max
            .zip(crate::rules::finite_max_abs(chunk))
            .map(|(a, b)| a.max(b));
    }
    Ok(max)
}

/// Reads exactly `len` bytes into `buf`, which grows as they arrive: a peer that declares a large
/// frame and stalls holds only the memory of what it sent.
pub fn read_growing(r: &mut impl Read, len: usize, buf: &mut Vec<u8>) -> Result<()> {
    buf.clear();
    if r.take(len as u64).read_to_end(buf)? < len {
        return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(())
}

pub fn read_small(r: &mut impl Read, len: u64) -> Result<Vec<u8>> {
    debug_assert!(len <= SMALL_FRAME);
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

pub fn error_payload(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut msg = message.as_bytes();
    msg = &msg[..msg.len().min(SMALL_FRAME as usize - 2)];
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&(code as u16).to_le_bytes());
    out.extend_from_slice(msg);
    out
}

pub fn decode_error(payload: &[u8]) -> Error {
    if payload.len() < 2 {
        return Error::protocol("malformed error frame from the server");
    }
    let code = u16::from_le_bytes([payload[0], payload[1]]);
    ErrorCode::into_error(code, String::from_utf8_lossy(&payload[2..]).into_owned())
}

/// A little-endian cursor over a small payload; every read is bounds-checked.
pub struct Fields<'a>(pub &'a [u8]);

impl Fields<'_> {
    pub fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.0.len() < n {
            return Err(Error::protocol("frame payload is shorter than its fields"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
    pub fn finish(&self) -> Result<()> {
        if !self.0.is_empty() {
            return Err(Error::protocol("frame payload is longer than its fields"));
        }
        Ok(())
    }
}

// ---- Handshake messages ----

/// Worker -> server, answering the challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub worker_id: u32,
    pub attempt: u32,
    pub client_nonce: [u8; NONCE_LEN],
    pub layout_hash: [u8; 32],
    /// Commit codec id, pull codec id, two zero bytes, commit codec parameter (f32).
    pub codecs: [u8; 8],
    pub mac: [u8; MAC_LEN],
}

pub const HELLO_LEN: u64 = 4 + 4 + NONCE_LEN as u64 + 32 + 8 + MAC_LEN as u64;

/// The codec bytes of a hello.
pub fn encode_codecs(commit: &Codec, pull: &Codec) -> [u8; 8] {
    let (id, param) = commit.to_wire();
    let mut out = [0u8; 8];
    out[0] = id;
    out[1] = pull.to_wire().0;
    out[4..].copy_from_slice(&param.to_le_bytes());
    out
}

/// (commit codec, pull codec) from a hello's codec bytes.
pub fn decode_codecs(bytes: &[u8; 8]) -> Result<(Codec, Codec)> {
    if bytes[2] != 0 || bytes[3] != 0 {
        return Err(Error::protocol("reserved codec bytes must be zero"));
    }
    let param = f32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    // A codec the hello cannot name (a topk ratio out of range, too) is refused like every other
    // codec refusal: a protocol error, code 3.
    let codec = |id, param| {
        Codec::from_wire(id, param)
            .map_err(|e| Error::protocol(format!("the hello names an unusable codec: {e}")))
    };
    Ok((codec(bytes[0], param)?, codec(bytes[1], 0.0)?))
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HELLO_LEN as usize);
        out.extend_from_slice(&self.worker_id.to_le_bytes());
        out.extend_from_slice(&self.attempt.to_le_bytes());
        out.extend_from_slice(&self.client_nonce);
        out.extend_from_slice(&self.layout_hash);
        out.extend_from_slice(&self.codecs);
        out.extend_from_slice(&self.mac);
        out
    }
    pub fn decode(payload: &[u8]) -> Result<Hello> {
        let mut f = Fields(payload);
        let hello = Hello {
            worker_id: f.u32()?,
            attempt: f.u32()?,
            client_nonce: f.array()?,
            layout_hash: f.array()?,
            codecs: f.array()?,
            mac: f.array()?,
        };
        f.finish()?;
        Ok(hello)
    }
}

/// Server -> worker after a good hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub mac: [u8; MAC_LEN],
    pub num_params: u64,
    pub clock: u64,
    pub rule_code: u8,
    /// Samples this worker's earlier attempts reported with their last applied commit: a retried
    /// task continues after them rather than training its partition again.
    pub resume_samples: u64,
}

pub const WELCOME_LEN: u64 = MAC_LEN as u64 + 8 + 8 + 8 + 8;

impl Welcome {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(WELCOME_LEN as usize);
        out.extend_from_slice(&self.mac);
        out.extend_from_slice(&self.num_params.to_le_bytes());
        out.extend_from_slice(&self.clock.to_le_bytes());
        out.extend_from_slice(&[self.rule_code, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&self.resume_samples.to_le_bytes());
        out
    }
    pub fn decode(payload: &[u8]) -> Result<Welcome> {
        let mut f = Fields(payload);
        let w = Welcome {
            mac: f.array()?,
            num_params: f.u64()?,
            clock: f.u64()?,
            rule_code: f.array::<8>()?[0],
            resume_samples: f.u64()?,
        };
        f.finish()?;
        Ok(w)
    }
}

type HmacSha256 = Hmac<Sha256>;

fn mac_over(secret: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac
}

fn hello_parts<'a>(
    server_nonce: &'a [u8; NONCE_LEN],
    ids: &'a [u8; 8],
    hello: &'a Hello,
) -> [&'a [u8]; 6] {
    [
        b"distkeras-plus hello v1",
        server_nonce,
        ids,
        &hello.client_nonce,
        &hello.layout_hash,
        &hello.codecs,
    ]
}

fn ids(worker_id: u32, attempt: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&worker_id.to_le_bytes());
    out[4..].copy_from_slice(&attempt.to_le_bytes());
    out
}

pub fn hello_mac(secret: &[u8], server_nonce: &[u8; NONCE_LEN], hello: &Hello) -> [u8; MAC_LEN] {
    let ids = ids(hello.worker_id, hello.attempt);
    let parts = hello_parts(server_nonce, &ids, hello);
    mac_over(secret, &parts).finalize().into_bytes().into()
}

/// Constant-time check of a worker's hello MAC.
pub fn verify_hello(secret: &[u8], server_nonce: &[u8; NONCE_LEN], hello: &Hello) -> bool {
    let ids = ids(hello.worker_id, hello.attempt);
    let parts = hello_parts(server_nonce, &ids, hello);
    mac_over(secret, &parts).verify_slice(&hello.mac).is_ok()
}

fn welcome_parts<'a>(
    client_nonce: &'a [u8; NONCE_LEN],
    server_nonce: &'a [u8; NONCE_LEN],
) -> [&'a [u8]; 3] {
    [b"distkeras-plus welcome v1", client_nonce, server_nonce]
}

pub fn welcome_mac(
    secret: &[u8],
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
) -> [u8; MAC_LEN] {
    mac_over(secret, &welcome_parts(client_nonce, server_nonce))
        .finalize()
        .into_bytes()
        .into()
}

/// Constant-time check, on the worker, that the server holds the secret too.
pub fn verify_welcome(
    secret: &[u8],
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
    mac: &[u8; MAC_LEN],
) -> bool {
    mac_over(secret, &welcome_parts(client_nonce, server_nonce))
        .verify_slice(mac)
        .is_ok()
}

pub fn nonce() -> Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
    Ok(n)
}

/// Fixed prefix of a commit payload, before its logs and its vector.
pub const COMMIT_HEAD_LEN: usize = 40;

/// Commit flag: this frame's vector is plain float32, whatever the connection's codec (a worker
/// flushing its error-feedback residual at the end).
pub const DENSE: u32 = 1;

/// Most logs values one commit may carry.
pub const MAX_LOGS: usize = 32;

/// What a worker says of its own training with each commit: the driver shows it as progress and
/// averages the logs over each epoch (`stats::EpochStats`). It never affects the centre.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Samples the worker has trained on so far (its earlier attempts' included).
    pub samples: u64,
    /// The epoch it is training.
    pub epoch: u32,
    /// Its window's mean loss, then each metric's window mean, in an order the Python side
    /// defines; at most `MAX_LOGS`.
    pub logs: Vec<f32>,
}

/// A commit's head and logs: the part of its payload before the vector.
pub fn encode_commit_head(
    worker_id: u32,
    flags: u32,
    seq: u64,
    last_pull_clock: u64,
    progress: &Progress,
) -> Vec<u8> {
    assert!(progress.logs.len() <= MAX_LOGS, "checked by set_progress");
    let mut h = Vec::with_capacity(COMMIT_HEAD_LEN + 4 * progress.logs.len());
    h.extend_from_slice(&worker_id.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&seq.to_le_bytes());
    h.extend_from_slice(&last_pull_clock.to_le_bytes());
    h.extend_from_slice(&progress.samples.to_le_bytes());
    h.extend_from_slice(&progress.epoch.to_le_bytes());
    h.extend_from_slice(&(progress.logs.len() as u16).to_le_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend(progress.logs.iter().flat_map(|v| v.to_le_bytes()));
    h
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitHead {
    pub worker_id: u32,
    pub flags: u32,
    pub seq: u64,
    pub last_pull_clock: u64,
    pub samples: u64,
    pub epoch: u32,
    /// How many float32 logs values follow the head (at most `MAX_LOGS`).
    pub n_logs: u16,
}

impl CommitHead {
    /// The bytes of the logs that follow the head.
    pub fn logs_len(&self) -> usize {
        4 * usize::from(self.n_logs)
    }

    /// The length of the vector in a commit payload of `payload_len` bytes.
    pub fn body_len(&self, payload_len: u64) -> Result<usize> {
        (payload_len as usize)
            .checked_sub(COMMIT_HEAD_LEN + self.logs_len())
            .ok_or_else(|| Error::protocol("commit frame is shorter than its head and logs"))
    }

    /// The worker's progress, with the logs read after the head.
    pub fn progress(&self, logs: &[u8]) -> Progress {
        debug_assert_eq!(logs.len(), self.logs_len());
        Progress {
            samples: self.samples,
            epoch: self.epoch,
            logs: logs
                .chunks_exact(4)
                .map(|v| f32::from_le_bytes(v.try_into().expect("4 bytes")))
                .collect(),
        }
    }
}

pub fn decode_commit_head(h: &[u8; COMMIT_HEAD_LEN]) -> Result<CommitHead> {
    let mut f = Fields(h);
    let worker_id = f.u32()?;
    let flags = f.u32()?;
    if flags & !DENSE != 0 {
        return Err(Error::protocol(format!("unknown commit flags {flags:#x}")));
    }
    let seq = f.u64()?;
    let last_pull_clock = f.u64()?;
    let samples = f.u64()?;
    let epoch = f.u32()?;
    let [a, b, z0, z1] = f.array()?;
    let n_logs = u16::from_le_bytes([a, b]);
    if usize::from(n_logs) > MAX_LOGS {
        return Err(Error::protocol(format!(
            "a commit carries at most {MAX_LOGS} logs values, not {n_logs}"
        )));
    }
    if [z0, z1] != [0, 0] {
        return Err(Error::protocol("commit head has non-zero reserved bytes"));
    }
    Ok(CommitHead {
        worker_id,
        flags,
        seq,
        last_pull_clock,
        samples,
        epoch,
        n_logs,
    })
}

/// Control bit of a commit reply: the driver asks every worker to stop at this exchange.
pub const STOP: u32 = 1;

/// What the driver tells every worker with each commit reply. The server only relays it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Control {
    pub stop: bool,
    /// The learning rate the workers' optimizers should use from their next window.
    pub learning_rate: Option<f32>,
}

/// Fixed prefix of a `Committed` payload, before any vector.
pub const COMMITTED_HEAD_LEN: usize = 24;

pub fn encode_committed(applied: Applied, control: Control) -> [u8; COMMITTED_HEAD_LEN] {
    let mut h = [0u8; COMMITTED_HEAD_LEN];
    h[..8].copy_from_slice(&applied.clock.to_le_bytes());
    h[8..16].copy_from_slice(&applied.staleness.to_le_bytes());
    h[16..20].copy_from_slice(&(if control.stop { STOP } else { 0 }).to_le_bytes());
    let rate = control.learning_rate.unwrap_or(f32::NAN);
    h[20..].copy_from_slice(&rate.to_le_bytes());
    h
}

pub fn decode_committed(h: &[u8; COMMITTED_HEAD_LEN]) -> Result<(Applied, Control)> {
    let mut f = Fields(h);
    let applied = Applied {
        clock: f.u64()?,
        staleness: f.u64()?,
    };
    let bits = f.u32()?;
    if bits & !STOP != 0 {
        return Err(Error::protocol(format!(
            "unknown control bits {bits:#x} in a commit reply"
        )));
    }
    let rate = f32::from_bits(f.u32()?);
    let control = Control {
        stop: bits & STOP != 0,
        learning_rate: (!rate.is_nan()).then_some(rate),
    };
    Ok((applied, control))
}

/// A `StatsReply` payload: every value of `stats::Snapshot::fields`, u64 each, in that order.
pub const STATS_REPLY_LEN: usize = 8 * STATS_FIELDS.len();

pub fn encode_stats(snapshot: &Snapshot) -> Vec<u8> {
    snapshot
        .fields()
        .iter()
        .flat_map(|(_, v)| v.to_le_bytes())
        .collect()
}

/// The values of a `StatsReply`, named as in `STATS_FIELDS`.
pub fn decode_stats(payload: &[u8]) -> Result<Vec<(&'static str, u64)>> {
    let mut f = Fields(payload);
    let named = STATS_FIELDS
        .iter()
        .map(|name| Ok((*name, f.u64()?)))
        .collect::<Result<Vec<_>>>()?;
    f.finish()?;
    Ok(named)
}

// ---- Connections ----

/// Where one side counts the bytes of the frames it sends and receives.
pub trait Traffic {
    fn sent(&mut self, bytes: u64);
    fn received(&mut self, bytes: u64);
}

/// A worker's own byte counts (the server counts into `stats::Counters`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Traffic for Totals {
    fn sent(&mut self, bytes: u64) {
        self.bytes_out += bytes;
    }
    fn received(&mut self, bytes: u64) {
        self.bytes_in += bytes;
    }
}

/// One end of a connection. Client and server write and read every frame through it, so each
/// side counts the same bytes: a frame is counted whole when it is written, and when its header
/// has been read and accepted.
pub struct Conn<T> {
    pub stream: TcpStream,
    pub traffic: T,
}

impl<T: Traffic> Conn<T> {
    pub fn new(stream: TcpStream, traffic: T) -> Self {
        Conn { stream, traffic }
    }

    /// Writes a frame whose payload is `head` followed by `body`.
    pub fn send(&mut self, op: Op, head: &[u8], body: &[u8]) -> Result<()> {
        let n = write_frame(&mut self.stream, op, head, body)?;
        self.traffic.sent(n);
        Ok(())
    }

    /// Writes a frame whose payload is `head` followed by the raw bytes of `values` (no copy).
    pub fn send_values(&mut self, op: Op, head: &[u8], values: &[f32]) -> Result<()> {
        self.send(op, head, bytemuck::cast_slice(values))
    }

    /// Writes an `Error` frame saying what `err` is.
    pub fn send_error(&mut self, err: &Error) -> Result<()> {
        let msg = error_payload(ErrorCode::of(err), &err.to_string());
        self.send(Op::Error, &msg, &[])
    }

    /// Reads and checks a header (`max_len`: the largest payload accepted) and counts its frame.
    pub fn read_header(&mut self, max_len: u64) -> Result<Header> {
        let h = read_header(&mut self.stream, max_len)?;
        self.traffic.received(HEADER_LEN as u64 + h.len);
        Ok(h)
    }

    pub fn read_small(&mut self, len: u64) -> Result<Vec<u8>> {
        read_small(&mut self.stream, len)
    }

    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.stream.read_exact(buf)?;
        Ok(())
    }

    /// Reads straight into `values` (no intermediate copy).
    pub fn read_values(&mut self, values: &mut [f32]) -> Result<()> {
        self.read_exact(bytemuck::cast_slice_mut(values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn commit_head_round_trips(
            worker in any::<u32>(),
            dense in any::<bool>(),
            seq in any::<u64>(),
            clock in any::<u64>(),
            samples in any::<u64>(),
            epoch in any::<u32>(),
            logs in proptest::collection::vec(any::<f32>(), 0..=MAX_LOGS),
        ) {
            let flags = if dense { DENSE } else { 0 };
            let progress = Progress { samples, epoch, logs };
            let bytes = encode_commit_head(worker, flags, seq, clock, &progress);
            let head = decode_commit_head(bytes[..COMMIT_HEAD_LEN].try_into().unwrap()).unwrap();
            let n_logs = progress.logs.len() as u16;
            prop_assert_eq!(head, CommitHead { worker_id: worker, flags, seq, last_pull_clock: clock, samples, epoch, n_logs });
            let got = head.progress(&bytes[COMMIT_HEAD_LEN..]);
            let bits = |p: &Progress| p.logs.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!((got.samples, got.epoch, bits(&got)), (samples, epoch, bits(&progress)));
            prop_assert_eq!(head.body_len(bytes.len() as u64 + 12).unwrap(), 12);
        }

        #[test]
        fn more_than_max_logs_is_refused(n_logs in (MAX_LOGS as u16 + 1)..=u16::MAX) {
            let mut bytes = encode_commit_head(1, 0, 1, 0, &Progress::default());
            bytes[36..38].copy_from_slice(&n_logs.to_le_bytes());
            let err = decode_commit_head(bytes[..].try_into().unwrap()).unwrap_err();
            prop_assert!(matches!(&err, Error::Protocol(m) if m.contains("at most 32")), "{}", err);
        }

        #[test]
        fn committed_reply_round_trips(
            clock in any::<u64>(),
            staleness in any::<u64>(),
            stop in any::<bool>(),
            rate in proptest::option::of(0f32..10.0),
        ) {
            let applied = Applied { clock, staleness };
            let control = Control { stop, learning_rate: rate };
            prop_assert_eq!(decode_committed(&encode_committed(applied, control)).unwrap(), (applied, control));
        }
    }

    #[test]
    fn a_commit_head_checks_its_reserved_bytes_and_length() {
        let progress = Progress {
            samples: 1,
            epoch: 2,
            logs: vec![0.5; 3],
        };
        let bytes = encode_commit_head(1, 0, 1, 0, &progress);
        let head = decode_commit_head(bytes[..COMMIT_HEAD_LEN].try_into().unwrap()).unwrap();
        assert!(head.body_len(COMMIT_HEAD_LEN as u64 + 11).is_err());
        assert_eq!(head.body_len(COMMIT_HEAD_LEN as u64 + 12).unwrap(), 0);
        let mut bad = bytes.clone();
        bad[39] = 1;
        assert!(decode_commit_head(bad[..COMMIT_HEAD_LEN].try_into().unwrap()).is_err());
    }

    #[test]
    fn unknown_control_bits_are_a_protocol_error() {
        let mut reply = encode_committed(
            Applied {
                clock: 1,
                staleness: 0,
            },
            Control::default(),
        );
        assert_eq!(
            decode_committed(&reply).unwrap().1,
            Control {
                stop: false,
                learning_rate: None
            }
        );
        reply[16] = 2;
        assert!(matches!(decode_committed(&reply), Err(Error::Protocol(_))));
    }

    #[test]
    fn a_large_declared_frame_holds_only_what_arrived() {
        let mut buf = Vec::new();
        let sent = [7u8; 1000];
        let err = read_growing(&mut &sent[..], 100 << 20, &mut buf).unwrap_err();
        assert!(matches!(err, Error::Io(ref e) if e.kind() == std::io::ErrorKind::UnexpectedEof));
        assert_eq!(buf.len(), 1000);
        assert!(
            buf.capacity() < 1 << 20,
            "{} bytes reserved",
            buf.capacity()
        );
        read_growing(&mut &sent[..], 600, &mut buf).unwrap();
        assert_eq!(buf, [7u8; 600]);
    }

    #[test]
    fn header_round_trip_and_bounds() {
        let h = encode_header(Op::Commit, 1234);
        assert_eq!(
            decode_header(&h, 1234).unwrap(),
            Header {
                op: Op::Commit,
                len: 1234
            }
        );
        assert!(decode_header(&h, 1233)
            .unwrap_err()
            .to_string()
            .contains("exceeds"));
        let mut bad = h;
        bad[0] = b'X';
        assert!(decode_header(&bad, u64::MAX).is_err());
        let mut bad = h;
        bad[4] = 9;
        assert!(decode_header(&bad, u64::MAX)
            .unwrap_err()
            .to_string()
            .contains("version"));
        let mut bad = h;
        bad[5] = 200;
        assert!(decode_header(&bad, u64::MAX)
            .unwrap_err()
            .to_string()
            .contains("unknown op"));
        let mut bad = h;
        bad[7] = 1;
        assert!(decode_header(&bad, u64::MAX).is_err());
    }

    #[test]
    fn an_unreadable_codec_is_a_protocol_error() {
        let topk = |ratio: f32| {
            let mut bytes = [codec_id::TOPK, 0, 0, 0, 0, 0, 0, 0];
            bytes[4..].copy_from_slice(&ratio.to_le_bytes());
            decode_codecs(&bytes)
        };
        assert!(topk(0.5).is_ok());
        for ratio in [0.0, 2.0, f32::NAN] {
            assert!(matches!(topk(ratio), Err(Error::Protocol(_))), "{ratio}");
        }
        let unknown = decode_codecs(&[200, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(unknown, Err(Error::Protocol(_))));
    }

    #[test]
    fn hello_mac_binds_every_field() {
        let secret = b"run secret";
        let server_nonce = [7u8; NONCE_LEN];
        let mut hello = Hello {
            worker_id: 3,
            attempt: 1,
            client_nonce: [9; NONCE_LEN],
            layout_hash: [1; 32],
            codecs: encode_codecs(&Codec::TopK { ratio: 0.01 }, &Codec::Fp16),
            mac: [0; 32],
        };
        hello.mac = hello_mac(secret, &server_nonce, &hello);
        assert!(verify_hello(secret, &server_nonce, &hello));
        assert_eq!(Hello::decode(&hello.encode()).unwrap(), hello);
        assert!(!verify_hello(b"other secret", &server_nonce, &hello));
        assert!(!verify_hello(secret, &[8u8; NONCE_LEN], &hello));
        for tamper in [
            |h: &mut Hello| h.worker_id = 4,
            |h: &mut Hello| h.attempt = 2,
            |h: &mut Hello| h.layout_hash[0] ^= 1,
            |h: &mut Hello| h.client_nonce[5] ^= 1,
            |h: &mut Hello| h.codecs[0] = 0,
        ] {
            let mut t = hello.clone();
            tamper(&mut t);
            assert!(!verify_hello(secret, &server_nonce, &t));
        }
        assert!(Hello::decode(&hello.encode()[1..]).is_err());
    }

    #[test]
    fn error_codes_round_trip() {
        for code in 1..=5u16 {
            let kind = ErrorCode::from_u16(code).unwrap();
            assert_eq!(
                ErrorCode::of(&ErrorCode::into_error(code, "m".into())),
                kind
            );
            assert!(decode_error(&error_payload(kind, "why"))
                .to_string()
                .contains("why"));
        }
        assert!(ErrorCode::from_u16(0).is_none());
        assert!(matches!(
            ErrorCode::into_error(99, "m".into()),
            Error::Protocol(_)
        ));
    }

    #[test]
    fn stats_reply_carries_every_field() {
        let snapshot = Snapshot {
            clock: 5,
            rejected: 2,
            timeouts: 7,
            ..Snapshot::default()
        };
        let payload = encode_stats(&snapshot);
        assert_eq!(payload.len(), STATS_REPLY_LEN);
        let decoded = decode_stats(&payload).unwrap();
        assert_eq!(decoded, snapshot.fields().to_vec());
        assert!(decode_stats(&payload[8..]).is_err());
        assert!(decode_stats(&[payload.clone(), vec![0; 8]].concat()).is_err());
    }

    #[test]
    fn welcome_mac_checks_the_server() {
        let (c, s) = ([1u8; NONCE_LEN], [2u8; NONCE_LEN]);
        let mac = welcome_mac(b"k", &c, &s);
        assert!(verify_welcome(b"k", &c, &s, &mac));
        assert!(!verify_welcome(b"j", &c, &s, &mac));
        assert!(!verify_welcome(b"k", &s, &c, &mac));
    }
}
