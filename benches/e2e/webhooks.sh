#!/usr/bin/env bash
# Webhooks end to end: the release binary (one worker, pinned to core 1) with [subscriptions] on
# SQLite and the stand-in biller in-process; webhooks.py (subscriber, pusher, receiver; core 0)
# subscribes ACCOUNTS accounts, waits until the gateway has asked the biller about each new
# account, pushes one bill event per account and times each webhook. Prints webhooks.py's JSON.
#
#   benches/e2e/webhooks.sh [ACCOUNTS=3000] [BATCH=100]      (BILLGATE=path/to/binary to compare)
set -euo pipefail
cd "$(dirname "$0")/../.."
accounts=${1:-3000}
batch=${2:-100}
bin=${BILLGATE:-target/release/billgate}
dir=$(mktemp -d)
gw=""
cleanup() {
  if [ -n "$gw" ]; then kill "$gw" 2>/dev/null || true; wait "$gw" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

key="webhooks-bench-key"
key_sha=$(printf %s "$key" | sha256sum | cut -d' ' -f1)
printf 'whsec_c2VjcmV0LW9mLXRoZS1iZW5jaA==\n' > "$dir/bench.whsec"
printf 'bench-biller-token\n' > "$dir/biller.token"
sed -e 's|^listen = .*|listen = "127.0.0.1:18600"|' \
    -e 's|^admin_listen = .*|admin_listen = "127.0.0.1:18610"|' \
    -e "s|^state_file = .*|state_file = \"$dir/state.json\"\nworkers = 1|" \
    -e 's|^url = "http://127.0.0.1:9000"|url = "http://127.0.0.1:18630"|' \
    config.toml > "$dir/billgate.toml"
cat >> "$dir/billgate.toml" <<TOML

[subscriptions]
store = "sqlite://$dir/subscriptions.db"
biller_token_file = "$dir/biller.token"
per_host = 16

[[partner]]
id = "hooks-bench"
keys_sha256 = ["$key_sha"]
quota = { subscription = "10000/s" }
max_subscriptions = 1000000
webhook_prefixes = ["http://127.0.0.1:18620/"]
webhook_secret_file = "$dir/bench.whsec"
TOML

RUST_LOG=warn taskset -c 1 "$bin" serve --config "$dir/billgate.toml" --with-biller > "$dir/gw.log" 2>&1 &
gw=$!
for _ in $(seq 1 100); do
  if curl -sf http://127.0.0.1:18610/metrics > /dev/null; then break; fi
  sleep 0.1
done
taskset -c 0 python3 benches/e2e/webhooks.py --gateway 127.0.0.1:18600 --admin 127.0.0.1:18610 \
  --key "$key" --token bench-biller-token --receiver 127.0.0.1:18620 \
  --accounts "$accounts" --batch "$batch"
