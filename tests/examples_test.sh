#!/usr/bin/env bash
# The image-pipeline examples under examples/, exercised as far as this machine allows: each is parsed and
# checked for shape, then its steps run INSIDE a real Debian 12 tree (debootstrap with openssh-server and
# curl, cached under target/images; a scratch copy per example; chroot with /proc in a private mount
# namespace): the Image Builder component and cloud-init fetch the .deb (install.sh --package) served on
# loopback and check its SHA-256, Packer's file provisioner puts it in /tmp; each installs it with apt-get
# and appends its setting to /etc/iam-authorized-keys/config. Every tree must then have the package
# installed, sshd's effective configuration running the binary with that config, the setting read by the
# binary, an empty 0700 cache, nothing left in /tmp, and no authorized_keys, records or credentials. (Their
# .rpm branch, dnf/yum, has no RPM distribution to run on here.) The Butane config is materialised file by
# file: the system extension (install.sh --package FILE.raw) fetched with its hash checked, under the name
# systemd merges, and a settings file the binary reads.
#
# usage: tests/examples_test.sh STATIC_BINARY PYTHON(with PyYAML)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
BIN=${1:?static binary}
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
PY=${2:?python with PyYAML}
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")   # absolute: used after cd
ROOT=$(cd "$HERE/.." && pwd)
EX=$ROOT/examples
NAME=iam-authorized-keys
[ "$(id -u)" = 0 ] || fail "examples test needs root (chroot into image trees)"
"$PY" -c 'import yaml' || fail "PyYAML missing in $PY"
needs "Debian packages systemd-container, debootstrap, util-linux" systemd-dissect debootstrap unshare
CACHE=$ROOT/target/images
mkdir -p "$CACHE"
W=$(mktemp -d "$CACHE/work.XXXXXX")
HTTP_PID=
trap '[ -n "$HTTP_PID" ] && kill $HTTP_PID 2>/dev/null; rm -rf --one-file-system "$W"' EXIT

# The packages, served on loopback as the pipeline would fetch them.
VERSION=$(crate_version)
DEB=${NAME}_${VERSION}_amd64.deb
mkdir "$W/www"
"$ROOT/install.sh" --binary "$BIN" --package "$W/www/$DEB" 2>/dev/null
SHA256=$(awk '{print $1}' "$W/www/$DEB.sha256")
PORT=$(free_port)
(cd "$W/www" && exec "$PY" -m http.server --bind 127.0.0.1 "$PORT" >/dev/null 2>&1) &
HTTP_PID=$!
wait_port "$PORT" || fail "http server did not start"
URL=http://127.0.0.1:$PORT

tree bookworm-curl bookworm openssh-server,curl
# in_tree (lib.sh) shares this machine's loopback: the http server.
tmp_before=
start_tree() { fresh bookworm-curl; tmp_before=$(ls -A "$T/tmp"); }

check_pkg_tree() {  # check_pkg_tree WHAT: the package installed and in effect, nothing user-specific
    [ "$(chroot "$T" dpkg-query -W -f '${Status}' $NAME)" = "install ok installed" ] || fail "$1: the package is not installed"
    tT
    grep -q "^authorizedkeyscommand /usr/bin/$NAME --config /etc/$NAME/config " "$W/T" && grep -qx "authorizedkeyscommanduser $NAME" "$W/T" ||
        fail "$1: not in sshd's effective configuration: $(grep -i authorizedkeys "$W/T")"
    grep -qx "allowed-group = ssh-users" "$T/etc/$NAME/config" || fail "$1: the setting is not in /etc/$NAME/config"
    [ "$(chroot "$T" /usr/bin/$NAME map --config /etc/$NAME/config alice | head -1)" = alice ] || fail "$1: the binary does not read the config"
    [ "$(chroot "$T" stat -c '%a %U' /var/cache/$NAME)" = "700 $NAME" ] && [ -z "$(ls -A "$T/var/cache/$NAME")" ] || fail "$1: cache directory"
    [ "$(ls -A "$T/tmp")" = "$tmp_before" ] || fail "$1: left in /tmp: $(ls -A "$T/tmp")"
    ! find "$T/home" "$T/root" "$T/etc" "$T/var" -name 'authorized_keys*' -o -name 'credentials' | grep -q . ||
        fail "$1: keys or credentials in the image"
}

# --- EC2 Image Builder component ----------------------------------------------------------------------
"$PY" - "$EX/image-builder/component.yaml" "$URL/$DEB" "$SHA256" "$W" <<'PY' || fail "Image Builder component"
import re, sys, yaml
path, url, sha, w = sys.argv[1:]
doc = yaml.safe_load(open(path))
assert doc["schemaVersion"] == 1.0 and doc["name"], doc
params = {}
for p in doc["parameters"]:
    (name, spec), = p.items()
    assert spec["type"] == "string", p
    params[name] = spec.get("default")
params.update(PackageUrl=url, PackageSha256=sha)
phases = {ph["name"]: ph for ph in doc["phases"]}
assert set(phases) <= {"build", "validate", "test"} and "build" in phases, phases
for name, ph in phases.items():
    lines = []
    for st in ph["steps"]:
        assert st["action"] == "ExecuteBash" and st["name"], st
        for c in st["inputs"]["commands"]:
            used = re.findall(r"\{\{\s*(\w+)\s*\}\}", c)
            assert all(u in params for u in used), (c, used)
            lines.append(re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: params[m.group(1)], c))
    open(f"{w}/ib-{name}.sh", "w").write("\n".join(lines) + "\n")
PY
start_tree
cp "$W/ib-build.sh" "$W/ib-validate.sh" "$T/"
in_tree bash /ib-build.sh > "$W/ib.log" 2>&1 || fail "Image Builder build phase: $(cat "$W/ib.log")"
in_tree bash /ib-validate.sh >> "$W/ib.log" 2>&1 || fail "Image Builder validate phase: $(cat "$W/ib.log")"
rm -f "$T/ib-build.sh" "$T/ib-validate.sh"
check_pkg_tree "Image Builder"
pass "EC2 Image Builder component: schema, build phase (fetch, SHA-256, apt-get install, setting) and validate phase inside a Debian 12 tree"

# --- Packer -----------------------------------------------------------------------------------------
"$PY" - "$EX/packer/iam-authorized-keys.pkr.hcl" "$W/packer.sh" "$W/packer.dest" "$DEB" <<'PY' || fail "Packer snippet"
import os, re, sys
text = open(sys.argv[1]).read()
var = dict(re.findall(r'variable "(\w+)" \{.*?default\s*=\s*"([^"]*)"', text, re.S))
assert os.path.basename(var["iak_package"]) == sys.argv[4], (var["iak_package"], sys.argv[4])
def hcl(s):  # ${basename(var.x)} and ${var.x}, then HCL's escapes
    s = re.sub(r'\$\{basename\(var\.(\w+)\)\}', lambda m: os.path.basename(var[m.group(1)]), s)
    s = re.sub(r'\$\{var\.(\w+)\}', lambda m: var[m.group(1)], s)
    return re.sub(r'\\(.)', lambda m: {"n": "\\n"}.get(m.group(1), m.group(1)), s)
f = re.search(r'provisioner "file" \{[^}]*source\s*=\s*var\.iak_package[^}]*destination\s*=\s*"([^"]*)"', text)
assert f, "file provisioner"
m = re.search(r'provisioner "shell" \{(.*?)inline\s*=\s*\[(.*?)\]', text, re.S)
assert m, "shell provisioner with inline"
env = re.search(r'environment_vars\s*=\s*\[(.*?)\]', m.group(1), re.S)
envs = [hcl(e) for e in re.findall(r'"((?:[^"\\]|\\.)*)"', env.group(1))]
cmds = [hcl(c) for c in re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(2))]
assert any("apt-get install" in c for c in cmds), cmds
out = ["set -euo pipefail"] + ["export %s=%r" % tuple(e.split("=", 1)) for e in envs] + cmds
open(sys.argv[2], "w").write("\n".join(out) + "\n")
open(sys.argv[3], "w").write(hcl(f.group(1)))
PY
start_tree
dest=$(cat "$W/packer.dest")
[[ $dest == /tmp/*.deb ]] || fail "Packer: file provisioner destination $dest"
cp "$W/www/$DEB" "$T$dest"   # what the file provisioner does
cp "$W/packer.sh" "$T/packer.sh"
in_tree bash /packer.sh > "$W/packer.log" 2>&1 || fail "Packer inline commands: $(cat "$W/packer.log")"
rm -f "$T/packer.sh"
check_pkg_tree "Packer"
pass "Packer provisioners: the file provisioner's .deb installed by the shell steps inside a Debian 12 tree, setting appended, nothing left in /tmp"

# --- cloud-init ---------------------------------------------------------------------------------------
"$PY" - "$EX/cloud-init/user-data.yaml" "$URL/$DEB" "$SHA256" "$W/cloud-init.sh" <<'PY' || fail "cloud-init user-data"
import shlex, sys, yaml
path, url, sha, out = sys.argv[1:]
text = open(path).read()
assert text.startswith("#cloud-config\n"), "first line must be #cloud-config"
doc = yaml.safe_load(text)
assert set(doc) <= {"packages", "runcmd", "write_files", "bootcmd"}, set(doc)
assert doc.get("packages") == ["curl"], doc.get("packages")
lines = ["set -euo pipefail"]
for c in doc["runcmd"]:
    c = [a.replace("PACKAGE_URL", url).replace("PACKAGE_SHA256", sha) for a in c] if isinstance(c, list) else c
    lines.append(shlex.join(c) if isinstance(c, list) else c)
open(out, "w").write("\n".join(lines) + "\n")
PY
start_tree
cp "$W/cloud-init.sh" "$T/cloud-init.sh"
in_tree bash /cloud-init.sh > "$W/ci.log" 2>&1 || fail "cloud-init runcmd: $(cat "$W/ci.log")"
rm -f "$T/cloud-init.sh"
check_pkg_tree "cloud-init"
pass "cloud-init user-data: valid #cloud-config; runcmd fetches the .deb, checks it and installs it inside a Debian 12 tree"

# --- Butane for Flatcar: the system extension --------------------------------------------------------
"$ROOT/install.sh" --binary "$BIN" --package "$W/www/iam-authorized-keys.raw" 2>/dev/null
SYSEXT_SHA512=$(sha512sum "$W/www/iam-authorized-keys.raw" | awk '{print $1}')
T=$W/butane; mkdir "$T"
"$PY" - "$EX/flatcar/iam-authorized-keys.bu" "$URL/iam-authorized-keys.raw" "$SYSEXT_SHA512" "$T" <<'PY' || fail "Butane config"
import hashlib, os, sys, urllib.request, yaml
path, url, sha512, root = sys.argv[1:]
doc = yaml.safe_load(open(path))
assert doc["variant"] == "flatcar" and doc["version"] == "1.0.0", doc
assert set(doc) == {"variant", "version", "storage"}, set(doc)
paths = []
for f in doc["storage"]["files"]:
    assert set(f) <= {"path", "mode", "contents", "overwrite", "user", "group"}, f
    # Flatcar's /usr is read-only: Ignition writes /etc (the extension brings /usr).
    assert f["path"].startswith("/etc/"), f["path"]
    paths.append(f["path"])
    c = f["contents"]
    if "source" in c:
        assert c["source"] == "SYSEXT_URL", c["source"]
        h = c["verification"]["hash"]
        assert h == "sha512-SYSEXT_SHA512", h
        data = urllib.request.urlopen(url).read()
        assert hashlib.sha512(data).hexdigest() == sha512, "hash"
    else:
        data = c["inline"].encode()
    dest = root + f["path"]
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    open(dest, "wb").write(data)
    os.chmod(dest, f.get("mode", 0o644))
assert paths == ["/etc/extensions/iam-authorized-keys.raw", "/etc/iam-authorized-keys/config"], paths
PY
cmp -s "$W/www/iam-authorized-keys.raw" "$T/etc/extensions/iam-authorized-keys.raw" || fail "Butane: not the image install.sh made"
# systemd merges it only under the name its extension-release file carries: the name Butane gives it.
systemd-dissect --json=short "$T/etc/extensions/iam-authorized-keys.raw" |
    "$PY" -c 'import json, sys; d = json.load(sys.stdin); assert d["useSystemExtension"], d' || fail "Butane: systemd-dissect does not see a system extension"
[ "$(stat -c %a "$T/etc/iam-authorized-keys/config")" = 644 ] || fail "Butane: the config's mode"
"$BIN" map --config "$T/etc/iam-authorized-keys/config" alice >/dev/null 2>"$W/log" || fail "Butane: the config does not parse: $(cat "$W/log")"
pass "Butane (Flatcar): schema, the system extension fetched with its SHA-512 checked into /etc/extensions under the name systemd-dissect accepts, a settings file the binary reads (tests/sysext_test.sh merges that image and runs its setup unit)"

echo "examples: ${PASSED} passed, 0 failed"
