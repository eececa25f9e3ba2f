#!/usr/bin/env bash
# Installs iam-authorized-keys: the static binary, its sshd drop-in, its system user and cache directory.
# Idempotent; --uninstall removes exactly what it installed; --root DIR installs into an image tree.
set -euo pipefail

NAME=iam-authorized-keys
SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TARGET=x86_64-unknown-linux-musl

ROOT=/
BINARY=
BINDIR=
SVC_USER=$NAME
CACHE_DIR=/var/cache/$NAME
SSHD_CONFIG=/etc/ssh/sshd_config
SSHD_DIR=/etc/ssh/sshd_config.d
RELOAD=1
UNINSTALL=0
PACKAGE=
WITH_SYNC=0
SYNC_FLAGS=()
FLAGS=()

usage() {
    cat <<EOF
Usage: ./install.sh [OPTIONS]

Builds the static ($TARGET) binary, installs it root-owned 0755, creates the locked system user and its
0700 cache directory, installs the sshd drop-in, validates with 'sshd -t' (rolling back on failure)
and reloads sshd. Running it again changes nothing; --uninstall removes what it installed.

Where:
  --root DIR              install into the tree DIR (image builds, tests); implies --no-reload.
                          Also read from DESTDIR.
  --binary PATH           install this prebuilt binary instead of building one
  --bindir DIR            default /usr/local/bin; /opt/bin on Flatcar or when /usr is read-only
  --user NAME             AuthorizedKeysCommandUser to create (default $NAME)
  --cache-dir DIR         default /var/cache/$NAME
  --sshd-config PATH      main sshd config (default /etc/ssh/sshd_config)
  --sshd-config-dir DIR   drop-in directory (default /etc/ssh/sshd_config.d)
  --no-reload             do not reload sshd (image pipelines)
  --uninstall             remove what a previous run installed
  --with-sync             also install and enable the sync-users systemd timer (root only; runs at boot
                          and every 10 min with a random delay); its flags:
      --sync-group G  --sudo-group G  --remove-after N  --remove lock|delete  --managed-group NAME
      --sudoers-file PATH  --sync-state PATH  (groups repeatable; without --sync-group it uses the
                          --allowed-group values)
  --package FILE.tar.gz   instead of installing, write a release tarball (binary, install.sh, drop-in,
                          README) and FILE.tar.gz.sha256, for image pipelines (see examples/)
  -h, --help              this text

Lookup flags written into the drop-in's AuthorizedKeysCommand line (see iam-authorized-keys --help):
  --ttl D  --negative-ttl D  --max-stale D  --timeout D  --region R  --endpoint-url URL
  --credentials-file PATH  --profile NAME  --config PATH  --allowed-group G (repeatable)
  --name-case fold|preserve  --min-uid N  --allow-user U  --deny-user U (repeatable)
  --assume-role ARN  --external-id ID  --sts-endpoint-url URL  --key-options LIST  --key-expiry
  --proxy URL  --no-proxy LIST   (a proxy password belongs in the --config file: the command line is visible)
  (Options with quotes, like from="...", belong in the --config file: sshd_config cannot carry them.)

Nothing user-specific is installed: no keys, no cache records, no credentials.
EOF
}

ARMED=0
die() {
    echo "install.sh: $*" >&2
    [ "$ARMED" = 1 ] && rollback
    exit 1
}
note() { echo "install.sh: $*" >&2; }

# A flag value lands in sshd_config: no spaces, quotes or '%' (sshd would expand it).
safe_value() {
    [[ $2 =~ ^[A-Za-z0-9_./:@+=,-]+$ ]] || die "$1 value '$2' may only hold letters, digits and _ . / : @ + = , -"
}

[ -n "${DESTDIR:-}" ] && ROOT=$DESTDIR
while [ $# -gt 0 ]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --root) ROOT=${2:?--root needs a directory}; shift ;;
        --binary) BINARY=${2:?--binary needs a path}; shift ;;
        --bindir) BINDIR=${2:?}; shift ;;
        --user) SVC_USER=${2:?}; shift ;;
        --cache-dir) CACHE_DIR=${2:?}; shift ;;
        --sshd-config) SSHD_CONFIG=${2:?}; shift ;;
        --sshd-config-dir) SSHD_DIR=${2:?}; shift ;;
        --no-reload) RELOAD=0 ;;
        --uninstall) UNINSTALL=1 ;;
        --package) PACKAGE=${2:?--package needs a file name}; shift ;;
        --with-sync) WITH_SYNC=1 ;;
        --sync-group|--sudo-group|--remove-after|--remove|--managed-group|--sudoers-file|--sync-state)
            [ $# -ge 2 ] || die "$1 needs a value"
            safe_value "$1" "$2"
            case $1 in
                --sync-group) SYNC_FLAGS+=(--group "$2") ;;
                --sync-state) SYNC_FLAGS+=(--state "$2") ;;
                *) SYNC_FLAGS+=("$1" "$2") ;;
            esac
            shift ;;
        --key-expiry) FLAGS+=("$1") ;;
        --ttl|--negative-ttl|--max-stale|--timeout|--region|--endpoint-url|--credentials-file|--profile|--config|\
        --allowed-group|--name-case|--min-uid|--allow-user|--deny-user|--assume-role|--external-id|\
        --sts-endpoint-url|--key-options|--proxy|--no-proxy)
            [ $# -ge 2 ] || die "$1 needs a value"
            safe_value "$1" "$2"
            FLAGS+=("$1" "$2"); shift ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
    shift
done

[[ $SVC_USER =~ ^[a-z_][a-z0-9_-]{0,30}$ ]] || die "--user '$SVC_USER' is not a valid system user name"
[ "$SVC_USER" != root ] && [ "$SVC_USER" != nobody ] || die "--user must be a dedicated account, not $SVC_USER"
for p in "$CACHE_DIR" "$SSHD_CONFIG" "$SSHD_DIR" ${BINDIR:+"$BINDIR"}; do
    [[ $p == /* ]] || die "$p must be an absolute path"
    safe_value path "$p"
done
ROOT=$(cd "$ROOT" 2>/dev/null && pwd) || die "--root directory does not exist"
[ "$ROOT" = / ] && R= || R=$ROOT
[ -n "$R" ] && RELOAD=0
IS_ROOT=0; [ "$(id -u)" = 0 ] && IS_ROOT=1
[ -z "$R" ] && [ $IS_ROOT = 0 ] && die "installing into / needs root (or use --root DIR)"

if [ -z "$BINDIR" ]; then
    BINDIR=/usr/local/bin
    if grep -qsE '^ID=("?)flatcar' "$R/etc/os-release"; then
        BINDIR=/opt/bin
    elif [ -z "$R" ] && ! (mkdir -p /usr/local/bin && t=$(mktemp -p /usr/local/bin .iak-probe.XXXXXX) && rm -f "$t") 2>/dev/null; then
        BINDIR=/opt/bin   # read-only /usr (CoreOS-like)
    fi
fi

# Named after the service user, so a second, differently named install (tests) cannot collide.
MANIFEST=/var/lib/$NAME/$SVC_USER.manifest
DROPIN=$SSHD_DIR/50-$NAME.conf
SYSUSERS=/etc/sysusers.d/$SVC_USER.conf
TMPFILES=/etc/tmpfiles.d/$SVC_USER.conf
INCLUDE_MARK="# Added by $NAME install.sh (removed by install.sh --uninstall)"

validate_sshd() {
    local sshd
    sshd=$(command -v sshd || echo /usr/sbin/sshd)
    [ -x "$sshd" ] || die "sshd not found: install openssh-server first"
    [ -d /run/sshd ] || mkdir -p -m 0755 /run/sshd 2>/dev/null || true
    if [ -z "$R" ]; then
        "$sshd" -t -f "$SSHD_CONFIG"
    else
        # An image tree's sshd cannot run here; check our drop-in in a minimal config of its own.
        local t; t=$(mktemp -d)
        ssh-keygen -q -t ed25519 -N '' -f "$t/hostkey"
        printf 'Include %s\nHostKey %s/hostkey\n' "$R$DROPIN" "$t" > "$t/sshd_config"
        local rc=0; "$sshd" -t -f "$t/sshd_config" || rc=$?
        rm -rf "$t"
        return $rc
    fi
}

reload_sshd() {
    [ $RELOAD = 1 ] || return 0
    if command -v systemctl >/dev/null && systemctl is-active --quiet ssh 2>/dev/null; then
        systemctl reload ssh
    elif command -v systemctl >/dev/null && systemctl is-active --quiet sshd 2>/dev/null; then
        systemctl reload sshd
    else
        note "sshd is not running under systemd here; reload it yourself to apply the drop-in"
    fi
}

# Writes stdin to PATH (mode MODE) only when the content differs: a second run changes nothing.
put() {
    local path=$1 mode=$2 staged tmp
    staged=$(mktemp)
    cat > "$staged"
    if [ -f "$path" ] && cmp -s "$staged" "$path" && [ "$(stat -c %a "$path")" = "$mode" ]; then
        rm -f "$staged"
        return 0
    fi
    # Only a real change touches the target directory (its mtime too): temp beside it, then rename.
    mkdir -p "$(dirname "$path")"
    tmp=$(mktemp "$path.XXXXXX")
    cat "$staged" > "$tmp"
    rm -f "$staged"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$path"
}

user_exists() {
    if [ -z "$R" ]; then getent passwd "$SVC_USER" >/dev/null
    else grep -q "^$SVC_USER:" "$R/etc/passwd" 2>/dev/null; fi
}

uninstall() {
    local m=$R$MANIFEST
    [ -f "$m" ] || die "nothing to uninstall: $m not found"
    local kind path
    local -a dirs=()
    while read -r kind path; do
        case $kind in
            file) rm -f "$R$path" ;;
            cachedir)
                case $path in /*/*) rm -rf --one-file-system -- "$R$path" ;; *) note "not removing odd cache path '$path'" ;; esac ;;
            dir) dirs+=("$path") ;;
            include)
                if [ -f "$R$path" ]; then
                    local tmp; tmp=$(mktemp "$R$path.XXXXXX")
                    awk -v mark="$INCLUDE_MARK" '$0 == mark { skip = 1; next } skip { skip = 0; next } { print }' "$R$path" > "$tmp"
                    chmod --reference="$R$path" "$tmp"; mv -f "$tmp" "$R$path"
                fi ;;
            user)
                if [ -z "$R" ]; then
                    userdel "$path" 2>/dev/null || true
                    groupdel "$path" 2>/dev/null || true
                elif [ -f "$R/etc/passwd" ]; then
                    userdel --prefix "$R" "$path" 2>/dev/null || true
                    groupdel --prefix "$R" "$path" 2>/dev/null || true
                fi ;;
        esac
    done < "$m"
    rm -f "$m"
    # Directories we created, deepest first, only when empty.
    local i
    for ((i=${#dirs[@]}-1; i>=0; i--)); do rmdir "$R${dirs[$i]}" 2>/dev/null || true; done
    rmdir "$R$(dirname "$MANIFEST")" 2>/dev/null || true
    if [ -z "$R" ] && [ -f "$SSHD_CONFIG" ]; then validate_sshd && reload_sshd; fi
    note "uninstalled"
}

if [ $UNINSTALL = 1 ]; then uninstall; exit 0; fi

# --- the binary --------------------------------------------------------------------------------------
if [ -z "$BINARY" ]; then
    command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) or pass --binary PATH"
    if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx $TARGET; then
        note "adding Rust target $TARGET"
        rustup target add $TARGET || die "cannot add the $TARGET target (rustup target add $TARGET)"
    fi
    if ! command -v x86_64-linux-musl-gcc >/dev/null; then
        if [ $IS_ROOT = 1 ] && command -v apt-get >/dev/null; then
            note "installing musl-tools (needed to build aws-lc for musl)"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q musl-tools >/dev/null ||
                { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q musl-tools >/dev/null; } ||
                die "cannot install musl-tools"
        else
            die "x86_64-linux-musl-gcc not found: install musl-tools (Debian/Ubuntu) or musl-gcc, or pass --binary PATH"
        fi
    fi
    note "building the static binary (cargo build --release --target $TARGET)"
    (cd "$SRC_DIR" && cargo build --release --locked --target $TARGET) || die "build failed"
    BINARY=$SRC_DIR/target/$TARGET/release/$NAME
fi
[ -f "$BINARY" ] && [ -x "$BINARY" ] || die "binary $BINARY not found or not executable"
"$BINARY" --version >/dev/null || die "$BINARY does not run on this machine"

if [ -n "$PACKAGE" ]; then
    stage=$(mktemp -d)
    mkdir -p "$stage/$NAME/sshd_config.d"
    install -m 0755 "$BINARY" "$stage/$NAME/$NAME"
    install -m 0755 "$SRC_DIR/install.sh" "$stage/$NAME/install.sh"
    install -m 0644 "$SRC_DIR/sshd_config.d/50-$NAME.conf" "$stage/$NAME/sshd_config.d/"
    [ -f "$SRC_DIR/README.md" ] && install -m 0644 "$SRC_DIR/README.md" "$stage/$NAME/"
    tar -C "$stage" --owner=0 --group=0 --numeric-owner -czf "$PACKAGE" "$NAME"
    rm -rf "$stage"
    (cd "$(dirname "$PACKAGE")" && sha256sum "$(basename "$PACKAGE")") > "$PACKAGE.sha256"
    note "wrote $PACKAGE ($("$BINARY" --version)) and $PACKAGE.sha256"
    exit 0
fi

# --- remember what this run creates, for rollback and --uninstall ---------------------------------------
declare -a CREATED=() NEW_DIRS=() MANIFEST_LINES=()
OLD_MANIFEST=
[ -f "$R$MANIFEST" ] && OLD_MANIFEST=$(cat "$R$MANIFEST")
record() { MANIFEST_LINES+=("$1 $2"); }
mkdirs() {  # mkdir -p, remembering each directory it created
    local d=$1 missing=()
    while [ ! -d "$R$d" ]; do missing=("$d" "${missing[@]}"); d=$(dirname "$d"); done
    local m
    for m in "${missing[@]}"; do mkdir -m 0755 "$R$m"; NEW_DIRS+=("$m"); CREATED+=("$R$m"); done
}
# Directories an earlier run created stay ours.
while read -r kind path; do [ "$kind" = dir ] && NEW_DIRS+=("$path"); done <<< "$OLD_MANIFEST"

BACKUP=
rollback() {
    note "rolling back this run's changes"
    [ -n "$BACKUP" ] && mv -f "$BACKUP" "$R$SSHD_CONFIG"
    local i
    for ((i=${#CREATED[@]}-1; i>=0; i--)); do rm -rf --one-file-system "${CREATED[$i]}"; done
    if [ -n "$USER_CREATED_NOW" ]; then
        local prefix=(); [ -n "$R" ] && prefix=(--prefix "$R")
        userdel "${prefix[@]}" "$SVC_USER" 2>/dev/null || true
        groupdel "${prefix[@]}" "$SVC_USER" 2>/dev/null || true
    fi
    exit 1
}
USER_CREATED_NOW=
ARMED=1
trap rollback ERR

dest=$BINDIR/$NAME
mkdirs "$BINDIR"
[ -e "$R$dest" ] || CREATED+=("$R$dest")
if [ $IS_ROOT = 1 ]; then
    install -C -o root -g root -m 0755 "$BINARY" "$R$dest"
else
    install -C -m 0755 "$BINARY" "$R$dest"
fi
record file "$dest"

# --- man page and shell completions, generated by the binary from its own option definitions ------------
SHARE=$(dirname "$BINDIR")/share
install_doc() {  # install_doc PATH ARGS...: writes the binary's output for ARGS to PATH
    local path=$1; shift
    local text
    text=$("$BINARY" "$@") || die "$BINARY $* failed"
    mkdirs "$(dirname "$path")"
    [ -e "$R$path" ] || CREATED+=("$R$path")
    printf '%s\n' "$text" | put "$R$path" 644
    record file "$path"
}
install_doc "$SHARE/man/man8/$NAME.8" man
install_doc "$SHARE/bash-completion/completions/$NAME" completions bash
install_doc "$SHARE/zsh/site-functions/_$NAME" completions zsh

# --- system user and cache directory ------------------------------------------------------------------
mkdirs /etc/sysusers.d
[ -e "$R$SYSUSERS" ] || CREATED+=("$R$SYSUSERS")
printf 'u %s - "iam-authorized-keys lookup (AuthorizedKeysCommandUser)" /nonexistent /usr/sbin/nologin\n' "$SVC_USER" | put "$R$SYSUSERS" 644
record file "$SYSUSERS"
mkdirs /etc/tmpfiles.d
[ -e "$R$TMPFILES" ] || CREATED+=("$R$TMPFILES")
printf 'd %s 0700 %s %s -\n' "$CACHE_DIR" "$SVC_USER" "$SVC_USER" | put "$R$TMPFILES" 644
record file "$TMPFILES"

nologin=/usr/sbin/nologin; [ -x "$R$nologin" ] || nologin=/sbin/nologin
if ! user_exists; then
    if [ -z "$R" ]; then
        useradd --system --no-create-home --home-dir /nonexistent --shell "$nologin" \
            --comment "iam-authorized-keys lookup" --user-group "$SVC_USER"
        USER_CREATED_NOW=1
    elif [ -f "$R/etc/passwd" ] && [ $IS_ROOT = 1 ]; then
        USER_CREATED_NOW=1
        useradd --prefix "$R" --system --no-create-home --home-dir /nonexistent --shell "$nologin" \
            --comment "iam-authorized-keys lookup" --user-group "$SVC_USER"
    else
        note "no $R/etc/passwd: user $SVC_USER will be created at boot by systemd-sysusers ($SYSUSERS)"
    fi
    user_exists && record user "$SVC_USER"
elif grep -qx "user $SVC_USER" <<< "$OLD_MANIFEST"; then
    record user "$SVC_USER"
fi

mkdirs "$(dirname "$CACHE_DIR")"
[ -e "$R$CACHE_DIR" ] || CREATED+=("$R$CACHE_DIR")
mkdir -p "$R$CACHE_DIR"
chmod 0700 "$R$CACHE_DIR"
if user_exists && [ $IS_ROOT = 1 ]; then
    if [ -z "$R" ]; then chown "$SVC_USER:" "$R$CACHE_DIR"
    else
        uid=$(awk -F: -v u="$SVC_USER" '$1 == u { print $3 ":" $4 }' "$R/etc/passwd")
        chown "$uid" "$R$CACHE_DIR"
    fi
fi
record cachedir "$CACHE_DIR"

# --- sshd drop-in ----------------------------------------------------------------------------------------
command_line="$dest"
[ ${#FLAGS[@]} -gt 0 ] && command_line+=" ${FLAGS[*]}"
[ "$CACHE_DIR" != /var/cache/$NAME ] && command_line+=" --cache-dir $CACHE_DIR"
# %U lets the account rules see the UID sshd resolved (NSS included); %f %t are logged for the audit.
command_line+=" --uid %U -- %u %f %t"
mkdirs "$SSHD_DIR"
[ -e "$R$DROPIN" ] || CREATED+=("$R$DROPIN")
sed -e "s|^AuthorizedKeysCommand .*|AuthorizedKeysCommand $command_line|" \
    -e "s|^AuthorizedKeysCommandUser .*|AuthorizedKeysCommandUser $SVC_USER|" \
    "$SRC_DIR/sshd_config.d/50-$NAME.conf" | put "$R$DROPIN" 644
record file "$DROPIN"

# The drop-in only counts if the main config includes its directory, before any other setting
# (sshd keeps the first value it reads).
if [ -f "$R$SSHD_CONFIG" ]; then
    if grep -qiE "^[[:space:]]*Include[[:space:]]+$SSHD_DIR/\*(\.conf)?([[:space:]]|$)" "$R$SSHD_CONFIG"; then
        grep -qxF "$INCLUDE_MARK" "$R$SSHD_CONFIG" && record include "$SSHD_CONFIG"
    else
        BACKUP=$(mktemp "$R$SSHD_CONFIG.iak-backup.XXXXXX")
        cp -p "$R$SSHD_CONFIG" "$BACKUP"
        tmp=$(mktemp "$R$SSHD_CONFIG.XXXXXX")
        { printf '%s\nInclude %s/*.conf\n' "$INCLUDE_MARK" "$SSHD_DIR"; cat "$R$SSHD_CONFIG"; } > "$tmp"
        chmod --reference="$R$SSHD_CONFIG" "$tmp"
        mv -f "$tmp" "$R$SSHD_CONFIG"
        record include "$SSHD_CONFIG"
        note "added 'Include $SSHD_DIR/*.conf' at the top of $SSHD_CONFIG"
    fi
elif [ -z "$R" ]; then
    die "$SSHD_CONFIG not found: install openssh-server first"
else
    note "no $R$SSHD_CONFIG in this tree: make sure the image's sshd_config includes $SSHD_DIR/*.conf"
fi

# --- sync-users timer (optional) ----------------------------------------------------------------------
SYNC_UNIT=$SVC_USER-sync   # named after the service user, like the manifest
if [ $WITH_SYNC = 1 ]; then
    [ $IS_ROOT = 1 ] || die "--with-sync needs root (the timer runs sync-users as root)"
    sync_line="$dest sync-users"
    [ ${#FLAGS[@]} -gt 0 ] && sync_line+=" ${FLAGS[*]}"
    [ "$CACHE_DIR" != /var/cache/$NAME ] && sync_line+=" --cache-dir $CACHE_DIR"
    [ ${#SYNC_FLAGS[@]} -gt 0 ] && sync_line+=" ${SYNC_FLAGS[*]}"
    mkdirs /etc/systemd/system/timers.target.wants
    for f in "$SYNC_UNIT.service" "$SYNC_UNIT.timer"; do
        [ -e "$R/etc/systemd/system/$f" ] || CREATED+=("$R/etc/systemd/system/$f")
    done
    cat <<UNIT | put "$R/etc/systemd/system/$SYNC_UNIT.service" 644
[Unit]
Description=Local accounts for IAM group members (iam-authorized-keys sync-users)
Documentation=man:iam-authorized-keys(8)
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStart=$sync_line
PrivateTmp=yes
NoNewPrivileges=yes
ProtectKernelTunables=yes
ProtectControlGroups=yes
TimeoutStartSec=15min
UNIT
    cat <<UNIT | put "$R/etc/systemd/system/$SYNC_UNIT.timer" 644
[Unit]
Description=Run iam-authorized-keys sync-users at boot and every 10 minutes

[Timer]
OnBootSec=1min
OnUnitActiveSec=10min
RandomizedDelaySec=2min

[Install]
WantedBy=timers.target
UNIT
    link=/etc/systemd/system/timers.target.wants/$SYNC_UNIT.timer
    if [ ! -L "$R$link" ]; then
        CREATED+=("$R$link")
        ln -sf "/etc/systemd/system/$SYNC_UNIT.timer" "$R$link"
    fi
    record file "/etc/systemd/system/$SYNC_UNIT.service"
    record file "/etc/systemd/system/$SYNC_UNIT.timer"
    record file "$link"
    if [ -z "$R" ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload && systemctl start "$SYNC_UNIT.timer" ||
            note "could not start $SYNC_UNIT.timer; it starts at the next boot"
    fi
fi

mkdirs "$(dirname "$MANIFEST")"
for d in "${NEW_DIRS[@]}"; do record dir "$d"; done
printf '%s\n' "${MANIFEST_LINES[@]}" | awk '!seen[$0]++' | put "$R$MANIFEST" 644

if ! validate_sshd; then
    note "sshd -t rejected the configuration"
    rollback
fi
trap - ERR
ARMED=0
[ -n "$BACKUP" ] && rm -f "$BACKUP"
reload_sshd
note "installed $dest (drop-in $DROPIN, user $SVC_USER, cache $CACHE_DIR)"
