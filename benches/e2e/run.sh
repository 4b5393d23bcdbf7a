#!/usr/bin/env bash
# End-to-end load comparison: billgate against nginx (limit_req), both in front of the same fast
# backend (nginx `return 200` with a 190-byte bill), plus the backend alone as the ceiling and
# hyper used the plain way (benches/e2e/bare.rs: a bare proxy and a static 429) as the floor a
# hyper-based gateway starts from.
#
#   benches/e2e/run.sh            build release, run every scenario, print the table
#   benches/e2e/run.sh profile    perf profile of billgate forwarding (or, with
#                                 PROFILE_KEY=bench-tiny-key PROFILE_CONNECTIONS=64, refusing)
#   benches/e2e/run.sh serve      start the backend, nginx and billgate and keep them up until
#                                 interrupted, for experiments by hand (strace, perf trace)
#   benches/e2e/run.sh tls        the TLS scenario alone (TLS=1 runs it after the others):
#                                 billgate and nginx terminating TLS with one certificate, pinned
#
# Loopback only. Every load run is bounded by `timeout`; every server this script starts is
# stopped on exit (trap). Knobs (environment):
#   ROUNDS=3         rounds of each measurement (the table shows medians, and min-max of req/s)
#   DURATION=10      seconds per measured run         WARMUP=3  seconds of warm-up per target
#   CONNECTIONS=64   connections (wrk and oha)        WRK_THREADS=2
#   LOW_CONNECTIONS=4  the extra low-concurrency pass-through pair (0: none)
#   WORKERS=2        nginx worker_processes and billgate's [server] workers
#   BACKEND_WORKERS=1  worker_processes of the backend nginx
#   CACHE=1          also measure billgate with cache_for on the inquiry route
#   BARE=1           also measure the bare hyper proxy and refuser (benches/e2e/bare.rs)
#   FLOOR=1          also measure floor.c, the least a server can do per answer (one recv and
#                    one send per leg, no parsing): what this harness allows any server, refusing
#                    and relaying to the backend (needs cc)
#   LATENCY=1        the fixed-rate (oha) phase; 0 skips it
#   THROUGHPUT=1     the maximum-throughput (wrk) phase; 0 skips it (then set RATE)
#   STORM=1          the reconnect-storm phase (storm.py, STORM_CONNECTIONS=3000 at once,
#                    ROUNDS rounds against nginx and billgate); 0 skips it
#   RATE=            the fixed rate, req/s; by default half of nginx's pass-through maximum
#                    as oha reaches it (measured first, ROUNDS runs, median)
#   OUT=target/e2e   where results, logs and the servers' run files go
#   NICE=0           e.g. -5 (root) to run servers and load generators ahead of other work on
#                    a shared machine; everything measured gets the same priority either way
#   TLS=0            1: also the TLS scenario after the others (the `tls` mode runs it alone)
#   TLS_ROUNDS=3     its rounds                         TLS_SECONDS=10  seconds per TLS run
#   TLS_CLIENTS=4    `openssl s_time` processes at once for handshakes per second
#   TLS_H2_CLIENTS=16 TLS_H2_STREAMS=4   h2load's connections and streams each for h2 (h1:
#                    CONNECTIONS connections, one request at a time each)
#   TLS_LOW=4        the h1 and h2 runs again with this many requests in flight (h1: that many
#                    connections; h2: one connection, that many streams); 0: none
#   IDLE_CONNECTIONS=2000  idle TLS connections opened for memory per connection
#   SERVER_CPU=1 LOAD_CPU=0  the TLS scenario's pinning: each server under test (one worker) on
#                    SERVER_CPU; the load generators and the backend on LOAD_CPU (as ab.sh)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MODE=${1:-run}

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
CONNECTIONS=${CONNECTIONS:-64}
LOW_CONNECTIONS=${LOW_CONNECTIONS:-4}
WRK_THREADS=${WRK_THREADS:-2}
WORKERS=${WORKERS:-2}
BACKEND_WORKERS=${BACKEND_WORKERS:-1}
CACHE=${CACHE:-1}
BARE=${BARE:-1}
FLOOR=${FLOOR:-1}
LATENCY=${LATENCY:-1}
THROUGHPUT=${THROUGHPUT:-1}
STORM=${STORM:-1}
STORM_CONNECTIONS=${STORM_CONNECTIONS:-3000}
OUT=${OUT:-$ROOT/target/e2e}
NICE=${NICE:-0}
TLS=${TLS:-0}
TLS_ROUNDS=${TLS_ROUNDS:-3}
TLS_SECONDS=${TLS_SECONDS:-10}
TLS_CLIENTS=${TLS_CLIENTS:-4}
TLS_H2_CLIENTS=${TLS_H2_CLIENTS:-16}
TLS_H2_STREAMS=${TLS_H2_STREAMS:-4}
TLS_LOW=${TLS_LOW:-4}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-2000}
SERVER_CPU=${SERVER_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
RUN=$OUT/run

BACKEND_ADDR=127.0.0.1:18000
NGINX_ADDR=127.0.0.1:18001
BILLGATE_ADDR=127.0.0.1:18002
BILLGATE_ADMIN=127.0.0.1:18102
CACHED_ADDR=127.0.0.1:18003
CACHED_ADMIN=127.0.0.1:18103
BARE_PROXY_ADDR=127.0.0.1:18005
BARE_REFUSE_ADDR=127.0.0.1:18007
BARE_LEAN_ADDR=127.0.0.1:18009
FLOOR_ADDR=127.0.0.1:18011
FLOOR_RELAY_ADDR=127.0.0.1:18013
PASS_KEY=bench-pass-key
TINY_KEY=bench-tiny-key
# The same quotas as billgate.toml: N/s with burst N.
PASS_RATE=1000000
TINY_RATE=10

BILLGATE=$ROOT/target/release/billgate
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[e2e %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------

need_tools() {
    local missing=()
    command -v nginx >/dev/null || missing+=(nginx)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v jq >/dev/null || missing+=(jq)
    command -v curl >/dev/null || missing+=(curl)
    if [[ $MODE == profile ]] && ! command -v perf >/dev/null; then missing+=(linux-perf); fi
    if [[ $MODE == run && $STORM == 1 ]] && ! command -v python3 >/dev/null; then missing+=(python3); fi
    if [[ $MODE == run && $FLOOR == 1 ]] && ! command -v cc >/dev/null; then missing+=(gcc); fi
    if [[ $MODE == tls || $TLS == 1 ]]; then
        command -v openssl >/dev/null || missing+=(openssl)
        command -v h2load >/dev/null || missing+=(nghttp2-client)
        command -v python3 >/dev/null || missing+=(python3)
        command -v taskset >/dev/null || missing+=(util-linux)
    fi
    if ((${#missing[@]})); then
        [[ $(id -u) == 0 ]] || die "missing ${missing[*]}: install them (apt-get install -y ${missing[*]})"
        log "installing ${missing[*]} (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        # Debian's nginx package may start its own service on :80; it is not ours to use.
    fi
    OHA=$(command -v oha || true)
    [[ -z $OHA && -x $HOME/.cargo/bin/oha ]] && OHA=$HOME/.cargo/bin/oha
    if [[ $MODE == run && $LATENCY == 1 && -z $OHA ]]; then
        log "oha (the fixed-rate load generator) is missing: building it once from crates.io"
        log "(cargo install oha --locked: 5-20 minutes on 2 busy cores; LATENCY=0 skips this phase)"
        cargo install oha --locked >"$OUT/oha-install.log" 2>&1 ||
            die "cargo install oha failed; see $OUT/oha-install.log (or run with LATENCY=0)"
        OHA=$HOME/.cargo/bin/oha
    fi
}

# ---------------------------------------------------------------------------------------------
# Servers: started here, stopped on exit
# ---------------------------------------------------------------------------------------------

STARTED=()

stop_all() {
    local pid
    for pid in "${STARTED[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    STARTED=()
}
trap 'stop_all' EXIT
trap 'exit 130' INT TERM

fill_template() { # template out
    sed -e "s|@RUN@|$RUN|g" -e "s|@WORKERS@|$WORKERS|g" \
        -e "s|@BACKEND_WORKERS@|$BACKEND_WORKERS|g" -e "s|@BACKEND_ADDR@|$BACKEND_ADDR|g" \
        -e "s|@PROXY_ADDR@|$NGINX_ADDR|g" \
        -e "s|@PASS_RATE@|$PASS_RATE|g" -e "s|@PASS_BURST@|$PASS_RATE|g" \
        -e "s|@TINY_RATE@|$TINY_RATE|g" -e "s|@TINY_BURST@|$TINY_RATE|g" \
        "$1" >"$2"
}

# Every server is started as "${PIN[@]}" COMMAND: empty, or e.g. (taskset -c 1) to pin it.
PIN=()

wait_port() { # addr what [scheme]
    for _ in $(seq 100); do
        if curl -sk -o /dev/null --max-time 1 "${3:-http}://$1/"; then return 0; fi
        sleep 0.1
    done
    die "$2 did not start listening on $1 (see $RUN/*.log)"
}

port_free() { # addr [scheme]
    ! curl -sk -o /dev/null --max-time 1 "${2:-http}://$1/" || die "$1 is already in use: stop what listens there first"
}

start_nginx() { # name template addr [scheme] -> sets PID_<name>
    local name=$1 conf=$RUN/$1.conf
    port_free "$3" "${4:-http}"
    fill_template "$2" "$conf"
    nginx -t -q -p "$RUN" -c "$conf" 2>"$RUN/$name-check.log" || die "nginx rejects $conf: $(cat "$RUN/$name-check.log")"
    "${PIN[@]}" nginx -p "$RUN" -c "$conf" >"$RUN/$name.log" 2>&1 &
    STARTED+=($!)
    printf -v "PID_$name" %s $!
    wait_port "$3" "nginx ($name)" "${4:-http}"
}

start_billgate() { # name config addr [scheme]
    local name=$1 conf=$RUN/$1.toml
    port_free "$3" "${4:-http}"
    # The worker count matches nginx's worker_processes; the main runtime (acceptor, admin
    # API, probes) gets one thread.
    sed -e "s|^\[server\]$|[server]\nworkers = $WORKERS|" "$2" >"$conf"
    grep -q "^workers = $WORKERS$" "$conf" || die "could not set workers in $conf"
    "$BILLGATE" check --config "$conf" >"$RUN/$name-check.log" 2>&1 || die "billgate check failed: $(cat "$RUN/$name-check.log")"
    TOKIO_WORKER_THREADS=1 RUST_LOG=warn "${PIN[@]}" "$BILLGATE" serve --config "$conf" >"$RUN/$name.log" 2>&1 &
    STARTED+=($!)
    printf -v "PID_$name" %s $!
    wait_port "$3" "billgate ($name)" "${4:-http}"
}

# Starts a reference server that logs to $RUN/NAME.log, and waits for it to listen.
start_process() { # name addr what command...
    local name=$1 addr=$2 what=$3
    shift 3
    port_free "$addr"
    "$@" >"$RUN/$name.log" 2>&1 &
    STARTED+=($!)
    printf -v "PID_$name" %s $!
    wait_port "$addr" "$what"
}

start_bare() { # name mode addr args...
    local name=$1 mode=$2 addr=$3
    shift 3
    start_process "$name" "$addr" "the bare hyper $mode" \
        "$BARE_BIN" "$mode" --listen "$addr" --workers "$WORKERS" "$@"
}

start_floor() { # name addr [backend]
    local name=$1 addr=$2 backend=()
    [[ -n ${3:-} ]] && backend=("${3%:*}" "${3##*:}")
    [[ -x $RUN/floor ]] || cc -O2 -pthread -o "$RUN/floor" "$HERE/floor.c" 2>"$RUN/$name-build.log" ||
        die "floor.c does not build: $(cat "$RUN/$name-build.log")"
    start_process "$name" "$addr" "floor.c" "$RUN/floor" "${addr%:*}" "${addr##*:}" "$WORKERS" "${backend[@]}"
}

start_servers() {
    rm -rf "$RUN"
    mkdir -p "$RUN/tmp"
    start_nginx backend "$HERE/nginx-backend.conf" "$BACKEND_ADDR"
    start_nginx proxy "$HERE/nginx-proxy.conf" "$NGINX_ADDR"
    start_billgate billgate "$HERE/billgate.toml" "$BILLGATE_ADDR"
    if [[ $CACHE == 1 && $MODE == run ]]; then
        # The same configuration on other ports, with the answer cache on for inquiries.
        sed -e "s|$BILLGATE_ADDR|$CACHED_ADDR|" -e "s|$BILLGATE_ADMIN|$CACHED_ADMIN|" \
            -e 's|^class = "inquiry"$|class = "inquiry"\ncache_for = "60s"|' \
            "$HERE/billgate.toml" >"$RUN/billgate-cache.toml"
        grep -q '^cache_for = "60s"' "$RUN/billgate-cache.toml" || die "could not derive billgate-cache.toml"
        start_billgate cached "$RUN/billgate-cache.toml" "$CACHED_ADDR"
    fi
    if [[ $BARE == 1 && $MODE == run ]]; then
        start_bare bareproxy proxy "$BARE_PROXY_ADDR" --backend "$BACKEND_ADDR"
        start_bare barelean proxy "$BARE_LEAN_ADDR" --backend "$BACKEND_ADDR" --client conn
        start_bare barerefuse refuse "$BARE_REFUSE_ADDR" --partner bench-tiny --rate "$TINY_RATE"
    fi
    if [[ $FLOOR == 1 && $MODE == run ]]; then
        start_floor floor "$FLOOR_ADDR"
        start_floor floorrelay "$FLOOR_RELAY_ADDR" "$BACKEND_ADDR"
    fi
}

# Every process of a server: nginx's master and its workers, billgate's one process.
pids_of() { # name
    local var=PID_$1
    local master=${!var}
    echo "$master" $(pgrep -P "$master" || true)
}

cpu_ticks() { # pids... -> "utime stime", in clock ticks, each summed over the pids
    local user=0 sys=0 pid t
    for pid in "$@"; do
        # Fields after "pid (comm) ": utime and stime are the 12th and 13th.
        t=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12, $13}') || t=""
        set -- ${t:-0 0}
        user=$((user + $1))
        sys=$((sys + $2))
    done
    echo "$user $sys"
}

billgate_workers() { # pid
    # The threads serving partner connections ("billgate-worker-N", cut to 15 characters).
    cat /proc/"$1"/task/*/comm 2>/dev/null | grep -c '^billgate-worker' || true
}

# ---------------------------------------------------------------------------------------------
# Scenarios: name | address | key | server whose CPU is counted | connections
# ---------------------------------------------------------------------------------------------

scenarios() {
    echo "direct $BACKEND_ADDR - backend $CONNECTIONS"
    echo "nginx-pass $NGINX_ADDR $PASS_KEY proxy $CONNECTIONS"
    echo "billgate-pass $BILLGATE_ADDR $PASS_KEY billgate $CONNECTIONS"
    if [[ $CACHE == 1 ]]; then echo "billgate-cache $CACHED_ADDR $PASS_KEY cached $CONNECTIONS"; fi
    if [[ $BARE == 1 ]]; then
        echo "hyper-pass $BARE_PROXY_ADDR $PASS_KEY bareproxy $CONNECTIONS"
        echo "hyper-lean $BARE_LEAN_ADDR $PASS_KEY barelean $CONNECTIONS"
    fi
    if [[ $FLOOR == 1 ]]; then echo "floor-pass $FLOOR_RELAY_ADDR $PASS_KEY floorrelay $CONNECTIONS"; fi
    echo "nginx-reject $NGINX_ADDR $TINY_KEY proxy $CONNECTIONS"
    echo "billgate-reject $BILLGATE_ADDR $TINY_KEY billgate $CONNECTIONS"
    if [[ $BARE == 1 ]]; then echo "hyper-reject $BARE_REFUSE_ADDR $TINY_KEY barerefuse $CONNECTIONS"; fi
    if [[ $FLOOR == 1 ]]; then echo "floor-reject $FLOOR_ADDR $TINY_KEY floor $CONNECTIONS"; fi
    # Pass-through again with few connections: few enough calls in flight that billgate's
    # adaptive in-flight limit (which settles near 8 here, 40% of it kept from polls) lets every
    # request through, so the pair compares forwarding itself. Maximum throughput only.
    if ((LOW_CONNECTIONS > 0)); then
        echo "nginx-pass-c$LOW_CONNECTIONS $NGINX_ADDR $PASS_KEY proxy $LOW_CONNECTIONS"
        echo "billgate-pass-c$LOW_CONNECTIONS $BILLGATE_ADDR $PASS_KEY billgate $LOW_CONNECTIONS"
    fi
}

# One scenario per line, the order rotated by the round so no target always runs first.
rotated() { # round
    local lines
    mapfile -t lines < <(scenarios)
    local n=${#lines[@]} i
    for ((i = 0; i < n; i++)); do echo "${lines[$(((i + $1 - 1) % n))]}"; done
}

status_of() { # addr key path -> HTTP status
    local args=(-s -o /dev/null -w '%{http_code}' --max-time 3)
    [[ $2 != - ]] && args+=(-H "x-api-key: $2")
    curl "${args[@]}" "http://$1$3"
}

preflight() {
    log "preflight: every target answers a bill, refuses over quota, refuses unknown keys"
    local name addr key cpu s
    while read -r name addr key _ _; do
        s=$(status_of "$addr" "$PASS_KEY" /v1/bills/100234)
        [[ $name == direct || $name == hyper-reject || $name == floor-reject || $s == 200 ]] || die "$name: a pass-through inquiry got $s, not 200"
        if [[ $name == direct ]]; then
            curl -s --max-time 3 "http://$addr/v1/bills/100234" | jq -e '.bill_id' >/dev/null ||
                die "the backend's bill is not JSON"
        fi
        if [[ $name == *-reject ]]; then
            local refused=0
            for _ in $(seq 30); do
                if [[ $(status_of "$addr" "$key" /v1/bills/100234) == 429 ]]; then refused=$((refused + 1)); fi
            done
            ((refused > 0)) || die "$name: 30 quick requests from $key were never refused"
        fi
        # The bare hyper baselines and the floor do no admission: they know no keys.
        if [[ $name != direct && $name != hyper-* && $name != floor-* ]]; then
            s=$(status_of "$addr" not-a-key /v1/bills/100234)
            [[ $s == 401 ]] || die "$name: an unknown key got $s, not 401"
        fi
    done < <(scenarios)
    sleep 1.5 # let the tiny quotas refill before anything is measured
}

# ---------------------------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------------------------

RESULTS=$OUT/results.tsv

# Closed loop, maximum throughput. Appends a row to $RESULTS unless the phase is "warmup".
run_wrk() { # phase round name addr key cpu_server seconds connections
    local phase=$1 round=$2 name=$3 addr=$4 key=$5 server=$6 secs=$7 conns=$8
    local pids user0 sys0 user1 sys1 line load
    pids=$(pids_of "$server")
    load=$(cut -d' ' -f1 /proc/loadavg)
    read -r user0 sys0 < <(cpu_ticks $pids)
    line=$(timeout $((secs + 30)) wrk -t"$WRK_THREADS" -c"$conns" -d"${secs}s" --timeout 5s \
        -s "$HERE/bench.lua" "http://$addr" -- "${key#-}" 2>&1 | tee -a "$OUT/wrk.log" | grep '^E2E ') ||
        die "wrk against $name failed (see $OUT/wrk.log)"
    read -r user1 sys1 < <(cpu_ticks $pids)
    [[ $phase == warmup ]] && return 0
    # shellcheck disable=SC2086
    local $(echo "${line#E2E }")
    awk -v ph="$phase" -v r="$round" -v n="$name" -v req="$requests" -v dur="$duration_us" \
        -v bad="$non2xx" -v err="$errors" -v p50="$p50_us" -v p99="$p99_us" -v p999="$p999_us" \
        -v user=$((user1 - user0)) -v sys=$((sys1 - sys0)) -v hz="$CLK_TCK" -v load="$load" 'BEGIN {
        s = dur / 1e6
        ticks = user + sys
        printf "%s\t%s\t%s\t%.0f\t%.0f\t%.4f\t%.3f\t%.3f\t%.3f\t%.1f\t%d\t%s\t%.0f\t%.2f\t%.2f\n", ph, r, n,
            req / s, bad / s, (req ? bad / req : 0), p50 / 1000, p99 / 1000, p999 / 1000,
            (req ? ticks / hz * 1e6 / req : 0), err, load, (req - bad) / s,
            (req ? user / hz * 1e6 / req : 0), (req ? sys / hz * 1e6 / req : 0)
    }' >>"$RESULTS"
}

# Open loop at a fixed rate, latency corrected for coordinated omission (oha).
run_oha() { # phase round name addr key cpu_server rate seconds
    local phase=$1 round=$2 name=$3 addr=$4 key=$5 server=$6 rate=$7 secs=$8
    local pids user0 sys0 user1 sys1 json load args
    pids=$(pids_of "$server")
    load=$(cut -d' ' -f1 /proc/loadavg)
    # -w: requests under way at the deadline are waited for, not counted as errors. In oha's
    # --rand-regex-url a dot is literal.
    # Rate 0: as fast as it can (closed loop), to calibrate the fixed rate.
    args=(-z "${secs}s" -w -c "$CONNECTIONS" --no-tui --output-format json
        --rand-regex-url "http://$addr/v1/bills/1[0-9]{5}")
    if ((rate > 0)); then args+=(-q "$rate" --latency-correction); fi
    [[ $key != - ]] && args+=(-H "x-api-key: $key")
    read -r user0 sys0 < <(cpu_ticks $pids)
    json=$(timeout $((secs + 30)) "$OHA" "${args[@]}" 2>>"$OUT/oha.log") ||
        die "oha against $name failed (see $OUT/oha.log)"
    read -r user1 sys1 < <(cpu_ticks $pids)
    echo "$json" >>"$OUT/oha.json"
    [[ $phase == warmup ]] && return 0
    jq -r --arg ph "$phase" --arg r "$round" --arg n "$name" --argjson user $((user1 - user0)) \
        --argjson sys $((sys1 - sys0)) \
        --argjson hz "$CLK_TCK" --arg load "$load" 'def ms: (. // 0) * 1e6 | round / 1000;
        def per($t; $n): if $n > 0 then ($t / $hz * 1e6 / $n * 100 | round) / 100 else 0 end;
        ($user + $sys) as $ticks |
        (.statusCodeDistribution // {}) as $codes
        | ([$codes | to_entries[] | .value] | add // 0) as $total
        | ([$codes | to_entries[] | select(.key | test("^2")) | .value] | add // 0) as $ok
        | (.summary.total) as $secs
        | [$ph, $r, $n,
           ($total / $secs | round), (($total - $ok) / $secs | round),
           (if $total > 0 then (($total - $ok) / $total * 10000 | round) / 10000 else 0 end),
           (.latencyPercentiles.p50 | ms), (.latencyPercentiles.p99 | ms),
           (.latencyPercentiles["p99.9"] | ms),
           (if $total > 0 then ($ticks / $hz * 1e6 / $total * 10 | round) / 10 else 0 end),
           ((.errorDistribution // {}) | [.[]] | add // 0), $load, ($ok / $secs | round),
           per($user; $total), per($sys; $total)]
        | @tsv' <<<"$json" >>"$RESULTS"
}

# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------

# The median of column $3 (1-based) over rows of phase $1 and scenario $2.
median() { # phase scenario column
    awk -F'\t' -v ph="$1" -v n="$2" -v c="$3" '$1 == ph && $3 == n { print $c }' "$RESULTS" |
        sort -g | awk '{ v[NR] = $1 } END {
            if (NR == 0) { print "nan"; exit }
            if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

spread() { # phase scenario column -> "min-max"
    awk -F'\t' -v ph="$1" -v n="$2" -v c="$3" '$1 == ph && $3 == n { print $c }' "$RESULTS" |
        sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { if (NR) printf "%.0f-%.0f", lo, hi }'
}

# The billgate/nginx ratio of a column round by round (the two ran back to back in each round,
# so a slow spell of the machine touches both), sorted, and their median.
paired() { # phase billgate-scenario nginx-scenario column -> "×a ×b ×c, median ×m"
    awk -F'\t' -v ph="$1" -v a="$2" -v b="$3" -v c="$4" '
        $1 == ph && $3 == a { x[$2] = $c }
        $1 == ph && $3 == b { y[$2] = $c }
        END { for (r in x) if ((r in y) && y[r] + 0 != 0) print x[r] / y[r] }' "$RESULTS" |
        sort -g | awk '{ v[NR] = $1; s = s sprintf(" ×%.2f", $1) } END {
            if (NR == 0) { print "n/a"; exit }
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%s, median ×%.2f\n", substr(s, 2), m }'
}

ratio() {
    if [[ $1 == nan || $2 == nan ]]; then echo n/a; return; fi
    awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'
}
verdict() { if [[ $1 == 1 ]]; then echo MET; elif [[ $1 == - ]]; then echo "not measured"; else echo "NOT MET"; fi; }
# 1 if "A OP B" holds, - if either is missing (nan).
holds() { # a op b
    if [[ $1 == nan || $3 == nan ]]; then echo -; return; fi
    awk -v a="$1" -v b="$3" -v op="$2" 'BEGIN { print (op == ">=" ? a >= b : op == "<=" ? a <= b : 0) }'
}
lat_verdict() { if [[ -n $2 ]]; then echo "NOT MET$2"; else verdict "$1"; fi; }
percent() { if [[ $1 == - || $1 == nan ]]; then echo -; else awk -v f="$1" 'BEGIN { printf "%.1f%%", f * 100 }'; fi; }
whole() { if [[ $1 == nan ]]; then echo -; else awk -v x="$1" 'BEGIN { printf "%.0f", x }'; fi; }

summary() {
    local name answered ok refused refused_rate p50 p99 p999 cpu_max cpu_rate vs have_lat
    have_lat=$(awk -F'\t' '$1 == "latency"' "$RESULTS" | wc -l)
    echo
    echo "## billgate vs nginx, end to end ($(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo
    echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); shared with other work"
    echo "- load average: $LOAD_BEFORE before, $LOAD_AFTER after; 1-min load at the start of each run: median $(cut -f12 "$RESULTS" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'), max $(cut -f12 "$RESULTS" | sort -g | tail -1)"
    echo "- workers: nginx worker_processes $WORKERS; billgate $BILLGATE_THREADS worker threads (\`[server] workers = $WORKERS\`, each a current-thread runtime with its own biller pool; one more thread accepts and serves the admin API); backend nginx worker_processes $BACKEND_WORKERS"
    echo "- load: wrk -t$WRK_THREADS -c$CONNECTIONS (-c$LOW_CONNECTIONS for the -c$LOW_CONNECTIONS pair) for maximum throughput; oha -c$CONNECTIONS --latency-correction -q RATE for latency; ${DURATION}s runs, $ROUNDS rounds, order rotated each round; medians"
    if ((have_lat)); then
        if [[ -n ${RATE:-} ]]; then
            echo "- fixed rate: $PASS_AT req/s in every scenario (RATE)"
        else
            echo "- fixed rate: $PASS_AT req/s in every scenario: half of nginx's median pass-through maximum under oha itself ($(median calibration nginx-pass 4) req/s; under wrk it was $(median throughput nginx-pass 4))"
        fi
    fi
    echo
    echo "| scenario | answers/s max [min-max] | 2xx/s max | refused at max / at rate | p50 ms | p99 ms | p99.9 ms | CPU µs/answer at max / at rate | billgate/nginx |"
    echo "|---|---|---|---|---|---|---|---|---|"
    while read -r name _ _ _ _; do
        answered=$(median throughput "$name" 4)
        ok=$(median throughput "$name" 13)
        refused=$(median throughput "$name" 6)
        cpu_max=$(median throughput "$name" 10)
        if ((have_lat)) && [[ $(median latency "$name" 7) != nan ]]; then
            p50=$(median latency "$name" 7); p99=$(median latency "$name" 8); p999=$(median latency "$name" 9)
            cpu_rate=$(median latency "$name" 10); refused_rate=$(median latency "$name" 6)
        else
            p50=-; p99=-; p999=-; cpu_rate=-; refused_rate=-
        fi
        vs=""
        case $name in
            billgate-pass | billgate-cache)
                vs="2xx/s ×$(ratio "$ok" "$(median throughput nginx-pass 13)")"
                if ((have_lat)); then vs="$vs, p99 ×$(ratio "$p99" "$(median latency nginx-pass 8)")"; fi
                vs="$vs, CPU/answer ×$(ratio "$cpu_max" "$(median throughput nginx-pass 10)")"
                ;;
            billgate-pass-c*)
                vs="2xx/s ×$(ratio "$ok" "$(median throughput "nginx${name#billgate}" 13)"), CPU/answer ×$(ratio "$cpu_max" "$(median throughput "nginx${name#billgate}" 10)")"
                ;;
            billgate-reject)
                vs="refusals/s ×$(ratio "$(median throughput "$name" 5)" "$(median throughput nginx-reject 5)")"
                if ((have_lat)); then vs="$vs, p99 ×$(ratio "$p99" "$(median latency nginx-reject 8)")"; fi
                vs="$vs, CPU/answer ×$(ratio "$cpu_max" "$(median throughput nginx-reject 10)")"
                ;;
            hyper-pass | hyper-lean)
                vs="hyper/nginx: 2xx/s ×$(ratio "$ok" "$(median throughput nginx-pass 13)"), CPU/answer ×$(ratio "$cpu_max" "$(median throughput nginx-pass 10)"); billgate/hyper: 2xx/s ×$(ratio "$(median throughput billgate-pass 13)" "$ok"), CPU/answer ×$(ratio "$(median throughput billgate-pass 10)" "$cpu_max")"
                ;;
            floor-pass)
                vs="floor/nginx: 2xx/s ×$(ratio "$ok" "$(median throughput nginx-pass 13)"), CPU/answer ×$(ratio "$cpu_max" "$(median throughput nginx-pass 10)")"
                ;;
            floor-reject)
                vs="floor/nginx: refusals/s ×$(ratio "$(median throughput "$name" 5)" "$(median throughput nginx-reject 5)"), CPU/answer ×$(ratio "$cpu_max" "$(median throughput nginx-reject 10)")"
                ;;
            hyper-reject)
                vs="hyper/nginx: refusals/s ×$(ratio "$(median throughput "$name" 5)" "$(median throughput nginx-reject 5)"), CPU/answer ×$(ratio "$cpu_max" "$(median throughput nginx-reject 10)"); billgate/hyper: refusals/s ×$(ratio "$(median throughput billgate-reject 5)" "$(median throughput "$name" 5)"), CPU/answer ×$(ratio "$(median throughput billgate-reject 10)" "$cpu_max")"
                ;;
        esac
        if [[ $cpu_max == nan ]]; then cpu_max=-; fi
        if [[ $name == direct ]]; then cpu_rate="$cpu_rate (backend)"; fi
        printf '| %s | %s [%s] | %s | %s / %s | %s | %s | %s | %s / %s | %s |\n' "$name" "$(whole "$answered")" \
            "$(spread throughput "$name" 4)" "$(whole "$ok")" "$(percent "$refused")" "$(percent "$refused_rate")" \
            "$p50" "$p99" "$p999" "$cpu_max" "$cpu_rate" "$vs"
    done < <(scenarios)
    echo
    echo "Answers/s count every answer (2xx, and 429/503 refusals); 2xx/s only the bills. p50/p99/p99.9"
    echo "are from the fixed-rate runs and cover every answer, refusals included. CPU is utime+stime of"
    echo "the proxy's processes (nginx master + workers; the billgate process; the bare hyper process; floor.c)"
    echo "over the run divided by the answers; for direct, the backend's. wrk's closed-loop"
    echo "percentiles are in results.tsv."
    echo
    echo "Where the CPU goes at maximum throughput, µs per answer (medians; user and system time of the"
    echo "same processes): a server's system time is mostly the loopback TCP stack both sides share."
    echo
    echo "| scenario | user | system | total |"
    echo "|---|---|---|---|"
    while read -r name _ _ _ _; do
        printf '| %s | %s | %s | %s |\n' "$name" "$(median throughput "$name" 14)" \
            "$(median throughput "$name" 15)" "$(median throughput "$name" 10)"
    done < <(scenarios)
    echo
    echo "### targets"
    local bg ng
    bg=$(median throughput billgate-pass 13); ng=$(median throughput nginx-pass 13)
    echo "- pass-through 2xx/s, billgate/nginx = $(ratio "$bg" "$ng") (target >= 1.00): $(verdict "$(holds "$bg" ">=" "$ng")")"
    echo "  - round by round: $(paired throughput billgate-pass nginx-pass 13)"
    if ((LOW_CONNECTIONS > 0)); then
        bg=$(median throughput "billgate-pass-c$LOW_CONNECTIONS" 13); ng=$(median throughput "nginx-pass-c$LOW_CONNECTIONS" 13)
        echo "  - with $LOW_CONNECTIONS connections (forwarding alone, if billgate refused nothing there): billgate/nginx = $(ratio "$bg" "$ng"), $(verdict "$(holds "$bg" ">=" "$ng")") at that concurrency"
    fi
    # Latency targets presuppose pass-through: a run in which billgate refused requests answered
    # some of them at once, which flatters its percentiles.
    local refused_at_rate=0 caveat=""
    if ((have_lat)); then
        refused_at_rate=$(median latency billgate-pass 6)
        if awk -v f="$refused_at_rate" 'BEGIN { exit !(f > 0.001) }'; then
            caveat=" (but billgate refused $(percent "$refused_at_rate") of these requests, answered at once: no pass-through, so the target is not met whatever the figures)"
        fi
        bg=$(median latency billgate-pass 8); ng=$(median latency nginx-pass 8)
        echo "- pass-through p99 at $PASS_AT req/s: billgate $bg ms, nginx $ng ms (target billgate <= nginx): $(lat_verdict "$(holds "$bg" "<=" "$ng")" "$caveat")"
        echo "  - round by round, p99 billgate/nginx: $(paired latency billgate-pass nginx-pass 8)"
    fi
    bg=$(median throughput billgate-reject 5); ng=$(median throughput nginx-reject 5)
    echo "- rejection refusals/s, billgate/nginx = $(ratio "$bg" "$ng") (target >= 1.10): $(verdict "$(holds "$bg" ">=" "$(awk -v x="$ng" 'BEGIN { print (x == "nan" ? "nan" : 1.1 * x) }')")")"
    echo "  - round by round: $(paired throughput billgate-reject nginx-reject 5)"
    if ((have_lat)); then
        local d
        d=$(median latency direct 8)
        bg=$(awk -v a="$(median latency billgate-pass 8)" -v d="$d" 'BEGIN { printf "%+.3f", a - d }')
        ng=$(awk -v a="$(median latency nginx-pass 8)" -v d="$d" 'BEGIN { printf "%+.3f", a - d }')
        echo "- added p99 over direct ($d ms) at $PASS_AT req/s: billgate $bg ms, nginx $ng ms (target billgate <= nginx): $(lat_verdict "$(holds "$bg" "<=" "$ng")" "$caveat")"
    fi
    if [[ $BARE == 1 ]]; then
        echo "- reference, not a target: hyper used the plain way (\`benches/e2e/bare.rs\`, no admission at all)"
        bg=$(median throughput hyper-pass 13); ng=$(median throughput nginx-pass 13)
        echo "  - bare hyper proxy/nginx, 2xx/s = $(ratio "$bg" "$ng"); round by round: $(paired throughput hyper-pass nginx-pass 13)"
        echo "  - billgate/bare hyper proxy, 2xx/s = $(ratio "$(median throughput billgate-pass 13)" "$bg"); round by round: $(paired throughput billgate-pass hyper-pass 13)"
        bg=$(median throughput hyper-lean 13)
        echo "  - lean hyper proxy (hyper's connection API)/nginx, 2xx/s = $(ratio "$bg" "$ng"); round by round: $(paired throughput hyper-lean nginx-pass 13)"
        echo "  - billgate/lean hyper proxy, 2xx/s = $(ratio "$(median throughput billgate-pass 13)" "$bg"); round by round: $(paired throughput billgate-pass hyper-lean 13)"
        bg=$(median throughput hyper-reject 5); ng=$(median throughput nginx-reject 5)
        echo "  - bare hyper 429/nginx, refusals/s = $(ratio "$bg" "$ng"); round by round: $(paired throughput hyper-reject nginx-reject 5)"
        echo "  - billgate/bare hyper 429, refusals/s = $(ratio "$(median throughput billgate-reject 5)" "$bg"); round by round: $(paired throughput billgate-reject hyper-reject 5)"
        if ((have_lat)); then
            echo "  - p99 at $PASS_AT req/s: bare hyper proxy $(median latency hyper-pass 8) ms, lean hyper proxy $(median latency hyper-lean 8) ms"
        fi
    fi
    if [[ $FLOOR == 1 ]]; then
        echo "- reference, not a target: the harness's own ceiling (\`benches/e2e/floor.c\`: one recv and one send per answer and leg, nothing parsed; billgate's 429 bytes, or the backend's bytes relayed)"
        bg=$(median throughput floor-pass 13); ng=$(median throughput nginx-pass 13)
        echo "  - floor relay/nginx, 2xx/s = $(ratio "$bg" "$ng"); round by round: $(paired throughput floor-pass nginx-pass 13)"
        echo "  - billgate/floor relay, 2xx/s = $(ratio "$(median throughput billgate-pass 13)" "$bg"); round by round: $(paired throughput billgate-pass floor-pass 13)"
        bg=$(median throughput floor-reject 5); ng=$(median throughput nginx-reject 5)
        echo "  - floor/nginx, refusals/s = $(ratio "$bg" "$ng"); round by round: $(paired throughput floor-reject nginx-reject 5)"
        echo "  - billgate/floor, refusals/s = $(ratio "$(median throughput billgate-reject 5)" "$bg"); round by round: $(paired throughput billgate-reject floor-reject 5)"
    fi
    if [[ -s $OUT/storm.txt ]]; then
        echo
        echo "### reconnect storm ($STORM_CONNECTIONS connections at once, \`storm.py\`, $TINY_KEY)"
        echo "No target: answers over 1 s and dropped handshakes (listen overflows) should be 0 for both."
        sed 's/^/- /' "$OUT/storm.txt"
    fi
    echo
    echo "### checks"
    local bad
    bad=$(awk -F'\t' '$3 !~ /-reject$/ && ($6 > 0.001 || $11 > 0) {
        printf "%s %s round %s: %.2f%% refused, %d socket errors\n", $1, $3, $2, $6 * 100, $11 }' "$RESULTS")
    if [[ -n $bad ]]; then
        echo "- pass-through runs with over 0.1% refused or any socket error (a quota or the biller protection bit):"
        sed 's/^/  - /' <<<"$bad"
    else
        echo "- pass-through: no run had over 0.1% refused or any socket error"
    fi
    bad=$(awk -F'\t' '$3 ~ /-reject$/ && $6 < 0.95 { printf "%s %s round %s: only %.2f%% refused\n", $1, $3, $2, $6 * 100 }' "$RESULTS")
    if [[ -n $bad ]]; then
        echo "- rejection runs with under 95% refused:"
        sed 's/^/  - /' <<<"$bad"
    else
        echo "- rejection: every run had over 95% refused"
    fi
    local addr admins=("$BILLGATE_ADMIN")
    if [[ $CACHE == 1 ]]; then admins+=("$CACHED_ADMIN"); fi
    for addr in "${admins[@]}"; do
        echo "- billgate's refusals by reason, whole run ($addr/metrics):"
        curl -s --max-time 3 "http://$addr/metrics" |
            awk '/^billgate_rejections_total/ && $NF != "0" { print "  - " $0; n++ } END { if (!n) print "  - none" }'
        curl -s --max-time 3 "http://$addr/metrics" | awk '/^billgate_upstream_concurrency_limit / { print "  - adaptive in-flight limit at the end: " $2 }'
    done
}

# ---------------------------------------------------------------------------------------------
# TLS: billgate and nginx terminating TLS with the same certificate, each pinned
# ---------------------------------------------------------------------------------------------
# Each server under test runs one worker (nginx worker_processes 1; billgate workers = 1 and its
# accepting runtime) pinned to SERVER_CPU; the load generators (openssl s_time, h2load,
# tls_idle.py) and the backend run on LOAD_CPU, as in ab.sh. Both servers offer TLS 1.2 and 1.3,
# ALPN h2 and http/1.1 and stateless session tickets (nginx's default: ssl_session_tickets on,
# no session cache), require no client certificate, and apply the plain scenarios' quotas
# (nginx-proxy.conf and billgate.toml otherwise unchanged). The certificate (ECDSA P-256, leaf
# only, signed by a CA made for the run) and the keys are made with openssl in $RUN/tls.
#
# Figures, each round (TLS_ROUNDS, the order of the two servers alternating):
#   handshakes/s, full and resumed: TLS_CLIENTS `openssl s_time -new|-reuse -tls1_3 -www /`
#     at once for TLS_SECONDS (each connection a handshake, one HTTP/1.0 GET / answered 404 by
#     both servers, and a close); the share resumed is counted from s_time's progress marks
#   requests/s: h2load over TLS, HTTP/1.1 keep-alive (-c CONNECTIONS) and h2 (-c TLS_H2_CLIENTS
#     -m TLS_H2_STREAMS), GET /v1/bills/100234 as bench-pass: every request to the backend; then
#     again with TLS_LOW requests in flight (h1-low: -c TLS_LOW; h2-low: -c 1 -m TLS_LOW), few
#     enough that billgate's adaptive in-flight limit (never under 4) refuses none: with the
#     backend on the loaded LOAD_CPU its answers slow, and at 64 in flight the limit falls to
#     4-8 and billgate answers most requests 503 biller_busy, which nginx has no counterpart of
#   CPU per handshake or answer: utime + stime of the server's processes over the run (as above)
#   and the share of SERVER_CPU the server kept busy (below ~95%, the load side set the pace).
# Memory per idle TLS connection (once, each server started afresh for each of the two ways):
# tls_idle.py opens IDLE_CONNECTIONS connections, handshake only or one bill asked on each, and
# reads the server's VmRSS before and with them open.

NGINX_TLS_ADDR=127.0.0.1:18021
BILLGATE_TLS_ADDR=127.0.0.1:18022
BILLGATE_TLS_ADMIN=127.0.0.1:18122
TLS_RESULTS=$OUT/tls.tsv

make_certificate() {
    local dir=$RUN/tls
    mkdir -p "$dir"
    {
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -subj "/CN=billgate bench CA" -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" &&
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
                -keyout "$dir/server-key.pem" -out "$dir/server.csr" &&
            openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" -days 2 \
                -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth') \
                -out "$dir/server.pem"
    } >"$dir/openssl.log" 2>&1 || die "openssl could not make the certificate (see $dir/openssl.log)"
}

start_tls_servers() {
    stop_all
    rm -rf "$RUN"
    mkdir -p "$RUN/tmp" "$OUT/tls"
    make_certificate
    PIN=(taskset -c "$LOAD_CPU")
    start_nginx backend "$HERE/nginx-backend.conf" "$BACKEND_ADDR"
    PIN=(taskset -c "$SERVER_CPU")
    # nginx-proxy.conf with one worker, its own run files, and a TLS listener.
    sed -e 's|^worker_processes @WORKERS@;|worker_processes 1;|' -e 's|proxy\.pid|tlsproxy.pid|' \
        -e 's|proxy-error\.log|tlsproxy-error.log|' -e 's|/tmp/proxy-|/tmp/tlsproxy-|' \
        -e "s|^        listen @PROXY_ADDR@ backlog=4096;|        listen $NGINX_TLS_ADDR ssl http2 backlog=4096;\n        ssl_certificate $RUN/tls/server.pem;\n        ssl_certificate_key $RUN/tls/server-key.pem;\n        ssl_protocols TLSv1.2 TLSv1.3;\n        ssl_session_tickets on;|" \
        "$HERE/nginx-proxy.conf" >"$RUN/tlsproxy.template"
    grep -q "listen $NGINX_TLS_ADDR ssl http2" "$RUN/tlsproxy.template" || die "could not derive the nginx TLS configuration"
    start_nginx tlsproxy "$RUN/tlsproxy.template" "$NGINX_TLS_ADDR" https
    # billgate.toml on other ports with [server.tls].
    sed -e "s|$BILLGATE_ADDR|$BILLGATE_TLS_ADDR|" -e "s|$BILLGATE_ADMIN|$BILLGATE_TLS_ADMIN|" \
        -e "s|^\[biller\]$|[server.tls]\ncert = \"$RUN/tls/server.pem\"\nkey = \"$RUN/tls/server-key.pem\"\n\n[biller]|" \
        "$HERE/billgate.toml" >"$RUN/billgate-tls-base.toml"
    grep -q '^\[server.tls\]$' "$RUN/billgate-tls-base.toml" || die "could not derive billgate-tls.toml"
    WORKERS=1 start_billgate billgatetls "$RUN/billgate-tls-base.toml" "$BILLGATE_TLS_ADDR" https
    PIN=()
}

# name | address | server whose CPU is counted
tls_targets() {
    echo "nginx $NGINX_TLS_ADDR tlsproxy"
    echo "billgate $BILLGATE_TLS_ADDR billgatetls"
}

tls_status() { # addr key http-version-flag -> "status version"
    local args=(-sk -o /dev/null -w '%{http_code} %{http_version}' --max-time 3 "$3")
    [[ $2 != - ]] && args+=(-H "x-api-key: $2")
    curl "${args[@]}" "https://$1/v1/bills/100234"
}

tls_preflight() {
    log "TLS preflight: h1 and h2 answer a bill, unknown keys get 401, bench-tiny is refused, sessions resume"
    local name addr s refused
    while read -r name addr _; do
        s=$(tls_status "$addr" "$PASS_KEY" --http1.1); [[ $s == "200 1.1" ]] || die "$name over TLS, HTTP/1.1: got $s"
        s=$(tls_status "$addr" "$PASS_KEY" --http2); [[ $s == "200 2" ]] || die "$name over TLS, h2: got $s"
        s=$(tls_status "$addr" not-a-key --http2); [[ $s == "401 2" ]] || die "$name over TLS, an unknown key: got $s"
        refused=0
        for _ in $(seq 30); do
            [[ $(tls_status "$addr" "$TINY_KEY" --http1.1) == "429 1.1" ]] && refused=$((refused + 1))
        done
        ((refused > 0)) || die "$name over TLS: 30 quick requests from $TINY_KEY were never refused"
        s=$(timeout 10 openssl s_time -connect "$addr" -reuse -tls1_3 -time 1 -www / 2>&1 | grep -o 'r' | wc -l)
        ((s > 0)) || die "$name: openssl s_time -reuse resumed no session"
    done < <(tls_targets)
}

# Appends to $TLS_RESULTS: phase round target per-second ok-per-second cpu-us user-us sys-us
# busy-share extra (the share resumed for handshakes; non-2xx answers/s for requests)
tls_row() { # phase round name count ok seconds user-ticks sys-ticks extra
    awk -v ph="$1" -v r="$2" -v n="$3" -v c="$4" -v ok="$5" -v s="$6" -v user="$7" -v sys="$8" \
        -v extra="$9" -v hz="$CLK_TCK" 'BEGIN {
        printf "%s\t%s\t%s\t%.0f\t%.0f\t%.1f\t%.1f\t%.1f\t%.3f\t%s\n", ph, r, n, c / s, ok / s,
            (c ? (user + sys) / hz * 1e6 / c : 0), (c ? user / hz * 1e6 / c : 0),
            (c ? sys / hz * 1e6 / c : 0), (user + sys) / hz / s, extra
    }' >>"$TLS_RESULTS"
}

run_handshakes() { # phase round name addr server new|reuse
    local phase=$1 round=$2 name=$3 addr=$4 server=$5 how=$6
    local pids user0 sys0 user1 sys1 t0 t1 i clients=() logs=() count=0 marks total resumed n
    pids=$(pids_of "$server")
    read -r user0 sys0 < <(cpu_ticks $pids)
    t0=$(date +%s.%N)
    for ((i = 1; i <= TLS_CLIENTS; i++)); do
        logs+=("$OUT/tls/s_time-$phase-$round-$name-$how-$i.log")
        timeout $((TLS_SECONDS + 30)) taskset -c "$LOAD_CPU" openssl s_time -connect "$addr" -"$how" \
            -tls1_3 -time "$TLS_SECONDS" -www / >"${logs[-1]}" 2>&1 &
        clients+=($!)
    done
    for i in "${clients[@]}"; do wait "$i" || die "openssl s_time against $name failed (see ${logs[*]})"; done
    t1=$(date +%s.%N)
    read -r user1 sys1 < <(cpu_ticks $pids)
    [[ $phase == warmup ]] && return 0
    for i in "${logs[@]}"; do
        # "N connections in Xs; ... connections/user sec, bytes read B"
        n=$(awk '/connections in .*s;/ { n = $1 } END { print n + 0 }' "$i")
        ((n > 0)) || die "openssl s_time against $name counted no connection (see $i)"
        count=$((count + n))
    done
    # Progress marks: '*' a full handshake, 'r' a resumed one (s_time -reuse starts with one full).
    marks=$(cat "${logs[@]}" | grep -v 'connections' | tr -cd '*r')
    total=${#marks}
    resumed=$(tr -cd 'r' <<<"$marks" | wc -c)
    tls_row "$phase" "$round" "$name-$how" "$count" "$count" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
        $((user1 - user0)) $((sys1 - sys0)) "$(awk -v r="$resumed" -v t="$total" 'BEGIN { printf "%.3f", t ? r / t : 0 }')"
}

run_h2load() { # phase round name addr server h1|h2|h1-low|h2-low seconds
    local phase=$1 round=$2 name=$3 addr=$4 server=$5 proto=$6 secs=$7
    local pids user0 sys0 user1 sys1 out args=(-t1 -D "$secs" -H "x-api-key: $PASS_KEY")
    case $proto in
        h1) args+=(--h1 -c "$CONNECTIONS") ;;
        h2) args+=(-c "$TLS_H2_CLIENTS" -m "$TLS_H2_STREAMS") ;;
        h1-low) args+=(--h1 -c "$TLS_LOW") ;;
        h2-low) args+=(-c 1 -m "$TLS_LOW") ;;
    esac
    pids=$(pids_of "$server")
    read -r user0 sys0 < <(cpu_ticks $pids)
    out=$(timeout $((secs + 30)) taskset -c "$LOAD_CPU" h2load "${args[@]}" "https://$addr/v1/bills/100234" 2>&1) ||
        die "h2load against $name failed: $out"
    read -r user1 sys1 < <(cpu_ticks $pids)
    printf '## %s round %s %s %s\n%s\n' "$phase" "$round" "$name" "$proto" "$out" >>"$OUT/tls/h2load.log"
    [[ $phase == warmup ]] && return 0
    local took codes ok answered
    # "finished in 10.00s, ..." and "status codes: A 2xx, B 3xx, C 4xx, D 5xx"
    took=$(awk '/^finished in/ { sub(/s,$/, "", $3); print $3 }' <<<"$out")
    codes=$(awk '/^status codes:/ { print $3, $5, $7, $9 }' <<<"$out")
    [[ -n $took && -n $codes ]] || die "cannot read h2load's output against $name (see $OUT/tls/h2load.log)"
    read -r ok _ _ _ <<<"$codes"
    answered=$(awk '{ print $1 + $2 + $3 + $4 }' <<<"$codes")
    tls_row "$phase" "$round" "$name-$proto" "$answered" "$ok" "$took" $((user1 - user0)) $((sys1 - sys0)) \
        "$(awk -v a="$answered" -v o="$ok" -v s="$took" 'BEGIN { printf "%.0f", (a - o) / s }')"
}

run_idle() { # way(handshake|request)
    local way=$1 name addr server pids line extra=()
    [[ $way == request ]] && extra=(--request "$PASS_KEY")
    start_tls_servers
    while read -r name addr server; do
        pids=$(pids_of "$server" | tr ' ' ',')
        # A handful of handshakes and requests first, so one-time set-up is not counted.
        timeout 30 taskset -c "$LOAD_CPU" h2load -t1 --h1 -c 8 -n 64 -H "x-api-key: $PASS_KEY" \
            "https://$addr/v1/bills/100234" >/dev/null 2>&1 || die "h2load against $name failed"
        sleep 1
        line=$(timeout 120 taskset -c "$LOAD_CPU" python3 "$HERE/tls_idle.py" "$addr" --pids "$pids" \
            --connections "$IDLE_CONNECTIONS" "${extra[@]}" 2>&1) || die "tls_idle.py against $name failed: $line"
        echo "$name $way $line" >>"$OUT/tls/idle.txt"
        log "  idle TLS, $name, $way: $line"
    done < <(tls_targets)
}

tls_median() { # phase scenario column
    awk -F'\t' -v ph="$1" -v n="$2" -v c="$3" '$1 == ph && $3 == n { print $c }' "$TLS_RESULTS" |
        sort -g | awk '{ v[NR] = $1 } END {
            if (NR == 0) { print "nan"; exit }
            if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

tls_measure() {
    : >"$TLS_RESULTS"
    mkdir -p "$OUT/tls"
    : >"$OUT/tls/h2load.log"
    : >"$OUT/tls/idle.txt"
    TLS_LOAD_BEFORE=$(uptime | sed 's/.*load average: //')
    log "TLS: memory per idle connection first, each server fresh ($IDLE_CONNECTIONS connections)"
    run_idle handshake
    run_idle request
    start_tls_servers
    tls_preflight
    local name addr server round how targets
    log "TLS warm-up: ${WARMUP}s of each load per target"
    while read -r name addr server; do
        run_h2load warmup 0 "$name" "$addr" "$server" h1 "$WARMUP"
        run_h2load warmup 0 "$name" "$addr" "$server" h2 "$WARMUP"
    done < <(tls_targets)
    for ((round = 1; round <= TLS_ROUNDS; round++)); do
        log "TLS round $round/$TLS_ROUNDS (load $(cut -d' ' -f1-3 /proc/loadavg))"
        if ((round % 2)); then targets=$(tls_targets); else targets=$(tls_targets | tac); fi
        for how in new reuse; do
            while read -r name addr server; do
                run_handshakes handshake "$round" "$name" "$addr" "$server" "$how"
                log "  $name $how: $(tail -1 "$TLS_RESULTS" | cut -f4) handshakes/s, $(tail -1 "$TLS_RESULTS" | cut -f6) µs CPU each, core busy $(tail -1 "$TLS_RESULTS" | cut -f9), resumed $(tail -1 "$TLS_RESULTS" | cut -f10)"
            done <<<"$targets"
        done
        for how in h1 h2 $( ((TLS_LOW > 0)) && echo h1-low h2-low); do
            while read -r name addr server; do
                run_h2load requests "$round" "$name" "$addr" "$server" "$how" "$TLS_SECONDS"
                log "  $name $how: $(tail -1 "$TLS_RESULTS" | cut -f4) answers/s ($(tail -1 "$TLS_RESULTS" | cut -f5) 2xx/s), $(tail -1 "$TLS_RESULTS" | cut -f6) µs CPU each, core busy $(tail -1 "$TLS_RESULTS" | cut -f9)"
            done <<<"$targets"
        done
    done
    tls_summary | tee "$OUT/tls-summary.md"
    log "rows: $TLS_RESULTS (phase round target per-second 2xx-per-second cpu-us user-us sys-us core-busy resumed-share|non-2xx-per-second)"
}

tls_summary() {
    local row ph sc label b n
    echo
    echo "## billgate vs nginx over TLS ($(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo
    echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); shared with other work; load average $TLS_LOAD_BEFORE before, $(uptime | sed 's/.*load average: //') after"
    echo "- each server one worker pinned to core $SERVER_CPU; load generators and backend on core $LOAD_CPU; ECDSA P-256 certificate; TLS 1.3 (X25519 both)"
    echo "- handshakes: $TLS_CLIENTS × openssl s_time -new|-reuse -tls1_3 -www / for ${TLS_SECONDS}s; requests: h2load -t1 --h1 -c$CONNECTIONS and h2load -t1 -c$TLS_H2_CLIENTS -m$TLS_H2_STREAMS for ${TLS_SECONDS}s; $TLS_ROUNDS rounds, medians"
    echo
    echo "| figure | billgate | nginx | billgate/nginx | CPU µs each (user + sys), billgate / nginx | core busy, billgate / nginx |"
    echo "|---|---|---|---|---|---|"
    for row in "handshake new full handshakes/s" "handshake reuse resumed handshakes/s" \
        "requests h1 HTTP/1.1, -c$CONNECTIONS, answers/s" "requests h2 h2, -c$TLS_H2_CLIENTS -m$TLS_H2_STREAMS, answers/s" \
        "requests h1-low HTTP/1.1, -c$TLS_LOW, answers/s" "requests h2-low h2, -c1 -m$TLS_LOW, answers/s"; do
        [[ $row == *-low* ]] && ((TLS_LOW == 0)) && continue
        read -r ph sc label <<<"$row"
        b=$(tls_median "$ph" "billgate-$sc" 4); n=$(tls_median "$ph" "nginx-$sc" 4)
        printf '| %s | %s | %s | ×%s | %s (%s + %s) / %s (%s + %s) | %s / %s |\n' "$label" "$(whole "$b")" "$(whole "$n")" \
            "$(ratio "$b" "$n")" "$(tls_median "$ph" "billgate-$sc" 6)" "$(tls_median "$ph" "billgate-$sc" 7)" \
            "$(tls_median "$ph" "billgate-$sc" 8)" "$(tls_median "$ph" "nginx-$sc" 6)" "$(tls_median "$ph" "nginx-$sc" 7)" \
            "$(tls_median "$ph" "nginx-$sc" 8)" "$(tls_median "$ph" "billgate-$sc" 9)" "$(tls_median "$ph" "nginx-$sc" 9)"
    done
    echo
    echo "Resumed share (s_time's marks), median: billgate $(tls_median handshake billgate-reuse 10), nginx $(tls_median handshake nginx-reuse 10) (full runs: $(tls_median handshake billgate-new 10), $(tls_median handshake nginx-new 10))."
    echo "2xx/s over TLS, median (h1, h2, h1-low, h2-low): billgate $(for sc in h1 h2 h1-low h2-low; do printf '%s ' "$(whole "$(tls_median requests "billgate-$sc" 5)")"; done); nginx $(for sc in h1 h2 h1-low h2-low; do printf '%s ' "$(whole "$(tls_median requests "nginx-$sc" 5)")"; done)"
    echo "One core's worth at the CPU per handshake or answer above (1e6 / µs, the ceiling if the server had its core to itself): billgate $(for sc in handshake:new handshake:reuse requests:h1-low requests:h2-low; do printf '%s ' "$(awk -v x="$(tls_median "${sc%%:*}" "billgate-${sc#*:}" 6)" 'BEGIN { printf "%.0f", (x > 0 ? 1e6 / x : 0) }')"; done); nginx $(for sc in handshake:new handshake:reuse requests:h1-low requests:h2-low; do printf '%s ' "$(awk -v x="$(tls_median "${sc%%:*}" "nginx-${sc#*:}" 6)" 'BEGIN { printf "%.0f", (x > 0 ? 1e6 / x : 0) }')"; done)(full, resumed, h1-low, h2-low)."
    echo
    echo "Memory per idle TLS connection ($IDLE_CONNECTIONS connections, VmRSS of the server's processes):"
    sed 's/^/- /' "$OUT/tls/idle.txt"
    echo
    echo "Checks: billgate's refusals and TLS failures over the measured runs ($BILLGATE_TLS_ADMIN/metrics), its log, nginx's error log:"
    curl -s --max-time 3 "http://$BILLGATE_TLS_ADMIN/metrics" |
        awk '/^billgate_(rejections_total|tls_handshake_failures_total)/ && $NF != "0" { print "- " $0; n++ } END { if (!n) print "- no refusal, no TLS failure" }'
    echo "- billgate log: $(wc -l <"$RUN/billgatetls.log") lines$(grep -m3 -iE 'panic|error' "$RUN/billgatetls.log" | sed 's/^/; /' | tr -d '\n')"
    echo "- nginx error log: $(wc -l <"$RUN/tlsproxy-error.log") lines$(head -3 "$RUN/tlsproxy-error.log" | sed 's/^/; /' | tr -d '\n')"
}

# ---------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------

build() {
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
    if [[ $BARE == 1 && $MODE == run ]]; then
        # The bare baselines are a bench target: cargo names its executable.
        BARE_BIN=$(cd "$ROOT" && cargo bench --no-run --bench bare --message-format=json 2>"$OUT/bare-build.log" |
            jq -r 'select(.executable != null and .target.name == "bare") | .executable' | tail -1)
        [[ -x $BARE_BIN ]] || die "no bare hyper baseline after cargo bench --no-run --bench bare (see $OUT/bare-build.log)"
    fi
}

measure() {
    : >"$RESULTS"
    if [[ $THROUGHPUT != 1 && -z ${RATE:-} ]]; then die "THROUGHPUT=0 needs RATE"; fi
    : >"$OUT/wrk.log"
    : >"$OUT/oha.json"
    LOAD_BEFORE=$(uptime | sed 's/.*load average: //')
    log "load average before: $LOAD_BEFORE"
    preflight
    BILLGATE_THREADS=$(billgate_workers "$PID_billgate")
    log "billgate runs $BILLGATE_THREADS worker threads; nginx runs $(pgrep -P "$PID_proxy" | wc -l) workers"

    local name addr key server round
    log "warm-up: ${WARMUP}s of wrk per target"
    while read -r name addr key server conns; do
        run_wrk warmup 0 "$name" "$addr" "$key" "$server" "$WARMUP" "$conns"
    done < <(scenarios)

    for ((round = 1; round <= ROUNDS * THROUGHPUT; round++)); do
        log "throughput round $round/$ROUNDS (load $(cut -d' ' -f1-3 /proc/loadavg))"
        while read -r name addr key server conns; do
            if [[ $name == *-reject ]]; then sleep 1.1; fi # the tiny quota starts each run full
            run_wrk throughput "$round" "$name" "$addr" "$key" "$server" "$DURATION" "$conns"
            log "  $name: $(tail -1 "$RESULTS" | cut -f4) req/s, $(tail -1 "$RESULTS" | cut -f6) refused"
        done < <(rotated "$round")
    done

    if [[ $LATENCY == 1 ]]; then
        # One rate for every scenario, rejection included: half of nginx's pass-through maximum
        # as oha itself reaches it (oha needs about twice wrk's CPU per request; half of wrk's
        # maximum would overload the machine and measure oha's own queueing). RATE overrides.
        if [[ -n ${RATE:-} ]]; then
            PASS_AT=$RATE
        else
            for ((round = 1; round <= ROUNDS; round++)); do
                run_oha calibration "$round" nginx-pass "$NGINX_ADDR" "$PASS_KEY" proxy 0 "$DURATION"
                log "calibration $round/$ROUNDS: nginx-pass under oha -c$CONNECTIONS, as fast as it goes: $(tail -1 "$RESULTS" | cut -f4) req/s"
            done
            PASS_AT=$(awk -v x="$(median calibration nginx-pass 4)" 'BEGIN { printf "%d", x / 2 }')
        fi
        for ((round = 1; round <= ROUNDS; round++)); do
            log "latency round $round/$ROUNDS at $PASS_AT req/s (load $(cut -d' ' -f1-3 /proc/loadavg))"
            while read -r name addr key server conns; do
                if ((conns != CONNECTIONS)); then continue; fi
                if [[ $name == *-reject ]]; then sleep 1.1; fi
                run_oha latency "$round" "$name" "$addr" "$key" "$server" "$PASS_AT" "$DURATION"
                log "  $name: p50 $(tail -1 "$RESULTS" | cut -f7) ms, p99 $(tail -1 "$RESULTS" | cut -f8) ms, p99.9 $(tail -1 "$RESULTS" | cut -f9) ms"
            done < <(rotated "$round")
        done
    fi
    : >"$OUT/storm.txt"
    if [[ $STORM == 1 ]]; then storm; fi
    LOAD_AFTER=$(uptime | sed 's/.*load average: //')
    summary | tee "$OUT/summary.md"
    log "rows: $RESULTS (phase round scenario req/s refused/s refused-share p50 p99 p99.9 cpu-us/req socket-errors load1 2xx/s user-us/req sys-us/req)"
    if [[ $TLS == 1 ]]; then tls_measure; fi
}

# A reconnect storm (storm.py): STORM_CONNECTIONS connections opened at once, one bill asked on
# each as bench-tiny (so nearly every answer is the gateway's own 429 and the biller's protection
# stays out of it), against nginx and billgate in turn, ROUNDS rounds. Each line says how long
# the answers took and how many handshakes the kernel dropped for a full accept queue.
storm() {
    local round name addr
    for ((round = 1; round <= ROUNDS; round++)); do
        log "storm round $round/$ROUNDS: $STORM_CONNECTIONS connections at once"
        for target in "nginx $NGINX_ADDR" "billgate $BILLGATE_ADDR"; do
            read -r name addr <<<"$target"
            sleep 1.1 # the tiny quota starts full, and the last storm's connections are closed
            timeout 120 python3 "$HERE/storm.py" "$addr" --connections "$STORM_CONNECTIONS" \
                --key "$TINY_KEY" --rounds 1 --name "$name, round $round" >>"$OUT/storm.txt" 2>&1 ||
                log "  the storm against $name failed (see $OUT/storm.txt)"
            log "  $(tail -1 "$OUT/storm.txt")"
        done
    done
}

# perf (software cpu-clock sampling: this machine exposes no hardware counters; DWARF call
# graphs, since the release build keeps no frame pointers) of the billgate process under wrk
# load. PROFILE_KEY picks the partner (bench-pass-key: forwarding; bench-tiny-key: refusals);
# PROFILE_CONNECTIONS the wrk connections (default 4: few enough that billgate's adaptive
# in-flight limit never refuses, so a pass-through profile is of forwarding alone);
# PROFILE_SECONDS the length. Prints the share by object, the top symbols by self time and the
# top billgate frames by inclusive time.
profile() {
    local secs=${PROFILE_SECONDS:-8} key=${PROFILE_KEY:-$PASS_KEY} conns=${PROFILE_CONNECTIONS:-4}
    local perf_data=$OUT/perf-${key%-key}-c$conns.data
    log "profiling billgate for ${secs}s under wrk -c$conns as $key"
    timeout $((WARMUP + 30)) wrk -t"$WRK_THREADS" -c"$conns" -d"${WARMUP}s" -s "$HERE/bench.lua" \
        "http://$BILLGATE_ADDR" -- "$key" >/dev/null 2>&1 || die "warm-up failed"
    timeout $((secs + 30)) wrk -t"$WRK_THREADS" -c"$conns" -d"$((secs + 2))s" --timeout 5s \
        -s "$HERE/bench.lua" "http://$BILLGATE_ADDR" -- "$key" >"$OUT/profile-wrk.log" 2>&1 &
    local load=$!
    sleep 1
    timeout $((secs + 60)) perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$PID_billgate" \
        -o "$perf_data" -- sleep "$secs" >"$OUT/perf-record.log" 2>&1 ||
        die "perf record failed (see $OUT/perf-record.log)"
    wait "$load" || true
    grep -E '^E2E' "$OUT/profile-wrk.log" || true
    local tidy='s/[[:space:]-]*$//; s/   */  /g'
    echo "## share of samples by object"
    perf report -i "$perf_data" --no-children --sort dso --stdio -g none 2>/dev/null |
        grep -E '^ +[0-9]' | sed "$tidy" | sed -n 1,6p
    echo "## top symbols by self time"
    perf report -i "$perf_data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null |
        grep -E '^ +[0-9]' | sed "$tidy" | sed -n "1,${PROFILE_TOP:-30}p"
    echo "## billgate's own frames by inclusive time (children included)"
    perf report -i "$perf_data" --children --sort symbol --stdio -g none 2>/dev/null |
        grep -E '^ +[0-9]' | grep 'billgate::' | sed "$tidy" | sed -n "1,${PROFILE_TOP:-30}p"
    log "full report: perf report -i $perf_data"
}

mkdir -p "$OUT"
if [[ $NICE != 0 ]]; then renice -n "$NICE" -p $$ >/dev/null || die "cannot renice to $NICE"; fi
need_tools
ulimit -n 65536 2>/dev/null || true
build
[[ -x $BILLGATE ]] || die "no $BILLGATE after the build"
# The TLS scenario starts its own servers (tls_measure).
if [[ $MODE != tls ]]; then start_servers; fi
case $MODE in
    run) measure ;;
    tls) tls_measure ;;
    profile) profile ;;
    serve)
        log "serving until interrupted: backend $BACKEND_ADDR, nginx $NGINX_ADDR, billgate $BILLGATE_ADDR (admin $BILLGATE_ADMIN)"
        while sleep 3600; do :; done
        ;;
    *) die "unknown mode $MODE (run, tls, profile or serve)" ;;
esac
