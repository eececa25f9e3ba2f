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
    local fmt='%p %y %m %U %G %s\n'   # numeric owner: names would come from the host's /etc/passwd
    [ -n "${2:-}" ] && fmt='%p %y %m %U %G %s %T@\n'
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
    "$T/etc/ssh/sshd_config.d/10-iam-authorized-keys.conf" || fail "drop-in command line"
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
    "$T/etc/ssh/sshd_config.d/10-iam-authorized-keys.conf" || fail "flags not in the drop-in"
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
# Flatcar's own sshd_config (Gentoo's) quotes its Include; it must be found, not doubled.
printf 'Include "/etc/ssh/sshd_config.d/*.conf"\nPort 22\nSubsystem sftp internal-sftp\n' > "$T/etc/ssh/sshd_config"
flatcar_config=$(cat "$T/etc/ssh/sshd_config")
"$INSTALL" --root "$T" --binary "$BIN" 2>/dev/null || fail "install into a Flatcar tree"
[ "$(cat "$T/etc/ssh/sshd_config")" = "$flatcar_config" ] || fail "Flatcar: the quoted Include was not recognised: $(cat "$T/etc/ssh/sshd_config")"
[ -x "$T/opt/bin/iam-authorized-keys" ] && [ ! -e "$T/usr/local/bin/iam-authorized-keys" ] || fail "not in /opt/bin"
[ -f "$T/opt/share/man/man8/iam-authorized-keys.8" ] && [ ! -e "$T/usr" ] || fail "Flatcar: docs must stay out of read-only /usr"
grep -q "^AuthorizedKeysCommand /opt/bin/iam-authorized-keys --deny-user core --uid %U -- %u %f %t$" "$T/etc/ssh/sshd_config.d/10-iam-authorized-keys.conf" ||
    fail "Flatcar drop-in does not point at /opt/bin (or core is not denied): $(cat "$T/etc/ssh/sshd_config.d/10-iam-authorized-keys.conf")"
grep -qx "Match User core" "$T/etc/ssh/sshd_config.d/10-iam-authorized-keys.conf" || fail "Flatcar: no Match block for core"
"$INSTALL" --root "$T" --uninstall 2>/dev/null
pass "Flatcar tree: its quoted Include recognised (sshd_config untouched), binary in /opt/bin, drop-in points there; core keeps its authorized_keys and is never served from IAM"

# 3. sshd -t failure rolls back: a drop-in sshd rejects (bad flag value sneaks no further than safe_value,
#    so break the template copy instead).
T=$W/rollback; mkdir -p "$T/etc/ssh"
printf 'Port 22\n' > "$T/etc/ssh/sshd_config"
mkdir "$W/src"; cp -r "$HERE/../install.sh" "$HERE/../sshd_config.d" "$W/src/"
echo "NoSuchSshdOption yes" >> "$W/src/sshd_config.d/10-iam-authorized-keys.conf"
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

# 4. What sshd will run: the sshd systemd unit (ExecStart= and its -o options, merged as systemd does).
unit_tree() {  # unit_tree TREE: a Debian-like sshd unit: ssh.service in /usr/lib, alias sshd.service in /etc
    mkdir -p "$1/usr/lib/systemd/system" "$1/etc/systemd/system" "$1/etc/default"
    cat > "$1/usr/lib/systemd/system/ssh.service" <<'UNIT'
[Unit]
Description=OpenBSD Secure Shell server

[Service]
EnvironmentFile=-/etc/default/ssh
ExecStartPre=/usr/sbin/sshd -t
ExecStart=/usr/sbin/sshd -D $SSHD_OPTS
ExecReload=/bin/kill -HUP $MAINPID

[Install]
Alias=sshd.service
UNIT
    ln -s /usr/lib/systemd/system/ssh.service "$1/etc/systemd/system/sshd.service"
    printf '# Options to pass to sshd\nSSHD_OPTS=\n' > "$1/etc/default/ssh"
}
eic_dropin() {  # eic_dropin TREE: the unit override EC2 Instance Connect's Debian/Ubuntu package installs
    mkdir -p "$1/usr/lib/systemd/system/ssh.service.d"
    cat > "$1/usr/lib/systemd/system/ssh.service.d/ec2-instance-connect.conf" <<'UNIT'
[Service]
ExecStart=
ExecStart=/usr/sbin/sshd -D -o "AuthorizedKeysCommand /usr/share/ec2-instance-connect/eic_run_authorized_keys %%u %%f" -o "AuthorizedKeysCommandUser ec2-instance-connect" $SSHD_OPTS
UNIT
}
unit_of() { "$INSTALL" --root "$1" --sshd-unit; }
# same_order TREE: install.sh reads the unit's files in the order systemd's own code does (systemd-analyze
# cat-config: the fragment, then drop-ins by file name, /etc hiding /run and /usr/lib; a drop-in masked
# with /dev/null contributes nothing). Alias drop-in directories are not covered by that tool.
command -v systemd-analyze >/dev/null || fail "systemd-analyze missing (Debian package systemd)"
same_order() {
    local sys ours
    sys=$(systemd-analyze --root="$1" cat-config systemd/system/ssh.service 2>/dev/null | sed -n "s|^# $1||p" |
        while read -r f; do [ "$(readlink "$1$f")" = /dev/null ] || echo "$f"; done)
    ours=$(unit_of "$1" | sed -n 's/^\(fragment\|dropin\) //p')
    [ -n "$sys" ] && [ "$sys" = "$ours" ] || fail "unit file order differs from systemd's:
systemd-analyze: $sys
install.sh:      $ours"
}
EIC_CMD='option AuthorizedKeysCommand /usr/share/ec2-instance-connect/eic_run_authorized_keys %u %f'
EIC_USER='option AuthorizedKeysCommandUser ec2-instance-connect'

U=$W/units; mkdir "$U"
T=$U/none; mkdir -p "$T"
[ "$(unit_of "$T")" = "unit none" ] || fail "a tree without units: $(unit_of "$T")"
T=$U/debian; unit_tree "$T"
unit_of "$T" > "$W/u"
grep -qx "unit ssh.service" "$W/u" && grep -qx "alias sshd.service" "$W/u" &&
    grep -qx 'execstart /usr/sbin/sshd -D $SSHD_OPTS' "$W/u" && grep -qx "config /etc/ssh/sshd_config" "$W/u" &&
    ! grep -q "^option" "$W/u" || fail "stock Debian unit: $(cat "$W/u")"
same_order "$T"
eic_dropin "$T"
same_order "$T"
unit_of "$T" > "$W/u"
grep -qx "dropin /usr/lib/systemd/system/ssh.service.d/ec2-instance-connect.conf" "$W/u" &&
    grep -qx "execstart-from /usr/lib/systemd/system/ssh.service.d/ec2-instance-connect.conf" "$W/u" &&
    grep -qxF "$EIC_CMD" "$W/u" && grep -qxF "$EIC_USER" "$W/u" && [ "$(grep -c '^option' "$W/u")" = 2 ] ||
    fail "EIC's override (ExecStart= reset, %% unescaped, quoted -o words): $(cat "$W/u")"
# $SSHD_OPTS from the EnvironmentFile splits into words.
echo 'SSHD_OPTS="-o LogLevel=VERBOSE -oMaxAuthTries=3"' >> "$T/etc/default/ssh"
unit_of "$T" > "$W/u"
grep -qx "option LogLevel=VERBOSE" "$W/u" && grep -qx "option MaxAuthTries=3" "$W/u" || fail "\$SSHD_OPTS: $(cat "$W/u")"
# EnvironmentFile= overrides Environment= (systemd.exec(5)); without the file, Environment= counts.
mkdir -p "$T/etc/systemd/system/ssh.service.d"
printf '[Service]\nEnvironment="SSHD_OPTS=-o Banner=/from-environment"\n' > "$T/etc/systemd/system/ssh.service.d/10-env.conf"
unit_of "$T" > "$W/u"
grep -qx "option LogLevel=VERBOSE" "$W/u" && ! grep -q "from-environment" "$W/u" || fail "Environment= beat EnvironmentFile=: $(cat "$W/u")"
same_order "$T"
mv "$T/etc/default/ssh" "$W/default-ssh"
unit_of "$T" > "$W/u"
grep -qx "option Banner=/from-environment" "$W/u" || fail "Environment= ignored without the file: $(cat "$W/u")"
mv "$W/default-ssh" "$T/etc/default/ssh"; rm "$T/etc/systemd/system/ssh.service.d/10-env.conf"
# Same file name in /etc hides the one in /usr/lib; a drop-in sorting later (any directory) wins.
mkdir -p "$T/etc/systemd/system/ssh.service.d" "$T/run/systemd/system/sshd.service.d"
printf '[Service]\nExecStart=\nExecStart=/usr/sbin/sshd -D -o "Banner none"\n' > "$T/etc/systemd/system/ssh.service.d/ec2-instance-connect.conf"
unit_of "$T" > "$W/u"
grep -qx 'option Banner none' "$W/u" && ! grep -q eic_run "$W/u" || fail "/etc did not hide /usr/lib's drop-in: $(cat "$W/u")"
mkdir -p "$T/run/systemd/system/ssh.service.d"; printf '[Service]\n' > "$T/run/systemd/system/ssh.service.d/aa-early.conf"
same_order "$T"
rm "$T/run/systemd/system/ssh.service.d/aa-early.conf"
printf '[Service]\nExecStart=\nExecStart=/usr/sbin/sshd -D -f /etc/ssh/other_config \\\n    -o "PermitRootLogin no"\n' > "$T/run/systemd/system/sshd.service.d/zz-late.conf"
unit_of "$T" > "$W/u"
grep -qx "execstart-from /run/systemd/system/sshd.service.d/zz-late.conf" "$W/u" && grep -qx "option PermitRootLogin no" "$W/u" &&
    grep -qx "config /etc/ssh/other_config" "$W/u" && [ "$(grep -c '^option' "$W/u")" = 1 ] ||
    fail "a later drop-in (of the alias, in /run, continued line, -f) did not win: $(cat "$W/u")"
rm "$T/run/systemd/system/sshd.service.d/zz-late.conf"
ln -sf /dev/null "$T/etc/systemd/system/ssh.service.d/ec2-instance-connect.conf"
unit_of "$T" > "$W/u"
grep -qxF "$EIC_CMD" "$W/u" || grep -q "^dropin /etc/.*ec2-instance-connect.conf" "$W/u" &&
    fail "a drop-in masked with /dev/null still counts: $(cat "$W/u")"
grep -qx 'execstart /usr/sbin/sshd -D $SSHD_OPTS' "$W/u" || fail "masked drop-in: $(cat "$W/u")"
same_order "$T"
# RHEL / Amazon Linux: sshd.service, and EIC's older RPM override.
T=$U/rhel; mkdir -p "$T/usr/lib/systemd/system/sshd.service.d"
printf '[Service]\nEnvironmentFile=-/etc/sysconfig/sshd\nExecStart=/usr/sbin/sshd -D $OPTIONS\n' > "$T/usr/lib/systemd/system/sshd.service"
printf '[Service]\nExecStart=\nExecStart=/usr/sbin/sshd -D -o "AuthorizedKeysCommand /opt/aws/bin/eic_run_authorized_keys %%%%u %%%%f" -o "AuthorizedKeysCommandUser ec2-instance-connect" $OPTIONS\n' \
    > "$T/usr/lib/systemd/system/sshd.service.d/ec2-instance-connect.conf"
unit_of "$T" > "$W/u"
grep -qx "unit sshd.service" "$W/u" && grep -qx "option AuthorizedKeysCommand /opt/aws/bin/eic_run_authorized_keys %u %f" "$W/u" ||
    fail "sshd.service: $(cat "$W/u")"
pass "sshd unit: fragment, alias, drop-ins from /etc /run /usr/lib sorted by name (same order as systemd-analyze), masking, ExecStart= reset, \$SSHD_OPTS, -f, -o"

# 5. Another command in effect: chained by default (ours runs it and prints its keys after ours), named;
#    --replace-other-command replaces it; uninstall gives it back.
base_tree() {  # base_tree TREE: sshd_config that includes the drop-in directory, account files
    mkdir -p "$1/etc/ssh/sshd_config.d"; sandbox_accounts "$1"
    printf 'Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\nUsePAM yes\n' > "$1/etc/ssh/sshd_config"
}
SSHD=$(command -v sshd || echo /usr/sbin/sshd)
ssh-keygen -q -t ed25519 -N '' -f "$W/hostkey"
tree_T() {  # tree_T TREE [sshd args]: sshd -T over TREE's config, drop-ins (absolute symlinks too) read inside
            # TREE, into $W/T (a file: grep -q on a pipe would kill sshd with SIGPIPE under pipefail)
    local t=$1 c=$W/treeT f; shift
    rm -rf "$c"; mkdir -p "$c/d"
    for f in "$t"/etc/ssh/sshd_config.d/*.conf; do
        [ -e "$f" ] || [ -L "$f" ] || continue
        if [ -L "$f" ] && [[ $(readlink "$f") == /* ]]; then cat "$t$(readlink "$f")"; else cat "$f"; fi > "$c/d/$(basename "$f")"
    done
    sed "s|^Include /etc/ssh/sshd_config.d/|Include $c/d/|" "$t/etc/ssh/sshd_config" > "$c/sshd_config"
    "$SSHD" -T -f "$c/sshd_config" -o "HostKey=$W/hostkey" "$@" > "$W/T"
}

fake_command() {  # fake_command TREE PATH: a root-owned 0755 program standing in for another key command
    mkdir -p "$1$(dirname "$2")"; printf '#!/bin/sh\nexit 0\n' > "$1$2"; chmod 0755 "$1$2"
}
ours_with() {  # ours_with ARGS...: the AuthorizedKeysCommand line install.sh writes for the defaults
    echo "authorizedkeyscommand /usr/local/bin/iam-authorized-keys${1:+ $*} --uid %U -- %u %f %t"
}
USERDB_CHAIN='--chain /usr/bin/userdbctl --chain-arg ssh-authorized-keys --chain-arg %u'
EIC_CHAIN='--chain /usr/share/ec2-instance-connect/eic_run_authorized_keys --chain-arg %u --chain-arg %f'

# systemd-userdb (Debian 13 with systemd-userdbd): a symlinked 20- drop-in.
T=$W/userdb; base_tree "$T"; fake_command "$T" /usr/bin/userdbctl
mkdir -p "$T/usr/lib/systemd/sshd_config.d"
printf 'AuthorizedKeysCommand /usr/bin/userdbctl ssh-authorized-keys %%u\nAuthorizedKeysCommandUser root\n' \
    > "$T/usr/lib/systemd/sshd_config.d/20-systemd-userdb.conf"
# Built in a chroot, the tree has no link yet: systemd-tmpfiles makes it at first boot. It counts.
mkdir -p "$T/usr/lib/tmpfiles.d"
printf 'L /etc/ssh/sshd_config.d/20-systemd-userdb.conf - - - - /usr/lib/systemd/sshd_config.d/20-systemd-userdb.conf\n' \
    > "$T/usr/lib/tmpfiles.d/20-systemd-userdb.conf"
"$INSTALL" --root "$T" --binary "$BIN" 2>"$W/log7" || fail "chaining the boot-time userdb link: $(cat "$W/log7")"
grep -q "at boot systemd-tmpfiles links $T/etc/ssh/sshd_config.d/20-systemd-userdb.conf .*'/usr/bin/userdbctl ssh-authorized-keys %u'" "$W/log7" &&
    grep -q "chaining it" "$W/log7" || fail "the boot-time link is not named and chained: $(cat "$W/log7")"
ln -s /usr/lib/systemd/sshd_config.d/20-systemd-userdb.conf "$T/etc/ssh/sshd_config.d/20-systemd-userdb.conf"
tree_T "$T"; grep -qx "$(ours_with "$USERDB_CHAIN")" "$W/T" || fail "userdbctl not chained by ours: $(grep -i authorizedkeys "$W/T")"
rm "$T/etc/ssh/sshd_config.d/20-systemd-userdb.conf"
"$INSTALL" --root "$T" --uninstall 2>/dev/null
mkdir -p "$T/etc/tmpfiles.d"; : > "$T/etc/tmpfiles.d/20-systemd-userdb.conf"   # the admin masks it
"$INSTALL" --root "$T" --binary "$BIN" 2>"$W/log7" || fail "a tmpfiles entry masked in /etc: $(cat "$W/log7")"
! grep -q "chaining it" "$W/log7" || fail "a tmpfiles entry masked in /etc still counted: $(cat "$W/log7")"
"$INSTALL" --root "$T" --uninstall 2>/dev/null
rm -r "$T/etc/tmpfiles.d"
ln -s /usr/lib/systemd/sshd_config.d/20-systemd-userdb.conf "$T/etc/ssh/sshd_config.d/20-systemd-userdb.conf"
"$INSTALL" --root "$T" --binary "$BIN" 2>"$W/log7" || fail "chaining userdbctl: $(cat "$W/log7")"
grep -q "another AuthorizedKeysCommand is in effect: '/usr/bin/userdbctl ssh-authorized-keys %u'" "$W/log7" &&
    grep -qF "$T/etc/ssh/sshd_config.d/20-systemd-userdb.conf:1:" "$W/log7" && grep -q "chaining it" "$W/log7" ||
    fail "install does not name userdbctl, its file and the chaining: $(cat "$W/log7")"
tree_T "$T"; grep -qx "$(ours_with "$USERDB_CHAIN")" "$W/T" || fail "userdbctl not chained: $(grep -i authorizedkeys "$W/T")"
"$INSTALL" --root "$T" --binary "$BIN" 2>"$W/log7" || fail "a re-run (ours in effect) failed: $(cat "$W/log7")"
tree_T "$T"; grep -qx "$(ours_with "$USERDB_CHAIN")" "$W/T" || fail "a re-run dropped the chained command: $(grep -i authorizedkeys "$W/T")"
"$INSTALL" --root "$T" --binary "$BIN" --replace-other-command 2>"$W/log7" || fail "--replace-other-command: $(cat "$W/log7")"
tree_T "$T"; grep -qx "$(ours_with)" "$W/T" || fail "--replace-other-command kept the chain: $(grep -i authorizedkeys "$W/T")"
"$INSTALL" --root "$T" --uninstall 2>/dev/null
tree_T "$T"; grep -qx "authorizedkeyscommand /usr/bin/userdbctl ssh-authorized-keys %u" "$W/T" || fail "uninstall did not give userdbctl back"
pass "systemd-userdb's 20- drop-in (and the link tmpfiles makes at boot; masked in /etc: ignored): chained by default, named; a re-run keeps it; --replace-other-command replaces it; uninstall gives it back"

# A command ours cannot run safely (sshd would not either) is refused, naming why, and nothing is written.
T=$W/unsafechain; base_tree "$T"; fake_command "$T" /opt/other/bin/keys
chmod 0777 "$T/opt/other"
printf 'AuthorizedKeysCommand /opt/other/bin/keys %%u\nAuthorizedKeysCommandUser nobody\n' > "$T/etc/ssh/sshd_config.d/30-other.conf"
before=$(snapshot "$T")
if "$INSTALL" --root "$T" --binary "$BIN" 2>"$W/log7"; then fail "chained a command under a world-writable directory"; fi
grep -q "cannot chain '/opt/other/bin/keys %u': $T/opt/other is owned by uid 0 with mode 777" "$W/log7" ||
    fail "the refusal does not say why: $(cat "$W/log7")"
[ "$before" = "$(snapshot "$T")" ] || fail "a refused install changed the tree"
pass "another command that sshd's checks would refuse (world-writable directory) is not chained: refused, named, nothing written"

# EC2 Instance Connect's unit override: command-line options beat every file.
T=$W/eic; base_tree "$T"; unit_tree "$T"; eic_dropin "$T"; fake_command "$T" /usr/share/ec2-instance-connect/eic_run_authorized_keys
"$INSTALL" --root "$T" --binary "$BIN" 2>"$W/log8" || fail "chaining EC2 Instance Connect: $(cat "$W/log8")"
grep -q "eic_run_authorized_keys %u %f" "$W/log8" && grep -q "ssh.service unit.*ec2-instance-connect.conf" "$W/log8" &&
    grep -q "chaining it" "$W/log8" || fail "install does not name EIC's unit drop-in and the chaining: $(cat "$W/log8")"
ov=$T/etc/systemd/system/ssh.service.d/zz-iam-authorized-keys.conf
[ -f "$ov" ] || fail "no unit drop-in: $(cat "$W/log8")"
unit_of "$T" > "$W/u"
grep -qx "execstart-from /etc/systemd/system/ssh.service.d/zz-iam-authorized-keys.conf" "$W/u" &&
    grep -qx 'execstart /usr/sbin/sshd -D $SSHD_OPTS' "$W/u" && ! grep -q "^option" "$W/u" ||
    fail "our unit drop-in is not the effective ExecStart: $(cat "$W/u")"
tree_T "$T"; grep -qx "$(ours_with "$EIC_CHAIN")" "$W/T" || fail "EIC's program is not chained by ours: $(grep -i authorizedkeys "$W/T")"
"$INSTALL" --root "$T" --uninstall 2>/dev/null
[ ! -e "$ov" ] && [ ! -e "$T/etc/systemd/system/ssh.service.d" ] || fail "uninstall left the unit drop-in"
grep -qxF "$EIC_CMD" <(unit_of "$T") || fail "uninstall did not give EIC its command line back"
"$INSTALL" --root "$T" --binary "$BIN" --replace-other-command 2>"$W/log8" || fail "--replace-other-command over EIC: $(cat "$W/log8")"
tree_T "$T"; grep -qx "$(ours_with)" "$W/T" || fail "ours not in effect alone"
"$INSTALL" --root "$T" --uninstall 2>/dev/null
grep -qxF "$EIC_CMD" <(unit_of "$T") || fail "uninstall did not give EIC its command line back"
pass "EC2 Instance Connect's unit override: a zz- unit drop-in makes ours effective and ours chains EIC's program; --replace-other-command replaces it; uninstall gives it back"

# A unit that runs another config (tests' private sshd, -f) does not count for ours, and vice versa.
T=$W/eicother; base_tree "$T"; unit_tree "$T"; eic_dropin "$T"
printf 'UsePAM no\n' > "$T/etc/ssh/private_config"
"$INSTALL" --root "$T" --binary "$BIN" --sshd-config /etc/ssh/private_config 2>"$W/log9" ||
    fail "the unit's options were applied to another sshd config: $(cat "$W/log9")"
! grep -q "chaining it" "$W/log9" || fail "chained a command of another config: $(cat "$W/log9")"
# Amazon Linux 2 style: no Include, EIC's command in sshd_config itself, AuthorizedKeysFile set there.
T=$W/al2; mkdir -p "$T/etc/ssh"; sandbox_accounts "$T"; fake_command "$T" /opt/aws/bin/eic_run_authorized_keys
printf 'AuthorizedKeysFile .ssh/authorized_keys\nAuthorizedKeysCommand /opt/aws/bin/eic_run_authorized_keys %%u %%f\nAuthorizedKeysCommandUser ec2-instance-connect\n' > "$T/etc/ssh/sshd_config"
"$INSTALL" --root "$T" --binary "$BIN" --default-user ec2-user 2>"$W/log9" || fail "AL2: $(cat "$W/log9")"
grep -qF "$T/etc/ssh/sshd_config:2: AuthorizedKeysCommand /opt/aws/bin/eic_run_authorized_keys" "$W/log9" || fail "AL2: $(cat "$W/log9")"
tree_T "$T" -C user=ec2-user,host=x,addr=127.0.0.1
grep -qx "$(ours_with --deny-user ec2-user --chain /opt/aws/bin/eic_run_authorized_keys --chain-arg %u --chain-arg %f)" "$W/T" &&
    grep -qx "authorizedkeysfile .ssh/authorized_keys" "$W/T" || fail "AL2: $(grep -i authorizedkeys "$W/T")"
"$INSTALL" --root "$T" --uninstall 2>/dev/null
[ "$(head -1 "$T/etc/ssh/sshd_config")" = "AuthorizedKeysFile .ssh/authorized_keys" ] || fail "AL2: uninstall did not restore sshd_config"
pass "Amazon Linux 2 layout (no Include, EIC in sshd_config): named and chained, with our Include on top; ec2-user keeps its file"

# A unit that runs another config (-f): installing into the default one would never be read.
T=$W/otherconf; base_tree "$T"; unit_tree "$T"
mkdir -p "$T/usr/lib/systemd/system/ssh.service.d"
printf '[Service]\nExecStart=\nExecStart=/usr/sbin/sshd -D -f /etc/ssh/sshd_config_custom\n' > "$T/usr/lib/systemd/system/ssh.service.d/custom.conf"
cp "$T/etc/ssh/sshd_config" "$T/etc/ssh/sshd_config_custom"
before=$(snapshot "$T")
if "$INSTALL" --root "$T" --binary "$BIN" 2>"$W/log9"; then fail "installed into a config the sshd unit does not run"; fi
grep -q "runs sshd with -f /etc/ssh/sshd_config_custom.*--sshd-config /etc/ssh/sshd_config_custom" "$W/log9" || fail "no hint at --sshd-config: $(cat "$W/log9")"
[ "$before" = "$(snapshot "$T")" ] || fail "a refused install changed the tree"
"$INSTALL" --root "$T" --binary "$BIN" --sshd-config /etc/ssh/sshd_config_custom 2>"$W/log9" || fail "--sshd-config the unit's: $(cat "$W/log9")"
pass "the unit's -o options count only for the config the unit runs; a unit running another config (-f) is named"

# Upgrade from the 50- drop-in name; an old-style install uninstalls too.
T=$W/upgrade; base_tree "$T"
"$INSTALL" --root "$T" --binary "$BIN" 2>/dev/null || fail "install for the upgrade test"
old50=$T/etc/ssh/sshd_config.d/50-iam-authorized-keys.conf
mv "$T/etc/ssh/sshd_config.d/10-iam-authorized-keys.conf" "$old50"
sed -i 's|/10-iam-authorized-keys.conf$|/50-iam-authorized-keys.conf|' "$T/var/lib/iam-authorized-keys/iam-authorized-keys.manifest"

"$INSTALL" --root "$T" --binary "$BIN" 2>/dev/null || fail "upgrade install"
[ ! -e "$old50" ] && [ -f "$T/etc/ssh/sshd_config.d/10-iam-authorized-keys.conf" ] || fail "upgrade kept the 50- drop-in"
! grep -q 50-iam "$T/var/lib/iam-authorized-keys/iam-authorized-keys.manifest" || fail "manifest still lists 50-"
"$INSTALL" --root "$T" --uninstall 2>/dev/null
[ -z "$(ls -A "$T/etc/ssh/sshd_config.d")" ] || fail "uninstall after upgrade left: $(ls "$T/etc/ssh/sshd_config.d")"
T=$W/oldstyle; base_tree "$T"
"$INSTALL" --root "$T" --binary "$BIN" 2>/dev/null
mv "$T/etc/ssh/sshd_config.d/10-iam-authorized-keys.conf" "$T/etc/ssh/sshd_config.d/50-iam-authorized-keys.conf"
sed -i 's|/10-iam-authorized-keys.conf$|/50-iam-authorized-keys.conf|' "$T/var/lib/iam-authorized-keys/iam-authorized-keys.manifest"
"$INSTALL" --root "$T" --uninstall 2>/dev/null
[ -z "$(ls -A "$T/etc/ssh/sshd_config.d")" ] || fail "uninstall of a 50- install left: $(ls "$T/etc/ssh/sshd_config.d")"
pass "upgrade removes the old 50- drop-in; uninstall handles the 50- and 10- names"

# 6. The image's default account: found in cloud-init's config (or Flatcar's core, or named), never served
#    from IAM, keeps its authorized_keys through a Match block scoped to our drop-in.
cloud_cfg() {  # cloud_cfg TREE NAME: the shape of Debian's /etc/cloud/cloud.cfg
    mkdir -p "$1/etc/cloud/cloud.cfg.d"
    cat > "$1/etc/cloud/cloud.cfg" <<CFG
# The top level settings are used as module
# and base configuration.
users:
   - default
disable_root: true
system_info:
   # This will affect which distro class gets used
   distro: debian
   default_user:
     name: $2
     lock_passwd: True
     gecos: Debian
     groups: [adm, audio, cdrom, dialout, dip, floppy, plugdev, sudo, video]
     sudo: ["ALL=(ALL) NOPASSWD:ALL"]
     shell: /bin/bash
   paths:
      cloud_dir: /var/lib/cloud/
   ssh_svcname: ssh
name: not-this-one
CFG
}
DROPIN_REL=etc/ssh/sshd_config.d/10-iam-authorized-keys.conf
T=$W/cloud; base_tree "$T"; cloud_cfg "$T" admin
printf 'PermitRootLogin no\n' > "$T/etc/ssh/sshd_config.d/90-later.conf"
before=$(snapshot "$T")
"$INSTALL" --root "$T" --binary "$BIN" 2>"$W/log10" || fail "install with a cloud-init default user: $(cat "$W/log10")"
grep -q "default account from cloud-init: admin" "$W/log10" || fail "no note about the default account: $(cat "$W/log10")"
grep -q "^AuthorizedKeysCommand /usr/local/bin/iam-authorized-keys --deny-user admin --uid %U -- %u %f %t$" "$T/$DROPIN_REL" ||
    fail "admin not in --deny-user: $(grep ^AuthorizedKeysCommand "$T/$DROPIN_REL")"
[ "$(tail -2 "$T/$DROPIN_REL")" = "$(printf 'Match User admin\n    AuthorizedKeysFile .ssh/authorized_keys')" ] ||
    fail "no Match block at the end of the drop-in: $(tail -3 "$T/$DROPIN_REL")"
tree_T "$T" -C user=admin,host=x,addr=127.0.0.1
grep -qx "authorizedkeysfile .ssh/authorized_keys" "$W/T" || fail "admin's AuthorizedKeysFile: $(grep -i authorizedkeysfile "$W/T")"
tree_T "$T" -C user=alice,host=x,addr=127.0.0.1
grep -qx "authorizedkeysfile none" "$W/T" || fail "the Match block leaked to alice: $(grep -i authorizedkeysfile "$W/T")"
grep -qx "permitrootlogin no" "$W/T" || fail "the Match block captured a later drop-in's setting (not scoped to our file)"
tree_T "$T" -C user=admin,host=x,addr=127.0.0.1
grep -qx "permitrootlogin no" "$W/T" || fail "the later drop-in does not apply to admin either"
"$INSTALL" --root "$T" --uninstall 2>/dev/null
[ "$(echo "$before" | grep -v "$accounts")" = "$(snapshot "$T" | grep -v "$accounts")" ] ||
    fail "uninstall did not restore the cloud-init tree"
pass "cloud-init's default_user (admin): --deny-user, Match block scoped to our drop-in (sshd -T -C), uninstall restores"

# cloud.cfg.d overrides cloud.cfg (later files win); flow style; a name elsewhere is not taken.
T=$W/cloud2; base_tree "$T"; cloud_cfg "$T" admin
printf 'system_info:\n  default_user: {name: "ubuntu", lock_passwd: true}\n' > "$T/etc/cloud/cloud.cfg.d/90-override.cfg"
printf 'users:\n  - name: notdefault\n' > "$T/etc/cloud/cloud.cfg.d/95-users.cfg"
"$INSTALL" --root "$T" --binary "$BIN" 2>"$W/log11" || fail "install with cloud.cfg.d: $(cat "$W/log11")"
grep -q -- "--deny-user ubuntu --uid" "$T/$DROPIN_REL" && grep -qx "Match User ubuntu" "$T/$DROPIN_REL" &&
    ! grep -q "admin\|notdefault" "$T/$DROPIN_REL" || fail "cloud.cfg.d override: $(grep -i 'deny\|match' "$T/$DROPIN_REL")"
# --default-user names them (repeatable); --no-default-user turns it off; both change the drop-in on a re-run.
"$INSTALL" --root "$T" --binary "$BIN" --default-user ec2-user --default-user ops 2>/dev/null || fail "--default-user"
grep -q -- "--deny-user ec2-user --deny-user ops --uid" "$T/$DROPIN_REL" && grep -qx "Match User ec2-user,ops" "$T/$DROPIN_REL" ||
    fail "--default-user: $(grep -i 'deny\|match' "$T/$DROPIN_REL")"
tree_T "$T" -C user=ops,host=x,addr=127.0.0.1
grep -qx "authorizedkeysfile .ssh/authorized_keys" "$W/T" || fail "second --default-user has no authorized_keys"
"$INSTALL" --root "$T" --binary "$BIN" --no-default-user 2>/dev/null || fail "--no-default-user"
! grep -q "deny-user\|^Match" "$T/$DROPIN_REL" || fail "--no-default-user left: $(grep -i 'deny\|match' "$T/$DROPIN_REL")"
tree_T "$T" -C user=ubuntu,host=x,addr=127.0.0.1
grep -qx "authorizedkeysfile none" "$W/T" || fail "--no-default-user: ubuntu still has authorized_keys"
if "$INSTALL" --root "$T" --binary "$BIN" --default-user 'Bad;name' 2>/dev/null; then fail "accepted a bad --default-user"; fi
pass "cloud.cfg.d overrides cloud.cfg (flow style too); --default-user (repeatable) and --no-default-user"

# 7. Refusals say what to fix.
for args in "--ttl 5%u" "--user root" "--cache-dir relative" "--bogus" "--region a\"b" "--ttl abc" "--allowed-groups-tag a/b" \
    "--allowed-group ops --allowed-groups-tag ssh-groups" "--with-sync --sync-group-tag a/b" "--with-sync --sudo-group-tag _index"; do
    # shellcheck disable=SC2086
    if "$INSTALL" --root "$W/empty" --binary "$BIN" $args 2>"$W/err"; then fail "accepted: $args"; fi
    [ -s "$W/err" ] || fail "no message for: $args"
done
[ -z "$(find "$W/empty" -mindepth 1)" ] || fail "a refused install wrote files"
"$INSTALL" --help | grep -q -- "--uninstall" || fail "--help"
# The check runs with sshd's (empty) environment: an HTTPS_PROXY in the admin's shell that the binary
# would refuse (socks5) does not fail the install.
mkdir -p "$W/envcheck"
HTTPS_PROXY=socks5://proxy.corp:1080 "$INSTALL" --root "$W/envcheck" --binary "$BIN" --ttl 60 2>"$W/err" ||
    fail "the flag check used the installer's environment: $(cat "$W/err")"
# A --config file already in the tree is read the way the binary will read it: a value it refuses stops
# the install before anything is written; a file not there yet (written later by the image pipeline) is
# no reason to stop.
mkdir -p "$W/cfgbad/etc/iam-authorized-keys" "$W/cfglater"
printf 'ttl = soon\n' > "$W/cfgbad/etc/iam-authorized-keys/config"
if "$INSTALL" --root "$W/cfgbad" --binary "$BIN" --config /etc/iam-authorized-keys/config 2>"$W/err"; then
    fail "accepted a config file the binary refuses"
fi
grep -q "config" "$W/err" && grep -q "ttl" "$W/err" || fail "config refusal does not name the file and key: $(cat "$W/err")"
[ "$(find "$W/cfgbad" -mindepth 1 | sort | tr '\n' ' ')" = "$W/cfgbad/etc $W/cfgbad/etc/iam-authorized-keys $W/cfgbad/etc/iam-authorized-keys/config " ] ||
    fail "a refused config file: files written: $(find "$W/cfgbad" -mindepth 1)"
"$INSTALL" --root "$W/cfglater" --binary "$BIN" --config /etc/iam-authorized-keys/config 2>"$W/err" ||
    fail "a --config file that is not there yet stopped the install: $(cat "$W/err")"
pass "bad options are refused before anything is written (values the binary refuses too: --ttl abc, a tag key with /, a config file already in the tree; checked without the shell's environment)"

# 8. Host tags: --allowed-groups-tag goes into the drop-in (and the sync service), the sync tags into the
# sync service; the binary accepts the lines it is given (sshd would run exactly these words).
T=$W/tags; mkdir -p "$T/etc/ssh"
sandbox_accounts "$T"
printf 'Port 22\n' > "$T/etc/ssh/sshd_config"
"$INSTALL" --root "$T" --binary "$BIN" --allowed-groups-tag ssh-groups --with-sync \
    --sync-group-tag login-groups --sudo-group-tag sudo-groups 2>"$W/log8" || fail "install with tags: $(cat "$W/log8")"
grep -q "^AuthorizedKeysCommand /usr/local/bin/iam-authorized-keys --allowed-groups-tag ssh-groups --uid %U -- %u %f %t$" \
    "$T/etc/ssh/sshd_config.d/10-iam-authorized-keys.conf" || fail "--allowed-groups-tag not in the drop-in: $(cat "$T/etc/ssh/sshd_config.d/10-iam-authorized-keys.conf")"
exec_line=$(sed -n 's/^ExecStart=//p' "$T/etc/systemd/system/iam-authorized-keys-sync.service")
[[ $exec_line == *"sync-users --allowed-groups-tag ssh-groups --group-tag login-groups --sudo-group-tag sudo-groups"* ]] ||
    fail "sync tags not in the service: $exec_line"
pass "--allowed-groups-tag in the drop-in and the sync service, --sync-group-tag/--sudo-group-tag in the sync service"

echo "install: ${PASSED} passed, 0 failed"
