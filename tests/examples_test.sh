#!/usr/bin/env bash
# The image-pipeline examples under examples/, exercised as far as this machine allows: each is parsed and
# checked for shape, then its install steps run against a release tarball served on loopback, into a
# sandbox image tree (DESTDIR). Every tree must then hold exactly what install.sh installs: no
# authorized_keys, no cache record, no credentials. The Butane config is materialised file by file: the
# system extension (install.sh --package FILE.raw) fetched with its hash checked, under the name systemd
# merges, and a settings file the binary reads.
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
[ "$(id -u)" = 0 ] || fail "examples test needs root (install.sh into trees)"
"$PY" -c 'import yaml' || fail "PyYAML missing in $PY"
command -v systemd-dissect >/dev/null || fail "systemd-dissect missing (Debian package systemd-container)"
W=$(mktemp -d)
HTTP_PID=
trap '[ -n "$HTTP_PID" ] && kill $HTTP_PID 2>/dev/null; rm -rf "$W" /tmp/iak.tar.gz /tmp/iam-authorized-keys' EXIT

# A release tarball, served on loopback as the pipeline would fetch it.
mkdir "$W/www"
"$ROOT/install.sh" --binary "$BIN" --package "$W/www/iam-authorized-keys.tar.gz" 2>/dev/null
SHA256=$(awk '{print $1}' "$W/www/iam-authorized-keys.tar.gz.sha256")
install -m 0755 "$BIN" "$W/www/iam-authorized-keys"
SHA512=$(sha512sum "$BIN" | awk '{print $1}')
PORT=$(free_port)
(cd "$W/www" && exec "$PY" -m http.server --bind 127.0.0.1 "$PORT" >/dev/null 2>&1) &
HTTP_PID=$!
wait_port "$PORT" || fail "http server did not start"
URL=http://127.0.0.1:$PORT

check_tree() {  # check_tree TREE WHAT: exactly install.sh's files, nothing user-specific
    local t=$1
    (cd "$t" && find . -mindepth 1 \( -type f -o -type l \) | sort) > "$W/files"
    image_files > "$W/want"
    diff -u "$W/want" "$W/files" || fail "$2: unexpected files in the image"
    ! find "$t" -name 'authorized_keys*' -o -name '*.json' -o -name 'credentials' -o -name '*.lock' | grep -q . ||
        fail "$2: keys, records or credentials in the image"
    [ -z "$(ls -A "$t/var/cache/iam-authorized-keys")" ] || fail "$2: cache not empty"
}

# --- EC2 Image Builder component ----------------------------------------------------------------------
"$PY" - "$EX/image-builder/component.yaml" "$URL/iam-authorized-keys.tar.gz" "$SHA256" "$W" <<'PY' || fail "Image Builder component"
import re, sys, yaml
path, url, sha, w = sys.argv[1:]
doc = yaml.safe_load(open(path))
assert doc["schemaVersion"] == 1.0 and doc["name"], doc
params = {}
for p in doc["parameters"]:
    (name, spec), = p.items()
    assert spec["type"] == "string", p
    params[name] = spec.get("default")
params.update(ReleaseUrl=url, ReleaseSha256=sha)
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
T=$W/ib; mkdir "$T"
DESTDIR=$T bash "$W/ib-build.sh" 2>"$W/ib.log" || fail "Image Builder build phase: $(cat "$W/ib.log")"
DESTDIR=$T bash "$W/ib-validate.sh" >/dev/null 2>>"$W/ib.log" || fail "Image Builder validate phase: $(cat "$W/ib.log")"
grep -q -- "--allowed-group ssh-users" "$T/etc/ssh/sshd_config.d/10-iam-authorized-keys.conf" || fail "InstallFlags not applied"
check_tree "$T" "Image Builder"
pass "EC2 Image Builder component: schema, build and validate phases into an image tree"

# --- Packer -----------------------------------------------------------------------------------------
"$PY" - "$EX/packer/iam-authorized-keys.pkr.hcl" "$W/packer.sh" <<'PY' || fail "Packer snippet"
import re, sys
text = open(sys.argv[1]).read()
assert re.search(r'provisioner "file" \{[^}]*destination\s*=\s*"/tmp/iak.tar.gz"', text), "file provisioner"
m = re.search(r'provisioner "shell" \{.*?inline\s*=\s*\[(.*?)\]', text, re.S)
assert m, "shell provisioner with inline"
cmds = re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(1))
assert any("install.sh" in c for c in cmds), cmds
default_flags = re.search(r'variable "iak_flags" \{.*?default\s*=\s*"([^"]*)"', text, re.S).group(1)
open(sys.argv[2], "w").write("set -euo pipefail\nexport IAK_FLAGS=%r\n" % default_flags + "\n".join(cmds) + "\n")
PY
cp "$W/www/iam-authorized-keys.tar.gz" /tmp/iak.tar.gz   # what the file provisioner does
T=$W/packer; mkdir "$T"
DESTDIR=$T bash "$W/packer.sh" 2>"$W/packer.log" || fail "Packer inline commands: $(cat "$W/packer.log")"
[ ! -e /tmp/iak.tar.gz ] && [ ! -e /tmp/iam-authorized-keys ] || fail "Packer snippet left its files in /tmp"
check_tree "$T" "Packer"
pass "Packer provisioners: file + shell steps into an image tree, nothing left in /tmp"

# --- cloud-init ---------------------------------------------------------------------------------------
"$PY" - "$EX/cloud-init/user-data.yaml" "$URL/iam-authorized-keys.tar.gz" "$SHA256" "$W/cloud-init.sh" <<'PY' || fail "cloud-init user-data"
import shlex, sys, yaml
path, url, sha, out = sys.argv[1:]
text = open(path).read()
assert text.startswith("#cloud-config\n"), "first line must be #cloud-config"
doc = yaml.safe_load(text)
assert set(doc) <= {"packages", "runcmd", "write_files", "bootcmd"}, set(doc)
lines = ["set -euo pipefail"]
for c in doc["runcmd"]:
    c = [a.replace("RELEASE_URL", url).replace("RELEASE_SHA256", sha) for a in c] if isinstance(c, list) else c
    lines.append(shlex.join(c) if isinstance(c, list) else c)
open(out, "w").write("\n".join(lines) + "\n")
PY
T=$W/cloudinit; mkdir "$T"
DESTDIR=$T bash "$W/cloud-init.sh" 2>"$W/ci.log" || fail "cloud-init runcmd: $(cat "$W/ci.log")"
check_tree "$T" "cloud-init"
pass "cloud-init user-data: valid #cloud-config, runcmd installs into a tree"

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
