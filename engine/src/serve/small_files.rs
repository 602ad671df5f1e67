//! The small files the scan reads beside the bytes: refs, local-dir metadata and kept listings
//! (`trees/COMMIT.json`). Each is read bounded (a ref as 64 bytes, metadata as 1 KiB, a listing
//! as [`crate::hub::trees::MAX_BYTES`]) and never through a symlink; one that cannot be read is
//! skipped with a warning. Not here: the files served (the catalog's).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;

use super::catalog::FileEntry;
use crate::hub::repo::is_hex;

/// The first `max` bytes of the file at `path`, read without following a symlink; `None` when
/// it cannot be opened or read, or holds more (with `whole`).
fn read_at_most(path: &Path, max: u64, whole: bool) -> Option<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let mut bytes = Vec::new();
    file.take(max + u64::from(whole))
        .read_to_end(&mut bytes)
        .ok()?;
    (!whole || bytes.len() as u64 <= max).then_some(bytes)
}

/// The commit a ref file names: its first 64 bytes at most, read without following a symlink.
pub(super) fn read_ref(path: &Path) -> Option<String> {
    let bytes = read_at_most(path, 64, false)?;
    let text = std::str::from_utf8(&bytes).ok()?;
    let commit = text.trim();
    is_hex(commit, 40).then(|| commit.to_ascii_lowercase())
}

/// The files of `commit` as its kept listing (`trees_dir/COMMIT.json`, written by `ferry pull`
/// or huggingface_hub) states them, with the bytes found here: a listed file that is not here,
/// or is here with other bytes, is listed without bytes (answered 404), and a file here that
/// the listing does not name is not part of the commit. Without a usable listing, the files
/// found are the commit (nothing says otherwise).
pub(super) fn with_kept_listing(
    trees_dir: &Path,
    commit: &str,
    found: BTreeMap<String, FileEntry>,
    id: &str,
) -> BTreeMap<String, FileEntry> {
    let path = trees_dir.join(format!("{commit}.json"));
    if !fs::symlink_metadata(trees_dir).is_ok_and(|m| m.is_dir())
        || fs::symlink_metadata(&path).is_err()
    {
        return found;
    }
    let Some(bytes) = read_at_most(&path, crate::hub::trees::MAX_BYTES, true) else {
        tracing::warn!(file = ?path, "kept listing unreadable or too large; ignored");
        return found;
    };
    let listed = match crate::hub::trees::decode(&bytes) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(file = ?path, error = %e, "kept listing refused; ignored");
            return found;
        }
    };
    let mut files = BTreeMap::new();
    let mut absent = 0;
    for l in listed {
        let here = found
            .get(&l.path)
            .filter(|f| f.etag() == l.etag && f.size == l.size);
        match here {
            Some(f) => {
                files.insert(l.path, f.clone());
            }
            None => {
                absent += 1;
                if let Some(entry) = FileEntry::with_disk(None, l.size, &l.etag) {
                    files.insert(l.path, entry);
                }
            }
        }
    }
    if absent > 0 {
        tracing::warn!(
            repo = %id,
            %commit,
            absent,
            "files of the commit are not here (a partial pull): listed, answered 404"
        );
    }
    files
}

/// The three lines huggingface_hub writes: commit sha, etag, unix time.
pub(super) fn read_metadata(path: &Path) -> Option<(String, String, f64)> {
    // Three short lines: at most 1 KiB is read, never through a symlink.
    let bytes = read_at_most(path, 1024, false)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines().map(str::trim);
    let commit = lines.next()?.to_ascii_lowercase();
    let etag = lines.next()?.to_ascii_lowercase();
    let ts: f64 = lines.next()?.parse().ok()?;
    (is_hex(&commit, 40) && ts.is_finite()).then_some((commit, etag, ts))
}
