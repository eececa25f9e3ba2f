#!/usr/bin/env bash
# install.sh into sandbox trees: what an image gets, idempotency, uninstall, rollback, refusals.
#
# usage: tests/install_test.sh STATIC_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
BIN=${1:?static binary}
INSTALL=$HERE/../install.sh
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

snapshot() {  # every path with type, mode, owner, size, content hash; with a 2nd argument, mtimes too
    local fmt='%p %y %m %u %s\n'
    [ -n "${2:-}" ] && fmt='%p %y %m %u %s %T@\n'
    (cd "$1" && find . -printf "$fmt" | sort && find . -type f -exec sha256sum {} + | sort)
}

# sandbox_accounts TREE: /etc/passwd, group, shadow, gshadow of a minimal Debian-like system, from fixed
# content (never the host's: the host may have its own installation, and its service user, already).
# The pristine copies stay in $W/accounts for comparisons.
sandbox_accounts() {
    mkdir -p "$W/accounts" "$1/etc"
    printf '%s\n' 'root:x:0:0:root:/root:/bin/bash' 'daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin' \
        'sshd:x:100:65534::/run/sshd:/usr/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin' \
        'admin:x:1000:1000:Debian:/home/admin:/bin/bash' > "$W/accounts/passwd"
    printf '%s\n' 'root:x:0:' 'daemon:x:1:' 'sudo:x:27:admin' 'nogroup:x:65534:' 'admin:x:1000:' > "$W/accounts/group"
    printf '%s\n' 'root:*:20000:0:99999:7:::' 'daemon:*:20000:0:99999:7:::' 'sshd:!:20000::::::' \
        'nobody:*:20000:0:99999:7:::' 'admin:!:20000:0:99999:7:::' > "$W/accounts/shadow"
    printf '%s\n' 'root:*::' 'daemon:*::' 'sudo:*::admin' 'nogroup:*::' 'admin:!::' > "$W/accounts/gshadow"
    local f
    for f in passwd group; do install -m 0644 "$W/accounts/$f" "$1/etc/$f"; done
    for f in shadow gshadow; do install -m 0640 "$W/accounts/$f" "$1/etc/$f"; done
}

# 1. An empty tree (an image pipeline staging dir): exactly these files, nothing user-specific.
T=$W/empty; mkdir "$T"
"$INSTALL" --root "$T" --binary "$BIN" 2>"$W/log1" || fail "install into empty tree: $(cat "$W/log1")"
(cd "$T" && find . -mindepth 1 \( -type f -o -type l \) | sort) > "$W/files"
image_files > "$W/want"
echo "an image tree after install.sh --root holds:"; sed 's/^/    /' "$W/files"
diff -u "$W/want" "$W/files" || fail "unexpected files in the image tree"
grep -q '^\.TH iam-authorized-keys 8' "$T/usr/local/share/man/man8/iam-authorized-keys.8" || fail "man page"
[ -d "$T/var/cache/iam-authorized-keys" ] && [ -z "$(ls -A "$T/var/cache/iam-authorized-keys")" ] ||
    fail "cache dir missing or not empty"
[ "$(stat -c %a "$T/var/cache/iam-authorized-keys")" = 700 ] || fail "cache dir mode"
! find "$T" -name 'authorized_keys*' -o -name '*.json' -o -name 'credentials' | grep -q . ||
    fail "keys, records or credentials in the image"
grep -q "^AuthorizedKeysCommand /usr/local/bin/iam-authorized-keys --uid %U -- %u %f %t$" \
    "$T/etc/ssh/sshd_config.d/50-iam-authorized-keys.conf" || fail "drop-in command line"
grep -q "systemd-sysusers" "$W/log1" || fail "no note about the user being created at boot"
pass "install into an empty tree writes only binary, man page, completions, drop-in, sysusers/tmpfiles entries and manifest"

"$INSTALL" --root "$T" --uninstall 2>/dev/null
[ -z "$(find "$T" -mindepth 1)" ] || fail "uninstall left: $(find "$T" -mindepth 1)"
pass "uninstall empties the tree again"

# 2. A tree like a real root: existing sshd_config without Include, /etc/passwd, flags.
T=$W/root; mkdir -p "$T/etc/ssh" "$T/usr/sbin"
sandbox_accounts "$T"
printf 'Port 22\nPasswordAuthentication no\n' > "$T/etc/ssh/sshd_config"
before=$(snapshot "$T")
"$INSTALL" --root "$T" --binary "$BIN" --ttl 10m --max-stale 2h --region eu-west-1 2>"$W/log2" ||
    fail "install into root-like tree: $(cat "$W/log2")"
head -2 "$T/etc/ssh/sshd_config" | grep -q "^Include /etc/ssh/sshd_config.d/\*.conf$" || fail "Include not first"
grep -q "^AuthorizedKeysCommand /usr/local/bin/iam-authorized-keys --ttl 10m --max-stale 2h --region eu-west-1 --uid %U -- %u %f %t$" \
    "$T/etc/ssh/sshd_config.d/50-iam-authorized-keys.conf" || fail "flags not in the drop-in"
grep -q "^iam-authorized-keys:" "$T/etc/passwd" || fail "user not created in the tree"
[ "$(stat -c %u "$T/var/cache/iam-authorized-keys")" = "$(awk -F: '$1=="iam-authorized-keys"{print $3}' "$T/etc/passwd")" ] ||
    fail "cache dir not owned by the service user"
pass "install adds Include at the top, flags to the drop-in, the user to the tree"

first=$(snapshot "$T" mtime)
"$INSTALL" --root "$T" --binary "$BIN" --ttl 10m --max-stale 2h --region eu-west-1 2>/dev/null
[ "$first" = "$(snapshot "$T" mtime)" ] || { diff <(echo "$first") <(snapshot "$T" mtime) >&2; fail "second install changed the tree"; }
pass "a second identical install changes nothing"

"$INSTALL" --root "$T" --uninstall 2>/dev/null
# userdel rewrites the account files (and leaves *- backups): compare those by content instead.
accounts='etc/\(passwd\|group\|shadow\|gshadow\)-\?\( \|$\)'
[ "$(echo "$before" | grep -v "$accounts")" = "$(snapshot "$T" | grep -v "$accounts")" ] ||
    { diff <(echo "$before") <(snapshot "$T") >&2; fail "uninstall did not restore the tree"; }
for f in passwd group shadow gshadow; do
    cmp -s "$W/accounts/$f" "$T/etc/$f" || fail "/etc/$f differs after uninstall: $(diff "$W/accounts/$f" "$T/etc/$f")"
done
! grep -q "^iam-authorized-keys:" "$T/etc/passwd" || fail "uninstall left the user"
pass "uninstall restores sshd_config and removes the user it created"

# Flatcar: read-only /usr, so the binary goes to /opt/bin and the drop-in points there.
T=$W/flatcar; mkdir -p "$T/etc/ssh"
printf 'ID=flatcar\nNAME="Flatcar Container Linux by Kinvolk"\n' > "$T/etc/os-release"
printf 'Port 22\n' > "$T/etc/ssh/sshd_config"
"$INSTALL" --root "$T" --binary "$BIN" 2>/dev/null || fail "install into a Flatcar tree"
[ -x "$T/opt/bin/iam-authorized-keys" ] && [ ! -e "$T/usr/local/bin/iam-authorized-keys" ] || fail "not in /opt/bin"
[ -f "$T/opt/share/man/man8/iam-authorized-keys.8" ] && [ ! -e "$T/usr" ] || fail "Flatcar: docs must stay out of read-only /usr"
grep -q "^AuthorizedKeysCommand /opt/bin/iam-authorized-keys --uid %U -- %u %f %t$" "$T/etc/ssh/sshd_config.d/50-iam-authorized-keys.conf" ||
    fail "Flatcar drop-in does not point at /opt/bin"
"$INSTALL" --root "$T" --uninstall 2>/dev/null
pass "Flatcar tree: binary in /opt/bin, drop-in points there"

# 3. sshd -t failure rolls back: a drop-in sshd rejects (bad flag value sneaks no further than safe_value,
#    so break the template copy instead).
T=$W/rollback; mkdir -p "$T/etc/ssh"
printf 'Port 22\n' > "$T/etc/ssh/sshd_config"
mkdir "$W/src"; cp -r "$HERE/../install.sh" "$HERE/../sshd_config.d" "$W/src/"
echo "NoSuchSshdOption yes" >> "$W/src/sshd_config.d/50-iam-authorized-keys.conf"
before=$(snapshot "$T")
if "$W/src/install.sh" --root "$T" --binary "$BIN" 2>"$W/log3"; then fail "install with a broken drop-in succeeded"; fi
grep -q "rolling back" "$W/log3" || fail "no rollback message: $(cat "$W/log3")"
[ "$before" = "$(snapshot "$T")" ] || { diff <(echo "$before") <(snapshot "$T") >&2; fail "rollback left changes"; }
pass "sshd -t failure rolls every change back"

# Review findings (#13): a failed re-run puts back what it overwrote; uninstall removes only its own lines;
# an Include read after a conflicting setting is refused (sshd -T decides, not the look of the file).
T=$W/rerun; mkdir -p "$T/etc/ssh"; sandbox_accounts "$T"
printf 'Port 22\n' > "$T/etc/ssh/sshd_config"
"$INSTALL" --root "$T" --binary "$BIN" --ttl 10m 2>/dev/null || fail "first install of the re-run test"
dropin=$(ls "$T"/etc/ssh/sshd_config.d/*iam-authorized-keys.conf)
cp "$dropin" "$W/dropin.before"
before=$(snapshot "$T")
cp "$BIN" "$W/bin2"; printf 'another build\n' >> "$W/bin2"   # still runs: bytes after the ELF image
"$W/bin2" --version >/dev/null || fail "the modified binary does not run"
mkdir "$W/src2"; cp -r "$HERE/../install.sh" "$HERE/../sshd_config.d" "$W/src2/"
echo "NoSuchSshdOption yes" >> "$(ls "$W/src2/sshd_config.d/"*.conf)"
if "$W/src2/install.sh" --root "$T" --binary "$W/bin2" --ttl 20m 2>"$W/log5"; then fail "re-run with a broken drop-in succeeded"; fi
grep -q "rolling back" "$W/log5" || fail "no rollback message: $(cat "$W/log5")"
cmp -s "$W/dropin.before" "$dropin" || fail "rollback kept the new drop-in: $(diff "$W/dropin.before" "$dropin")"
cmp -s "$BIN" "$T/usr/local/bin/iam-authorized-keys" || fail "rollback kept the new binary"
[ "$before" = "$(snapshot "$T")" ] || { diff <(echo "$before") <(snapshot "$T") >&2; fail "rollback left changes"; }
pass "a failed re-run (new flags, new binary, sshd -t fails) puts back the previous drop-in and binary byte for byte"

T=$W/marker; mkdir -p "$T/etc/ssh"
printf 'Port 22\n' > "$T/etc/ssh/sshd_config"
"$INSTALL" --root "$T" --binary "$BIN" 2>/dev/null || fail "install for the uninstall-marker test"
sed -i -e '/^# Added by iam-authorized-keys/a PermitRootLogin no' \
    -e '/^Include \/etc\/ssh\/sshd_config.d\/\*\.conf$/a MaxAuthTries 3' "$T/etc/ssh/sshd_config"
"$INSTALL" --root "$T" --uninstall 2>/dev/null || fail "uninstall for the marker test"
[ "$(cat "$T/etc/ssh/sshd_config")" = "$(printf 'PermitRootLogin no\nMaxAuthTries 3\nPort 22')" ] ||
    fail "uninstall did not remove exactly its own two lines: $(cat "$T/etc/ssh/sshd_config")"
pass "uninstall removes only its marker and Include lines (an admin's lines right after them survive)"

for setting in "AuthorizedKeysFile .ssh/authorized_keys" "AuthorizedKeysCommand /usr/bin/other-keys %u"; do
    T=$W/order; rm -rf "$T"; mkdir -p "$T/etc/ssh"
    printf 'Port 22\n%s\nAuthorizedKeysCommandUser nobody\nInclude /etc/ssh/sshd_config.d/*.conf\n' "$setting" > "$T/etc/ssh/sshd_config"
    before=$(snapshot "$T")
    if "$INSTALL" --root "$T" --binary "$BIN" 2>"$W/log6"; then
        fail "accepted an Include read after '$setting' (sshd -T: $(sshd -T -f "$T/etc/ssh/sshd_config" 2>&1 | grep -i authorizedkeys))"
    fi
    grep -qF "$T/etc/ssh/sshd_config:2: $setting" "$W/log6" || fail "the refusal does not name the line that wins: $(cat "$W/log6")"
    [ "$before" = "$(snapshot "$T")" ] || { diff <(echo "$before") <(snapshot "$T") >&2; fail "refused install left changes"; }
done
pass "an Include read after a conflicting AuthorizedKeysFile/AuthorizedKeysCommand is refused, naming file:line, nothing left"

# 4. Refusals say what to fix.
for args in "--ttl 5%u" "--user root" "--cache-dir relative" "--bogus" "--region a\"b"; do
    # shellcheck disable=SC2086
    if "$INSTALL" --root "$W/empty" --binary "$BIN" $args 2>"$W/err"; then fail "accepted: $args"; fi
    [ -s "$W/err" ] || fail "no message for: $args"
done
[ -z "$(find "$W/empty" -mindepth 1)" ] || fail "a refused install wrote files"
"$INSTALL" --help | grep -q -- "--uninstall" || fail "--help"
pass "bad options are refused before anything is written"

echo "install: ${PASSED} passed, 0 failed"
