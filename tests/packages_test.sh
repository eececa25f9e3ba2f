#!/usr/bin/env bash
# The Debian package (install.sh --package FILE.deb) on real Debian 12 and 13 trees, and the RPM on a
# Debian 12 tree (the images tier's debootstrap trees, cached under target/images; a scratch copy per test):
#   - --package-all DIR: the tarball, the .deb, the .rpm, the sysext .raw, their .sha256 files, SHA256SUMS
#   - dpkg-deb --info/--contents: control fields, conffile, maintainer scripts, every shipped file, the
#     binary byte for byte
#   - installed with apt-get install ./FILE.deb INSIDE each tree (chroot; /proc mounted in a private mount
#     namespace, as dpkg's maintainer scripts need it), first an older version, then the new one over it:
#     the operator's edit of the conffile /etc/iam-authorized-keys/config survives the upgrade
#   - the tree's own sshd on a loopback port: an IAM user logs in, the default account (cloud-init's
#     default_user) logs in with its authorized_keys key, a chained command's key logs in (Debian 13: the
#     real userdbctl; Debian 12: EC2 Instance Connect's unit override with a root-owned stand-in program)
#   - dpkg -r: sshd as before (the other command in effect again), the conffile kept; installed again;
#     dpkg --purge: the tree as before the install (dpkg's and apt's own records aside)
#   - a postinst that finds sshd would not use our settings fails, and leaves sshd's configuration as it was
#   - the .rpm (rpmbuild from the same staged tree): rpm -qp --info/--requires/--scripts/--configfiles/--dump
#     (the .deb's file list, the binary byte for byte); rpm --root into a Debian 12 tree, scriptlets run in
#     it: -i 0.0.1, -U keeps the edited %config(noreplace), logins (RHEL 9's EC2 Instance Connect drop-in
#     chained), -e gives sshd back and keeps user, cache and config.rpmsave, the kept install.sh
#     --uninstall restores the tree; a failing %post rolls back (rpm warns), --reinstall after the fix
# Needs root (chroot, unshare, accounts in the trees).
#
# usage: tests/packages_test.sh STATIC_BINARY MOTO_URL PYTHON(with boto3)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
needs "Debian packages dpkg, util-linux, rpm" dpkg-deb unshare rpm rpmbuild
tree_tier_start packages "$@"
trap tree_cleanup EXIT
DEF=iakdef$$ IAMU=iakpkg$$
apt_install() { in_tree apt-get install -y -q "$@"; }
dpkg_version() { in_tree dpkg-query -W -f '${Status} ${Version}' $NAME 2>/dev/null || true; }
# What dpkg and apt keep about packages; everything else must be as before after a purge.
RECORDS=(./var/lib/dpkg ./var/lib/apt ./var/cache/apt ./var/cache/debconf ./var/log)

# --- the package files ---------------------------------------------------------------------------------
VERSION=$(crate_version)
"$INSTALL" --binary "$BIN" --package-all "$W/all" 2>"$W/log" || fail "--package-all: $(cat "$W/log")"
ALL="$NAME-$VERSION-1.x86_64.rpm $NAME-$VERSION-x86-64.raw $NAME-$VERSION-x86_64.tar.gz ${NAME}_${VERSION}_amd64.deb"
want_all=SHA256SUMS; for f in $ALL; do want_all+=" $f $f.sha256"; done
[ "$(cd "$W/all" && echo *)" = "$want_all" ] || fail "--package-all wrote $(ls "$W/all")"
(cd "$W/all" && sha256sum -c --quiet SHA256SUMS && sha256sum -c --quiet ./*.sha256) || fail "--package-all: a checksum does not match"
[ "$(awk '{ print $2 }' "$W/all/SHA256SUMS" | sort | xargs)" = "$ALL" ] || fail "SHA256SUMS: $(cat "$W/all/SHA256SUMS")"
tar -tzf "$W/all/$NAME-$VERSION-x86_64.tar.gz" | grep -qx "$NAME/install.sh" || fail "--package-all: the tarball lacks install.sh"
"$INSTALL" --binary "$BIN" --package "$W/new.deb" 2>"$W/log" || fail "--package new.deb: $(cat "$W/log")"
cmp -s "$W/new.deb" "$W/all/${NAME}_${VERSION}_amd64.deb" && cmp -s "$W/new.deb.sha256" "$W/all/${NAME}_${VERSION}_amd64.deb.sha256" ||
    dpkg-deb --contents "$W/new.deb" | awk '{ print $1, $2, $3, $6 }' | cmp -s - <(dpkg-deb --contents "$W/all/${NAME}_${VERSION}_amd64.deb" | awk '{ print $1, $2, $3, $6 }') ||
    fail "--package FILE.deb and --package-all differ in contents"
"$INSTALL" --binary "$BIN" --package "$W/old.deb" --package-version 0.0.1 2>"$W/log" || fail "--package old.deb: $(cat "$W/log")"
(cd "$W" && sha256sum -c --quiet new.deb.sha256) || fail "new.deb.sha256 does not match"
! "$INSTALL" --binary "$BIN" --package "$W/x.zip" 2>"$W/log" && grep -q "must end in .tar.gz, .deb, .rpm or .raw" "$W/log" && [ ! -e "$W/x.zip" ] ||
    fail "--package with an unknown extension not refused: $(cat "$W/log")"
dpkg-deb --info "$W/new.deb" > "$W/info"
for want in "Package: $NAME" "Version: $VERSION" "Architecture: amd64" "Depends: openssh-server" \
    "Description: SSH keys of AWS IAM users for sshd (AuthorizedKeysCommand)"; do
    grep -qx " $want" "$W/info" || fail "control: no '$want' in $(cat "$W/info")"
done
[ "$(dpkg-deb --field "$W/old.deb" Version)" = 0.0.1 ] || fail "--package-version not in the control file"
[ "$(dpkg-deb --ctrl-tarfile "$W/new.deb" | tar -xO ./conffiles)" = /etc/$NAME/config ] || fail "conffiles"
dpkg-deb --ctrl-tarfile "$W/new.deb" | tar -xO ./postinst | grep -q "/usr/lib/$NAME/install.sh --installed --bindir /usr/bin --config /etc/$NAME/config" ||
    fail "postinst does not run install.sh --installed"
dpkg-deb --contents "$W/new.deb" | awk '$1 !~ /^d/ { print $1, $2, $6 }' | sort -k3 > "$W/contents"
cat > "$W/want" <<LIST
-rw-r--r-- root/root ./etc/$NAME/config
-rwxr-xr-x root/root ./usr/bin/$NAME
-rwxr-xr-x root/root ./usr/lib/$NAME/install.sh
-rw-r--r-- root/root ./usr/lib/$NAME/sshd_config.d/10-$NAME.conf
-rw-r--r-- root/root ./usr/lib/systemd/system/$NAME-sync.service
-rw-r--r-- root/root ./usr/lib/systemd/system/$NAME-sync.timer
-rw-r--r-- root/root ./usr/lib/sysusers.d/$NAME.conf
-rw-r--r-- root/root ./usr/lib/tmpfiles.d/$NAME.conf
-rw-r--r-- root/root ./usr/share/bash-completion/completions/$NAME
-rw-r--r-- root/root ./usr/share/doc/$NAME/README.md.gz
-rw-r--r-- root/root ./usr/share/doc/$NAME/copyright
-rw-r--r-- root/root ./usr/share/doc/$NAME/host-assume-role.json
-rw-r--r-- root/root ./usr/share/doc/$NAME/read-keys.json
-rw-r--r-- root/root ./usr/share/doc/$NAME/reader-trust-policy.json
-rw-r--r-- root/root ./usr/share/doc/$NAME/sync-users.json
-rw-r--r-- root/root ./usr/share/man/man8/$NAME.8.gz
-rw-r--r-- root/root ./usr/share/zsh/vendor-completions/_$NAME
LIST
diff "$W/want" "$W/contents" >&2 || fail "package contents differ from the list above"
mkdir "$W/x"; dpkg-deb --extract "$W/new.deb" "$W/x"
cmp -s "$BIN" "$W/x/usr/bin/$NAME" || fail "the packaged binary is not the one given with --binary"
cmp -s "$INSTALL" "$W/x/usr/lib/$NAME/install.sh" || fail "the packaged install.sh is not this one"
zcat "$W/x/usr/share/man/man8/$NAME.8.gz" | grep -q '^\.TH' || fail "man page"
grep -q "ExecStart=/usr/bin/$NAME sync-users --config /etc/$NAME/config" "$W/x/usr/lib/systemd/system/$NAME-sync.service" || fail "sync service"
! find "$W/x" -path '*wants*' | grep -q . || fail "the package enables a unit"
pass "--package-all: tarball, .deb, .rpm and sysext .raw with SHA256SUMS; dpkg-deb: control (version $VERSION from Cargo.toml, Depends openssh-server), conffile, postinst running install.sh --installed, the listed files root-owned, the binary byte for byte, the timer not enabled"

# --- the .rpm (rpmbuild from the same staged tree), read with rpm -qp -------------------------------------
RPM=$W/all/$NAME-$VERSION-1.x86_64.rpm
"$INSTALL" --binary "$BIN" --package "$W/new.rpm" 2>"$W/log" || fail "--package new.rpm: $(cat "$W/log")"
"$INSTALL" --binary "$BIN" --package "$W/old.rpm" --package-version 0.0.1 2>"$W/log" || fail "--package old.rpm: $(cat "$W/log")"
(cd "$W" && sha256sum -c --quiet new.rpm.sha256) || fail "new.rpm.sha256 does not match"
cmp -s <(rpm -qp --dump "$W/new.rpm" | awk '{ print $1, $2, $4, $5, $6, $7 }') <(rpm -qp --dump "$RPM" | awk '{ print $1, $2, $4, $5, $6, $7 }') ||
    fail "--package FILE.rpm and --package-all differ in contents"
rpm -qp --info "$RPM" > "$W/rinfo"
for want in "Name        : $NAME" "Version     : $VERSION" "Release     : 1" "Architecture: x86_64" "License     : Apache-2.0" \
    "Summary     : SSH keys of AWS IAM users for sshd (AuthorizedKeysCommand)"; do
    grep -qx "$want" "$W/rinfo" || fail "rpm --info: no '$want' in $(cat "$W/rinfo")"
done
[ "$(rpm -qp --qf '%{VERSION}-%{RELEASE}' "$W/old.rpm")" = 0.0.1-1 ] || fail "--package-version not in the .rpm"
# Requires: only what the scriptlets and sshd need, no automatic ones (the binary is static).
[ "$(rpm -qp --requires "$RPM" | grep -v '^rpmlib(' | sort -u | xargs)" = "/bin/sh bash coreutils findutils gawk grep openssh-server sed shadow-utils" ] ||
    fail "rpm --requires: $(rpm -qp --requires "$RPM" | xargs)"
[ "$(rpm -qp --qf '[%{REQUIREFLAGS:deptype} %{REQUIRENAME}\n]' "$RPM" | grep -v rpmlib | sort -u | xargs)" = \
  "manual openssh-server post bash post coreutils post findutils post gawk post grep post openssh-server post sed post shadow-utils post,interp /bin/sh preun bash preun,interp /bin/sh" ] ||
    fail "rpm requires by scriptlet: $(rpm -qp --qf '[%{REQUIREFLAGS:deptype} %{REQUIRENAME}\n]' "$RPM" | grep -v rpmlib | xargs)"
rpm -qp --scripts "$RPM" > "$W/rscripts"
awk '/^postinstall scriptlet \(/ { p = 1; next } /^[a-z]+ scriptlet \(/ { p = 0 } p' "$W/rscripts" | grep -qx "/usr/lib/$NAME/install.sh --installed --bindir /usr/bin --config /etc/$NAME/config" ||
    fail "%post does not run install.sh --installed: $(cat "$W/rscripts")"
awk '/^preuninstall scriptlet \(/ { p = 1; next } /^[a-z]+ scriptlet \(/ { p = 0 } p' "$W/rscripts" | tr '\n' ' ' |
    grep -q "if \[ \"\$1\" = 0 \] .*/usr/lib/$NAME/install.sh --uninstall-sshd" || fail "%preun (erase only): $(cat "$W/rscripts")"
! grep -q '^postuninstall\|^preinstall' "$W/rscripts" || fail "unexpected scriptlets: $(cat "$W/rscripts")"
[ "$(rpm -qp --configfiles "$RPM")" = /etc/$NAME/config ] || fail "rpm --configfiles: $(rpm -qp --configfiles "$RPM")"
[ "$(rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$RPM" | grep "/etc/$NAME/config")" = "cn /etc/$NAME/config" ] ||
    fail "the config is not %config(noreplace)"
# One file list: the .deb's files, zsh's directory aside (Fedora/RHEL read site-functions); the
# package's own directories and zsh's completion directory (co-owned), and no system directory.
rpm -qp --dump "$RPM" | awk '$5 !~ /^04/ { print $1 }' | sort > "$W/rfiles"
awk '{ print substr($3, 2) }' "$W/want" | sed 's|/usr/share/zsh/vendor-completions/|/usr/share/zsh/site-functions/|' | sort | diff - "$W/rfiles" >&2 ||
    fail "the .rpm's files differ from the .deb's"
[ "$(rpm -qp --dump "$RPM" | awk '$5 ~ /^04/ { print $1 }' | sort | xargs)" = "/etc/$NAME /usr/lib/$NAME /usr/lib/$NAME/sshd_config.d /usr/share/doc/$NAME /usr/share/zsh /usr/share/zsh/site-functions" ] ||
    fail "the .rpm owns other directories: $(rpm -qp --dump "$RPM" | awk '$5 ~ /^04/ { print $1 }' | xargs)"
[ -z "$(rpm -qp --dump "$RPM" | awk '$6 != "root" || $7 != "root"')" ] || fail "a file in the .rpm is not root:root"
rpm -qp --dump "$RPM" | awk -v b="/usr/bin/$NAME" -v i="/usr/lib/$NAME/install.sh" '$1 == b || $1 == i { print $4, $5, $1 }' > "$W/rdigests"
printf '%s 0100755 /usr/bin/%s\n%s 0100755 /usr/lib/%s/install.sh\n' "$(sha256sum < "$BIN" | cut -d' ' -f1)" "$NAME" \
    "$(sha256sum < "$INSTALL" | cut -d' ' -f1)" "$NAME" | diff - "$W/rdigests" >&2 || fail "the .rpm's binary or install.sh is not the one given (stripped?)"
pass "rpm -qp: --info (version $VERSION-1, x86_64), --requires (openssh-server; bash, shadow-utils for the scriptlets; nothing automatic), --scripts (%post install.sh --installed, %preun on erase only), --configfiles (noreplace); the .deb's file list, root-owned, the binary and install.sh byte for byte"

# --- on real trees -------------------------------------------------------------------------------------
for k in iamkey defiam chainkey; do ssh-keygen -q -t ed25519 -N '' -C "$k" -f "$W/$k"; done
iam create-user "$IAMU"
iam upload "$IAMU" "$W/iamkey.pub" >/dev/null
iam create-user "$DEF"
iam upload "$DEF" "$W/defiam.pub" >/dev/null

tree bookworm bookworm openssh-server
tree trixie trixie openssh-server,systemd-userdbd

# package_test LABEL CHAIN_ARGS OTHER_COMMAND: on the prepared tree $T: old package, conffile edit, new
# package over it, sshd -T, logins (CHAINED_USER too), remove, purge.
package_test() {
    local label=$1 chain=$2 other=$3 before
    cp "$W/old.deb" "$W/new.deb" "$T/tmp/"
    before=$(snapshot "$T" "${RECORDS[@]}")
    apt_install /tmp/old.deb > "$W/apt.log" 2>&1 || fail "$label: apt-get install ./old.deb: $(tail -20 "$W/apt.log")"
    [ "$(dpkg_version)" = "install ok installed 0.0.1" ] || fail "$label: old package not installed: $(dpkg_version)"
    # The operator's settings: the lookups go to the emulator with the test's credentials.
    printf 'credentials-file = /etc/iak-test-credentials\nendpoint-url = %s\ntimeout = 3\n' "$MOTO_URL" >> "$T/etc/$NAME/config"
    cp "$T/etc/$NAME/config" "$W/config.edited"
    apt_install /tmp/new.deb > "$W/apt.log" 2>&1 || fail "$label: apt-get install ./new.deb over 0.0.1: $(tail -20 "$W/apt.log")"
    [ "$(dpkg_version)" = "install ok installed $VERSION" ] || fail "$label: new package not installed: $(dpkg_version)"
    grep -q "Unpacking $NAME ($VERSION) over (0.0.1)" "$W/apt.log" || fail "$label: not an upgrade: $(cat "$W/apt.log")"
    cmp -s "$W/config.edited" "$T/etc/$NAME/config" || fail "$label: the upgrade changed the operator's config"
    [ ! -e "$T/etc/$NAME/config.dpkg-new" ] && [ ! -e "$T/etc/$NAME/config.dpkg-dist" ] || fail "$label: dpkg left a config.dpkg-* file"
    tT
    grep -qx "authorizedkeyscommand /usr/bin/$NAME --config /etc/$NAME/config --deny-user $DEF --max-uid 60000${chain} --uid %U -- %u %f %t" "$W/T" &&
        grep -qx "authorizedkeyscommanduser $NAME" "$W/T" && grep -qx "authorizedkeysfile none" "$W/T" ||
        fail "$label: the package's settings not in effect: $(grep -i authorizedkeys "$W/T")"
    login_test "$label"
    in_tree dpkg -r $NAME > "$W/dpkg.log" 2>&1 || fail "$label: dpkg -r: $(cat "$W/dpkg.log")"
    [ "$(dpkg_version)" = "deinstall ok config-files $VERSION" ] || fail "$label: after dpkg -r: $(dpkg_version)"
    [ ! -e "$T/etc/ssh/sshd_config.d/10-$NAME.conf" ] && [ ! -e "$T/usr/bin/$NAME" ] || fail "$label: dpkg -r left the drop-in or the binary"
    cmp -s "$W/config.edited" "$T/etc/$NAME/config" || fail "$label: dpkg -r did not keep the config"
    grep -q "^$NAME:" "$T/etc/passwd" || fail "$label: dpkg -r removed the user (purge does)"
    tT
    grep -qx "authorizedkeyscommand $other" "$W/T" || fail "$label: after dpkg -r sshd runs $(grep -i '^authorizedkeyscommand ' "$W/T"), not '$other'"
    # Installed again over the kept config and user, then purged from the installed state (prerm remove
    # and postrm purge in one run).
    apt_install /tmp/new.deb > "$W/apt.log" 2>&1 || fail "$label: apt-get install after dpkg -r: $(tail -20 "$W/apt.log")"
    tT
    grep -qx "authorizedkeyscommand /usr/bin/$NAME --config /etc/$NAME/config --deny-user $DEF --max-uid 60000${chain} --uid %U -- %u %f %t" "$W/T" ||
        fail "$label: reinstalled after dpkg -r, not in effect: $(grep -i authorizedkeys "$W/T")"
    cmp -s "$W/config.edited" "$T/etc/$NAME/config" || fail "$label: the reinstall changed the config"
    in_tree dpkg --purge $NAME > "$W/dpkg.log" 2>&1 || fail "$label: dpkg --purge: $(cat "$W/dpkg.log")"
    [ -z "$(dpkg_version)" ] || [ "$(dpkg_version)" = "unknown ok not-installed " ] || fail "$label: after purge: $(dpkg_version)"
    [ "$before" = "$(snapshot "$T" "${RECORDS[@]}")" ] ||
        { diff <(echo "$before") <(snapshot "$T" "${RECORDS[@]}") >&2; fail "$label: dpkg --purge did not restore the tree"; }
    rm -f "$T/tmp/old.deb" "$T/tmp/new.deb"
}

# Debian 12, EC2 Instance Connect's override of ssh.service (as in the images tier) and a stand-in program.
fresh bookworm
cloud_default "$DEF"
mkdir -p "$T/usr/lib/systemd/system/ssh.service.d" "$T/usr/share/ec2-instance-connect"
printf '[Service]\nExecStart=\nExecStart=/usr/sbin/sshd -D -o "AuthorizedKeysCommand /usr/share/ec2-instance-connect/eic_run_authorized_keys %%%%u %%%%f" -o "AuthorizedKeysCommandUser ec2-instance-connect" $SSHD_OPTS\n' \
    > "$T/usr/lib/systemd/system/ssh.service.d/ec2-instance-connect.conf"
printf '#!/bin/sh\n[ "$1" = eicuser ] && echo "%s"\nexit 0\n' "$(cat "$W/chainkey.pub")" > "$T/usr/share/ec2-instance-connect/eic_run_authorized_keys"
chmod 0755 "$T/usr/share/ec2-instance-connect/eic_run_authorized_keys"
chroot "$T" useradd --create-home --shell /bin/sh eicuser; chroot "$T" usermod -p '*' eicuser
# tT runs sshd without the unit's options: the config files alone have no other command.
CHAINED_USER=eicuser package_test "Debian 12 with EC2 Instance Connect" \
    " --chain /usr/share/ec2-instance-connect/eic_run_authorized_keys --chain-arg %u --chain-arg %f" none
"$INSTALL" --root "$T" --sshd-unit > "$W/u"
grep -q '^option AuthorizedKeysCommand /usr/share/ec2-instance-connect/eic_run_authorized_keys %u %f' "$W/u" ||
    fail "Debian 12: after purge the ssh unit does not pass EIC's options again: $(cat "$W/u")"
pass "Debian 12 (OpenSSH 9.2): apt-get install ./old.deb, then ./new.deb over it keeps the operator's config; IAM user, default account and EIC's chained key log in through the tree's sshd; dpkg -r keeps config and user, sshd as before; reinstall works; dpkg --purge restores the tree and EIC's unit options"

# Debian 13 with systemd-userdbd (its 20- drop-in linked, as after first boot): userdbctl is chained.
fresh trixie
ln -sf /usr/lib/systemd/sshd_config.d/20-systemd-userdb.conf "$T/etc/ssh/sshd_config.d/20-systemd-userdb.conf"
cloud_default "$DEF"
chroot "$T" useradd --create-home --shell /bin/sh udbuser; chroot "$T" usermod -p '*' udbuser
mkdir -p "$T/etc/userdb"
printf '{"userName":"udbuser","uid":%s,"privileged":{"sshAuthorizedKeys":["%s"]}}\n' \
    "$(chroot "$T" id -u udbuser)" "$(cat "$W/chainkey.pub")" > "$T/etc/userdb/udbuser.user"
chmod 0644 "$T/etc/userdb/udbuser.user"
CHAINED_USER=udbuser package_test "Debian 13 with userdbctl" \
    " --chain /usr/bin/userdbctl --chain-arg ssh-authorized-keys --chain-arg %u" "/usr/bin/userdbctl ssh-authorized-keys %u"
pass "Debian 13 (OpenSSH 10.0, systemd-userdbd): the same, with the real userdbctl chained (its key logs in); dpkg -r and --purge give userdbctl back"

# The package over an install.sh install (the same manifest): refused, that install left as it was.
fresh bookworm
"$INSTALL" --root "$T" --binary "$BIN" 2>"$W/log" || fail "install.sh into the tree: $(cat "$W/log")"
cp "$T/etc/ssh/sshd_config.d/10-$NAME.conf" "$T/var/lib/$NAME/$NAME.manifest" "$W/"
cp "$W/new.deb" "$T/tmp/"
! apt_install /tmp/new.deb > "$W/apt.log" 2>&1 || fail "the package configured itself over an install.sh install"
grep -q "/usr/local/bin/$NAME was installed by install.sh" "$W/apt.log" || fail "over install.sh: not named: $(cat "$W/apt.log")"
cmp -s "$W/10-$NAME.conf" "$T/etc/ssh/sshd_config.d/10-$NAME.conf" && cmp -s "$W/$NAME.manifest" "$T/var/lib/$NAME/$NAME.manifest" ||
    fail "over install.sh: the failed postinst changed that install's drop-in or manifest"
pass "the package refuses to configure itself over an install.sh install (named), which stays as it was"

# A postinst that finds sshd would not use our settings (a conflicting line read before the Include)
# fails, and sshd's configuration stays as it was; purge then leaves the tree as before.
fresh bookworm
sed -i '1i AuthorizedKeysFile .ssh/authorized_keys' "$T/etc/ssh/sshd_config"
cp "$W/new.deb" "$T/tmp/"
before=$(snapshot "$T" "${RECORDS[@]}")
! apt_install /tmp/new.deb > "$W/apt.log" 2>&1 || fail "refusal: the package installed over a conflicting sshd_config"
grep -q "sshd would not use our AuthorizedKeysFile" "$W/apt.log" && grep -q "rolling back" "$W/apt.log" ||
    fail "refusal: not named or not rolled back: $(cat "$W/apt.log")"
[ "$(dpkg_version)" = "install ok half-configured $VERSION" ] || fail "refusal: dpkg state $(dpkg_version)"
[ ! -e "$T/etc/ssh/sshd_config.d/10-$NAME.conf" ] && ! grep -q "^$NAME:" "$T/etc/passwd" && [ ! -e "$T/var/lib/$NAME" ] ||
    fail "refusal: the failed postinst left a drop-in, the user or its state"
in_tree dpkg --purge $NAME > "$W/dpkg.log" 2>&1 || fail "refusal: dpkg --purge: $(cat "$W/dpkg.log")"
[ "$before" = "$(snapshot "$T" "${RECORDS[@]}")" ] ||
    { diff <(echo "$before") <(snapshot "$T" "${RECORDS[@]}") >&2; fail "refusal: purge did not restore the tree"; }
pass "a postinst that finds sshd would not use our settings fails (named, rolled back: no drop-in, user or state), dpkg --purge then restores the tree"

# --- the .rpm installed with rpm --root into a Debian 12 tree ---------------------------------------------
# rpm runs the scriptlets chrooted into the tree (/bin/sh, bash, useradd and the tree's own sshd are
# there); --nodeps because the tree's rpm database does not know openssh-server (dpkg installed it).
# The package file is read from this machine's side (rpm resolves it before it chroots).
# The database at /var/lib/rpm in the tree, as on Fedora/RHEL (Debian's rpm defaults to ~/.rpmdb).
in_tree_rpm() {
    unshare --mount --propagation private sh -c 'mount -t proc proc "$0/proc" && exec "$@"' "$T" \
        rpm --root "$T" --dbpath /var/lib/rpm "$@"
}
rpm_version() { in_tree_rpm -q --qf '%{VERSION}-%{RELEASE}' $NAME 2>/dev/null || true; }
RPM_RECORDS=(./var/lib/rpm ./var/log ./etc/$NAME)
EIC_CMD="/usr/share/ec2-instance-connect/eic_run_authorized_keys %u %f"
# RHEL 9 family's EC2 Instance Connect: a 60- drop-in sets its command (a root-owned stand-in here).
fresh bookworm
cloud_default "$DEF"
mkdir -p "$T/usr/share/ec2-instance-connect"
printf '#!/bin/sh\n[ "$1" = eicuser ] && echo "%s"\nexit 0\n' "$(cat "$W/chainkey.pub")" > "$T/usr/share/ec2-instance-connect/eic_run_authorized_keys"
chmod 0755 "$T/usr/share/ec2-instance-connect/eic_run_authorized_keys"
printf 'AuthorizedKeysCommand %s\nAuthorizedKeysCommandUser ec2-instance-connect\n' "$EIC_CMD" > "$T/etc/ssh/sshd_config.d/60-ec2-instance-connect.conf"
chroot "$T" useradd --system --no-create-home --shell /usr/sbin/nologin ec2-instance-connect
chroot "$T" useradd --create-home --shell /bin/sh eicuser; chroot "$T" usermod -p '*' eicuser
# systemd's directory on RPM distros (RHEL's openssh-server requires systemd); this tree has no systemd.
install -d -m 0755 "$T/usr/lib/sysusers.d"
before=$(snapshot "$T" "${RPM_RECORDS[@]}" ./tmp)
in_tree_rpm --initdb || fail "rpm --initdb in the tree"
# As on a RHEL/Amazon Linux/Fedora image being built: no host keys yet (sshd-keygen@ makes them at first
# boot), which %post's sshd -t must not take for a broken config.
mkdir -p "$W/hostkeys" && mv "$T"/etc/ssh/ssh_host_* "$W/hostkeys/"
in_tree_rpm -i --nodeps "$W/old.rpm" > "$W/rpm.log" 2>&1 || fail "rpm -i old.rpm: $(cat "$W/rpm.log")"
! grep -q "scriptlet failed" "$W/rpm.log" || fail "rpm -i without host keys: %post failed: $(cat "$W/rpm.log")"
mv "$W/hostkeys"/* "$T/etc/ssh/"
[ "$(rpm_version)" = 0.0.1-1 ] || fail "rpm: old package not installed: $(rpm_version)"
[ -f "$T/etc/ssh/sshd_config.d/10-$NAME.conf" ] || fail "rpm -i without host keys: no drop-in: $(cat "$W/rpm.log")"
[ -x "$T/var/lib/$NAME/install.sh" ] || fail "rpm %post kept no copy of install.sh"
printf 'credentials-file = /etc/iak-test-credentials\nendpoint-url = %s\ntimeout = 3\n' "$MOTO_URL" >> "$T/etc/$NAME/config"
cp "$T/etc/$NAME/config" "$W/config.edited"
in_tree_rpm -U --nodeps "$W/new.rpm" > "$W/rpm.log" 2>&1 || fail "rpm -U new.rpm over 0.0.1: $(cat "$W/rpm.log")"
[ "$(rpm_version)" = "$VERSION-1" ] || fail "rpm: new package not installed: $(rpm_version)"
cmp -s "$W/config.edited" "$T/etc/$NAME/config" || fail "rpm -U changed the operator's config"
[ -z "$(find "$T/etc/$NAME" -name '*.rpm*')" ] || fail "rpm -U left $(find "$T/etc/$NAME" -name '*.rpm*')"
CHAIN=" --chain /usr/share/ec2-instance-connect/eic_run_authorized_keys --chain-arg %u --chain-arg %f"
tT
grep -qx "authorizedkeyscommand /usr/bin/$NAME --config /etc/$NAME/config --deny-user $DEF --max-uid 60000$CHAIN --uid %U -- %u %f %t" "$W/T" &&
    grep -qx "authorizedkeyscommanduser $NAME" "$W/T" && grep -qx "authorizedkeysfile none" "$W/T" ||
    fail "rpm: the package's settings not in effect after the upgrade (the old %preun must not run on upgrade): $(grep -i authorizedkeys "$W/T")"
CHAINED_USER=eicuser login_test "rpm in Debian 12 with RHEL's EC2 Instance Connect drop-in"
in_tree_rpm -e $NAME > "$W/rpm.log" 2>&1 || fail "rpm -e: $(cat "$W/rpm.log")"
[ -z "$(rpm_version | grep -v 'not installed')" ] || fail "rpm -e: still installed: $(rpm_version)"
[ ! -e "$T/etc/ssh/sshd_config.d/10-$NAME.conf" ] && [ ! -e "$T/usr/bin/$NAME" ] || fail "rpm -e left the drop-in or the binary"
grep -q "^$NAME:" "$T/etc/passwd" && [ -d "$T/var/cache/$NAME" ] || fail "rpm -e removed the user or the cache"
cmp -s "$W/config.edited" "$T/etc/$NAME/config.rpmsave" || fail "rpm -e did not keep the edited config (config.rpmsave)"
tT
grep -qx "authorizedkeyscommand $EIC_CMD" "$W/T" || fail "rpm -e: sshd runs $(grep -i '^authorizedkeyscommand ' "$W/T"), not EIC's command"
# rpm has no purge: the copy %post kept removes the rest.
chroot "$T" /var/lib/$NAME/install.sh --uninstall 2>"$W/log" || fail "install.sh --uninstall after rpm -e: $(cat "$W/log")"
[ "$before" = "$(snapshot "$T" "${RPM_RECORDS[@]}" ./tmp)" ] ||
    { diff <(echo "$before") <(snapshot "$T" "${RPM_RECORDS[@]}" ./tmp) >&2; fail "rpm -e + install.sh --uninstall did not restore the tree"; }
pass "rpm --root into Debian 12: rpm -i 0.0.1 (no host keys yet, as in an image build) then -U keeps the edited config (no .rpmnew); IAM user, default account and the chained EIC drop-in's key log in; rpm -e: sshd as before (EIC's command), user, cache and config.rpmsave kept; the kept install.sh --uninstall restores the tree"

# A %post that finds sshd would not use our settings fails, and sshd stays as it was. rpm reports a failed
# %post as a warning (exit status 0) and keeps the package installed: once the conflict is fixed,
# rpm --reinstall (dnf reinstall) runs %post again.
fresh bookworm
install -d -m 0755 "$T/usr/lib/sysusers.d"
before=$(snapshot "$T" "${RPM_RECORDS[@]}" ./tmp)
sed -i '1i AuthorizedKeysFile .ssh/authorized_keys' "$T/etc/ssh/sshd_config"
in_tree_rpm --initdb
in_tree_rpm -i --nodeps "$W/new.rpm" > "$W/rpm.log" 2>&1 || fail "rpm refusal: rpm -i exited non-zero (rpm 4.18 makes a failed %post a warning): $(cat "$W/rpm.log")"
grep -q "sshd would not use our AuthorizedKeysFile" "$W/rpm.log" && grep -q "rolling back" "$W/rpm.log" &&
    grep -q "warning: %post($NAME-$VERSION-1.x86_64) scriptlet failed, exit status 1" "$W/rpm.log" ||
    fail "rpm refusal: not named, not rolled back or not reported: $(cat "$W/rpm.log")"
[ "$(rpm_version)" = "$VERSION-1" ] || fail "rpm refusal: package state $(rpm_version)"
[ ! -e "$T/etc/ssh/sshd_config.d/10-$NAME.conf" ] && ! grep -q "^$NAME:" "$T/etc/passwd" && [ ! -e "$T/var/lib/$NAME" ] ||
    fail "rpm refusal: the failed %post left a drop-in, the user or its state"
sed -i '1d' "$T/etc/ssh/sshd_config"
in_tree_rpm --reinstall --nodeps "$W/new.rpm" > "$W/rpm.log" 2>&1 || fail "rpm --reinstall after the fix: $(cat "$W/rpm.log")"
! grep -q 'scriptlet failed' "$W/rpm.log" || fail "rpm --reinstall after the fix: $(cat "$W/rpm.log")"
tT
grep -qx "authorizedkeyscommanduser $NAME" "$W/T" && grep -qx "authorizedkeysfile none" "$W/T" || fail "rpm --reinstall: not in effect: $(grep -i authorizedkeys "$W/T")"
in_tree_rpm -e $NAME > "$W/rpm.log" 2>&1 || fail "rpm refusal: rpm -e: $(cat "$W/rpm.log")"
chroot "$T" /var/lib/$NAME/install.sh --uninstall 2>"$W/log" || fail "rpm refusal: install.sh --uninstall: $(cat "$W/log")"
[ "$before" = "$(snapshot "$T" "${RPM_RECORDS[@]}" ./tmp)" ] ||
    { diff <(echo "$before") <(snapshot "$T" "${RPM_RECORDS[@]}" ./tmp) >&2; fail "rpm refusal: the tree not restored"; }
pass "rpm: a %post that finds sshd would not use our settings fails (named, rolled back: no drop-in, user or state; rpm warns that %post failed); after the fix rpm --reinstall configures it; rpm -e and the kept install.sh --uninstall restore the tree"

echo "packages: ${PASSED} passed, 0 failed"
