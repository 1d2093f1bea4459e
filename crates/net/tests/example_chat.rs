//! Runs the `chat` example (`examples/chat.rs`) as a child process and chats with it over
//! loopback: every client receives every message, each sender's messages in the order sent;
//! clients join and leave while others talk; a client sending an oversized frame is dropped
//! alone.
//!
//! Each test starts its own server on `127.0.0.1:0`. Every wait has a deadline, and the
//! server process is killed when its guard drops, so a failing test leaks nothing; its log
//! (`RUST_LOG`, default `info`) is printed when a test fails.
//!
//! Messages are `c{sender}:{seq}:{padding}` (the padding's length and bytes follow from
//! sender and seq, so a corrupted or mixed-up frame is caught); `hello:{id}` is the marker
//! a client sends when it joins. A client has joined for the server once it receives its own
//! marker back: the server registers a connection before reading from it, and relays a
//! message to the connections registered when the relay reaches their I/O thread.

use std::collections::HashMap;
use std::io::{self, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use duo_testkit::{example_binary, ChildServer};

/// The example's largest accepted payload.
const MAX_FRAME: usize = 64 << 10;

/// The longest any single wait may take (a read, a connect, the server starting).
const WAIT: Duration = Duration::from_secs(10);

/// The longest a whole test may take, once its server is up (building the example, if
/// needed, comes before).
const TEST_LIMIT: Duration = Duration::from_secs(20);

/// How many of its own messages a paced writer may have in flight (sent, not yet received
/// back): keeps traffic flowing steadily without sleeping on a guess.
const WINDOW: u64 = 16;

// ---------------------------------------------------------------------------------------
// The server process.

/// The running example. Dropping it kills the process (and prints its log if the test is
/// failing).
struct ChatServer {
    server: ChildServer,
    addr: SocketAddr,
}

impl ChatServer {
    /// Starts `chat 127.0.0.1:0` and waits for its `listening on ADDR` line.
    fn start() -> ChatServer {
        let log_filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        let mut cmd = Command::new(example_binary("duo-net", "chat"));
        cmd.arg("127.0.0.1:0").env("RUST_LOG", log_filter);
        let server = ChildServer::builder(cmd).startup(WAIT).start();
        ChatServer {
            addr: server.addr(),
            server,
        }
    }

    /// Stops the server with `SIGTERM` (through `kill(1)`: these tests call no libc) and
    /// returns how it exited; `None` if `kill` cannot be run here.
    fn terminate(&mut self) -> Option<ExitStatus> {
        let sent = self.server.try_signal("TERM").ok()?;
        assert!(sent.success(), "kill -TERM {}: {sent}", self.server.pid());
        let status = self.server.wait_exit_within(WAIT);
        Some(status.expect("the server exits within the deadline after SIGTERM"))
    }
}

// ---------------------------------------------------------------------------------------
// Messages.

/// A decoded chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Msg {
    /// A client's join marker.
    Hello(u32),
    /// Message `seq` (from 0) of client `from`.
    Data { from: u32, seq: u64 },
    /// The message of the largest size accepted ([`big_payload`]).
    Big,
}

/// The payload of message `seq` from `from`: its id, then padding of varying length
/// (0 to 250 bytes) whose bytes depend on both.
fn data_payload(from: u32, seq: u64) -> Vec<u8> {
    let mut payload = format!("c{from}:{seq}:").into_bytes();
    let pad = (from as u64 * 37 + seq * 13) % 251;
    payload.extend((0..pad).map(|i| b'a' + ((i + seq + from as u64) % 26) as u8));
    payload
}

/// A payload of exactly [`MAX_FRAME`] bytes: `big:` and a pattern.
fn big_payload() -> Vec<u8> {
    let mut payload = b"big:".to_vec();
    payload.extend((0..MAX_FRAME - 4).map(|i| (i % 251) as u8));
    payload
}

/// Decodes a payload; an error names what is wrong with it.
fn parse(payload: &[u8]) -> Result<Msg, String> {
    if payload.starts_with(b"big:") {
        return match payload == big_payload() {
            true => Ok(Msg::Big),
            false => Err(format!("corrupted big message of {} bytes", payload.len())),
        };
    }
    let bad = || format!("malformed message {:?}", String::from_utf8_lossy(payload));
    let text = std::str::from_utf8(payload).map_err(|_| bad())?;
    if let Some(id) = text.strip_prefix("hello:") {
        return id.parse().map(Msg::Hello).map_err(|_| bad());
    }
    let mut fields = text.strip_prefix('c').ok_or_else(bad)?.splitn(3, ':');
    let from: u32 = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
    let seq: u64 = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
    if payload != data_payload(from, seq) {
        return Err(format!("corrupted message c{from}:{seq}"));
    }
    Ok(Msg::Data { from, seq })
}

/// One frame: `u32` big-endian length, then the payload.
fn frame(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("payload fits a u32 header");
    let mut frame = len.to_be_bytes().to_vec();
    frame.extend_from_slice(payload);
    frame
}

/// Reads one frame; `None` at a clean end of stream between frames.
fn read_frame(input: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 4];
    match input.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            format!("the server relayed a frame of {len} bytes"),
        ));
    }
    let mut payload = vec![0u8; len];
    input.read_exact(&mut payload)?;
    Ok(Some(payload))
}

// ---------------------------------------------------------------------------------------
// Clients.

/// What one client has received so far.
#[derive(Debug, Default)]
struct Seen {
    /// Sequence numbers received from each sender, in arrival order.
    from: HashMap<u32, Vec<u64>>,
    /// Join markers received, in arrival order.
    hellos: Vec<u32>,
    /// Messages of the largest size received.
    big: usize,
    /// Why the reader stopped before its goal (end of stream, an error), if it did.
    ended: Option<String>,
    /// A broken promise: a corrupted message, or one out of order.
    violation: Option<String>,
}

impl Seen {
    /// How many messages from `sender` arrived.
    fn count(&self, sender: u32) -> usize {
        self.from.get(&sender).map_or(0, Vec::len)
    }

    /// The last message from `sender`, if any.
    fn last(&self, sender: u32) -> Option<u64> {
        self.from.get(&sender).and_then(|s| s.last().copied())
    }

    /// Records `msg`; a message from a sender must follow that sender's previous one
    /// directly (a client connected throughout gets a sender's every message, in order).
    fn record(&mut self, msg: Msg) {
        match msg {
            Msg::Hello(id) => self.hellos.push(id),
            Msg::Big => self.big += 1,
            Msg::Data { from, seq } => {
                let seqs = self.from.entry(from).or_default();
                if let Some(&prev) = seqs.last() {
                    if seq != prev + 1 && self.violation.is_none() {
                        self.violation =
                            Some(format!("from client {from}: message {seq} after {prev}"));
                    }
                }
                seqs.push(seq);
            }
        }
    }
}

/// A client's received messages, shared by its reader thread and the test.
#[derive(Default)]
struct Inbox {
    seen: Mutex<Seen>,
    changed: Condvar,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `goal` holds; panics at `deadline`, or if the reader stopped or saw a
    /// broken promise first.
    fn wait_for(&self, what: &str, deadline: Instant, goal: impl Fn(&Seen) -> bool) {
        let mut seen = self.lock();
        loop {
            assert!(seen.violation.is_none(), "{what}: {:?}", seen.violation);
            if goal(&seen) {
                return;
            }
            assert!(
                seen.ended.is_none(),
                "{what}: reader ended: {:?}",
                seen.ended
            );
            let now = Instant::now();
            assert!(now < deadline, "{what}: deadline passed; seen {seen:?}");
            seen = self
                .changed
                .wait_timeout(seen, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A connected chat client: a reader thread fills its [`Inbox`] until its goal is met.
struct Client {
    id: u32,
    stream: TcpStream,
    inbox: Arc<Inbox>,
    reader: Option<JoinHandle<()>>,
}

impl Client {
    /// Connects as client `id`, sends its join marker and waits for it to come back (from
    /// then on, the server relays every new message to it). The reader stops once
    /// `goal` holds, at the end of the stream, on an error or at `deadline`.
    fn join(
        addr: SocketAddr,
        id: u32,
        deadline: Instant,
        goal: impl Fn(&Seen) -> bool + Send + 'static,
    ) -> Client {
        let stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect to the server");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let inbox = Arc::new(Inbox::default());
        let reader = {
            let input = BufReader::new(stream.try_clone().unwrap());
            let inbox = inbox.clone();
            thread::spawn(move || read_until(input, &inbox, deadline, goal))
        };
        let mut client = Client {
            id,
            stream,
            inbox,
            reader: Some(reader),
        };
        client.send(format!("hello:{id}").as_bytes());
        client.inbox.wait_for(
            &format!("client {id} gets its own join marker"),
            deadline,
            |s| s.hellos.contains(&id),
        );
        client
    }

    fn send(&mut self, payload: &[u8]) {
        self.stream
            .write_all(&frame(payload))
            .unwrap_or_else(|e| panic!("client {} sends: {e}", self.id));
    }

    /// Sends messages `0, 1, ..` up to the one `last(seq)` calls the last (it is asked
    /// just before each send). With `paced`, at most [`WINDOW`] of its own messages are in
    /// flight at once. Returns how many were sent.
    fn send_messages(
        &mut self,
        paced: bool,
        deadline: Instant,
        mut last: impl FnMut(u64) -> bool,
    ) -> u64 {
        for seq in 0.. {
            if paced && seq >= WINDOW {
                let id = self.id;
                self.inbox.wait_for(
                    &format!("client {id} gets its own messages back"),
                    deadline,
                    |s| s.count(id) as u64 + WINDOW > seq,
                );
            }
            let is_last = last(seq);
            self.send(&data_payload(self.id, seq));
            if is_last {
                return seq + 1;
            }
        }
        unreachable!()
    }

    /// Waits for the reader to stop (at its goal, at the latest at its deadline) and
    /// returns what it saw.
    fn finish(mut self) -> Seen {
        if let Some(reader) = self.reader.take() {
            reader.join().expect("reader thread");
        }
        std::mem::take(&mut *self.inbox.lock())
    }
}

/// The reader thread: records every message until `goal` holds or the stream ends.
fn read_until(
    mut input: BufReader<TcpStream>,
    inbox: &Inbox,
    deadline: Instant,
    goal: impl Fn(&Seen) -> bool,
) {
    loop {
        let outcome = match read_frame(&mut input) {
            Ok(Some(payload)) => parse(&payload),
            Ok(None) => Err("end of stream".to_string()),
            Err(e) => Err(format!("read error: {e}")),
        };
        let mut seen = inbox.lock();
        match outcome {
            Ok(msg) => seen.record(msg),
            Err(e) if e.starts_with("malformed") || e.starts_with("corrupted") => {
                seen.violation.get_or_insert(e);
            }
            Err(e) => {
                seen.ended = Some(e);
            }
        }
        let stop = goal(&seen)
            || seen.ended.is_some()
            || seen.violation.is_some()
            || Instant::now() >= deadline;
        drop(seen);
        inbox.changed.notify_all();
        if stop {
            return;
        }
    }
}

/// `seqs` is exactly `0..n`.
fn assert_all(who: &str, seen: &Seen, sender: u32, n: u64) {
    let expected: Vec<u64> = (0..n).collect();
    let got = seen.from.get(&sender).cloned().unwrap_or_default();
    assert!(
        got == expected,
        "{who}: messages from client {sender}: expected 0..{n}, got {} ({:?}..)",
        got.len(),
        &got[..got.len().min(10)]
    );
}

// ---------------------------------------------------------------------------------------
// The tests.

/// 3 clients send 300 messages each at once; each receives all 900, every sender's in
/// order. Then `SIGTERM` stops the server cleanly.
#[test]
fn every_client_receives_every_message_in_sender_order() {
    const CLIENTS: u32 = 3;
    const MESSAGES: u64 = 300;
    let mut server = ChatServer::start();
    let deadline = Instant::now() + TEST_LIMIT;

    // Everyone has joined before anyone talks.
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|id| {
            Client::join(server.addr, id, deadline, |s| {
                (0..CLIENTS).all(|c| s.count(c) as u64 == MESSAGES)
            })
        })
        .collect();
    let senders: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            thread::spawn(move || {
                client.send_messages(false, deadline, |seq| seq + 1 == MESSAGES);
                client
            })
        })
        .collect();
    for sender in senders {
        let client = sender.join().expect("sender thread");
        let who = format!("client {}", client.id);
        let seen = client.finish();
        assert_eq!(seen.violation, None, "{who}");
        assert_eq!(seen.ended, None, "{who}");
        for from in 0..CLIENTS {
            assert_all(&who, &seen, from, MESSAGES);
        }
    }

    if let Some(status) = server.terminate() {
        assert!(
            status.success(),
            "the server exits cleanly on SIGTERM: {status}"
        );
    }
}

/// While clients 0 and 1 talk, client 2 talks a while and leaves abruptly, and client 3
/// joins and talks. Nobody misses a message from a client that was there all along; the
/// newcomer receives every message sent after its arrival was visible.
///
/// What "after its arrival was visible" can promise: the server registers the joiner
/// before it reads the joiner's marker, so a message a sender writes *after receiving the
/// marker* is read by the server after the joiner was registered, and relayed to it. (A
/// message another client merely receives after the marker may have been read, and its
/// relay queued for the joiner's I/O thread, before the joiner was registered there.) And
/// once the joiner has one message of a sender, it gets every later one: each sender's
/// relays reach an I/O thread in order.
#[test]
fn clients_join_and_leave_while_others_talk() {
    const STAYERS: [u32; 2] = [0, 1];
    const LEAVER: u32 = 2;
    const JOINER: u32 = 3;
    /// The leaver's messages before it leaves.
    const LEAVER_MESSAGES: u64 = 100;
    /// The joiner's messages.
    const JOINER_MESSAGES: u64 = 50;
    /// Messages each stayer sends after it has seen the joiner's marker (at least; and it
    /// talks on until the leaver is gone).
    const AFTER_JOIN: u64 = 150;
    /// The joiner connects once client 0 has sent this many.
    const JOIN_AT: u64 = 50;

    let server = ChatServer::start();
    let deadline = Instant::now() + TEST_LIMIT;
    // How many messages each stayer sends: published before the last one is sent, so a
    // reader that receives it knows it is the last.
    let totals: Arc<[AtomicU64; 2]> =
        Arc::new([AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)]);
    let stayers_done = {
        let totals = totals.clone();
        move |s: &Seen| {
            STAYERS.iter().all(|&c| {
                let n = totals[c as usize].load(Ordering::SeqCst);
                n != u64::MAX && s.last(c) == Some(n - 1)
            })
        }
    };

    let stayers: Vec<Client> = STAYERS
        .iter()
        .map(|&id| {
            let stayers_done = stayers_done.clone();
            Client::join(server.addr, id, deadline, move |s| {
                stayers_done(s)
                    && s.count(LEAVER) as u64 == LEAVER_MESSAGES
                    && s.count(JOINER) as u64 == JOINER_MESSAGES
            })
        })
        .collect();
    let first_stayer = stayers[0].inbox.clone();
    let leaver_gone = Arc::new(AtomicBool::new(false));
    let mut leaver = Client::join(server.addr, LEAVER, deadline, |s| {
        s.last(LEAVER) == Some(LEAVER_MESSAGES - 1)
    });

    // The stayers talk until each has sent AFTER_JOIN messages after seeing the joiner,
    // and the leaver has gone.
    let stayer_threads: Vec<_> = stayers
        .into_iter()
        .map(|mut client| {
            let totals = totals.clone();
            let leaver_gone = leaver_gone.clone();
            thread::spawn(move || {
                let id = client.id;
                let inbox = client.inbox.clone();
                let mut first_after_join = None;
                client.send_messages(true, deadline, |seq| {
                    if first_after_join.is_none() && inbox.lock().hellos.contains(&JOINER) {
                        first_after_join = Some(seq);
                    }
                    let last = first_after_join.is_some_and(|f| seq + 1 >= f + AFTER_JOIN)
                        && leaver_gone.load(Ordering::SeqCst);
                    if last {
                        totals[id as usize].store(seq + 1, Ordering::SeqCst);
                    }
                    assert!(
                        Instant::now() < deadline,
                        "client {id}: the joiner never came, or the leaver never left"
                    );
                    last
                });
                (
                    client,
                    first_after_join.expect("set before the last message"),
                )
            })
        })
        .collect();

    // The leaver talks, waits for its last message to come back (so the server has relayed
    // all of them), and disconnects without a word while messages are still arriving.
    let leaver_thread = thread::spawn(move || {
        leaver.send_messages(true, deadline, |seq| seq + 1 == LEAVER_MESSAGES);
        // `finish` drops the socket: the kernel resets the connection if unread messages
        // are pending, as they usually are.
        let seen = leaver.finish();
        leaver_gone.store(true, Ordering::SeqCst);
        assert_eq!(seen.violation, None, "the leaver");
    });

    // The joiner comes in while traffic flows: once client 0's messages are coming back.
    first_stayer.wait_for("client 0 talks", deadline, |s| {
        s.count(STAYERS[0]) as u64 >= JOIN_AT
    });
    let mut joiner = Client::join(server.addr, JOINER, deadline, {
        let stayers_done = stayers_done.clone();
        move |s| stayers_done(s) && s.count(JOINER) as u64 == JOINER_MESSAGES
    });
    joiner.send_messages(true, deadline, |seq| seq + 1 == JOINER_MESSAGES);

    leaver_thread.join().expect("leaver thread");
    let mut first_after_join = HashMap::new();
    for stayer in stayer_threads {
        let (client, first) = stayer.join().expect("stayer thread");
        let who = format!("client {}", client.id);
        first_after_join.insert(client.id, first);
        let seen = client.finish();
        assert_eq!(seen.violation, None, "{who}");
        assert_eq!(seen.ended, None, "{who}");
        for &from in &STAYERS {
            assert_all(
                &who,
                &seen,
                from,
                totals[from as usize].load(Ordering::SeqCst),
            );
        }
        assert_all(&who, &seen, LEAVER, LEAVER_MESSAGES);
        assert_all(&who, &seen, JOINER, JOINER_MESSAGES);
    }

    let seen = joiner.finish();
    assert_eq!(seen.violation, None, "the joiner");
    assert_eq!(seen.ended, None, "the joiner");
    assert_all("the joiner", &seen, JOINER, JOINER_MESSAGES);
    for &from in &STAYERS {
        // Received: a run of consecutive messages (checked on arrival), through the last
        // one, from at the latest the first one sent after the sender saw the marker.
        let total = totals[from as usize].load(Ordering::SeqCst);
        let got = &seen.from[&from];
        assert_eq!(
            got.last(),
            Some(&(total - 1)),
            "the joiner, from client {from}"
        );
        assert!(
            got[0] <= first_after_join[&from],
            "the joiner missed client {from}'s messages {}..{} sent after it had joined",
            first_after_join[&from],
            got[0]
        );
    }
    // The leaver's messages it got (if it came before the leaver left) are consecutive,
    // which `Seen::record` checked.
}

/// A client announcing a frame over the maximum is disconnected; the others go on
/// chatting, and a frame of exactly the maximum is relayed whole.
#[test]
fn oversized_frame_closes_only_its_sender() {
    const BAD: u32 = 2;
    let server = ChatServer::start();
    let deadline = Instant::now() + TEST_LIMIT;
    let goal = |s: &Seen| s.count(0) == 20 && s.count(1) == 20 && s.count(BAD) == 1 && s.big == 1;
    let mut a = Client::join(server.addr, 0, deadline, goal);
    let mut b = Client::join(server.addr, 1, deadline, goal);
    // The bad client reads until the server closes its connection.
    let mut bad = Client::join(server.addr, BAD, deadline, |_| false);

    // A good message first: it is relayed; then a header announcing one byte too many,
    // and a little of its payload.
    bad.send(&data_payload(BAD, 0));
    let mut oversized = u32::try_from(MAX_FRAME + 1).unwrap().to_be_bytes().to_vec();
    oversized.extend_from_slice(&[b'x'; 100]);
    // The server may already have closed: a failed write is fine, the read below decides.
    let _ = bad.stream.write_all(&oversized);
    bad.inbox
        .wait_for("the bad client is disconnected", deadline, |s| {
            s.ended.is_some()
        });
    let seen = bad.finish();
    let ended = seen.ended.as_deref().unwrap_or_default();
    assert!(
        ended == "end of stream" || ended.contains("reset") || ended.contains("aborted"),
        "the bad client should see the server close its connection, saw: {ended}"
    );

    // The others chat on, and a frame of exactly the maximum size goes through.
    a.send(&big_payload());
    for seq in 0..20 {
        a.send(&data_payload(0, seq));
        b.send(&data_payload(1, seq));
    }
    for client in [a, b] {
        let who = format!("client {}", client.id);
        let seen = client.finish();
        assert_eq!(seen.violation, None, "{who}");
        assert_eq!(seen.ended, None, "{who}");
        assert_all(&who, &seen, 0, 20);
        assert_all(&who, &seen, 1, 20);
        assert_all(&who, &seen, BAD, 1);
        assert_eq!(seen.big, 1, "{who}");
    }
}
