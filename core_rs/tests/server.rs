//! The server and client together over loopback.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use distkeras_plus_core::protocol::{self as p, Op};
use distkeras_plus_core::{Centre, Client, Error, Layout, Rule, Server, ServerConfig};

const SECRET: &[u8] = b"0123456789abcdef-test-secret";

fn start(rule: Rule, initial: &[f32]) -> (Server, Layout) {
    let layout = Layout::flat(initial.len()).unwrap();
    let centre = Arc::new(Centre::new(rule, initial).unwrap());
    let server = Server::start(
        centre,
        layout.clone(),
        ServerConfig::new("127.0.0.1", 0, SECRET.to_vec()),
    )
    .unwrap();
    (server, layout)
}

fn connect(server: &Server, layout: &Layout, worker: u32) -> Client {
    Client::connect(
        &server.addr().to_string(),
        SECRET,
        layout,
        worker,
        0,
        Duration::from_secs(5),
        None,
    )
    .unwrap()
}

#[test]
fn pull_commit_and_stats() {
    let (server, layout) = start(Rule::Add { scale: 1.0 }, &[1.0, 2.0, 3.0]);
    let mut c = connect(&server, &layout, 7);
    let mut out = [0.0; 3];
    assert_eq!(c.pull(&mut out).unwrap(), 0);
    assert_eq!(out, [1.0, 2.0, 3.0]);
    let applied = c.commit(&[0.5, 0.5, 0.5], None).unwrap();
    assert_eq!((applied.clock, applied.staleness), (1, 0));
    assert_eq!(c.pull(&mut out).unwrap(), 1);
    assert_eq!(out, [1.5, 2.5, 3.5]);
    let stats = c.stats().unwrap();
    assert!(
        stats.contains(&("commits", 1)) && stats.contains(&("pulls", 2)),
        "{stats:?}"
    );
    let snap = server.stats();
    assert_eq!(snap.workers[&7].commits, 1);
    assert_eq!(snap.bytes_in, c.bytes_out());
}

#[test]
fn staleness_is_counted_from_the_last_pull() {
    let (server, layout) = start(Rule::DynSgd, &[0.0; 2]);
    let (mut a, mut b) = (connect(&server, &layout, 0), connect(&server, &layout, 1));
    let mut out = [0.0; 2];
    a.pull(&mut out).unwrap();
    b.pull(&mut out).unwrap();
    assert_eq!(a.commit(&[2.0; 2], None).unwrap().staleness, 0);
    assert_eq!(b.commit(&[2.0; 2], None).unwrap().staleness, 1);
    a.pull(&mut out).unwrap();
    assert_eq!(out, [3.0; 2]);
}

#[test]
fn wrong_secret_and_wrong_layout_are_refused() {
    let (server, layout) = start(Rule::Add { scale: 1.0 }, &[0.0; 4]);
    let addr = server.addr().to_string();
    let t = Duration::from_secs(5);
    let wrong = Client::connect(&addr, b"not-the-secret-at-all", &layout, 0, 0, t, None);
    assert!(
        matches!(wrong, Err(Error::Authentication(_))),
        "{:?}",
        wrong.err()
    );
    let other = Layout::new(vec![vec![2, 2]]).unwrap();
    let mismatch = Client::connect(&addr, SECRET, &other, 0, 0, t, None);
    assert!(
        matches!(mismatch, Err(Error::LayoutMismatch(_))),
        "{:?}",
        mismatch.err()
    );
    // The server goes on serving.
    let mut ok = connect(&server, &layout, 1);
    ok.commit(&[1.0; 4], None).unwrap();
    assert_eq!(server.stats().auth_failures, 1);
}

#[test]
fn duplicate_and_non_finite_commits_change_nothing() {
    let (server, layout) = start(Rule::Add { scale: 1.0 }, &[0.0; 3]);
    let mut c = connect(&server, &layout, 0);
    let err = c.commit(&[1.0, f32::INFINITY, 1.0], None).unwrap_err();
    assert!(matches!(err, Error::Rejected(_)), "{err}");
    c.commit(&[1.0; 3], None).unwrap(); // the connection is still usable
    let mut out = [0.0; 3];
    c.pull(&mut out).unwrap();
    assert_eq!(out, [1.0; 3]);
    assert_eq!(server.stats().rejected, 1);
}

#[test]
fn garbage_closes_only_its_own_connection() {
    let (server, layout) = start(Rule::Add { scale: 1.0 }, &[0.0; 3]);
    let mut good = connect(&server, &layout, 0);
    let mut raw = TcpStream::connect(server.addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut challenge = [0u8; p::HEADER_LEN + p::NONCE_LEN];
    raw.read_exact(&mut challenge).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply);
    assert_eq!(&reply[..4], b"DKPS");
    assert_eq!(reply[5], Op::Error as u8);
    good.commit(&[1.0; 3], None).unwrap();
    assert_eq!(server.stats().protocol_errors, 1);
}

#[test]
fn many_threads_commit_exact_integer_sums() {
    let n = 200_003;
    let (server, layout) = start(Rule::Add { scale: 1.0 }, &vec![0.0; n]);
    let workers: Vec<_> = (0..6u32)
        .map(|w| {
            let mut c = connect(&server, &layout, w);
            thread::spawn(move || {
                let delta: Vec<f32> = (0..n).map(|i| ((i as u32 + w) % 5) as f32).collect();
                let mut out = vec![0.0; n];
                for _ in 0..10 {
                    c.pull(&mut out).unwrap();
                    c.commit(&delta, None).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let mut out = vec![0.0; n];
    assert_eq!(server.centre().pull(&mut out).unwrap(), 60);
    for (i, v) in out.iter().enumerate() {
        let expected: u32 = (0..6).map(|w| 10 * ((i as u32 + w) % 5)).sum();
        assert_eq!(*v, expected as f32);
    }
}

#[test]
fn stop_closes_everything_and_frees_the_port() {
    let (mut server, layout) = start(
        Rule::Sync {
            workers: 2,
            scale: 1.0,
        },
        &[0.0; 2],
    );
    let addr = server.addr();
    let mut waiting = connect(&server, &layout, 0);
    let blocked = thread::spawn(move || waiting.commit(&[1.0; 2], Some(&mut [0.0; 2])));
    thread::sleep(Duration::from_millis(100));
    server.stop();
    assert!(matches!(blocked.join().unwrap(), Err(Error::Closed(_))));
    assert!(TcpStream::connect(addr).is_err());
    let layout2 = Layout::flat(2).unwrap();
    let centre = Arc::new(Centre::new(Rule::Add { scale: 1.0 }, &[0.0; 2]).unwrap());
    let again = Server::start(
        centre,
        layout2,
        ServerConfig::new("127.0.0.1", addr.port(), SECRET.to_vec()),
    );
    assert!(
        again.is_ok(),
        "rebinding the same port failed: {:?}",
        again.err()
    );
}

fn connect_with(
    server: &Server,
    layout: &Layout,
    worker: u32,
    commit: &str,
    pull: &str,
) -> distkeras_plus_core::Result<Client> {
    let options = distkeras_plus_core::ClientOptions {
        commit_codec: distkeras_plus_core::Codec::parse(commit).unwrap(),
        pull_codec: distkeras_plus_core::Codec::parse(pull).unwrap(),
        ..Default::default()
    };
    Client::open(&server.addr().to_string(), SECRET, layout, worker, options)
}

#[test]
fn compressed_commits_and_pulls() {
    let n = 10_000;
    let (server, layout) = start(Rule::Add { scale: 1.0 }, &vec![0.0; n]);
    let delta: Vec<f32> = (0..n).map(|i| ((i % 13) as f32 - 6.0) / 4.0).collect();
    for (k, codec) in ["fp16", "bf16", "int8", "int8:stochastic", "topk:0.05"]
        .into_iter()
        .enumerate()
    {
        let mut c = connect_with(&server, &layout, k as u32, codec, "fp16").unwrap();
        let before = server.stats().bytes_in;
        c.commit(&delta, None).unwrap();
        let sent = server.stats().bytes_in - before;
        assert!(sent < (4 * n) as u64 / 2 + 100, "{codec} sent {sent} bytes");
        let mut out = vec![0.0; n];
        c.pull(&mut out).unwrap();
    }
    // Every codec's commit reached the centre, to its precision.
    let mut centre = vec![0.0; n];
    server.centre().pull(&mut centre).unwrap();
    let total: f32 = delta.iter().map(|d| d.abs()).sum::<f32>() * 5.0;
    let got: f32 = centre.iter().map(|c| c.abs()).sum();
    assert!(got > 0.5 * total, "{got} vs {total}");
}

#[test]
fn refused_codecs_are_clear() {
    let layout = Layout::flat(100).unwrap();
    let centre = Arc::new(Centre::new(Rule::Add { scale: 1.0 }, &[0.0; 100]).unwrap());
    let mut config = ServerConfig::new("127.0.0.1", 0, SECRET.to_vec());
    config.accept_codecs = Some(vec!["none".into(), "fp16".into()]);
    let server = Server::start(centre, layout.clone(), config).unwrap();
    let err = connect_with(&server, &layout, 0, "topk:0.1", "none")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("does not accept codec topk:0.1; it accepts: none, fp16"),
        "{err}"
    );
    assert!(connect_with(&server, &layout, 0, "fp16", "fp16").is_ok());
    let err = connect_with(&server, &layout, 0, "none", "int8")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("does not accept codec int8"), "{err}");
}

fn connect_attempt(
    server: &Server,
    layout: &Layout,
    worker: u32,
    attempt: u32,
) -> Result<Client, Error> {
    Client::connect(
        &server.addr().to_string(),
        SECRET,
        layout,
        worker,
        attempt,
        Duration::from_secs(5),
        None,
    )
}

#[test]
fn a_retried_attempt_supersedes_the_old_one() {
    let (server, layout) = start(Rule::Add { scale: 1.0 }, &[0.0; 4]);
    let mut old = connect_attempt(&server, &layout, 3, 0).unwrap();
    assert_eq!(old.resume_samples(), 0);
    old.set_progress(p::Progress {
        samples: 96,
        epoch: 0,
        logs: vec![0.5],
    })
    .unwrap();
    old.commit(&[1.0; 4], None).unwrap();
    let mut new = connect_attempt(&server, &layout, 3, 1).unwrap();
    // The retry learns how far the old attempt's applied commits went.
    assert_eq!(new.resume_samples(), 96);
    // The new attempt starts its own sequence; the old one may no longer commit or connect.
    assert_eq!(new.commit(&[1.0; 4], None).unwrap().clock, 2);
    let err = old.commit(&[1.0; 4], None).unwrap_err();
    assert!(err.to_string().contains("stale"), "{err}");
    let err = connect_attempt(&server, &layout, 3, 0)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("attempt 1 has started"), "{err}");
    let mut out = [0.0; 4];
    assert_eq!(new.pull(&mut out).unwrap(), 2);
    assert_eq!(out, [2.0; 4]);
}

#[test]
fn commits_carry_epochs_and_logs_and_replies_carry_the_control_block() {
    let (server, layout) = start(Rule::Add { scale: 1.0 }, &[0.0; 4]);
    let progress = |samples, epoch, logs: &[f32]| p::Progress {
        samples,
        epoch,
        logs: logs.to_vec(),
    };
    let mut a = connect(&server, &layout, 0);
    let mut b = connect(&server, &layout, 1);
    assert_eq!(a.control(), p::Control::default());
    a.set_progress(progress(10, 0, &[1.0, 0.5])).unwrap();
    a.commit(&[1.0; 4], None).unwrap();
    server.set_control(p::Control {
        stop: false,
        learning_rate: Some(0.01),
    });
    b.set_progress(progress(30, 0, &[3.0, 0.25])).unwrap();
    b.commit(&[1.0; 4], None).unwrap();
    assert_eq!(b.control().learning_rate, Some(0.01));
    // Worker 0's retry goes on from its 10 samples; its first window is 20 more, in epoch 1.
    drop(a);
    let mut retry = connect_attempt(&server, &layout, 0, 1).unwrap();
    assert_eq!(retry.resume_samples(), 10);
    retry.set_progress(progress(30, 1, &[2.0])).unwrap();
    server.set_control(p::Control {
        stop: true,
        learning_rate: None,
    });
    retry.commit(&[1.0; 4], None).unwrap();
    assert!(retry.control().stop && retry.control().learning_rate.is_none());

    let epochs = server.epochs();
    assert_eq!((epochs[&0].samples, epochs[&1].samples), (40, 20));
    assert_eq!(
        epochs[&0].means(),
        [(10.0 + 90.0) / 40.0, (5.0 + 7.5) / 40.0]
    );
    assert_eq!(epochs[&1].means(), [2.0]);
    let w0 = server.stats().workers[&0];
    assert_eq!((w0.samples, w0.epoch, w0.loss), (30, 1, 2.0));

    // Too many logs: refused on the client, before anything is sent.
    let err = retry
        .set_progress(progress(40, 1, &[0.0; p::MAX_LOGS + 1]))
        .unwrap_err();
    assert!(err.to_string().contains("MAX_LOGS"), "{err}");
}

#[test]
fn sync_rounds_flushes_and_refusals_follow_the_control_block() {
    let (server, layout) = start(
        Rule::Sync {
            workers: 2,
            scale: 1.0,
        },
        &[0.0; 4],
    );
    let stop = p::Control {
        stop: true,
        learning_rate: Some(0.5),
    };
    server.set_control(stop);
    let other = {
        let (addr, layout) = (server.addr().to_string(), layout.clone());
        thread::spawn(move || {
            let mut c = Client::connect(&addr, SECRET, &layout, 1, 0, Duration::from_secs(5), None)
                .unwrap();
            c.commit(&[1.0; 4], Some(&mut [0.0; 4])).unwrap();
            c.control()
        })
    };
    let mut c = connect(&server, &layout, 0);
    c.commit(&[1.0; 4], Some(&mut [0.0; 4])).unwrap();
    assert_eq!((c.control(), other.join().unwrap()), (stop, stop));

    // A dense flush's reply carries it too; a refused commit records nothing of its logs.
    let (server, layout) = start(Rule::Add { scale: 1.0 }, &[0.0; 4]);
    let progress = p::Progress {
        samples: 8,
        epoch: 0,
        logs: vec![1.0],
    };
    let mut stale = connect(&server, &layout, 1);
    stale.set_progress(progress.clone()).unwrap();
    let _retry = connect_attempt(&server, &layout, 1, 1).unwrap();
    assert!(stale.commit(&[1.0; 4], None).is_err());
    assert!(server.epochs().is_empty());
    let mut c = connect_with(&server, &layout, 0, "int8", "none").unwrap();
    c.set_progress(progress).unwrap();
    c.commit(&[0.3, 0.001, 0.0, 0.0], None).unwrap();
    server.set_control(stop);
    assert!(c.flush().unwrap().is_some());
    assert_eq!(c.control(), stop);
    assert_eq!(server.epochs()[&0].samples, 8);
}

#[test]
fn a_commit_with_too_many_logs_is_a_protocol_error() {
    let (server, _layout) = start(Rule::Add { scale: 1.0 }, &[0.0; 4]);
    let mut raw = TcpStream::connect(server.addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut challenge = [0u8; p::HEADER_LEN + p::NONCE_LEN];
    raw.read_exact(&mut challenge).unwrap();
    let server_nonce: [u8; p::NONCE_LEN] = challenge[p::HEADER_LEN..].try_into().unwrap();
    let mut hello = p::Hello {
        worker_id: 0,
        attempt: 0,
        client_nonce: [3; p::NONCE_LEN],
        layout_hash: *Layout::flat(4).unwrap().hash(),
        codecs: [0; 8],
        mac: [0; p::MAC_LEN],
    };
    hello.mac = p::hello_mac(SECRET, &server_nonce, &hello);
    p::write_frame(&mut raw, Op::Hello, &hello.encode(), &[]).unwrap();
    let welcome = p::read_header(&mut raw, p::SMALL_FRAME).unwrap();
    assert_eq!(welcome.op, Op::Welcome);
    raw.read_exact(&mut vec![0; welcome.len as usize]).unwrap();
    let n_logs = p::MAX_LOGS + 1;
    let mut head = p::encode_commit_head(0, 0, 1, 0, &p::Progress::default());
    head[36..38].copy_from_slice(&(n_logs as u16).to_le_bytes());
    // Only the head: the server refuses it before reading on (nothing unread to reset the socket).
    let len = (p::COMMIT_HEAD_LEN + 4 * n_logs) as u64;
    raw.write_all(&p::encode_header(Op::Commit, len)).unwrap();
    raw.write_all(&head).unwrap();
    let reply = p::read_header(&mut raw, p::SMALL_FRAME).unwrap();
    assert_eq!(reply.op, Op::Error);
    let mut payload = vec![0; reply.len as usize];
    raw.read_exact(&mut payload).unwrap();
    let err = p::decode_error(&payload);
    assert!(
        matches!(&err, Error::Protocol(m) if m.contains("at most 32")),
        "{err}"
    );
    assert_eq!(server.stats().commits, 0);
    assert!(server.epochs().is_empty());
}

#[test]
fn a_retried_attempt_releases_the_sync_round_its_old_attempt_joined() {
    let (server, layout) = start(
        Rule::Sync {
            workers: 2,
            scale: 0.5,
        },
        &[0.0; 4],
    );
    // Worker 0 joins round 0 and waits for worker 1, whose task then dies and is retried.
    let waiter = {
        let (server_addr, layout) = (server.addr().to_string(), layout.clone());
        thread::spawn(move || {
            let mut c = Client::connect(
                &server_addr,
                SECRET,
                &layout,
                0,
                0,
                Duration::from_secs(5),
                None,
            )
            .unwrap();
            let mut reply = [0.0; 4];
            c.commit(&[4.0; 4], Some(&mut reply))
        })
    };
    let mut w1 = connect_attempt(&server, &layout, 1, 0).unwrap();
    while !server.stats().workers.contains_key(&0) {
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(100)); // worker 0 is waiting in the round
    let mut reply = [0.0; 4];
    // Worker 1's first attempt commits, then worker 0's task is retried as attempt 1.
    let retried = thread::spawn({
        let (addr, layout) = (server.addr().to_string(), layout.clone());
        move || {
            let mut c = Client::connect(&addr, SECRET, &layout, 0, 1, Duration::from_secs(5), None)
                .unwrap();
            let mut reply = [0.0; 4];
            c.commit(&[2.0; 4], Some(&mut reply))
                .map(|a| (a.clock, reply))
        }
    });
    let err = waiter.join().unwrap().unwrap_err();
    assert!(err.to_string().contains("abandoned"), "{err}");
    let applied = w1.commit(&[6.0; 4], Some(&mut reply)).unwrap();
    let (clock, retried_reply) = retried.join().unwrap().unwrap();
    // Only the new round counts: (2 + 6) / 2, the old attempt's 4 is gone.
    assert_eq!((applied.clock, clock), (1, 1));
    assert_eq!(reply, [4.0; 4]);
    assert_eq!(retried_reply, [4.0; 4]);
}

#[test]
fn a_centre_resumes_its_clock() {
    let centre = Centre::new(Rule::Add { scale: 1.0 }, &[0.0; 2])
        .unwrap()
        .with_clock(41);
    let mut out = [0.0; 2];
    assert_eq!(centre.pull(&mut out).unwrap(), 41);
}

#[test]
fn client_stats_name_every_server_field() {
    let (server, layout) = start(Rule::Add { scale: 1.0 }, &[0.0; 3]);
    let mut c = connect(&server, &layout, 2);
    c.commit(&[1.0; 3], None).unwrap();
    let before = c.bytes_in();
    let remote = c.stats().unwrap();
    let names: Vec<&str> = remote.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, p::STATS_FIELDS);
    let local = server.stats();
    assert_eq!(remote.len(), local.fields().len());
    for ((name, got), (_, now)) in remote.iter().zip(local.fields()) {
        match *name {
            // The reply itself was sent after its snapshot was taken.
            "bytes_out" => assert_eq!(*got, before, "bytes_out"),
            _ => assert_eq!(*got, now, "{name}"),
        }
    }
    assert_eq!(
        c.bytes_in(),
        before + (p::HEADER_LEN + p::STATS_REPLY_LEN) as u64
    );
    let get = |field: &str| remote.iter().find(|(n, _)| *n == field).unwrap().1;
    assert_eq!((get("commits"), get("workers_connected")), (1, 1));
}

#[test]
fn codec_checks_come_from_the_codec_table() {
    let layout = Layout::flat(8).unwrap();
    let mut config = ServerConfig::new("127.0.0.1", 0, SECRET.to_vec());
    config.accept_codecs = Some(vec!["none".into(), "zip".into()]);
    let centre = Arc::new(Centre::new(Rule::Add { scale: 1.0 }, &[0.0; 8]).unwrap());
    let err = Server::start(Arc::clone(&centre), layout.clone(), config)
        .err()
        .expect("refused");
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.contains("codec families: none, fp16, bf16, int8, topk")),
        "{err}"
    );
    let server = Server::start(
        centre,
        layout.clone(),
        ServerConfig::new("127.0.0.1", 0, SECRET.to_vec()),
    )
    .unwrap();
    let err = connect_with(&server, &layout, 0, "none", "int8")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("pulls can use none, fp16 or bf16, not int8"),
        "{err}"
    );

    let (elastic, layout) = start(Rule::Elastic { alpha: 0.5 }, &[0.0; 8]);
    let err = connect_with(&elastic, &layout, 0, "topk:0.5", "none")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("which topk:0.5 cannot compress; use none, fp16 or bf16"),
        "{err}"
    );
    assert!(connect_with(&elastic, &layout, 1, "bf16", "fp16").is_ok());
}

fn start_with(config: impl FnOnce(&mut ServerConfig)) -> (Server, Layout) {
    let layout = Layout::flat(3).unwrap();
    let centre = Arc::new(Centre::new(Rule::Add { scale: 1.0 }, &[0.0; 3]).unwrap());
    let mut cfg = ServerConfig::new("127.0.0.1", 0, SECRET.to_vec());
    config(&mut cfg);
    (Server::start(centre, layout.clone(), cfg).unwrap(), layout)
}

#[test]
fn the_whole_handshake_has_one_deadline() {
    let (server, _) = start_with(|c| c.handshake_timeout = Duration::from_millis(800));
    let mut raw = TcpStream::connect(server.addr()).unwrap();
    let mut challenge = [0u8; p::HEADER_LEN + p::NONCE_LEN];
    raw.read_exact(&mut challenge).unwrap();
    // A byte every 100 ms: each read is quick, yet the handshake as a whole is too slow.
    let hello = p::encode_header(Op::Hello, p::HELLO_LEN);
    let started = std::time::Instant::now();
    let mut sent = 0;
    for byte in hello.iter().cycle() {
        if raw.write_all(&[*byte]).is_err() || started.elapsed() > Duration::from_secs(5) {
            break;
        }
        sent += 1;
        thread::sleep(Duration::from_millis(100));
        if server.stats().timeouts > 0 {
            break;
        }
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "closed after {took:?}");
    assert!(
        (5..=14).contains(&sent),
        "{sent} bytes sent before the close"
    );
    assert_eq!(server.stats().timeouts, 1);
}

#[test]
fn strangers_cannot_keep_a_worker_out() {
    let (server, layout) = start_with(|c| c.max_unauthenticated = 8);
    // Many more silent strangers than the handshake cap: the oldest are closed as new ones come.
    let strangers: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(server.addr()).unwrap())
        .collect();
    let started = std::time::Instant::now();
    let mut c = connect(&server, &layout, 0);
    let mut out = [1.0; 3];
    c.pull(&mut out).unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(out, [0.0; 3]);
    // The worker's arrival closed one more: only the 7 newest strangers are still waiting.
    let open = strangers.iter().filter(|s| still_open(s)).count();
    assert_eq!(open, 7);
}

/// Whether the server still holds `stream` open (it has read everything the server sent).
fn still_open(mut stream: &TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) => {
                return matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

#[test]
fn a_commit_that_would_overflow_is_refused_over_the_wire() {
    let (server, layout) = start(Rule::Add { scale: 1.0 }, &[0.0; 3]);
    let mut c = connect(&server, &layout, 0);
    c.commit(&[3e38, 1.0, 1.0], None).unwrap();
    let err = c.commit(&[3e38, 1.0, 1.0], None).unwrap_err();
    assert!(matches!(err, Error::Rejected(_)), "{err}");
    assert!(err.to_string().contains("infinite"), "{err}");
    let mut out = [0.0; 3];
    c.pull(&mut out).unwrap();
    assert_eq!(out, [3e38, 1.0, 1.0]);
}

#[test]
fn the_server_keeps_the_centre_as_each_epoch_ends() {
    let (server, layout) = start(Rule::Add { scale: 1.0 }, &[0.0; 2]);
    assert!(matches!(
        server.track_epochs(0),
        Err(Error::InvalidArgument(_))
    ));
    server.track_epochs(2).unwrap();
    let (mut a, mut b) = (connect(&server, &layout, 0), connect(&server, &layout, 1));
    let mut samples = [0u64; 2];
    let mut commit = |c: &mut Client, epoch, delta| {
        let s = &mut samples[c.worker_id() as usize];
        *s += 10;
        c.set_progress(p::Progress {
            samples: *s,
            epoch,
            logs: vec![0.5],
        })
        .unwrap();
        c.commit(&[delta; 2], None).unwrap();
    };
    // Worker 0 is in epoch 1 before worker 1 has committed at all: nothing has ended.
    commit(&mut a, 0, 1.0);
    commit(&mut a, 1, 1.0);
    assert_eq!(
        (server.epochs_ended(), server.take_epoch_centre(0)),
        (0, None)
    );
    commit(&mut b, 0, 10.0);
    assert_eq!(server.epochs_ended(), 0);
    // The slower worker moves on: epoch 0 ends with the centre right after its commit.
    commit(&mut b, 1, 10.0);
    assert_eq!(server.epochs_ended(), 1);
    commit(&mut a, 2, 1.0);
    commit(&mut b, 1, 10.0);
    assert_eq!(server.epochs_ended(), 1);
    assert_eq!(server.take_epoch_centre(0), Some(vec![22.0; 2]));
    assert_eq!(server.take_epoch_centre(0), None); // taken
    assert_eq!(server.take_epoch_centre(1), None); // not ended
    commit(&mut b, 2, 10.0);
    commit(&mut a, 2, 1.0);
    assert_eq!(server.epochs_ended(), 2);
    assert_eq!(server.take_epoch_centre(1), Some(vec![43.0; 2]));
    // Worker 1 jumps from epoch 2 to 5 while worker 0 is in 4: epochs 2 and 3 end at once.
    commit(&mut a, 4, 1.0);
    commit(&mut b, 5, 10.0);
    assert_eq!(server.epochs_ended(), 4);
    commit(&mut a, 4, 1.0);
    assert_eq!(server.take_epoch_centre(3), Some(vec![55.0; 2]));
    assert_eq!(server.take_epoch_centre(4), None);
    assert_eq!(server.take_epoch_centre(2), Some(vec![55.0; 2]));
    assert_eq!(server.take_epoch_centre(2), None);
    assert_eq!(server.take_epoch_centre(3), None);
}

#[test]
fn epochs_the_workers_are_past_end_when_tracking_starts() {
    let (server, layout) = start(Rule::Add { scale: 1.0 }, &[0.0; 3]);
    let mut c = connect(&server, &layout, 0);
    c.set_progress(p::Progress {
        samples: 5,
        epoch: 2,
        logs: vec![],
    })
    .unwrap();
    c.commit(&[1.0; 3], None).unwrap();
    assert_eq!(server.epochs_ended(), 0); // not tracked
    server.track_epochs(1).unwrap();
    assert_eq!(server.epochs_ended(), 2);
    assert_eq!(server.take_epoch_centre(1), Some(vec![1.0; 3]));
    assert_eq!(server.take_epoch_centre(0), Some(vec![1.0; 3]));
}

#[test]
fn concurrent_commits_end_each_epoch_once_with_a_whole_centre() {
    // Several shards, so a torn copy would show as unequal values.
    let n = 3 * distkeras_plus_core::centre::SHARD_LEN + 5;
    let (workers, epochs) = (4u32, 30u32);
    let (server, layout) = start(Rule::Add { scale: 1.0 }, &vec![0.0; n]);
    server.track_epochs(workers).unwrap();
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            let mut c = connect(&server, &layout, w);
            thread::spawn(move || {
                let ones = vec![1.0; n];
                for epoch in 0..epochs {
                    for step in 0..3 {
                        let samples = u64::from(epoch * 3 + step + 1);
                        c.set_progress(p::Progress {
                            samples,
                            epoch,
                            logs: vec![],
                        })
                        .unwrap();
                        c.commit(&ones, None).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // The last epoch ends only when the workers stop.
    assert_eq!(server.epochs_ended(), epochs - 1);
    let mut last = 0.0;
    for e in 0..epochs - 1 {
        let centre = server.take_epoch_centre(e).expect("ended");
        assert!(
            centre.iter().all(|&v| v == centre[0]),
            "torn copy of epoch {e}"
        );
        // Every worker has committed into epoch e + 1: at least its 3 × (e + 1) + 1 commits.
        assert!(centre[0] >= (workers * (3 * (e + 1) + 1)) as f32 && centre[0] >= last);
        last = centre[0];
    }
    assert_eq!(server.take_epoch_centre(epochs - 1), None);
}

#[test]
fn a_worker_that_fails_stops_the_others_and_the_server_keeps_its_message() {
    let (server, layout) = start(Rule::Add { scale: 1.0 }, &[0.0; 4]);
    let mut a = connect(&server, &layout, 0);
    let mut b = connect(&server, &layout, 1);
    a.commit(&[1.0; 4], None).unwrap();
    assert!(!a.control().stop && server.failure().is_none());
    b.fail("worker 1: ValueError: a bad batch");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.failure().is_none() && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        server.failure().as_deref(),
        Some("worker 1: ValueError: a bad batch")
    );
    a.commit(&[1.0; 4], None).unwrap(); // applied, and told to stop
    assert!(a.control().stop);
    // A second failure does not replace the first; a message too long is cut, not refused.
    let mut c = connect(&server, &layout, 2);
    c.fail(&"é".repeat(5000));
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        server.failure().as_deref(),
        Some("worker 1: ValueError: a bad batch")
    );
    assert_eq!(server.stats().protocol_errors, 0);
}
