#!/usr/bin/env bash
# The audit trail in journald: a private systemd-journald in a mount namespace of its own (tmpfs /run and
# /var/log/journal, so the host's journal is untouched), the real binary sending its events, read back
# with journalctl. (The syslog fallback is tested in tests/ops.rs on a local socket.)
#
# usage: tests/audit_test.sh STATIC_BINARY MOTO_URL PYTHON
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
BIN=${1:?static binary}
MOTO_URL=${2:?moto url}
PY=${3:?python with boto3}
[ "$(id -u)" = 0 ] || fail "the journald test needs root (mount namespace)"
JOURNALD=$(ls /lib/systemd/systemd-journald /usr/lib/systemd/systemd-journald 2>/dev/null | head -1)
[ -n "$JOURNALD" ] || fail "systemd-journald not installed (Debian package systemd)"
command -v journalctl >/dev/null || fail "journalctl not installed"
command -v unshare >/dev/null || fail "unshare not installed (util-linux)"

W=$(mktemp -d /var/lib/iak-audit.XXXXXX)
trap 'rm -rf "$W"' EXIT
chmod 0700 "$W"
U=iakaudit$$
"$PY" "$HERE/iam_admin.py" "$MOTO_URL" create-user "$U"
ssh-keygen -q -t ed25519 -N '' -f "$W/key"
"$PY" "$HERE/iam_admin.py" "$MOTO_URL" upload "$U" "$W/key.pub" >/dev/null
FP=$(ssh-keygen -l -f "$W/key.pub" | awk '{print $2}')

cat > "$W/inside.sh" <<INNER
set -euo pipefail
mount -t tmpfs tmpfs /run
[ -d /var/log/journal ] && mount -t tmpfs tmpfs /var/log/journal
mkdir -p /run/systemd/journal
"$JOURNALD" >"$W/journald.log" 2>&1 &
JPID=\$!
for i in \$(seq 1 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.1; done
[ -S /run/systemd/journal/socket ] || { echo "journald did not start: \$(cat "$W/journald.log")"; exit 1; }
run() {  # run ENDPOINT ARGS...
    env -i AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test "$BIN" --uid 5000 --endpoint-url "\$1" \
        --cache-dir "$W/cache" "\${@:2}"
}
run "$MOTO_URL" -- "$U" "$FP" ssh-ed25519 > "$W/out1"
run "$MOTO_URL" -- "$U" "$FP" ssh-ed25519 > "$W/out2"
if run http://127.0.0.1:9 --max-stale 0 --ttl 0 --timeout 1s -- "$U" > "$W/out3" 2>"$W/err3"; then exit 1; fi
grep -q "IAM" "$W/err3" || { cat "$W/err3"; exit 1; }
sleep 0.5
journalctl --no-pager -o json SYSLOG_IDENTIFIER=iam-authorized-keys > "$W/journal.json"
kill \$JPID
INNER
unshare -m bash "$W/inside.sh" || fail "journald run failed"
[ "$(awk '{print $1" "$2}' "$W/out1")" = "$(awk '{print $1" "$2}' "$W/key.pub")" ] || fail "stdout: $(cat "$W/out1")"
cmp -s "$W/out1" "$W/out2" || fail "second lookup printed something else"
[ ! -s "$W/out3" ] || fail "a failed lookup printed keys"
"$PY" - "$W/journal.json" "$U" "$FP" <<'PY' || fail "journal events: $(cat "$W/journal.json")"
import json, sys
path, user, fp = sys.argv[1:]
ev = [json.loads(l) for l in open(path) if l.strip()]
ev = [e for e in ev if e.get("IAK_USER") == user]
assert len(ev) == 3, f"want 3 events, got {len(ev)}"
first, second, failed = ev
for e in (first, second):
    assert e["IAK_IAM_USER"] == user and e["IAK_RESULT"] == "served" and e["IAK_KEYS"] == "1", e
    assert e["IAK_OFFERED_FP"] == fp and e["IAK_OFFERED_TYPE"] == "ssh-ed25519", e
    assert e["IAK_OFFERED_MATCH"].startswith("APKA"), e
    assert e["PRIORITY"] == "6" and e["SYSLOG_FACILITY"] == "10" and e["_TRANSPORT"] == "journal", e
    assert int(e["IAK_DURATION_MS"]) >= 0 and user in e["MESSAGE"], e
assert first["IAK_SOURCE"] == "iam" and second["IAK_SOURCE"] == "cache", (first, second)
assert failed["IAK_RESULT"] == "failed" and failed["PRIORITY"] == "3" and failed["IAK_ERROR"], failed
PY
pass "journald gets one structured event per lookup (IAK_* fields), read back with journalctl"
echo "audit: ${PASSED} passed, 0 failed"
