//! The `hub` example (`examples/hub.rs`, muduo's `examples/hub`; written in review round
//! 12 from a library user's point of view), run as a child process and spoken to over
//! loopback: fan-out to every subscriber in one order, `unsub`, a slow subscriber
//! dropped alone, malformed commands answered with an error and a close, clients that
//! leave mid-command, and the example's own `sub`/`pub` client modes.
//!
//! Each test starts its own hub on `127.0.0.1:0` (killed by PID when its guard drops).
//! Every wait has a deadline. A client knows its subscriptions are in place when it
//! receives its own marker back: it subscribes to a private topic `me.N` after the
//! others, then publishes on it, and the hub serves one connection's commands in order.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use duo_testkit::{example_binary, finish_within, run_within, ChildServer, RefusedPort};

/// The longest any single wait may take.
const WAIT: Duration = Duration::from_secs(10);

/// The hub's longest line (command or content), line end not counted.
const MAX_LINE: usize = 64 << 10;

/// Starts `hub serve 127.0.0.1:0 [LIMIT]` with the log at debug level (the tests watch
/// its `subscribes`, `left` and `to N subscribers` lines).
fn start_hub(output_limit: Option<usize>) -> ChildServer {
    let mut cmd = Command::new(example_binary("duo-net", "hub"));
    cmd.args(["serve", "127.0.0.1:0"]).env("RUST_LOG", "debug");
    if let Some(limit) = output_limit {
        cmd.arg(limit.to_string());
    }
    ChildServer::builder(cmd).startup(WAIT).start()
}

/// A raw client of the hub.
struct Client {
    id: u64,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let stream = TcpStream::connect(addr).expect("connect to the hub");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Client {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write to the hub");
    }

    fn publish(&mut self, topic: &str, content: &str) {
        self.send(format!("pub {topic}\r\n{content}\r\n").as_bytes());
    }

    /// Subscribes to `topics` and returns once the hub has served the subscriptions.
    fn subscribe(&mut self, topics: &[&str]) {
        let me = format!("me.{}", self.id);
        let mut commands: String = topics.iter().map(|t| format!("sub {t}\r\n")).collect();
        commands.push_str(&format!("sub {me}\r\npub {me}\r\nready\r\n"));
        self.send(commands.as_bytes());
        assert_eq!(self.next(), (me, "ready".to_owned()));
    }

    /// The next publication: (topic, content).
    fn next(&mut self) -> (String, String) {
        let header = self.line();
        let topic = header
            .strip_prefix("pub ")
            .unwrap_or_else(|| panic!("client {}: not a publication: {header:?}", self.id));
        (topic.to_owned(), self.line())
    }

    /// The next line, without its `\r\n`.
    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read from the hub");
        assert!(
            n > 0 && line.ends_with("\r\n"),
            "client {}: got {line:?}",
            self.id
        );
        line.truncate(line.len() - 2);
        line
    }

    /// Asserts that the hub closes the connection (EOF or a reset) within [`WAIT`],
    /// without sending anything more.
    fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "client {}: more data {rest:?}", self.id),
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "client {}", self.id),
        }
    }
}

#[test]
fn publications_reach_every_subscriber_in_one_order() {
    let hub = start_hub(None);
    let mut subscribers: Vec<Client> = (0..4).map(|_| Client::connect(hub.addr())).collect();
    for s in &mut subscribers {
        s.subscribe(&["news"]);
    }
    // Two publishers at once, on connections the hub may serve on different threads.
    let publishers: Vec<_> = (0..2)
        .map(|p| {
            let addr = hub.addr();
            thread::spawn(move || {
                let mut publisher = Client::connect(addr);
                for i in 0..200 {
                    publisher.publish("news", &format!("p{p}:{i}"));
                }
            })
        })
        .collect();
    let mut seen: Vec<Vec<String>> = Vec::new();
    for s in &mut subscribers {
        let got: Vec<String> = (0..400)
            .map(|_| {
                let (topic, content) = s.next();
                assert_eq!(topic, "news");
                content
            })
            .collect();
        for p in 0..2 {
            let mine: Vec<String> = got
                .iter()
                .filter(|c| c.starts_with(&format!("p{p}:")))
                .cloned()
                .collect();
            let expected: Vec<String> = (0..200).map(|i| format!("p{p}:{i}")).collect();
            assert_eq!(mine, expected, "publisher {p}'s messages in the order sent");
        }
        seen.push(got);
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "one order for all");
    for p in publishers {
        duo_testkit::join_within("publisher", p);
    }
}

#[test]
fn unsub_stops_a_topic_and_keeps_the_others() {
    let hub = start_hub(None);
    let mut a = Client::connect(hub.addr());
    let mut b = Client::connect(hub.addr());
    a.subscribe(&["news", "sports"]);
    b.subscribe(&["news"]);
    a.send(b"unsub news\r\n");
    // `a`'s own marker again: the unsub is served once it comes back.
    a.publish(&format!("me.{}", a.id), "after-unsub");
    assert_eq!(a.next().1, "after-unsub");
    let mut publisher = Client::connect(hub.addr());
    publisher.publish("news", "n1");
    publisher.publish("sports", "s1");
    assert_eq!(a.next(), ("sports".to_owned(), "s1".to_owned()));
    assert_eq!(b.next(), ("news".to_owned(), "n1".to_owned()));
    // Unsubscribing from what one never had is no error.
    a.send(b"unsub weather\r\n");
    publisher.publish("sports", "s2");
    assert_eq!(a.next(), ("sports".to_owned(), "s2".to_owned()));
}

#[test]
fn a_slow_subscriber_is_dropped_and_the_others_get_everything() {
    const LIMIT: usize = 256 << 10;
    const CONTENT: usize = 4 << 10;
    let hub = start_hub(Some(LIMIT));
    let mut slow = Client::connect(hub.addr());
    slow.subscribe(&["feed"]);
    let slow_id = slow.id;
    let received: Arc<Vec<AtomicU64>> = Arc::new((0..2).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let mut fast = Client::connect(hub.addr());
            fast.subscribe(&["feed"]);
            let received = received.clone();
            thread::spawn(move || {
                for i in 0.. {
                    let (topic, content) = fast.next();
                    assert_eq!(topic, "feed");
                    if content == "end" {
                        return i;
                    }
                    assert_eq!(content, format!("{i:08}{}", ".".repeat(CONTENT - 8)));
                    received[r].store(i + 1, Ordering::Release);
                }
                unreachable!()
            })
        })
        .collect();
    // The publisher stays at most 16 messages ahead of the fast subscribers (which thus
    // never come near the limit) until the slow one, which reads nothing, is dropped.
    let publisher = {
        let (addr, received, stop) = (hub.addr(), received.clone(), stop.clone());
        thread::spawn(move || {
            let mut publisher = Client::connect(addr);
            let deadline = Instant::now() + WAIT;
            let mut sent = 0u64;
            while !stop.load(Ordering::Acquire) {
                assert!(
                    Instant::now() < deadline,
                    "the slow subscriber was never dropped"
                );
                let slowest = received.iter().map(|r| r.load(Ordering::Acquire)).min();
                if sent < slowest.unwrap_or(0) + 16 {
                    let content = format!("{sent:08}{}", ".".repeat(CONTENT - 8));
                    publisher.publish("feed", &content);
                    sent += 1;
                } else {
                    thread::yield_now();
                }
            }
            publisher.publish("feed", "end");
            sent
        })
    };
    hub.wait_for_stderr("left 2 topics (output limit exceeded)", WAIT * 2);
    stop.store(true, Ordering::Release);
    let sent = duo_testkit::join_within("publisher", publisher);
    assert!(sent as usize * CONTENT > LIMIT, "only {sent} sent");
    for r in readers {
        assert_eq!(duo_testkit::join_within("fast subscriber", r), sent);
    }
    // The slow one gets a prefix of the feed (what the kernel held), then the end.
    let mut expected = 0u64;
    loop {
        let mut line = String::new();
        match slow.reader.read_line(&mut line) {
            Ok(0) => break,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("slow subscriber {slow_id}: {e}"),
            Ok(_) if !line.ends_with("\r\n") => break, // cut short by the close
            Ok(_) if line == "pub feed\r\n" => {}
            Ok(_) => {
                assert!(line.starts_with(&format!("{expected:08}")), "{line:.20}");
                expected += 1;
            }
        }
    }
    assert!(
        expected < sent,
        "the slow subscriber got {expected} of {sent}"
    );
}

#[test]
fn a_malformed_command_gets_an_error_and_a_close() {
    let hub = start_hub(None);
    let mut witness = Client::connect(hub.addr());
    witness.subscribe(&["news"]);
    let long = "x".repeat(MAX_LINE + 10);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"hello world\r\n".to_vec(), "unknown command"),
        (b"sub\r\n".to_vec(), "expected `sub TOPIC`"),
        (b"sub \r\n".to_vec(), "expected `sub TOPIC`"),
        (b"sub a b\r\n".to_vec(), "expected `sub TOPIC`"),
        (b"pub\r\nx\r\n".to_vec(), "expected `pub TOPIC`"),
        (b"sub \xff\xfe\r\n".to_vec(), "not UTF-8"),
        (format!("sub {long}").into_bytes(), "exceeds the maximum"),
        (
            format!("pub news\r\n{long}").into_bytes(),
            "exceeds the maximum",
        ),
        // A good command before the bad one is served.
        (b"sub sports\r\nbogus\r\n".to_vec(), "unknown command"),
    ];
    for (input, why) in cases {
        let mut c = Client::connect(hub.addr());
        c.send(&input);
        let line = c.line();
        assert!(
            line.starts_with("error: ") && line.contains(why),
            "{:?}: {line:?}",
            String::from_utf8_lossy(&input[..input.len().min(20)])
        );
        c.expect_closed();
    }
    hub.wait_for_stderr("left 1 topics", WAIT);
    // Everyone else goes on.
    let mut publisher = Client::connect(hub.addr());
    publisher.publish("news", "still here");
    assert_eq!(witness.next(), ("news".to_owned(), "still here".to_owned()));
}

#[test]
fn a_client_that_leaves_mid_command_is_cleaned_up() {
    let hub = start_hub(None);
    let mut stays = Client::connect(hub.addr());
    stays.subscribe(&["mid"]);
    // A subscriber that leaves halfway through a command.
    let mut leaves = Client::connect(hub.addr());
    leaves.subscribe(&["mid"]);
    leaves.send(b"unsub m");
    leaves.writer.shutdown(Shutdown::Both).unwrap();
    drop(leaves);
    hub.wait_for_stderr("left 2 topics", WAIT);
    // A publisher that leaves with its content cut short: nothing is forwarded.
    let mut cut = Client::connect(hub.addr());
    cut.send(b"pub mid\r\nhalf a mess");
    drop(cut);
    hub.wait_for_stderr("left 0 topics", WAIT);
    let mut publisher = Client::connect(hub.addr());
    publisher.publish("mid", "whole");
    assert_eq!(stays.next(), ("mid".to_owned(), "whole".to_owned()));
    hub.wait_for_stderr("mid: to 1 subscribers", WAIT);
}

#[test]
fn the_client_modes_publish_and_subscribe() {
    let mut hub = start_hub(None);
    let addr = hub.addr().to_string();
    let bin = example_binary("duo-net", "hub");
    let sub = Command::new(&bin)
        .args(["sub", &addr, "news", "sports"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hub sub");
    hub.wait_for_stderr("subscribes to sports", WAIT);
    for (topic, content) in [("news", "hello"), ("weather", "rain"), ("sports", "goal")] {
        let published = run_within(
            Command::new(&bin).args(["pub", &addr, topic, content]),
            WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(published.status.success(), "{published:?}");
    }
    hub.wait_for_stderr("sports: to 1 subscribers", WAIT);
    // Stopping the hub ends the subscriber, after what was queued for it.
    hub.terminate("TERM", WAIT);
    let sub = finish_within(sub, WAIT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sub.stdout, "news: hello\nsports: goal\n", "{sub:?}");

    // Nobody listening: `pub` gives up with status 1.
    let refused = RefusedPort::new();
    let args = ["pub", &refused.addr().to_string(), "news", "x"].map(str::to_owned);
    let failed = run_within(Command::new(&bin).args(args), WAIT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
}

#[test]
fn the_longest_publication_is_forwarded_whole() {
    let hub = start_hub(None);
    // "pub " + topic fills the first line, the content the second: both at the maximum,
    // the whole command as large as the hub's input may hold.
    let topic = "t".repeat(MAX_LINE - 4);
    let content = "c".repeat(MAX_LINE);
    let mut s = Client::connect(hub.addr());
    s.subscribe(&[&topic]);
    let mut publisher = Client::connect(hub.addr());
    publisher.publish(&topic, &content);
    publisher.publish(&topic, "after");
    assert!(
        s.next() == (topic.clone(), content),
        "the longest publication"
    );
    assert_eq!(s.next(), (topic, "after".to_owned()));
}

#[test]
fn a_hub_stops_within_its_grace_with_a_subscriber_that_reads_nothing() {
    // A limit far above the high-water mark: the slow subscriber's reading is paused by
    // backpressure and its output stays queued when the stop comes.
    let mut hub = start_hub(Some(64 << 20));
    let mut slow = Client::connect(hub.addr());
    slow.subscribe(&["bulk"]);
    let mut fast = Client::connect(hub.addr());
    fast.subscribe(&["bulk"]);
    let mut publisher = Client::connect(hub.addr());
    let content = "z".repeat(32 << 10);
    let reader = thread::spawn(move || {
        for i in 0..256 {
            let mut line = String::new();
            let n = fast.reader.read_line(&mut line).unwrap();
            assert!(n > 0, "EOF after {i} publications");
            assert_eq!(line, "pub bulk\r\n");
            line.clear();
            fast.reader.read_line(&mut line).unwrap();
            assert_eq!(line.len(), (32 << 10) + 2, "publication {i}");
        }
        fast.expect_closed();
    });
    for _ in 0..256 {
        publisher.publish("bulk", &content);
    }
    // A topic nobody follows, so that its log line is the only one: every publication
    // before it has been handed to the subscribers' connections.
    publisher.publish("end", "x");
    hub.wait_for_stderr("end: to 0 subscribers", WAIT);
    let (status, took) = hub.terminate("TERM", WAIT);
    assert!(status.success(), "{status}");
    assert!(took < WAIT, "{took:?}");
    duo_testkit::join_within("fast subscriber", reader);
    drop(slow);
}

#[test]
fn a_hub_on_a_unix_socket() {
    use std::os::unix::net::UnixStream;

    let dir = duo_testkit::TempDir::new("hub-unix");
    let path = dir.join("hub.sock");
    let endpoint = format!("unix:{}", path.display());
    let mut cmd = Command::new(example_binary("duo-net", "hub"));
    cmd.args(["serve", &endpoint]).env("RUST_LOG", "debug");
    let hub = ChildServer::builder(cmd).startup(WAIT).start();
    assert_eq!(hub.announced(), endpoint);
    let stream = UnixStream::connect(&path).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    writer.write_all(b"sub u\r\n").unwrap();
    hub.wait_for_stderr("subscribes to u", WAIT);
    let published = run_within(
        Command::new(example_binary("duo-net", "hub")).args(["pub", &endpoint, "u", "hi"]),
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(published.status.success(), "{published:?}");
    let mut got = String::new();
    for _ in 0..2 {
        reader.read_line(&mut got).unwrap();
    }
    assert_eq!(got, "pub u\r\nhi\r\n");
}

#[test]
fn a_backed_up_subscriber_that_hangs_up_leaves_its_topics_at_once() {
    // Far below the limit but past the high-water mark: the hub pauses reading the
    // subscriber (default backpressure) with its output queued, and no publication comes
    // after its hang-up to find it gone.
    let hub = start_hub(Some(64 << 20));
    let mut stuck = Client::connect(hub.addr());
    stuck.subscribe(&["heavy", "quiet"]);
    let mut publisher = Client::connect(hub.addr());
    let content = "h".repeat(32 << 10);
    for _ in 0..256 {
        publisher.publish("heavy", &content);
    }
    publisher.publish("end", "x");
    hub.wait_for_stderr("end: to 0 subscribers", WAIT);
    // Unread data in its receive queue: closing resets the connection.
    drop(stuck);
    hub.wait_for_stderr("left 3 topics", WAIT);
}
