#!/usr/bin/env bash
# End to end: moto as IAM, the fault proxy in front of it, a private sshd on loopback configured by
# install.sh, and the real ssh client logging in. Needs root (it adds local users and runs sshd).
#
# usage: tests/e2e.sh STATIC_BINARY FAULTPROXY_BINARY MOTO_URL PYTHON
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
BIN=${1:?static binary}
PROXY_BIN=${2:?faultproxy binary}
MOTO_URL=${3:?moto url}
PY=${4:?python with boto3}
[ "$(id -u)" = 0 ] || fail "e2e needs root"

SSHD=$(command -v sshd || echo /usr/sbin/sshd)
[ -x "$SSHD" ] || fail "sshd not installed"
# sshd refuses a command below a world-writable directory (/tmp): use a root-owned 0755 one.
E=$(mktemp -d /var/lib/iak-e2e.XXXXXX)
chmod 0755 "$E"
SVC=iak-e2e
# Unique per run: the emulator may outlive one run.
ALICE=iakalice$$ BOB=iakbob$$ CAROL=iakcarol$$
# An IAM name Linux cannot hold, and its documented Linux name; a system account named like an IAM user.
MAPPED_IAM="iakm$$+ops@ex.io" MAPPED=iakm$$.plus.ops.at.ex.io SYSU=iaksys$$
# The image's default account (named here; found in cloud-init's config on a real image).
DEFU=iakdef$$
USERS=("$ALICE" "$BOB" "$CAROL" "$MAPPED" "$SYSU" "$DEFU")
SSHD_PID=
PROXY_PID=

cleanup() {
    set +e
    [ -n "$SSHD_PID" ] && kill "$SSHD_PID" 2>/dev/null
    [ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null
    "$HERE/../install.sh" --uninstall --user "$SVC" --sshd-config "$E/sshd_config" \
        --sshd-config-dir "$E/sshd_config.d" --bindir "$E/bin" --cache-dir "$E/cache" --state-dir "$E/state" --no-reload >/dev/null 2>&1
    for u in "${USERS[@]}"; do userdel "$u" 2>/dev/null; done
    [ -n "${KEEP_E2E:-}" ] && { echo "kept $E"; return; }
    rm -rf "$E"
}
trap cleanup EXIT

# --- IAM behind a proxy we can kill ("emulator stopped") ------------------------------------------------
PPORT=$(free_port)
start_proxy
IAM_URL=http://127.0.0.1:$PPORT

# --- sshd of our own ----------------------------------------------------------------------------------
PORT=$(free_port)
private_sshd_config "$PORT" "${USERS[@]}"
test_credentials "$E/credentials"
chmod 0640 "$E/credentials"   # the command user reads it through its group (set after install.sh)
# Root-owned config file: key options are read from it on every lookup (quotes cannot go in sshd_config).
: > "$E/iak.conf"

"$HERE/../install.sh" --binary "$BIN" --bindir "$E/bin" --user "$SVC" --cache-dir "$E/cache" --state-dir "$E/state" \
    --sshd-config "$E/sshd_config" --sshd-config-dir "$E/sshd_config.d" --no-reload \
    --endpoint-url "$IAM_URL" --credentials-file "$E/credentials" \
    --ttl 3 --negative-ttl 1 --max-stale 9 --timeout 2 --config "$E/iak.conf" --default-user "$DEFU"
chgrp "$(id -gn "$SVC")" "$E/credentials"
grep -q "^Include $E/sshd_config.d/\*.conf" "$E/sshd_config" || fail "install.sh did not add the Include line"
grep -q "^AuthorizedKeysCommandUser $SVC$" "$E/sshd_config.d/10-iam-authorized-keys.conf" || fail "drop-in user"
[ "$(stat -c '%U %a' "$E/cache")" = "$SVC 700" ] || fail "cache dir owner/mode: $(stat -c '%U %a' "$E/cache")"
[ "$(stat -c '%U %a' "$E/bin/iam-authorized-keys")" = "root 755" ] || fail "binary owner/mode"
[ "$(getent shadow "$SVC" | cut -d: -f2)" = '!' ] || [ "$(getent shadow "$SVC" | cut -d: -f2)" = '!*' ] ||
    fail "service user is not locked"
pass "install.sh set up binary, user, cache dir, drop-in and Include"

mkdir -p /run/sshd
"$SSHD" -t -f "$E/sshd_config" || fail "sshd -t"
"$SSHD" -f "$E/sshd_config" -E "$E/sshd.log"
wait_port "$PORT" || fail "sshd did not start: $(cat "$E/sshd.log")"
SSHD_PID=$(cat "$E/sshd.pid")

for u in "${USERS[@]}"; do
    [ "$u" = "$DEFU" ] && continue
    if [ "$u" = "$SYSU" ]; then sys=--system; else sys=; fi
    useradd $sys --no-create-home --home-dir / --shell /bin/sh "$u"
    usermod -p '*' "$u"   # '!' counts as locked with UsePAM no
done
[ "$(id -u "$SYSU")" -lt 1000 ] || fail "useradd --system gave $SYSU a UID >= 1000"
for k in alice stranger carol mapped sys; do ssh-keygen -q -t ed25519 -N '' -C "$k" -f "$E/$k"; done
iam create-user $ALICE
ALICE_KEY=$(iam upload $ALICE "$E/alice.pub")
iam create-user $CAROL
iam upload $CAROL "$E/carol.pub" >/dev/null

login() { ssh_login "$E/$1" "$2"; }  # login KEY USER

login alice $ALICE || fail "$ALICE with her active IAM key could not log in: $(tail -5 "$E/sshd.log")"
grep -q "Accepted publickey for $ALICE" "$E/sshd.log" || fail "sshd did not log the accepted key"
pass "login with an active IAM key"

# The default account logs in with its launch key pair from ~/.ssh/authorized_keys; an IAM user of the
# same name is never served it (no IAM call either); nobody else's authorized_keys counts.
mkdir -p "$E/home"
useradd --create-home --home-dir "$E/home/$DEFU" --shell /bin/sh "$DEFU"
usermod -p '*' "$DEFU"
ssh-keygen -q -t ed25519 -N '' -C launch -f "$E/launch"
ssh-keygen -q -t ed25519 -N '' -C defiam -f "$E/defiam"
install -d -m 0700 -o "$DEFU" -g "$DEFU" "$E/home/$DEFU/.ssh"
install -m 0600 -o "$DEFU" -g "$DEFU" "$E/launch.pub" "$E/home/$DEFU/.ssh/authorized_keys"
iam create-user "$DEFU"
iam upload "$DEFU" "$E/defiam.pub" >/dev/null
login launch "$DEFU" || fail "the default account could not log in with its authorized_keys key: $(tail -5 "$E/sshd.log")"
! login defiam "$DEFU" || fail "an IAM user named like the default account logged in as it"
curl -fsS "$IAM_URL/__proxy/counts" > "$E/counts" || fail "proxy counts"
grep -q " $DEFU " "$E/counts" && fail "IAM was asked about the default account $DEFU"
cp "$E/launch.pub" "$E/home/$DEFU/.ssh/authorized_keys2"
chown "$DEFU:" "$E/home/$DEFU/.ssh/authorized_keys2"
: > "$E/home/$DEFU/.ssh/authorized_keys"
! login launch "$DEFU" || fail "authorized_keys2 counted for the default account (only .ssh/authorized_keys should)"
pass "default account: logs in with ~/.ssh/authorized_keys, never served from IAM (no IAM call), only that file"

# The command exits 0 for sshd on success, run exactly as sshd runs it.
out=$(cd / && runuser -u "$SVC" -- env -i PATH=/usr/bin:/bin HOME=/nonexistent \
    "$E/bin/iam-authorized-keys" --endpoint-url "$IAM_URL" --credentials-file "$E/credentials" \
    --cache-dir "$E/cache" -- $ALICE) || fail "command exited $? as the AuthorizedKeysCommandUser"
[ "$(echo "$out" | awk '{print $1" "$2}')" = "$(awk '{print $1" "$2}' "$E/alice.pub")" ] || fail "served key differs"
pass "command exits 0 and prints the key as the AuthorizedKeysCommandUser"

# doctor, as the admin runs it, on this sandbox: all good, then three deliberate faults, each named.
doctor() { "$E/bin/iam-authorized-keys" doctor --sshd-config "$E/sshd_config" "$@"; }
doctor $ALICE > "$E/doctor.out" 2>&1 || fail "doctor on a good install: $(cat "$E/doctor.out")"
sed "s/^/    /" "$E/doctor.out"
grep -q "^OK   IAM keys: APKA" "$E/doctor.out" && grep -q "^OK   command path" "$E/doctor.out" &&
    grep -q "^OK   command user: $SVC" "$E/doctor.out" || fail "doctor output: $(cat "$E/doctor.out")"
! grep -q "^FAIL" "$E/doctor.out" || fail "doctor failed a check: $(cat "$E/doctor.out")"
grep -q "^OK   options: checking with the options sshd passes" "$E/doctor.out" || fail "doctor options: $(cat "$E/doctor.out")"
# Options given to doctor that sshd's command line sets otherwise are named as not used.
doctor --allowed-groups-tag ssh-groups --ttl 1h $ALICE > "$E/doctor.out" 2>&1 || fail "doctor with own options: $(cat "$E/doctor.out")"
grep -q "^WARN options: .*yours differ and are not used: --ttl/--negative-ttl/--max-stale, --allowed-groups-tag$" "$E/doctor.out" ||
    fail "doctor did not name its ignored options: $(cat "$E/doctor.out")"
chmod o+w "$E/bin"
if doctor > "$E/doctor.out" 2>&1; then fail "doctor passed a world-writable directory"; fi
grep -q "^FAIL command path: sshd will refuse .*$E/bin is group- or world-writable" "$E/doctor.out" ||
    fail "doctor did not name the writable directory: $(cat "$E/doctor.out")"
chmod o-w "$E/bin"
chown nobody "$E/cache"
doctor --json > "$E/doctor.json" 2>/dev/null && fail "doctor passed a cache dir with the wrong owner"
"$PY" - "$E/doctor.json" "$E/cache" <<'PY' || fail "doctor --json: $(cat "$E/doctor.json")"
import json, sys
d = json.load(open(sys.argv[1]))
bad = [c for c in d["checks"] if c["status"] == "FAIL"]
assert not d["ok"] and len(bad) == 1 and bad[0]["check"] == "cache", bad
assert sys.argv[2] in bad[0]["detail"] and "chown" in bad[0]["fix"], bad
PY
chown "$SVC" "$E/cache"
mv "$E/sshd_config.d/10-iam-authorized-keys.conf" "$E/dropin.away"
if doctor > "$E/doctor.out" 2>&1; then fail "doctor passed a missing drop-in"; fi
grep -q "^FAIL drop-in: .*no AuthorizedKeysCommand" "$E/doctor.out" || fail "doctor: $(cat "$E/doctor.out")"
mv "$E/dropin.away" "$E/sshd_config.d/10-iam-authorized-keys.conf"
# An sshd unit whose command line carries another command (EC2 Instance Connect's override): its -o
# options beat every file, so doctor counts them; install.sh's zz- unit drop-in puts ours back.
U=$E/units; mkdir -p "$U/usr/lib/systemd/system/ssh.service.d"
printf '[Service]\nExecStart=/usr/sbin/sshd -D $SSHD_OPTS\n' > "$U/usr/lib/systemd/system/ssh.service"
printf '[Service]\nExecStart=\nExecStart=/usr/sbin/sshd -D -o "AuthorizedKeysCommand /usr/bin/true %%%%u" -o "AuthorizedKeysCommandUser nobody" $SSHD_OPTS\n' \
    > "$U/usr/lib/systemd/system/ssh.service.d/ec2-instance-connect.conf"
if doctor --unit-root "$U" > "$E/doctor.out" 2>&1; then fail "doctor passed a unit override with another command"; fi
grep -q "^OK   sshd unit: ssh.service passes -o \"AuthorizedKeysCommand /usr/bin/true %u\"" "$E/doctor.out" &&
    grep -q "^FAIL drop-in: sshd runs another AuthorizedKeysCommand: /usr/bin/true %u" "$E/doctor.out" ||
    fail "doctor did not count the unit's -o options: $(cat "$E/doctor.out")"
mkdir -p "$U/etc/systemd/system/ssh.service.d"
printf '[Service]\nExecStart=\nExecStart=/usr/sbin/sshd -D $SSHD_OPTS\n' > "$U/etc/systemd/system/ssh.service.d/zz-iam-authorized-keys.conf"
doctor --unit-root "$U" > "$E/doctor.out" 2>&1 || fail "doctor with our unit drop-in: $(cat "$E/doctor.out")"
# sshd's command reads a --config file the binary refuses (an operator's typo in a value): one FAIL that
# names the file, whose fix is the file; no further checks with options sshd does not use.
echo 'name-case = shouty' > "$E/iak.conf"
if doctor > "$E/doctor.out" 2>&1; then fail "doctor passed a refused --config file"; fi
grep -q "^FAIL command options: every key lookup fails: .*config file $E/iak.conf: .*shouty" "$E/doctor.out" &&
    grep -q "^     fix: correct $E/iak.conf " "$E/doctor.out" && [ "$(grep -c '^FAIL' "$E/doctor.out")" = 1 ] ||
    fail "doctor on a refused --config file: $(cat "$E/doctor.out")"
: > "$E/iak.conf"
doctor > "$E/doctor.out" 2>&1 || fail "doctor after repairs: $(cat "$E/doctor.out")"
pass "doctor: clean install passes; world-writable dir, wrong cache owner, missing drop-in, another command on the sshd unit's command line, a refused --config file each named; options given to doctor that sshd sets otherwise are named as not used"

# Access policy through the real sshd: a mapped name, a system account, restrict.
iam create-user "$MAPPED_IAM"
iam upload "$MAPPED_IAM" "$E/mapped.pub" >/dev/null
login mapped "$MAPPED" || fail "$MAPPED (IAM $MAPPED_IAM) could not log in: $(tail -5 "$E/sshd.log")"
pass "login as mapped name $MAPPED for IAM user $MAPPED_IAM"
iam create-user "$SYSU"
iam upload "$SYSU" "$E/sys.pub" >/dev/null
! login sys "$SYSU" || fail "system account $SYSU (UID $(id -u "$SYSU")) logged in with an IAM key"
curl -fsS "$IAM_URL/__proxy/counts" > "$E/counts" || fail "proxy counts"
grep -q " $SYSU " "$E/counts" && fail "IAM was asked about system account $SYSU"
pass "a system account named like an IAM user is refused without an IAM call"

fwd() {  # stdio forwarding to sshd's own port: the banner comes back unless forwarding is refused
    timeout 20 ssh -F /dev/null -i "$E/alice" -p "$PORT" -o BatchMode=yes -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes -o LogLevel=ERROR \
        -W "127.0.0.1:$PORT" "$ALICE@127.0.0.1" </dev/null 2>"$E/fwd.err" | head -c 7 || true
}
[ "$(fwd)" = "SSH-2.0" ] || fail "forwarding without key options did not work: $(cat "$E/fwd.err")"
echo 'key-options = restrict,from="127.0.0.1"' > "$E/iak.conf"
[ "$(fwd)" = "" ] || fail "forwarding worked with key option restrict"
grep -qi "prohibited\|open failed\|forwarding failed" "$E/fwd.err" || fail "no refusal from sshd: $(cat "$E/fwd.err")"
login alice $ALICE || fail "restrict should still allow a plain login"
: > "$E/iak.conf"
pass "key option restrict: port forwarding refused, login allowed"

! login stranger $ALICE || fail "a key not in IAM logged in"
pass "a key not in IAM is refused"
! login alice $BOB || fail "a user with no IAM record logged in"
pass "a user with no IAM record is refused"

iam status $ALICE "$ALICE_KEY" Inactive
sleep 4   # past the 3 s TTL
! login alice $ALICE || fail "a deactivated key still logged in after the TTL"
pass "a deactivated key is refused once the TTL has passed"

# Every fault the proxy can inject, through the real sshd: within max-stale the cached answer logs in,
# beyond it the login is refused; neither waits much past the 2 s deadline; the command never crashes.
login carol $CAROL || fail "$CAROL could not log in"
age_record() {  # age_record USER SECONDS: make the cached answer that old (owner and mode kept)
    "$PY" - "$E/cache/$1.json" "$2" <<'PY'
import json, sys, time
p, age = sys.argv[1], int(sys.argv[2])
r = json.load(open(p))
r["fetched_at"] = int(time.time()) - age
with open(p, "r+") as f:
    f.seek(0); f.truncate(); f.write(json.dumps(r))
PY
}
now_ms() { date +%s%3N; }
for fault in throttle status=503 hang reset status=200 status=500; do
    curl -fsS "$IAM_URL/__proxy/set?$fault" >/dev/null
    age_record $CAROL 3   # expired (TTL 3 s); a hang costs 2 x 2 s, still under max-stale 9 s
    t0=$(now_ms)
    login carol $CAROL || fail "fault $fault: no login from the cache within max-stale: $(tail -5 "$E/sshd.log")"
    t1=$(now_ms)
    age_record $CAROL 20
    ! login carol $CAROL 2>/dev/null || fail "fault $fault: logged in with an answer older than max-stale"
    t2=$(now_ms)
    [ $((t1 - t0)) -lt 10000 ] && [ $((t2 - t1)) -lt 10000 ] ||
        fail "fault $fault: login took $((t1 - t0)) ms / refusal $((t2 - t1)) ms (deadline 2 s per lookup)"
    echo "    $fault: stale login $((t1 - t0)) ms, refusal $((t2 - t1)) ms"
done
curl -fsS "$IAM_URL/__proxy/clear" >/dev/null
! grep -qi "killed by signal\|core dumped" "$E/sshd.log" || fail "the command crashed: $(grep -i signal "$E/sshd.log")"
grep -q "AuthorizedKeysCommand .* failed, status 4" "$E/sshd.log" || fail "no fail-closed exit status 4 in sshd's log"
login carol $CAROL || fail "$CAROL could not log in after the faults cleared"
pass "faults (throttle, 503, hang, reset, malformed 200, 500) through sshd: stale within max-stale, refused beyond, bounded, no crash"

# Emulator stopped: within max-stale the cached answer logs in; past it, nothing does.
login carol $CAROL || fail "$CAROL could not log in"
kill "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true; PROXY_PID=
sleep 4   # expired (TTL 3 s), younger than max-stale (9 s)
login carol $CAROL || fail "stale answer within max-stale was not served: $(tail -5 "$E/sshd.log")"
pass "IAM down: login from the cache within max-stale"
sleep 6   # now older than max-stale
! login carol $CAROL || fail "logged in past max-stale with IAM down"
pass "IAM down: refused past max-stale"
start_proxy
login carol $CAROL || fail "$CAROL could not log in once IAM was back"
pass "IAM back: login works again"

! grep -q "Unsafe AuthorizedKeysCommand" "$E/sshd.log" || fail "sshd called the command unsafe"
pass "sshd found the command path safe"

kill "$SSHD_PID"; SSHD_PID=
"$HERE/../install.sh" --uninstall --user "$SVC" --sshd-config "$E/sshd_config" --state-dir "$E/state" --no-reload ||
    fail "uninstall failed"
! getent passwd "$SVC" >/dev/null || fail "uninstall left the service user"
[ ! -e "$E/bin/iam-authorized-keys" ] && [ ! -e "$E/cache" ] && [ ! -e "$E/sshd_config.d" ] ||
    fail "uninstall left files: $(ls "$E")"
! grep -q "Include $E/sshd_config.d" "$E/sshd_config" || fail "uninstall left the Include line"
[ ! -e "$E/state/$SVC.manifest" ] || fail "uninstall left its manifest"
[ ! -e /var/lib/iam-authorized-keys/$SVC.manifest ] || fail "the test's manifest went to the host's state directory"
pass "uninstall removes binary, cache, drop-in, Include line and user"

echo "e2e: ${PASSED} passed, 0 failed"
