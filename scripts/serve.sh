#!/usr/bin/env bash
# Runs the whole exchange on this machine: installs the tools it needs, builds msgxc and starts
# `msgxc serve` (gateway + projector + live hub, SQLite store, and its own JetStream server
# unless MSGXC_NATS_URL is set). Extra arguments go to `msgxc serve`.
#
# `scripts/serve.sh --cassandra` tries the scale path on one machine instead: it also starts a
# local Apache Cassandra node (the pinned one the set-up resolves, data in
# $MSGXC_DATA_DIR/cassandra, CQL on 127.0.0.1:${MSGXC_CASSANDRA_PORT:-9042}), migrates keyspace
# `msgxc` and serves with its projections there; the node stops when msgxc does.
set -euo pipefail
cd "$(dirname "$0")/.."
cassandra=0
if [ "${1:-}" = "--cassandra" ]; then
  cassandra=1
  shift
fi
if [ "$cassandra" = 1 ]; then
  scripts/setup-tools.sh --cassandra
else
  scripts/setup-tools.sh
fi
cargo build --release --bin msgxc
if [ "$cassandra" = 0 ]; then
  exec target/release/msgxc serve "$@"
fi

data="${MSGXC_DATA_DIR:-./data}"
port="${MSGXC_CASSANDRA_PORT:-9042}"
node_dir="$(mkdir -p "$data/cassandra" && cd "$data/cassandra" && pwd)"
scripts/cassandra-node.sh "$node_dir" "$port" "$((port + 1000))" \
  > "$node_dir/node.out" 2>&1 < /dev/null &
node_pid=$!
trap 'kill "$node_pid" 2>/dev/null; wait "$node_pid" 2>/dev/null || true' EXIT
echo "serve: starting Cassandra (log: $node_dir/logs/system.log)" >&2
scripts/cassandra-node.sh --wait "$node_dir" "$port" "$node_pid"
export MSGXC_STORE="cassandra://127.0.0.1:$port/msgxc?replication_factor=1"
target/release/msgxc migrate --store "$MSGXC_STORE"
target/release/msgxc serve "$@"
