//! The examples (`crates/net/examples/*.rs`), run as child processes and used as a user
//! would, against hostile peers: a chat client that writes small messages as fast as it
//! can, and one that never reads. And the library under the chat's broadcast: small
//! shared messages queued to a peer that never reads.
//!
//! Every wait has a deadline; each server process is killed by its guard if a test fails.
//! The tests take turns (`SERIAL`): one's allocations would blur the other's measure.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread;

use duo_net::TcpServer;
use duo_testkit::{example_binary, ChildServer, LIMIT};
use util::{localhost, TestServer};

/// One test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The chat example's `OUTPUT_LIMIT`: output queued for one client before it is dropped.
const CHAT_OUTPUT_LIMIT: usize = 4 << 20;

/// Starts example `name` with `args` and the log filter `log`, and waits for its
/// `listening on` line.
fn start(name: &str, args: &[&str], log: &str) -> ChildServer {
    let mut cmd = Command::new(example_binary("duo-net", name));
    cmd.args(args).env("RUST_LOG", log);
    ChildServer::builder(cmd).startup(LIMIT).start()
}

/// A field of `/proc/PID/status` in bytes (`VmRSS`, `VmHWM`: given there in kB).
fn proc_status_bytes(pid: u32, field: &str) -> usize {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    kib << 10
}

/// A client with a 4 KiB receive buffer that never reads: what is sent to it piles up
/// in the server.
fn non_reader(addr: SocketAddr) -> socket2::Socket {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    sock.connect_timeout(&addr.into(), LIMIT).expect("connect");
    sock
}

/// The chat documents that a client that stops reading holds at most the output limit
/// (4 MiB) before it is dropped. But a client writing small messages fast made the chat
/// hold whatever it wrote: each frame was broadcast on its own, a function queued to every
/// loop, and a loop visits connections a slice at a time, so the frames were read far
/// faster than they were delivered and the queued broadcasts grew without bound (8 MiB of
/// 16-byte frames: some 150 MiB, beyond the reach of any output limit). Now the frames of
/// one read go out as one broadcast, and a client with a few broadcasts on their way is
/// not read until they arrive.
#[test]
fn chat_a_fast_talker_in_tiny_messages_costs_about_the_output_limit() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let mut chat = start("chat", &["127.0.0.1:0"], "info");
    let silent = non_reader(chat.addr());
    let mut talker = TcpStream::connect(chat.addr()).expect("connect");
    talker.set_read_timeout(Some(LIMIT)).unwrap();
    // 16-byte frames (a 12-byte payload), twice the limit's worth: the silent client
    // crosses its limit on the way, whatever the kernel buffers hold.
    let frame = [&12u32.to_be_bytes()[..], b"hello, room!"].concat();
    let total = 2 * CHAT_OUTPUT_LIMIT;
    let wire: Vec<u8> = frame.iter().copied().cycle().take(total).collect();
    // The talker reads its own messages back (as every client gets them), so its own
    // output never piles up.
    let mut echo = talker.try_clone().unwrap();
    let reader = thread::spawn(move || {
        let mut buf = vec![0u8; 256 << 10];
        let mut got = 0;
        while got < total {
            match echo.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        got
    });
    let baseline = proc_status_bytes(chat.pid(), "VmRSS");
    talker
        .write_all(&wire)
        .expect("the talker's messages are taken");
    assert_eq!(
        reader.join().unwrap(),
        total,
        "the talker got its messages back"
    );
    chat.wait_for_stderr("of output queued (limit 4194304); closing", LIMIT);
    let peak = proc_status_bytes(chat.pid(), "VmHWM");
    let grown = peak.saturating_sub(baseline);
    println!(
        "baseline {} KiB, peak {} KiB: grew {} KiB",
        baseline >> 10,
        peak >> 10,
        grown >> 10
    );
    assert!(
        grown < 6 * CHAT_OUTPUT_LIMIT,
        "one silent client made the chat grow by {} MiB (output limit {} MiB)",
        grown >> 20,
        CHAT_OUTPUT_LIMIT >> 20
    );
    drop(silent);
    chat.kill();
}

/// The chat's silent client at the library level: 16-byte shared messages (a broadcast's)
/// sent to a peer that never reads were each queued by reference, a chunk of bookkeeping
/// and an `Arc` allocation per message, so the output buffer's memory was several times
/// the bytes it counted (what the output limit and high-water mark compare with). Now a
/// short message is copied into the output blocks; the memory stays near the count.
#[test]
fn small_shared_messages_to_a_silent_peer_cost_about_their_bytes() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    const MESSAGES: usize = 512 << 10;
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let server = TestServer::start(move || {
        TcpServer::builder("silent", localhost()).on_message(move |ctx, input| {
            input.consume_all();
            let before = proc_status_bytes(std::process::id(), "VmRSS");
            for i in 0..MESSAGES {
                let mut msg = [b'.'; 16];
                msg[..8].copy_from_slice(&(i as u64).to_be_bytes());
                ctx.send_shared(Arc::from(&msg[..]));
            }
            let grown = proc_status_bytes(std::process::id(), "VmRSS").saturating_sub(before);
            let _ = tx.lock().unwrap().send((grown, ctx.output_len()));
        })
    });
    let silent = non_reader(server.addr());
    (&silent).write_all(b"go").expect("write");
    let (grown, queued) = rx.recv_timeout(LIMIT).expect("the messages were sent");
    println!("{queued} bytes queued, the resident set grew {grown} bytes");
    assert!(queued > MESSAGES * 16 / 4, "only {queued} bytes queued");
    assert!(
        grown < queued * 3 / 2 + (1 << 20),
        "{queued} bytes queued took {grown} bytes of memory"
    );
    drop(silent);
    server.stop();
}
