#!/usr/bin/env bash
# Runs the cargo-fuzz targets, one after the other.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 240); TARGETs default to all five: length_header, line,
# echo_framed, bank_protocol, http_request (the properties each checks are in
# fuzz/src/lib.rs and fuzz/src/http.rs). Needs a nightly toolchain and cargo-fuzz;
# without them it says so and exits 0, so nothing
# (and certainly not .ci/run) depends on nightly. The corpus grows in fuzz/corpus/<target>,
# crashes land in fuzz/artifacts/<target>, and each run's log in fuzz/logs/<target>.log.
# Replay a crash with: cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

secs=${1:-240}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(length_header line echo_framed bank_protocol http_request)
fi

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: skipped, no nightly toolchain (rustup toolchain install nightly)"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: skipped, cargo-fuzz is not installed (cargo install cargo-fuzz --locked)"
    exit 0
fi

# A few seeds per target, written once into an empty corpus. Every input starts with the
# 3 bytes fuzz/src/lib.rs's `Plan` reads: maximum (u16 LE), then piece count / parameter.
seed() {
    local dir=corpus/$1
    mkdir -p "$dir"
    [ -z "$(ls -A "$dir")" ] || return 0
    case $1 in
    length_header)
        printf '\x40\x00\x00\x00\x00\x00\x03abc\x00\x00\x00\x00' >"$dir/seed-1"
        printf '\x04\x00\x02\x03\x01\x00\x00\x00\x05hello' >"$dir/seed-2"
        ;;
    line)
        printf '\x10\x00\x02\x05\x01hello\r\nworld\n\n\r\nrest\r' >"$dir/seed-1"
        printf '\x03\x00\x00abcd\r\n' >"$dir/seed-2"
        ;;
    echo_framed)
        printf '\x00\x00\x11\x07\x00\x00\x00\x01\x00\x00\x00\x02hi\x00\x00\x00\x01\x00\x00\x00\x00' >"$dir/seed-1"
        printf '\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x01x' >"$dir/seed-2"
        ;;
    bank_protocol)
        printf '\x00\x00\x00REGISTER alice secret123' >"$dir/seed-1"
        printf '\x00\x00\x00TRANSFER bob +500 req-1' >"$dir/seed-2"
        printf '\x00\x00\x02\x05\x09DEPOSIT 100\r\nhistory 3\nPING\n' >"$dir/seed-3"
        ;;
    http_request)
        printf '\x00\x04\x22\x07\x0dGET / HTTP/1.1\r\nHost: x\r\n\r\n\r\nPOST /a?b HTTP/1.1\r\nHost: y:80\r\nContent-Length: 3\r\n\r\nabc' >"$dir/seed-1"
        printf '\x00\x01\x32\x03\x05PUT /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\nGET * HTTP/1.0\r\n\r\n' >"$dir/seed-2"
        printf '\xff\xff\x40OPTIONS * HTTP/1.1\r\nHost:\r\n\r\nGET http://h:1/p HTTP/1.1\r\nHost: h:1\r\n\r\n' >"$dir/seed-3"
        ;;
    esac
}

mkdir -p logs
failed=()
for t in "${targets[@]}"; do
    seed "$t"
    dict=()
    if [ -f "dict/$t.dict" ]; then dict=("-dict=dict/$t.dict"); fi
    echo "==> fuzz $t for ${secs}s (log: fuzz/logs/$t.log)"
    if ! cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -rss_limit_mb=2048 \
        -print_final_stats=1 "${dict[@]}" >"logs/$t.log" 2>&1; then
        failed+=("$t")
    fi
    grep -E '^(#[0-9]+.*DONE|Done|stat::number_of_executed_units|SUMMARY)' "logs/$t.log" || true
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]} (see fuzz/logs and fuzz/artifacts)"
    exit 1
fi
echo "fuzz: ok"
