#!/usr/bin/env python3
"""Sorts helgrind and DRD reports on duo's tests into classes (docs/reliability.md,
"Memory and thread checks").

    tools/classify-races.py LOG...        # valgrind --tool=helgrind|drd --log-file=LOG logs

Helgrind and DRD see synchronisation only through pthread calls (and valgrind client
requests). Rust's std Mutex, Condvar, Once/OnceLock, mpsc and thread parking, parking_lot
and crossbeam are built on atomics and futex(2), and Arc's last drop is ordered by an
acquire fence: to the two tools none of that synchronises, so nearly every object handed
from one thread to another is reported. This script puts each report in one class:

  atomic          the reported access is an atomic instruction (core::sync::atomic):
                  atomics cannot data-race; the tools check them as plain accesses.
  sync-internal   the access is inside std's or parking_lot's or crossbeam's
                  synchronisation (or std's thread bookkeeping), not in our code.
  arc             Arc reference counting or the final drop after the last release.
  runtime         neither our code nor a synchronisation primitive on the stack: libtest,
                  std's runtime.
  handoff         our code (safe Rust: duo-buffer, duo-reactor, duo-net and the tests are
                  #![forbid(unsafe_code)]) touching an object shared or moved across
                  threads by one of the mechanisms above; the table below names, per
                  object, how it is synchronised.
  review          anything else: our code on an object this script does not know, or an
                  access inside duo-sys's unsafe code. Each needs a look; exit status 1.

Prints the counts per class, the handoff table (object, mechanism, count) and every
review group with an example (log file and line).
"""

import collections
import re
import sys

HEADER = re.compile(
    r"^==\d+== (Possible data race during|Conflicting (load|store) by|Lock order|"
    r"Thread #\d+ unlocked|Thread #\d+: pthread|Thread #\d+'s call to|Probably a race|"
    r"Mutex |rwlock |Condition variable|Invalid |Destroying|The object at address)"
)
FRAME = re.compile(r"^==\d+==\s+(?:at|by) 0x[0-9A-Fa-f]+: (.*)$")
SECTION = re.compile(
    r"^==\d+==\s+(This conflicts|Address |Other segment|Block was alloc|Location |"
    r"Required order|followed by|Lock at|Previous|Allocation context)"
)
OURS = re.compile(
    r"duo_(sys|buffer|reactor|net|workers)::|^<duo_|"
    # test binaries of duo-reactor and duo-net (crate name = file name)
    r"\b(event_loop|channel|loop_threads|timer_queue|timing_wheel|server|client|"
    r"thread_pool|emfile|codec|codec_props|half_close|backpressure|idle_refresh|util)::"
)
ATOMIC = re.compile(
    r"core::sync::atomic|intrinsics::atomic|\batomic_(load|store|compare_exchange|cxchg|"
    r"xadd|xsub|swap|fetch|or|and|nand|xor|umax|umin|max|min)\b"
)
SYNC = re.compile(
    r"std::sync::|std::sys::sync::|parking_lot|lock_api::|crossbeam|std::thread::|"
    r"std::sys::thread|stack_overflow|thread_info|std::sys::thread_local|std::rt::|"
    r"std::sys::pal::unix::thread|pthread_|std::io::stdio|std::panicking|"
    r"\bOnce(Lock|Cell)?\b|LazyLock|ReentrantLock|__cxa_thread_atexit"
)
ARC = re.compile(r"alloc::sync::|ArcInner|drop_slow|<alloc::sync::Arc")

# Objects our code shares or moves between threads, and how each is synchronised.
# First match wins; matched against the allocated type, or the allocating function.
KNOWN = [
    (r"duo_reactor::loop_handle::LoopShared$",
     "a loop's shared part (Arc in every LoopHandle): thread id and eventfd fixed at "
     "EventLoop::new; queue in a parking_lot Mutex; flags and metrics atomic"),
    (r"duo_reactor::loop_handle::LoopShared::push|Box<\(?dyn core::ops::function::FnOnce",
     "a queued function: moved into the loop's queue under its parking_lot Mutex, "
     "taken out under it on the loop thread"),
    (r"duo_net::conn::handle::ConnShared$",
     "a connection handle (Arc): ids, name, addresses fixed; state and last activity "
     "atomic; token atomic (set once, by the loop); user context in a Mutex"),
    (r"duo_net::conn::machine::Owner$|duo_net::conn::callbacks::Callbacks$|"
     r"duo_net::stats::IoCounters$",
     "a server's or client's connection owner (Arc): fixed once the server or client is "
     "built; byte and close counters atomic"),
    (r"duo_net::server::ServerShared$",
     "a server's shared part (Arc): fixed fields; acceptor token and shutdown "
     "continuations in Mutexes; stopping flag and counters atomic"),
    (r"duo_net::client::connector::Inner$",
     "a client's shared part (Arc): fixed configuration; connection state in a Mutex; "
     "ids atomic"),
    (r"duo_workers::thread_pool::",
     "ThreadPool: jobs in a bounded crossbeam channel whose sender sits in an RwLock; "
     "join handles in a Mutex; counters atomic"),
    (r"duo_buffer::pool::",
     "BufPool: configuration fixed; free lists in Mutexes; byte counts atomic; thread "
     "caches thread-local, their counters atomic"),
    (r"std::sync::mpmc::",
     "a message in a std mpsc channel (sent by one thread, received by another)"),
    (r"^Arc<str>$|^duo_net::server::(builder::ServerBuilder::start|accept::new_connection_handler)$",
     "immutable data (a name, the vector of per-loop counters) built before it is "
     "shared (Arc)"),
    (r"lock_api::mutex::Mutex<|std::sync::(poison::)?mutex::Mutex<",
     "data inside a Mutex"),
    (r"\{closure_env#\d+\}|\{\{closure\}\}|::\{closure#\d+\}",
     "a closure (or what it owns) moved to another thread: thread::spawn, a loop's "
     "queue, a timer, a ThreadPool job, or an mpsc message"),
    (r"static:.*(BufPool6global|BufPool::global|OnceLock|ONE_AT_A_TIME)",
     "a static OnceLock / Mutex, initialised once"),
]


def parse(path):
    reports, cur, lineno = [], None, 0
    with open(path, errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if HEADER.match(line):
                if cur:
                    reports.append(cur)
                cur = {"file": path, "line": lineno, "head": line.split("== ", 1)[1],
                       "secs": [[]]}
                continue
            if cur is None:
                continue
            if re.match(r"^==\d+== -{10,}$", line) or "ERROR SUMMARY" in line:
                reports.append(cur)
                cur = None
                continue
            if SECTION.match(line):
                cur["secs"].append([line])
                continue
            cur["secs"][-1].append(line)
    if cur:
        reports.append(cur)
    return reports


def frames(sec):
    return [m.group(1) for m in (FRAME.match(l) for l in sec) if m]


def first_ours(fr):
    return next((f for f in fr if OURS.search(f)), None)


def strip_loc(f):
    return re.sub(r" \((?:in )?[^()]*\)$", "", f)


def obj_of(rep):
    """The accessed object: allocated type or allocating function, or the static."""
    for sec in rep["secs"][1:]:
        if not sec:
            continue
        head = sec[0]
        if "Address" in head and ("alloc" in head or "Allocation" in head):
            fr = frames(sec)
            if any("std::sync::mpmc" in f for f in fr):
                return "std::sync::mpmc:: channel buffer"
            if any("Arc<str>" in f for f in fr):
                return "Arc<str>"
            for f in fr:
                m = re.search(r"\bnew<(?:alloc::sync::ArcInner<)?(.*)>", f)
                if m:
                    t = m.group(1)
                    t = re.sub(r"<.*", "", t) if "mpmc" in t else t.split(",")[0]
                    return t.rstrip(">")
            fr = [f for f in fr if not re.search(
                r"malloc|memalign|calloc|realloc|alloc::|__rdl|__rust_alloc|\bnew\b|<.*>::new", f)]
            o = first_ours(fr) or (fr[0] if fr else "?")
            return strip_loc(o)
        if "Data section" in head or ("Address" in head and (
                "data symbol" in head or "bss" in head or " in a" in head)):
            return "static: " + head.split("== ", 1)[1]
        if "Address" in head and ("stack" in head):
            return "stack"
        if "Allocation context: unknown" in head:
            # DRD names .data ("Data section of ...") but not always .bss or a stack.
            return "unknown (not heap): " + head.split("== ", 1)[1]
    return "?"


def classify(rep):
    acc = frames(rep["secs"][0])
    if any(ATOMIC.search(f) for f in acc[:4]):
        return "atomic", None
    ours = first_ours(acc)
    if ours is None:
        if any(SYNC.search(f) for f in acc[:8]):
            return "sync-internal", None
        if any(ARC.search(f) for f in acc[:6]):
            return "arc", None
        return "runtime", None
    inner = acc[: acc.index(ours)]
    if any(ARC.search(f) for f in inner[:6]) and not any(
            re.search(r"Vec|Option|Box<dyn|replace<", f) for f in inner[:2]):
        return "arc", None
    if any(SYNC.search(f) for f in inner):
        return "sync-internal", None
    obj = obj_of(rep)
    if "duo_sys::" in ours and "EventFd::notify" not in ours:
        return "review", (obj, strip_loc(ours))
    for pat, why in KNOWN:
        if re.search(pat, obj) or (obj.startswith("static") and re.search(pat, f"static: @{ours}")):
            return "handoff", (pat, why)
        # Not on the heap and not named by the tool: a static is recognised only by the
        # function that owns it (the static entries below), nothing else.
        if (obj.startswith("unknown") and pat.startswith("static:")
                and re.search(pat, f"static: @{ours}")):
            return "handoff", (pat, why)
    return "review", (obj, strip_loc(ours))


def main(paths):
    counts = collections.Counter()
    handoff = collections.Counter()
    review = collections.defaultdict(list)
    for p in paths:
        for rep in parse(p):
            cls, key = classify(rep)
            counts[cls] += 1
            if cls == "handoff":
                handoff[key] += 1
            elif cls == "review":
                review[key].append(rep)
    total = sum(counts.values())
    print(f"{total} reports in {len(paths)} logs")
    for cls in ("atomic", "sync-internal", "arc", "runtime", "handoff", "review"):
        print(f"  {cls:14} {counts[cls]:6}")
    if handoff:
        print("\nhandoff, by object:")
        for (pat, why), n in sorted(handoff.items(), key=lambda kv: -kv[1]):
            print(f"  {n:6}  {why}")
    if review:
        print(f"\nreview: {len(review)} groups")
        for (obj, site), reps in sorted(review.items(), key=lambda kv: -len(kv[1])):
            r = reps[0]
            print(f"  {len(reps):6}  object {obj[:100]}\n          at {site[:140]}\n"
                  f"          e.g. {r['file']}:{r['line']}")
    return 1 if review else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(sys.argv[1:]))
