#!/usr/bin/env bash
# Runs the whole test suite: installs the tools the tests need (a current nats-server, an SMTP
# server) into .tools/, then checks formatting, lints and runs every test. Each integration test
# starts its own nats-server on a free port with a temporary store; nothing is left behind.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-tools.sh --test
export MSGXC_TOOLS_DIR="$PWD/.tools"
if rustup component list --installed 2>/dev/null | grep -q '^rustfmt'; then
  cargo fmt --all -- --check
fi
if rustup component list --installed 2>/dev/null | grep -q '^clippy'; then
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi
cargo test --workspace --locked
