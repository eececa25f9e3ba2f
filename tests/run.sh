#!/usr/bin/env bash
# The test command: installs every prerequisite, then runs every tier. A missing prerequisite is a
# failure, never a skip.
#   lint:        cargo fmt --check, cargo clippy --all-targets -D warnings
#   unit:        cargo test --lib (pure logic, aws-smithy-mocks for SDK error shapes), tests/layout.rs (import direction)
#   integration: the real binary against moto through a fault-injecting proxy (cargo test --test moto --test access --test ops)
#   imds:        credentials and region from a fake IMDSv2 in a network namespace of its own (tests/imds_test.sh)
#   proxy:       IAM only through a CONNECT proxy on loopback (tests/proxy_test.sh)
#   static:      the musl static-pie release binary, run inside an empty chroot against moto
#   install:     install.sh into sandbox trees (tests/install_test.sh)
#   images:      install.sh into real Debian 12 and 13 trees (debootstrap, cached under target/images),
#                judged by each tree's own sshd, real logins on loopback (tests/images_test.sh)
#   packages:    install.sh --package FILE.deb / FILE.rpm: contents (dpkg-deb, rpm -qp), then apt-get install
#                ./FILE.deb inside those trees (upgrade keeps the conffile, logins, dpkg -r, dpkg --purge
#                restores) and rpm --root -i/-U/-e of FILE.rpm into a Debian 12 tree (tests/packages_test.sh)
#   sysext:      install.sh --package FILE.raw: systemd-dissect, layout, merged by systemd-sysext into a
#                Debian 13 tree, its setup unit run, logins, removal (tests/sysext_test.sh)
#   examples:    examples/ (Image Builder, Packer, cloud-init, Butane) run into image trees
#   audit:       events read back from a private systemd-journald (tests/audit_test.sh)
#   e2e:         a private sshd on loopback set up by install.sh; real ssh logins (tests/e2e.sh)
#   fuzz:        cargo-fuzz targets for records, names, keys, key options (tests/fuzz.sh, bounded)
#   sync:        sync-users creating, warming, locking real accounts; logins through sshd (tests/sync_test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
. tests/lib.sh
TARGET=x86_64-unknown-linux-musl
export CARGO_TERM_COLOR=never

step() { echo; echo "=== $* ==="; }

step "prerequisites"
[ "$(id -u)" = 0 ] || fail "tests/run.sh needs root (apt packages, local users, a private sshd)"
need_pkgs=()
for p in openssh-server openssh-client musl-tools python3-venv file openssl curl systemd sudo debootstrap iproute2 dpkg util-linux \
    rpm squashfs-tools systemd-container; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "installing ${need_pkgs[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_pkgs[@]}" >/dev/null
fi
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
# moto in a venv under target/ (cached between runs, never committed). python3 -m venv needs a python
# with ensurepip; Debian's python3-venv provides it for /usr/bin/python3.
VENV=$ROOT/target/moto-venv
if ! "$VENV/bin/python" -c 'import moto, boto3, flask' 2>/dev/null; then
    rm -rf "$VENV"
    /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check 'moto[server]>=5'
fi
"$VENV/bin/moto_server" --help >/dev/null || fail "moto_server not runnable"
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || fail "sshd missing"
command -v x86_64-linux-musl-gcc >/dev/null || fail "musl-tools missing"

step "lint"
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings

step "unit"
cargo test --locked --lib --test layout

step "moto"
MOTO_PORT=$(free_port)
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >target/moto.log 2>&1 &
MOTO_PID=$!
trap 'kill $MOTO_PID 2>/dev/null || true' EXIT
wait_port "$MOTO_PORT" 30 || fail "moto did not start: $(cat target/moto.log)"
export IAK_MOTO_URL=http://127.0.0.1:$MOTO_PORT

step "integration (real binary against moto)"
cargo test --locked --test moto --test access --test ops --test hardening --test chain

step "IMDS in a private network namespace (fake IMDSv2, moto, the binary as sshd runs it)"
cargo build --locked
tests/imds_test.sh "$ROOT/target/debug/iam-authorized-keys" "$VENV/bin/python"

step "proxy: IAM only through a CONNECT proxy on loopback"
tests/proxy_test.sh "$ROOT/target/debug/iam-authorized-keys" "$VENV/bin/python"

step "static release binary"
cargo build --locked --release --target "$TARGET"
cargo build --locked --example faultproxy
BIN=$ROOT/target/$TARGET/release/iam-authorized-keys
PROXY=$ROOT/target/debug/examples/faultproxy
tests/static_test.sh "$BIN" "$IAK_MOTO_URL" "$VENV/bin/python"

step "install.sh"
tests/install_test.sh "$BIN"

step "install.sh on real Debian 12 and 13 trees"
tests/images_test.sh "$BIN" "$IAK_MOTO_URL" "$VENV/bin/python"

step "the .deb and .rpm on real Debian 12 and 13 trees"
tests/packages_test.sh "$BIN" "$IAK_MOTO_URL" "$VENV/bin/python"

step "the system extension (.raw) merged into a Debian 13 tree"
tests/sysext_test.sh "$BIN" "$IAK_MOTO_URL" "$VENV/bin/python"

step "image-pipeline examples"
tests/examples_test.sh "$BIN" "$VENV/bin/python"

step "audit log in journald"
tests/audit_test.sh "$BIN" "$IAK_MOTO_URL" "$VENV/bin/python"

step "end to end through a real sshd"
tests/e2e.sh "$BIN" "$PROXY" "$IAK_MOTO_URL" "$VENV/bin/python"

step "sync-users through a real sshd"
tests/sync_test.sh "$BIN" "$PROXY" "$IAK_MOTO_URL" "$VENV/bin/python"

step "fuzzing (bounded: FUZZ_SECONDS per target, default 20)"
tests/fuzz.sh

echo
echo "all tiers passed"
