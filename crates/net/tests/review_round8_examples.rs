//! The examples (`crates/net/examples/*.rs`), run as child processes and used as a user
//! would: the command line, where a mistyped thread count is a usage error.

use std::process::Command;
use std::time::Duration;

use duo_testkit::{example_binary, run_within};

/// `echo ADDR IO_THREADS` and `factor ADDR WORKERS` took any count: a mistyped 100000000
/// started threads until something ran out. `echo` went on starting loops for seconds
/// (with a high descriptor limit) and then failed with `Too many open files` (exit code
/// 1, after thousands of threads); `factor` aborted within a second
/// (exit code 134) with a panic from the standard library, which could not map a new
/// thread's signal stack once the process's memory maps ran out. Now a count above the
/// most the example starts (4096 I/O threads, as the echo app's `--io-threads`; 1024
/// workers) is a usage error, exit code 2, before any thread starts.
#[test]
fn a_huge_thread_count_is_a_usage_error() {
    let cases: [(&str, &[&str], &str); 4] = [
        ("echo", &["127.0.0.1:0", "100000000"], "IO_THREADS"),
        ("echo", &["127.0.0.1:0", "4097"], "IO_THREADS"),
        ("factor", &["127.0.0.1:0", "100000000"], "WORKERS"),
        ("factor", &["127.0.0.1:0", "1025"], "WORKERS"),
    ];
    for (name, args, what) in cases {
        // A program that took the count would start its threads, then serve until killed
        // (or fail on the way): 5 s tell.
        let out = run_within(
            Command::new(example_binary("duo-net", name)).args(args),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("{name} {args:?}: {e}"));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name} {args:?}: {}",
            out.stderr.chars().take(2000).collect::<String>()
        );
        assert!(
            out.stderr.contains(what) && out.stderr.contains(&format!("usage: {name}")),
            "{name} {args:?}: {}",
            out.stderr
        );
        assert!(!out.stdout.contains("listening"), "{name} {args:?}");
    }
}
