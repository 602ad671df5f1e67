//! Seeded test data: the same seed and size always give the same bytes, and the bytes do not
//! compress. splitmix64 is enough: these are test files, not cryptography.

use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Writes `size` seeded bytes to `path`.
pub fn write_data(path: &Path, size: u64, seed: u64) {
    let mut f = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(path).expect("create data file"),
    );
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut left = size;
    let mut block = vec![0u8; 1 << 20];
    while left > 0 {
        for chunk in block.chunks_mut(8) {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).expect("write data");
        left -= n as u64;
    }
    f.flush().expect("flush data");
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> String {
    let mut f =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// `len` seeded bytes in memory (xorshift: the same seed and length always give the same
/// bytes), for fixtures small enough to build in a test.
pub fn seeded(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}
