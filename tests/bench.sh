#!/usr/bin/env bash
# Benchmarks for BENCHMARKS.md. Needs what tests/run.sh installs, plus hyperfine and GNU time
# (installed here). Starts its own moto and fault proxy on loopback; every loop is bounded.
#
# usage: tests/bench.sh [RUNS]     (default 500 warm runs)
set -euo pipefail
# Measure in an environment like sshd's: nothing but PATH and HOME=/nonexistent (no AWS_*, no SSL_CERT_*).
if [ -z "${IAK_BENCH_CLEAN:-}" ]; then
    exec env -i IAK_BENCH_CLEAN=1 PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin:$HOME/.cargo/bin \
        HOME=/nonexistent CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}" RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}" \
        bash "$0" "$@"
fi
cd "$(dirname "$0")/.."
ROOT=$(pwd)
. tests/lib.sh
RUNS=${1:-500}
TARGET=x86_64-unknown-linux-musl
BIN=$ROOT/target/$TARGET/release/iam-authorized-keys
PROXY=$ROOT/target/debug/examples/faultproxy
VENV=$ROOT/target/moto-venv
for p in hyperfine time linux-perf; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$p" >/dev/null
done
[ -x "$VENV/bin/moto_server" ] || fail "run tests/run.sh once first (it creates $VENV)"
cargo build -q --locked --release --target $TARGET
cargo build -q --locked --example faultproxy

W=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; rm -rf "$W"' EXIT
MPORT=$(free_port); PPORT=$(free_port)
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$MPORT" >"$W/moto.log" 2>&1 & PIDS+=($!)
wait_port "$MPORT" 30 || fail "moto"
"$PROXY" "127.0.0.1:$PPORT" "127.0.0.1:$MPORT" 2>/dev/null & PIDS+=($!)
wait_port "$PPORT" || fail "proxy"
ctl() { python3 -c "import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1]).read().decode(), end='')" "http://127.0.0.1:$PPORT/__proxy/$1"; }
printf '[default]\naws_access_key_id = test\naws_secret_access_key = test\n' > "$W/credentials"
chmod 600 "$W/credentials"
iam() { "$VENV/bin/python" tests/iam_admin.py "http://127.0.0.1:$MPORT" "$@"; }
for u in bench1 bench5; do iam create-user $u; done
ssh-keygen -q -t ed25519 -N '' -f "$W/k0"; iam upload bench1 "$W/k0.pub" >/dev/null
for i in 1 2 3 4 5; do ssh-keygen -q -t ed25519 -N '' -f "$W/k$i"; iam upload bench5 "$W/k$i.pub" >/dev/null; done

# A static no-op for the process-start floor.
printf 'int main(void){return 0;}\n' > "$W/noop.c"
x86_64-linux-musl-gcc -O2 -static-pie -o "$W/noop" "$W/noop.c"

mkdir -m 700 "$W/cache"
IAK="$BIN --endpoint-url http://127.0.0.1:$PPORT --credentials-file $W/credentials --cache-dir $W/cache --uid 5000"
$IAK bench5 >/dev/null
echo "## machine"; echo "$(nproc) cores, $(uname -r), $(date -u +%F)"
echo "binary: $(stat -c %s "$BIN") bytes"

echo; echo "## warm hit vs static no-op ($RUNS runs)"
hyperfine -N --warmup 50 --runs "$RUNS" --export-json "$W/warm.json" "$W/noop" "$IAK bench5" >/dev/null 2>&1
python3 - "$W/warm.json" <<'EOF'
import json, sys, statistics
for r in json.load(open(sys.argv[1]))["results"]:
    t = sorted(r["times"])
    print(f"{r['command'].split()[0].rsplit('/',1)[-1]:24s} median {statistics.median(t)*1e3:.3f} ms"
          f"  p95 {t[int(len(t)*0.95)]*1e3:.3f} ms  mean {r['mean']*1e3:.3f} ms")
EOF

rss() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -1; }
echo; echo "## peak RSS (KiB)"
echo "noop:  $(rss "$W/noop")"
echo "warm:  $(rss $IAK bench5)"
echo "cold:  $(rss $IAK --no-cache bench5)"

for lat in 0 50; do
    ctl "set?latency_ms=$lat" >/dev/null
    echo; echo "## cold lookup, ${lat} ms injected per IAM request (30 runs each)"
    hyperfine -N --warmup 2 --runs 30 --export-json "$W/cold.json" \
        "$IAK --no-cache bench1" "$IAK --no-cache bench5" >/dev/null 2>&1
    python3 - "$W/cold.json" <<'EOF'
import json, sys, statistics
for r in json.load(open(sys.argv[1]))["results"]:
    print(f"{r['command'].split()[-1]} keys={r['command'][-1]}: median {statistics.median(r['times'])*1e3:.1f} ms  min {r['min']*1e3:.1f} ms")
EOF
done
ctl "set?latency_ms=0" >/dev/null

echo; echo "## CPU time of our own process (perf stat task-clock, 20 runs)"
for args in "bench5" "--no-cache bench5"; do
    tc=$(perf stat -r 20 -x, -e task-clock $IAK $args 2>&1 >/dev/null | awk -F, '/task-clock/ {print $1}')
    echo "$args: ${tc} ms"
done

echo; echo "## IAM calls"
ctl clear >/dev/null; rm -f "$W/cache"/*
$IAK bench5 >/dev/null; echo "cold fetch, 5 keys: $(ctl counts | awk '{s+=$3} END {print s}') calls"
ctl clear >/dev/null; $IAK --ttl 0 bench5 >/dev/null
echo "refresh, ids unchanged: $(ctl counts | awk '{s+=$3} END {print s}') calls"
ctl clear >/dev/null; for i in $(seq 1 100); do $IAK bench5 >/dev/null; done
echo "100 warm logins: $(ctl counts | awk '{s+=$3} END {print s+0}') calls"
ctl clear >/dev/null; rm -f "$W/cache"/*
ctl "set?latency_ms=50" >/dev/null
storm=()
for i in $(seq 1 100); do $IAK bench5 >/dev/null & storm+=($!); done
wait "${storm[@]}"
echo "100 concurrent cold invocations (50 ms latency): $(ctl counts | awk '{s+=$3} END {print s}') calls"
