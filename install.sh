#!/usr/bin/env bash
# Installs iam-authorized-keys: the static binary, its sshd drop-in, its system user and cache directory.
# Idempotent; --uninstall removes exactly what it installed; --root DIR installs into an image tree.
set -euo pipefail
export LC_ALL=C   # sort and glob as sshd and systemd do (byte order)

NAME=iam-authorized-keys
SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TARGET=x86_64-unknown-linux-musl

ROOT=/
BINARY=
BINDIR=
SVC_USER=$NAME
CACHE_DIR=/var/cache/$NAME
STATE_DIR=/var/lib/$NAME
SSHD_CONFIG_SET=0
SSHD_CONFIG=/etc/ssh/sshd_config
SSHD_DIR=/etc/ssh/sshd_config.d
RELOAD=1
UNINSTALL=0
UNINSTALL_SSHD=0
INSTALLED=0
PACKAGE=
PACKAGE_VERSION=
PACKAGE_ALL=
WITH_SYNC=0
REPLACE_OTHER=0
SHOW_UNIT=0
DEFAULT_USERS=()
NO_DEFAULT_USER=0
SYNC_FLAGS=()
FLAGS=()

usage() {
    cat <<EOF
Usage: ./install.sh [OPTIONS]

Builds the static ($TARGET) binary, installs it root-owned 0755, creates the locked system user and its
0700 cache directory, installs the sshd drop-in (10-$NAME.conf), validates with 'sshd -t' and checks
with 'sshd -T' (plus the -o options of sshd's systemd unit) that its AuthorizedKeysCommand, user and
AuthorizedKeysFile are the ones in effect, rolling everything back otherwise (naming what wins), and
reloads sshd. When another AuthorizedKeysCommand is in effect (EC2 Instance Connect, systemd-userdb,
SSSD, ...), ours chains it: it runs that command after its own lookup and prints both answers, so every
login that worked before still works (see --replace-other-command).
Keeps the image's default account on its authorized_keys (see --default-user). Running it again
changes nothing; --uninstall removes what it installed.

Where:
  --root DIR              install into the tree DIR (image builds, tests); implies --no-reload.
                          Also read from DESTDIR.
  --binary PATH           install this prebuilt binary instead of building one
  --bindir DIR            default /usr/local/bin; /opt/bin on Flatcar or when /usr is read-only
  --user NAME             AuthorizedKeysCommandUser to create (default $NAME)
  --cache-dir DIR         default /var/cache/$NAME
  --state-dir DIR         where the manifest of what was installed lives (default /var/lib/$NAME;
                          give it to --uninstall too)
  --sshd-config PATH      main sshd config (default /etc/ssh/sshd_config)
  --sshd-config-dir DIR   drop-in directory (default /etc/ssh/sshd_config.d)
  --no-reload             do not reload sshd (image pipelines)
  --uninstall             remove what a previous run installed
  --uninstall-sshd        remove only what a previous run changed in sshd's configuration (drop-in, Include,
                          unit drop-in), so sshd runs as before; keep the user, cache and manifest for a
                          later --uninstall (the .deb's prerm on remove; purge runs --uninstall)
  --installed             the binary, man page, completions and sysusers.d/tmpfiles.d entries are already
                          in place (a package put them under --bindir): configure the user, cache
                          directory and sshd for BINDIR/$NAME without installing or recording
                          those files (the .deb's postinst: /usr/lib/$NAME/install.sh
                          --installed --bindir /usr/bin --config /etc/$NAME/config)
  --with-sync             also install and enable the sync-users systemd timer (root only; runs at boot
                          and every 10 min with a random delay); its flags:
      --sync-group G  --sudo-group G  --remove-after N  --remove lock|delete  --managed-group NAME
      --sudoers-file PATH  --sync-state PATH  (groups repeatable; without --sync-group it uses the
                          --allowed-group values)  --sync-group-tag KEY  --sudo-group-tag KEY (the
                          groups from instance tags; without either group option, --allowed-groups-tag)
  --replace-other-command when another AuthorizedKeysCommand is in effect (EC2 Instance Connect,
                          systemd-userdb, SSSD, ...), replace it instead of chaining it: the keys it
                          served stop working. (Either way, when it comes from the sshd unit's
                          command line, a unit drop-in zz-$NAME.conf drops it from there.)
  --default-user NAME     the image's default login account (repeatable), instead of finding it: it is
                          never served from IAM (--deny-user) and keeps its ~/.ssh/authorized_keys
                          (a Match User block at the end of the drop-in). Found by default from
                          cloud-init's system_info.default_user (/etc/cloud/cloud.cfg, cloud.cfg.d/*.cfg)
                          and, on Flatcar, 'core'
  --no-default-user       no default account: AuthorizedKeysFile none for every account
  --sshd-unit             print the sshd systemd unit found in the tree, its effective ExecStart= and
                          the -o options it passes to sshd, then exit
  --package FILE.tar.gz   instead of installing, write a release tarball (binary, install.sh, drop-in,
                          README) and FILE.tar.gz.sha256, for image pipelines (see examples/)
  --package FILE.deb      write a Debian package instead (dpkg-deb): /usr/bin/$NAME, man
                          page, completions, sysusers.d/tmpfiles.d entries, the sync-users units (not
                          enabled), the IAM policies under /usr/share/doc/$NAME, the conffile
                          /etc/$NAME/config read with --config; its postinst runs this
                          script with --installed. Plus FILE.deb.sha256
  --package FILE.rpm      the same files as an RPM (rpmbuild; Debian package rpm, installed when
                          missing): %post runs --installed, %preun --uninstall-sshd on erase,
                          %config(noreplace) /etc/$NAME/config. Plus FILE.rpm.sha256
  --package FILE.raw      a systemd system extension for Flatcar (squashfs by mksquashfs; Debian
                          package squashfs-tools, installed when missing): /usr only, its unit
                          $NAME-setup.service runs --installed at boot. Install it as
                          /etc/extensions/$NAME.raw. Plus FILE.raw.sha256
  --package-version V     the package's version (default: Cargo.toml's)
  --package-all DIR       write every format into DIR: $NAME-VERSION-x86_64.tar.gz,
                          ${NAME}_VERSION_amd64.deb, $NAME-VERSION-1.x86_64.rpm,
                          $NAME-VERSION-x86-64.raw (each with its .sha256) and SHA256SUMS
  -h, --help              this text

Lookup flags written into the drop-in's AuthorizedKeysCommand line (see iam-authorized-keys --help):
  --ttl D  --negative-ttl D  --max-stale D  --timeout D  --region R  --endpoint-url URL
  --credentials-file PATH  --profile NAME  --config PATH  --allowed-group G (repeatable)
  --allowed-groups-tag KEY  (the allowed IAM groups from this instance tag; needs instance metadata tags)
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
        --state-dir) STATE_DIR=${2:?}; shift ;;
        --sshd-config) SSHD_CONFIG=${2:?}; SSHD_CONFIG_SET=1; shift ;;
        --sshd-config-dir) SSHD_DIR=${2:?}; shift ;;
        --no-reload) RELOAD=0 ;;
        --uninstall) UNINSTALL=1 ;;
        --uninstall-sshd) UNINSTALL=1; UNINSTALL_SSHD=1 ;;
        --installed) INSTALLED=1 ;;
        --package-version) PACKAGE_VERSION=${2:?--package-version needs a version}; shift ;;
        --package) PACKAGE=${2:?--package needs a file name}; shift ;;
        --package-all) PACKAGE_ALL=${2:?--package-all needs a directory}; shift ;;
        --with-sync) WITH_SYNC=1 ;;
        --replace-other-command) REPLACE_OTHER=1 ;;
        --default-user)
            [ $# -ge 2 ] || die "$1 needs a value"
            [[ $2 =~ ^[a-z_][a-z0-9_.-]{0,31}$ ]] || die "--default-user '$2' is not a valid login name"
            DEFAULT_USERS+=("$2"); shift ;;
        --no-default-user) NO_DEFAULT_USER=1 ;;
        --sshd-unit) SHOW_UNIT=1 ;;
        --sync-group|--sync-group-tag|--sudo-group|--sudo-group-tag|--remove-after|--remove|--managed-group|--sudoers-file|--sync-state)
            [ $# -ge 2 ] || die "$1 needs a value"
            safe_value "$1" "$2"
            case $1 in
                --sync-group-tag|--sudo-group-tag)
                    # The rule the binary applies to tag keys (instance metadata shows no others).
                    [[ $2 =~ ^[A-Za-z0-9+=.,_:@-]{1,128}$ && $2 != . && $2 != .. && $2 != _index ]] ||
                        die "$1 '$2' is not an instance tag key instance metadata can show (1-128 letters, digits and +-=.,_:@; not . .. or _index)" ;;
            esac
            case $1 in
                --sync-group) SYNC_FLAGS+=(--group "$2") ;;
                --sync-group-tag) SYNC_FLAGS+=(--group-tag "$2") ;;
                --sync-state) SYNC_FLAGS+=(--state "$2") ;;
                *) SYNC_FLAGS+=("$1" "$2") ;;
            esac
            shift ;;
        --key-expiry) FLAGS+=("$1") ;;
        --ttl|--negative-ttl|--max-stale|--timeout|--region|--endpoint-url|--credentials-file|--profile|--config|\
        --allowed-group|--allowed-groups-tag|--name-case|--min-uid|--max-uid|--allow-user|--deny-user|--assume-role|\
        --external-id|--sts-endpoint-url|--key-options|--proxy|--no-proxy)
            [ $# -ge 2 ] || die "$1 needs a value"
            safe_value "$1" "$2"
            FLAGS+=("$1" "$2"); shift ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
    shift
done

[[ $SVC_USER =~ ^[a-z_][a-z0-9_-]{0,30}$ ]] || die "--user '$SVC_USER' is not a valid system user name"
[ "$SVC_USER" != root ] && [ "$SVC_USER" != nobody ] || die "--user must be a dedicated account, not $SVC_USER"
for p in "$CACHE_DIR" "$STATE_DIR" "$SSHD_CONFIG" "$SSHD_DIR" ${BINDIR:+"$BINDIR"}; do
    [[ $p == /* ]] || die "$p must be an absolute path"
    safe_value path "$p"
done
ROOT=$(cd "$ROOT" 2>/dev/null && pwd) || die "--root directory does not exist"
[ "$ROOT" = / ] && R='' || R=$ROOT
[ -n "$R" ] && RELOAD=0
IS_ROOT=0; [ "$(id -u)" = 0 ] && IS_ROOT=1
# Packaging writes only its output file (and, as root, may install the packaging tool): any user.
[ -z "$R" ] && [ $IS_ROOT = 0 ] && [ -z "$PACKAGE$PACKAGE_ALL" ] && die "installing into / needs root (or use --root DIR)"

if [ -z "$BINDIR" ]; then
    BINDIR=/usr/local/bin
    if grep -qsE '^ID=("?)flatcar' "$R/etc/os-release"; then
        BINDIR=/opt/bin
    elif [ -z "$R" ] && [ -z "$PACKAGE$PACKAGE_ALL" ] && ! (mkdir -p /usr/local/bin && t=$(mktemp -p /usr/local/bin .iak-probe.XXXXXX) && rm -f "$t") 2>/dev/null; then
        BINDIR=/opt/bin   # read-only /usr (CoreOS-like)
    fi
fi

# sshd itself checks what we write; without it nothing could be validated (an operator installs
# openssh-server first). Checked before the build, so a missing sshd costs nothing.
case $PACKAGE in ''|*.tar.gz|*.deb|*.rpm|*.raw) ;; *) die "--package $PACKAGE: the name must end in .tar.gz, .deb, .rpm or .raw" ;; esac
if [ -n "$PACKAGE_ALL" ]; then
    [ -z "$PACKAGE" ] || die "--package and --package-all: one or the other"
    PACKAGE=$PACKAGE_ALL/SHA256SUMS   # for the checks below: packaging, not installing
fi
[ -z "$PACKAGE_VERSION" ] || [ -n "$PACKAGE" ] || die "--package-version goes with --package"
SSHD_BIN=$(command -v sshd 2>/dev/null || echo /usr/sbin/sshd)
if [ $UNINSTALL = 0 ] && [ -z "$PACKAGE" ] && [ ! -x "$SSHD_BIN" ]; then
    die "sshd not found (needed to validate the configuration): install openssh-server first (apt-get install openssh-server, dnf install openssh-server)"
fi

SCRATCH=$(mktemp -d)
TREE_SCRATCH='' TREE_PRIVSEP=0 TREE_SSHD=''
cleanup_scratch() {
    rm -rf "$SCRATCH"
    [ -n "$TREE_SCRATCH" ] && rm -rf "$TREE_SCRATCH"
    if [ "$TREE_PRIVSEP" = 1 ]; then rmdir "$R/run/sshd" 2>/dev/null || true; fi
    return 0
}
trap cleanup_scratch EXIT

# Named after the service user, so a second, differently named install (tests) cannot collide.
MANIFEST=$STATE_DIR/$SVC_USER.manifest
# 10-: sshd keeps the first value it reads, and drop-ins are read in file-name order; ours must come
# before the common ones (20-systemd-userdb.conf, Flatcar's 50-flatcar-sshd.conf, EC2 Instance
# Connect's 60-ec2-instance-connect.conf). Earlier versions wrote 50-$NAME.conf (OLD_DROPIN).
DROPIN=$SSHD_DIR/10-$NAME.conf
OLD_DROPIN=$SSHD_DIR/50-$NAME.conf
SYSUSERS=/etc/sysusers.d/$SVC_USER.conf
TMPFILES=/etc/tmpfiles.d/$SVC_USER.conf
INCLUDE_MARK="# Added by $NAME install.sh (removed by install.sh --uninstall)"

# --- what sshd will run: the systemd unit's command line -------------------------------------------------
# sshd's unit may pass -o options on its command line (EC2 Instance Connect's Debian/Ubuntu package does:
# a drop-in resets ExecStart= and adds -o "AuthorizedKeysCommand ..."). Command-line options beat every
# config file, so the effective configuration is sshd -T over the config PLUS those options.
#
# The unit is ssh.service (Debian, Ubuntu) or sshd.service (RHEL, Amazon Linux), read from the tree as
# systemd reads it (systemd.unit(5)): the first unit file found in the search path below (a symlink to
# /dev/null masks it; a symlink to another name makes this name an alias), then the drop-ins
# <name>.d/*.conf of every name of the unit from all these directories, sorted by file name, a file in an
# earlier directory hiding a same-named one in a later directory. In [Service], `ExecStart=` (empty)
# resets the list and the last ExecStart= is the one that runs.
UNIT_DIRS=(/etc/systemd/system /run/systemd/system /usr/local/lib/systemd/system /usr/lib/systemd/system /lib/systemd/system)
UNIT_NAME='' UNIT_FRAGMENT='' UNIT_EXEC='' UNIT_EXEC_FROM=''
UNIT_DROPINS=() UNIT_ENV=() UNIT_ENV_FILES=() UNIT_ALIASES=()

# unit_file NAME: the tree path of unit file NAME (first in UNIT_DIRS), "masked", or nothing.
unit_file() {
    local d p
    for d in "${UNIT_DIRS[@]}"; do
        p=$d/$1
        if [ -L "$R$p" ]; then
            [ "$(readlink "$R$p")" = /dev/null ] && { echo masked; return; }
            echo "$p"; return
        elif [ -f "$R$p" ]; then
            echo "$p"; return
        fi
    done
}

# unit_target PATH: the path inside the tree a symlink finally points to (PATH itself when not a link),
# resolved inside the tree.
unit_target() {
    local p=$1 n=0 t
    while [ -L "$R$p" ] && [ $n -lt 20 ]; do
        t=$(readlink "$R$p")
        case $t in /*) p=$t ;; *) p=$(dirname "$p")/$t ;; esac
        n=$((n + 1))
    done
    echo "$p"
}

# unit_parse FILE: folds FILE's [Service] ExecStart=, Environment=, EnvironmentFile= into UNIT_*.
unit_parse() {
    local file=$1 line buf='' section='' key val
    while IFS= read -r line || [ -n "$line" ]; do
        if [ -n "$buf" ] || [[ ! $line =~ ^[[:space:]]*[#\;] ]]; then
            if [[ $line == *\\ ]]; then buf+="${line%\\} "; continue; fi
            line=$buf$line; buf=
        else
            continue
        fi
        if [[ $line =~ ^[[:space:]]*\[(.*)\][[:space:]]*$ ]]; then section=${BASH_REMATCH[1]}; continue; fi
        [ "$section" = Service ] || continue
        [[ $line =~ ^[[:space:]]*([A-Za-z]+)[[:space:]]*=[[:space:]]*(.*)$ ]] || continue
        key=${BASH_REMATCH[1]} val=${BASH_REMATCH[2]}
        val=${val%"${val##*[![:space:]]}"}
        case $key in
            ExecStart)
                if [ -z "$val" ]; then UNIT_EXEC='' UNIT_EXEC_FROM=''
                else UNIT_EXEC=$val UNIT_EXEC_FROM=$file; fi ;;
            Environment)
                if [ -z "$val" ]; then UNIT_ENV=(); else
                    local w; unit_words "$val"
                    for w in "${UNIT_WORDS[@]}"; do UNIT_ENV+=("$w"); done
                fi ;;
            EnvironmentFile)
                if [ -z "$val" ]; then UNIT_ENV_FILES=(); else UNIT_ENV_FILES+=("$val"); fi ;;
        esac
    done < "$R$file"
}

# unit_words TEXT: splits a systemd command line into UNIT_WORDS (quotes removed, C escapes and %%
# resolved, $NAME/${NAME} left for unit_sshd_args) and UNIT_RAW (each word's text as written).
unit_words() {
    local s=$1 i=0 n=${#1} c q word raw started
    UNIT_WORDS=() UNIT_RAW=()
    while [ $i -lt "$n" ]; do
        while [ $i -lt "$n" ] && [[ ${s:i:1} == [[:space:]] ]]; do i=$((i + 1)); done
        [ $i -lt "$n" ] || break
        word='' raw='' q='' started=$i
        while [ $i -lt "$n" ]; do
            c=${s:i:1}
            if [ -z "$q" ]; then
                [[ $c == [[:space:]] ]] && break
                if [ "$c" = '"' ] || [ "$c" = "'" ]; then q=$c; i=$((i + 1)); continue; fi
            elif [ "$c" = "$q" ]; then
                q=; i=$((i + 1)); continue
            fi
            if [ "$c" = '\' ] && [ $((i + 1)) -lt "$n" ]; then
                i=$((i + 1)); c=${s:i:1}
                case $c in n) c=$'\n' ;; t) c=$'\t' ;; esac
            elif [ "$c" = % ] && [ "${s:i+1:1}" = % ]; then
                i=$((i + 1))
            fi
            word+=$c; i=$((i + 1))
        done
        raw=${s:started:i-started}
        UNIT_WORDS+=("$word"); UNIT_RAW+=("$raw")
    done
}

# unit_env NAME: the value of NAME in the unit's environment: Environment= first, then the
# EnvironmentFile= files in order, which override it (systemd.exec(5)).
unit_env() {
    local v='' found=0 f line w
    for w in "${UNIT_ENV[@]}"; do
        [[ $w == "$1="* ]] && { v=${w#*=}; found=1; }
    done
    for f in "${UNIT_ENV_FILES[@]}"; do
        f=${f#-}
        [ -f "$R$f" ] || continue
        while IFS= read -r line || [ -n "$line" ]; do
            [[ $line =~ ^[[:space:]]*(export[[:space:]]+)?$1[[:space:]]*=[[:space:]]*(.*)$ ]] || continue
            v=${BASH_REMATCH[2]}
            v=${v%"${v##*[![:space:]]}"}
            if [[ $v =~ ^\"(.*)\"$ ]] || [[ $v =~ ^\'(.*)\'$ ]]; then v=${BASH_REMATCH[1]}; fi
            found=1
        done < "$R$f"
    done
    [ $found = 1 ] && printf '%s' "$v"
    return 0
}

# unit_load: finds the sshd unit of the tree and computes its effective ExecStart (UNIT_EXEC, from the
# file UNIT_EXEC_FROM). No unit: UNIT_NAME stays empty.
unit_load() {
    UNIT_NAME='' UNIT_FRAGMENT='' UNIT_EXEC='' UNIT_EXEC_FROM='' UNIT_DROPINS=() UNIT_ENV=() UNIT_ENV_FILES=() UNIT_ALIASES=()
    local name f t other
    for name in ssh.service sshd.service; do
        f=$(unit_file "$name")
        [ -n "$f" ] && [ "$f" != masked ] || continue
        t=$(basename "$(unit_target "$f")")
        if [ "$t" != "$name" ]; then
            UNIT_ALIASES+=("$name"); name=$t
            f=$(unit_file "$name")
            [ -n "$f" ] && [ "$f" != masked ] || continue
            f=$(unit_target "$f")
        else
            f=$(unit_target "$f")
        fi
        UNIT_NAME=$name UNIT_FRAGMENT=$f
        break
    done
    [ -n "$UNIT_NAME" ] || return 0
    for other in ssh.service sshd.service; do
        [ "$other" = "$UNIT_NAME" ] && continue
        [[ " ${UNIT_ALIASES[*]} " == *" $other "* ]] && continue
        t=$(unit_file "$other")
        [ -n "$t" ] && [ "$t" != masked ] && [ "$(basename "$(unit_target "$t")")" = "$UNIT_NAME" ] &&
            UNIT_ALIASES+=("$other")
    done
    # Drop-ins: every name of the unit, every directory; the first directory holding a file name wins.
    local -A seen=()
    local d n p base
    local -a picked=()
    for d in "${UNIT_DIRS[@]}"; do
        for n in "$UNIT_NAME" "${UNIT_ALIASES[@]}"; do
            for p in "$R$d/$n.d"/*.conf; do
                [ -e "$p" ] || [ -L "$p" ] || continue
                base=$(basename "$p")
                [ -n "${seen[$base]:-}" ] && continue
                seen[$base]=1
                picked+=("$base ${p#"$R"}")
            done
        done
    done
    unit_parse "$UNIT_FRAGMENT"
    while read -r base p; do
        [ -n "$base" ] || continue
        if [ -L "$R$p" ] && [ "$(readlink "$R$p")" = /dev/null ]; then continue; fi
        UNIT_DROPINS+=("$p")
        unit_parse "$(unit_target "$p")"
    done < <(printf '%s\n' "${picked[@]}" | sort -k1,1)
}

# unit_sshd_args: the effective ExecStart of the tree's sshd unit as UNIT_ARGV (environment expanded as
# systemd does: a word that is exactly $NAME splits on whitespace, ${NAME} inside a word does not), then
# what sshd makes of it: UNIT_CONFIG (-f, default /etc/ssh/sshd_config) and UNIT_OPTS (each -o).
unit_sshd_args() {
    UNIT_ARGV=() UNIT_OPTS=() UNIT_CONFIG=/etc/ssh/sshd_config
    unit_load
    [ -n "$UNIT_EXEC" ] || return 0
    unit_words "$UNIT_EXEC"
    local w v
    for w in "${UNIT_WORDS[@]}"; do
        if [[ $w =~ ^\$([A-Za-z_][A-Za-z0-9_]*)$ ]]; then
            v=$(unit_env "${BASH_REMATCH[1]}")
            local -a split=(); read -r -a split <<< "$v"   # split on whitespace, no globbing
            UNIT_ARGV+=("${split[@]}")
        else
            while [[ $w =~ ^(.*)\$\{([A-Za-z_][A-Za-z0-9_]*)\}(.*)$ ]]; do
                w=${BASH_REMATCH[1]}$(unit_env "${BASH_REMATCH[2]}")${BASH_REMATCH[3]}
            done
            UNIT_ARGV+=("$w")
        fi
    done
    # sshd's own option parsing (getopt "C:E:b:c:f:g:h:k:o:p:u:46DQRTdeiqrtV").
    local i=1 a opt arg
    while [ $i -lt ${#UNIT_ARGV[@]} ]; do
        a=${UNIT_ARGV[$i]}
        [ "$a" = -- ] && break
        [[ $a == -?* ]] || break
        local j=1
        while [ $j -lt ${#a} ]; do
            opt=${a:j:1}
            case $opt in
                C|E|b|c|f|g|h|k|o|p|u)
                    if [ $((j + 1)) -lt ${#a} ]; then arg=${a:j+1}
                    else i=$((i + 1)); arg=${UNIT_ARGV[$i]:-}; fi
                    case $opt in
                        o) UNIT_OPTS+=("$arg") ;;
                        f) UNIT_CONFIG=$arg ;;
                    esac
                    break ;;
            esac
            j=$((j + 1))
        done
        i=$((i + 1))
    done
}

# unit_has_command: the effective ExecStart passes AuthorizedKeysCommand(User) with -o (after unit_sshd_args).
unit_has_command() {
    local o k
    for o in "${UNIT_OPTS[@]}"; do
        k=$(unit_opt_keyword "$o")
        [ "$k" = authorizedkeyscommand ] || [ "$k" = authorizedkeyscommanduser ] && return 0
    done
    return 1
}
unit_other_opts() {
    local o k out=
    for o in "${UNIT_OPTS[@]}"; do
        k=$(unit_opt_keyword "$o")
        if [ "$k" = authorizedkeyscommand ] || [ "$k" = authorizedkeyscommanduser ]; then out+="${out:+ }-o \"$o\""; fi
    done
    echo "$out"
}

# unit_override: our unit drop-in: the effective ExecStart as written, minus the -o options that set
# AuthorizedKeysCommand or AuthorizedKeysCommandUser (after unit_sshd_args).
unit_override() {
    unit_words "$UNIT_EXEC"
    local i=0 n=${#UNIT_WORDS[@]} w k
    local -a keep=()
    while [ $i -lt "$n" ]; do
        w=${UNIT_WORDS[$i]} k=
        if [ "$w" = -o ] && [ $((i + 1)) -lt "$n" ]; then
            k=$(unit_opt_keyword "${UNIT_WORDS[$((i + 1))]}")
            if [ "$k" = authorizedkeyscommand ] || [ "$k" = authorizedkeyscommanduser ]; then i=$((i + 2)); continue; fi
        elif [[ $w == -o?* ]]; then
            k=$(unit_opt_keyword "${w#-o}")
            if [ "$k" = authorizedkeyscommand ] || [ "$k" = authorizedkeyscommanduser ]; then i=$((i + 1)); continue; fi
        fi
        keep+=("${UNIT_RAW[$i]}")
        i=$((i + 1))
    done
    cat <<UNIT
# Written by $NAME install.sh --replace-other-command; removed by install.sh --uninstall.
# $UNIT_EXEC_FROM made sshd's command line carry $(unit_other_opts),
# which beats every sshd config file, so $NAME's drop-in could not take effect. This restates that
# ExecStart without those options. Named zz-... to sort after the unit's other drop-ins: systemd reads
# drop-ins in file-name order and the last ExecStart= wins.
[Service]
ExecStart=
ExecStart=${keep[*]}
UNIT
}

# unit_opt_keyword OPTION: the lower-case keyword of an -o option ("Keyword value" or "Keyword=value").
unit_opt_keyword() { local k=${1%%[ =	]*}; echo "${k,,}"; }

# show_unit: what --sshd-unit prints (tests and operators).
show_unit() {
    unit_sshd_args
    if [ -z "$UNIT_NAME" ]; then echo "unit none"; return 0; fi
    echo "unit $UNIT_NAME"
    local a; for a in "${UNIT_ALIASES[@]}"; do echo "alias $a"; done
    echo "fragment $UNIT_FRAGMENT"
    for a in "${UNIT_DROPINS[@]}"; do echo "dropin $a"; done
    echo "execstart-from ${UNIT_EXEC_FROM:-none}"
    echo "execstart $UNIT_EXEC"
    echo "config $UNIT_CONFIG"
    for a in "${UNIT_OPTS[@]}"; do echo "option $a"; done
}

# sync_service_unit EXECSTART / sync_timer_unit: the sync-users service and timer, for the live install
# (--with-sync) and the package alike.
sync_service_unit() {
    cat <<UNIT
[Unit]
Description=Local accounts for IAM group members (iam-authorized-keys sync-users)
Documentation=man:iam-authorized-keys(8)
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStart=$1
PrivateTmp=yes
NoNewPrivileges=yes
ProtectKernelTunables=yes
ProtectControlGroups=yes
TimeoutStartSec=15min
UNIT
}
sync_timer_unit() {
    cat <<UNIT
[Unit]
Description=Run iam-authorized-keys sync-users at boot and every 10 minutes

[Timer]
OnBootSec=1min
OnUnitActiveSec=10min
RandomizedDelaySec=2min

[Install]
WantedBy=timers.target
UNIT
}

# --- what sshd will run: the configuration files ---------------------------------------------------------
# For an image tree (--root) the tree's config is copied into a scratch directory with every Include
# rewritten to the copy (globs expanded inside the tree, symlinks resolved inside the tree), so this
# machine's sshd reads exactly the tree's files. SCRATCH is made by install.sh and removed at exit.

# tree_path PATH: where PATH of the tree really is on this machine (symlinks resolved inside the tree).
tree_path() { printf '%s\n' "$R$(unit_target "$1")"; }

# copy_config PATH OUT: the tree's config file PATH, copied to OUT/PATH with its Includes (recursively)
# pointing into OUT.
copy_config() {
    local src=$1 out=$2 line a m
    local dst=$out$src
    [ -e "$dst" ] && return 0
    mkdir -p "$(dirname "$dst")"
    : > "$dst"
    while IFS= read -r line || [ -n "$line" ]; do
        if [[ $line =~ ^[[:space:]]*[Ii][Nn][Cc][Ll][Uu][Dd][Ee]([[:space:]]+|[[:space:]]*=[[:space:]]*)(.*)$ ]]; then
            local -a args=() words=()
            read -r -a words <<< "${BASH_REMATCH[2]}"
            for a in "${words[@]}"; do
                a=${a#\"}; a=${a%\"}   # Flatcar (Gentoo) writes Include "/etc/ssh/sshd_config.d/*.conf"
                [[ $a == /* ]] || a=/etc/ssh/$a
                args+=("$out$a")
                for m in "$R"$a; do
                    [ -e "$(tree_path "${m#"$R"}")" ] || continue   # symlinks resolve inside the tree
                    copy_config "${m#"$R"}" "$out"
                done
            done
            printf 'Include %s\n' "${args[*]}" >> "$dst"
        else
            printf '%s\n' "$line" >> "$dst"
        fi
    done < "$(tree_path "$src")"
}

# config_main: the main config file this machine's sshd should read for the target (a copy for a tree).
config_main() {
    if [ -z "$R" ]; then echo "$SSHD_CONFIG"; return; fi
    local out=$SCRATCH/tree
    rm -rf "$out"; mkdir -p "$out"
    if [ -f "$R$SSHD_CONFIG" ]; then
        copy_config "$SSHD_CONFIG" "$out"
    else
        # No sshd_config in this tree (an image staging directory): only our drop-in.
        mkdir -p "$out$(dirname "$SSHD_CONFIG")"
        printf 'Include %s\n' "$out$SSHD_DIR/*.conf" > "$out$SSHD_CONFIG"
        [ -d "$R$SSHD_DIR" ] && for m in "$R$SSHD_DIR"/*.conf; do
            [ -e "$(tree_path "${m#"$R"}")" ] && copy_config "${m#"$R"}" "$out"
        done
    fi
    echo "$out$SSHD_CONFIG"
}

# tree_sshd: whether an image tree has an sshd of its own that runs here (chroot, as root) and a config
# to read. That sshd then judges the tree: its version's options and defaults, paths resolved inside the
# tree. It needs a host key and its privilege separation directory inside the tree: made under the
# tree's /run and removed at exit. Otherwise this machine's sshd reads a copy (config_main).
tree_sshd() {
    if [ -z "$TREE_SSHD" ]; then
        TREE_SSHD=0
        if [ -n "$R" ] && [ $IS_ROOT = 1 ] && [ -x "$R/usr/sbin/sshd" ] && [ -f "$R$SSHD_CONFIG" ] &&
            [ -d "$R/run" ] && command -v chroot >/dev/null && chroot "$R" /usr/sbin/sshd -V >/dev/null 2>&1; then
            TREE_SCRATCH=$(mktemp -d "$R/run/iak-check.XXXXXX")
            ssh-keygen -q -t ed25519 -N '' -f "$TREE_SCRATCH/hostkey"
            if [ ! -d "$R/run/sshd" ]; then install -d -m 0755 "$R/run/sshd"; TREE_PRIVSEP=1; fi
            TREE_SSHD=1
            note "checking with the tree's own sshd ($(chroot "$R" /usr/sbin/sshd -V 2>&1 | head -1))"
        fi
    fi
    [ "$TREE_SSHD" = 1 ]
}

# sshd_run ARGS...: this machine's sshd on config_main, or the tree's own sshd in the tree, with a
# host key of ours (the target's may not exist yet: images make theirs at first boot).
sshd_run() {
    if tree_sshd; then
        chroot "$R" /usr/sbin/sshd -f "$SSHD_CONFIG" -o "HostKey=${TREE_SCRATCH#"$R"}/hostkey" "$@"
    else
        [ -f "$SCRATCH/hostkey" ] || ssh-keygen -q -t ed25519 -N '' -f "$SCRATCH/hostkey"
        [ -d /run/sshd ] || install -d -m 0755 /run/sshd 2>/dev/null || true
        "$SSHD_BIN" -f "$(config_main)" -o "HostKey=$SCRATCH/hostkey" "$@"
    fi
}

# unit_applies: whether the tree's sshd unit runs the config we install into (its -f, default
# /etc/ssh/sshd_config). A private sshd with its own --sshd-config (tests) is not the unit's.
unit_applies() {
    unit_sshd_args
    [ -n "$UNIT_EXEC" ] && [ "$UNIT_CONFIG" = "$SSHD_CONFIG" ]
}

# sshd_T [CONNSPEC]: sshd -T over what sshd will run: the target's config plus the unit's -o options,
# for connection CONNSPEC (-C) when given. Output in $SCRATCH/T, errors in $SCRATCH/T.err.
sshd_T() {
    local -a args=(-T)
    if unit_applies; then
        local o; for o in "${UNIT_OPTS[@]}"; do args+=(-o "$o"); done
    fi
    [ -n "${1:-}" ] && args+=(-C "$1")
    if [ -z "$R" ]; then
        [ -f "$SCRATCH/hostkey" ] || ssh-keygen -q -t ed25519 -N '' -f "$SCRATCH/hostkey"
        [ -d /run/sshd ] || install -d -m 0755 /run/sshd 2>/dev/null || true
        "$SSHD_BIN" -f "$SSHD_CONFIG" -o "HostKey=$SCRATCH/hostkey" "${args[@]}" > "$SCRATCH/T" 2> "$SCRATCH/T.err"
    else
        tree_sshd || true   # decided (and said) here, not under the redirection below
        sshd_run "${args[@]}" > "$SCRATCH/T" 2> "$SCRATCH/T.err"
    fi
}

# effective KEYWORD: its value in $SCRATCH/T (sshd -T prints lower-case keywords).
effective() { awk -v k="$1" '$1 == k { sub(/^[^ ]+ /, ""); print; exit }' "$SCRATCH/T"; }

# first_setter KEYWORD FILE: "file:line: text" of the first line sshd reads that sets KEYWORD outside a
# Match block, following Includes in order (tree paths, for messages).
first_setter() {
    local kw=${1,,} file=$2 line n=0 inmatch=0 k v a m
    [ -f "$file" ] || return 1
    while IFS= read -r line || [ -n "$line" ]; do
        n=$((n + 1))
        [[ $line =~ ^[[:space:]]*([A-Za-z]+)([[:space:]]+|[[:space:]]*=[[:space:]]*)(.*)$ ]] || continue
        k=${BASH_REMATCH[1],,} v=${BASH_REMATCH[3]}
        [ "$k" = match ] && inmatch=1
        [ $inmatch = 1 ] && continue
        if [ "$k" = include ]; then
            local -a words=(); read -r -a words <<< "$v"
            for a in "${words[@]}"; do
                a=${a#\"}; a=${a%\"}   # Flatcar (Gentoo) writes Include "/etc/ssh/sshd_config.d/*.conf"
                [[ $a == /* ]] || a=/etc/ssh/$a
                for m in $a; do
                    [ -f "$m" ] && first_setter "$kw" "$m" && return 0
                done
            done
        elif [ "$k" = "$kw" ]; then
            local shown=$file
            [ -n "$R" ] && shown=$R${file#"$SCRATCH/tree"}
            printf '%s:%s: %s\n' "$shown" "$n" "$line"
            return 0
        fi
    done < "$file"
    return 1
}

# boot_dropins: drop-ins systemd-tmpfiles will link into SSHD_DIR at boot that are not there yet
# (systemd-userdbd ships its 20-systemd-userdb.conf that way: an image tree built in a chroot has no
# link until first boot, and a deleted link comes back at the next boot). Prints "LINK TARGET" lines.
boot_dropins() {
    local -A seen=()
    local d f base line typ path target
    for d in /etc/tmpfiles.d /run/tmpfiles.d /usr/local/lib/tmpfiles.d /usr/lib/tmpfiles.d /lib/tmpfiles.d; do
        for f in "$R$d"/*.conf; do
            [ -f "$f" ] || continue
            base=$(basename "$f")
            [ -n "${seen[$base]:-}" ] && continue
            seen[$base]=1
            while read -r typ path _ _ _ _ target; do
                [[ $typ == L* ]] && [ "$(dirname "$path")" = "$SSHD_DIR" ] && [[ $path == *.conf ]] || continue
                [ -e "$R$path" ] || [ -L "$R$path" ] && continue
                [ -z "$target" ] || [ "$target" = - ] && target=/usr/share/factory$path
                printf '%s %s\n' "$path" "$target"
            done < "$f"
        done
    done
}

# who_sets KEYWORD: where the effective value of KEYWORD comes from, for messages.
who_sets() {
    local o
    if unit_applies; then
        for o in "${UNIT_OPTS[@]}"; do
            if [ "$(unit_opt_keyword "$o")" = "${1,,}" ]; then
                echo "the $UNIT_NAME unit: sshd's command line has -o \"$o\" (ExecStart= in $R$UNIT_EXEC_FROM), which beats every config file"
                return
            fi
        done
    fi
    first_setter "$1" "$(config_main)" || echo "sshd's built-in default"
}

validate_sshd() {
    local sshd=$SSHD_BIN
    [ -x "$sshd" ] || die "sshd not found: install openssh-server first"
    [ -d /run/sshd ] || install -d -m 0755 /run/sshd 2>/dev/null || true
    if [ -z "$R" ]; then
        # With a host key of ours, as sshd_T: a RHEL/Amazon Linux/Fedora image makes its host keys at first
        # boot (sshd-keygen@), so a package installed while building one (rpm --root, dnf --installroot,
        # a chroot builder) finds none, and "no hostkeys available" is not a config error.
        [ -f "$SCRATCH/hostkey" ] || ssh-keygen -q -t ed25519 -N '' -f "$SCRATCH/hostkey"
        "$sshd" -t -f "$SSHD_CONFIG" -o "HostKey=$SCRATCH/hostkey"
    else
        # The tree's own sshd in the tree, or this machine's on a copy of the tree's config (sshd_run).
        tree_sshd || true
        sshd_run -t
    fi
}

# --- the image's default account ------------------------------------------------------------------------
# default_user_block: the end of our drop-in for DEFAULT_USERS (nothing without one).
default_user_block() {
    [ ${#DEFAULT_USERS[@]} -gt 0 ] || return 0
    local IFS=,
    cat <<BLOCK
#
# The image's default account: its launch key pair in ~/.ssh/authorized_keys keeps working, and it is
# never served from IAM (--deny-user above). This Match block is the last thing in this file and ends
# with it: OpenSSH (9.2 and 10.0 checked) scopes a Match inside an included file to that file, so it
# cannot capture settings read after it; install.sh checks both with sshd -T -C user=....
Match User ${DEFAULT_USERS[*]}
    AuthorizedKeysFile .ssh/authorized_keys
BLOCK
}

# Cloud images ship one login account (admin on Debian, ubuntu, ec2-user on Amazon Linux; core on Flatcar)
# that gets the launch key pair in ~/.ssh/authorized_keys. It keeps that key pair, and an IAM user of the
# same name is never served its (sudo) account.

# cloud_default_user FILE: system_info.default_user.name in a cloud-init config (block or flow style);
# a plain line parser, no YAML library: indentation decides what belongs to system_info/default_user.
cloud_default_user() {
    awk '
        function ind(s) { match(s, /^ */); return RLENGTH }
        function clean(v) { sub(/[ \t]+#.*$/, "", v); gsub(/["\047]/, "", v); sub(/[ \t\r]+$/, "", v); return v }
        /^[ \t]*(#|$)/ { next }
        {
            i = ind($0)
            if (i == 0) { si = ($0 ~ /^system_info:[ \t]*$/); du = 0; next }
            if (!si) next
            if (du && i <= duind) du = 0
            if (!du && $0 ~ /^ +default_user:/) {
                rest = $0; sub(/^ +default_user:[ \t]*/, "", rest)
                if (rest ~ /^\{/ && match(rest, /name:[ \t]*[^,} \t]+/)) {
                    v = substr(rest, RSTART, RLENGTH); sub(/^name:[ \t]*/, "", v); name = clean(v)
                } else if (rest == "") { du = 1; duind = i; child = -1 }
                next
            }
            if (du) {
                if (child < 0) child = i
                if (i == child && $0 ~ /^ +name:/) { v = $0; sub(/^ +name:[ \t]*/, "", v); name = clean(v) }
            }
        }
        END { if (name != "") print name }' "$1"
}

# find_default_users: DEFAULT_USERS from --default-user, else cloud-init's (later files win, as
# cloud-init merges cloud.cfg.d/*.cfg after cloud.cfg), else core on Flatcar.
find_default_users() {
    [ $NO_DEFAULT_USER = 1 ] && { DEFAULT_USERS=(); return 0; }
    [ ${#DEFAULT_USERS[@]} -gt 0 ] && return 0
    local f n found=
    for f in "$R/etc/cloud/cloud.cfg" "$R/etc/cloud/cloud.cfg.d"/*.cfg; do
        [ -f "$f" ] || continue
        n=$(cloud_default_user "$f")
        [ -n "$n" ] && found=$n
    done
    if [ -n "$found" ]; then
        if [[ $found =~ ^[a-z_][a-z0-9_.-]{0,31}$ ]]; then
            DEFAULT_USERS=("$found")
            note "default account from cloud-init: $found (keeps ~/.ssh/authorized_keys, never served from IAM; --no-default-user to change)"
        else
            note "ignoring cloud-init's default_user '$found': not a valid login name"
        fi
    elif grep -qsE '^ID=("?)flatcar' "$R/etc/os-release"; then
        DEFAULT_USERS=(core)
        note "default account on Flatcar: core (keeps ~/.ssh/authorized_keys, never served from IAM; --no-default-user to change)"
    fi
    return 0
}

# verify_effective: sshd -T must show our command, our command user and our AuthorizedKeysFile choice.
verify_effective() {
    if ! sshd_T; then
        note "sshd -T rejected the configuration: $(cat "$SCRATCH/T.err")"
        return 1
    fi
    local kw want got bad=0
    for kw in AuthorizedKeysCommand AuthorizedKeysCommandUser AuthorizedKeysFile; do
        case $kw in
            AuthorizedKeysCommand) want=$command_line ;;
            AuthorizedKeysCommandUser) want=$SVC_USER ;;
            AuthorizedKeysFile) want=none ;;
        esac
        got=$(effective "${kw,,}")
        [ "$got" = "$want" ] && continue
        bad=1
        note "sshd would not use our $kw: in effect is '$got', from $(who_sets "$kw")"
    done
    # The default accounts keep their authorized_keys, and only they: the Match block is scoped.
    local u
    for u in "${DEFAULT_USERS[@]}" iak-probe-not-a-default-user; do
        if ! sshd_T "user=$u,host=localhost,addr=127.0.0.1"; then
            note "sshd -T -C user=$u rejected the configuration: $(cat "$SCRATCH/T.err")"; return 1
        fi
        want=.ssh/authorized_keys
        [ "$u" = iak-probe-not-a-default-user ] && want=none
        got=$(effective authorizedkeysfile)
        [ "$got" = "$want" ] && continue
        bad=1
        note "for user $u sshd would use AuthorizedKeysFile '$got', not '$want' (sshd -T -C user=$u)"
    done
    if [ $bad = 1 ]; then
        note "sshd keeps the first value it reads. Remove those lines, or move them below the line"
        note "'Include $SSHD_DIR/*.conf' (or put that Include first in $R$SSHD_CONFIG), then run install.sh again"
        return 1
    fi
}

reload_sshd() {
    [ $RELOAD = 1 ] || return 0
    if [ "${UNIT_CHANGED:-0}" = 1 ] && [ -n "$UNIT_NAME" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        # A changed ExecStart= takes effect only at a restart (open sessions survive it).
        systemctl daemon-reload
        if systemctl is-active --quiet "$UNIT_NAME"; then systemctl restart "$UNIT_NAME"; return; fi
    fi
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
    stash "$path"
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
    local kind path include_dir=
    local -a dirs=() kept=()
    include_dir=$(awk '$1 == "includedir" { print $2 }' "$m")
    while read -r kind path; do
        # --uninstall-sshd: only sshd's configuration goes; the rest stays listed for --uninstall.
        if [ $UNINSTALL_SSHD = 1 ]; then
            case $kind in
                include) ;;
                file) [[ $path == "$SSHD_DIR"/* || $path == /etc/systemd/system/*.service.d/zz-$NAME.conf ]] ||
                          { kept+=("$kind $path"); continue; } ;;
                includedir) continue ;;
                *) kept+=("$kind $path"); continue ;;
            esac
        fi
        case $kind in
            file)
                rm -f "$R$path"
                # Our unit drop-in (--replace-other-command): its removal gives the other command back,
                # at sshd's next restart.
                [[ $path == /etc/systemd/system/*.service.d/zz-$NAME.conf ]] && UNIT_CHANGED=1
                ;;
            cachedir)
                case $path in /*/*) rm -rf --one-file-system -- "$R$path" ;; *) note "not removing odd cache path '$path'" ;; esac ;;
            dir) dirs+=("$path") ;;
            include)
                if [ -f "$R$path" ]; then
                    local tmp; tmp=$(mktemp "$R$path.XXXXXX")
                    # Only our two lines: the marker and, after it, the first line that is exactly our
                    # Include (manifests before includedir: an "Include DIR/*.conf" line). Whatever an
                    # admin added around them stays.
                    awk -v mark="$INCLUDE_MARK" -v dir="$include_dir" '
                        $0 == mark { pending = 1; next }
                        pending && (dir != "" ? $0 == "Include " dir "/*.conf" : $0 ~ /^Include [^[:space:]]+\/\*\.conf$/) { pending = 0; next }
                        { print }' "$R$path" > "$tmp"
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
    if [ $UNINSTALL_SSHD = 1 ]; then
        local tmp; tmp=$(mktemp "$m.XXXXXX")
        [ ${#kept[@]} -eq 0 ] || printf '%s\n' "${kept[@]}" > "$tmp"
        chmod 0644 "$tmp"; mv -f "$tmp" "$m"
    else
        rm -f "$m"
        # The copy of install.sh a package kept for this (the .rpm's and the sysext's cleanup run it
        # from there; bash has it open, so it may go).
        rm -f "$R$(dirname "$MANIFEST")/install.sh"
        # Directories we created, deepest first, only when empty.
        local i
        for ((i=${#dirs[@]}-1; i>=0; i--)); do rmdir "$R${dirs[$i]}" 2>/dev/null || true; done
        rmdir "$R$(dirname "$MANIFEST")" 2>/dev/null || true
    fi
    if [ "${UNIT_CHANGED:-0}" = 1 ]; then
        unit_load
        [ -n "$R" ] || [ $RELOAD = 1 ] || note "restart sshd (systemctl daemon-reload; systemctl restart ${UNIT_NAME:-ssh}) to give its unit's command line back"
    fi
    if [ -z "$R" ] && [ -f "$SSHD_CONFIG" ]; then validate_sshd && reload_sshd; fi
    if [ $UNINSTALL_SSHD = 1 ]; then note "removed from sshd's configuration (user, cache and $MANIFEST kept for --uninstall)"
    else note "uninstalled"; fi
}

if [ $SHOW_UNIT = 1 ]; then show_unit; exit 0; fi
if [ $UNINSTALL = 1 ]; then uninstall; exit 0; fi

[ -n "$PACKAGE" ] || find_default_users

# --- another AuthorizedKeysCommand already in effect? ---------------------------------------------------
# sshd runs one command. Ours would displace one that is in effect, and the logins it serves would
# stop. So ours chains it (--chain): it runs that command beside its own lookup, as our
# AuthorizedKeysCommandUser, and prints its checked keys after ours. --replace-other-command replaces it.
is_ours() { local w=${1%% *}; [ "$(basename "$w")" = "$NAME" ]; }
CHAIN_PROG=
CHAIN_ARGS=()
# chain_other CMD: checks that CMD can be chained (the checks sshd and our binary apply to a command,
# and words we can pass on unchanged) and records it; dies naming the problem otherwise.
chain_other() {
    local cmd=$1 words w p real mode owner
    read -r -a words <<< "$cmd"
    [ ${#words[@]} -gt 0 ] || die "empty AuthorizedKeysCommand"
    for w in "${words[@]}"; do
        [[ $w =~ ^[A-Za-z0-9_./:@+=,%-]+$ ]] ||
            die "cannot chain '$cmd': the word '$w' would not survive our drop-in unchanged; run install.sh again with --replace-other-command"
    done
    if [ -n "$CHAIN_PROG" ]; then
        [ "$CHAIN_PROG ${CHAIN_ARGS[*]}" = "${words[*]}" ] && return 0
        die "two other AuthorizedKeysCommands ('$CHAIN_PROG ${CHAIN_ARGS[*]}', '$cmd'): ours chains one; run install.sh again with --replace-other-command"
    fi
    [[ ${words[0]} == /* ]] || die "cannot chain '$cmd': its program is not an absolute path"
    real=$(tree_path "${words[0]}")
    [ -f "$real" ] && [ -x "$real" ] || die "cannot chain '$cmd': $real is not an executable file"
    [ -z "$R" ] && real=$(readlink -f "$real")
    p=$real
    while :; do
        owner=$(stat -Lc %u "$p"); mode=$(stat -Lc %a "$p")
        [ "$owner" = 0 ] && (( (8#$mode & 8#022) == 0 )) ||
            die "cannot chain '$cmd': $p is owned by uid $owner with mode $mode (sshd, and ours, run only root-owned commands without group/world-writable directories); fix that, or --replace-other-command"
        [ "$p" = / ] || [ "$p" = "${R:-/}" ] && break
        p=$(dirname "$p")
    done
    CHAIN_PROG=${words[0]}
    CHAIN_ARGS=("${words[@]:1}")
    note "chaining it: '$CHAIN_PROG' runs beside our lookup, as $SVC_USER (not ${2:-its own user}), and its keys are printed after ours"
    [ "${2:-}" != root ] ||
        note "  it ran as root before: data only root may read (e.g. userdb's NAME.user-privileged files) is out of its reach now"
}
if [ -z "$PACKAGE" ]; then
    [ -n "$R" ] || [ -f "$SSHD_CONFIG" ] || die "$SSHD_CONFIG not found: install openssh-server first"
    # sshd's unit may run another config file (-f): then ours would never be read.
    unit_sshd_args
    if [ $SSHD_CONFIG_SET = 0 ] && [ -n "$UNIT_EXEC" ] && [ "$UNIT_CONFIG" != "$SSHD_CONFIG" ]; then
        die "the $UNIT_NAME unit runs sshd with -f $UNIT_CONFIG (ExecStart= in $R$UNIT_EXEC_FROM), not $SSHD_CONFIG: run install.sh again with --sshd-config $UNIT_CONFIG"
    fi
    sshd_T || die "sshd -T cannot read the current configuration (fix it first): $(cat "$SCRATCH/T.err")"
    other=$(effective authorizedkeyscommand)
    if is_ours "$other" && [ $REPLACE_OTHER = 0 ]; then
        # Installed before: keep chaining what it chained.
        read -r -a words <<< "$other"
        for ((i = 0; i < ${#words[@]}; i++)); do
            case ${words[$i]} in
                --chain) CHAIN_PROG=${words[$((i + 1))]} ;;
                --chain-arg) CHAIN_ARGS+=("${words[$((i + 1))]}") ;;
            esac
        done
        [ -z "$CHAIN_PROG" ] || note "keeping the chained command '$CHAIN_PROG ${CHAIN_ARGS[*]}' of the earlier install"
    fi
    if [ -n "$other" ] && [ "$other" != none ] && ! is_ours "$other"; then
        other_user=$(effective authorizedkeyscommanduser)
        other_from=$(who_sets AuthorizedKeysCommand)
        note "another AuthorizedKeysCommand is in effect: '$other' (AuthorizedKeysCommandUser ${other_user:-none})"
        note "  set by $other_from"
        if [ $REPLACE_OTHER = 0 ]; then
            chain_other "$other" "$other_user"
        else
            note "replacing it (--replace-other-command): logins through '$other' stop working"
        fi
    fi
    # What systemd-tmpfiles adds at boot counts too.
    while read -r link target; do
        [ -n "$link" ] || continue
        cmd=$(awk 'tolower($1) == "authorizedkeyscommand" { $1 = ""; sub(/^ /, ""); print; exit }' "$(tree_path "$target")" 2>/dev/null || true)
        [ -n "$cmd" ] || continue
        note "at boot systemd-tmpfiles links $R$link -> $target, which sets AuthorizedKeysCommand '$cmd'"
        if [[ $(basename "$link") < $(basename "$DROPIN") ]]; then
            die "that file sorts before $(basename "$DROPIN") and would win: mask it (an empty $R/etc/tmpfiles.d/ file of the same name) first"
        fi
        if [ $REPLACE_OTHER = 0 ]; then
            chain_other "$cmd"
        else
            note "replacing it (--replace-other-command): logins through '$cmd' stop working"
        fi
    done < <(boot_dropins)
fi

# --- the binary --------------------------------------------------------------------------------------
if [ $INSTALLED = 1 ]; then
    # A package manager put it there (and owns it, its man page and completions): use it as it is.
    [ -z "$BINARY" ] || die "--installed uses BINDIR/$NAME as installed; --binary does not go with it"
    BINARY=$R$BINDIR/$NAME
elif [ -z "$BINARY" ]; then
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
# The lookup flags as the binary reads them, before anything is written: a value it refuses would make
# every login fail. Files named by flags may not exist yet (an image pipeline writes them later): those
# flags are left out of this check, except a --config file that is already there (read from the target
# tree, as root, so that its owner is judged as sshd's command user will find it).
check_flags=()
set -- "${FLAGS[@]}"
while [ $# -gt 0 ]; do
    case $1 in
        --config)
            if [ $IS_ROOT = 1 ] && [ -z "$PACKAGE$PACKAGE_ALL" ] && [ -e "$R$2" ]; then
                check_flags+=("$1" "$R$2")
            fi
            shift ;;
        --credentials-file|--ca-bundle) shift ;;
        --key-expiry) check_flags+=("$1") ;;
        *) check_flags+=("$1" "$2"); shift ;;
    esac
    shift
done
# With sshd's environment (none): this shell's HTTPS_PROXY or AWS_* must not decide it.
if ! flag_err=$(env -i PATH=/usr/bin:/bin HOME=/nonexistent "$BINARY" map "${check_flags[@]}" \
        --journal-socket none --syslog-socket none -- root 2>&1 >/dev/null); then
    die "the lookup settings are refused: ${flag_err#*: }"
fi

# package_version: --package-version, else Cargo.toml's [package] version.
package_version() {
    local version=$PACKAGE_VERSION
    if [ -z "$version" ]; then
        version=$(awk -F'"' '/^\[package\]/ { p = 1; next } /^\[/ { p = 0 } p && /^version *=/ { print $2; exit }' "$SRC_DIR/Cargo.toml")
    fi
    [[ $version =~ ^[0-9][A-Za-z0-9.+~-]*$ ]] || die "package version '$version' is not a Debian version"
    echo "$version"
}

# need_tool COMMAND DEBIAN_PACKAGE OTHER_HINT: COMMAND, installed with apt-get (root on Debian/Ubuntu)
# when missing; elsewhere die naming what to install.
need_tool() {
    command -v "$1" >/dev/null && return 0
    if [ $IS_ROOT = 1 ] && command -v apt-get >/dev/null; then
        note "installing $2 (for $1)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null; } ||
            die "cannot install $2 (apt-get install $2)"
        command -v "$1" >/dev/null || die "$2 installed, but $1 still not found"
    else
        die "$1 not found: install $2 (Debian/Ubuntu: apt-get install $2; $3)"
    fi
}

# stage_package DIR ZSH_DIR: the files every package format ships, under DIR: one list for the .deb,
# the .rpm and the sysext. /usr/bin/$NAME (the static binary as given, never stripped or rebuilt),
# install.sh and the drop-in template under /usr/lib/$NAME (the maintainer scripts run it), the man
# page and completions (zsh's directory differs: Debian's zsh reads vendor-completions, Fedora's and
# RHEL's site-functions), sysusers.d/tmpfiles.d entries, the sync-users units (not enabled), the IAM
# policies, and the operator's settings file /etc/$NAME/config (a conffile; the sysext moves it).
stage_package() {
    local d=$1 zsh=$2 f
    install -d -m 0755 "$d/usr/bin" "$d/usr/lib/$NAME/sshd_config.d" "$d/usr/share/man/man8" \
        "$d/usr/share/bash-completion/completions" "$d$zsh" \
        "$d/usr/lib/sysusers.d" "$d/usr/lib/tmpfiles.d" "$d/usr/lib/systemd/system" \
        "$d/usr/share/doc/$NAME" "$d/etc/$NAME"
    install -m 0755 "$BINARY" "$d/usr/bin/$NAME"
    install -m 0755 "$SRC_DIR/install.sh" "$d/usr/lib/$NAME/install.sh"
    install -m 0644 "$SRC_DIR/sshd_config.d/10-$NAME.conf" "$d/usr/lib/$NAME/sshd_config.d/"
    "$BINARY" man | gzip -9n > "$d/usr/share/man/man8/$NAME.8.gz"
    "$BINARY" completions bash > "$d/usr/share/bash-completion/completions/$NAME"
    "$BINARY" completions zsh > "$d$zsh/_$NAME"
    printf 'u %s - "iam-authorized-keys lookup (AuthorizedKeysCommandUser)" /nonexistent /usr/sbin/nologin\n' "$NAME" > "$d/usr/lib/sysusers.d/$NAME.conf"
    printf 'd /var/cache/%s 0700 %s %s -\n' "$NAME" "$NAME" "$NAME" > "$d/usr/lib/tmpfiles.d/$NAME.conf"
    sync_service_unit "/usr/bin/$NAME sync-users --config /etc/$NAME/config" > "$d/usr/lib/systemd/system/$NAME-sync.service"
    sync_timer_unit > "$d/usr/lib/systemd/system/$NAME-sync.timer"
    for f in "$SRC_DIR"/examples/iam/*.json; do install -m 0644 "$f" "$d/usr/share/doc/$NAME/"; done
    [ -f "$SRC_DIR/README.md" ] && gzip -9n < "$SRC_DIR/README.md" > "$d/usr/share/doc/$NAME/README.md.gz"
    printf 'License: Apache-2.0\nOn Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.\n' > "$d/usr/share/doc/$NAME/copyright"
    cat > "$d/etc/$NAME/config" <<CONF
# $NAME settings, read at every lookup: the sshd drop-in the package writes runs
# /usr/bin/$NAME --config /etc/$NAME/config ... (and the $NAME-sync.service runs
# sync-users with it). One 'option = value' per line, named like the long options of $NAME(8):
#   ttl, negative-ttl, max-stale, timeout, cache-dir, no-cache, region, endpoint-url, credentials-file,
#   profile, ca-bundle, sts-endpoint-url, assume-role, external-id, allowed-group, allowed-groups-tag, name-case, min-uid,
#   max-uid, allow-user, deny-user, key-options, key-expiry, chain, chain-arg
# Flags on the drop-in's command line win over this file. Keep it root-owned and not group/world-writable.
# A conffile: package upgrades never overwrite your edits; purge removes it.
#
# allowed-group = ssh-users
# ttl = 5m
# assume-role = arn:aws:iam::123456789012:role/ReadSshKeys
CONF
    chmod 0644 "$d/etc/$NAME/config"
}

# The maintainer scripts of both packages, one command each (the .deb's and the .rpm's differ only in
# how their package manager says install, upgrade, remove).
CONFIGURE_CMD="/usr/lib/$NAME/install.sh --installed --bindir /usr/bin --config /etc/$NAME/config"
# purge (and, for the rpm and the sysext, a later full cleanup) runs install.sh --uninstall after the
# package's files are gone: a copy is kept in the state directory.
KEEP_COPY_CMD="install -m 0755 /usr/lib/$NAME/install.sh /var/lib/$NAME/install.sh"

# write_deb FILE: a Debian package staged in a tree and built by dpkg-deb (on every Debian machine;
# cargo-deb would rebuild the binary with cargo, not take the one given with --binary). Its maintainer
# scripts run this very script, shipped as /usr/lib/$NAME/install.sh: postinst --installed (the checks,
# chaining, default account and rollback of a live install), prerm --uninstall-sshd (remove: sshd as
# before, user, cache and conffile kept), postrm --uninstall from a copy kept in the state directory
# (purge: everything the package created, a chained command restored).
write_deb() {
    local out=$1 version stage d
    umask 022   # the staged files' modes are the package's
    command -v dpkg-deb >/dev/null || die "dpkg-deb not found (Debian package dpkg)"
    version=$(package_version)
    stage=$(mktemp -d)
    chmod 0755 "$stage"
    d=$stage
    stage_package "$d" /usr/share/zsh/vendor-completions
    install -d -m 0755 "$d/DEBIAN"
    echo "/etc/$NAME/config" > "$d/DEBIAN/conffiles"
    local size; size=$(du -sk --exclude=DEBIAN "$d" | cut -f1)
    cat > "$d/DEBIAN/control" <<CTRL
Package: $NAME
Version: $version
Architecture: amd64
Maintainer: iam-authorized-keys developers <dev@iak.invalid>
Installed-Size: $size
Depends: openssh-server
Section: admin
Priority: optional
Description: SSH keys of AWS IAM users for sshd (AuthorizedKeysCommand)
$(package_description | sed -e 's/^$/./' -e 's/^/ /')
CTRL
    cat > "$d/DEBIAN/postinst" <<SCRIPT
#!/bin/sh
# Configures sshd for /usr/bin/iam-authorized-keys with install.sh (--installed): user, cache directory,
# effective-configuration check, chaining, default account, sshd -t, reload. install.sh rolls back its
# own changes when sshd would not use them, and this fails: sshd is never left half-configured.
set -e
# abort-*: a failed remove or upgrade puts the configuration back (install.sh is idempotent).
if [ "\$1" = configure ] || [ "\$1" = abort-remove ] || [ "\$1" = abort-upgrade ] || [ "\$1" = abort-deconfigure ]; then
    $CONFIGURE_CMD
    # purge runs install.sh --uninstall after dpkg has removed the package's files: keep a copy.
    $KEEP_COPY_CMD
fi
exit 0
SCRIPT
    cat > "$d/DEBIAN/prerm" <<'SCRIPT'
#!/bin/sh
# remove: sshd's configuration as before the install (drop-in, Include, unit drop-in removed, sshd
# reloaded) while the binary is still there; the user, cache and /etc/iam-authorized-keys/config stay.
set -e
case "$1" in
    remove|deconfigure)
        if [ -f /var/lib/iam-authorized-keys/iam-authorized-keys.manifest ]; then
            /usr/lib/iam-authorized-keys/install.sh --uninstall-sshd
        fi ;;
esac
exit 0
SCRIPT
    cat > "$d/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
# purge: everything the package created (user, cache directory, state) by install.sh --uninstall from
# the copy postinst kept; a chained command is in effect again as it was.
set -e
if [ "$1" = purge ]; then
    S=/var/lib/iam-authorized-keys
    if [ -f "$S/install.sh" ]; then
        t=$(mktemp -d)
        mv "$S/install.sh" "$t/install.sh"
        if [ -f "$S/iam-authorized-keys.manifest" ]; then "$t/install.sh" --uninstall; fi
        rm -rf "$t"
    fi
    rm -f "$S/sync-state.json"
    rmdir "$S" 2>/dev/null || true
fi
exit 0
SCRIPT
    chmod 0755 "$d/DEBIAN/postinst" "$d/DEBIAN/prerm" "$d/DEBIAN/postrm"
    dpkg-deb --root-owner-group -Zxz --build "$stage" "$out" >/dev/null || { rm -rf "$stage"; die "dpkg-deb --build failed"; }
    rm -rf "$stage"
    (cd "$(dirname "$out")" && sha256sum "$(basename "$out")") > "$out.sha256"
    note "wrote $out ($NAME $version, $("$BINARY" --version)) and $out.sha256"
}

# package_description: the long description of the .deb and the .rpm.
package_description() {
    cat <<TEXT
sshd runs iam-authorized-keys as its AuthorizedKeysCommand: it serves the active
SSH public keys of the AWS IAM user named like the login account, through a
root-owned on-disk TTL cache, as a dedicated locked system user.

Installing configures sshd (a drop-in in /etc/ssh/sshd_config.d) after checking
with sshd -T that its settings are the ones in effect; another
AuthorizedKeysCommand in effect (EC2 Instance Connect, systemd-userdb, ...) is
chained, and the image's default account keeps its authorized_keys. Settings
live in the conffile /etc/$NAME/config. Static binary (musl).
TEXT
}

# write_rpm FILE: an RPM built by rpmbuild from the same staged tree as the .deb (stage_package): the
# spec's %files list is generated from that tree, so the file list exists once. (cargo-generate-rpm
# would need a second list of assets in Cargo.toml.) The binary is packed as given: no strip, no
# debuginfo, no build-id links, no recompression (__os_install_post off). Scriptlets, by RPM's $1 (the
# number of instances left after the step): %post configures on install and upgrade (install.sh
# --installed, as the .deb's postinst; a failure rolls sshd back and fails the transaction's
# scriptlet); %preun on erase ($1 = 0) takes sshd's configuration back (--uninstall-sshd), not on
# upgrade ($1 = 1). rpm has no purge: erase keeps the user, cache and the kept install.sh, whose
# --uninstall removes them (rpm itself keeps an edited config as config.rpmsave).
write_rpm() {
    local out=$1 version top d f
    umask 022
    need_tool rpmbuild rpm "Fedora/RHEL/Amazon Linux: dnf install rpm-build"
    version=$(package_version)
    [[ $version != *-* ]] || die "package version '$version': an RPM version cannot hold '-'"
    top=$(mktemp -d)
    d=$top/tree
    install -d -m 0755 "$d"
    stage_package "$d" /usr/share/zsh/site-functions
    {
        cat <<SPEC
Name: $NAME
Version: $version
Release: 1
Summary: SSH keys of AWS IAM users for sshd (AuthorizedKeysCommand)
License: Apache-2.0
Requires: openssh-server
Requires(post): bash, coreutils, gawk, grep, sed, findutils, shadow-utils, openssh-server
Requires(preun): bash
AutoReqProv: no

%global __os_install_post %{nil}
%global debug_package %{nil}
%global _build_id_links none

%description
$(package_description)

%install
cp -a "$d/." "%{buildroot}/"

%post
# \$1: 1 on install, 2 on upgrade. install.sh is idempotent: configure either way. rpm runs scriptlets
# without -e: without it a failed install.sh would not fail the scriptlet.
set -e
$CONFIGURE_CMD
$KEEP_COPY_CMD

%preun
# \$1: 0 on erase (sshd's configuration as before: drop-in, Include, unit drop-in removed, sshd
# reloaded, a chained command in effect again), 1 on upgrade (nothing: the new version's %post ran).
if [ "\$1" = 0 ] && [ -f /var/lib/$NAME/$NAME.manifest ]; then
    /usr/lib/$NAME/install.sh --uninstall-sshd
fi

%files
%defattr(-,root,root,-)
SPEC
        # Its own directories, and zsh's completion directory (co-owned, as packages that ship zsh
        # completions without requiring zsh do); the others belong to filesystem and systemd.
        (cd "$d" && find . -mindepth 1 -type d \( -path "*$NAME*" -o -path ./usr/share/zsh -o -path ./usr/share/zsh/site-functions \) -printf '%%dir /%P\n' | sort)
        (cd "$d" && find . -mindepth 1 ! -type d -printf '/%P\n' | sort) | while IFS= read -r f; do
            if [ "$f" = "/etc/$NAME/config" ]; then echo "%config(noreplace) $f"; else echo "$f"; fi
        done
    } > "$top/$NAME.spec"
    rpmbuild -bb --nodeps --quiet --target x86_64 --define "_topdir $top" --buildroot "$top/buildroot" \
        --define "_rpmfilename out.rpm" "$top/$NAME.spec" > "$top/log" 2>&1 ||
        { cat "$top/log" >&2; rm -rf "$top"; die "rpmbuild failed"; }
    mv -f "$top/RPMS/out.rpm" "$out"
    rm -rf "$top"
    (cd "$(dirname "$out")" && sha256sum "$(basename "$out")") > "$out.sha256"
    note "wrote $out ($NAME $version, $("$BINARY" --version)) and $out.sha256"
}

# write_sysext FILE: a systemd system extension (Flatcar: /etc/extensions/$NAME.raw), a squashfs
# image of /usr only, built by mksquashfs. The same staged tree, plus what a sysext needs instead of
# maintainer scripts (it cannot run any, nor ship /etc):
#   usr/lib/extension-release.d/extension-release.$NAME: ID=_any (a static binary and a bash script:
#     no dependency on the host's release) and ARCHITECTURE=x86-64; systemd merges an image only when
#     this file's name matches the image's name, so the image must be installed as $NAME.raw
#   usr/share/factory/etc/$NAME/config: the settings file's default, copied to /etc/$NAME/config when
#     missing (tmpfiles.d 'C'); an operator's (Butane's) file is kept
#   $NAME-setup.service, upheld by multi-user.target through a drop-in (merging enables it, as the
#     .deb's postinst runs on install): install.sh --installed, as the packages' %post/postinst.
#     Upholds=, not Wants=: the image is merged and the units reloaded (EXTENSION_RELOAD_MANAGER=1 on
#     systemd >= 255; Flatcar's ensure-sysext.service) after multi-user.target's start job was
#     computed, so a Wants= added then would start nothing; Upholds= is enforced whenever it is loaded
stage_sysext() {
    local d=$1 version=$2
    stage_package "$d" /usr/share/zsh/site-functions
    install -d -m 0755 "$d/usr/share/factory/etc/$NAME" "$d/usr/lib/extension-release.d" \
        "$d/usr/lib/systemd/system/multi-user.target.d"
    mv "$d/etc/$NAME/config" "$d/usr/share/factory/etc/$NAME/config"
    rm -rf "$d/etc"
    printf 'd /etc/%s 0755 root root -\nC /etc/%s/config - - - - /usr/share/factory/etc/%s/config\n' "$NAME" "$NAME" "$NAME" \
        > "$d/usr/lib/tmpfiles.d/$NAME-config.conf"
    cat > "$d/usr/lib/extension-release.d/extension-release.$NAME" <<REL
ID=_any
ARCHITECTURE=x86-64
SYSEXT_ID=$NAME
SYSEXT_VERSION_ID=$version
SYSEXT_SCOPE=system
EXTENSION_RELOAD_MANAGER=1
REL
    cat > "$d/usr/lib/systemd/system/$NAME-setup.service" <<UNIT
# From the $NAME system extension, which cannot run maintainer scripts: configures sshd the way the
# .deb's postinst and the .rpm's %post do. install.sh checks sshd -T and rolls its changes back when
# sshd would not use them (this unit then fails, sshd as it was: see journalctl -u $NAME-setup).
# Before removing the extension: $NAME-setup kept /var/lib/$NAME/install.sh; after removing it,
# /var/lib/$NAME/install.sh --uninstall takes sshd's configuration, the user and the cache away.
[Unit]
Description=Configure sshd for iam-authorized-keys (system extension)
Documentation=man:iam-authorized-keys(8)
# After the host keys (Flatcar makes them in sshd-keygen.service at first boot); a deterministic failure
# is retried by Upholds= only a few times, not forever.
After=systemd-sysext.service systemd-tmpfiles-setup.service sshd-keygen.service
ConditionPathExists=/usr/lib/$NAME/install.sh
StartLimitIntervalSec=1h
StartLimitBurst=3

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStartPre=/usr/bin/systemd-tmpfiles --create /usr/lib/tmpfiles.d/$NAME-config.conf
ExecStart=$CONFIGURE_CMD
ExecStartPost=/usr/bin/$KEEP_COPY_CMD

[Install]
WantedBy=multi-user.target
UNIT
    printf '[Unit]\nUpholds=%s-setup.service\n' "$NAME" > "$d/usr/lib/systemd/system/multi-user.target.d/10-$NAME.conf"
}

write_sysext() {
    local out=$1 version top
    umask 022
    need_tool mksquashfs squashfs-tools "Fedora/RHEL: dnf install squashfs-tools; Flatcar's SDK has it"
    version=$(package_version)
    top=$(mktemp -d)
    install -d -m 0755 "$top/tree"
    stage_sysext "$top/tree" "$version"
    rm -f "$out"
    # -all-root: every file root-owned whoever builds it; times from the binary, for a reproducible image.
    SOURCE_DATE_EPOCH=$(stat -c %Y "$BINARY") mksquashfs "$top/tree" "$out" -all-root -noappend -quiet > "$top/log" 2>&1 ||
        { cat "$top/log" >&2; rm -rf "$top"; die "mksquashfs failed"; }
    rm -rf "$top"
    (cd "$(dirname "$out")" && sha256sum "$(basename "$out")") > "$out.sha256"
    note "wrote $out ($NAME $version system extension, $("$BINARY" --version)) and $out.sha256; install it as /etc/extensions/$NAME.raw"
}

# write_tarball FILE: the release tarball (binary, install.sh, drop-in, README) for image pipelines.
write_tarball() {
    local PACKAGE=$1 stage
    stage=$(mktemp -d)
    mkdir -p "$stage/$NAME/sshd_config.d"
    install -m 0755 "$BINARY" "$stage/$NAME/$NAME"
    install -m 0755 "$SRC_DIR/install.sh" "$stage/$NAME/install.sh"
    install -m 0644 "$SRC_DIR/sshd_config.d/10-$NAME.conf" "$stage/$NAME/sshd_config.d/"
    [ -f "$SRC_DIR/README.md" ] && install -m 0644 "$SRC_DIR/README.md" "$stage/$NAME/"
    tar -C "$stage" --owner=0 --group=0 --numeric-owner -czf "$PACKAGE" "$NAME"
    rm -rf "$stage"
    (cd "$(dirname "$PACKAGE")" && sha256sum "$(basename "$PACKAGE")") > "$PACKAGE.sha256"
    note "wrote $PACKAGE ($("$BINARY" --version)) and $PACKAGE.sha256"
}

if [ -n "$PACKAGE_ALL" ]; then
    # Every format's version rule before the first file is written (an RPM version cannot hold '-').
    [[ $(package_version) != *-* ]] || die "package version '$(package_version)': an RPM version cannot hold '-' (use ~ for a pre-release: 1.0~rc1)"
    mkdir -p "$PACKAGE_ALL"
    v=$(package_version)
    files=("$NAME-$v-x86_64.tar.gz" "${NAME}_${v}_amd64.deb" "$NAME-$v-1.x86_64.rpm" "$NAME-$v-x86-64.raw")
    write_tarball "$PACKAGE_ALL/${files[0]}"
    write_deb "$PACKAGE_ALL/${files[1]}"
    write_rpm "$PACKAGE_ALL/${files[2]}"
    write_sysext "$PACKAGE_ALL/${files[3]}"
    (cd "$PACKAGE_ALL" && sha256sum "${files[@]}") > "$PACKAGE_ALL/SHA256SUMS"
    note "wrote $PACKAGE_ALL/SHA256SUMS"
    exit 0
fi
case $PACKAGE in
    *.deb) write_deb "$PACKAGE"; exit 0 ;;
    *.rpm) write_rpm "$PACKAGE"; exit 0 ;;
    *.raw) write_sysext "$PACKAGE"; exit 0 ;;
    ?*) write_tarball "$PACKAGE"; exit 0 ;;
esac

# --- remember what this run creates, for rollback and --uninstall ---------------------------------------
declare -a CREATED=() NEW_DIRS=() MANIFEST_LINES=()
OLD_MANIFEST=
[ -f "$R$MANIFEST" ] && OLD_MANIFEST=$(cat "$R$MANIFEST")
# The package's postinst over an install.sh install (same manifest): the binary, man page and entries
# that install listed would be forgotten, never removed. One or the other.
if [ $INSTALLED = 1 ] && grep -q "^file .*/bin/$NAME\$" <<< "$OLD_MANIFEST"; then
    die "$(awk '$1 == "file" && $2 ~ /\/bin\/'"$NAME"'$/ { print $2; exit }' <<< "$OLD_MANIFEST") was installed by install.sh ($MANIFEST): remove that install first (install.sh --uninstall), then configure the package again (dpkg --configure -a)"
fi
record() { MANIFEST_LINES+=("$1 $2"); }
mkdirs() {  # mkdir -p, remembering each directory it created
    local d=$1 missing=()
    while [ ! -d "$R$d" ]; do missing=("$d" "${missing[@]}"); d=$(dirname "$d"); done
    local m
    for m in "${missing[@]}"; do mkdir -m 0755 "$R$m"; NEW_DIRS+=("$m"); CREATED+=("$R$m"); done
}
# Directories an earlier run created stay ours.
while read -r kind path; do [ "$kind" = dir ] && NEW_DIRS+=("$path"); done <<< "$OLD_MANIFEST"

# stash PATH: before this run replaces or removes an existing file, keep it, so a rollback puts back
# the previous drop-in, binary, unit or manifest byte for byte (owner, mode and mtime too). The list is
# a file: put() runs at the end of pipelines, in subshells.
STASH=$SCRATCH/stash
mkdir -p "$STASH"; : > "$STASH/list"
stash() {
    local p=$1 n
    [ -e "$p" ] || [ -L "$p" ] || return 0
    grep -qxF -- "$p" "$STASH/list" && return 0
    n=$(wc -l < "$STASH/list")
    cp -a "$p" "$STASH/$n"
    printf '%s\n' "$p" >> "$STASH/list"
}

BACKUP=
rollback() {
    trap - ERR
    note "rolling back this run's changes"
    [ -n "$BACKUP" ] && mv -f "$BACKUP" "$R$SSHD_CONFIG"
    local j=0 p
    while IFS= read -r p; do
        rm -f "$p"; mv -f "$STASH/$j" "$p"
        j=$((j + 1))
    done < "$STASH/list"
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
if [ $INSTALLED = 0 ]; then
mkdirs "$BINDIR"
[ -e "$R$dest" ] || CREATED+=("$R$dest")
cmp -s "$BINARY" "$R$dest" || stash "$R$dest"
if [ $IS_ROOT = 1 ]; then
    install -C -o root -g root -m 0755 "$BINARY" "$R$dest"
else
    install -C -m 0755 "$BINARY" "$R$dest"
fi
record file "$dest"
fi

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
# --installed: the package ships these, and its sysusers.d/tmpfiles.d entries under /usr/lib.
if [ $INSTALLED = 0 ]; then
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
fi

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
for u in "${DEFAULT_USERS[@]}"; do
    [[ " ${FLAGS[*]} " == *" --deny-user $u "* ]] || FLAGS+=(--deny-user "$u")
done
# UID_MAX of this image, so a lookup need not read /etc/login.defs on every login.
if [[ " ${FLAGS[*]} " != *" --max-uid "* ]] && [ -f "$R/etc/login.defs" ]; then
    uid_max=$(awk '$1 == "UID_MAX" && $2 ~ /^[0-9]+$/ { print $2; exit }' "$R/etc/login.defs")
    [ -n "$uid_max" ] && FLAGS+=(--max-uid "$uid_max")
fi
command_line="$dest"
[ ${#FLAGS[@]} -gt 0 ] && command_line+=" ${FLAGS[*]}"
[ "$CACHE_DIR" != /var/cache/$NAME ] && command_line+=" --cache-dir $CACHE_DIR"
if [ -n "$CHAIN_PROG" ]; then
    command_line+=" --chain $CHAIN_PROG"
    for a in "${CHAIN_ARGS[@]}"; do command_line+=" --chain-arg $a"; done
fi
# %U lets the account rules see the UID sshd resolved (NSS included); %f %t are logged for the audit.
command_line+=" --uid %U -- %u %f %t"
mkdirs "$SSHD_DIR"
[ -e "$R$DROPIN" ] || CREATED+=("$R$DROPIN")
sed -e "s|^AuthorizedKeysCommand .*|AuthorizedKeysCommand $command_line|" \
    -e "s|^AuthorizedKeysCommandUser .*|AuthorizedKeysCommandUser $SVC_USER|" \
    "$SRC_DIR/sshd_config.d/10-$NAME.conf" | { cat; default_user_block; } | put "$R$DROPIN" 644
record file "$DROPIN"
# An upgrade from a release that wrote 50-$NAME.conf: that file goes (a rollback puts it back).
if [ -f "$R$OLD_DROPIN" ] && { grep -qx "file $OLD_DROPIN" <<< "$OLD_MANIFEST" || [[ $(sed -n 1p "$R$OLD_DROPIN") == "# $NAME:"* ]]; }; then
    stash "$R$OLD_DROPIN"
    rm -f "$R$OLD_DROPIN"
    note "removed $OLD_DROPIN (the drop-in's earlier name; now $DROPIN)"
fi

# --replace-other-command, when the other command is on the sshd unit's command line (EC2 Instance
# Connect's Debian/Ubuntu package): a unit drop-in, sorted after the others (the last ExecStart= wins),
# restates that ExecStart without its AuthorizedKeysCommand/AuthorizedKeysCommandUser options.
UNIT_CHANGED=0
if { [ $REPLACE_OTHER = 1 ] || [ -n "$CHAIN_PROG" ]; } && unit_applies && unit_has_command; then
    unit_dropin=/etc/systemd/system/$UNIT_NAME.d/zz-$NAME.conf
    mkdirs "$(dirname "$unit_dropin")"
    [ -e "$R$unit_dropin" ] || CREATED+=("$R$unit_dropin")
    old_unit=$(cat "$R$unit_dropin" 2>/dev/null || true)
    unit_override | put "$R$unit_dropin" 644
    [ "$old_unit" = "$(cat "$R$unit_dropin")" ] || UNIT_CHANGED=1
    record file "$unit_dropin"
    note "wrote $unit_dropin: $UNIT_NAME no longer passes $(unit_other_opts) to sshd"
elif grep -q "^file /etc/systemd/system/.*\.service\.d/zz-$NAME\.conf$" <<< "$OLD_MANIFEST"; then
    # Kept from an earlier --replace-other-command run: still ours.
    unit_dropin=$(sed -n "s|^file \(/etc/systemd/system/.*\.service\.d/zz-$NAME\.conf\)$|\1|p" <<< "$OLD_MANIFEST" | head -1)
    [ -f "$R$unit_dropin" ] && record file "$unit_dropin"
fi

# The drop-in only counts if the main config includes its directory, before any other setting
# (sshd keeps the first value it reads).
if [ -f "$R$SSHD_CONFIG" ]; then
    if grep -qiE "^[[:space:]]*Include[[:space:]]+\"?$SSHD_DIR/\*(\.conf)?\"?([[:space:]]|$)" "$R$SSHD_CONFIG"; then
        if grep -qxF "$INCLUDE_MARK" "$R$SSHD_CONFIG"; then
            record include "$SSHD_CONFIG"
            dir=$(awk '$1 == "includedir" { print $2 }' <<< "$OLD_MANIFEST")
            [ -n "$dir" ] && record includedir "$dir"
        fi
    else
        BACKUP=$(mktemp "$R$SSHD_CONFIG.iak-backup.XXXXXX")
        cp -p "$R$SSHD_CONFIG" "$BACKUP"
        tmp=$(mktemp "$R$SSHD_CONFIG.XXXXXX")
        { printf '%s\nInclude %s/*.conf\n' "$INCLUDE_MARK" "$SSHD_DIR"; cat "$R$SSHD_CONFIG"; } > "$tmp"
        chmod --reference="$R$SSHD_CONFIG" "$tmp"
        mv -f "$tmp" "$R$SSHD_CONFIG"
        record include "$SSHD_CONFIG"
        record includedir "$SSHD_DIR"
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
    sync_service_unit "$sync_line" | put "$R/etc/systemd/system/$SYNC_UNIT.service" 644
    sync_timer_unit | put "$R/etc/systemd/system/$SYNC_UNIT.timer" 644
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
# sshd keeps the first value it reads: our drop-in counts only if nothing read before it sets the same
# keywords. Judge by what sshd -T says is in effect, never by what the files seem to say.
if ! verify_effective; then
    rollback
fi
trap - ERR
ARMED=0
[ -n "$BACKUP" ] && rm -f "$BACKUP"
reload_sshd
note "installed $dest (drop-in $DROPIN, user $SVC_USER, cache $CACHE_DIR)"
