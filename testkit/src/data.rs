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

/// A temporary folder in memory (`/dev/shm`) when it has room for `need` bytes and 1 GiB more,
/// else in the usual place. For large sources the tests only read: on a CI machine whose disk
/// is nearly full, a 1 GiB source on disk beside its 1 GiB download has made ferry's disk-space
/// check refuse the download. The download itself stays on disk, where O_DIRECT is tested.
pub fn memory_tempdir(need: u64) -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let free = free_bytes(shm).unwrap_or(0);
    if free > need + (1 << 30)
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("tmp")
}

/// A temporary folder for a download of `need` bytes: on disk when the disk has room for it,
/// for ferry's `--min-free` (256 MiB) and 512 MiB for the tests running beside it; otherwise in
/// memory (`/dev/shm`, where O_DIRECT works too), and the test log says so. A CI machine whose
/// disk had 1.18 GiB free made ferry refuse a 1 GiB download, rightly.
pub fn download_tempdir(need: u64) -> tempfile::TempDir {
    let disk = std::env::temp_dir();
    let room = free_bytes(&disk).unwrap_or(0);
    if room > need + (768 << 20) {
        return tempfile::tempdir().expect("tmp");
    }
    let shm = Path::new("/dev/shm");
    if free_bytes(shm).unwrap_or(0) > need + (256 << 20)
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        eprintln!(
            "note: {} has {room} bytes free, too few for a {need}-byte download; downloading to {}",
            disk.display(),
            dir.path().display()
        );
        return dir;
    }
    tempfile::tempdir().expect("tmp")
}

/// Free bytes on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
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
