//! The listing of a commit kept beside a mirror, as huggingface_hub keeps it:
//! `trees/COMMIT.json` in the repo's cache folder (`.cache/huggingface/trees/` in a local dir),
//! `{"format_version": 1, "files": {PATH: {"size", "blob_id", "lfs_sha256"?, "lfs_size"?}}}`.
//!
//! A pull writes it once the commit's files are in place, for the whole commit (not only the
//! files it was asked to include); `ferry verify` reads it to know what a snapshot must hold, and
//! so does huggingface_hub (2.x) instead of asking the endpoint again. A listing read back is a
//! stranger's data like any other: it goes through [`super::listing::check`].
//!
//! Not here: where the folder is ([`super::layout`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::listing::{self, RemoteFile};
use crate::verify::HashAlgorithm;

/// The format huggingface_hub writes and reads.
const FORMAT_VERSION: u32 = 1;

/// A listing file larger than this is not read (a million entries take about 150 MB).
pub(crate) const MAX_BYTES: u64 = 256 << 20;

#[derive(Debug, Serialize, Deserialize)]
struct TreeFile {
    format_version: u32,
    files: BTreeMap<String, Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    size: u64,
    blob_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lfs_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lfs_size: Option<u64>,
}

/// The JSON of `files`' listing; `None` when a file lacks its git blob id (a listing from an
/// endpoint that does not state it), which huggingface_hub's format requires.
pub(crate) fn encode(files: &[RemoteFile]) -> Option<Vec<u8>> {
    let mut out = BTreeMap::new();
    for f in files {
        let entry = Entry {
            size: f.size,
            blob_id: f.blob_id.clone()?,
            lfs_sha256: (f.algorithm == HashAlgorithm::Sha256).then(|| f.etag.clone()),
            lfs_size: (f.algorithm == HashAlgorithm::Sha256).then_some(f.size),
        };
        out.insert(f.path.clone(), entry);
    }
    serde_json::to_vec_pretty(&TreeFile {
        format_version: FORMAT_VERSION,
        files: out,
    })
    .ok()
}

/// The files of a listing file, checked as a listing from the network is.
pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<RemoteFile>, String> {
    let tree: TreeFile =
        serde_json::from_slice(bytes).map_err(|e| format!("not a tree listing: {e}"))?;
    if tree.format_version != FORMAT_VERSION {
        return Err(format!(
            "format_version {} (this ferry reads {FORMAT_VERSION})",
            tree.format_version
        ));
    }
    let files = tree
        .files
        .into_iter()
        .map(|(path, e)| {
            let (algorithm, etag, size) = match e.lfs_sha256 {
                Some(sha) => (HashAlgorithm::Sha256, sha, e.lfs_size.unwrap_or(e.size)),
                None => (HashAlgorithm::GitSha1, e.blob_id.clone(), e.size),
            };
            RemoteFile {
                path,
                size,
                algorithm,
                etag,
                blob_id: Some(e.blob_id),
            }
        })
        .collect();
    listing::check(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_round_trips_in_huggingface_hubs_format() {
        let files = vec![
            RemoteFile {
                path: "model.safetensors".into(),
                size: 10,
                algorithm: HashAlgorithm::Sha256,
                etag: "ab".repeat(32),
                blob_id: Some("cd".repeat(20)),
            },
            RemoteFile {
                path: "config.json".into(),
                size: 3,
                algorithm: HashAlgorithm::GitSha1,
                etag: "ef".repeat(20),
                blob_id: Some("ef".repeat(20)),
            },
        ];
        let bytes = encode(&files).expect("encoded");
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["format_version"], 1);
        assert_eq!(
            v["files"]["model.safetensors"]["lfs_sha256"],
            "ab".repeat(32)
        );
        assert_eq!(v["files"]["config.json"]["blob_id"], "ef".repeat(20));
        assert!(v["files"]["config.json"].get("lfs_sha256").is_none());
        let mut back = decode(&bytes).expect("decoded");
        back.sort_by(|a, b| b.path.cmp(&a.path));
        assert_eq!(back, files);
    }

    #[test]
    fn a_hostile_listing_file_is_refused() {
        let bad = br#"{"format_version":1,"files":{"../../etc/x":{"size":1,"blob_id":"aa"}}}"#;
        assert!(decode(bad).is_err());
        assert!(decode(br#"{"format_version":2,"files":{}}"#).is_err());
        let mut f = RemoteFile {
            path: "a".into(),
            size: 1,
            algorithm: HashAlgorithm::GitSha1,
            etag: "ab".repeat(20),
            blob_id: None,
        };
        assert!(encode(std::slice::from_ref(&f)).is_none(), "no blob id");
        f.blob_id = Some(f.etag.clone());
        assert!(encode(&[f]).is_some());
    }
}
