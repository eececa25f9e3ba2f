#!/usr/bin/env bash
# sync-users against moto, with a private sshd on loopback: accounts appear with a warm cache and log in;
# an account absent from IAM survives N-1 complete syncs and is locked on the Nth; IAM unreachable removes
# nothing; accounts the tool did not create (or with a system UID) are never touched; --dry-run changes
# nothing; sudo follows the sudo group. The sync runs with exactly the ExecStart line of the systemd unit
# install.sh --with-sync wrote. Needs root: it creates real local accounts (unique names, removed at exit).
#
# usage: tests/sync_test.sh STATIC_BINARY FAULTPROXY_BINARY MOTO_URL PYTHON
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
BIN=${1:?static binary}
PROXY_BIN=${2:?faultproxy binary}
MOTO_URL=${3:?moto url}
PY=${4:?python with boto3}
[ "$(id -u)" = 0 ] || fail "sync test needs root"
command -v visudo >/dev/null || fail "visudo missing (Debian package sudo)"

E=$(mktemp -d /var/lib/iak-sync.XXXXXX); chmod 0755 "$E"
SVC=iaksvc$$ GROUP=iaksync$$ SUDO=iaksudo$$ MARK=iakmark$$
S1=iaks1x$$ S2=iaks2x$$ S3=iaks3x$$ S4=iaks4x$$   # S3: local, not ours; S4: system account in the marker group
SUDOERS=/etc/sudoers.d/iak-test-$$
STATE=$E/state/sync-state.json
SSHD_PID= PROXY_PID=
cleanup() {
    set +e
    [ -n "$SSHD_PID" ] && kill "$SSHD_PID" 2>/dev/null
    [ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null
    for u in $S1 $S2 $S3 $S4; do userdel --remove "$u" 2>/dev/null; done
    groupdel "$MARK" 2>/dev/null
    rm -f "$SUDOERS"
    "$HERE/../install.sh" --uninstall --user "$SVC" --sshd-config "$E/sshd_config" --sshd-config-dir "$E/sshd_config.d" \
        --bindir "$E/bin" --cache-dir "$E/cache" --state-dir "$E/state" --no-reload >/dev/null 2>&1
    rm -rf "$E"
}
trap cleanup EXIT

PPORT=$(free_port)
start_proxy
IAM_URL=http://127.0.0.1:$PPORT

PORT=$(free_port)
private_sshd_config "$PORT" "$S1" "$S2" "$S3"
test_credentials "$E/credentials"
"$HERE/../install.sh" --binary "$BIN" --bindir "$E/bin" --user "$SVC" --cache-dir "$E/cache" --state-dir "$E/state" \
    --sshd-config "$E/sshd_config" --sshd-config-dir "$E/sshd_config.d" --no-reload \
    --endpoint-url "$IAM_URL" --credentials-file "$E/credentials" --timeout 3 --no-default-user \
    --with-sync --sync-group "$GROUP" --sudo-group "$SUDO" --remove-after 3 --managed-group "$MARK" \
    --sudoers-file "$SUDOERS" --sync-state "$STATE" 2>"$E/install.log" || fail "install: $(cat "$E/install.log")"
chgrp "$(id -gn "$SVC")" "$E/credentials" && chmod 0640 "$E/credentials"
UNIT=/etc/systemd/system/$SVC-sync.service
[ -f "$UNIT" ] && [ -L "/etc/systemd/system/timers.target.wants/$SVC-sync.timer" ] || fail "sync units not installed"
grep -q '^RandomizedDelaySec=' "/etc/systemd/system/$SVC-sync.timer" && grep -q '^OnBootSec=' "/etc/systemd/system/$SVC-sync.timer" ||
    fail "timer lacks boot run or randomised delay"
EXEC=$(sed -n 's/^ExecStart=//p' "$UNIT")
sync_users() { $EXEC "$@"; }   # word splitting is intended: install.sh allows no spaces in values
pass "install.sh --with-sync wrote the service and a timer (boot + randomised delay), enabled"

mkdir -p /run/sshd
/usr/sbin/sshd -f "$E/sshd_config" -E "$E/sshd.log" || fail "sshd"
wait_port "$PORT" || fail "sshd did not start"; SSHD_PID=$(cat "$E/sshd.pid")

iam create-group "$GROUP"; iam create-group "$SUDO"
for u in $S1 $S2 $S3; do
    ssh-keygen -q -t ed25519 -N '' -f "$E/$u"
    iam create-user "$u"; iam upload "$u" "$E/$u.pub" >/dev/null; iam add-to-group "$GROUP" "$u"
done
iam add-to-group "$SUDO" "$S1"
useradd --no-create-home --shell /bin/sh "$S3"; usermod -p '*' "$S3"
groupadd --system "$MARK"
useradd --system --no-create-home --shell /usr/sbin/nologin -G "$MARK" "$S4"
iam create-user "$S4"; iam add-to-group "$GROUP" "$S4"   # IAM says S4 is a member; S4 is a system account
snap() { sha256sum /etc/passwd /etc/group /etc/shadow; }
login() { ssh_login "$E/$1" "$1"; }  # login USER (key file named after the user)
field() { "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$@"; }

# --- dry run ------------------------------------------------------------------------------------------
before=$(snap)
sync_users --dry-run --json > "$E/dry.json" || fail "dry run: $(cat "$E/dry.json")"
[ "$(snap)" = "$before" ] && [ ! -e "$SUDOERS" ] && [ ! -e "$STATE" ] || fail "--dry-run changed something"
[ "$(field "$E/dry.json" 'sorted(d["created"])')" = "['$S1', '$S2']" ] || fail "dry run plan: $(cat "$E/dry.json")"
pass "--dry-run reports the plan ($S1, $S2 to create) and changes nothing"

# --- first sync: accounts, warm cache, sudo -------------------------------------------------------------
sync_users --json > "$E/s1.json" || fail "first sync: $(cat "$E/s1.json")"
for u in $S1 $S2; do
    id -nG "$u" | grep -qw "$MARK" || fail "$u not in the marker group"
    [ -d "/home/$u" ] && [ "$(getent passwd "$u" | cut -d: -f7)" = /bin/bash ] || fail "$u home/shell"
    [ "$(stat -c %U "$E/cache/$u.json")" = "$SVC" ] || fail "$u: no warm cache record owned by $SVC"
done
[ "$(field "$E/s1.json" '[p["result"] for p in d["prefetched"]]')" = "['cached', 'cached']" ] || fail "prefetch: $(cat "$E/s1.json")"
! id -nG "$S3" | grep -qw "$MARK" || fail "unmanaged $S3 was adopted"
grep -q "^$S1 ALL=(ALL) NOPASSWD:ALL$" "$SUDOERS" && ! grep -q "^$S2 " "$SUDOERS" || fail "sudoers: $(cat "$SUDOERS")"
[ "$(stat -c %a "$SUDOERS")" = 440 ] && visudo -cf "$SUDOERS" >/dev/null || fail "sudoers mode or syntax"
[ "$(stat -c '%U %a' "$STATE")" = "root 600" ] || fail "state file owner/mode"
pass "sync created $S1 and $S2 (marker group, home, shell), cached their keys, sudo for $S1 only"

curl -fsS "$IAM_URL/__proxy/clear" >/dev/null
login "$S2" || fail "$S2 could not log in: $(tail -5 "$E/sshd.log")"
! curl -fsS "$IAM_URL/__proxy/counts" | grep -q " $S2 " || fail "first login of $S2 asked IAM: cache was not warm"
pass "a synced account logs in through sshd on its first try, from the warm cache (no IAM call)"

# --- removal: N-1 complete syncs keep it, IAM failure keeps it, the Nth locks it ------------------------
iam remove-from-group "$GROUP" "$S2"
for n in 1 2; do
    sync_users --json > "$E/r$n.json" || fail "sync $n: $(cat "$E/r$n.json")"
    [ "$(field "$E/r$n.json" '[(a["user"], a["absent_syncs"]) for a in d["absent"]]')" = "[('$S2', $n)]" ] ||
        fail "absence count after sync $n: $(cat "$E/r$n.json")"
    [ "$(getent shadow "$S2" | cut -d: -f8)" != 1 ] || fail "$S2 locked after $n sync(s)"
done
pass "an account absent from IAM survives 2 complete syncs (--remove-after 3)"
kill "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true; PROXY_PID=
state_before=$(cat "$STATE")
if sync_users > "$E/down.out" 2>"$E/down.err"; then fail "sync with IAM down exited 0"; fi
grep -q "removal phase skipped" "$E/down.err" && grep -q "cannot list IAM group $GROUP" "$E/down.err" ||
    fail "no clear log for IAM down: $(cat "$E/down.err")"
[ "$(cat "$STATE")" = "$state_before" ] || fail "state changed while IAM was down"
getent passwd "$S1" "$S2" >/dev/null && [ "$(getent shadow "$S2" | cut -d: -f8)" != 1 ] || fail "IAM down removed an account"
pass "IAM unreachable: non-zero exit, clear log, nothing removed, counters kept"
start_proxy
sync_users --json > "$E/r3.json" || fail "sync 3: $(cat "$E/r3.json")"
[ "$(field "$E/r3.json" '[(r["user"], r["how"]) for r in d["removed"]]')" = "[('$S2', 'lock')]" ] || fail "not locked: $(cat "$E/r3.json")"
[ "$(getent shadow "$S2" | cut -d: -f8)" = 1 ] && [ -d "/home/$S2" ] || fail "$S2 not expired, or home removed"
! login "$S2" 2>/dev/null || fail "locked $S2 still logs in"
pass "the 3rd complete sync locks $S2 (expired, home kept); it can no longer log in"

for u in $S3 $S4; do [ "$(getent shadow "$u" | cut -d: -f8)" != 1 ] || fail "$u was touched"; done
grep -q "$S3" "$E/s1.json" || fail "the report does not mention the unmanaged $S3"
[ "$(field "$E/r3.json" '[x["user"] for x in d["removed"] + d["absent"] if x["user"] == "'"$S4"'"]')" = "[]" ] ||
    fail "system account $S4 was considered for removal"
[ "$(field "$E/r3.json" '[x["reason"].startswith("a local account not created by this tool") for x in d["skipped"] if x.get("user") == "'"$S4"'"]')" = "[True]" ] ||
    fail "the report does not say why $S4 is left alone: $(cat "$E/r3.json")"
pass "accounts not created by the tool ($S3) and system accounts in the marker group ($S4) are never touched"

# --- sudo revoked, account reactivated ----------------------------------------------------------------
iam remove-from-group "$SUDO" "$S1"
iam add-to-group "$GROUP" "$S2"
sync_users --json > "$E/r4.json" || fail "sync 4: $(cat "$E/r4.json")"
! grep -q "^$S1 " "$SUDOERS" || fail "sudo not revoked: $(cat "$SUDOERS")"
[ "$(field "$E/r4.json" 'd["sudo"]["revoked"]')" = "['$S1']" ] || fail "revocation not reported"
[ "$(field "$E/r4.json" 'd["reactivated"]')" = "['$S2']" ] || fail "not reactivated: $(cat "$E/r4.json")"
login "$S2" || fail "reactivated $S2 cannot log in"
pass "sudo follows the IAM sudo group; an account back in IAM is reactivated and logs in"

iam remove-from-group "$GROUP" "$S2"
${EXEC/--remove-after 3/--remove-after 1 --remove delete} --json > "$E/r5.json" ||
    fail "sync with --remove delete: $(cat "$E/r5.json")"
[ "$(field "$E/r5.json" '[(r["user"], r["how"]) for r in d["removed"]]')" = "[('$S2', 'delete')]" ] ||
    fail "not deleted: $(cat "$E/r5.json")"
! getent passwd "$S2" >/dev/null && [ ! -e "/home/$S2" ] || fail "--remove delete left the account or its home"
getent passwd "$S1" "$S3" "$S4" >/dev/null || fail "--remove delete touched another account"
pass "--remove delete removes the account and its home, and nothing else"

# --- hardening #12 finding 5: root never creates the cache directory (it would be root's) ---------------
NOCACHE=$E/nocache
if ${EXEC/--cache-dir $E\/cache/--cache-dir $NOCACHE} --json > "$E/r6.json" 2>"$E/r6.err"; then
    fail "sync with a missing cache directory exited 0"
fi
[ ! -e "$NOCACHE" ] || fail "sync-users created the cache directory as $(stat -c %U "$NOCACHE")"
grep -q "keys not prefetched: cache directory $NOCACHE" "$E/r6.json" "$E/r6.err" ||
    fail "no clear message for the missing cache directory: $(cat "$E/r6.json" "$E/r6.err")"
pass "a missing cache directory: keys not prefetched, the directory not created by root, non-zero exit"
echo "sync: ${PASSED} passed, 0 failed"
