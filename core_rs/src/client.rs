//! The worker's side of the protocol: a blocking TCP client that pulls into and commits from
//! caller-owned buffers without intermediate copies.

use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use crate::centre::Applied;
use crate::codec::{Codec, Feedback};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::protocol::{self as p, Op};
use crate::rules::{ELASTIC_CODE, SYNC_CODE};
use crate::server::resolve;

/// How a client connects: retry attempt, timeouts, and the codecs for commits and pulls.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    pub attempt: u32,
    pub connect_timeout: Duration,
    /// Bounds every read and write after the handshake (`None`: wait as long as needed).
    pub timeout: Option<Duration>,
    pub commit_codec: Codec,
    pub pull_codec: Codec,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            attempt: 0,
            connect_timeout: Duration::from_secs(30),
            timeout: None,
            commit_codec: Codec::None,
            pull_codec: Codec::None,
        }
    }
}

pub struct Client {
    stream: TcpStream,
    commit_codec: Codec,
    pull_codec: Codec,
    /// Error feedback for lossy commit codecs (not for elastic commits, which carry weights).
    feedback: Option<Feedback>,
    encoded: Vec<u8>,
    worker_id: u32,
    num_params: usize,
    replies_with_vector: bool,
    rule_code: u8,
    resume_samples: u64,
    seq: u64,
    last_pull_clock: u64,
    progress: p::Progress,
    bytes_in: u64,
    bytes_out: u64,
}

/// A lost connection reads as `Closed`, whatever the OS called it.
fn lost(err: Error) -> Error {
    match err {
        Error::Io(e)
            if matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            ) =>
        {
            Error::Closed(format!("connection to the parameter server was lost ({e})"))
        }
        other => other,
    }
}

impl Client {
    /// Connects to `addr` ("host:port"), authenticates with `secret` and checks `layout`.
    /// `timeout` bounds the connect and every later read or write (`None`: wait as long as needed).
    pub fn connect(
        addr: &str,
        secret: &[u8],
        layout: &Layout,
        worker_id: u32,
        attempt: u32,
        connect_timeout: Duration,
        timeout: Option<Duration>,
    ) -> Result<Client> {
        let options = ClientOptions {
            attempt,
            connect_timeout,
            timeout,
            ..ClientOptions::default()
        };
        Self::open(addr, secret, layout, worker_id, options)
    }

    /// As `connect`, with every option (codecs included).
    pub fn open(
        addr: &str,
        secret: &[u8],
        layout: &Layout,
        worker_id: u32,
        options: ClientOptions,
    ) -> Result<Client> {
        let ClientOptions {
            attempt,
            connect_timeout,
            timeout,
            commit_codec,
            pull_codec,
        } = options;
        let sock = resolve(addr)?;
        let stream = TcpStream::connect_timeout(&sock, connect_timeout).map_err(|e| {
            Error::Io(io::Error::new(
                e.kind(),
                format!("cannot reach the parameter server at {addr}: {e}"),
            ))
        })?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(connect_timeout))?;
        stream.set_write_timeout(Some(connect_timeout))?;
        let mut client = Client {
            stream,
            commit_codec,
            pull_codec,
            feedback: None,
            encoded: Vec::new(),
            worker_id,
            num_params: layout.num_params(),
            replies_with_vector: false,
            rule_code: 0,
            resume_samples: 0,
            seq: 0,
            last_pull_clock: 0,
            progress: p::Progress::default(),
            bytes_in: 0,
            bytes_out: 0,
        };
        client.handshake(secret, layout, attempt).map_err(lost)?;
        client.stream.set_read_timeout(timeout)?;
        client.stream.set_write_timeout(timeout)?;
        Ok(client)
    }

    fn handshake(&mut self, secret: &[u8], layout: &Layout, attempt: u32) -> Result<()> {
        let challenge = self.read_small_frame()?;
        if challenge.0 != Op::Challenge || challenge.1.len() != p::NONCE_LEN {
            return Err(Error::protocol("the server did not start with a challenge"));
        }
        let server_nonce: [u8; p::NONCE_LEN] = challenge.1[..].try_into().expect("checked length");
        let mut hello = p::Hello {
            worker_id: self.worker_id,
            attempt,
            client_nonce: p::nonce()?,
            layout_hash: *layout.hash(),
            codecs: p::encode_codecs(&self.commit_codec, &self.pull_codec),
            mac: [0; p::MAC_LEN],
        };
        hello.mac = p::hello_mac(secret, &server_nonce, &hello);
        self.send(Op::Hello, &hello.encode(), &[])?;
        let (op, payload) = self.read_small_frame()?;
        if op != Op::Welcome {
            return Err(Error::protocol(format!("expected welcome, got {op:?}")));
        }
        let welcome = p::Welcome::decode(&payload)?;
        if !p::verify_welcome(secret, &hello.client_nonce, &server_nonce, &welcome.mac) {
            return Err(Error::Authentication(
                "the server could not prove it holds this run's secret".into(),
            ));
        }
        if welcome.num_params != self.num_params as u64 {
            return Err(Error::LayoutMismatch(format!(
                "the server holds {} parameters, this worker {}",
                welcome.num_params, self.num_params
            )));
        }
        self.rule_code = welcome.rule_code;
        self.resume_samples = welcome.resume_samples;
        self.replies_with_vector = matches!(welcome.rule_code, ELASTIC_CODE | SYNC_CODE);
        if self.commit_codec.lossy() && welcome.rule_code != ELASTIC_CODE {
            self.feedback = Some(Feedback::default());
        }
        self.last_pull_clock = welcome.clock;
        Ok(())
    }

    pub fn num_params(&self) -> usize {
        self.num_params
    }
    pub fn worker_id(&self) -> u32 {
        self.worker_id
    }
    /// Whether a commit reply carries a vector (elastic `E`, or the new centre of a sync round).
    pub fn replies_with_vector(&self) -> bool {
        self.replies_with_vector
    }
    pub fn rule_code(&self) -> u8 {
        self.rule_code
    }
    /// Samples this worker's earlier attempts had committed (see `protocol::Welcome`).
    pub fn resume_samples(&self) -> u64 {
        self.resume_samples
    }
    pub fn last_pull_clock(&self) -> u64 {
        self.last_pull_clock
    }
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    fn send(&mut self, op: Op, head: &[u8], values: &[f32]) -> Result<()> {
        self.bytes_out += p::write_frame(&mut self.stream, op, head, values)?;
        Ok(())
    }

    fn read_small_frame(&mut self) -> Result<(Op, Vec<u8>)> {
        let h = p::read_header(&mut self.stream, p::SMALL_FRAME)?;
        let payload = p::read_small(&mut self.stream, h.len)?;
        self.bytes_in += p::HEADER_LEN as u64 + h.len;
        if h.op == Op::Error {
            return Err(p::decode_error(&payload));
        }
        Ok((h.op, payload))
    }

    /// Reads the reply to a request: `expected` with a `head`-sized prefix and an optional vector.
    fn read_reply(
        &mut self,
        expected: Op,
        head: &mut [u8],
        values: Option<&mut [f32]>,
    ) -> Result<()> {
        let vector_len = values.as_ref().map_or(0, |v| 4 * v.len());
        let h = p::read_header(
            &mut self.stream,
            (head.len() + vector_len).max(p::SMALL_FRAME as usize) as u64,
        )?;
        if h.op == Op::Error && h.len <= p::SMALL_FRAME {
            let payload = p::read_small(&mut self.stream, h.len)?;
            self.bytes_in += p::HEADER_LEN as u64 + h.len;
            return Err(p::decode_error(&payload));
        }
        if h.op != expected || h.len != (head.len() + vector_len) as u64 {
            return Err(Error::protocol(format!(
                "expected a {expected:?} reply, got {:?} of {} bytes",
                h.op, h.len
            )));
        }
        p::read_payload(&mut self.stream, head, values.unwrap_or(&mut []))?;
        self.bytes_in += p::HEADER_LEN as u64 + h.len;
        Ok(())
    }

    /// Reads a reply whose payload is `head` then exactly `body.len()` bytes (or fewer, when the
    /// reply is shorter: `body` is truncated to what arrived).
    fn read_reply_bytes(
        &mut self,
        expected: Op,
        head: &mut [u8],
        body: &mut Vec<u8>,
    ) -> Result<()> {
        let max = (head.len() + body.len()).max(p::SMALL_FRAME as usize) as u64;
        let h = p::read_header(&mut self.stream, max)?;
        if h.op == Op::Error && h.len <= p::SMALL_FRAME {
            let payload = p::read_small(&mut self.stream, h.len)?;
            self.bytes_in += p::HEADER_LEN as u64 + h.len;
            return Err(p::decode_error(&payload));
        }
        if h.op != expected || h.len < head.len() as u64 || h.len > (head.len() + body.len()) as u64
        {
            return Err(Error::protocol(format!(
                "expected a {expected:?} reply, got {:?} of {} bytes",
                h.op, h.len
            )));
        }
        body.truncate(h.len as usize - head.len());
        self.stream.read_exact(head)?;
        self.stream.read_exact(body)?;
        self.bytes_in += p::HEADER_LEN as u64 + h.len;
        Ok(())
    }

    fn check_len(&self, what: &str, len: usize) -> Result<()> {
        if len != self.num_params {
            return Err(Error::invalid(format!(
                "{what} has {len} values, the model has {}",
                self.num_params
            )));
        }
        Ok(())
    }

    /// Fetches the centre into `out` and returns its clock.
    pub fn pull(&mut self, out: &mut [f32]) -> Result<u64> {
        self.check_len("pull buffer", out.len())?;
        self.send(Op::Pull, &[], &[]).map_err(lost)?;
        let mut head = [0u8; 8];
        if self.pull_codec == Codec::None {
            self.read_reply(Op::Centre, &mut head, Some(out))
                .map_err(lost)?;
        } else {
            let mut encoded = std::mem::take(&mut self.encoded);
            encoded.resize(self.pull_codec.max_encoded_len(self.num_params), 0);
            let read = self
                .read_reply_bytes(Op::Centre, &mut head, &mut encoded)
                .map_err(lost);
            let decoded = read.and_then(|()| self.pull_codec.decode(&encoded, out));
            self.encoded = encoded;
            decoded?;
        }
        self.last_pull_clock = u64::from_le_bytes(head);
        Ok(self.last_pull_clock)
    }

    /// What the next commits tell the server of this worker's training (shown as progress).
    pub fn set_progress(&mut self, progress: p::Progress) {
        self.progress = progress;
    }

    /// Sends `delta` (stamped with the clock of the last pull and the next sequence number).
    /// Rules that answer with a vector write it into `reply`.
    pub fn commit(&mut self, delta: &[f32], reply: Option<&mut [f32]>) -> Result<Applied> {
        self.check_len("commit", delta.len())?;
        let reply = match (self.replies_with_vector, reply) {
            (true, Some(r)) => {
                self.check_len("reply buffer", r.len())?;
                Some(r)
            }
            (true, None) => {
                return Err(Error::invalid(
                    "this server's rule answers commits with a vector: pass a reply buffer",
                ))
            }
            (false, _) => None,
        };
        self.seq += 1;
        let head = p::encode_commit_head(
            self.worker_id,
            0,
            self.seq,
            self.last_pull_clock,
            self.progress,
        );
        if self.commit_codec == Codec::None {
            self.send(Op::Commit, &head, delta).map_err(lost)?;
        } else {
            let mut encoded = std::mem::take(&mut self.encoded);
            let seed = (u64::from(self.worker_id) << 40) ^ self.seq;
            match &mut self.feedback {
                Some(feedback) => feedback.encode(&self.commit_codec, delta, seed, &mut encoded)?,
                None => self.commit_codec.encode(delta, seed, &mut encoded),
            }
            let sent = p::write_frame_bytes(&mut self.stream, Op::Commit, &head, &encoded);
            self.encoded = encoded;
            self.bytes_out += sent.map_err(lost)?;
        }
        let mut reply_head = [0u8; 16];
        let replied = self
            .read_reply(Op::Committed, &mut reply_head, reply)
            .map_err(lost);
        if let (Err(Error::Rejected(_)), Some(feedback)) = (&replied, &mut self.feedback) {
            feedback.unsent(); // nothing of it was applied: keep all of it for the next commit
        }
        replied?;
        let clock = u64::from_le_bytes(reply_head[..8].try_into().expect("8 bytes"));
        let staleness = u64::from_le_bytes(reply_head[8..].try_into().expect("8 bytes"));
        if self.rule_code == SYNC_CODE {
            self.last_pull_clock = clock; // a sync reply is the new centre
        }
        Ok(Applied { clock, staleness })
    }

    /// Sends what error feedback still holds back, as one dense commit, so that nothing a worker
    /// meant to send is lost at the end. Returns `None` when there was nothing to send.
    pub fn flush(&mut self) -> Result<Option<Applied>> {
        let Some(feedback) = &mut self.feedback else {
            return Ok(None);
        };
        if feedback.residual().iter().all(|r| *r == 0.0) {
            return Ok(None);
        }
        let residual = feedback.take_residual();
        self.seq += 1;
        let head = p::encode_commit_head(
            self.worker_id,
            p::DENSE,
            self.seq,
            self.last_pull_clock,
            self.progress,
        );
        self.send(Op::Commit, &head, &residual).map_err(lost)?;
        let mut reply_head = [0u8; 16];
        let replied = self
            .read_reply(Op::Committed, &mut reply_head, None)
            .map_err(lost);
        if let (Err(Error::Rejected(_)), Some(feedback)) = (&replied, &mut self.feedback) {
            feedback.restore(residual); // refused: still owed
        }
        replied?;
        let clock = u64::from_le_bytes(reply_head[..8].try_into().expect("8 bytes"));
        let staleness = u64::from_le_bytes(reply_head[8..].try_into().expect("8 bytes"));
        Ok(Some(Applied { clock, staleness }))
    }

    /// The server's counters, named as in `protocol::STATS_FIELDS`.
    pub fn stats(&mut self) -> Result<Vec<(&'static str, u64)>> {
        self.send(Op::Stats, &[], &[]).map_err(lost)?;
        let mut payload = [0u8; 8 * p::STATS_FIELDS.len()];
        self.read_reply(Op::StatsReply, &mut payload, None)
            .map_err(lost)?;
        Ok(p::STATS_FIELDS
            .iter()
            .zip(payload.chunks_exact(8))
            .map(|(name, v)| (*name, u64::from_le_bytes(v.try_into().expect("8 bytes"))))
            .collect())
    }

    /// Says goodbye and closes the connection.
    pub fn close(&mut self) {
        let _ = self.send(Op::Bye, &[], &[]);
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}
