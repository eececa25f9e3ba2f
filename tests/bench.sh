#!/usr/bin/env bash
# Benchmarks for BENCHMARKS.md. Needs what tests/run.sh installs, plus hyperfine and GNU time
# (installed here). Starts its own moto and fault proxy on loopback; every loop is bounded.
#
# usage: tests/bench.sh [RUNS]     (default 500 warm runs; SSH_RUNS=60 ssh logins; PATH_RUNS=50 rounds of
#                                  cold lookups by network path, tests/bench_paths.sh)
set -euo pipefail
# Measure in an environment like sshd's: nothing but PATH and HOME=/nonexistent (no AWS_*, no SSL_CERT_*).
if [ -z "${IAK_BENCH_CLEAN:-}" ]; then
    exec env -i IAK_BENCH_CLEAN=1 PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin:$HOME/.cargo/bin \
        HOME=/nonexistent CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}" RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}" \
        SSH_RUNS="${SSH_RUNS:-60}" PATH_RUNS="${PATH_RUNS:-50}" bash "$0" "$@"
fi
cd "$(dirname "$0")/.."
ROOT=$(pwd)
. tests/lib.sh
RUNS=${1:-500}
TARGET=x86_64-unknown-linux-musl
BIN=$ROOT/target/$TARGET/release/iam-authorized-keys
PROXY=$ROOT/target/debug/examples/faultproxy
VENV=$ROOT/target/moto-venv
for p in hyperfine time linux-perf valgrind; do
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
test_credentials "$W/credentials"
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
$IAK -- bench5 >/dev/null; $IAK -- bench1 >/dev/null
echo "## machine"; echo "$(nproc) cores, $(uname -r), $(date -u +%F)"
echo "binary: $(stat -c %s "$BIN") bytes"

echo; echo "## warm hit vs static no-op ($RUNS runs)"
hyperfine -N --warmup 50 --runs "$RUNS" --export-json "$W/warm.json" "$W/noop" "$IAK -- bench1" "$IAK -- bench5" >/dev/null 2>&1
python3 - "$W/warm.json" <<'EOF'
import json, sys, statistics
for r in json.load(open(sys.argv[1]))["results"]:
    t = sorted(r["times"])
    name = r['command'].split()[0].rsplit('/',1)[-1] + ' ' + (r['command'].split()[-1] if ' ' in r['command'] else '')
    print(f"{name:32s} median {statistics.median(t)*1e3:.3f} ms"
          f"  p95 {t[int(len(t)*0.95)]*1e3:.3f} ms  mean {r['mean']*1e3:.3f} ms")
EOF

# Instructions (user space) of one warm hit: repeatable whatever else the machine does (callgrind counts,
# it does not time). Without --max-uid the account rule reads UID_MAX from /etc/login.defs; install.sh
# writes --max-uid into the drop-in, so an installed host does not.
echo; echo "## warm hit, instructions (valgrind --tool=callgrind, user space)"
for extra in "" "--max-uid 60000"; do
    n=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null $IAK $extra -- bench1 2>&1 >/dev/null |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
    echo "bench1 ${extra:-(no --max-uid)}: $n instructions"
done

rss() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -1; }
echo; echo "## peak RSS (KiB)"
echo "noop:  $(rss "$W/noop")"
echo "warm:  $(rss $IAK -- bench5)"
echo "cold:  $(rss $IAK --no-cache -- bench5)"

for lat in 0 50; do
    ctl "set?latency_ms=$lat" >/dev/null
    echo; echo "## cold lookup, ${lat} ms injected per IAM request (30 runs each)"
    hyperfine -N --warmup 2 --runs 30 --export-json "$W/cold.json" \
        "$IAK --no-cache -- bench1" "$IAK --no-cache -- bench5" >/dev/null 2>&1
    python3 - "$W/cold.json" <<'EOF'
import json, sys, statistics
for r in json.load(open(sys.argv[1]))["results"]:
    print(f"{r['command'].split()[-1]} keys={r['command'][-1]}: median {statistics.median(r['times'])*1e3:.1f} ms  min {r['min']*1e3:.1f} ms")
EOF
done
ctl "set?latency_ms=0" >/dev/null

# Cold lookups by network path (direct, CONNECT proxy over http:// and https://, IMDSv2 credentials), over
# TLS in a network namespace of that script's own; it cleans up after itself.
echo
tests/bench_paths.sh "$BIN" "$VENV/bin/python" "$PATH_RUNS"

echo; echo "## CPU time of our own process (perf stat task-clock, 20 runs)"
for args in "-- bench5" "--no-cache -- bench5"; do
    tc=$(perf stat -r 20 -x, -e task-clock $IAK $args 2>&1 >/dev/null | awk -F, '/task-clock/ {print $1}')
    echo "$args: ${tc} ms"
done

echo; echo "## IAM calls"
ctl clear >/dev/null; rm -f "$W/cache"/*
$IAK -- bench5 >/dev/null; echo "cold fetch, 5 keys: $(ctl counts | awk '{s+=$3} END {print s}') calls"
ctl clear >/dev/null; $IAK --ttl 0 -- bench5 >/dev/null
echo "refresh, ids unchanged: $(ctl counts | awk '{s+=$3} END {print s}') calls"
ctl clear >/dev/null; for i in $(seq 1 100); do $IAK -- bench5 >/dev/null; done
echo "100 warm logins: $(ctl counts | awk '{s+=$3} END {print s+0}') calls"
ctl clear >/dev/null; rm -f "$W/cache"/*
ctl "set?latency_ms=50" >/dev/null
storm=()
for i in $(seq 1 100); do $IAK -- bench5 >/dev/null & storm+=($!); done
wait "${storm[@]}"
echo "100 concurrent cold invocations (50 ms latency): $(ctl counts | awk '{s+=$3} END {print s}') calls"

# --- full ssh logins through a private sshd: warm IAM lookup vs a plain authorized_keys file ------------
S=$(mktemp -d /var/lib/iak-bench.XXXXXX); chmod 0755 "$S"
SSHD_PID=
cleanup_ssh() {
    [ -n "$SSHD_PID" ] && kill "$SSHD_PID" 2>/dev/null
    for u in iakbplain iakbiam iakbsvc; do userdel "$u" 2>/dev/null; done
    rm -rf "$S"
}
trap 'cleanup_ssh; kill "${PIDS[@]}" 2>/dev/null; rm -rf "$W"' EXIT
for u in iakbplain iakbiam; do useradd --no-create-home --home-dir / --shell /bin/sh "$u"; usermod -p '*' "$u"; done
useradd --system --no-create-home --shell /usr/sbin/nologin iakbsvc
install -d -m 0755 "$S/bin" "$S/keys"; install -m 0755 "$BIN" "$S/bin/iam-authorized-keys"
install -d -m 0700 -o iakbsvc "$S/cache"
install -m 0640 -g iakbsvc "$W/credentials" "$S/credentials"
ssh-keygen -q -t ed25519 -N '' -f "$S/hostkey"
ssh-keygen -q -t ed25519 -N '' -f "$S/userkey"
install -m 0644 "$S/userkey.pub" "$S/keys/iakbplain"
iam create-user iakbiam; iam upload iakbiam "$S/userkey.pub" >/dev/null
SPORT=$(free_port)
cat > "$S/sshd_config" <<CONF
Port $SPORT
ListenAddress 127.0.0.1
HostKey $S/hostkey
PidFile $S/sshd.pid
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysCommand $S/bin/iam-authorized-keys --endpoint-url http://127.0.0.1:$PPORT --credentials-file $S/credentials --cache-dir $S/cache --ttl 1d --max-stale 1d --uid %U -- %u %f %t
AuthorizedKeysCommandUser iakbsvc
AuthorizedKeysFile none
Match User iakbplain
    AuthorizedKeysCommand none
    AuthorizedKeysFile $S/keys/%u
CONF
mkdir -p /run/sshd
/usr/sbin/sshd -f "$S/sshd_config" -E "$S/sshd.log"
wait_port "$SPORT" || fail "bench sshd"; SSHD_PID=$(cat "$S/sshd.pid")
SSH="ssh -F /dev/null -i $S/userkey -p $SPORT -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes -o LogLevel=ERROR"
ctl clear >/dev/null
$SSH iakbiam@127.0.0.1 true || fail "bench login iakbiam: $(tail -3 "$S/sshd.log")"
echo; echo "## IAM calls per login"
echo "first (cold) login, 1 key: $(ctl counts | awk '{s+=$3} END {print s+0}') calls (sshd runs the command twice; the 2nd is a hit)"
ctl clear >/dev/null; for i in $(seq 1 20); do $SSH iakbiam@127.0.0.1 true; done
echo "20 warm logins: $(ctl counts | awk '{s+=$3} END {print s+0}') calls"
$SSH iakbplain@127.0.0.1 true || fail "bench login iakbplain"
SSH_RUNS=${SSH_RUNS:-60}
echo; echo "## full ssh login (key exchange, auth, run true), warm lookup vs authorized_keys file ($SSH_RUNS runs each, one block after the other)"
hyperfine -N --warmup 5 --runs "$SSH_RUNS" --export-json "$W/ssh.json" \
    "$SSH iakbplain@127.0.0.1 true" "$SSH iakbiam@127.0.0.1 true" >/dev/null 2>&1
python3 - "$W/ssh.json" <<'PY'
import json, sys, statistics
r = json.load(open(sys.argv[1]))["results"]
med = [statistics.median(x["times"]) * 1e3 for x in r]
for name, x, m in zip(("authorized_keys file", "iam-authorized-keys (warm)"), r, med):
    t = sorted(x["times"])
    print(f"{name:28s} median {m:.1f} ms  p95 {t[int(len(t)*0.95)]*1e3:.1f} ms")
print(f"ratio (median): {med[1]/med[0]:.3f}x  (target <= 1.05x)")
PY

echo; echo "## fleet model (from the measured calls: 1 per unchanged refresh, 1+k per cold fetch)"
python3 - <<'PY'
# Each host refreshes a user at most once per TTL, and only if the user logs in after the record expired.
# With logins as a Poisson process of rate r per user per second, a record is refreshed at rate
# r / (1 + r*TTL) (one refresh, then TTL seconds of free hits). Timer jitter (sync-users) and login
# randomness spread the calls; peak = mean over the TTL window when logins are uniform.
ttl = 300
print(f"{'hosts':>7} {'users/host':>10} {'logins/user/h':>14} {'IAM calls/s':>12} {'per login':>10}")
for hosts in (100, 1000, 10000):
    for users, per_hour in ((5, 2), (5, 60), (50, 2)):
        r = per_hour / 3600
        refresh = r / (1 + r * ttl)
        calls = hosts * users * refresh
        logins = hosts * users * r
        print(f"{hosts:>7} {users:>10} {per_hour:>14} {calls:>12.2f} {calls/logins:>10.3f}")
PY
