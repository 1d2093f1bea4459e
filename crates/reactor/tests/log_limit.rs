//! `log_limited!` and `report_suppressed` through a real `log::Log`: the lines that come
//! out, their suppressed counts, and nothing counted at a disabled level.
//!
//! The logger is process-wide, so this binary holds one test.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use duo_reactor::{log_limited, report_suppressed, LogLimiter};
use log::{Level, LevelFilter, Log, Metadata, Record};

struct Capture(Mutex<Vec<(Level, String, String)>>);

impl Log for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &Record<'_>) {
        let line = (r.level(), r.target().to_string(), r.args().to_string());
        self.0.lock().unwrap().push(line);
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

fn take_lines() -> Vec<(Level, String, String)> {
    std::mem::take(&mut *CAPTURE.0.lock().unwrap())
}

const WINDOW: Duration = Duration::from_millis(200);
static SHORT: LogLimiter = LogLimiter::with_limits("short window", 3, WINDOW);
static QUIET: LogLimiter = LogLimiter::new("disabled level");

#[test]
fn bursts_counts_and_summaries_through_a_logger() {
    log::set_logger(&CAPTURE).expect("the only logger of this binary");
    log::set_max_level(LevelFilter::Debug);

    // A per-site limiter with the defaults: 10 of 1000 lines come out.
    for i in 0..1000 {
        log_limited!(Level::Warn, "bad frame {i}");
    }
    let lines = take_lines();
    assert_eq!(lines.len(), 10);
    assert_eq!(lines[0].0, Level::Warn);
    assert_eq!(
        lines[0].1,
        module_path!(),
        "the caller's module is the target"
    );
    assert_eq!(lines[9].2, "bad frame 9");

    // A shared limiter with a short window: 3 lines, then the count on the next window's
    // first line. The window starts with its first line, so the clock is read after it:
    // a window after `started` is past the first window, however late that line came.
    log_limited!(limiter: SHORT, Level::Error, "reset 0");
    let started = Instant::now();
    for i in 1..50 {
        log_limited!(limiter: SHORT, Level::Error, "reset {i}");
    }
    assert_eq!(take_lines().len(), 3);
    while started.elapsed() < WINDOW {
        std::thread::sleep(WINDOW - started.elapsed());
    }
    log_limited!(limiter: SHORT, Level::Error, "reset again");
    let lines = take_lines();
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0]
            .2
            .starts_with("reset again (47 similar messages suppressed in the last "),
        "{:?}",
        lines[0]
    );

    // A count no later line reports: one summary line, at the level and target of the
    // suppressed events; then nothing more to report.
    for i in 0..10 {
        log_limited!(limiter: SHORT, Level::Error, "reset {i}");
    }
    assert_eq!(take_lines().len(), 2);
    assert!(report_suppressed() >= 8);
    let lines = take_lines();
    let summary: Vec<_> = lines
        .iter()
        .filter(|l| l.2.starts_with("short window:"))
        .collect();
    assert_eq!(summary.len(), 1, "{lines:?}");
    assert_eq!(summary[0].0, Level::Error);
    assert_eq!(summary[0].1, module_path!());
    assert!(
        summary[0]
            .2
            .starts_with("short window: 8 similar messages suppressed in the last "),
        "{summary:?}"
    );
    assert_eq!(report_suppressed(), 0, "each count is reported once");
    assert!(take_lines().is_empty());

    // A disabled level: nothing formatted, nothing counted.
    for _ in 0..100 {
        log_limited!(limiter: QUIET, Level::Trace, "never");
    }
    assert!(take_lines().is_empty());
    assert_eq!(QUIET.take_suppressed_at(0), None);
}
