#!/usr/bin/env bash
# Runs the whole test suite: installs the tools the tests need (a current nats-server, an SMTP
# server, an MQTT broker, a pinned Apache Cassandra) into .tools/, then checks formatting, lints
# and runs every test. Each integration test starts its own nats-server on a free port with a
# temporary store; one Cassandra node serves the whole run (one keyspace per test), started
# here on free ports in a temp dir and removed at the end. The HTTP API, inbox, delivery,
# rebuild and two-projector tests then run a second time with their projections on Cassandra.
# Between the two passes: the analysts' Python library, the JavaScript client (clients/js,
# in headless Chromium) and schemathesis against the OpenAPI document
# (scripts/api-conformance.sh). Last, the fault suite (`msgxc fault`) once and a short run of
# the fuzz targets (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-tools.sh --test
export MSGXC_TOOLS_DIR="$PWD/.tools"

# The Cassandra node boots (10-60 s) while the code compiles. Its ports are picked free here
# but bound only late in its boot, so another process may take one meanwhile: then the node
# is started again on other ports (see the wait below).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
start_node() {
  node_dir="$(mktemp -d "${TMPDIR:-/tmp}/msgxc-cassandra-XXXXXX")"
  cql_port="$(free_port)"
  MSGXC_CASSANDRA_TEST=1 scripts/cassandra-node.sh "$node_dir" "$cql_port" \
    > "$node_dir/node.out" 2>&1 < /dev/null &
  node_pid=$!
  export MSGXC_TEST_CASSANDRA="127.0.0.1:$cql_port"
}
stop_node() {
  kill -9 "$node_pid" 2>/dev/null || true
  wait "$node_pid" 2>/dev/null || true
  rm -rf "$node_dir"
}
start_node
trap stop_node EXIT

if rustup component list --installed 2>/dev/null | grep -q '^rustfmt'; then
  cargo fmt --all -- --check
fi
if rustup component list --installed 2>/dev/null | grep -q '^clippy'; then
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi
cargo test --workspace --locked --no-run
for attempt in 1 2 3; do
  if scripts/cassandra-node.sh --wait "$node_dir" "$cql_port" "$node_pid"; then
    break
  fi
  if [ "$attempt" -lt 3 ] && grep -q "Failed to bind port" "$node_dir/node.out"; then
    echo "test: a port of the Cassandra node was taken meanwhile; starting it on other ports" >&2
    stop_node
    start_node
  else
    exit 1
  fi
done
cargo test --workspace --locked
# The analysts' Python library (the PySpark job itself runs in tests/reports.rs).
(cd reports && "$MSGXC_TOOLS_DIR/venv/bin/python" -m unittest discover -s tests)
# The JavaScript client, built and tested in headless Chromium against the msgxc binary that
# `cargo test` built.
(cd clients/js && npm ci --no-audit --no-fund --loglevel=error && npm run build \
  && MSGXC_BIN="$PWD/../../target/debug/msgxc" npm test)
# The OpenAPI document against a live exchange: schemathesis, as an admin and as a user.
scripts/api-conformance.sh 30
MSGXC_TEST_STORE=cassandra cargo test --locked \
  --test api --test inbox --test delivery --test durability --test roles --test scheduled \
  --test experiments --test stage --test compat
# Our fault suite, one round (kill -9 of a gateway, a projector, a dispatcher and nats-server
# under load); `msgxc fault --long` runs three.
cargo run --locked --quiet -- fault
# Fuzz targets, a short run over the committed corpus (scripts/fuzz.sh --long for more).
scripts/fuzz.sh --short
