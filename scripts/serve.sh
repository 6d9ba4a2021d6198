#!/usr/bin/env bash
# Runs the whole exchange on this machine: installs the tools it needs, builds msgxc and starts
# `msgxc serve` (gateway + projector + live hub, SQLite store, and its own JetStream server
# unless MSGXC_NATS_URL is set). Extra arguments go to `msgxc serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-tools.sh
cargo build --release --bin msgxc
exec target/release/msgxc serve "$@"
