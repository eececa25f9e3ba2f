#!/usr/bin/env bash
# The EC2 path without EC2: a network namespace of our own owns 169.254.169.254 (and fd00:ec2::254) on
# its loopback, a fake IMDSv2 server (tests/fake_imds.py) answers there, moto plays IAM on the
# namespace's 127.0.0.1 behind a relay that logs the SigV4 credential scope, and the binary runs as sshd
# runs it (env -i, HOME=/nonexistent, no credentials file): its credentials come from the fake IMDS.
# Nothing leaves the namespace; the namespace and every server are removed on exit.
#
# usage: tests/imds_test.sh BINARY PYTHON_WITH_MOTO
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
BIN=$(realpath "${1:?binary}")
PY=${2:?python with moto}
[ "$(id -u)" = 0 ] || fail "imds_test.sh needs root (a network namespace)"
command -v ip >/dev/null || fail "ip (iproute2) missing"
[ -x "$(dirname "$PY")/moto_server" ] || fail "moto_server missing next to $PY"

NS=iak-imds-$$
W=$(mktemp -d /tmp/iak-imds.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

ip netns add "$NS" || fail "cannot create network namespace $NS"
nsx() { ip netns exec "$NS" "$@"; }
nsx ip link set lo up
nsx ip addr add 169.254.169.254/32 dev lo
nsx ip -6 addr add fd00:ec2::254/128 dev lo nodad || fail "cannot add fd00:ec2::254 (IPv6 disabled?): the IPv6 IMDS checks need it"
# Only loopback exists in the namespace: nothing we start can reach beyond it.
[ "$(nsx ip -o link show | wc -l)" = 1 ] || fail "namespace has more than loopback"

# ns_wait ADDR PORT: until something accepts on ADDR:PORT inside the namespace (bounded).
ns_wait() {
    nsx bash -c 'for i in $(seq 1 300); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && exit 0; sleep 0.1; done; exit 1' _ "$1" "$2"
}

MOTO=5000 RELAY=5001
# Background servers start through ip itself (it execs the command: $! is the server's own PID, which a
# shell function in the background would not give).
ip netns exec "$NS" "$(dirname "$PY")/moto_server" -H 127.0.0.1 -p "$MOTO" >"$W/moto.log" 2>&1 &
PIDS+=($!)
ns_wait 127.0.0.1 "$MOTO" || fail "moto did not start: $(cat "$W/moto.log")"
# relay_start / relay_stop: IAM (the relay in front of moto) reachable or not.
relay_start() {
    ip netns exec "$NS" "$PY" "$HERE/fake_imds.py" relay "$RELAY" "$MOTO" "$W/scopes.log" 2>"$W/relay.err" &
    RELAY_PID=$!
    PIDS+=("$RELAY_PID")
    ns_wait 127.0.0.1 "$RELAY" || fail "relay did not start: $(cat "$W/relay.err")"
}
relay_stop() { kill "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true; }
relay_start

U=iakimds$$
ssh-keygen -q -t ed25519 -N '' -C imds -f "$W/key"
nsx "$PY" "$HERE/iam_admin.py" "http://127.0.0.1:$MOTO" create-user "$U"
nsx "$PY" "$HERE/iam_admin.py" "http://127.0.0.1:$MOTO" upload "$U" "$W/key.pub" >/dev/null
want=$(awk '{print $1" "$2}' "$W/key.pub")
install -d -m 0700 "$W/cache"

IMDS_PID=
# imds [--bind-any|--ipv6] ARGS...: (re)starts the fake IMDS on 169.254.169.254:80 (--bind-any: every
# IPv4 address of the namespace, so it answers once 169.254.169.254 is back; --ipv6: on fd00:ec2::254
# only) with a fresh request log.
imds() {
    imds_stop
    : >"$W/imds.log"
    local addr=169.254.169.254
    if [ "${1:-}" = --bind-any ]; then addr=0.0.0.0; shift; fi
    if [ "${1:-}" = --ipv6 ]; then addr=fd00:ec2::254; shift; fi
    ip netns exec "$NS" "$PY" "$HERE/fake_imds.py" imds "$addr" 80 "$W/imds.log" "$@" 2>"$W/imds.err" &
    IMDS_PID=$!
    PIDS+=("$IMDS_PID")
    ns_wait "${addr/0.0.0.0/127.0.0.1}" 80 || fail "fake IMDS did not start: $(cat "$W/imds.err")"
}
imds_stop() {
    if [ -n "$IMDS_PID" ]; then
        kill "$IMDS_PID" 2>/dev/null || true
        wait "$IMDS_PID" 2>/dev/null || true
        IMDS_PID=
    fi
}

# run ARGS...: the binary as sshd runs it, in the namespace; sets RC, OUT, ERR, MS (elapsed).
# RUN_ENV (VAR=VALUE words) is added to its environment, for what only a manual run would have.
RUN_ENV=()
run() {
    local t0 t1
    t0=$(date +%s%N)
    set +e
    nsx env -i PATH=/usr/bin:/bin HOME=/nonexistent "${RUN_ENV[@]}" "$BIN" --uid 5000 \
        --endpoint-url "http://127.0.0.1:$RELAY" --journal-socket none --syslog-socket none \
        "$@" -- "$U" >"$W/out" 2>"$W/err"
    RC=$?
    set -e
    t1=$(date +%s%N)
    MS=$(( (t1 - t0) / 1000000 ))
    OUT=$(cat "$W/out")
    ERR=$(cat "$W/err")
}
served() { [ "$RC" = 0 ] && [ "$(echo "$OUT" | awk '{print $1" "$2}')" = "$want" ]; }
count() { grep -c "$1" "$W/imds.log" || true; }
scope() { tail -n 1 "$W/scopes.log" | cut -d/ -f2; }

# --- normal: instance-profile credentials, region from IMDS, nothing on a warm hit ---------------
imds --region eu-west-3
run --cache-dir "$W/cache" -vv
served || fail "normal: rc=$RC out=$OUT err=$ERR"
n=$(wc -l <"$W/imds.log")
[ "$n" = 4 ] || fail "normal: $n IMDS requests, want 4 (token, role, credentials, region): $(cat "$W/imds.log")"
[ "$(count 'PUT /latest/api/token 200')" = 1 ] || fail "normal: token not fetched once: $(cat "$W/imds.log")"
[ "$(scope)" = eu-west-3 ] || fail "normal: IAM signed for $(scope), not IMDS's eu-west-3"
[[ $ERR == *"region: eu-west-3 (from IMDS)"* ]] || fail "normal: -vv does not say the region came from IMDS: $ERR"
pass "instance-profile credentials from IMDSv2: served in ${MS} ms, 4 IMDS requests, IAM signed for eu-west-3 (IMDS placement/region)"
iam_before=$(wc -l <"$W/scopes.log")
run --cache-dir "$W/cache"
served || fail "warm: rc=$RC err=$ERR"
[ "$(wc -l <"$W/imds.log")" = 4 ] || fail "warm hit asked IMDS: $(cat "$W/imds.log")"
[ "$(wc -l <"$W/scopes.log")" = "$iam_before" ] || fail "warm hit asked IAM"
pass "warm hit: 0 IMDS and 0 IAM requests (${MS} ms)"

# --- 20 concurrent cold lookups of one user: single flight, one set of IMDS requests ---------------------
rm -f "$W/cache"/*
imds --region eu-west-3
iam_before=$(wc -l <"$W/scopes.log")
for i in $(seq 1 20); do
    nsx env -i PATH=/usr/bin:/bin HOME=/nonexistent "$BIN" --uid 5000 --endpoint-url "http://127.0.0.1:$RELAY" \
        --journal-socket none --syslog-socket none --cache-dir "$W/cache" --timeout 10 -- "$U" >"$W/c$i.out" 2>&1 &
    cpids[$i]=$!
done
for i in $(seq 1 20); do
    wait "${cpids[$i]}" || fail "concurrent lookup $i failed: $(cat "$W/c$i.out")"
    [ "$(awk '{print $1" "$2}' "$W/c$i.out")" = "$want" ] || fail "concurrent lookup $i: $(cat "$W/c$i.out")"
done
n=$(wc -l <"$W/imds.log")
calls=$(( $(wc -l <"$W/scopes.log") - iam_before ))
[ "$n" = 4 ] || fail "20 concurrent cold lookups made $n IMDS requests, want 4: $(cat "$W/imds.log")"
pass "20 concurrent cold lookups: all served, $n IMDS requests and $calls IAM request(s) in all"

# --- --region wins; IMDS is not asked for it ---------------------------------------------------------
imds --region eu-west-3
run --no-cache --region us-west-2
served || fail "--region: rc=$RC err=$ERR"
[ "$(scope)" = us-west-2 ] || fail "--region us-west-2 lost to $(scope)"
[ "$(count placement/region)" = 0 ] || fail "--region given, IMDS still asked: $(cat "$W/imds.log")"
pass "--region us-west-2 wins over IMDS (3 IMDS requests, no placement/region)"

# --- --allowed-groups-tag: the instance tag names the IAM groups; kept with the answer; fails closed ------
nsx "$PY" "$HERE/iam_admin.py" "http://127.0.0.1:$MOTO" create-group ops
nsx "$PY" "$HERE/iam_admin.py" "http://127.0.0.1:$MOTO" create-group dev
nsx "$PY" "$HERE/iam_admin.py" "http://127.0.0.1:$MOTO" add-to-group ops "$U"
install -d -m 0700 "$W/tcache"
TAGS=$W/tags
echo 'ssh-groups=dev, ops' >"$TAGS"
imds --region eu-west-3 --tags "$TAGS"
tagrun() { run --cache-dir "$W/tcache" --allowed-groups-tag ssh-groups --ttl 2 --negative-ttl 2 "$@"; }
tagrun --json
[ "$RC" = 0 ] && [[ $OUT == *'"result": "keys"'* && $OUT == *'"groups_tag"'* && $OUT == *'instance tag ssh-groups'* ]] \
    || fail "groups tag: rc=$RC out=$OUT err=$ERR"
[ "$(count 'GET /latest/meta-data/tags/instance/ssh-groups 200')" = 1 ] || fail "groups tag: tag not read once: $(cat "$W/imds.log")"
n=$(wc -l <"$W/imds.log")
[ "$n" = 5 ] || fail "groups tag: $n IMDS requests, want 5 (the token reused for the tag): $(cat "$W/imds.log")"
"$PY" -c 'import json,sys; t=json.load(open(sys.argv[1]))["tag"]; sys.exit(t != {"key": "ssh-groups", "groups": ["dev", "ops"]})' "$W/tcache"/*.json || fail "groups tag: not kept with the record: $(cat "$W/tcache"/*.json)"
tagrun
served || fail "groups tag, warm: rc=$RC err=$ERR"
[ "$(wc -l <"$W/imds.log")" = 5 ] || fail "groups tag: warm hit asked IMDS: $(cat "$W/imds.log")"
pass "--allowed-groups-tag ssh-groups='dev, ops', user in ops: served (5 IMDS requests, token reused), tag kept with the record, warm hit 0 IMDS requests"

echo 'ssh-groups=dev' >"$TAGS"
tagrun
served || fail "groups tag changed, within the TTL: rc=$RC err=$ERR"
sleep 2.2
tagrun -v
[ "$RC" = 0 ] && [ -z "$OUT" ] && [[ $ERR == *"not in any allowed IAM group (dev)"*"instance tag ssh-groups"* ]] \
    || fail "groups tag changed to dev: rc=$RC out=$OUT err=$ERR"
pass "tag changed to 'dev': the cached answer is served until the TTL ends, then the user is refused (no key)"

echo 'ssh-groups=ops' >"$TAGS"
sleep 2.2
tagrun
served || fail "groups tag back to ops: rc=$RC err=$ERR"
echo 'other=ops' >"$TAGS"
sleep 2.2
tagrun
[ "$RC" = 4 ] && [ -z "$OUT" ] && [[ $ERR == *"no tag ssh-groups"*"create-tags"* ]] \
    || fail "groups tag removed: rc=$RC out=$OUT err=$ERR"
pass "tag removed: exit 4, nothing printed although a 2 s old answer is within --max-stale: $(echo "$ERR" | tail -n 1)"

imds --region eu-west-3
tagrun
[ "$RC" = 4 ] && [ -z "$OUT" ] && [[ $ERR == *"not in instance metadata"*"--instance-metadata-tags enabled"* ]] \
    || fail "tags disabled: rc=$RC out=$OUT err=$ERR"
pass "instance metadata tags disabled: exit 4, nothing printed, names the fix: $(echo "$ERR" | tail -n 1)"

echo 'ssh-groups=ops;rm -rf' >"$TAGS"
imds --region eu-west-3 --tags "$TAGS"
tagrun
[ "$RC" = 4 ] && [ -z "$OUT" ] && [[ $ERR == *"not an IAM group name"* ]] || fail "bad tag value: rc=$RC out=$OUT err=$ERR"
pass "a tag value that is not a list of IAM groups: exit 4, nothing printed"

echo 'ssh-groups=ops' >"$TAGS"
tagrun
served || fail "groups tag ops again: rc=$RC err=$ERR"
sleep 2.2
imds --region eu-west-3 --tags "$TAGS" --tags-status 500
tagrun --timeout 3 --max-stale 1h
served || fail "tag read failing (HTTP 500): stale answer within max-stale not served: rc=$RC err=$ERR"
[[ $ERR == *"serving cached answer"* ]] || fail "tag 500: no stale warning: $ERR"
tagrun --timeout 3 --max-stale 1
[ "$RC" = 4 ] && [ -z "$OUT" ] || fail "tag read failing past max-stale: rc=$RC out=$OUT err=$ERR"
pass "tag read failing (IMDS HTTP 500): the cached answer served within --max-stale, exit 4 past it"

# The tag changed, then IAM fails: the stale answer is judged by the tag as read now, not as cached.
echo 'ssh-groups=ops' >"$TAGS"
imds --region eu-west-3 --tags "$TAGS"
tagrun
served || fail "tag ops before the IAM outage: rc=$RC err=$ERR"
sleep 2.2
echo 'ssh-groups=dev' >"$TAGS"
relay_stop
tagrun --timeout 3 --max-stale 1h -v
relay_start
[ "$RC" = 0 ] && [ -z "$OUT" ] && [[ $ERR == *"not in any allowed IAM group (dev)"* ]] \
    || fail "tag changed during an IAM outage: a stale key was served under the old tag: rc=$RC out=$OUT err=$ERR"
"$PY" -c 'import json,sys; t=json.load(open(sys.argv[1]))["tag"]; sys.exit(t["groups"] != ["dev"])' "$W/tcache"/*.json ||
    fail "the record does not hold the new tag value for waiters: $(cat "$W/tcache"/*.json)"
pass "tag changed to 'dev' while IAM is down: the stale answer is judged by the new value (refused), the record keeps it"

# A settled refusal is not undone by a later outage: the record is gone.
echo 'ssh-groups=ops' >"$TAGS"
tagrun
served || fail "tag ops again: rc=$RC err=$ERR"
sleep 2.2
echo 'other=ops' >"$TAGS"
tagrun --max-stale 1h
[ "$RC" = 4 ] && [ -z "$OUT" ] || fail "tag removed: rc=$RC out=$OUT err=$ERR"
[ -z "$(ls "$W/tcache"/*.json 2>/dev/null)" ] || fail "tag removed: the record was kept: $(ls "$W/tcache")"
imds --region eu-west-3 --tags "$TAGS" --tags-status 500
tagrun --timeout 3 --max-stale 1h
[ "$RC" = 4 ] && [ -z "$OUT" ] || fail "tag removed, then IMDS failing: the old answer came back: rc=$RC out=$OUT err=$ERR"
pass "tag removed (exit 4, record removed), then IMDS fails: still exit 4, nothing printed"

# A value longer than any tag can hold is refused before it is parsed.
printf 'ssh-groups=%s\n' "$(printf 'g%03d,' $(seq 1 100))" >"$TAGS"
imds --region eu-west-3 --tags "$TAGS"
tagrun
[ "$RC" = 4 ] && [ -z "$OUT" ] && [[ $ERR == *"more than a tag value can hold"* ]] || fail "oversized tag: rc=$RC out=$OUT err=$ERR"
pass "a 500-byte tag value (tags hold 256): exit 4, nothing printed, in ${MS} ms"

# sync-users takes its groups and sudo groups from tags the same way (dry run: no account changes here).
printf 'login=ops,dev\nadmins=ops\n' >"$TAGS"
imds --region eu-west-3 --tags "$TAGS"
set +e
nsx env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin HOME=/nonexistent "$BIN" sync-users --dry-run --json \
    --group-tag login --sudo-group-tag admins --endpoint-url "http://127.0.0.1:$RELAY" --cache-dir "$W/tcache" \
    --journal-socket none --syslog-socket none >"$W/sync.json" 2>"$W/sync.err"
rc=$?
set -e
grep -q '"key": "login"' "$W/sync.json" && grep -q '"key": "admins"' "$W/sync.json" \
    && grep -q "\"$U\"" "$W/sync.json" || fail "sync-users with tags: rc=$rc $(cat "$W/sync.json" "$W/sync.err")"
printf 'login=ops\n' >"$TAGS"
set +e
nsx env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin HOME=/nonexistent "$BIN" sync-users --dry-run --json \
    --group-tag nosuch --endpoint-url "http://127.0.0.1:$RELAY" --journal-socket none --syslog-socket none \
    >"$W/sync.json" 2>"$W/sync.err"
rc=$?
set -e
[ "$rc" = 4 ] && grep -q "no tag nosuch (--group-tag)" "$W/sync.err" || fail "sync-users, missing tag: rc=$rc $(cat "$W/sync.json" "$W/sync.err")"
set +e
nsx env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin HOME=/nonexistent "$BIN" sync-users --dry-run --json \
    --group-tag login --sudo-group-tag nosuch --endpoint-url "http://127.0.0.1:$RELAY" --journal-socket none \
    --syslog-socket none >"$W/sync.json" 2>"$W/sync.err"
rc=$?
set -e
"$PY" -c '
import json, sys
r = json.load(open(sys.argv[1]))
ok = r["ok"] and r["errors"] == [] and any("sudo granted to nobody" in w for w in r["warnings"])
ok = ok and r["removal_phase"] == "ran"
sys.exit(0 if ok else 1)' "$W/sync.json" && [ "$rc" = 0 ] ||
    fail "sync-users, missing sudo tag: rc=$rc $(cat "$W/sync.json" "$W/sync.err")"
# doctor checks with the options sshd passes to the command when there is one: point it at a private
# sshd_config without ours, so that a host installation (CI installs one) does not decide this test.
printf 'Port 22\n' > "$W/sshd_config"
doctor_tag() {
    set +e
    nsx env -i PATH=/usr/bin:/bin:/usr/sbin HOME=/nonexistent "$BIN" doctor --sshd-config "$W/sshd_config" \
        --allowed-groups-tag "$1" "$U" \
        --endpoint-url "http://127.0.0.1:$RELAY" --timeout 3 --journal-socket none --syslog-socket none >"$W/doctor" 2>&1
    set -e
}
doctor_tag login
grep -qE '^OK +groups tag: instance tag login allows IAM groups ops' "$W/doctor" && grep -qE '^OK +policy: member of allowed IAM group ops' "$W/doctor" \
    || fail "doctor with a groups tag: $(cat "$W/doctor")"
doctor_tag nosuch
grep -qE '^FAIL +groups tag: this instance has no tag nosuch' "$W/doctor" && grep -qE '^FAIL +policy: refused' "$W/doctor" \
    || fail "doctor with a missing groups tag: $(cat "$W/doctor")"
pass "doctor reads the groups tag (OK with its groups, the user's policy from them); a missing tag is a FAIL with the fix"
pass "sync-users --group-tag/--sudo-group-tag: groups from the tags (dry run); a missing groups tag ends the run (exit 4) before any change; a missing sudo tag grants sudo to nobody, a warning that does not stop removals"

# --- --proxy never applies to IMDS (the proxy here is a closed port: anything sent there fails) ---------
imds
run --no-cache --timeout 5 --proxy http://127.0.0.1:9 --no-proxy 127.0.0.1
served || fail "--proxy with IMDS: rc=$RC: $ERR"
[ "$(count 'PUT /latest/api/token 200')" = 1 ] || fail "--proxy: IMDS not asked directly: $(cat "$W/imds.log")"
pass "--proxy set (to a closed port): IMDS still asked directly, served"

# --- slow IMDS: 1.5 s per reply, --timeout 8 ---------------------------------------------------------
imds --delay 1.5
run --no-cache --timeout 8
served || fail "slow IMDS: rc=$RC after ${MS} ms: $ERR"
[ "$MS" -ge 4500 ] || fail "slow IMDS answered in ${MS} ms: the delay did not apply"
pass "IMDS replies of 1.5 s each with --timeout 8: served in ${MS} ms"

# --- IMDS answers, but too slowly for the deadline: exit 4, "too slow", at the deadline ---------------------
imds --delay 1.5
run --no-cache --timeout 4
[ "$RC" = 4 ] && [[ $ERR == *"too slow"* ]] || fail "too slow: rc=$RC: $ERR"
[ "$MS" -ge 3700 ] && [ "$MS" -le 6500 ] || fail "too slow: exit after ${MS} ms, want the 4 s deadline"
pass "IMDS replies of 1.5 s with --timeout 4 (3 replies need 4.5 s): exit 4 at the deadline (${MS} ms), says too slow"

# --- token PUT refused: IMDSv2 named, exit 4, at once ---------------------------------------------------
imds --mode token403
run --no-cache --timeout 5
[ "$RC" = 4 ] || fail "token 403: rc=$RC, want 4: $ERR"
[[ $ERR == *IMDSv2* && $ERR == *403* && $ERR == *"--http-endpoint enabled"* ]] || fail "token 403: message: $ERR"
[[ $ERR != *"could not reach IAM"* ]] || fail "token 403 reported as IAM unreachable: $ERR"
[ "$MS" -lt 3000 ] || fail "token 403 took ${MS} ms (not retryable: should fail at once)"
[ "$(grep -c . "$W/scopes.log")" = "$iam_before" ] || true
pass "token PUT refused (403): exit 4 in ${MS} ms: $(echo "$ERR" | tail -n 1)"

# --- doctor: one root cause, one FAIL -------------------------------------------------------------------
set +e
nsx env -i PATH=/usr/bin:/bin:/usr/sbin HOME=/nonexistent "$BIN" doctor --endpoint-url "http://127.0.0.1:$RELAY" \
    --timeout 3 --journal-socket none --syslog-socket none >"$W/doctor" 2>&1
set -e
grep -q '^FAIL credentials: .*IMDSv2 token request.*403' "$W/doctor" || fail "doctor: no credentials FAIL naming IMDSv2: $(cat "$W/doctor")"
! grep -qE '^FAIL (IAM|IAM keys):' "$W/doctor" || fail "doctor: IAM FAILed too for the same cause: $(cat "$W/doctor")"
pass "doctor with the token refused: one FAIL (credentials, naming IMDSv2), no IAM FAIL"

# --- credentials about to expire (5 s left): still used for this lookup -----------------------------------
imds --expires-in 5
run --no-cache --timeout 5
served || fail "credentials near expiry: rc=$RC: $ERR"
pass "instance-profile credentials 5 s from expiry: served in ${MS} ms"

# --- no instance profile ----------------------------------------------------------------------------------
imds --mode norole
run --no-cache --timeout 5
[ "$RC" = 4 ] && [[ $ERR == *"no instance profile"* ]] || fail "no role: rc=$RC: $ERR"
pass "no instance profile attached: exit 4 in ${MS} ms, says so"

# --- accepts, never answers (the container hop-limit symptom): exit 4 at the deadline -------------------
imds --mode hang
run --no-cache --timeout 3
[ "$RC" = 4 ] || fail "hang: rc=$RC: $ERR"
[ "$MS" -ge 2700 ] && [ "$MS" -le 6000 ] || fail "hang: exit after ${MS} ms, want the 3 s deadline"
[[ $ERR == *"hop-limit"* ]] || fail "hang: no hop-limit fix: $ERR"
pass "IMDS hangs on the token PUT: exit 4 at the deadline (${MS} ms), hop-limit fix named"

# --- nothing listening: retried until the deadline, not before ------------------------------------------
imds_stop
run --no-cache --timeout 3 -vv
[ "$RC" = 4 ] || fail "refused: rc=$RC: $ERR"
[ "$MS" -ge 2700 ] && [ "$MS" -le 6000 ] || fail "refused: exit after ${MS} ms, want the 3 s deadline"
[[ $ERR == *"unreachable"* ]] || fail "refused: $ERR"
tries=$(grep -c "IMDS PUT /latest/api/token" "$W/err" || true)
[ "$tries" -ge 2 ] || fail "refused: only $tries token attempt(s): no retry: $ERR"
pass "nothing listening on IMDS: $tries attempts, exit 4 at the deadline (${MS} ms)"

# --- blackholed: the address leaves lo and a route sends its packets into lo, where nobody takes them
# (not local, no forwarding): SYNs vanish, as behind a firewall's DROP. Exit 4 at the deadline.
blackhole() {
    nsx ip addr del 169.254.169.254/32 dev lo
    nsx ip route add 169.254.169.254/32 dev lo
}
unblackhole() {
    nsx ip route del 169.254.169.254/32 dev lo
    nsx ip addr add 169.254.169.254/32 dev lo
}
imds --bind-any
blackhole
run --no-cache --timeout 3
[ "$RC" = 4 ] || fail "blackhole: rc=$RC: $ERR"
[ "$MS" -ge 2700 ] && [ "$MS" -le 6000 ] || fail "blackhole: exit after ${MS} ms, want the 3 s deadline"
[[ $ERR == *"unreachable"* ]] || fail "blackhole: $ERR"
[ ! -s "$W/imds.log" ] || fail "blackhole: IMDS was reached: $(cat "$W/imds.log")"
pass "IMDS blackholed: exit 4 at the deadline (${MS} ms): $(echo "$ERR" | tail -n 1)"

# --- SYNs dropped for the first 1.5 s, then IMDS is back: retried and served ---------------------------
( sleep 1.5; unblackhole ) &
healer=$!
run --no-cache --timeout 6
wait "$healer"
served || fail "dropped SYNs: rc=$RC after ${MS} ms: $ERR"
[ "$MS" -ge 1400 ] || fail "dropped SYNs: served in ${MS} ms, before IMDS came back"
pass "first SYNs dropped for 1.5 s: retried and served in ${MS} ms"
blackhole

# --- a credentials file on a host without IMDS: no wait for IMDS, the default region ----------------------
test_credentials "$W/credentials"
run --no-cache --timeout 5 --credentials-file "$W/credentials"
served || fail "credentials file without IMDS: rc=$RC: $ERR"
[ "$MS" -lt 2000 ] || fail "credentials file without IMDS took ${MS} ms: waited for IMDS"
[ "$(scope)" = us-east-1 ] || fail "credentials file: signed for $(scope), want the default us-east-1"
pass "credentials file, IMDS blackholed: served in ${MS} ms, default region us-east-1, IMDS not asked"

# --- IMDS over IPv6 (fd00:ec2::254), 169.254.169.254 still blackholed. The IMDS client is the SDK's: it
# takes the IPv6 endpoint only from AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6 (or ..._ENDPOINT) in the
# environment or from ~/.aws/config, and sshd gives the command neither (HOME is the command user's
# /nonexistent): as sshd runs it, IMDS is always 169.254.169.254. README, Networks.
imds --ipv6
run --no-cache --timeout 3
[ "$RC" = 4 ] && [[ $ERR == *"169.254.169.254"*unreachable* ]] || fail "IPv6-only IMDS, no environment: rc=$RC: $ERR"
[ ! -s "$W/imds.log" ] || fail "IPv6 IMDS asked without the endpoint mode: $(cat "$W/imds.log")"
pass "IMDS only on fd00:ec2::254, run as sshd runs it: IPv4 IMDS asked, never IPv6; exit 4 at the deadline (${MS} ms)"
RUN_ENV=(AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6)
run --no-cache --timeout 5
RUN_ENV=()
served || fail "IPv6 IMDS with AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6: rc=$RC: $ERR"
[ "$(count 'PUT /latest/api/token 200')" = 1 ] && [ "$(wc -l <"$W/imds.log")" = 4 ] ||
    fail "IPv6 IMDS: want 4 requests: $(cat "$W/imds.log")"
[ "$(scope)" = eu-west-3 ] || fail "IPv6 IMDS: signed for $(scope), not IMDS's eu-west-3"
pass "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6 in the environment (manual runs): credentials and region from fd00:ec2::254, served in ${MS} ms"
imds_stop
RUN_ENV=(AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6)
run --no-cache --timeout 2
RUN_ENV=()
[ "$RC" = 4 ] && [[ $ERR == *"IMDS (fd00:ec2::254) is unreachable"* ]] || fail "IPv6 IMDS down: the message names another address: rc=$RC: $ERR"
pass "IPv6 endpoint mode with nothing listening: exit 4, the message names fd00:ec2::254"

echo "imds: ${PASSED:-0} checks passed"
