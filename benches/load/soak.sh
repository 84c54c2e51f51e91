#!/usr/bin/env bash
# Soak: the server in a process of its own under steady load for a long run, its resident
# memory (RSS) sampled every 30 s, to show whether memory follows traffic or stays bounded.
#
#   bash benches/load/soak.sh [minutes] [clients] [scenario]
#
# Defaults: 15 minutes, 128 clients, `hot` (one product, reserve then release), `sync`.
# `STOCKLINE_BIN=path` runs that server binary instead of this tree's (a before/after pair).
# Prints `rss <seconds> <MiB>` lines, the harness's table, and the aim's two ratios: RSS at
# the end over RSS after the first minute, and the end's RSS in MiB.
set -euo pipefail
minutes=${1:-15}
clients=${2:-128}
scenario=${3:-hot}
cd "$(dirname "$0")/../.."

cargo build --release --quiet --bin stockline
cargo bench --quiet --bench load --no-run 2>/dev/null
harness=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)

# `SEED_URL=url`: a database already seeded (for an older binary, as in apart.sh).
url=${SEED_URL:-$("$harness" --print-seed)}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DATABASE_URL=$url STOCKLINE_ADDR=127.0.0.1:$port STOCKLINE_DURABILITY=sync \
  STOCKLINE_ADMIN_EMAIL=load@stockline.test STOCKLINE_ADMIN_PASSWORD=load-password \
  STOCKLINE_BCRYPT_COST=4 STOCKLINE_AUTH_RATE_PER_MINUTE=1000000 \
  "${STOCKLINE_BIN:-target/release/stockline}" serve >/tmp/stockline-soak.log 2>&1 &
server=$!
sampler=
cleanup() {
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
  kill "$server" 2>/dev/null
  wait "$server" 2>/dev/null
  psql -q "${url%/*}/postgres" -c "DROP DATABASE IF EXISTS \"${url##*/}\" WITH (FORCE)" >/dev/null
}
trap cleanup EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
  sleep 0.1
done
token=$(curl -sf "http://127.0.0.1:$port/api/v1/auth/login" -H 'content-type: application/json' \
  -d '{"login":"load@stockline.test","password":"load-password"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

rss_mib() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$server/status"; }
samples=$(mktemp)
(
  started=$(date +%s)
  while sleep 30; do
    echo "rss $(($(date +%s) - started)) $(rss_mib)" | tee -a "$samples"
  done
) &
sampler=$!
echo "rss 0 $(rss_mib)" | tee -a "$samples"
"$harness" --url "http://127.0.0.1:$port" --token "$token" --clients "$clients" \
  --scenarios "$scenario" --duration "$((minutes * 60))" 2>/dev/null
sleep 1
echo "rss end $(rss_mib)" | tee -a "$samples"
awk '$2 == 60 || ($2 > 30 && $2 <= 90 && !first) {first = $3} $2 == "end" {last = $3}
     END { if (first) printf "soak: rss after 1 min %.1f MiB, at the end %.1f MiB, ratio %.2f\n", first, last, last / first }' "$samples"
