#!/usr/bin/env bash
# The local sandbox demo: moto as IAM, a private sshd on loopback, install.sh, a real ssh login.
# It is the end-to-end tier run on its own, narrated. Run as root after one tests/run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/lib.sh
VENV=target/moto-venv
[ -x "$VENV/bin/moto_server" ] || fail "run tests/run.sh once first (it installs sshd, musl-tools and moto)"
echo "building the static binary and the fault proxy..."
cargo build -q --locked --release --target x86_64-unknown-linux-musl
cargo build -q --locked --example faultproxy
PORT=$(free_port)
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >/dev/null 2>&1 &
MOTO=$!
trap 'kill $MOTO 2>/dev/null' EXIT
wait_port "$PORT" 30 || fail "moto did not start"
echo "moto (IAM emulator) on 127.0.0.1:$PORT; now install.sh, a private sshd, and ssh logins:"
tests/e2e.sh "$(pwd)/target/x86_64-unknown-linux-musl/release/iam-authorized-keys" \
    "$(pwd)/target/debug/examples/faultproxy" "http://127.0.0.1:$PORT" "$VENV/bin/python"
