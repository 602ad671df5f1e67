//! The mark a file carries once ferry has verified it: the extended attribute
//! `user.ferry.verified`, 42 bytes or fewer: a format byte ([`FORMAT`]), an algorithm byte, the
//! raw digest, and the file's mtime in nanoseconds (i64, little-endian). It is binary so that it
//! fits inside the inode: ext4's 256-byte inodes hold a value of up to 56 bytes under this name,
//! and a longer one (the hex text of earlier versions took 91) costs a 4 KiB xattr block per
//! file, written by every fsync, which a repository of many small files pays for each of them.
//! The text mark of earlier versions (`ALGORITHM:HEX:MTIME_NS`) is still read, so that a
//! mirror made by them is not hashed again; only new marks are binary. A later pull that finds
//! the file already in place trusts it without reading it again only when the mark names the digest the
//! listing expects and the file was not modified since (same mtime); a file with no mark (one
//! another tool wrote) or a stale one is hashed again first.
//!
//! A change is seen through the mtime, so one made within the filesystem's timestamp
//! granularity of the mark could slip by on kernels without fine-grained ("multigrain")
//! timestamps; the files of a Hub cache are written once and never changed in place, which is
//! what the mark is for.
//!
//! The mark is an optimisation, never a requirement: where the filesystem has no user extended
//! attributes, or the file cannot be written, nothing is marked and files are hashed each time.
//! This module does not decide what to fetch; it only reads and writes the mark.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::Checksum;

const NAME: &str = "user.ferry.verified";

/// The first byte of a mark in this format.
const FORMAT: u8 = 2;

/// The longest mark: format, algorithm, a sha256 digest, the mtime.
const MAX: usize = 2 + 32 + 8;

/// The mark for `digest` on a file last modified at `seconds` + `nanos`; `None` for an mtime out of
/// i64 nanoseconds (before 1678 or after 2262), which is not marked.
fn value(digest: &Checksum, seconds: i64, nanos: i64) -> Option<Vec<u8>> {
    let ns = seconds.checked_mul(1_000_000_000)?.checked_add(nanos)?;
    let (algorithm, bytes): (u8, &[u8]) = match digest {
        Checksum::Sha256(d) => (1, d),
        Checksum::GitSha1(d) => (2, d),
    };
    let mut v = Vec::with_capacity(MAX);
    v.extend_from_slice(&[FORMAT, algorithm]);
    v.extend_from_slice(bytes);
    v.extend_from_slice(&ns.to_le_bytes());
    Some(v)
}

/// Marks the open file `fd` as holding bytes with `digest`, as of now (call it after the last
/// write). Errors are ignored: the mark only saves work.
pub(crate) fn set(fd: impl AsFd, digest: &Checksum) {
    let Ok(st) = rustix::fs::fstat(&fd) else {
        return;
    };
    #[allow(clippy::unnecessary_cast)] // the field types differ between architectures
    let Some(v) = value(digest, st.st_mtime as i64, st.st_mtime_nsec as i64) else {
        return;
    };
    if let Err(e) = rustix::fs::fsetxattr(fd.as_fd(), NAME, &v, rustix::fs::XattrFlags::empty()) {
        tracing::debug!("no verified mark ({e}); the file will be hashed when found again");
    }
}

/// True when the file at `path` carries a current mark for `digest`.
pub(crate) fn is_marked(path: &Path, digest: &Checksum) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let Ok(meta) = file.metadata() else {
        return false;
    };
    // Room for an earlier version's longer text mark.
    let mut buf = [0u8; 256];
    let Ok(n) = rustix::fs::fgetxattr(file.as_fd(), NAME, &mut buf) else {
        return false;
    };
    let (seconds, nanos) = (meta.mtime(), meta.mtime_nsec());
    match buf[..n].first() {
        Some(&FORMAT) => value(digest, seconds, nanos).is_some_and(|v| buf[..n] == *v),
        _ => buf[..n] == *text_value(digest, seconds, nanos).as_bytes(),
    }
}

/// The text mark earlier versions wrote, `ALGORITHM:HEX:MTIME_NS`: read, no longer written.
fn text_value(digest: &Checksum, seconds: i64, nanos: i64) -> String {
    let ns = i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
    format!("{}:{digest}:{ns}", digest.algorithm())
}

#[cfg(test)]
mod tests {
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
    fn a_mark_fits_in_the_inode_and_an_old_text_mark_still_counts() {
        let sha = Checksum::parse(HashAlgorithm::Sha256, &"ab".repeat(32)).expect("hex");
        let git = Checksum::parse(HashAlgorithm::GitSha1, &"ab".repeat(20)).expect("hex");
        let (s, n) = (1_800_000_000, 123_456_789);
        assert_eq!(value(&sha, s, n).expect("in range").len(), MAX);
        assert_eq!(value(&git, s, n).expect("in range").len(), MAX - 12);
        assert_ne!(value(&sha, s, n), value(&sha, s, n + 1), "the mtime counts");
        assert_eq!(
            value(&sha, i64::MAX / 1000, 0),
            None,
            "no i64 of nanoseconds"
        );

        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").expect("write");
        let meta = std::fs::metadata(&p).expect("stat");
        let ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        // Written as earlier versions did (spelled out here, not with `text_value`).
        let put = |v: String| {
            rustix::fs::setxattr(&p, NAME, v.as_bytes(), rustix::fs::XattrFlags::empty())
        };
        if put(format!("sha256:{sha}:{ns}")).is_err() {
            eprintln!("this filesystem keeps no user xattrs; nothing more to check");
            return;
        }
        assert!(is_marked(&p, &sha), "an earlier version's text mark");
        assert!(!is_marked(&p, &git), "another algorithm and digest");
        put(format!("sha256:{sha}:{}", ns + 1)).expect("setxattr");
        assert!(!is_marked(&p, &sha), "an earlier version's stale text mark");
        set(std::fs::File::open(&p).expect("open"), &sha);
        assert!(is_marked(&p, &sha), "marked anew");
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
