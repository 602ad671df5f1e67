//! Resuming a file that has no digest (an HLS segment) by what vouches for its bytes instead.
//!
//! A file with a digest is resumed on the journal's word and checked by its hash at the end.
//! One without a digest cannot be checked, so its journal record carries, in place of a digest,
//! what makes the earlier bytes trustworthy: `validator:BOOT:HEX`, the answer's strong `ETag`
//! (hex of its bytes: the resource is the same one) and the boot its bytes were written in. A
//! `W` record follows a write that completed, so the bytes are in the page cache, and so in the
//! file, until the machine stops, whatever happened to the process; after a reboot the journal
//! may claim bytes that never reached the disk, and the record is not used.
//!
//! The resumed first request carries `If-Range: ETAG`; an answer with another `ETag`, another
//! size or a 200 drops the earlier bytes. A record that is not used is voided before the file is
//! emptied, so that no later run trusts it over an emptied (or preallocated) file.
//! Not here: files with a digest (their journal key is the digest).

use std::ops::Range;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use super::file::FileDownload;
use crate::proto::http1::ResponseHead;

/// What vouches for a digest-less file's journaled bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Validator {
    pub(crate) size: u64,
    /// The journal record's digest field: `validator:BOOT:HEX(ETAG)`.
    pub(crate) digest: String,
    pub(crate) etag: String,
}

/// The digest of a record no run may resume from.
const VOID: &str = "void";

/// This boot's id (`/proc/sys/kernel/random/boot_id`); `None` where it cannot be read, and then
/// nothing is resumed by validator.
fn boot_id() -> Option<&'static str> {
    static ID: OnceLock<Option<String>> = OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty() && !s.contains([' ', ':']))
    })
    .as_deref()
}

/// The strong `ETag` of an answer (a weak one does not promise the same bytes).
fn strong_etag(head: &ResponseHead) -> Option<&str> {
    let tag = head.header("etag")?.trim();
    (!tag.is_empty() && !tag.starts_with("W/") && tag.len() <= 256).then_some(tag)
}

impl Validator {
    fn new(size: u64, etag: &str) -> Option<Validator> {
        Some(Validator {
            size,
            digest: format!("validator:{}:{}", boot_id()?, hex::encode(etag)),
            etag: etag.to_owned(),
        })
    }

    /// The validator a journal record names, when it was written in this boot.
    fn from_record(size: u64, digest: &str) -> Option<Validator> {
        let rest = digest.strip_prefix("validator:")?;
        let (boot, tag) = rest.split_once(':')?;
        if Some(boot) != boot_id() {
            return None;
        }
        let etag = String::from_utf8(hex::decode(tag).ok()?).ok()?;
        Some(Validator {
            size,
            digest: digest.to_owned(),
            etag,
        })
    }
}

impl FileDownload {
    /// For a digest-less file: the earlier run's journaled ranges and what vouches for them,
    /// when the record was written in this boot and the partial file still holds every range.
    pub(super) fn validator_resumable(&self) -> Option<(u64, Vec<Range<u64>>, Validator)> {
        // Only the first fetch of a job: a later one follows a failure, and starts over.
        if self.checksum.is_some() || self.fetches.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let journal = self.journal.as_deref()?;
        let (id, size, digest, ranges) = journal.entry(&self.output)?;
        let v = Validator::from_record(size, &digest)?;
        let end = ranges.last()?.end;
        (self.partial.len_on_disk()? >= end).then_some((id, ranges, v))
    }

    /// Voids the journal record of this digest-less file (before its partial file is emptied).
    pub(super) fn void_record(&self) {
        *self.validator.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if self.checksum.is_some() {
            return;
        }
        if let Some(journal) = self.journal.as_deref()
            && journal
                .entry(&self.output)
                .is_some_and(|(_, _, digest, _)| digest != VOID)
        {
            journal.start(&self.output, 0, VOID);
        }
    }

    /// The `If-Range` of this file's first request: the `ETag` its resumed bytes came with.
    pub(super) fn resume_if_range(&self) -> Option<String> {
        self.validator
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|v| v.etag.clone())
    }

    /// The size the file has, as known before its first answer: listed, or journaled.
    pub(super) fn size_known(&self) -> Option<u64> {
        self.size_hint.or_else(|| {
            self.validator
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|v| v.size)
        })
    }

    /// Whether a resumed digest-less file's first answer is of another resource than its
    /// earlier bytes: no `ETag`, or another one.
    pub(super) fn validator_changed(&self, head: &ResponseHead) -> bool {
        match &*self.validator.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(v) => strong_etag(head) != Some(v.etag.as_str()),
            None => false,
        }
    }

    /// A fresh fetch of a digest-less file whose first answer (`total` bytes) has a strong
    /// `ETag`: journal it from now on, so that a later run can resume it.
    pub(super) fn validate_fresh(&self, total: u64, head: &ResponseHead) {
        if self.checksum.is_some() || self.journal.is_none() {
            return;
        }
        let Some(v) = strong_etag(head).and_then(|tag| Validator::new(total, tag)) else {
            return;
        };
        *self.validator.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
        self.journal_fresh();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_this_boot_only() {
        let v = Validator::new(10, "\"abc def\"").expect("a boot id on Linux");
        assert!(!v.digest.contains(' '), "one journal field: {}", v.digest);
        assert_eq!(Validator::from_record(10, &v.digest), Some(v.clone()));
        let other_boot = v
            .digest
            .replacen(boot_id().expect("boot"), "another-boot", 1);
        assert_eq!(Validator::from_record(10, &other_boot), None);
        assert_eq!(Validator::from_record(10, VOID), None);
        assert_eq!(Validator::from_record(10, "validator:x"), None);
    }
}
