//! Repo identity: the repo id and type, checked, and the names the Hub and its cache derive from
//! them (API paths, `resolve` URL prefixes, `models--org--name` folders, percent-encoding).
//!
//! Pure functions only: no I/O, no HTTP.

use std::fmt;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;

/// The kind of repo: the Hub keeps models, datasets and spaces apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RepoType {
    /// A model (`/api/models/...`, no prefix in `resolve` URLs).
    #[default]
    Model,
    /// A dataset (`/api/datasets/...`, `datasets/` before `resolve` URLs).
    Dataset,
    /// A space (`/api/spaces/...`, `spaces/` before `resolve` URLs).
    Space,
}

impl RepoType {
    /// The plural the API paths and cache folders use: `models`, `datasets`, `spaces`.
    pub fn plural(self) -> &'static str {
        match self {
            RepoType::Model => "models",
            RepoType::Dataset => "datasets",
            RepoType::Space => "spaces",
        }
    }

    /// From the plural of an API path (`/api/{type}s/`).
    pub fn from_plural(s: &str) -> Option<RepoType> {
        match s {
            "models" => Some(RepoType::Model),
            "datasets" => Some(RepoType::Dataset),
            "spaces" => Some(RepoType::Space),
            _ => None,
        }
    }

    /// What goes before the repo id in a `resolve` URL: nothing for models.
    pub fn url_prefix(self) -> &'static str {
        match self {
            RepoType::Model => "",
            RepoType::Dataset => "datasets/",
            RepoType::Space => "spaces/",
        }
    }
}

impl fmt::Display for RepoType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RepoType::Model => "model",
            RepoType::Dataset => "dataset",
            RepoType::Space => "space",
        })
    }
}

impl std::str::FromStr for RepoType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "model" | "models" => Ok(RepoType::Model),
            "dataset" | "datasets" => Ok(RepoType::Dataset),
            "space" | "spaces" => Ok(RepoType::Space),
            other => Err(format!(
                "unknown repo type {other:?} (expected model, dataset or space)"
            )),
        }
    }
}

/// A repo id as the Hub accepts it: `name` or `org/name`, each part of ASCII letters, digits,
/// `-`, `_` and `.`, not starting or ending with `-` or `.`, without `--` or `..`, at most 96
/// characters. Anything else is refused before a request is made (it could not name a repo, and
/// it must not name a folder outside the cache).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoId(String);

impl RepoId {
    /// Checks `s`.
    pub fn parse(s: &str) -> Result<RepoId, String> {
        let bad = |why: &str| Err(format!("invalid repo id {s:?}: {why}"));
        if s.is_empty() || s.len() > 96 {
            return bad("it must have 1 to 96 characters");
        }
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() > 2 {
            return bad("expected `name` or `org/name`");
        }
        for part in &parts {
            if part.is_empty() {
                return bad("an empty part");
            }
            if !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return bad("only letters, digits, '-', '_' and '.' are allowed");
            }
            if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
                return bad("a part may not start or end with '-' or '.'");
            }
            if part.contains("--") || part.contains("..") {
                return bad("'--' and '..' are not allowed");
            }
        }
        Ok(RepoId(s.to_owned()))
    }

    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The repo's folder in the huggingface_hub cache: `models--org--name`.
    pub fn cache_folder(&self, kind: RepoType) -> String {
        format!("{}--{}", kind.plural(), self.0.replace('/', "--"))
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything but unreserved characters is encoded in one URL path segment (a revision such as
/// `refs/pr/1` becomes `refs%2Fpr%2F1`, as the Hub expects).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes one path segment (a revision, a file name part).
pub(crate) fn encode_segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// Percent-encodes a repo file path, keeping its `/`.
pub(crate) fn encode_path(path: &str) -> String {
    path.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

/// True when `s` is exactly `len` hex digits (either case).
pub(crate) fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// True for a 40-hex-digit commit id.
pub(crate) fn is_commit(rev: &str) -> bool {
    is_hex(rev, 40)
}

/// Checks a revision as the Hub names them: a 40-hex commit, `refs/pr/N`, or a branch or tag
/// name as git allows it (`git check-ref-format`: no `..`, no component starting with `.` or
/// ending in `.lock`, no leading, trailing or doubled `/`, no control characters, space, `~^:?*[\`
/// or `@{`), at most 255 bytes. A revision names a file under `refs/` in the cache, so anything
/// else is refused before a request is made.
pub(crate) fn check_revision(rev: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid revision {rev:?}: {why}"));
    if rev.is_empty() || rev.len() > 255 {
        return bad("it must have 1 to 255 characters");
    }
    if is_commit(rev) {
        return Ok(());
    }
    if let Some(n) = rev.strip_prefix("refs/pr/") {
        return if !n.is_empty() && n.len() <= 10 && n.bytes().all(|b| b.is_ascii_digit()) {
            Ok(())
        } else {
            bad("a pull request is refs/pr/NUMBER")
        };
    }
    if rev == "@" || rev.contains("@{") {
        return bad("'@' alone and '@{' are not allowed");
    }
    if let Some(c) = rev
        .chars()
        .find(|c| c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
    {
        return bad(&format!("the character {c:?} is not allowed"));
    }
    for part in rev.split('/') {
        if part.is_empty() {
            return bad("an empty path component (a leading, trailing or doubled '/')");
        }
        if part.starts_with('.') || part.ends_with(".lock") || part.contains("..") {
            return bad("a component may not start with '.', contain '..' or end in '.lock'");
        }
    }
    if rev.ends_with('.') {
        return bad("it may not end with '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_checked() {
        for ok in ["gpt2", "org/model", "a.b_c-d/E.9", "x"] {
            assert!(RepoId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "a/b/c", "/a", "a/", "../x", "a/..", "a--b/c", "a/b..c", "-a", "a.", "a b", "a\\b",
            "ä/b",
        ] {
            assert!(RepoId::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(RepoId::parse(&"a".repeat(97)).is_err());
    }

    #[test]
    fn revisions_are_checked_before_they_name_a_file() {
        for ok in [
            "main",
            "v1.0",
            "release/2024-01",
            "refs/pr/12",
            &"ab".repeat(20),
            "feature_x",
        ] {
            assert!(check_revision(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../..",
            "..",
            "/etc",
            "a/../b",
            "a//b",
            "a/",
            ".hidden",
            "x.lock",
            "a b",
            "a\nb",
            "a:b",
            "a~1",
            "@",
            "a@{1}",
            "refs/pr/",
            "refs/pr/x",
            "a\\b",
            "end.",
        ] {
            assert!(check_revision(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(check_revision(&"a".repeat(256)).is_err());
    }

    #[test]
    fn cache_folders_and_encoding() {
        let id = RepoId::parse("org/name").expect("valid");
        assert_eq!(id.cache_folder(RepoType::Model), "models--org--name");
        assert_eq!(id.cache_folder(RepoType::Dataset), "datasets--org--name");
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode_segment("a b#ü"), "a%20b%23%C3%BC");
        assert_eq!(encode_path("sub dir/a#b?.json"), "sub%20dir/a%23b%3F.json");
        assert!(is_commit(&"a".repeat(40)));
        assert!(!is_commit("main"));
    }
}
