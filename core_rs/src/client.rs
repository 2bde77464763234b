//! The worker's side of the protocol: a blocking TCP client that pulls into and commits from
//! caller-owned buffers without intermediate copies.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use crate::centre::Applied;
use crate::codec::{Codec, Feedback};
use crate::error::{check_len, Error, Result};
use crate::layout::Layout;
use crate::protocol::{self as p, rule_code, Conn, Op, Totals};
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
    conn: Conn<Totals>,
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
    /// The control block of the latest commit reply.
    control: p::Control,
}

/// What the payload of a reply holds after its fixed head.
enum Body<'a> {
    Empty,
    /// Float32 values, exactly this many.
    Values(&'a mut [f32]),
    /// Bytes, at most this many: truncated to what arrived.
    UpTo(&'a mut Vec<u8>),
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
            conn: Conn::new(stream, Totals::default()),
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
            control: p::Control::default(),
        };
        client.handshake(secret, layout, attempt).map_err(lost)?;
        client.conn.stream.set_read_timeout(timeout)?;
        client.conn.stream.set_write_timeout(timeout)?;
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
        self.conn.send(Op::Hello, &hello.encode(), &[])?;
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
        self.replies_with_vector =
            matches!(welcome.rule_code, rule_code::ELASTIC | rule_code::SYNC);
        if self.commit_codec.lossy() && welcome.rule_code != rule_code::ELASTIC {
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
    /// Samples this worker's earlier attempts had committed (see `protocol::Welcome`).
    pub fn resume_samples(&self) -> u64 {
        self.resume_samples
    }
    pub fn last_pull_clock(&self) -> u64 {
        self.last_pull_clock
    }
    pub fn bytes_in(&self) -> u64 {
        self.conn.traffic.bytes_in
    }
    pub fn bytes_out(&self) -> u64 {
        self.conn.traffic.bytes_out
    }

    fn read_small_frame(&mut self) -> Result<(Op, Vec<u8>)> {
        let h = self.conn.read_header(p::SMALL_FRAME)?;
        let payload = self.conn.read_small(h.len)?;
        if h.op == Op::Error {
            return Err(p::decode_error(&payload));
        }
        Ok((h.op, payload))
    }

    /// Reads the reply to a request: an `expected` frame whose payload is `head` then `body`, or
    /// the server's error.
    fn read_reply(&mut self, expected: Op, head: &mut [u8], body: Body<'_>) -> Result<()> {
        let (least, most) = match &body {
            Body::Empty => (0, 0),
            Body::Values(values) => (4 * values.len(), 4 * values.len()),
            Body::UpTo(bytes) => (0, bytes.len()),
        };
        let (least, most) = ((head.len() + least) as u64, (head.len() + most) as u64);
        let h = self.conn.read_header(most.max(p::SMALL_FRAME))?;
        if h.op == Op::Error && h.len <= p::SMALL_FRAME {
            let payload = self.conn.read_small(h.len)?;
            return Err(p::decode_error(&payload));
        }
        if h.op != expected || h.len < least || h.len > most {
            return Err(Error::protocol(format!(
                "expected a {expected:?} reply, got {:?} of {} bytes",
                h.op, h.len
            )));
        }
        self.conn.read_exact(head)?;
        match body {
            Body::Empty => Ok(()),
            Body::Values(values) => self.conn.read_values(values),
            Body::UpTo(bytes) => {
                bytes.truncate(h.len as usize - head.len());
                self.conn.read_exact(bytes)
            }
        }
    }

    /// Fetches the centre into `out` and returns its clock.
    pub fn pull(&mut self, out: &mut [f32]) -> Result<u64> {
        check_len("pull buffer", out.len(), "the model", self.num_params)?;
        self.conn.send(Op::Pull, &[], &[]).map_err(lost)?;
        let mut head = [0u8; 8];
        if self.pull_codec == Codec::None {
            self.read_reply(Op::Centre, &mut head, Body::Values(out))
                .map_err(lost)?;
        } else {
            let mut encoded = std::mem::take(&mut self.encoded);
            encoded.resize(self.pull_codec.max_encoded_len(self.num_params), 0);
            let read = self
                .read_reply(Op::Centre, &mut head, Body::UpTo(&mut encoded))
                .map_err(lost);
            let decoded = read.and_then(|()| self.pull_codec.decode(&encoded, out).map(drop));
            self.encoded = encoded;
            decoded?;
        }
        self.last_pull_clock = u64::from_le_bytes(head);
        Ok(self.last_pull_clock)
    }

    /// What the next commits tell the server of this worker's training (shown as progress and
    /// averaged per epoch by the driver). At most `protocol::MAX_LOGS` logs values.
    pub fn set_progress(&mut self, progress: p::Progress) -> Result<()> {
        if progress.logs.len() > p::MAX_LOGS {
            return Err(Error::invalid(format!(
                "a commit carries at most MAX_LOGS = {} logs values, not {}",
                p::MAX_LOGS,
                progress.logs.len()
            )));
        }
        self.progress = progress;
        Ok(())
    }

    /// What the driver said with the latest commit reply (nothing before the first).
    pub fn control(&self) -> p::Control {
        self.control
    }

    /// The head and logs of the next commit: `flags`, the next sequence number, the clock of the
    /// last pull, the progress.
    fn next_commit_head(&mut self, flags: u32) -> Vec<u8> {
        self.seq += 1;
        p::encode_commit_head(
            self.worker_id,
            flags,
            self.seq,
            self.last_pull_clock,
            &self.progress,
        )
    }

    /// Sends one commit frame and reads the server's answer, with its vector into `reply` when
    /// it has one.
    fn send_commit(
        &mut self,
        head: &[u8],
        body: &[u8],
        reply: Option<&mut [f32]>,
    ) -> Result<Applied> {
        self.conn.send(Op::Commit, head, body).map_err(lost)?;
        let mut reply_head = [0u8; p::COMMITTED_HEAD_LEN];
        let body = reply.map_or(Body::Empty, Body::Values);
        self.read_reply(Op::Committed, &mut reply_head, body)
            .map_err(lost)?;
        let (applied, control) = p::decode_committed(&reply_head)?;
        self.control = control;
        if self.rule_code == rule_code::SYNC {
            self.last_pull_clock = applied.clock; // a sync reply is the new centre
        }
        Ok(applied)
    }

    /// Sends `delta` (stamped with the clock of the last pull and the next sequence number).
    /// Rules that answer with a vector write it into `reply`.
    pub fn commit(&mut self, delta: &[f32], reply: Option<&mut [f32]>) -> Result<Applied> {
        check_len("commit", delta.len(), "the model", self.num_params)?;
        let reply = match (self.replies_with_vector, reply) {
            (true, Some(r)) => {
                check_len("reply buffer", r.len(), "the model", self.num_params)?;
                Some(r)
            }
            (true, None) => {
                return Err(Error::invalid(
                    "this server's rule answers commits with a vector: pass a reply buffer",
                ))
            }
            (false, _) => None,
        };
        let head = self.next_commit_head(0);
        if self.commit_codec == Codec::None {
            return self.send_commit(&head, bytemuck::cast_slice(delta), reply);
        }
        let mut encoded = std::mem::take(&mut self.encoded);
        let seed = (u64::from(self.worker_id) << 40) ^ self.seq;
        match &mut self.feedback {
            Some(feedback) => feedback.encode(&self.commit_codec, delta, seed, &mut encoded)?,
            None => self.commit_codec.encode(delta, seed, &mut encoded),
        }
        let replied = self.send_commit(&head, &encoded, reply);
        self.encoded = encoded;
        if let (Err(Error::Rejected(_)), Some(feedback)) = (&replied, &mut self.feedback) {
            feedback.unsent(); // nothing of it was applied: keep all of it for the next commit
        }
        replied
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
        let head = self.next_commit_head(p::DENSE);
        let replied = self.send_commit(&head, bytemuck::cast_slice(&residual), None);
        if let (Err(Error::Rejected(_)), Some(feedback)) = (&replied, &mut self.feedback) {
            feedback.restore(residual); // refused: still owed
        }
        replied.map(Some)
    }

    /// The server's counters, named as in `protocol::STATS_FIELDS`.
    pub fn stats(&mut self) -> Result<Vec<(&'static str, u64)>> {
        self.conn.send(Op::Stats, &[], &[]).map_err(lost)?;
        let mut payload = [0u8; p::STATS_REPLY_LEN];
        self.read_reply(Op::StatsReply, &mut payload, Body::Empty)
            .map_err(lost)?;
        p::decode_stats(&payload)
    }

    /// Tells the server that this worker's own code failed (`message`, cut to what a small
    /// frame holds) and closes the connection: the server asks the other workers to stop.
    pub fn fail(&mut self, message: &str) {
        let mut end = message.len().min(p::SMALL_FRAME as usize);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let _ = self.conn.send(Op::Failed, &message.as_bytes()[..end], &[]);
        let _ = self.conn.stream.shutdown(Shutdown::Both);
    }

    /// Says goodbye and closes the connection.
    pub fn close(&mut self) {
        let _ = self.conn.send(Op::Bye, &[], &[]);
        let _ = self.conn.stream.shutdown(Shutdown::Both);
    }
}
