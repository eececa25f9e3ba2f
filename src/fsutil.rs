//! Every file this program opens or writes goes through here: owner and mode checks on the open handle,
//! no symlinks, no FIFOs, bounded reads, atomic replacement, advisory locks.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation, OFlags};

use crate::error::Error;

/// Largest file we read: a record holds at most a few keys, a config file a few lines.
pub const MAX_READ: u64 = 256 * 1024;

pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn unsafe_path(path: &Path, reason: impl Into<String>) -> Error {
    Error::Unsafe {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Owner must be `owner`; no group or world write bit.
fn check_owner_mode(path: &Path, meta: &Metadata, owner: u32) -> Result<(), Error> {
    if meta.uid() != owner {
        return Err(unsafe_path(
            path,
            format!("owned by uid {}, expected uid {owner}", meta.uid()),
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_path(
            path,
            format!("mode {mode:04o} is group- or world-writable"),
        ));
    }
    Ok(())
}

/// The cache directory: a real directory (not a symlink), owned by us, not writable by others. Created
/// with mode 0700 when missing. Returns its owner: files in it must be owned by the same user. Root may use
/// a directory owned by another user (the sshd command user's cache, for `cache` tools and sync-users),
/// trusting that user exactly as sshd's lookups do.
pub fn prepare_dir(path: &Path) -> Result<u32, Error> {
    match check_dir(path) {
        Err(Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
            match std::fs::DirBuilder::new().mode(0o700).create(path) {
                // Another process (a concurrent first lookup) made it between our check and mkdir:
                // fine, it gets the same checks as any existing directory.
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(path, e)),
            }
            check_dir(path)
        }
        checked => checked,
    }
}

/// Checks the cache directory without creating it; returns its owner (see [`prepare_dir`]).
pub fn check_dir(path: &Path) -> Result<u32, Error> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.file_type().is_symlink() {
        return Err(unsafe_path(path, "is a symbolic link"));
    }
    if !meta.is_dir() {
        return Err(unsafe_path(path, "is not a directory"));
    }
    let me = euid();
    check_owner_mode(path, &meta, if me == 0 { meta.uid() } else { me })?;
    Ok(meta.uid())
}

/// Gives a file we just created to `owner` when we are root writing into another user's directory.
fn hand_over(file: &File, path: &Path, owner: u32) -> Result<(), Error> {
    if euid() == 0 && owner != 0 {
        rustix::fs::fchown(file, Some(rustix::fs::Uid::from_raw(owner)), None)
            .map_err(|e| Error::io(path, e.into()))?;
    }
    Ok(())
}

fn nofollow_flags() -> i32 {
    // O_NONBLOCK keeps a planted FIFO from blocking the open; it is irrelevant for regular files.
    (OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC).bits() as i32
}

/// Opens `path` through `opts`, never following a final symlink nor blocking on a FIFO, and checks the
/// open handle: a regular file, owned by `owner(&metadata)`, not group/world-writable. `Ok(None)` when it
/// does not exist.
fn open_checked(
    path: &Path,
    opts: &mut OpenOptions,
    owner: impl Fn(&Metadata) -> u32,
) -> Result<Option<(File, Metadata)>, Error> {
    let file = match opts.custom_flags(nofollow_flags()).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(unsafe_path(path, "is a symbolic link"))
        }
        Err(e) => return Err(Error::io(path, e)),
    };
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(unsafe_path(path, "is not a regular file"));
    }
    check_owner_mode(path, &meta, owner(&meta))?;
    Ok(Some((file, meta)))
}

/// Reads a file that must be owned by `owner` (see [`open_checked`]), at most [`MAX_READ`] bytes.
/// Returns `Ok(None)` when it does not exist.
pub fn read_checked(path: &Path, owner: u32) -> Result<Option<Vec<u8>>, Error> {
    let Some((file, meta)) = open_checked(path, OpenOptions::new().read(true), |_| owner)? else {
        return Ok(None);
    };
    read_bounded(path, file, &meta, MAX_READ).map(Some)
}

/// Owner of a file that configures whom we trust: root, or the user we run as.
fn trusted_owner(m: &Metadata) -> u32 {
    if m.uid() == 0 {
        0
    } else {
        euid()
    }
}

/// A file that configures who we trust (credentials, config, CA bundle): reached without a final
/// symlink, a regular file owned by root or by us, not group/world-writable. Anyone who could rewrite it
/// could point us at their own AWS account, or vouch for a server of theirs, and so plant keys.
pub fn check_trusted_file(path: &Path) -> Result<(), Error> {
    open_trusted(path).map(|_| ())
}

fn open_trusted(path: &Path) -> Result<(File, Metadata), Error> {
    open_checked(path, OpenOptions::new().read(true), trusted_owner)?
        .ok_or_else(|| Error::io(path, ErrorKind::NotFound.into()))
}

/// A trusted file holding a secret (the credentials file): as [`check_trusted_file`], and not readable
/// by others. Group read stays allowed: a root-owned file reaches the unprivileged command user only
/// through its group (root:<command user's group>, 0640).
pub fn check_secret_file(path: &Path) -> Result<(), Error> {
    let (_, meta) = open_trusted(path)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o004 != 0 {
        return Err(unsafe_path(
            path,
            format!(
                "mode {mode:04o} lets every local user read the secret in it; chmod o-r (0600 if the command user owns it, 0640 with its group if root does)"
            ),
        ));
    }
    Ok(())
}

/// Reads a trusted file (see [`check_trusted_file`]) of at most `max` bytes, checked on the handle it
/// is read from.
pub fn read_trusted(path: &Path, max: u64) -> Result<Vec<u8>, Error> {
    let (file, meta) = open_trusted(path)?;
    read_bounded(path, file, &meta, max)
}

fn read_bounded(path: &Path, file: File, meta: &Metadata, max: u64) -> Result<Vec<u8>, Error> {
    if meta.len() > max {
        return Err(unsafe_path(
            path,
            format!("is {} bytes, more than {max}", meta.len()),
        ));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    if buf.len() as u64 > max {
        return Err(unsafe_path(path, "grew past the size limit while reading"));
    }
    Ok(buf)
}

static TEMP_SEQ: AtomicU32 = AtomicU32::new(0);

/// Replaces `path` atomically: a new 0600 file beside it (created exclusively, never through a symlink),
/// written, fsynced, renamed over `path`, then the directory fsynced. A reader sees the old or the new
/// content, never a mix; a crash leaves at most a stray `*.tmp` file that is never read.
/// The file ends up owned by `owner` (see [`prepare_dir`]).
pub fn write_atomic(path: &Path, bytes: &[u8], owner: u32) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        "{file_name}.{}.{}.tmp",
        std::process::id(),
        TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nofollow_flags())
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        hand_over(&f, &tmp, owner)?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes a file we own; a missing file is not an error.
pub fn remove(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// An exclusive advisory lock, released when dropped or when the process dies (flock semantics), so a
/// killed holder never leaves a stuck lock. The lock file's content is a note from the last holder to the
/// processes that waited for it (see [`Lock::note_iam_failure`]).
#[derive(Debug)]
pub struct Lock {
    file: File,
    pub path: PathBuf,
}

/// The note a holder leaves when IAM failed for it: `iam-failed <unix-millis>`.
const FAILURE_NOTE: &str = "iam-failed ";

impl Lock {
    /// Records, for the processes waiting on this lock, that IAM failed at `at_ms` (Unix milliseconds).
    /// Best effort: a note that cannot be written (full disk) makes waiters ask IAM themselves, which is
    /// the safe direction.
    pub fn note_iam_failure(&self, at_ms: u64) {
        use std::os::unix::fs::FileExt;
        let text = format!("{FAILURE_NOTE}{at_ms}\n");
        if self.file.set_len(0).is_ok() {
            let _ = self.file.write_all_at(text.as_bytes(), 0);
        }
    }

    /// Did a holder note an IAM failure at or after `since_ms`? Only such a note lets a waiter serve an
    /// expired record without asking IAM: a holder that got an answer but could not store it leaves none.
    pub fn iam_failed_since(&self, since_ms: u64) -> bool {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 64];
        let n = self.file.read_at(&mut buf, 0).unwrap_or(0);
        std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|t| t.trim_end().strip_prefix(FAILURE_NOTE))
            .and_then(|ms| ms.parse::<u64>().ok())
            .is_some_and(|at| at >= since_ms)
    }
}

/// Opens (or creates, 0600, owned by `owner`) the lock file at `path`. Ownership is only ever given away
/// for a file this call created (`O_EXCL`): an existing file must already belong to `owner` and have a
/// single link, so a hard link planted in the cache directory (say to /etc/passwd, where
/// fs.protected_hardlinks is off) is refused instead of being chowned by root.
fn open_lock_file(path: &Path, owner: u32) -> Result<File, Error> {
    for _ in 0..3 {
        let created = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nofollow_flags())
            .open(path);
        match created {
            Ok(file) => {
                hand_over(&file, path, owner)?;
                return Ok(file);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                return Err(unsafe_path(path, "is a symbolic link"))
            }
            Err(e) => return Err(Error::io(path, e)),
        }
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        match open_checked(path, &mut opts, |_| owner)? {
            Some((file, meta)) if meta.nlink() == 1 => return Ok(file),
            Some((_, meta)) => {
                return Err(unsafe_path(
                    path,
                    format!("has {} hard links; a lock file has one", meta.nlink()),
                ))
            }
            // Removed between our two opens: try again.
            None => continue,
        }
    }
    Err(Error::io(path, ErrorKind::NotFound.into()))
}

/// Takes the exclusive lock on `path` (see [`open_lock_file`]), polling until `deadline`. `Ok(None)`
/// means another process held it the whole time.
pub fn lock_until(path: &Path, deadline: Instant, owner: u32) -> Result<Option<Lock>, Error> {
    let file = open_lock_file(path, owner)?;
    let mut pause = Duration::from_millis(1);
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                return Ok(Some(Lock {
                    file,
                    path: path.to_path_buf(),
                }))
            }
            Err(e) if e == rustix::io::Errno::WOULDBLOCK || e == rustix::io::Errno::INTR => {}
            Err(e) => return Err(Error::io(path, e.into())),
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tmpdir() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
        d
    }

    #[test]
    fn concurrent_first_lookups_all_get_the_new_directory() {
        // Many processes may find the cache directory missing at once; the ones that lose the mkdir race
        // must use the directory the winner made, not fall back to "no cache" (and no single flight).
        for _ in 0..20 {
            let d = tmpdir();
            let dir = d.path().join("cache");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(16));
            let results: Vec<_> = (0..16)
                .map(|_| {
                    let (dir, barrier) = (dir.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        prepare_dir(&dir)
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| t.join().expect("thread"))
                .collect();
            for r in results {
                assert_eq!(r.expect("prepare_dir"), euid());
            }
        }
    }

    #[test]
    fn reads_own_file_and_refuses_the_rest() {
        let d = tmpdir();
        let p = d.path().join("a.json");
        write_atomic(&p, b"hello", euid()).expect("write");
        assert_eq!(
            read_checked(&p, euid()).expect("read").as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(
            std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        assert!(read_checked(&d.path().join("missing"), euid())
            .expect("missing")
            .is_none());

        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let e = read_checked(&p, euid()).expect_err("666").to_string();
        assert!(e.contains("world-writable"), "{e}");

        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let e = read_checked(&p, euid() + 1).expect_err("owner").to_string();
        assert!(e.contains("owned by uid"), "{e}");

        let l = d.path().join("link.json");
        symlink(&p, &l).expect("symlink");
        let e = read_checked(&l, euid()).expect_err("symlink").to_string();
        assert!(e.contains("symbolic link"), "{e}");

        let sub = d.path().join("dir.json");
        std::fs::create_dir(&sub).expect("mkdir");
        let e = read_checked(&sub, euid()).expect_err("dir").to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn trusted_files() {
        let d = tmpdir();
        let p = d.path().join("credentials");
        write_atomic(&p, b"[default]", euid()).expect("write");
        check_trusted_file(&p).expect("0600, ours");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o620)).expect("chmod");
        assert!(check_trusted_file(&p).is_err());
        assert!(check_trusted_file(&d.path().join("missing")).is_err());
        // A secret may be group-readable (root:<command user's group> 0640), never world-readable.
        for (mode, ok) in [(0o600, true), (0o640, true), (0o644, false), (0o620, false)] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
            assert_eq!(check_secret_file(&p).is_ok(), ok, "{mode:o}");
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(read_trusted(&p, 100).expect("read"), b"[default]");
        assert!(read_trusted(&p, 3).is_err(), "over the bound");
    }

    #[test]
    fn oversized_files_are_refused() {
        let d = tmpdir();
        let p = d.path().join("big.json");
        write_atomic(&p, &vec![b' '; MAX_READ as usize + 1], euid()).expect("write");
        assert!(read_checked(&p, euid()).is_err());
    }

    #[test]
    fn dir_checks() {
        let d = tmpdir();
        let c = d.path().join("cache");
        prepare_dir(&c).expect("create");
        assert_eq!(
            std::fs::metadata(&c).expect("meta").permissions().mode() & 0o777,
            0o700
        );
        std::fs::set_permissions(&c, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(check_dir(&c).is_err());
        let l = d.path().join("link");
        symlink(&c, &l).expect("symlink");
        assert!(check_dir(&l)
            .expect_err("link")
            .to_string()
            .contains("symbolic"));
    }

    #[test]
    fn lock_is_exclusive_and_released_on_drop() {
        let d = tmpdir();
        let p = d.path().join("u.lock");
        let soon = || Instant::now() + Duration::from_millis(30);
        let held = lock_until(&p, soon(), euid())
            .expect("lock")
            .expect("acquired");
        assert!(lock_until(&p, soon(), euid()).expect("second").is_none());
        drop(held);
        assert!(lock_until(&p, soon(), euid()).expect("third").is_some());
    }

    #[test]
    fn the_waiters_note_says_only_what_the_holder_wrote() {
        let d = tmpdir();
        let p = d.path().join("u.lock");
        let soon = || Instant::now() + Duration::from_millis(30);
        let l = lock_until(&p, soon(), euid())
            .expect("lock")
            .expect("acquired");
        assert!(!l.iam_failed_since(0), "a new lock file holds no note");
        l.note_iam_failure(5_000);
        assert!(l.iam_failed_since(5_000));
        assert!(l.iam_failed_since(4_000));
        assert!(
            !l.iam_failed_since(5_001),
            "a note older than the wait is not ours"
        );
        drop(l);
        let l = lock_until(&p, soon(), euid())
            .expect("lock")
            .expect("again");
        assert!(l.iam_failed_since(5_000), "the note outlives the holder");
        std::fs::write(&p, b"garbage").expect("write");
        assert!(!l.iam_failed_since(0));
    }

    #[test]
    fn lock_never_chowns_a_file_it_did_not_create() {
        // Finding 3 of the hardening review: root taking a lock in the sshd user's cache directory
        // fchowned an existing uid-0 "lock file" to that user; a hard link to /etc/passwd became theirs.
        let d = tmpdir();
        let cache = d.path().join("cache");
        std::fs::create_dir(&cache).expect("mkdir");
        let victim = d.path().join("passwd");
        std::fs::write(&victim, b"root:x:0:0::/root:/bin/sh\n").expect("victim");
        std::fs::hard_link(&victim, cache.join("alice.lock")).expect("link");
        let soon = Instant::now() + Duration::from_millis(30);
        let owner = if euid() == 0 { 54_321 } else { euid() };
        if euid() == 0 {
            rustix::fs::chown(&cache, Some(rustix::fs::Uid::from_raw(owner)), None).expect("chown");
        }
        let e = lock_until(&cache.join("alice.lock"), soon, owner).expect_err("planted link");
        let msg = e.to_string();
        assert!(
            msg.contains("owned by uid") || msg.contains("hard links"),
            "{msg}"
        );
        assert_eq!(
            std::fs::metadata(&victim).expect("meta").uid(),
            euid(),
            "the victim's owner must not change"
        );
        // A lock file this call creates is handed to the cache owner.
        let fresh = cache.join("bob.lock");
        let held = lock_until(&fresh, soon, owner).expect("new lock");
        assert!(held.is_some());
        assert_eq!(std::fs::metadata(&fresh).expect("meta").uid(), owner);
    }
}
