#!/usr/bin/env bash
# The release binary is static-pie and runs with nothing around it: inside an empty chroot (no libc, no
# Python, no /etc) it answers from moto over HTTP, and over HTTPS once a CA bundle sits where Flatcar and
# Debian keep theirs (/etc/ssl/certs/ca-certificates.crt).
#
# usage: tests/static_test.sh STATIC_BINARY MOTO_URL PYTHON
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
BIN=${1:?static binary}
MOTO_URL=${2:?moto url}
PY=${3:?python with moto}
W=$(mktemp -d /var/lib/iak-static.XXXXXX)
TLS_PID=
trap '[ -n "$TLS_PID" ] && kill $TLS_PID 2>/dev/null; rm -rf "$W"' EXIT

desc=$(file -b "$BIN")
[[ $desc == *"static-pie linked"* ]] || fail "not static-pie: $desc"
ldd_out=$(ldd "$BIN" 2>&1 || true)
[[ $ldd_out == *"statically linked"* || $ldd_out == *"not a dynamic executable"* ]] || fail "ldd: $ldd_out"
size=$(stat -c %s "$BIN")
echo "binary: $size bytes; $desc"
[ "$size" -le $((5 * 1024 * 1024)) ] || fail "binary is $size bytes, over the 5 MB target"
pass "static-pie, no dynamic dependencies, $(( size / 1024 )) KiB"

U=iakstatic$$   # unique: the emulator may outlive one run
ssh-keygen -q -t ed25519 -N '' -C static -f "$W/key"
"$PY" "$HERE/iam_admin.py" "$MOTO_URL" create-user "$U"
"$PY" "$HERE/iam_admin.py" "$MOTO_URL" upload "$U" "$W/key.pub" >/dev/null
want=$(awk '{print $1" "$2}' "$W/key.pub")

C=$W/chroot; mkdir -p "$C"
CHROOT=$(command -v chroot) || fail "chroot not found"
install -m 0755 "$BIN" "$C/iam-authorized-keys"
test_credentials "$C/credentials"
chmod 0600 "$C/credentials"
in_chroot() {
    env -i "$CHROOT" "$C" /iam-authorized-keys --no-cache --timeout 3s --uid 5000 --credentials-file /credentials "$@" -- "$U"
}
out=$(in_chroot --endpoint-url "$MOTO_URL") || fail "binary failed in an empty chroot"
[ "$(echo "$out" | awk '{print $1" "$2}')" = "$want" ] || fail "chroot output: $out"
pass "runs in an empty chroot (no libc, no /etc) and serves the key"

# HTTPS: a private CA, moto serving a certificate for 127.0.0.1.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=iak-test-ca -keyout "$W/ca.key" -out "$W/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout "$W/srv.key" -out "$W/srv.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' > "$W/ext"
openssl x509 -req -in "$W/srv.csr" -CA "$W/ca.pem" -CAkey "$W/ca.key" -CAcreateserial -days 2 \
    -extfile "$W/ext" -out "$W/srv.pem" 2>/dev/null
TLS_PORT=$(free_port)
"$(dirname "$PY")/moto_server" -H 127.0.0.1 -p "$TLS_PORT" -c "$W/srv.pem" -k "$W/srv.key" >"$W/tls.log" 2>&1 &
TLS_PID=$!
wait_port "$TLS_PORT" 30 || fail "TLS moto did not start: $(cat "$W/tls.log")"
# A separate moto process has its own state: create the user there too (through its TLS endpoint).
REQUESTS_CA_BUNDLE=$W/ca.pem AWS_CA_BUNDLE=$W/ca.pem "$PY" "$HERE/iam_admin.py" "https://127.0.0.1:$TLS_PORT" create-user "$U"
AWS_CA_BUNDLE=$W/ca.pem "$PY" "$HERE/iam_admin.py" "https://127.0.0.1:$TLS_PORT" upload "$U" "$W/key.pub" >/dev/null

if in_chroot --endpoint-url "https://127.0.0.1:$TLS_PORT" >"$W/out" 2>"$W/err"; then
    fail "HTTPS succeeded with no CA bundle in the chroot"
fi
[ ! -s "$W/out" ] || fail "printed something on a TLS failure"
pass "HTTPS without trust roots fails closed"
mkdir -p "$C/etc/ssl/certs"
cp "$W/ca.pem" "$C/etc/ssl/certs/ca-certificates.crt"
out=$(in_chroot --endpoint-url "https://127.0.0.1:$TLS_PORT" 2>"$W/err") || fail "HTTPS with CA bundle: $(cat "$W/err")"
[ "$(echo "$out" | awk '{print $1" "$2}')" = "$want" ] || fail "TLS chroot output: $out"
pass "HTTPS verified against /etc/ssl/certs/ca-certificates.crt"

echo "static: ${PASSED} passed, 0 failed"
