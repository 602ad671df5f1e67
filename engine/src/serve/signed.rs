//! Signed, expiring links (`ferry serve --sign-key-file`, `ferry sign`): a file URL with
//! `expires=UNIX_SECONDS&sig=HEX` appended, where `sig` is HMAC-SHA256 under the server's key
//! of `PATH\nEXPIRES` (the URL's path as sent, percent-encoded). Whoever holds such a link may
//! read that one file until it expires, without a token.
//!
//! Invariants: the signature is checked in constant time (`Mac::verify_slice`) before the
//! expiry is believed; a link for one path opens no other (the query is not signed, and
//! everything but `expires` and `sig` in it is ignored); the key is never printed. Not here:
//! what a valid link grants (the handler and the mirror decide).

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::route::query_param;

/// The most bytes of a key file read.
const MAX_KEY: u64 = 4096;
/// Shortest key accepted, in bytes.
const MIN_KEY: usize = 16;

/// The key signed links are made and checked with.
#[derive(Clone)]
pub struct SignKey(Vec<u8>);

impl std::fmt::Debug for SignKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignKey(<redacted>)")
    }
}

impl SignKey {
    /// The key in `path`: its bytes, surrounding whitespace trimmed; at least 16 of them.
    pub fn from_file(path: &Path) -> Result<SignKey, String> {
        use std::io::Read;
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_KEY + 1).read_to_end(&mut bytes))
            .map_err(|e| format!("cannot read the key file {}: {e}", path.display()))?;
        if bytes.len() as u64 > MAX_KEY {
            return Err(format!(
                "the key file {} is larger than {MAX_KEY} bytes",
                path.display()
            ));
        }
        let key = bytes.trim_ascii();
        if key.len() < MIN_KEY {
            return Err(format!(
                "the key in {} is shorter than {MIN_KEY} bytes",
                path.display()
            ));
        }
        Ok(SignKey(key.to_vec()))
    }

    fn mac(&self, path: &str, expires: u64) -> Hmac<Sha256> {
        // Any key length is valid for HMAC.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(path.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// `url` signed to expire at `expires` (Unix seconds): `expires` and `sig` appended to its
    /// query.
    ///
    /// ```
    /// use ferry::serve::SignKey;
    /// # let dir = tempfile::tempdir()?;
    /// # std::fs::write(dir.path().join("k"), "0123456789abcdef0123")?;
    /// let key = SignKey::from_file(&dir.path().join("k"))?;
    /// let url = key.sign("https://hub.example/org/m/resolve/main/a.bin", 1_900_000_000)?;
    /// assert!(url.starts_with("https://hub.example/org/m/resolve/main/a.bin?expires=1900000000&sig="));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sign(&self, url: &str, expires: u64) -> Result<String, String> {
        let mut parsed = url::Url::parse(url).map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("{url:?}: not an http:// or https:// URL"));
        }
        let sig = hex::encode(self.mac(parsed.path(), expires).finalize().into_bytes());
        parsed
            .query_pairs_mut()
            .append_pair("expires", &expires.to_string())
            .append_pair("sig", &sig);
        Ok(parsed.to_string())
    }

    /// What the signature of a request for `path` with `query` says at `now` (Unix seconds).
    pub(crate) fn check(&self, path: &str, query: &str, now: u64) -> Signature {
        let Some(sig) = query_param(query, "sig") else {
            return Signature::Unsigned;
        };
        let Some(expires) = query_param(query, "expires").and_then(|e| e.parse::<u64>().ok())
        else {
            return Signature::Invalid("a signed link needs a numeric `expires`");
        };
        let Ok(sig) = hex::decode(sig) else {
            return Signature::Invalid("the signature is not hex");
        };
        if self.mac(path, expires).verify_slice(&sig).is_err() {
            return Signature::Invalid("the signature does not match this link");
        }
        if expires <= now {
            return Signature::Invalid("the link has expired");
        }
        Signature::Valid
    }
}

/// A request's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signature {
    /// No `sig` in the query.
    Unsigned,
    /// Signed by this server's key for this path, not expired.
    Valid,
    /// Signed wrongly, or expired: why.
    Invalid(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SignKey {
        SignKey(b"0123456789abcdef-test-key".to_vec())
    }

    fn query_of(url: &str) -> (String, String) {
        let u = url::Url::parse(url).expect("url");
        (u.path().to_owned(), u.query().unwrap_or("").to_owned())
    }

    #[test]
    fn a_link_opens_its_path_until_it_expires_and_nothing_else() {
        let k = key();
        let url = k
            .sign("http://h:1/org/m/resolve/main/dir/a%20b.bin", 1000)
            .expect("sign");
        let (path, query) = query_of(&url);
        assert_eq!(path, "/org/m/resolve/main/dir/a%20b.bin");
        assert_eq!(k.check(&path, &query, 999), Signature::Valid);
        assert_eq!(
            k.check(&path, &query, 1000),
            Signature::Invalid("the link has expired")
        );
        assert!(matches!(
            k.check("/org/m/resolve/main/other.bin", &query, 999),
            Signature::Invalid(_)
        ));
        // A later expiry with the same signature is refused.
        let forged = query.replace("expires=1000", "expires=999999");
        assert!(matches!(
            k.check(&path, &forged, 999),
            Signature::Invalid(_)
        ));
        // Another key's link is refused.
        let other = SignKey(b"another-key-of-16-bytes".to_vec());
        assert!(matches!(
            other.check(&path, &query, 999),
            Signature::Invalid(_)
        ));
        assert_eq!(k.check(&path, "", 999), Signature::Unsigned);
        assert!(matches!(
            k.check(&path, "sig=zz&expires=5", 1),
            Signature::Invalid(_)
        ));
    }

    #[test]
    fn short_or_huge_keys_are_refused_and_never_shown() {
        let dir = tempfile::tempdir().expect("tmp");
        let short = dir.path().join("short");
        std::fs::write(&short, "tooshort\n").expect("write");
        assert!(SignKey::from_file(&short).is_err());
        let huge = dir.path().join("huge");
        std::fs::write(&huge, vec![b'k'; 5000]).expect("write");
        assert!(SignKey::from_file(&huge).is_err());
        let good = dir.path().join("good");
        std::fs::write(&good, "  a-key-that-is-long-enough  \n").expect("write");
        let k = SignKey::from_file(&good).expect("key");
        assert_eq!(format!("{k:?}"), "SignKey(<redacted>)");
    }
}
