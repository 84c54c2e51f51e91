#!/usr/bin/env bash
# A scrape of /metrics taken under load must pass `promtool check metrics` (Prometheus's
# own linter: HELP on every series, counters ending in _total, histograms well formed).
# Installs promtool (Debian's `prometheus` package) when it is missing. Needs the debug
# binary (built by the test run) and PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool > /dev/null; then
  apt-get update -qq && apt-get install -y -qq prometheus > /dev/null
fi

db="sltest_promtool_$$"
out=$(mktemp)
scrape=$(mktemp)
STOCKLINE_ADDR=127.0.0.1:0 DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" \
  STOCKLINE_BCRYPT_COST=4 RUST_LOG=warn target/debug/stockline serve > "$out" 2> /dev/null &
server=$!
cleanup() {
  kill "$server" 2> /dev/null || true
  wait "$server" 2> /dev/null || true
  psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" || true
  rm -f "$out" "$scrape"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  grep -q "listening on" "$out" && break
  sleep 0.2
done
base=$(sed -n 's/^stockline listening on //p' "$out")

# Load: four clients over a few routes (answered, refused and unmatched) while scraping.
for _ in 1 2 3 4; do
  (for _ in $(seq 1 150); do
    curl -s -o /dev/null "$base/healthz"
    curl -s -o /dev/null "$base/api/v1/products"
    curl -s -o /dev/null "$base/no/such/path"
  done) &
done
sleep 1
curl -sf "$base/metrics" > "$scrape"
wait $(jobs -p | grep -v "^$server$") 2> /dev/null || true
promtool check metrics < "$scrape"
echo "promtool: $(grep -c '^# HELP' "$scrape") metric families, a scrape under load, pass"
