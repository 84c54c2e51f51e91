#!/usr/bin/env bash
# Scale-out of cluster mode, modelled on this machine: each node gets a fraction of a core
# of its own (a cgroup v1 CPU quota, as if each had a small machine), while PostgreSQL,
# NATS and the load harness run unconstrained beside them (their CPU per request is
# reported, to show they are not what limits). Clusters of 1, 2 and 3 nodes, each over the
# harness's seed (10,000 products), each driven two ways:
#   owner-routed: each request to the node that owns its shard, from the cluster map
#                 (GET /api/v1/cluster/shards), as a shard-aware client or proxy would;
#   round-robin:  the nodes in turn, as a load balancer that knows nothing of shards.
# and ends with the scaling efficiency at 3 nodes, X(3) / (3 * X(1)), of each:
#   ratio cluster 3/1 nodes owner-routed: E
#   ratio cluster 3/1 nodes round-robin: E
#
#   bash benches/cluster-scale.sh   # QUOTA=20 (percent of a core a node) DURATION=10
#   CLIENTS_PER_NODE=32 SCENARIOS=zipf,basket10 NODES="1 2 3"
#   STOCKLINE_BIN=target/release/stockline (another build, to compare two in one sitting)
#
# Needs root (the cgroups), PostgreSQL and NATS on 127.0.0.1. Only the nodes it starts go
# into its groups, and the groups are removed at the end. Results: BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
QUOTA=${QUOTA:-20}
DURATION=${DURATION:-10}
CLIENTS_PER_NODE=${CLIENTS_PER_NODE:-32}
SCENARIOS=${SCENARIOS:-zipf,basket10}
NODES=${NODES:-1 2 3}
BASE=${LOAD_DATABASE_BASE:-postgres://postgres@127.0.0.1:5432}
STOCKLINE_BIN=${STOCKLINE_BIN:-target/release/stockline}
CGROUP=/sys/fs/cgroup/cpu

[ -w "$CGROUP" ] || { echo "needs root and cgroup v1's cpu controller at $CGROUP" >&2; exit 1; }
. benches/cluster-common.sh  # NO_BUILD=1: the binaries already built
LOGS=$(mktemp -d)
RESULTS="$LOGS/results"
GROUPS_MADE=()
cleanup() {
  kill $(jobs -p) 2> /dev/null || true
  wait 2> /dev/null || true
  for group in "${GROUPS_MADE[@]}"; do rmdir "$group" 2> /dev/null || true; done
}
trap cleanup EXIT

# Prints the operations the nodes at these URLs have sent to owners and the NATS messages
# that carried them, since they started ("0 0" for builds before hop batching).
hop_counts() {
  local url
  for url in "$@"; do curl -sf "$url/metrics" | grep '^stockline_cluster_hop_' || true; done |
    awk '/operations/ { o += $2 } /messages/ { m += $2 } END { print o + 0, m + 0 }'
}

# Runs $1 nodes, each in a group of its own at $QUOTA% of a core, and measures both routings.
run() {
  local nodes=$1 url cluster pids=() urls=()
  url=$("$HARNESS" --print-seed --database-base "$BASE" | tail -n 1)
  cluster="scale$RANDOM"
  for i in $(seq 1 "$nodes"); do
    local port=$(( 19100 + i )) group="$CGROUP/stockline-scale-n$i"
    mkdir -p "$group"
    GROUPS_MADE+=("$group")
    echo 100000 > "$group/cpu.cfs_period_us"
    echo $(( QUOTA * 1000 )) > "$group/cpu.cfs_quota_us"
    # The node joins its group before it starts, so every thread it makes is in it.
    STOCKLINE_CLUSTER_NATS_URL=nats://127.0.0.1:4222 STOCKLINE_CLUSTER_NAME="$cluster" \
      STOCKLINE_NODE_ID="n$i" DATABASE_URL="$url" STOCKLINE_ADDR="127.0.0.1:$port" \
      STOCKLINE_ADMIN_EMAIL=load@stockline.test STOCKLINE_ADMIN_PASSWORD=load-password \
      STOCKLINE_AUTH_RATE_PER_MINUTE=1000000 STOCKLINE_BCRYPT_COST=4 RUST_LOG=warn \
      sh -c 'echo $$ > "$1/cgroup.procs" && exec "$2" serve' sh "$group" "$STOCKLINE_BIN" \
      > "$LOGS/n$i.out" 2> "$LOGS/n$i.err" &
    pids+=($!)
    urls+=("http://127.0.0.1:$port")
    until curl -sf "http://127.0.0.1:$port/healthz" > /dev/null; do sleep 0.2; done
  done
  local token
  token=$(login "${urls[0]}")
  until python3 benches/cluster-settled.py "$token" "${urls[@]}"; do sleep 0.5; done
  sleep 2
  local clients=$(( CLIENTS_PER_NODE * nodes )) joined
  joined=$(IFS=,; echo "${urls[*]}")
  # Every line read into memory on its owner first, so that no run pays first touches.
  "$HARNESS" --url "$joined" --token "$token" --owner-routed --warm --duration 1 \
    --clients "$clients" --scenarios zipf > /dev/null 2>&1
  for routing in owner-routed round-robin; do
    [ "$nodes" -eq 1 ] && [ "$routing" = round-robin ] && continue
    local flag=()
    [ "$routing" = owner-routed ] && flag=(--owner-routed)
    echo
    echo "== $nodes node(s) at $QUOTA% of a core each, $routing, $clients clients"
    local before after
    before=$(hop_counts "${urls[@]}")
    "$HARNESS" --url "$joined" --token "$token" "${flag[@]}" --duration "$DURATION" \
      --clients "$clients" --scenarios "$SCENARIOS" 2> /dev/null | tee "$LOGS/table" |
      grep -v '^$'
    # scenario actor mode req/s ...: one result line a scenario.
    awk -v n="$nodes" -v r="$routing" '$2 == "actor" { print n, r, $1, $4 }' "$LOGS/table" >> "$RESULTS"
    if [ "$nodes" -eq 1 ]; then
      awk -v r=round-robin '$2 == "actor" { print 1, r, $1, $4 }' "$LOGS/table" >> "$RESULTS"
    fi
    # How full the hop's messages were, over every node.
    after=$(hop_counts "${urls[@]}")
    echo "$before $after" | awk '$4 > $2 { printf "hop: %d operations in %d NATS messages, %.1f a message\n", $3 - $1, $4 - $2, ($3 - $1) / ($4 - $2) }'
  done
  kill -TERM "${pids[@]}"
  wait "${pids[@]}" || true
  psql "$BASE/postgres" -qc "DROP DATABASE IF EXISTS \"${url##*/}\" WITH (FORCE)"
}

for nodes in $NODES; do
  run "$nodes"
done

echo
echo "scaling efficiency X(N) / (N * X(1)), req/s:"
python3 - "$RESULTS" << 'EOF'
import sys
rows = [line.split() for line in open(sys.argv[1])]
rate = {(int(n), r, s): float(x) for n, r, s, x in rows}
scenarios = sorted({s for _, _, s in rate})
most = max(n for n, _, _ in rate)
for routing in ("owner-routed", "round-robin"):
    for s in scenarios:
        one = rate.get((1, routing, s))
        cells = []
        for n in sorted({n for n, _, _ in rate}):
            x = rate.get((n, routing, s))
            if x is not None and one:
                cells.append(f"{n}: {x:,.0f} ({x / (n * one):.2f})")
        print(f"  {routing:<13} {s:<12} " + "  ".join(cells))
# The headline: zipf (or the first scenario run), as the harness's ratio lines are.
headline = "zipf" if "zipf" in scenarios else scenarios[0]
for routing in ("owner-routed", "round-robin"):
    one, last = rate.get((1, routing, headline)), rate.get((most, routing, headline))
    if one and last:
        print(f"ratio cluster {most}/1 nodes {routing}: {last / (most * one):.2f}")
EOF
