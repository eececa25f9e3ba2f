//! For `doctor`: the `-o` options the sshd systemd unit puts on sshd's command line, which beat every
//! config file (EC2 Instance Connect's Debian/Ubuntu package sets its AuthorizedKeysCommand that way).
//! Read as systemd reads a unit: the fragment from the first unit directory that has it (a link to
//! /dev/null masks it), then the drop-ins `NAME.d/*.conf` of the unit and its aliases from every unit
//! directory, a file name in an earlier directory hiding the same name in later ones, applied in file
//! name order; `ExecStart=` with no value empties the list, and the last `ExecStart=` runs. install.sh
//! reads the same files the same way (tests/install_test.sh checks that order against systemd-analyze).
//! Environment variables in the command line (`$SSHD_OPTS`) are not expanded here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Unit directories, highest precedence first (systemd.unit(5), system units).
const UNIT_DIRS: &[&str] = &[
    "etc/systemd/system",
    "run/systemd/system",
    "usr/local/lib/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];

/// What the unit passes to sshd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitOptions {
    /// The unit's name (`ssh.service` or `sshd.service`).
    pub unit: String,
    /// The file whose `ExecStart=` runs.
    pub exec_from: PathBuf,
    /// Every `-o` option of that command line, `%%` read as `%`.
    pub options: Vec<String>,
}

/// The sshd unit under `root` (`/` on a live host) and its `-o` options; `None` without a unit.
pub fn read(root: &Path) -> Option<UnitOptions> {
    ["ssh.service", "sshd.service"]
        .iter()
        .find_map(|name| read_unit(root, name))
}

/// Where unit `name` is: `None` if nowhere, `Some(None)` if masked, else its file and real name (an
/// alias such as sshd.service -> ssh.service resolves to the real unit, which may be masked itself).
fn locate(root: &Path, name: &str, depth: u8) -> Option<Option<(PathBuf, String)>> {
    UNIT_DIRS.iter().find_map(|d| {
        let p = root.join(d).join(name);
        let meta = std::fs::symlink_metadata(&p).ok()?;
        if !meta.file_type().is_symlink() {
            return Some(Some((p, name.to_string())));
        }
        let target = std::fs::read_link(&p).ok()?;
        if target == Path::new("/dev/null") {
            return Some(None);
        }
        let real = target.file_name()?.to_string_lossy().into_owned();
        if real == name || depth == 0 {
            // A link to the same name elsewhere: that file, read inside root.
            let file = root.join(target.strip_prefix("/").unwrap_or(&target));
            return Some(file.is_file().then_some((file, name.to_string())));
        }
        locate(root, &real, depth - 1)
    })
}

fn read_unit(root: &Path, name: &str) -> Option<UnitOptions> {
    let (fragment, real_name) = locate(root, name, 4)??;
    // The unit's names: its own, and every alias (a link to it in a unit directory, e.g. sshd.service).
    let mut names = vec![real_name.clone()];
    for d in UNIT_DIRS {
        for e in std::fs::read_dir(root.join(d))
            .into_iter()
            .flatten()
            .flatten()
        {
            let alias = e.file_name().to_string_lossy().into_owned();
            let points_here = std::fs::read_link(e.path()).ok().and_then(|t| {
                t.file_name()
                    .map(|f| f.to_string_lossy() == real_name.as_str())
            });
            if alias.ends_with(".service") && points_here == Some(true) && !names.contains(&alias) {
                names.push(alias);
            }
        }
    }
    let mut dropins: BTreeMap<String, PathBuf> = BTreeMap::new();
    for d in UNIT_DIRS {
        for unit in &names {
            let Ok(entries) = std::fs::read_dir(root.join(d).join(format!("{unit}.d"))) else {
                continue;
            };
            for e in entries.flatten() {
                let file = e.file_name().to_string_lossy().into_owned();
                if file.ends_with(".conf") {
                    dropins.entry(file).or_insert_with(|| e.path());
                }
            }
        }
    }
    let mut exec: Option<(String, PathBuf)> = None;
    for file in std::iter::once(&fragment).chain(dropins.values()) {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        // A drop-in linked to /dev/null reads as empty: it contributes nothing.
        for value in exec_starts(&text) {
            exec = (!value.is_empty()).then(|| (value, file.clone()));
        }
    }
    let (line, exec_from) = exec?;
    Some(UnitOptions {
        unit: real_name,
        exec_from,
        options: o_options(&line),
    })
}

/// The `ExecStart=` values of a unit file's `[Service]` section, in order.
fn exec_starts(text: &str) -> Vec<String> {
    let mut in_service = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if let Some(v) = line.strip_prefix("ExecStart=").filter(|_| in_service) {
            out.push(v.trim().to_string());
        }
    }
    out
}

/// The `-o` options of a command line, split as systemd splits it (double and single quotes).
fn o_options(line: &str) -> Vec<String> {
    let words = split_words(line);
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        if w == "-o" {
            if let Some(v) = words.get(i + 1) {
                out.push(v.replace("%%", "%"));
            }
            i += 2;
            continue;
        }
        if let Some(v) = w.strip_prefix("-o").filter(|v| !v.is_empty()) {
            out.push(v.replace("%%", "%"));
        }
        i += 1;
    }
    out
}

fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut started = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                started = true;
            }
            (None, c) if c.is_whitespace() => {
                if started {
                    words.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            (None, c) => {
                cur.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    const SSH: &str = "[Unit]\nDescription=OpenBSD Secure Shell server\n\n[Service]\nExecStart=/usr/sbin/sshd -D $SSHD_OPTS\n";
    const EIC: &str = "[Service]\nExecStart=\nExecStart=/usr/sbin/sshd -D -o \"AuthorizedKeysCommand /usr/share/ec2-instance-connect/eic_run_authorized_keys %%u %%f\" -o \"AuthorizedKeysCommandUser ec2-instance-connect\" $SSHD_OPTS\n";

    #[test]
    fn eic_override_then_ours_in_systemds_order() {
        let d = tempfile::tempdir().expect("tmp");
        let root = d.path();
        assert_eq!(read(root), None, "no unit");
        write(root, "usr/lib/systemd/system/ssh.service", SSH);
        let plain = read(root).expect("unit");
        assert_eq!(plain.unit, "ssh.service");
        assert!(plain.options.is_empty());
        write(
            root,
            "usr/lib/systemd/system/ssh.service.d/ec2-instance-connect.conf",
            EIC,
        );
        let eic = read(root).expect("unit");
        assert_eq!(
            eic.options,
            [
                "AuthorizedKeysCommand /usr/share/ec2-instance-connect/eic_run_authorized_keys %u %f",
                "AuthorizedKeysCommandUser ec2-instance-connect"
            ]
        );
        assert!(eic.exec_from.ends_with("ec2-instance-connect.conf"));
        // install.sh's zz- drop-in in /etc sorts after EIC's and restates ExecStart without them.
        write(
            root,
            "etc/systemd/system/ssh.service.d/zz-iam-authorized-keys.conf",
            "[Service]\nExecStart=\nExecStart=/usr/sbin/sshd -D $SSHD_OPTS\n",
        );
        let ours = read(root).expect("unit");
        assert!(ours.options.is_empty(), "{ours:?}");
        assert!(ours.exec_from.starts_with(root.join("etc")));
        // A same-named drop-in in /etc hides the one in /usr/lib.
        std::fs::remove_file(
            root.join("etc/systemd/system/ssh.service.d/zz-iam-authorized-keys.conf"),
        )
        .expect("rm");
        write(
            root,
            "etc/systemd/system/ssh.service.d/ec2-instance-connect.conf",
            "[Service]\n",
        );
        assert!(read(root).expect("unit").options.is_empty());
    }

    #[test]
    fn aliases_and_masks() {
        let d = tempfile::tempdir().expect("tmp");
        let root = d.path();
        write(root, "usr/lib/systemd/system/ssh.service", SSH);
        std::fs::create_dir_all(root.join("etc/systemd/system")).expect("mkdir");
        // Drop-ins under the alias's name count too.
        std::os::unix::fs::symlink(
            "/usr/lib/systemd/system/ssh.service",
            root.join("etc/systemd/system/sshd.service"),
        )
        .expect("alias");
        write(
            root,
            "etc/systemd/system/sshd.service.d/x.conf",
            "[Service]\nExecStart=\nExecStart=/usr/sbin/sshd -D -oAuthorizedKeysFile=none\n",
        );
        // ssh.service itself is found first; its alias directory is read for drop-ins.
        let u = read(root).expect("unit");
        assert_eq!(u.unit, "ssh.service");
        assert_eq!(u.options, ["AuthorizedKeysFile=none"]);
        // Masked: no unit.
        std::os::unix::fs::symlink("/dev/null", root.join("etc/systemd/system/ssh.service"))
            .expect("mask");
        assert_eq!(read(root), None, "masking ssh.service masks its alias too");
    }

    #[test]
    fn words_split_as_systemd_does() {
        assert_eq!(
            split_words("/usr/sbin/sshd -D -o 'A b' -o\"C d\" x"),
            ["/usr/sbin/sshd", "-D", "-o", "A b", "-oC d", "x"]
        );
        assert_eq!(
            o_options("/usr/sbin/sshd -o 'A b' -o\"C d\""),
            ["A b", "C d"]
        );
    }
}
