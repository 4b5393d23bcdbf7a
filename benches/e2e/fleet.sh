#!/usr/bin/env bash
# The fleet (`[fleet]`, quotas shared through Redis) end to end, on this machine: what it adds to
# a request, what it asks of Redis, how far a fleet overshoots a quota, and how it rides out Redis
# dying. Every gateway is pinned to SERVER_CPU with one worker; the load generators, the backend
# (nginx-backend.conf, the biller's stand-in that run.sh uses) and Redis share LOAD_CPU.
#
#   benches/e2e/fleet.sh              build release, run every phase, print the summary (~9 min)
#   benches/e2e/fleet.sh PHASE...     only these: latency, commands, overshoot, outage
#
# Phases:
#   latency    one gateway without [fleet] and one in a fleet of one (Redis local), in turn,
#              ROUNDS rounds, fleet_load.py at LAT_RATE req/s (open loop, latency from when each
#              request was due) for LAT_SECONDS: p50/p99/p99.9 of each, and the difference
#   commands   Redis's INFO (commandstats, stats, cpu) before and after HIGH_SECONDS of about
#              HIGH_CONNECTIONS × 1000 / HIGH_DELAY_MS admitted req/s per instance (wrk with
#              fleet_paced.lua), one instance and then two; and IDLE_SECONDS with no traffic
#   overshoot  fleet-pay's `payment = "200/s burst 200"` over OVER_SECONDS, fleet_load.py sending
#              OVER_RATE payments a second to the instances in turn, for each of OVER_FLEETS:
#              2xx per 10 s window and in all, against one instance's rate × T + burst and the
#              lease module's bound rate × (T + N × 0.2 s) + 2 × burst
#   outage     two instances under steady load (OUTAGE_RATE inquiries/s and OUTAGE_PAY_RATE
#              payments/s, under every quota); fleet_outage.py polls /admin/fleet and /metrics
#              every 10 ms and, per OUTAGE_PLAN, kills redis-server (SIGKILL) and restarts it
#              or stops it (SIGSTOP) and continues it, OUTAGE_DOWN s each; times to "shares"
#              and back to "leases", and every request that failed
#
# Knobs (environment): SOURCE (the tree built, default this one; e.g. a `git worktree` of HEAD,
# with CARGO_TARGET_DIR beside it), BILLGATE (a binary: no build), OUT=target/fleet,
# SERVER_CPU=1 LOAD_CPU=0, REDIS_PORT=18599, ROUNDS=3, LAT_RATE=2000, LAT_SECONDS=20,
# HIGH_CONNECTIONS=118, HIGH_DELAY_MS=10, HIGH_SECONDS=20, IDLE_SECONDS=10, OVER_RATE=1000,
# OVER_SECONDS=60, OVER_FLEETS="1 2 3", OUTAGE_RATE=600, OUTAGE_PAY_RATE=150,
# OUTAGE_PLAN=kill,kill,kill,stop, OUTAGE_DOWN=3, OUTAGE_BETWEEN=4.
# Loopback only; every run bounded by `timeout`; everything started here is stopped on exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PHASES=("$@")
((${#PHASES[@]})) || PHASES=(latency commands overshoot outage)

SOURCE=${SOURCE:-$ROOT}
OUT=${OUT:-$ROOT/target/fleet}
SERVER_CPU=${SERVER_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
REDIS_PORT=${REDIS_PORT:-18599}
ROUNDS=${ROUNDS:-3}
LAT_RATE=${LAT_RATE:-2000}
LAT_SECONDS=${LAT_SECONDS:-20}
HIGH_CONNECTIONS=${HIGH_CONNECTIONS:-118}
HIGH_DELAY_MS=${HIGH_DELAY_MS:-10}
HIGH_SECONDS=${HIGH_SECONDS:-20}
IDLE_SECONDS=${IDLE_SECONDS:-10}
OVER_RATE=${OVER_RATE:-1000}
OVER_SECONDS=${OVER_SECONDS:-60}
OVER_FLEETS=${OVER_FLEETS:-1 2 3}
OUTAGE_RATE=${OUTAGE_RATE:-600}
OUTAGE_PAY_RATE=${OUTAGE_PAY_RATE:-150}
OUTAGE_PLAN=${OUTAGE_PLAN:-kill,kill,kill,stop}
OUTAGE_DOWN=${OUTAGE_DOWN:-3}
OUTAGE_BETWEEN=${OUTAGE_BETWEEN:-4}
RUN=$OUT/run

BACKEND_ADDR=127.0.0.1:18500
SOLO_ADDR=127.0.0.1:18509
SOLO_ADMIN=127.0.0.1:18519
gw_addr() { echo "127.0.0.1:$((18500 + $1))"; }  # gw-1..3: 18501..18503
gw_admin() { echo "127.0.0.1:$((18510 + $1))"; } # their admin: 18511..18513
PASS_KEY=bench-pass-key
PAY_KEY=fleet-pay-key
PAY_RATE=200 # fleet-pay's payment quota: 200/s burst 200
PAY_BURST=200
TOKEN=fleet-bench-token
LOAD=(taskset -c "$LOAD_CPU")
SERVE=(taskset -c "$SERVER_CPU")

log() { printf '[fleet %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

need_tools() {
    local tool
    for tool in nginx wrk jq curl redis-server redis-cli taskset python3; do
        command -v "$tool" >/dev/null || die "missing $tool (apt-get install nginx wrk jq curl redis-server util-linux python3)"
    done
}

# ---------------------------------------------------------------------------------------------
# Processes: started here, stopped on exit
# ---------------------------------------------------------------------------------------------

STARTED=()
stop_pids() { # pids...
    local pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
stop_all() {
    stop_pids "${GATEWAYS[@]}" "${STARTED[@]}"
    # Redis as restarted by fleet_outage.py (its pid in the file), then ours.
    if [[ -s $RUN/redis.pid ]]; then stop_pids "$(cat "$RUN/redis.pid")"; fi
}
trap 'stop_all' EXIT
trap 'exit 130' INT TERM

port_free() { # addr
    ! curl -s -o /dev/null --max-time 1 "http://$1/" || die "$1 is already in use"
}
wait_port() { # addr what
    for _ in $(seq 100); do
        if curl -s -o /dev/null --max-time 1 "http://$1/"; then return 0; fi
        sleep 0.1
    done
    die "$2 did not start listening on $1 (see $RUN/*.log)"
}

start_backend() {
    port_free "$BACKEND_ADDR"
    sed -e "s|@RUN@|$RUN|g" -e "s|@BACKEND_WORKERS@|1|g" -e "s|@BACKEND_ADDR@|$BACKEND_ADDR|g" \
        "$HERE/nginx-backend.conf" >"$RUN/backend.conf"
    "${LOAD[@]}" nginx -p "$RUN" -c "$RUN/backend.conf" >"$RUN/backend.log" 2>&1 &
    STARTED+=($!)
    wait_port "$BACKEND_ADDR" "the backend (nginx)"
}

REDIS_CMD=("${LOAD[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no)
start_redis() {
    ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 || die "port $REDIS_PORT already has a Redis"
    "${REDIS_CMD[@]}" >>"$RUN/redis.log" 2>&1 &
    echo $! >"$RUN/redis.pid"
    for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0; sleep 0.05; done
    die "redis-server did not start (see $RUN/redis.log)"
}
redis() { redis-cli -p "$REDIS_PORT" "$@"; }

# One gateway's configuration: one worker, the backend as the biller (capacity far above what
# is sent), bench-pass (every class 1000000/s) and fleet-pay (payment 200/s burst 200), and
# [fleet] unless the instance is "-".
gateway_config() { # file listen admin instance
    cat >"$1" <<EOF
[server]
listen = "$2"
admin_listen = "$3"
workers = 1
key_header = "x-api-key"
origin_header = "x-request-origin"
access_log = false

[biller]
url = "http://$BACKEND_ADDR"
timeout = "3s"
capacity = "1000000/s"
max_in_flight = 1024

[[route]]
name = "bill-inquiry"
method = "GET"
path = "/v1/bills/{account}"
class = "inquiry"

[[route]]
name = "bill-payment"
method = "POST"
path = "/v1/payments"
class = "payment"

[[partner]]
id = "bench-pass"
keys_sha256 = ["$(printf %s "$PASS_KEY" | sha256sum | cut -d' ' -f1)"]
quota = { payment = "1000000/s", inquiry_user = "1000000/s", inquiry_scheduled = "1000000/s" }
mode = "enforce"

[[partner]]
id = "fleet-pay"
keys_sha256 = ["$(printf %s "$PAY_KEY" | sha256sum | cut -d' ' -f1)"]
quota = { payment = "$PAY_RATE/s burst $PAY_BURST" }
mode = "enforce"
EOF
    if [[ $4 != - ]]; then
        printf '\n[fleet]\nredis = "redis://127.0.0.1:%s/0"\ninstance = "%s"\ntimeout = "250ms"\n' \
            "$REDIS_PORT" "$4" >>"$1"
    fi
}

GATEWAYS=()
start_gateway() { # name listen admin instance
    local conf=$RUN/$1.toml
    port_free "$2"
    gateway_config "$conf" "$2" "$3" "$4"
    "$BILLGATE" check --config "$conf" >"$RUN/$1-check.log" 2>&1 || die "billgate check: $(cat "$RUN/$1-check.log")"
    BILLGATE_ADMIN_TOKEN=$TOKEN TOKIO_WORKER_THREADS=1 RUST_LOG=warn \
        "${SERVE[@]}" "$BILLGATE" serve --config "$conf" >>"$RUN/$1.log" 2>&1 &
    GATEWAYS+=($!)
    wait_port "$2" "billgate ($1)"
}
stop_gateways() {
    stop_pids "${GATEWAYS[@]}"
    GATEWAYS=()
}

# A fresh fleet of N instances (gw-1..N) on an empty Redis, each seeing all N alive.
start_fleet() { # n
    local i view ok
    redis flushall >/dev/null
    for ((i = 1; i <= $1; i++)); do start_gateway "gw-$i" "$(gw_addr "$i")" "$(gw_admin "$i")" "gw-$i"; done
    for _ in $(seq 150); do
        ok=1
        for ((i = 1; i <= $1; i++)); do
            view=$(fleet_view "$i") || view='{}'
            jq -e --argjson n "$1" '(.instances | length) == $n and .redis_up == true' <<<"$view" >/dev/null || ok=0
        done
        ((ok)) && return 0
        sleep 0.1
    done
    die "the fleet of $1 never saw itself whole: $view"
}
fleet_view() { curl -s --max-time 2 -H "authorization: Bearer $TOKEN" "http://$(gw_admin "$1")/admin/fleet"; }
fleet_metric() { # i name: the metric's lines
    curl -s --max-time 2 "http://$(gw_admin "$1")/metrics" | grep "^$2" | tr '\n' ' '
}
targets() { # n -> addr,addr,...
    local i list=()
    for ((i = 1; i <= $1; i++)); do list+=("$(gw_addr "$i")"); done
    local IFS=,
    echo "${list[*]}"
}

load() { # seconds args... -> fleet_load.py's JSON on stdout
    local secs=$1
    shift
    timeout $((${secs%.*} + 30)) "${LOAD[@]}" python3 "$HERE/fleet_load.py" --seconds "$secs" "$@"
}

# ---------------------------------------------------------------------------------------------
# Phases
# ---------------------------------------------------------------------------------------------

RESULTS=$OUT/results.tsv # phase, case, round, then figures by phase (see each)

phase_latency() {
    log "latency: one gateway without [fleet] ($SOLO_ADDR) and one in a fleet of one, $LAT_RATE req/s, ${LAT_SECONDS}s, $ROUNDS rounds"
    start_gateway solo "$SOLO_ADDR" "$SOLO_ADMIN" -
    start_fleet 1
    local round name addr json
    for name in solo fleet; do
        addr=$SOLO_ADDR
        [[ $name == fleet ]] && addr=$(gw_addr 1)
        load 5 --targets "$addr" --rate "$LAT_RATE" --key "$PASS_KEY" --connections 16 >/dev/null
    done
    for ((round = 1; round <= ROUNDS; round++)); do
        local order=(solo fleet)
        ((round % 2 == 0)) && order=(fleet solo)
        for name in "${order[@]}"; do
            addr=$SOLO_ADDR
            [[ $name == fleet ]] && addr=$(gw_addr 1)
            json=$(load "$LAT_SECONDS" --targets "$addr" --rate "$LAT_RATE" --key "$PASS_KEY" --connections 16)
            echo "$json" >"$OUT/latency-$name-$round.json"
            jq -r --arg n "$name" --arg r "$round" --arg l "$(cut -d' ' -f1 /proc/loadavg)" \
                '["latency", $n, $r, .achieved_rate, .ok, (.sent - .ok), .p50_ms, .p99_ms, .p999_ms, .service_p50_ms, .service_p99_ms, $l] | @tsv' \
                <<<"$json" >>"$RESULTS"
            log "  round $round $name: $(tail -1 "$RESULTS" | awk -F'\t' '{printf "%s req/s, p50 %.3f p99 %.3f p99.9 %.3f ms, not 2xx %s", $4, $7, $8, $9, $6}')"
        done
    done
    stop_gateways
}

redis_sample() { # -> "calls_by_command... total_commands cpu_seconds" as key=value lines
    {
        redis info commandstats | tr -d '\r' | sed -n 's/^cmdstat_\([a-z|]*\):calls=\([0-9]*\),.*/\1 \2/p'
        redis info stats | tr -d '\r' | sed -n 's/^total_commands_processed:\([0-9]*\)/total \1/p'
        redis info cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "cpu %.6f\n", s}'
    }
}

# Commands from one sample to the next, per second: scripts (EVALSHA, EVAL), every command
# counted in commandstats but INFO (those inside scripts included), total_commands_processed
# but INFO, Redis's CPU (ms per second).
redis_delta() { # before after seconds -> "scripts/s all/s total/s cpu_ms/s evalsha/s eval/s"
    awk -v secs="$3" '
        FNR == NR { before[$1] = $2; next }
        { after[$1] = $2 }
        END {
            for (c in after) {
                d = after[c] - before[c]
                if (c == "total" || c == "cpu") continue
                if (c == "info") { info = d; continue }
                all += d
                if (c == "evalsha" || c == "eval") scripts += d
            }
            printf "%.1f %.1f %.1f %.2f %.1f %.1f\n", scripts / secs, all / secs,
                (after["total"] - before["total"] - info) / secs, (after["cpu"] - before["cpu"]) * 1000 / secs,
                (after["evalsha"] - before["evalsha"]) / secs, (after["eval"] - before["eval"]) / secs
        }' "$1" "$2"
}

phase_commands() {
    local n i t0 t1 secs ok line req non2xx errs pids
    for n in 1 2; do
        start_fleet "$n"
        if ((n == 1)); then
            log "commands: one instance idle for ${IDLE_SECONDS}s"
            redis_sample >"$OUT/redis-idle-before.txt"
            t0=$(date +%s.%N)
            sleep "$IDLE_SECONDS"
            redis_sample >"$OUT/redis-idle-after.txt"
            t1=$(date +%s.%N)
            secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
            printf 'commands\tidle-1\t1\t0\t%s\n' "$(redis_delta "$OUT/redis-idle-before.txt" "$OUT/redis-idle-after.txt" "$secs" | tr ' ' '\t')" >>"$RESULTS"
        fi
        log "commands: $n instance(s), wrk -c$HIGH_CONNECTIONS pausing ${HIGH_DELAY_MS} ms on each, ${HIGH_SECONDS}s (3 s warm-up)"
        pids=()
        for ((i = 1; i <= n; i++)); do
            timeout 20 "${LOAD[@]}" wrk -t1 -c"$HIGH_CONNECTIONS" -d3s -s "$HERE/fleet_paced.lua" \
                "http://$(gw_addr "$i")" -- "$PASS_KEY" "$HIGH_DELAY_MS" >/dev/null 2>&1 &
            pids+=($!)
        done
        wait "${pids[@]}" || true
        redis_sample >"$OUT/redis-$n-before.txt"
        t0=$(date +%s.%N)
        pids=()
        for ((i = 1; i <= n; i++)); do
            timeout $((HIGH_SECONDS + 30)) "${LOAD[@]}" wrk -t1 -c"$HIGH_CONNECTIONS" -d"${HIGH_SECONDS}s" \
                -s "$HERE/fleet_paced.lua" "http://$(gw_addr "$i")" -- "$PASS_KEY" "$HIGH_DELAY_MS" \
                >"$OUT/wrk-$n-$i.log" 2>&1 &
            pids+=($!)
        done
        wait "${pids[@]}" || true
        t1=$(date +%s.%N)
        redis_sample >"$OUT/redis-$n-after.txt"
        secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
        ok=0
        for ((i = 1; i <= n; i++)); do
            line=$(grep '^E2E' "$OUT/wrk-$n-$i.log") || die "wrk against gw-$i failed (see $OUT/wrk-$n-$i.log)"
            req=$(sed 's/.*requests=\([0-9]*\).*/\1/' <<<"$line")
            non2xx=$(sed 's/.*non2xx=\([0-9]*\).*/\1/' <<<"$line")
            errs=$(sed 's/.*errors=\([0-9]*\).*/\1/' <<<"$line")
            ok=$((ok + req - non2xx - errs))
            log "  gw-$i: $line; refills $(fleet_metric "$i" billgate_fleet_lease_refills_total)"
        done
        printf 'commands\tadmitted-%s\t1\t%s\t%s\n' "$n" \
            "$(awk -v ok="$ok" -v s="$HIGH_SECONDS" 'BEGIN { printf "%.0f", ok / s }')" \
            "$(redis_delta "$OUT/redis-$n-before.txt" "$OUT/redis-$n-after.txt" "$secs" | tr ' ' '\t')" >>"$RESULTS"
        log "  $(tail -1 "$RESULTS" | awk -F'\t' '{printf "%s admitted/s in all; Redis: %s scripts/s, %s commands/s (inside scripts too), %s total_commands_processed/s, %s ms CPU/s", $4, $5, $6, $7, $8}')"
        stop_gateways
    done
}

phase_overshoot() {
    local n json i
    for n in $OVER_FLEETS; do
        log "overshoot: $n instance(s), $OVER_RATE payments/s as fleet-pay ($PAY_RATE/s burst $PAY_BURST) in turn, ${OVER_SECONDS}s"
        start_fleet "$n"
        sleep 1.5 # every lease idle: the run starts on shares, as a fleet's first requests do
        json=$(load "$OVER_SECONDS" --targets "$(targets "$n")" --rate "$OVER_RATE" --key "$PAY_KEY" \
            --payment --connections 8 --window 10)
        echo "$json" >"$OUT/overshoot-$n.json"
        for ((i = 1; i <= n; i++)); do
            log "  gw-$i: $(fleet_metric "$i" billgate_fleet_lease_refills_total)$(fleet_metric "$i" billgate_fleet_fallbacks_total)"
        done
        jq -r --arg n "$n" '["overshoot", ("fleet-" + $n), "1", .ok, (.windows_2xx | map(tostring) | join(",")),
            (.by_status | to_entries | map(.key + ":" + (.value | tostring)) | join(",")), .errors, .failed,
            (.windows_2xx_by_target | to_entries | map("gw-\(.key + 1) " + (.value | map(tostring) | join("/"))) | join(", "))] | @tsv' <<<"$json" >>"$RESULTS"
        log "  2xx in ${OVER_SECONDS}s: $(jq .ok <<<"$json"), per 10 s: $(jq -c .windows_2xx <<<"$json"); answers $(jq -c .by_status <<<"$json")"
        stop_gateways
        sleep 0.5
    done
}

phase_outage() {
    local secs pay inq out
    log "outage: 2 instances, $OUTAGE_RATE inquiries/s + $OUTAGE_PAY_RATE payments/s in turn; $OUTAGE_PLAN, ${OUTAGE_DOWN}s down each"
    start_fleet 2
    secs=$(awk -v p="$OUTAGE_PLAN" -v d="$OUTAGE_DOWN" -v b="$OUTAGE_BETWEEN" \
        'BEGIN { print int(b + split(p, x, ",") * (d + b) + 3) }')
    load "$secs" --targets "$(targets 2)" --rate "$OUTAGE_RATE" --key "$PASS_KEY" --connections 8 \
        >"$OUT/outage-inquiries.json" &
    inq=$!
    load "$secs" --targets "$(targets 2)" --rate "$OUTAGE_PAY_RATE" --key "$PAY_KEY" --payment \
        --connections 4 >"$OUT/outage-payments.json" &
    pay=$!
    sleep 1
    timeout $((secs + 60)) "${LOAD[@]}" python3 "$HERE/fleet_outage.py" --pid-file "$RUN/redis.pid" \
        --port "$REDIS_PORT" --admins "$(gw_admin 1),$(gw_admin 2)" --token "$TOKEN" \
        --plan "$OUTAGE_PLAN" --down "$OUTAGE_DOWN" --between "$OUTAGE_BETWEEN" --log "$RUN/redis.log" \
        -- "${REDIS_CMD[@]}" >"$OUT/outage.json" || die "fleet_outage.py failed"
    wait "$inq" || die "the inquiry load failed"
    wait "$pay" || die "the payment load failed"
    for i in 1 2; do
        log "  gw-$i: $(fleet_metric "$i" billgate_fleet_lease_refills_total)$(fleet_metric "$i" billgate_fleet_fallbacks_total)"
    done
    stop_gateways
}

# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { awk -F'\t' -v p="$1" -v c="$2" -v k="$3" '$1 == p && $2 == c { print $k }' "$RESULTS"; }

summary() {
    echo
    echo "## The fleet end to end ($(date -u '+%Y-%m-%d %H:%M UTC'), $COMMIT)"
    echo
    echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); shared with other work; load average $LOAD_BEFORE before, $(cut -d' ' -f1-3 /proc/loadavg) after"
    echo "- gateways: one worker each (\`TOKIO_WORKER_THREADS=1\`), pinned to core $SERVER_CPU; load generators, backend (nginx) and Redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') on core $LOAD_CPU"
    if [[ -s $RESULTS ]] && grep -q '^latency' "$RESULTS"; then
        echo
        echo "### Latency, $LAT_RATE req/s open loop (fleet_load.py, timed from when due), ${LAT_SECONDS}s × $ROUNDS rounds, medians (rounds' range)"
        echo
        echo "| gateway | req/s | not 2xx | p50 ms | p99 ms | p99.9 ms | service p50 / p99 ms |"
        echo "|---|---|---|---|---|---|---|"
        local name k
        for name in solo fleet; do
            printf '| %s | %s | %s |' "$([[ $name == solo ]] && echo 'alone, no [fleet]' || echo 'fleet of one, Redis local')" \
                "$(col latency "$name" 4 | median)" "$(col latency "$name" 6 | awk '{ s += $1 } END { print s + 0 }')"
            for k in 7 8 9; do
                printf ' %.3f (%s) |' "$(col latency "$name" "$k" | median)" "$(col latency "$name" "$k" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.3f–%.3f", lo, hi }')"
            done
            printf ' %.3f / %.3f |\n' "$(col latency "$name" 10 | median)" "$(col latency "$name" 11 | median)"
        done
        for k in 7 8 9; do
            printf -- "- fleet − alone, %s: %+.3f ms (medians)\n" "$(case $k in 7) echo p50 ;; 8) echo p99 ;; 9) echo p99.9 ;; esac)" \
                "$(awk -v a="$(col latency fleet "$k" | median)" -v b="$(col latency solo "$k" | median)" 'BEGIN { print a - b }')"
        done
    fi
    if [[ -s $RESULTS ]] && grep -q '^commands' "$RESULTS"; then
        echo
        echo "### Redis commands (INFO before and after; INFO itself left out)"
        echo
        echo "| case | admitted req/s (all instances) | scripts/s (EVALSHA + EVAL) | commands/s, inside scripts too | total_commands_processed/s | per instance: scripts/s, commands/s | per admitted request: scripts, commands | Redis CPU ms/s |"
        echo "|---|---|---|---|---|---|---|---|"
        awk -F'\t' '$1 == "commands" {
            n = ($2 ~ /-2$/) ? 2 : 1
            per = ($4 > 0) ? sprintf("%.5f, %.5f", $5 / $4, $7 / $4) : "–"
            printf "| %s | %s | %s | %s | %s | %.1f, %.1f | %s | %s |\n", $2, $4, $5, $6, $7, $5 / n, $7 / n, per, $8
        }' "$RESULTS"
    fi
    if [[ -s $RESULTS ]] && grep -q '^overshoot' "$RESULTS"; then
        echo
        echo "### Overshoot: fleet-pay, payment $PAY_RATE/s burst $PAY_BURST, $OVER_RATE/s sent in turn for ${OVER_SECONDS}s"
        echo
        echo "One instance may admit rate × T + burst; the lease module's bound for N is rate × (T + N × 0.2 s) + 2 × burst."
        echo
        echo "| instances | 2xx in ${OVER_SECONDS}s | rate×T+burst | bound | ×(rate×T+burst) | 2xx per 10 s window | window: rate×10+burst / bound | answers | failed |"
        echo "|---|---|---|---|---|---|---|---|---|"
        awk -F'\t' -v r="$PAY_RATE" -v b="$PAY_BURST" -v T="$OVER_SECONDS" '$1 == "overshoot" {
            n = substr($2, 7)
            one = r * T + b; bound = r * (T + n * 0.2) + 2 * b
            wone = r * 10 + b; wbound = r * (10 + n * 0.2) + 2 * b
            printf "| %s | %s | %d | %d | ×%.3f | %s | %d / %d | %s | %s |\n", n, $4, one, bound, $4 / one, $5, wone, wbound, $6, $8
        }' "$RESULTS"
        echo
        awk -F'\t' '$1 == "overshoot" { printf "- %s, 2xx per window by instance: %s\n", $2, $9 }' "$RESULTS"
    fi
    if [[ -s $OUT/outage.json ]]; then
        echo
        echo "### Redis dies under load: 2 instances, $OUTAGE_RATE inquiries/s + $OUTAGE_PAY_RATE payments/s, polled every 10 ms (median gap $(jq .poll_interval_median_ms "$OUT/outage.json") ms, max $(jq .poll_interval_max_ms "$OUT/outage.json"))"
        echo
        echo "| # | outage | instance | to redis_up 0 | to \"shares\" | Redis answers again after | to redis_up 1 | to \"leases\" |"
        echo "|---|---|---|---|---|---|---|---|"
        jq -r '.events | to_entries[] | .key as $i | .value as $e | $e.instances[] |
            "| \($i + 1) | \($e.kind) | \(.admin) | \(.to_redis_up_0_s // "never") s | \(.to_shares_s // "never") s | \($e.redis_answers_after_s) s | \(.to_redis_up_1_s // "never") s | \(.to_leases_s // "never") s |"' "$OUT/outage.json"
        local f
        for f in inquiries payments; do
            echo
            echo "- $f: $(jq -r '"\(.sent) sent, answers \(.by_status | tostring), reasons \(.by_reason | tostring), connection errors \(.errors), failed (not 2xx, 429 or 503 biller_capacity) \(.failed)"' "$OUT/outage-$f.json")"
            jq -r --slurpfile o "$OUT/outage.json" '.failures as $f | .refused_times as $r | $o[0].events | to_entries[] |
                .value as $e | ($f | map(select(.[0] >= $e.t_down and .[0] < $e.t_up + 3)) | length) as $in |
                ($r | map(select(. >= $e.t_down and . < $e.t_up)) | length) as $rdown |
                ($r | map(select(. >= $e.t_up and . < $e.t_up + 3) | . - $e.t_up)) as $rback |
                "  - outage \(.key + 1) (\($e.kind)): from it to 3 s after its end, \($in) failed; refused while down \($rdown), in the 3 s after \($rback | length)\(if ($rback | length) > 0 then " (s after: " + ($rback | map(. * 1000 | round / 1000 | tostring) | .[:12] | join(" ")) + ")" else "" end)"' "$OUT/outage-$f.json"
            jq -r --slurpfile o "$OUT/outage.json" '[.refused_times[] as $t | select([$o[0].events[] |
                select($t >= .t_down and $t < .t_up + 3)] | length == 0) | $t - .t0] |
                "  - refused at other times: \(length)\(if length > 0 then " (seconds into the run: " + (map(. * 100 | round / 100 | tostring) | .[:20] | join(" ")) + ")" else "" end)"' "$OUT/outage-$f.json"
            jq -r '.failures[:5][] | "  - failed at \(.[0]): \(.[1]) \(.[2])"' "$OUT/outage-$f.json"
        done
    fi
}

mkdir -p "$OUT"
rm -rf "$RUN"
mkdir -p "$RUN/tmp"
: >"$RESULTS"
need_tools
ulimit -n 65536 2>/dev/null || true
if [[ -z ${BILLGATE:-} ]]; then
    log "cargo build --release in $SOURCE"
    (cd "$SOURCE" && cargo build --release --quiet) || die "cargo build --release failed"
    BILLGATE=${CARGO_TARGET_DIR:-$SOURCE/target}/release/billgate
    COMMIT="commit $(git -C "$SOURCE" rev-parse --short HEAD)$(git -C "$SOURCE" diff --quiet HEAD -- src crates Cargo.toml Cargo.lock || echo ' with uncommitted changes')"
else
    COMMIT="binary $BILLGATE${COMMIT:+, $COMMIT}"
fi
[[ -x $BILLGATE ]] || die "no $BILLGATE"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "billgate: $BILLGATE ($COMMIT); load average $LOAD_BEFORE"
start_backend
start_redis
for phase in "${PHASES[@]}"; do
    case $phase in
        latency | commands | overshoot | outage) "phase_$phase" ;;
        *) die "unknown phase $phase (latency, commands, overshoot, outage)" ;;
    esac
done
summary | tee "$OUT/summary.md"
