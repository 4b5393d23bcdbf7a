#!/usr/bin/env bash
# Instructions per answer of billgate binaries (A, B, C, ...) under callgrind: a figure the other
# work on a shared machine does not move, beside ab.sh's times. Each binary serves one worker
# (billgate.toml with `workers = 1`) in front of the common backend (nginx-backend.conf); after a
# warm-up the counters are zeroed, `wrk -t1 -cCONNECTIONS` runs, and the counts are dumped.
#
#   benches/e2e/ab-callgrind.sh BINARY_A BINARY_B [BINARY_C ...]
#
# One line per run (every instruction of the process, all threads, over the answers wrk counted):
#   CG scenario=pass|reject binary=A|B|... answers=N non2xx=N instructions_per_answer=N
#
# Knobs: DURATION=20 WARMUP=3 CONNECTIONS=4 OUT=target/ab-callgrind. Loopback only; every server
# started is stopped on exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
(($# >= 1 && $# <= 8)) || { echo "usage: $0 BINARY_A [BINARY_B ...]" >&2; exit 2; }
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
CONNECTIONS=${CONNECTIONS:-4}
OUT=${OUT:-$ROOT/target/ab-callgrind}
RUN=$OUT/run
BACKEND_ADDR=127.0.0.1:18000
GATEWAY_ADDR=127.0.0.1:18020
LETTERS=ABCDEFGH

STARTED=()
stop_all() {
    local pid
    for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${STARTED[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    STARTED=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

wait_port() { # addr
    for _ in $(seq 300); do
        curl -s -o /dev/null --max-time 1 "http://$1/" && return 0
        sleep 0.1
    done
    echo "nothing listens on $1 (see $RUN)" >&2
    exit 1
}

rm -rf "$RUN"
mkdir -p "$RUN/tmp"
sed -e "s|@RUN@|$RUN|g" -e "s|@BACKEND_WORKERS@|1|g" -e "s|@BACKEND_ADDR@|$BACKEND_ADDR|g" \
    "$HERE/nginx-backend.conf" >"$RUN/backend.conf"
nginx -p "$RUN" -c "$RUN/backend.conf" >"$RUN/backend.log" 2>&1 &
BACKEND=$!
wait_port "$BACKEND_ADDR"
sed -e "s|^\[server\]$|[server]\nworkers = 1|" -e "s|127.0.0.1:18002|$GATEWAY_ADDR|" \
    -e "s|127.0.0.1:18102|127.0.0.1:18120|" "$HERE/billgate.toml" >"$RUN/billgate.toml"

wrk_line() { # key seconds
    timeout $(($2 + 60)) wrk -t1 -c"$CONNECTIONS" -d"$2s" --timeout 10s -s "$HERE/bench.lua" \
        "http://$GATEWAY_ADDR" -- "$1" | grep '^E2E '
}

echo "CG date=$(date -u +%FT%TZ) duration=${DURATION}s connections=$CONNECTIONS"
index=0
for binary in "$@"; do
    name=${LETTERS:$index:1}
    index=$((index + 1))
    echo "CG $name=$(realpath "$binary")"
    for scenario in pass reject; do
        key=bench-pass-key
        [[ $scenario == reject ]] && key=bench-tiny-key
        out=$RUN/callgrind.$name.$scenario
        TOKIO_WORKER_THREADS=1 RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out.%p" \
            "$binary" serve --config "$RUN/billgate.toml" >"$RUN/$name.$scenario.log" 2>&1 &
        pid=$!
        STARTED=("$BACKEND" "$pid")
        wait_port "$GATEWAY_ADDR"
        wrk_line "$key" "$WARMUP" >/dev/null
        callgrind_control -z "$pid" >/dev/null 2>&1
        line=$(wrk_line "$key" "$DURATION")
        callgrind_control -d "$pid" >/dev/null 2>&1
        kill -TERM "$pid"
        wait "$pid" || true
        # The dump taken after the run: the file with the highest part number.
        dump=$(ls -v "$out.$pid".* | tail -1)
        total=$(grep -m1 '^summary:' "$dump" | awk '{print $2}')
        requests=$(sed 's/.* requests=\([0-9]*\).*/\1/' <<<"$line")
        non2xx=$(sed 's/.* non2xx=\([0-9]*\).*/\1/' <<<"$line")
        awk -v s="$scenario" -v b="$name" -v n="$requests" -v bad="$non2xx" -v t="$total" 'BEGIN {
            printf "CG scenario=%s binary=%s answers=%d non2xx=%d instructions_per_answer=%.0f\n",
                s, b, n, bad, t / n }'
    done
done
