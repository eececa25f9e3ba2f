#!/usr/bin/env bash
# The systemd system extension (install.sh --package FILE.raw; Flatcar's /etc/extensions), checked the
# way systemd reads it, then merged into a real Debian 13 tree (the images tier's debootstrap tree with
# systemd, cached under target/images; a scratch copy):
#   - systemd-dissect: the extension-release file is found and the image is usable as an "extension for
#     system" only under the name that file carries (iam-authorized-keys.raw), not under another
#   - unsquashfs -lln: only usr/, everything root-owned, the packages' file list (zsh's directory aside)
#     with the settings file moved to usr/share/factory, plus the sysext's own files; extension-release
#     parsed as systemd compares it with the host's os-release (ID=_any, ARCHITECTURE=x86-64 = uname -m)
#   - systemd-sysext --root merges it over the tree's /usr (overlayfs on a loop device, in a private mount
#     namespace that ends with this script); multi-user.target upholds the setup unit through the image's
#     drop-in (Upholds=: the merge and reload come after that target's start job), and the unit's
#     ExecStartPre/ExecStart/ExecStartPost run in the tree as systemd would (chroot): the factory
#     settings file when /etc has none, the operator's file (Butane's) kept
#   - the tree's own sshd: IAM user, default account and the chained userdbctl's key log in; the unit run
#     again (next boot) changes nothing
#   - removal: unmerge, then the install.sh the unit kept (--uninstall) restores the tree
# Needs root (mounts, loop devices, chroot).
#
# usage: tests/sysext_test.sh STATIC_BINARY MOTO_URL PYTHON(with boto3)
set -euo pipefail
# Everything below runs in a mount namespace of its own: merges, loop mounts and /proc mounts end with it.
[ -n "${IAK_SYSEXT_NS:-}" ] || exec env IAK_SYSEXT_NS=1 unshare --mount --propagation private "$0" "$@"
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
needs "Debian packages squashfs-tools, systemd-container, systemd" mksquashfs unsquashfs systemd-dissect systemd-sysext
tree_tier_start sysext "$@"
MERGED=
cleanup() {
    set +e
    [ -n "$SSHD_PID" ] && kill "$SSHD_PID" 2>/dev/null && wait "$SSHD_PID" 2>/dev/null && SSHD_PID=
    [ -n "$MERGED" ] && systemd-sysext --root="$MERGED" unmerge >/dev/null 2>&1
    [ -n "$MERGED" ] && umount "$MERGED" 2>/dev/null
    tree_cleanup
}
trap cleanup EXIT
DEF=iakdef$$ IAMU=iaksx$$
# systemd-sysext remounts /run as a slave in its own namespace: it must be a mount point here.
mountpoint -q /run || mount --bind /run /run

# --- the image as systemd reads it ------------------------------------------------------------------------
VERSION=$(crate_version)
"$INSTALL" --binary "$BIN" --package "$W/$NAME-$VERSION-x86-64.raw" 2>"$W/log" || fail "--package FILE.raw: $(cat "$W/log")"
(cd "$W" && sha256sum -c --quiet "$NAME-$VERSION-x86-64.raw.sha256") || fail "the .raw's .sha256 does not match"
cp "$W/$NAME-$VERSION-x86-64.raw" "$W/$NAME.raw"
dissect() { systemd-dissect --json=short "$1" | "$PY" -c 'import json, sys; d = json.load(sys.stdin); print(d["useSystemExtension"], d["mounts"][0]["fstype"], " ".join(d.get("extensionRelease") or []))'; }
[ "$(dissect "$W/$NAME.raw")" = "True squashfs ID=_any ARCHITECTURE=x86-64 SYSEXT_ID=$NAME SYSEXT_VERSION_ID=$VERSION SYSEXT_SCOPE=system EXTENSION_RELOAD_MANAGER=1" ] ||
    fail "systemd-dissect $NAME.raw: $(dissect "$W/$NAME.raw")"
# The extension-release file must be named like the image: under its versioned name systemd finds none.
[ "$(dissect "$W/$NAME-$VERSION-x86-64.raw" | cut -d' ' -f1)" = False ] || fail "systemd-dissect: the versioned name counts as an extension"
# Layout: only usr/, root-owned; the packages' files plus the sysext's own.
unsquashfs -lln "$W/$NAME.raw" > "$W/ls"
[ -z "$(awk '$2 != "0/0"' "$W/ls")" ] || fail "not root-owned: $(awk '$2 != "0/0"' "$W/ls")"
[ -z "$(awk '{ print $6 }' "$W/ls" | grep -v '^squashfs-root\(/usr\(/.*\)\?\)\?$')" ] || fail "outside usr/: $(awk '{ print $6 }' "$W/ls" | grep -v '^squashfs-root/usr')"
awk '$1 !~ /^d/ { sub(/^squashfs-root/, "", $6); print $1, $6 }' "$W/ls" | sort -k2 > "$W/files"
sort -k2 > "$W/want" <<LIST
-rw-r--r-- /usr/lib/extension-release.d/extension-release.$NAME
-rwxr-xr-x /usr/bin/$NAME
-rwxr-xr-x /usr/lib/$NAME/install.sh
-rw-r--r-- /usr/lib/$NAME/sshd_config.d/10-$NAME.conf
-rw-r--r-- /usr/lib/systemd/system/$NAME-setup.service
-rw-r--r-- /usr/lib/systemd/system/$NAME-sync.service
-rw-r--r-- /usr/lib/systemd/system/$NAME-sync.timer
-rw-r--r-- /usr/lib/systemd/system/multi-user.target.d/10-$NAME.conf
-rw-r--r-- /usr/lib/sysusers.d/$NAME.conf
-rw-r--r-- /usr/lib/tmpfiles.d/$NAME-config.conf
-rw-r--r-- /usr/lib/tmpfiles.d/$NAME.conf
-rw-r--r-- /usr/share/bash-completion/completions/$NAME
-rw-r--r-- /usr/share/doc/$NAME/README.md.gz
-rw-r--r-- /usr/share/doc/$NAME/copyright
-rw-r--r-- /usr/share/doc/$NAME/host-assume-role.json
-rw-r--r-- /usr/share/doc/$NAME/read-keys.json
-rw-r--r-- /usr/share/doc/$NAME/reader-trust-policy.json
-rw-r--r-- /usr/share/doc/$NAME/sync-users.json
-rw-r--r-- /usr/share/factory/etc/$NAME/config
-rw-r--r-- /usr/share/man/man8/$NAME.8.gz
-rw-r--r-- /usr/share/zsh/site-functions/_$NAME
LIST
diff "$W/want" "$W/files" >&2 || fail "the image's files differ from the list above"
mkdir "$W/x"; unsquashfs -q -d "$W/x/root" "$W/$NAME.raw" >/dev/null
cmp -s "$BIN" "$W/x/root/usr/bin/$NAME" && cmp -s "$INSTALL" "$W/x/root/usr/lib/$NAME/install.sh" || fail "the image's binary or install.sh is not the one given"
# extension-release as systemd-sysext compares it with the host: ID=_any matches any host ID (no
# SYSEXT_LEVEL/VERSION_ID needed then); ARCHITECTURE in systemd's names (x86-64) for uname's x86_64.
# shellcheck disable=SC1090  # key=value lines, as systemd parses them
rel() { (. "$W/x/root/usr/lib/extension-release.d/extension-release.$NAME"; eval "echo \"\${$1:-}\""); }
[ "$(rel ID)" = _any ] && [ -z "$(rel VERSION_ID)" ] || fail "extension-release: ID=$(rel ID) VERSION_ID=$(rel VERSION_ID)"
[ "$(uname -m)" = x86_64 ] && [ "$(rel ARCHITECTURE)" = x86-64 ] || fail "extension-release: ARCHITECTURE=$(rel ARCHITECTURE) on $(uname -m)"
grep -qx "Upholds=$NAME-setup.service" "$W/x/root/usr/lib/systemd/system/multi-user.target.d/10-$NAME.conf" || fail "multi-user.target does not uphold the setup unit"
pass "sysext: systemd-dissect sees an extension for system under $NAME.raw only (extension-release ID=_any, x86-64, version $VERSION); squashfs of usr/ only, root-owned, the packages' files plus setup unit, drop-in and factory config; binary and install.sh byte for byte"

# --- merged into a Debian 13 tree ---------------------------------------------------------------------
for k in iamkey defiam chainkey; do ssh-keygen -q -t ed25519 -N '' -C "$k" -f "$W/$k"; done
iam create-user "$IAMU"
iam upload "$IAMU" "$W/iamkey.pub" >/dev/null
iam create-user "$DEF"
iam upload "$DEF" "$W/defiam.pub" >/dev/null
tree trixie trixie openssh-server,systemd-userdbd
fresh trixie
[ -x "$T/usr/bin/systemd-tmpfiles" ] || fail "the trixie tree has no systemd-tmpfiles"
ln -sf /usr/lib/systemd/sshd_config.d/20-systemd-userdb.conf "$T/etc/ssh/sshd_config.d/20-systemd-userdb.conf"
cloud_default "$DEF"
chroot "$T" useradd --create-home --shell /bin/sh udbuser; chroot "$T" usermod -p '*' udbuser
mkdir -p "$T/etc/userdb"
printf '{"userName":"udbuser","uid":%s,"privileged":{"sshAuthorizedKeys":["%s"]}}\n' \
    "$(chroot "$T" id -u udbuser)" "$(cat "$W/chainkey.pub")" > "$T/etc/userdb/udbuser.user"
chmod 0644 "$T/etc/userdb/udbuser.user"
# ./run is a tmpfs on a booted host (systemd-analyze in the tree leaves systemd-units-load there).
RECORDS=(./etc/extensions ./etc/$NAME ./var/log ./run)
before=$(snapshot "$T" "${RECORDS[@]}")
# What Butane writes: the image under its name in /etc/extensions.
install -d -m 0755 "$T/etc/extensions"
install -m 0644 "$W/$NAME.raw" "$T/etc/extensions/$NAME.raw"
# The tree becomes a shared mount point of this namespace, so the overlay systemd-sysext mounts in its
# own child namespace shows here (and nowhere else).
mount --bind "$T" "$T"; mount --make-shared "$T"; MERGED=$T
systemd-sysext --root="$T" merge > "$W/log" 2>&1 || fail "systemd-sysext merge: $(cat "$W/log")"
[ "$(findmnt -n -o FSTYPE "$T/usr")" = overlay ] && [ -x "$T/usr/bin/$NAME" ] || fail "merge: no overlay on the tree's /usr"
[ "$(in_tree /usr/bin/$NAME --version | cut -d' ' -f1)" = "$NAME" ] || fail "merged binary does not run in the tree"
# The tree's own systemd (257) checks the unit as it would load it (the commands exist in the merged tree).
in_tree systemd-analyze verify --man=no /usr/lib/systemd/system/$NAME-setup.service > "$W/log" 2>&1 || fail "systemd-analyze verify: $(cat "$W/log")"
[ ! -s "$W/log" ] || fail "systemd-analyze verify warns: $(cat "$W/log")"

# setup_unit: the unit's ExecStartPre, ExecStart, ExecStartPost, in order, in the tree (as systemd runs them).
setup_unit() {
    local line
    while IFS= read -r line; do
        # shellcheck disable=SC2086  # the unit's command lines have no quoting
        in_tree ${line#*=} || return 1
    done < <(grep -E '^ExecStart(Pre|Post)?=' "$T/usr/lib/systemd/system/$NAME-setup.service" |
        awk -F= '{ o = ($1 == "ExecStartPre") ? 1 : ($1 == "ExecStart") ? 2 : 3; print o "\t" $0 }' | sort -s -k1,1 | cut -f2-)
}
# First boot without an operator's file: the factory default appears.
in_tree systemd-tmpfiles --create /usr/lib/tmpfiles.d/$NAME-config.conf || fail "the setup unit's tmpfiles entry"
cmp -s "$W/x/root/usr/share/factory/etc/$NAME/config" "$T/etc/$NAME/config" || fail "no factory config in /etc"
# The operator's settings (as Butane would write them): kept by every run of the unit.
printf 'credentials-file = /etc/iak-test-credentials\nendpoint-url = %s\ntimeout = 3\n' "$MOTO_URL" >> "$T/etc/$NAME/config"
cp "$T/etc/$NAME/config" "$W/config.edited"
setup_unit > "$W/log" 2>&1 || fail "the setup unit failed: $(cat "$W/log")"
cmp -s "$W/config.edited" "$T/etc/$NAME/config" || fail "the setup unit changed the operator's config"
[ -x "$T/var/lib/$NAME/install.sh" ] || fail "the setup unit kept no copy of install.sh"
CHAIN=" --chain /usr/bin/userdbctl --chain-arg ssh-authorized-keys --chain-arg %u"
tT
grep -qx "authorizedkeyscommand /usr/bin/$NAME --config /etc/$NAME/config --deny-user $DEF --max-uid 60000$CHAIN --uid %U -- %u %f %t" "$W/T" &&
    grep -qx "authorizedkeyscommanduser $NAME" "$W/T" && grep -qx "authorizedkeysfile none" "$W/T" ||
    fail "sysext: settings not in effect: $(grep -i authorizedkeys "$W/T")"
CHAINED_USER=udbuser login_test "sysext in Debian 13"
cp "$T/etc/ssh/sshd_config.d/10-$NAME.conf" "$T/var/lib/$NAME/$NAME.manifest" "$W/"
setup_unit > "$W/log" 2>&1 || fail "the setup unit's second run failed: $(cat "$W/log")"
cmp -s "$W/10-$NAME.conf" "$T/etc/ssh/sshd_config.d/10-$NAME.conf" && cmp -s "$W/$NAME.manifest" "$T/var/lib/$NAME/$NAME.manifest" ||
    fail "the setup unit's second run changed the drop-in or the manifest"
pass "sysext merged by systemd-sysext into Debian 13: the setup unit (systemd-analyze verify clean; factory config when /etc has none, the operator's kept) configures sshd; IAM user, default account and userdbctl's chained key log in through the tree's sshd; a second run changes nothing"

# Removal: the image goes (unmerged), then the install.sh the unit kept takes the rest away.
rm -f "$T/etc/extensions/$NAME.raw"
systemd-sysext --root="$T" unmerge > "$W/log" 2>&1 || fail "systemd-sysext unmerge: $(cat "$W/log")"
[ ! -e "$T/usr/bin/$NAME" ] || fail "unmerge left the binary"
in_tree /var/lib/$NAME/install.sh --uninstall > "$W/log" 2>&1 || fail "install.sh --uninstall after removal: $(cat "$W/log")"
umount "$T"; MERGED=
[ "$before" = "$(snapshot "$T" "${RECORDS[@]}")" ] ||
    { diff <(echo "$before") <(snapshot "$T" "${RECORDS[@]}") >&2; fail "removal did not restore the tree"; }
tT
grep -qx "authorizedkeyscommand /usr/bin/userdbctl ssh-authorized-keys %u" "$W/T" || fail "after removal sshd runs $(grep -i '^authorizedkeyscommand ' "$W/T")"
pass "sysext removed: unmerge, then the kept install.sh --uninstall restores the tree (userdbctl in effect again)"

echo "sysext: ${PASSED} passed, 0 failed"
