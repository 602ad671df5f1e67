//! The mark a file carries once ferry has verified it: the extended attribute
//! `user.ferry.verified`, 50 bytes or fewer: a format byte ([`FORMAT`]), an algorithm byte, the
//! raw digest, the file's mtime and the time the mark was written (nanoseconds, i64,
//! little-endian each). It is binary so that it fits inside the inode: ext4's 256-byte inodes
//! hold a value of up to 56 bytes under this name; a longer one costs a 4 KiB xattr block per
//! file, written by every fsync.
//!
//! A later pull trusts a file in place without reading it again only when its mark names the
//! digest the listing expects, the mtime is the same, and the inode's change time (ctime, which
//! user space cannot set) is within [`SLACK`] of when the mark was written. Writing the mark
//! sets the ctime, so a mark is only valid as the last change to the inode: any later write,
//! `touch`, `chmod`, link or rename moves the ctime past it, and the file is hashed again. That
//! catches a file changed in place with its mtime put back. Marks of earlier versions (format
//! 2, and the text marks before it) carry no such witness and are not trusted: such a file is
//! hashed once more and marked anew. So the mark is set after the rename into place.
//!
//! The mark is an optimisation, never a requirement: where the filesystem has no user extended
//! attributes, or the file cannot be written, nothing is marked and files are hashed each time.
//! This module does not decide what to fetch; it only reads and writes the mark.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Checksum;

const NAME: &str = "user.ferry.verified";

/// The first byte of a mark in this format.
const FORMAT: u8 = 3;

/// The longest mark: format, algorithm, a sha256 digest, the mtime, the time of marking.
const MAX: usize = 2 + 32 + 8 + 8;

/// How far the ctime the mark's own write left may be from the time recorded in it: the kernel
/// stamps the ctime from a coarse clock (a tick behind at most) and the write takes a moment.
/// A change to the file within this long after the mark is not seen.
const SLACK: Duration = Duration::from_secs(2);

/// Nanoseconds since the epoch of `seconds` + `nanos`; `None` out of i64 (before 1678 or after
/// 2262).
fn nanos(seconds: i64, nanos: i64) -> Option<i64> {
    seconds.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// The mark for `digest` on a file of mtime `mtime_ns`, written at `at_ns`.
fn value(digest: &Checksum, mtime_ns: i64, at_ns: i64) -> Vec<u8> {
    let (algorithm, bytes): (u8, &[u8]) = match digest {
        Checksum::Sha256(d) => (1, d),
        Checksum::GitSha1(d) => (2, d),
    };
    let mut v = Vec::with_capacity(MAX);
    v.extend_from_slice(&[FORMAT, algorithm]);
    v.extend_from_slice(bytes);
    v.extend_from_slice(&mtime_ns.to_le_bytes());
    v.extend_from_slice(&at_ns.to_le_bytes());
    v
}

/// Marks the open file `fd` as holding bytes with `digest`, as of now: call it after the last
/// change to the file (its last write, its rename into place). Errors are ignored: the mark only
/// saves work.
pub(crate) fn set(fd: impl AsFd, digest: &Checksum) {
    let Ok(st) = rustix::fs::fstat(&fd) else {
        return;
    };
    #[allow(clippy::unnecessary_cast)] // the field types differ between architectures
    let Some(mtime) = nanos(st.st_mtime as i64, st.st_mtime_nsec as i64) else {
        return;
    };
    let Some(at) = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
    else {
        return;
    };
    let v = value(digest, mtime, at);
    if let Err(e) = rustix::fs::fsetxattr(fd.as_fd(), NAME, &v, rustix::fs::XattrFlags::empty()) {
        tracing::debug!("no verified mark ({e}); the file will be hashed when found again");
    }
}

/// True when the file at `path` (not followed if a symlink) carries a current mark for
/// `digest`.
pub(crate) fn is_marked(path: &Path, digest: &Checksum) -> bool {
    let flags =
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC;
    let Ok(fd) = rustix::fs::open(path, flags, rustix::fs::Mode::empty()) else {
        return false;
    };
    is_marked_fd(&fd, digest)
}

/// [`is_marked`] for an open file.
pub(crate) fn is_marked_fd(fd: impl AsFd, digest: &Checksum) -> bool {
    let Ok(st) = rustix::fs::fstat(&fd) else {
        return false;
    };
    let mut buf = [0u8; 256];
    let Ok(n) = rustix::fs::fgetxattr(fd.as_fd(), NAME, &mut buf) else {
        return false;
    };
    let mark = &buf[..n];
    if mark.len() < 16 || mark[0] != FORMAT {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between architectures
    let (Some(mtime), Some(ctime)) = (
        nanos(st.st_mtime as i64, st.st_mtime_nsec as i64),
        nanos(st.st_ctime as i64, st.st_ctime_nsec as i64),
    ) else {
        return false;
    };
    let at = i64::from_le_bytes(mark[mark.len() - 8..].try_into().unwrap_or([0; 8]));
    let slack = SLACK.as_nanos() as i64;
    mark == value(digest, mtime, at).as_slice() && ctime.abs_diff(at) <= slack as u64
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::verify::HashAlgorithm;

    #[test]
    fn a_mark_holds_until_the_file_changes() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").expect("write");
        let d = Checksum::parse(HashAlgorithm::Sha256, &"ab".repeat(32)).expect("hex");
        let other = Checksum::parse(HashAlgorithm::Sha256, &"cd".repeat(32)).expect("hex");
        assert!(!is_marked(&p, &d), "no mark yet");
        set(std::fs::File::open(&p).expect("open"), &d);
        if rustix::fs::getxattr(&p, NAME, &mut [0u8; 256]).is_err() {
            eprintln!("this filesystem keeps no user xattrs; nothing more to check");
            return;
        }
        assert!(is_marked(&p, &d));
        assert!(!is_marked(&p, &other), "another digest");
        // A write after the mark (another mtime) makes it stale.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .expect("open");
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
            .expect("set mtime");
        assert!(!is_marked(&p, &d), "modified since");
    }

    #[test]
    fn a_mark_fits_in_the_inode_and_earlier_formats_are_not_trusted() {
        let sha = Checksum::parse(HashAlgorithm::Sha256, &"ab".repeat(32)).expect("hex");
        let git = Checksum::parse(HashAlgorithm::GitSha1, &"ab".repeat(20)).expect("hex");
        assert_eq!(value(&sha, 1, 2).len(), MAX);
        assert_eq!(value(&git, 1, 2).len(), MAX - 12);
        assert_eq!(nanos(i64::MAX / 1000, 0), None, "no i64 of nanoseconds");

        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").expect("write");
        let meta = std::fs::metadata(&p).expect("stat");
        let ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        // The text mark of early versions: no witness of later changes, so not trusted.
        let text = format!("sha256:{sha}:{ns}");
        if rustix::fs::setxattr(&p, NAME, text.as_bytes(), rustix::fs::XattrFlags::empty()).is_err()
        {
            eprintln!("this filesystem keeps no user xattrs; nothing more to check");
            return;
        }
        assert!(!is_marked(&p, &sha), "an earlier version's mark");
        set(std::fs::File::open(&p).expect("open"), &sha);
        assert!(is_marked(&p, &sha), "marked anew");
        assert!(!is_marked(&p, &git), "another algorithm and digest");
    }

    #[test]
    fn a_file_changed_in_place_with_its_mtime_put_back_loses_its_mark() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").expect("write");
        let d = Checksum::parse(HashAlgorithm::Sha256, &"ab".repeat(32)).expect("hex");
        set(std::fs::File::open(&p).expect("open"), &d);
        if rustix::fs::getxattr(&p, NAME, &mut [0u8; 256]).is_err() {
            eprintln!("this filesystem keeps no user xattrs; nothing more to check");
            return;
        }
        assert!(is_marked(&p, &d));
        let mtime = std::fs::metadata(&p)
            .expect("stat")
            .modified()
            .expect("mtime");
        // Past the slack, so that the change's ctime cannot be taken for the mark's own.
        std::thread::sleep(SLACK + Duration::from_millis(100));
        std::fs::write(&p, b"abd").expect("write in place");
        std::fs::File::options()
            .write(true)
            .open(&p)
            .expect("open")
            .set_modified(mtime)
            .expect("put the mtime back");
        assert_eq!(
            std::fs::metadata(&p).expect("stat").modified().ok(),
            Some(mtime)
        );
        assert!(!is_marked(&p, &d), "the ctime moved: the mark is stale");
    }

    #[test]
    fn on_ext4_a_mark_takes_no_block_of_its_own() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tmp");
        #[allow(clippy::unnecessary_cast)] // the field type differs between architectures
        let ext4 = rustix::fs::statfs(dir.path()).expect("statfs").f_type as i64
            == libc::EXT4_SUPER_MAGIC as i64;
        if !ext4 {
            eprintln!("not ext4 here; nothing to check");
            return;
        }
        let (plain, marked) = (dir.path().join("plain"), dir.path().join("marked"));
        for p in [&plain, &marked] {
            std::fs::write(p, b"x").expect("write");
        }
        let sha = Checksum::parse(HashAlgorithm::Sha256, &"ab".repeat(32)).expect("hex");
        set(std::fs::File::open(&marked).expect("open"), &sha);
        assert!(is_marked(&marked, &sha));
        let blocks = |p: &Path| std::fs::metadata(p).expect("stat").blocks();
        assert_eq!(
            blocks(&marked),
            blocks(&plain),
            "an xattr block was allocated"
        );
    }
}
