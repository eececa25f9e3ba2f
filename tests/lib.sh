# Shared helpers for the shell test tiers. Sourced, not run.

fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; PASSED=$((${PASSED:-0} + 1)); }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_port PORT [SECONDS]: until something accepts on 127.0.0.1:PORT.
wait_port() {
    local i
    for ((i = 0; i < ${2:-20} * 10; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# Shared by the tiers that run a private sshd (e2e, sync). They set E (work dir), PROXY_BIN, MOTO_URL.

# start_proxy: the fault proxy on $PPORT in front of moto; sets PROXY_PID.
start_proxy() {
    "$PROXY_BIN" "127.0.0.1:$PPORT" "${MOTO_URL#http://}" 2>>"$E/proxy.log" &
    PROXY_PID=$!
    wait_port "$PPORT" || fail "fault proxy did not start"
}

# private_sshd_config PORT USER...: $E/sshd_config for a loopback-only sshd with its own host key.
private_sshd_config() {
    local port=$1; shift
    ssh-keygen -q -t ed25519 -N '' -f "$E/hostkey"
    cat > "$E/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $E/hostkey
PidFile $E/sshd.pid
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AllowUsers $*
LogLevel VERBOSE
CONF
}

# test_credentials FILE: a shared credentials file moto accepts.
# Created 0600: a world-readable credentials file is refused (it holds a secret); a test that runs the
# command as another user gives that user's group read access (0640), as an operator would.
test_credentials() {
    (umask 077; printf '[default]\naws_access_key_id = test\naws_secret_access_key = test\n' > "$1")
}

# ssh_login KEYFILE USER: a real ssh login to the private sshd on $PORT running `true`.
ssh_login() {
    ssh -F /dev/null -i "$1" -p "$PORT" -o BatchMode=yes -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes -o ConnectTimeout=10 -o LogLevel=ERROR \
        "$2@127.0.0.1" true
}

# image_files: the files install.sh --root puts into an empty image tree, sorted as `find | sort` lists them.
image_files() {
    cat <<'LIST'
./etc/ssh/sshd_config.d/10-iam-authorized-keys.conf
./etc/sysusers.d/iam-authorized-keys.conf
./etc/tmpfiles.d/iam-authorized-keys.conf
./usr/local/bin/iam-authorized-keys
./usr/local/share/bash-completion/completions/iam-authorized-keys
./usr/local/share/man/man8/iam-authorized-keys.8
./usr/local/share/zsh/site-functions/_iam-authorized-keys
./var/lib/iam-authorized-keys/iam-authorized-keys.manifest
LIST
}

# iam ARGS...: the IAM emulator's admin helper (tiers that set HERE, PY and MOTO_URL).
iam() { "$PY" "$HERE/iam_admin.py" "$MOTO_URL" "$@"; }

# needs HINT TOOL...: fail when a TOOL is missing, naming HINT (the Debian packages that have them).
needs() {
    local hint=$1 t; shift
    for t in "$@"; do command -v "$t" >/dev/null || fail "$t missing ($hint)"; done
}

# crate_version: Cargo.toml's [package] version (what install.sh names packages with).
crate_version() {
    awk -F'"' '/^\[package\]/ { p = 1; next } /^\[/ { p = 0 } p && /^version *=/ { print $2; exit }' "$HERE/../Cargo.toml"
}

# --- real Debian trees (images, packages, sysext tiers) ------------------------------------------------
# tree_tier_start WHAT STATIC_BINARY MOTO_URL PYTHON: the start these tiers share. Sets BIN (absolute),
# MOTO_URL, PY, INSTALL, NAME, CACHE (target/images, where the trees are kept), W (this run's work dir
# under it) and SSHD_PID (empty); needs root. The tiers then set DEF (default account) and IAMU (IAM user).
tree_tier_start() {
    local what=$1
    BIN=${2:?static binary}
    BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
    MOTO_URL=${3:?moto url}
    PY=${4:?python with boto3}
    INSTALL=$HERE/../install.sh
    NAME=iam-authorized-keys
    [ "$(id -u)" = 0 ] || fail "$what test needs root (chroot, accounts in the trees)"
    needs "Debian package debootstrap" debootstrap
    CACHE=$(cd "$HERE/.." && pwd)/target/images
    mkdir -p "$CACHE"
    W=$(mktemp -d "$CACHE/work.XXXXXX")
    SSHD_PID=
}

# tree_cleanup: stops the tree's sshd and removes W (KEEP_IMAGES=1 keeps it for a look).
tree_cleanup() {
    set +e
    [ -n "$SSHD_PID" ] && kill "$SSHD_PID" 2>/dev/null && wait "$SSHD_PID" 2>/dev/null
    [ -n "${KEEP_IMAGES:-}" ] && { echo "kept $W"; return; }
    rm -rf --one-file-system "$W"
}

# in_tree CMD...: CMD run in the tree $T (chroot) with /proc mounted, in a private mount namespace (the
# mount goes with it): maintainer scripts and install.sh use /dev/fd (bash process substitution).
in_tree() {
    unshare --mount --propagation private sh -c 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"' "$T" \
        env DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

# tree NAME SUITE PACKAGES: the cached tree, built when missing.
tree() {
    [ -x "$CACHE/$1/usr/sbin/sshd" ] && return 0
    # The Debian mirror this machine's apt uses (debootstrap's own default otherwise).
    local MIRROR
    MIRROR=$(awk '/^URIs:/ && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    echo "building a $2 tree with debootstrap (cached in $CACHE/$1)"
    rm -rf --one-file-system "$CACHE/$1.tmp"
    # shellcheck disable=SC2086  # MIRROR: one word or none
    debootstrap --variant=minbase --include="$3" "$2" "$CACHE/$1.tmp" $MIRROR > "$CACHE/$1.log" 2>&1 ||
        fail "debootstrap $2: $(tail -5 "$CACHE/$1.log")"
    mv "$CACHE/$1.tmp" "$CACHE/$1"
}

# fresh NAME: T = a scratch copy of the cached tree (its root 0755: the command user walks it).
fresh() {
    T=$W/$1
    rm -rf --one-file-system "$T"
    cp -a "$CACHE/$1" "$T"
    chmod 0755 "$T"
    install -d -m 0755 "$T/run/sshd"   # sshd's privilege separation directory, made at boot
}

# tT [sshd -T args]: the tree's own sshd's effective configuration, into $W/T.
tT() { chroot "$T" /usr/sbin/sshd -T -o HostKey=/etc/ssh/ssh_host_ed25519_key "$@" > "$W/T" 2> "$W/T.err" || fail "sshd -T in $T: $(cat "$W/T.err")"; }

snapshot() {  # snapshot DIR [PATH...]: every path with type, mode, numeric owner, size, and content hashes;
              # the account files' backups (passwd- ..., rewritten by useradd/userdel) and PATHs (./var/log
              # ...) left out
    local d=$1 p; shift
    local -a prune=(-path ./proc -o -path './etc/*-')
    for p in "$@"; do prune+=(-o -path "$p"); done
    (cd "$d" && find . \( "${prune[@]}" \) -prune -o -printf '%p %y %m %U %G %s\n' | sort &&
        find . \( "${prune[@]}" \) -prune -o -type f -print0 | xargs -0 sha256sum | sort)
}

# cloud_default NAME: a cloud-init config naming NAME as the default user, and that account with a key.
cloud_default() {
    mkdir -p "$T/etc/cloud"
    printf 'users:\n  - default\nsystem_info:\n  distro: debian\n  default_user:\n    name: %s\n    shell: /bin/bash\n' "$1" > "$T/etc/cloud/cloud.cfg"
    chroot "$T" useradd --create-home --shell /bin/sh "$1"
    chroot "$T" usermod -p '*' "$1"   # no password, not locked ('!' is locked with UsePAM no)
    rm -f "$W/launch" "$W/launch.pub"
    ssh-keygen -q -t ed25519 -N '' -C launch -f "$W/launch"
    # Lookups never leave this machine (no instance metadata, no AWS): a credentials file and the
    # emulator as IAM endpoint, passed to install.sh as LOOKUP.
    # 0600 root here; login_test lends it to the command user's group (a world-readable one is refused).
    printf '[default]\naws_access_key_id = test\naws_secret_access_key = test\n' > "$T/etc/iak-test-credentials"
    chmod 0600 "$T/etc/iak-test-credentials"
    install -d -m 0700 "$T/home/$1/.ssh"
    install -m 0600 "$W/launch.pub" "$T/home/$1/.ssh/authorized_keys"
    chroot "$T" chown -R "$1:" "/home/$1/.ssh"
}

# login_test WHAT: the tree's own sshd on a loopback port (in the tree; it shares this loopback) logs the
# default account in with its key and an IAM user with its IAM key; refuses the default account to an IAM
# user of the same name, and another account's authorized_keys file.
login_test() {
    local u
    chroot "$T" chgrp iam-authorized-keys /etc/iak-test-credentials
    chmod 0640 "$T/etc/iak-test-credentials"
    for u in other "$IAMU"; do
        chroot "$T" useradd --create-home --shell /bin/sh "$u"
        chroot "$T" usermod -p '*' "$u"
    done
    install -d -m 0700 "$T/home/other/.ssh"
    install -m 0600 "$W/launch.pub" "$T/home/other/.ssh/authorized_keys"
    chroot "$T" chown -R other: /home/other/.ssh
    PORT=$(free_port)
    chroot "$T" /usr/sbin/sshd -D -p "$PORT" -o ListenAddress=127.0.0.1 -o UsePAM=no \
        -o PidFile=/run/iak-test-sshd.pid -E /run/iak-test-sshd.log 2>>"$W/sshd.stderr" &
    SSHD_PID=$!
    wait_port "$PORT" || fail "$1: the tree's sshd did not start: $(cat "$T/run/iak-test-sshd.log")"
    ssh_login "$W/iamkey" "$IAMU" || fail "$1: IAM user $IAMU could not log in with its IAM key: $(tail -5 "$T/run/iak-test-sshd.log")"
    ssh_login "$W/launch" "$DEF" || fail "$1: the default account could not log in with its key: $(tail -5 "$T/run/iak-test-sshd.log")"
    ! ssh_login "$W/defiam" "$DEF" || fail "$1: an IAM user named like the default account logged in as it"
    ! ssh_login "$W/launch" other || fail "$1: another account's authorized_keys counted (AuthorizedKeysFile none expected)"
    if [ -n "${CHAINED_USER:-}" ]; then
        ssh_login "$W/chainkey" "$CHAINED_USER" ||
            fail "$1: $CHAINED_USER could not log in with the chained command's key: $(tail -5 "$T/run/iak-test-sshd.log")"
        ssh_login "$W/iamkey" "$IAMU" || fail "$1: the IAM user no longer logs in beside the chained command"
    fi
    kill "$SSHD_PID"; wait "$SSHD_PID" 2>/dev/null || true; SSHD_PID=
    chroot "$T" chgrp root /etc/iak-test-credentials
    chmod 0600 "$T/etc/iak-test-credentials"
    rm -f "$T/run/iak-test-sshd.pid" "$T/run/iak-test-sshd.log"
    rm -rf "$T/var/cache/iam-authorized-keys/"*   # records of this test; uninstall compares the tree
    for u in other "$IAMU"; do chroot "$T" userdel --remove "$u" 2>/dev/null; done
}

