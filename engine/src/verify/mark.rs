//! The mark a file carries once ferry has verified it: the extended attribute
//! `user.ferry.verified` = `ALGORITHM:DIGEST:MTIME_NS`. A later pull that finds the file
//! already in place trusts it without reading it again only when the mark names the digest the
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

fn value(digest: &Checksum, mtime_ns: i128) -> String {
    format!("{}:{digest}:{mtime_ns}", digest.algorithm())
}

fn mtime_ns(seconds: i64, nanos: i64) -> i128 {
    i128::from(seconds) * 1_000_000_000 + i128::from(nanos)
}

/// Marks the open file `fd` as holding bytes with `digest`, as of now (call it after the last
/// write). Errors are ignored: the mark only saves work.
pub(crate) fn set(fd: impl AsFd, digest: &Checksum) {
    let Ok(st) = rustix::fs::fstat(&fd) else {
        return;
    };
    #[allow(clippy::unnecessary_cast)] // the field types differ between architectures
    let v = value(
        digest,
        mtime_ns(st.st_mtime as i64, st.st_mtime_nsec as i64),
    );
    if let Err(e) = rustix::fs::fsetxattr(
        fd.as_fd(),
        NAME,
        v.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    ) {
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
    let mut buf = [0u8; 256];
    match rustix::fs::fgetxattr(file.as_fd(), NAME, &mut buf) {
        Ok(n) => buf[..n] == *value(digest, mtime_ns(meta.mtime(), meta.mtime_nsec())).as_bytes(),
        Err(_) => false,
    }
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
}
