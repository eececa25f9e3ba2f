#!/usr/bin/env bash
# --proxy: IAM reachable only through a CONNECT proxy. The IAM endpoint is https://iam.iak-proxy.test,
# a name only the proxy (tests/connect_proxy.py, loopback) resolves; moto serves it with a certificate
# from a test CA, checked through the tunnel. The proxy also listens on TLS (an https:// proxy URL), its
# certificate checked against --ca-bundle too. Everything stays on 127.0.0.1.
#
# usage: tests/proxy_test.sh BINARY PYTHON_WITH_MOTO
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
BIN=$(realpath "${1:?binary}")
PY=${2:?python with moto}
[ -x "$(dirname "$PY")/moto_server" ] || fail "moto_server missing next to $PY"
command -v openssl >/dev/null || fail "openssl missing"

W=$(mktemp -d /tmp/iak-proxy.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$W"
}
trap cleanup EXIT
NAME=iam.iak-proxy.test

openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=iak-proxy-test-ca -keyout "$W/ca.key" -out "$W/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=$NAME" -keyout "$W/srv.key" -out "$W/srv.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s,IP:127.0.0.1\n' "$NAME" > "$W/ext"
openssl x509 -req -in "$W/srv.csr" -CA "$W/ca.pem" -CAkey "$W/ca.key" -CAcreateserial -days 2 \
    -extfile "$W/ext" -out "$W/srv.pem" 2>/dev/null
TLS=$(free_port)
"$(dirname "$PY")/moto_server" -H 127.0.0.1 -p "$TLS" -c "$W/srv.pem" -k "$W/srv.key" >"$W/moto.log" 2>&1 &
PIDS+=($!)
wait_port "$TLS" 30 || fail "TLS moto did not start: $(cat "$W/moto.log")"
U=iakproxy$$
ssh-keygen -q -t ed25519 -N '' -C proxy -f "$W/key"
AWS_CA_BUNDLE=$W/ca.pem "$PY" "$HERE/iam_admin.py" "https://127.0.0.1:$TLS" create-user "$U"
AWS_CA_BUNDLE=$W/ca.pem "$PY" "$HERE/iam_admin.py" "https://127.0.0.1:$TLS" upload "$U" "$W/key.pub" >/dev/null
want=$(awk '{print $1" "$2}' "$W/key.pub")
test_credentials "$W/credentials"
install -d -m 0700 "$W/cache"

PROXY_PID=
# proxy ARGS...: (re)starts the CONNECT proxy on $PP with a fresh log; $NAME resolves to 127.0.0.1 there.
PP=$(free_port)
proxy() {
    proxy_stop
    : >"$W/proxy.log"
    "$PY" "$HERE/connect_proxy.py" "$PP" "$W/proxy.log" "$NAME=127.0.0.1" "$@" 2>"$W/proxy.err" &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_port "$PP" || fail "proxy did not start: $(cat "$W/proxy.err")"
}
proxy_stop() {
    if [ -n "$PROXY_PID" ]; then
        kill "$PROXY_PID" 2>/dev/null || true
        wait "$PROXY_PID" 2>/dev/null || true
        PROXY_PID=
    fi
}

# run [ENV=VALUE...] -- ARGS...: the binary as sshd runs it; sets RC, OUT, ERR, MS.
run() {
    local envs=() t0 t1
    while [ "$1" != -- ]; do envs+=("$1"); shift; done
    shift
    t0=$(date +%s%N)
    set +e
    env -i PATH=/usr/bin:/bin HOME=/nonexistent "${envs[@]}" "$BIN" --uid 5000 \
        --endpoint-url "https://$NAME:$TLS" --ca-bundle "$W/ca.pem" --credentials-file "$W/credentials" \
        --journal-socket none --syslog-socket none "$@" -- "$U" >"$W/out" 2>"$W/err"
    RC=$?
    set -e
    t1=$(date +%s%N)
    MS=$(( (t1 - t0) / 1000000 ))
    OUT=$(cat "$W/out")
    ERR=$(cat "$W/err")
}
served() { [ "$RC" = 0 ] && [ "$(echo "$OUT" | awk '{print $1" "$2}')" = "$want" ]; }
connects() { grep -c "^CONNECT $NAME:$TLS 200" "$W/proxy.log" || true; }

proxy
run -- --no-cache --timeout 5 --proxy "http://127.0.0.1:$PP"
served || fail "through the proxy: rc=$RC: $ERR"
[ "$(connects)" -ge 1 ] || fail "served, but the proxy saw no CONNECT: $(cat "$W/proxy.log")"
pass "--proxy: served through a CONNECT tunnel, TLS checked against the test CA (${MS} ms, $(connects) CONNECT)"

seen=$(connects)
run -- --no-cache --timeout 3
[ "$RC" = 4 ] || fail "without --proxy: rc=$RC (the name should not resolve): $OUT $ERR"
[ "$(connects)" = "$seen" ] || fail "without --proxy the proxy was used"
pass "without --proxy: $NAME does not resolve, exit 4 in ${MS} ms"

run -- --no-cache --timeout 3 --proxy "http://127.0.0.1:$PP" --no-proxy "$NAME"
[ "$RC" = 4 ] && [ "$(connects)" = "$seen" ] || fail "--no-proxy $NAME: rc=$RC, proxy log: $(cat "$W/proxy.log")"
pass "--no-proxy $NAME: the proxy is bypassed (exit 4, no CONNECT)"

run "HTTPS_PROXY=http://127.0.0.1:$PP" -- --no-cache --timeout 5
served && [ "$(connects)" -gt "$seen" ] || fail "HTTPS_PROXY: rc=$RC: $ERR; $(cat "$W/proxy.log")"
pass "HTTPS_PROXY in the environment (manual runs) is honoured"

proxy --auth iak:s3cret
printf 'proxy = http://iak:s3cret@127.0.0.1:%s\n' "$PP" >"$W/conf"
chmod 0600 "$W/conf"
run -- --no-cache --timeout 5 --config "$W/conf"
served || fail "proxy key in --config with user:password: rc=$RC: $ERR; $(cat "$W/proxy.log")"
grep -q "^CONNECT $NAME:$TLS 200 auth=yes" "$W/proxy.log" || fail "no authenticated CONNECT: $(cat "$W/proxy.log")"
pass "proxy = URL with user:password in the --config file: Proxy-Authorization sent, served"
run -- --no-cache --timeout 3 --proxy "http://127.0.0.1:$PP"
[ "$RC" = 4 ] || fail "proxy demanding auth, none given: rc=$RC"
pass "proxy answering 407 without credentials: exit 4 in ${MS} ms"

# --- an https:// proxy: TLS to the proxy itself (its own certificate from the test CA, trusted through
# --ca-bundle), the CONNECT inside it, and IAM's TLS inside the tunnel.
openssl req -newkey rsa:2048 -nodes -subj /CN=iak-test-proxy -keyout "$W/proxy.key" -out "$W/proxy.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' > "$W/proxy.ext"
openssl x509 -req -in "$W/proxy.csr" -CA "$W/ca.pem" -CAkey "$W/ca.key" -CAcreateserial -days 2 \
    -extfile "$W/proxy.ext" -out "$W/proxy.pem" 2>/dev/null
proxy --tls "$W/proxy.pem" "$W/proxy.key"
run -- --no-cache --timeout 5 --proxy "https://127.0.0.1:$PP"
served || fail "https:// proxy: rc=$RC: $ERR; $(cat "$W/proxy.log") $(cat "$W/proxy.err")"
grep -q "^CONNECT $NAME:$TLS 200 auth=no tls=TLSv1" "$W/proxy.log" || fail "https:// proxy: no CONNECT over TLS: $(cat "$W/proxy.log")"
pass "--proxy https://: TLS to the proxy ($(awk '{print $NF; exit}' "$W/proxy.log")), CONNECT inside it, served (${MS} ms, $(connects) CONNECT)"

proxy --tls "$W/proxy.pem" "$W/proxy.key" --auth iak:s3cret
run -- --no-cache --timeout 5 --proxy "https://iak:s3cret@127.0.0.1:$PP"
served && grep -q "^CONNECT $NAME:$TLS 200 auth=yes tls=TLSv1" "$W/proxy.log" ||
    fail "https:// proxy with user:password: rc=$RC: $ERR; $(cat "$W/proxy.log")"
pass "--proxy https://user:password@: Proxy-Authorization sent inside the proxy's TLS, served"

seen=$(connects)
run -- --no-cache --timeout 3 --proxy "http://127.0.0.1:$PP"
[ "$RC" = 4 ] && [ "$(connects)" = "$seen" ] || fail "http:// to a TLS proxy: rc=$RC; $(cat "$W/proxy.log")"
pass "--proxy http:// to a proxy that speaks only TLS: exit 4, no CONNECT"

# The proxy's certificate is checked: one from a CA outside --ca-bundle is refused before any CONNECT.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=iak-other-ca -keyout "$W/other-ca.key" \
    -out "$W/other-ca.pem" 2>/dev/null
openssl x509 -req -in "$W/proxy.csr" -CA "$W/other-ca.pem" -CAkey "$W/other-ca.key" -CAcreateserial -days 2 \
    -extfile "$W/proxy.ext" -out "$W/proxy-other.pem" 2>/dev/null
proxy --tls "$W/proxy-other.pem" "$W/proxy.key"
run -- --no-cache --timeout 3 --proxy "https://127.0.0.1:$PP"
[ "$RC" = 4 ] && [ -z "$OUT" ] || fail "untrusted proxy certificate: rc=$RC out=$OUT"
[ ! -s "$W/proxy.log" ] || fail "untrusted proxy certificate, yet a CONNECT was sent: $(cat "$W/proxy.log")"
[[ $ERR == *certificate* ]] || fail "untrusted proxy certificate: the message does not say so: $ERR"
pass "--proxy https:// with a certificate outside --ca-bundle: refused at the handshake, no CONNECT, exit 4: $(echo "$ERR" | tail -n 1)"

# A record, then the proxy refuses (403) and then is gone: stale within --max-stale, else fail closed in time.
proxy
run -- --cache-dir "$W/cache" --ttl 1 --max-stale 1h --timeout 5 --proxy "http://127.0.0.1:$PP"
served || fail "first lookup: rc=$RC: $ERR"
sleep 2
proxy --refuse
run -- --cache-dir "$W/cache" --ttl 1 --max-stale 1h --timeout 3 --proxy "http://127.0.0.1:$PP"
served || fail "proxy refusing, stale record: rc=$RC: $ERR"
grep -q "CONNECT $NAME:$TLS 403" "$W/proxy.log" || fail "the refusing proxy was not asked"
pass "proxy refusing (403): the cached answer is served within --max-stale (${MS} ms)"
run -- --cache-dir "$W/cache" --ttl 1 --max-stale 1 --timeout 3 --proxy "http://127.0.0.1:$PP"
[ "$RC" = 4 ] && [ -z "$OUT" ] || fail "proxy refusing, record past --max-stale: rc=$RC out=$OUT"
pass "proxy refusing, record older than --max-stale: nothing served, exit 4"
proxy_stop
run -- --no-cache --timeout 3 --proxy "http://127.0.0.1:$PP"
[ "$RC" = 4 ] && [ "$MS" -le 4000 ] || fail "proxy down: rc=$RC after ${MS} ms"
pass "proxy down: exit 4 in ${MS} ms (deadline 3 s)"

echo "proxy: ${PASSED:-0} checks passed"
