#!/usr/bin/env bash
# The load harness with the server in a process of its own, so that the CPU each part
# spends per request can be told apart: the stockline binary, the harness's clients, and
# PostgreSQL (all its backends). Also reads the flusher's batches from /metrics, so the
# records per flush transaction are known for the same run.
#
#   bash benches/load/apart.sh [sync|async] [clients] [seconds]
#
# `STOCKLINE_BIN=path` runs that server binary instead of this tree's (for before/after runs
# back to back: copy the binary aside before the change; with `SEED_URL` when the change
# adds a migration, see below).
#
# Builds in release, seeds a fresh database (`--print-seed`), starts `stockline serve` on a
# free port, runs the `hot` scenario (or `SCENARIO=name`, e.g. `cart`) once through `--url`,
# and prints one line per part.
set -euo pipefail
durability=${1:-sync}
clients=${2:-64}
seconds=${3:-10}
scenario=${SCENARIO:-hot}
cd "$(dirname "$0")/../.."

cargo build --release --quiet --bin stockline
cargo bench --quiet --bench load --no-run 2>/dev/null
harness=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)

# `SEED_URL=url`: a database already seeded (by an older binary's migrations, for a
# before/after pair across a migration); it is dropped at the end like a fresh one.
url=${SEED_URL:-$("$harness" --print-seed)}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DATABASE_URL=$url STOCKLINE_ADDR=127.0.0.1:$port STOCKLINE_DURABILITY=$durability \
  STOCKLINE_ADMIN_EMAIL=load@stockline.test STOCKLINE_ADMIN_PASSWORD=load-password \
  STOCKLINE_BCRYPT_COST=4 STOCKLINE_AUTH_RATE_PER_MINUTE=1000000 \
  "${STOCKLINE_BIN:-target/release/stockline}" serve >/tmp/stockline-apart.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; psql -q "${url%/*}/postgres" -c "DROP DATABASE IF EXISTS \"${url##*/}\" WITH (FORCE)" >/dev/null' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
  sleep 0.1
done
token=$(curl -sf "http://127.0.0.1:$port/api/v1/auth/login" -H 'content-type: application/json' \
  -d '{"login":"load@stockline.test","password":"load-password"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
postgres_ticks() {
  local sum=0
  for pid in $(pgrep -x postgres); do
    sum=$((sum + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  echo $sum
}
flushes() {
  curl -sf "http://127.0.0.1:$port/metrics" -H "authorization: Bearer $token" |
    awk '/^stockline_flush_batches_total/ {b=$2} /^stockline_flush_records_total/ {r=$2} END {print b+0, r+0}'
}

"$harness" --url "http://127.0.0.1:$port" --token "$token" --clients "$clients" \
  --scenarios "$scenario" --duration 1 >/dev/null
tuples() {
  psql -Atq "$url" -c "SELECT coalesce(sum(n_tup_ins), 0), coalesce(sum(n_tup_upd), 0),
    coalesce(sum(n_tup_hot_upd), 0), pg_current_wal_lsn() - '0/0' FROM pg_stat_user_tables"
}
tables=$(mktemp)
per_table() {
  psql -Atq "$url" -c "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables" | sort
}
read -r batches0 records0 < <(flushes)
sleep 1 # the statistics collector's last report of the warm-up
tuples0=$(tuples)
per_table >"$tables.0"
s0=$(ticks $server)
p0=$(postgres_ticks)
out=$(mktemp)
/usr/bin/time -f '%U %S' -o "$out.time" "$harness" --url "http://127.0.0.1:$port" \
  --token "$token" --clients "$clients" --scenarios "$scenario" --duration "$seconds" | tee "$out"
s1=$(ticks $server)
p1=$(postgres_ticks)
read -r batches1 records1 < <(flushes)
sleep 1
tuples1=$(tuples)
per_table >"$tables.1"
requests=$(awk '$1 == "'"$scenario"'" && $2 == "actor" {print $4 * '"$seconds"'}' "$out")
hz=$(getconf CLK_TCK)
python3 - "$requests" "$hz" "$((s1 - s0))" "$((p1 - p0))" "$(cat "$out.time")" \
  "$((batches1 - batches0))" "$((records1 - records0))" "$tuples0" "$tuples1" <<'EOF'
import sys
requests, hz = float(sys.argv[1]), float(sys.argv[2])
server, postgres = int(sys.argv[3]) / hz, int(sys.argv[4]) / hz
user, system = map(float, sys.argv[5].split())
batches, records = float(sys.argv[6]), float(sys.argv[7])
(ins0, upd0, hot0, wal0), (ins1, upd1, hot1, wal1) = (
    map(lambda v: int(float(v)), t.split("|")) for t in sys.argv[8:10])
us = lambda s: s / requests * 1e6
print(f"requests {requests:.0f}")
print(f"cpu per request: server {us(server):.1f} us, clients {us(user + system):.1f} us "
      f"(whole harness run), postgres {us(postgres):.1f} us")
if batches:
    print(f"flush: {batches:.0f} batches, {records / batches:.1f} records per batch, "
          f"{postgres / batches * 1e6:.0f} us of postgres per batch")
print(f"rows per request: {(ins1 - ins0) / requests:.2f} inserted, "
      f"{(upd1 - upd0) / requests:.2f} updated ({(hot1 - hot0) / requests:.2f} in place, HOT)")
print(f"wal per request: {(wal1 - wal0) / requests:.0f} bytes")
EOF
# Per table, the rows written per request, and how many of the updates were in place (HOT).
join -t '|' "$tables.0" "$tables.1" | awk -F '|' -v n="$requests" '
  $5 > $2 || $6 > $3 {
    printf "  %-22s %5.2f inserted, %5.2f updated (%5.2f HOT)\n", $1, ($5 - $2) / n, ($6 - $3) / n, ($7 - $4) / n
  }'
