#!/usr/bin/env bash
# Cluster mode end to end on this machine: a single-process server, then clusters of 1, 2
# and 3 nodes (each node pinned to one core with taskset, in turn), each over the load
# harness's seed (10,000 products, two warehouses), driven by the harness through every
# node in turn as a load balancer would: a request for a shard another node owns is
# forwarded over NATS. Prints the harness's tables (req/s, latency, CPU per request).
#
#   bash benches/cluster-nodes.sh   # DURATION=10 CLIENTS=64 NODES="0 1 2 3"
#   SCENARIOS=zipf,hot,basket0,basket10,basket50 (basketN: two products a reservation,
#   N% of them in different shards: a saga in cluster mode)
#
# Needs PostgreSQL and NATS on 127.0.0.1 (as the tests do). Results: BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-64}
SCENARIOS=${SCENARIOS:-zipf,hot,basket0,basket10,basket50}
BASE=${LOAD_DATABASE_BASE:-postgres://postgres@127.0.0.1:5432}

. benches/cluster-common.sh
CORES=$(nproc)
LOGS=$(mktemp -d)
trap 'kill $(jobs -p) 2> /dev/null || true' EXIT

# Runs one configuration: $1 nodes (0: a single-process server).
run() {
  local nodes=$1 url cluster pids=() urls=()
  url=$("$HARNESS" --print-seed --database-base "$BASE" | tail -n 1)
  cluster="bench$RANDOM"
  for i in $(seq 1 "$(( nodes > 0 ? nodes : 1 ))"); do
    local port=$(( 19000 + i )) env=()
    if [ "$nodes" -gt 0 ]; then
      env=(STOCKLINE_CLUSTER_NATS_URL=nats://127.0.0.1:4222 STOCKLINE_CLUSTER_NAME="$cluster"
           STOCKLINE_NODE_ID="n$i")
    fi
    env "${env[@]}" DATABASE_URL="$url" STOCKLINE_ADDR="127.0.0.1:$port" \
      STOCKLINE_ADMIN_EMAIL=load@stockline.test STOCKLINE_ADMIN_PASSWORD=load-password \
      STOCKLINE_AUTH_RATE_PER_MINUTE=1000000 STOCKLINE_BCRYPT_COST=4 RUST_LOG=warn \
      taskset -c $(( (i - 1) % CORES )) target/release/stockline serve \
      > "$LOGS/n$i.out" 2> "$LOGS/n$i.err" &
    pids+=($!)
    urls+=("http://127.0.0.1:$port")
    until curl -sf "http://127.0.0.1:$port/healthz" > /dev/null; do sleep 0.2; done
  done
  local token
  token=$(login "${urls[0]}")
  if [ "$nodes" -gt 0 ]; then
    # Every shard served, by its final owner, before measuring: each node serves what the
    # database says it holds, and together all 1,024.
    until python3 benches/cluster-settled.py "$token" "${urls[@]}"; do sleep 0.5; done
    sleep 2
  fi
  echo
  echo "== $([ "$nodes" -gt 0 ] && echo "cluster of $nodes node(s)" || echo "single process"), pinned with taskset"
  "$HARNESS" --url "$(IFS=,; echo "${urls[*]}")" --token "$token" \
    --duration "$DURATION" --clients "$CLIENTS" --scenarios "$SCENARIOS"
  kill -TERM "${pids[@]}"
  wait "${pids[@]}" || true
  psql "$BASE/postgres" -qc "DROP DATABASE IF EXISTS \"${url##*/}\" WITH (FORCE)"
}

for nodes in ${NODES:-0 1 2 3}; do
  run "$nodes"
done
