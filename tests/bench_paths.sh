#!/usr/bin/env bash
# Cold lookups by network path, side by side (BENCHMARKS.md, issue #14): IAM direct, through a CONNECT
# proxy (http:// and https:// proxy URLs), and with credentials from IMDSv2 instead of a file. Everything
# runs in a network namespace of this script's own with only loopback (which also owns 169.254.169.254):
# moto serves IAM over TLS with a certificate from a throwaway CA (--ca-bundle), tests/connect_proxy.py
# is the proxy and the only resolver of the IAM name, tests/fake_imds.py is IMDS. The binary runs as sshd
# runs it (env -i, HOME=/nonexistent). Reports wall time (median, p95, min over interleaved rounds: a
# Python loop around each process) and the requests each path makes, counted by the servers. The
# namespace and every server are removed on exit.
#
# usage: tests/bench_paths.sh BINARY PYTHON_WITH_MOTO [RUNS]      (default 50 rounds; bench.sh calls it)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
BIN=$(realpath "${1:?binary}")
PY=${2:?python with moto}
RUNS=${3:-50}
WARMUP=3
[ "$(id -u)" = 0 ] || fail "bench_paths.sh needs root (a network namespace)"
for c in ip openssl perf; do command -v "$c" >/dev/null || fail "$c missing"; done
[ -x "$(dirname "$PY")/moto_server" ] || fail "moto_server missing next to $PY"

NS=iak-bench-$$
W=$(mktemp -d /tmp/iak-bench-paths.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ip netns add "$NS" || fail "cannot create network namespace $NS"
nsx() { ip netns exec "$NS" "$@"; }
nsx ip link set lo up
nsx ip addr add 169.254.169.254/32 dev lo
[ "$(nsx ip -o link show | wc -l)" = 1 ] || fail "namespace has more than loopback"
ns_wait() {
    nsx bash -c 'for i in $(seq 1 300); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && exit 0; sleep 0.1; done; exit 1' _ "$1" "$2"
}

NAME=iam.iak-bench.test
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=iak-bench-ca -keyout "$W/ca.key" -out "$W/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=$NAME" -keyout "$W/srv.key" -out "$W/srv.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s,IP:127.0.0.1\n' "$NAME" >"$W/ext"
openssl x509 -req -in "$W/srv.csr" -CA "$W/ca.pem" -CAkey "$W/ca.key" -CAcreateserial -days 2 \
    -extfile "$W/ext" -out "$W/srv.pem" 2>/dev/null

MOTO=5443 PROXY=3128 TLSPROXY=3129
# Background servers start through ip itself (it execs the command: $! is the server's own PID).
# moto's server (werkzeug) writes a response's headers and body separately and leaves Nagle on, so over
# TLS the body waits for our delayed ACK: 20-25 ms of a 35 ms lookup were that stall, on every path alike.
# Its request handlers get TCP_NODELAY here, as the two fakes have, so the paths' own costs show.
NODELAY_MOTO='import socketserver, sys
socketserver.StreamRequestHandler.disable_nagle_algorithm = True
from moto.server import main
sys.exit(main())'
ip netns exec "$NS" "$PY" -c "$NODELAY_MOTO" -H 127.0.0.1 -p "$MOTO" -c "$W/srv.pem" -k "$W/srv.key" \
    >"$W/moto.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NS" "$PY" "$HERE/connect_proxy.py" "$PROXY" "$W/proxy.log" "$NAME=127.0.0.1" 2>"$W/proxy.err" &
PIDS+=($!)
ip netns exec "$NS" "$PY" "$HERE/connect_proxy.py" "$TLSPROXY" "$W/tlsproxy.log" "$NAME=127.0.0.1" \
    --tls "$W/srv.pem" "$W/srv.key" 2>"$W/tlsproxy.err" &
PIDS+=($!)
ip netns exec "$NS" "$PY" "$HERE/fake_imds.py" imds 169.254.169.254 80 "$W/imds.log" 2>"$W/imds.err" &
PIDS+=($!)
ns_wait 127.0.0.1 "$MOTO" || fail "moto did not start: $(cat "$W/moto.log")"
ns_wait 127.0.0.1 "$PROXY" || fail "proxy did not start: $(cat "$W/proxy.err")"
ns_wait 127.0.0.1 "$TLSPROXY" || fail "TLS proxy did not start: $(cat "$W/tlsproxy.err")"
ns_wait 169.254.169.254 80 || fail "fake IMDS did not start: $(cat "$W/imds.err")"

U=bench1
ssh-keygen -q -t ed25519 -N '' -f "$W/key"
nsx env AWS_CA_BUNDLE="$W/ca.pem" "$PY" "$HERE/iam_admin.py" "https://127.0.0.1:$MOTO" create-user "$U"
nsx env AWS_CA_BUNDLE="$W/ca.pem" "$PY" "$HERE/iam_admin.py" "https://127.0.0.1:$MOTO" upload "$U" "$W/key.pub" >/dev/null
want=$(awk '{print $1" "$2}' "$W/key.pub")
test_credentials "$W/credentials"

BASE="$BIN --uid 5000 --no-cache --ca-bundle $W/ca.pem"
FILE="--credentials-file $W/credentials"
declare -A CMD=(
    [direct]="$BASE $FILE --endpoint-url https://127.0.0.1:$MOTO"
    [proxy-http]="$BASE $FILE --endpoint-url https://$NAME:$MOTO --proxy http://127.0.0.1:$PROXY"
    [proxy-https]="$BASE $FILE --endpoint-url https://$NAME:$MOTO --proxy https://127.0.0.1:$TLSPROXY"
    [imds]="$BASE --endpoint-url https://127.0.0.1:$MOTO"
)
ORDER=(direct proxy-http proxy-https imds)
WHAT=(
    "direct, credentials file"
    "CONNECT proxy, http:// URL"
    "CONNECT proxy, https:// URL"
    "direct, credentials from IMDSv2"
)

lines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }
iam_calls() { grep -c '"POST / HTTP/1.1" 200' "$W/moto.log" || true; }
# clean CMD...: as sshd runs it: no environment but PATH and HOME=/nonexistent, in the namespace.
clean() { nsx env -i PATH=/usr/bin:/bin HOME=/nonexistent "$@"; }

# Each path once, checked: it must serve the key, with credentials from where the path says.
for p in "${ORDER[@]}"; do
    # shellcheck disable=SC2086  # the command line is words without spaces
    out=$(clean ${CMD[$p]} -vv -- "$U" 2>"$W/$p.trace") || fail "$p: $(cat "$W/$p.trace")"
    [ "$(echo "$out" | awk '{print $1" "$2}')" = "$want" ] || fail "$p: served $out"
    from=Profile; [ "$p" = imds ] && from=Ec2InstanceMetadata
    grep -q "credentials: from $from" "$W/$p.trace" || fail "$p: credentials not from $from: $(cat "$W/$p.trace")"
done

# Requests per lookup, per path: COUNT runs of each, counted by the servers (moto logs after answering).
COUNT=10
declare -A REQS
for p in "${ORDER[@]}"; do
    i0=$(lines "$W/imds.log") c0=$(( $(lines "$W/proxy.log") + $(lines "$W/tlsproxy.log") )) a0=$(iam_calls)
    for _ in $(seq 1 "$COUNT"); do
        # shellcheck disable=SC2086
        clean ${CMD[$p]} -- "$U" >/dev/null 2>&1 || fail "$p: a counted run failed"
    done
    sleep 0.3
    REQS[$p]="$(( $(lines "$W/imds.log") - i0 )) $(( $(lines "$W/proxy.log") + $(lines "$W/tlsproxy.log") - c0 )) $(( $(iam_calls) - a0 ))"
done

# Wall time, interleaved: each round runs every path once (the first path rotating), so the machine's load
# drifting during the run falls on all paths alike. WARMUP rounds are not counted.
args=()
for p in "${ORDER[@]}"; do args+=("${CMD[$p]} -- $U"); done
clean "$PY" - "$RUNS" "$WARMUP" "$W/times.json" "${args[@]}" <<'EOF' || fail "timing: a lookup failed"
import json, subprocess, sys, time
runs, warmup, out, cmds = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
times = [[] for _ in cmds]
for r in range(warmup + runs):
    for k in range(len(cmds)):
        i = (r + k) % len(cmds)
        t0 = time.perf_counter()
        rc = subprocess.run(cmds[i].split(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        t = time.perf_counter() - t0
        if rc != 0:
            sys.exit(f"{cmds[i]}: exit {rc} in round {r}")
        if r >= warmup:
            times[i].append(t)
json.dump(times, open(out, "w"))
EOF

# CPU time of our own process per path (perf stat task-clock): what the path costs the host, and less
# moved by other load on the machine than wall time.
declare -A CPU
for p in "${ORDER[@]}"; do
    # shellcheck disable=SC2086
    CPU[$p]=$(clean perf stat -r 20 -x, -e task-clock ${CMD[$p]} -- "$U" 2>&1 >/dev/null |
        awk -F, '/task-clock/ {printf "%.2f", $1}')
done

echo "## cold lookup by path: 1 key, TLS to IAM (moto), in a private network namespace"
echo "## ($RUNS interleaved rounds after $WARMUP warm-up rounds; requests per lookup over $COUNT runs each;"
echo "## CPU: task-clock of our process, mean of 20)"
for i in "${!ORDER[@]}"; do echo "${WHAT[$i]}|${REQS[${ORDER[$i]}]}|${CPU[${ORDER[$i]}]}"; done >"$W/what"
"$PY" - "$W/times.json" "$W/what" "$COUNT" <<'EOF'
import json, statistics, sys
times = json.load(open(sys.argv[1]))
count = int(sys.argv[3])
print(f"{'path':34s} {'median':>10s} {'p95':>10s} {'min':>10s} {'CPU':>10s} {'IMDS':>6s} {'CONNECTs':>9s} {'IAM':>6s}")
for t, line in zip(times, open(sys.argv[2]).read().splitlines()):
    what, reqs, cpu = line.split("|")
    t = sorted(t)
    per = [f"{int(c) / count:g}" for c in reqs.split()]
    print(f"{what:34s} {statistics.median(t)*1e3:7.1f} ms {t[int(len(t)*0.95)]*1e3:7.1f} ms {t[0]*1e3:7.1f} ms"
          f" {cpu:>7s} ms {per[0]:>6s} {per[1]:>9s} {per[2]:>6s}")
EOF

echo; echo "## where the time goes (one -vv run each: credentials, IMDS requests, IAM)"
for p in "${ORDER[@]}"; do
    echo "$p:"
    grep -E 'IMDS (PUT|GET)|credentials: from|region:|IAM call' "$W/$p.trace" | sed 's/^iam-authorized-keys: /  /'
done
