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
