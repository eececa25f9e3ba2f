#!/usr/bin/env bash
# install.sh on real Debian userlands, not only this machine's: Debian 12 (bookworm, OpenSSH 9.2) and
# Debian 13 (trixie, OpenSSH 10.0, with systemd-userdbd) root trees built with debootstrap from the Debian
# package registry (cached under target/images, rebuilt when missing; a scratch copy per test). Each tree's
# OWN sshd judges the result (in the tree, by chroot) and serves real ssh logins on a loopback port, with
# the IAM emulator (on loopback too: a chroot shares it) as IAM.
#   - an IAM user's key logs in to its local account; an IAM user named like the default account is refused
#   - the default account (cloud-init's default_user) logs in with its authorized_keys key; another
#     account's authorized_keys does not count (AuthorizedKeysFile none); the Match block is scoped to our
#     drop-in by both OpenSSH versions (sshd -T -C)
#   - Debian 13: systemd-userdb's 20- drop-in (a link systemd-tmpfiles makes at first boot) is named and
#     chained: the real userdbctl answers for a userdb user, who logs in with that key beside the IAM
#     user; --replace-other-command replaces it; --uninstall gives it back
#   - Debian 12: EC2 Instance Connect's unit override laid over the real ssh.service is named; a unit
#     drop-in makes ours effective and ours chains EIC's program (a root-owned stand-in), whose key logs in
#   - uninstall restores the tree (account files by content)
# Needs root (chroot, accounts in the trees).
#
# usage: tests/images_test.sh STATIC_BINARY MOTO_URL PYTHON(with boto3)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
tree_tier_start images "$@"
trap tree_cleanup EXIT
# Unique per run: the emulator may outlive one run. DEF: the image's default account.
DEF=iakdef$$ IAMU=iakimg$$


# IAM users: one with a local account in the trees, one named like the default account. chainkey: the
# key the chained command (EIC's stand-in, or userdb) serves.
for k in iamkey defiam chainkey; do ssh-keygen -q -t ed25519 -N '' -C "$k" -f "$W/$k"; done
iam create-user "$IAMU"
iam upload "$IAMU" "$W/iamkey.pub" >/dev/null
iam create-user "$DEF"
iam upload "$DEF" "$W/defiam.pub" >/dev/null
LOOKUP=(--credentials-file /etc/iak-test-credentials --endpoint-url "$MOTO_URL" --timeout 3)

# scoped VERSION: the Match block for the default account is scoped to our drop-in (settings read after
# it, Debian's X11Forwarding yes in sshd_config, still apply to other accounts) and gives it its file.
scoped() {
    tT -C "user=$DEF,host=x,addr=127.0.0.1"
    grep -qx "authorizedkeysfile .ssh/authorized_keys" "$W/T" || fail "$1: $DEF's AuthorizedKeysFile: $(grep -i authorizedkeysfile "$W/T")"
    tT -C user=alice,host=x,addr=127.0.0.1
    grep -qx "authorizedkeysfile none" "$W/T" || fail "$1: the Match block leaked to alice"
    grep -qx "x11forwarding yes" "$W/T" || fail "$1: the Match block captured sshd_config's later settings (not scoped)"
}

tree bookworm bookworm openssh-server
tree trixie trixie openssh-server,systemd-userdbd

# --- Debian 12 -----------------------------------------------------------------------------------------
fresh bookworm
cloud_default "$DEF"
before=$(snapshot "$T")
"$INSTALL" --root "$T" --binary "$BIN" "${LOOKUP[@]}" 2>"$W/log1" || fail "Debian 12: install: $(cat "$W/log1")"
grep -q "checking with the tree's own sshd (OpenSSH_9.2" "$W/log1" || fail "Debian 12: not judged by the tree's sshd: $(cat "$W/log1")"
grep -q "default account from cloud-init: $DEF" "$W/log1" || fail "Debian 12: default account not found"
tT
grep -qx "authorizedkeyscommand /usr/local/bin/iam-authorized-keys ${LOOKUP[*]} --deny-user $DEF --max-uid 60000 --uid %U -- %u %f %t" "$W/T" &&
    grep -qx "authorizedkeyscommanduser iam-authorized-keys" "$W/T" && grep -qx "authorizedkeysfile none" "$W/T" ||
    fail "Debian 12: not in effect: $(grep -i authorizedkeys "$W/T")"
scoped "Debian 12 (OpenSSH 9.2)"
login_test "Debian 12"
"$INSTALL" --root "$T" --uninstall 2>/dev/null || fail "Debian 12: uninstall"
[ "$before" = "$(snapshot "$T")" ] || { diff <(echo "$before") <(snapshot "$T") >&2; fail "Debian 12: uninstall did not restore the tree"; }
! grep -q '^iam-authorized-keys:' "$T/etc/passwd" || fail "Debian 12: uninstall left the service user"
pass "Debian 12 (OpenSSH 9.2): judged by its own sshd; IAM user logs in; default account logs in with its key, never as the IAM user of its name; others' authorized_keys do not count; Match scoped; uninstall restores"

# EC2 Instance Connect's override over the real ssh.service of the package, with a root-owned stand-in for
# its program that serves one account's key (EIC's runner prints the key pushed for that login).
fresh bookworm
cloud_default "$DEF"
mkdir -p "$T/usr/lib/systemd/system/ssh.service.d" "$T/usr/share/ec2-instance-connect"
printf '[Service]\nExecStart=\nExecStart=/usr/sbin/sshd -D -o "AuthorizedKeysCommand /usr/share/ec2-instance-connect/eic_run_authorized_keys %%%%u %%%%f" -o "AuthorizedKeysCommandUser ec2-instance-connect" $SSHD_OPTS\n' \
    > "$T/usr/lib/systemd/system/ssh.service.d/ec2-instance-connect.conf"
printf '#!/bin/sh\n[ "$1" = eicuser ] && echo "%s"\nexit 0\n' "$(cat "$W/chainkey.pub")" > "$T/usr/share/ec2-instance-connect/eic_run_authorized_keys"
chmod 0755 "$T/usr/share/ec2-instance-connect/eic_run_authorized_keys"
chroot "$T" useradd --create-home --shell /bin/sh eicuser; chroot "$T" usermod -p '*' eicuser
before=$(snapshot "$T")
"$INSTALL" --root "$T" --binary "$BIN" "${LOOKUP[@]}" 2>"$W/log2" || fail "Debian 12: chaining EIC: $(cat "$W/log2")"
grep -q "ssh.service unit.*eic_run_authorized_keys %u %f.*ec2-instance-connect.conf" "$W/log2" && grep -q "chaining it" "$W/log2" ||
    fail "Debian 12: EIC not named and chained: $(cat "$W/log2")"
"$INSTALL" --root "$T" --sshd-unit > "$W/u"
grep -qx 'execstart /usr/sbin/sshd -D $SSHD_OPTS' "$W/u" && ! grep -q '^option' "$W/u" || fail "Debian 12: unit after install: $(cat "$W/u")"
tT
grep -qx "authorizedkeyscommand /usr/local/bin/iam-authorized-keys ${LOOKUP[*]} --deny-user $DEF --max-uid 60000 --chain /usr/share/ec2-instance-connect/eic_run_authorized_keys --chain-arg %u --chain-arg %f --uid %U -- %u %f %t" "$W/T" ||
    fail "Debian 12: EIC's program not chained: $(grep -i authorizedkeys "$W/T")"
CHAINED_USER=eicuser login_test "Debian 12 with EC2 Instance Connect"
"$INSTALL" --root "$T" --uninstall 2>/dev/null
[ "$before" = "$(snapshot "$T")" ] || { diff <(echo "$before") <(snapshot "$T") >&2; fail "Debian 12: uninstall did not restore the EIC tree"; }
"$INSTALL" --root "$T" --sshd-unit > "$W/u"
grep -q '^option AuthorizedKeysCommand /usr/share/ec2-instance-connect/eic_run_authorized_keys %u %f' "$W/u" || fail "Debian 12: uninstall did not give EIC its options back"
pass "Debian 12: EC2 Instance Connect's override of the package's ssh.service is named; ours is made effective and chains EIC's program: its key and the IAM key log in through the tree's sshd; uninstall restores"

# --- Debian 13 with systemd-userdbd ----------------------------------------------------------------------
fresh trixie
[ -f "$T/usr/lib/systemd/sshd_config.d/20-systemd-userdb.conf" ] || fail "Debian 13: systemd-userdbd ships no sshd drop-in (package changed?)"
rm -f "$T/etc/ssh/sshd_config.d/20-systemd-userdb.conf"   # as built in a chroot: the link comes at first boot
cloud_default "$DEF"
# A userdb user whose record (a drop-in the real userdbctl reads itself) carries an SSH key. The key sits
# in the record's privileged section inline, readable by the command user: a root-only NAME.user-privileged
# file would hide it from any AuthorizedKeysCommandUser but root (README: Coexisting).
chroot "$T" useradd --create-home --shell /bin/sh udbuser; chroot "$T" usermod -p '*' udbuser
mkdir -p "$T/etc/userdb"
printf '{"userName":"udbuser","uid":%s,"privileged":{"sshAuthorizedKeys":["%s"]}}\n' \
    "$(chroot "$T" id -u udbuser)" "$(cat "$W/chainkey.pub")" > "$T/etc/userdb/udbuser.user"
chmod 0644 "$T/etc/userdb/udbuser.user"
[ "$(chroot "$T" runuser -u nobody -- /usr/bin/userdbctl ssh-authorized-keys udbuser)" = "$(cat "$W/chainkey.pub")" ] ||
    fail "Debian 13: the real userdbctl does not answer for udbuser (unprivileged)"
before=$(snapshot "$T")
"$INSTALL" --root "$T" --binary "$BIN" "${LOOKUP[@]}" 2>"$W/log3" || fail "Debian 13: chaining the boot-time userdb link: $(cat "$W/log3")"
grep -q "at boot systemd-tmpfiles links .*20-systemd-userdb.conf.*userdbctl ssh-authorized-keys %u" "$W/log3" && grep -q "chaining it" "$W/log3" ||
    fail "Debian 13: the boot-time link is not named and chained: $(cat "$W/log3")"
"$INSTALL" --root "$T" --uninstall 2>/dev/null || fail "Debian 13: uninstall"
[ "$before" = "$(snapshot "$T")" ] || { diff <(echo "$before") <(snapshot "$T") >&2; fail "Debian 13: uninstall did not restore the tree"; }
ln -s /usr/lib/systemd/sshd_config.d/20-systemd-userdb.conf "$T/etc/ssh/sshd_config.d/20-systemd-userdb.conf"   # after first boot
before=$(snapshot "$T")
"$INSTALL" --root "$T" --binary "$BIN" "${LOOKUP[@]}" 2>"$W/log3" || fail "Debian 13: chaining userdbctl: $(cat "$W/log3")"
grep -q "another AuthorizedKeysCommand is in effect: '/usr/bin/userdbctl ssh-authorized-keys %u'" "$W/log3" &&
    grep -q "20-systemd-userdb.conf:[0-9]*: AuthorizedKeysCommand" "$W/log3" && grep -q "chaining it" "$W/log3" ||
    fail "Debian 13: userdb not named and chained: $(cat "$W/log3")"
grep -q "checking with the tree's own sshd (OpenSSH_10" "$W/log3" || fail "Debian 13: not judged by the tree's sshd: $(cat "$W/log3")"
tT
grep -qx "authorizedkeyscommand /usr/local/bin/iam-authorized-keys ${LOOKUP[*]} --deny-user $DEF --max-uid 60000 --chain /usr/bin/userdbctl --chain-arg ssh-authorized-keys --chain-arg %u --uid %U -- %u %f %t" "$W/T" &&
    grep -qx "authorizedkeyscommanduser iam-authorized-keys" "$W/T" || fail "Debian 13: ours (chaining userdbctl) not in effect: $(grep -i authorizedkeys "$W/T")"
scoped "Debian 13 (OpenSSH 10.0)"
CHAINED_USER=udbuser login_test "Debian 13 with userdbctl chained"
"$INSTALL" --root "$T" --binary "$BIN" "${LOOKUP[@]}" --replace-other-command 2>"$W/log3" || fail "Debian 13: --replace-other-command: $(cat "$W/log3")"
tT
grep -qx "authorizedkeyscommand /usr/local/bin/iam-authorized-keys ${LOOKUP[*]} --deny-user $DEF --max-uid 60000 --uid %U -- %u %f %t" "$W/T" ||
    fail "Debian 13: --replace-other-command kept the chain: $(grep -i authorizedkeys "$W/T")"
"$INSTALL" --root "$T" --uninstall 2>/dev/null || fail "Debian 13: uninstall"
[ "$before" = "$(snapshot "$T")" ] || { diff <(echo "$before") <(snapshot "$T") >&2; fail "Debian 13: uninstall did not restore the tree"; }
tT
grep -qx "authorizedkeyscommand /usr/bin/userdbctl ssh-authorized-keys %u" "$W/T" || fail "Debian 13: uninstall did not give userdbctl back"
pass "Debian 13 (OpenSSH 10.0, systemd-userdbd): userdb named (also the link tmpfiles makes at boot) and chained: the real userdbctl's key and the IAM key log in, the default account too; --replace-other-command replaces it; uninstall gives userdb back"

echo "images: ${PASSED} passed, 0 failed"
