//! AES-128 as HLS uses it (RFC 8216 section 5.2): a whole segment in CBC mode with PKCS7
//! padding, the chain restarted for every segment (and init section) with its own IV.
//!
//! Streaming: ciphertext goes in a chunk at a time and plaintext comes out, the last block held
//! back until the end because it carries the padding. The end checks the padding: a wrong key or
//! IV shows up there (or in the media itself), never as a silently short segment. Not here:
//! where keys and IVs come from (`playlist.rs`), fetching keys.

use aes::cipher::array::Array;
use aes::cipher::{BlockModeDecrypt, KeyIvInit};

/// The AES block, in bytes.
const BLOCK: usize = 16;

/// Why a segment did not decrypt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CryptError {
    #[error("{0} bytes of ciphertext is not a whole number of 16-byte AES blocks")]
    NotBlocks(u64),
    #[error("bad PKCS7 padding after decryption (a wrong key or IV, or a damaged segment)")]
    Padding,
}

/// One segment's decryption.
pub(crate) struct Decryptor {
    cbc: cbc::Decryptor<aes::Aes128>,
    /// Ciphertext not yet decrypted: less than a block, or the last whole block seen.
    held: Vec<u8>,
    seen: u64,
}

impl Decryptor {
    pub(crate) fn new(key: &[u8; 16], iv: &[u8; 16]) -> Decryptor {
        Decryptor {
            cbc: cbc::Decryptor::<aes::Aes128>::new(&(*key).into(), &(*iv).into()),
            held: Vec::with_capacity(BLOCK * 2),
            seen: 0,
        }
    }

    /// Decrypts what of `data` can be, appending the plaintext to `out`.
    pub(crate) fn update(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.seen += data.len() as u64;
        self.held.extend_from_slice(data);
        // Keep back the last whole block (it may be the padded one) and any partial block.
        let whole = self.held.len() / BLOCK;
        let ready = whole.saturating_sub(1) * BLOCK;
        if ready == 0 {
            return;
        }
        let start = out.len();
        out.extend_from_slice(&self.held[..ready]);
        self.decrypt_in_place(&mut out[start..]);
        self.held.drain(..ready);
    }

    /// Ends the segment: decrypts the last block, checks and strips its padding.
    pub(crate) fn finish(mut self, out: &mut Vec<u8>) -> Result<(), CryptError> {
        if self.held.len() != BLOCK {
            return Err(CryptError::NotBlocks(self.seen));
        }
        let mut last = std::mem::take(&mut self.held);
        self.decrypt_in_place(&mut last);
        let pad = last[BLOCK - 1] as usize;
        if pad == 0 || pad > BLOCK || last[BLOCK - pad..].iter().any(|&b| b as usize != pad) {
            return Err(CryptError::Padding);
        }
        out.extend_from_slice(&last[..BLOCK - pad]);
        Ok(())
    }

    fn decrypt_in_place(&mut self, bytes: &mut [u8]) {
        let (blocks, rest) = Array::slice_as_chunks_mut(bytes);
        debug_assert!(rest.is_empty());
        self.cbc.decrypt_blocks(blocks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::BlockModeEncrypt;
    use aes::cipher::block_padding::Pkcs7;

    fn encrypt(key: &[u8; 16], iv: &[u8; 16], plain: &[u8]) -> Vec<u8> {
        let mut buf = plain.to_vec();
        buf.resize(plain.len() + BLOCK, 0);
        let n = cbc::Encryptor::<aes::Aes128>::new(&(*key).into(), &(*iv).into())
            .encrypt_padded::<Pkcs7>(&mut buf, plain.len())
            .expect("test input")
            .len();
        buf.truncate(n);
        buf
    }

    #[test]
    fn decrypts_in_any_chunking_and_strips_the_padding() {
        let key = [7u8; 16];
        let iv = [9u8; 16];
        for len in [0usize, 1, 15, 16, 17, 31, 32, 1000, 4096] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let ct = encrypt(&key, &iv, &plain);
            for chunk in [1usize, 5, 16, 17, 1 << 20] {
                let mut d = Decryptor::new(&key, &iv);
                let mut out = Vec::new();
                for c in ct.chunks(chunk) {
                    d.update(c, &mut out);
                }
                d.finish(&mut out).expect("test input");
                assert_eq!(out, plain, "len {len} chunk {chunk}");
            }
        }
    }

    #[test]
    fn a_wrong_key_or_a_short_body_fails_instead_of_passing_garbage() {
        let plain = vec![0x47u8; 188 * 10];
        let ct = encrypt(&[1; 16], &[2; 16], &plain);
        let mut d = Decryptor::new(&[3; 16], &[2; 16]);
        let mut out = Vec::new();
        d.update(&ct, &mut out);
        assert_eq!(d.finish(&mut out), Err(CryptError::Padding));
        let mut d = Decryptor::new(&[1; 16], &[2; 16]);
        d.update(&ct[..ct.len() - 3], &mut out);
        assert!(matches!(d.finish(&mut out), Err(CryptError::NotBlocks(_))));
        // A wrong IV damages only the first block: the padding still checks, the bytes do not.
        let mut d = Decryptor::new(&[1; 16], &[0; 16]);
        let mut out = Vec::new();
        d.update(&ct, &mut out);
        d.finish(&mut out).expect("test input");
        assert_ne!(out[..16], plain[..16]);
        assert_eq!(out[16..], plain[16..]);
    }
}
