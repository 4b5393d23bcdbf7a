#!/usr/bin/env bash
# Billgate binaries (two or more: A, B, C, ...) measured interleaved in one session: the gateway
# pinned to one core, the load generator (wrk) and the backend (nginx-backend.conf) to the other.
#
#   benches/e2e/ab.sh BINARY_A BINARY_B [BINARY_C ...]
#
# The gateways run at once on their own ports (those not measured are idle), from billgate.toml
# with `workers = 1`. Each round measures every binary forwarding (bench-pass, every request to
# the backend), then every binary refusing (bench-tiny, over 99% answered 429), then every binary
# forwarding on LOW_CONNECTIONS connections (pass-c4: few enough calls in flight that the adaptive
# in-flight limit, at least 4, refuses none however the shared machine slows the round trips), in
# an order rotated by the round. One line per run:
#   AB round=R scenario=S binary=A|B|... rps=N non2xx_rps=N cpu_us_per_answer=N load=L
# CPU per answer is the gateway process's user+sys time (/proc/PID/stat, all threads) over the
# run, divided by the answers wrk counted.
#
# Knobs: ROUNDS=3 DURATION=8 WARMUP=3 CONNECTIONS=64 LOW_CONNECTIONS=4 (0: no pass-c4)
# GATEWAY_CPU=1 LOAD_CPU=0 OUT=target/ab NICE=0 (e.g. -5, as root: the servers and wrk ahead of
# other work on a shared machine; everything measured gets the same priority either way).
# Loopback only; every run is bounded by `timeout`; every server started is stopped on exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
(($# >= 2 && $# <= 8)) || { echo "usage: $0 BINARY_A BINARY_B [BINARY_C ...]" >&2; exit 2; }
LETTERS=ABCDEFGH
NAMES=()
BINS=()
for binary in "$@"; do
    NAMES+=("${LETTERS:${#NAMES[@]}:1}")
    BINS+=("$(realpath "$binary")")
done

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-3}
CONNECTIONS=${CONNECTIONS:-64}
LOW_CONNECTIONS=${LOW_CONNECTIONS:-4}
NICE=${NICE:-0}
GATEWAY_CPU=${GATEWAY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
OUT=${OUT:-$ROOT/target/ab}
RUN=$OUT/run
BACKEND_ADDR=127.0.0.1:18000
CLK_TCK=$(getconf CLK_TCK)

STARTED=()
stop_all() {
    local pid
    for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${STARTED[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
}
trap stop_all EXIT
trap 'exit 130' INT TERM

wait_port() { # addr
    for _ in $(seq 100); do
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
nice -n "$NICE" taskset -c "$LOAD_CPU" nginx -p "$RUN" -c "$RUN/backend.conf" >"$RUN/backend.log" 2>&1 &
STARTED+=($!)
wait_port "$BACKEND_ADDR"

declare -A PID ADDR
start_gateway() { # name binary port admin_port
    local conf=$RUN/$1.toml
    sed -e "s|^\[server\]$|[server]\nworkers = 1|" -e "s|127.0.0.1:18002|127.0.0.1:$3|" \
        -e "s|127.0.0.1:18102|127.0.0.1:$4|" "$HERE/billgate.toml" >"$conf"
    TOKIO_WORKER_THREADS=1 RUST_LOG=warn nice -n "$NICE" taskset -c "$GATEWAY_CPU" "$2" serve --config "$conf" \
        >"$RUN/$1.log" 2>&1 &
    STARTED+=($!)
    PID[$1]=$!
    ADDR[$1]=127.0.0.1:$3
    wait_port "127.0.0.1:$3"
}
for i in "${!NAMES[@]}"; do
    start_gateway "${NAMES[$i]}" "${BINS[$i]}" $((18002 + 2 * i)) $((18102 + 2 * i))
done

ticks() { # pid -> user+sys in clock ticks
    sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}

run() { # round scenario binary key seconds connections
    local before after line
    before=$(ticks "${PID[$3]}")
    line=$(timeout $(($5 + 30)) nice -n "$NICE" taskset -c "$LOAD_CPU" wrk -t1 -c"$6" -d"$5s" \
        --timeout 5s -s "$HERE/bench.lua" "http://${ADDR[$3]}" -- "$4" | grep '^E2E ')
    after=$(ticks "${PID[$3]}")
    [[ $1 == warmup ]] && return 0
    # shellcheck disable=SC2086
    local $(echo "${line#E2E }")
    awk -v r="$1" -v s="$2" -v b="$3" -v req="$requests" -v dur="$duration_us" -v bad="$non2xx" \
        -v t=$((after - before)) -v hz="$CLK_TCK" -v load="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN {
        printf "AB round=%s scenario=%s binary=%s rps=%.0f non2xx_rps=%.0f cpu_us_per_answer=%.2f load=%s\n",
            r, s, b, req / (dur / 1e6), bad / (dur / 1e6), t / hz * 1e6 / req, load }'
}

for i in "${!NAMES[@]}"; do printf 'AB %s=%s\n' "${NAMES[$i]}" "${BINS[$i]}"; done
echo "AB date=$(date -u +%FT%TZ) rounds=$ROUNDS duration=${DURATION}s connections=$CONNECTIONS low_connections=$LOW_CONNECTIONS nice=$NICE gateway_cpu=$GATEWAY_CPU load_cpu=$LOAD_CPU"
for binary in "${NAMES[@]}"; do
    run warmup pass "$binary" bench-pass-key "$WARMUP" "$CONNECTIONS"
    run warmup reject "$binary" bench-tiny-key "$WARMUP" "$CONNECTIONS"
done
scenarios="pass reject"
((LOW_CONNECTIONS > 0)) && scenarios+=" pass-c$LOW_CONNECTIONS"
n=${#NAMES[@]}
for round in $(seq "$ROUNDS"); do
    order=()
    for ((i = 0; i < n; i++)); do order+=("${NAMES[$(((i + round - 1) % n))]}"); done
    for scenario in $scenarios; do
        key=bench-pass-key conns=$CONNECTIONS
        [[ $scenario == reject ]] && key=bench-tiny-key
        [[ $scenario == pass-c* ]] && conns=$LOW_CONNECTIONS
        for binary in "${order[@]}"; do
            run "$round" "$scenario" "$binary" "$key" "$DURATION" "$conns"
        done
    done
done
