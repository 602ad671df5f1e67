//! The reliability record. Each fault test writes what it tried and what came of it, one JSON
//! line per trial, into `target/reliability/` (next to the test binaries); `scripts/test.sh`
//! clears that folder before the run and turns it into `tests/RELIABILITY.md` after it (the
//! `reliability` binary of this crate).
//!
//! The bytes lost and corrupted are measured, never assumed: the output is compared with its
//! source byte by byte *before* the test asserts anything about the bytes, so a trial that
//! damaged data is in the record too, with its damage, even though its test then fails.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::Backend;

/// What a trial did to the data: bytes missing from what should be there, and bytes that are
/// there but wrong (under a final name).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Damage {
    /// Bytes of the source missing from the output.
    pub lost: u64,
    /// Bytes of the output that differ from the source, or that should not be there at all.
    pub corrupted: u64,
    /// Bytes of sources compared.
    pub checked: u64,
}

impl std::ops::AddAssign for Damage {
    fn add_assign(&mut self, o: Damage) {
        self.lost += o.lost;
        self.corrupted += o.corrupted;
        self.checked += o.checked;
    }
}

/// Compares `output` with `source`: bytes missing (a short or absent output) are lost, bytes
/// that differ (or go past the source's end) are corrupted.
pub fn damage(source: &Path, output: &Path) -> Damage {
    let want = std::fs::read(source).expect("read the source");
    let got = std::fs::read(output).unwrap_or_default();
    damage_bytes(&want, &got)
}

/// [`damage`] for bytes in memory: what `got` lacks or has wrong against `want`.
pub fn damage_bytes(want: &[u8], got: &[u8]) -> Damage {
    let common = want.len().min(got.len());
    let differing = want[..common]
        .iter()
        .zip(&got[..common])
        .filter(|(a, b)| a != b)
        .count();
    Damage {
        lost: want.len().saturating_sub(got.len()) as u64,
        corrupted: (differing + got.len().saturating_sub(want.len())) as u64,
        checked: want.len() as u64,
    }
}

/// For a download that must fail: every byte under the final name (or a partial file) is
/// corrupted, since none should be there.
pub fn leftover(output: &Path) -> Damage {
    let mut partial = output.as_os_str().to_owned();
    partial.push(".incomplete");
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    Damage {
        lost: 0,
        corrupted: size(output) + size(Path::new(&partial)),
        checked: 0,
    }
}

/// One trial of a fault.
#[derive(Debug, Clone)]
pub struct Trial<'a> {
    /// The fault, as the table names it (`connection reset mid-body`).
    pub fault: &'a str,
    /// The test that tried it (`faults::a_connection_reset_mid_body_is_fetched_again`).
    pub test: &'a str,
    /// The back-end it ran on (`None`: not a download, e.g. the server).
    pub backend: Option<Backend>,
    /// How many times the fault was inflicted in this trial (50 kills in one crash trial).
    pub times: u64,
    /// What came of it, in a few words (`whole file, verified`).
    pub outcome: &'a str,
    /// What it did to the data.
    pub damage: Damage,
    /// Bytes fetched again because of the fault, where the test measures it.
    pub refetched: Option<u64>,
}

impl<'a> Trial<'a> {
    /// A fault inflicted once, its re-fetched bytes not measured (change the fields that
    /// differ with `Trial { times, ..Trial::once(...) }`).
    pub fn once(
        (fault, test): (&'a str, &'a str),
        backend: Option<Backend>,
        outcome: &'a str,
        damage: Damage,
    ) -> Trial<'a> {
        Trial {
            fault,
            test,
            backend,
            times: 1,
            outcome,
            damage,
            refetched: None,
        }
    }

    /// Appends the trial to the record.
    pub fn record(&self) {
        let line = serde_json::json!({
            "fault": self.fault,
            "test": self.test,
            "backend": self.backend.map(Backend::flag),
            "times": self.times,
            "outcome": self.outcome,
            "lost": self.damage.lost,
            "corrupted": self.damage.corrupted,
            "checked": self.damage.checked,
            "refetched": self.refetched,
        });
        let dir = record_dir();
        std::fs::create_dir_all(&dir).expect("create the reliability folder");
        // One file per test binary; one write(2) per line on an O_APPEND file, so lines of
        // tests running at once do not interleave.
        let exe = std::env::current_exe().expect("current_exe");
        let name = exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let binary = name.rsplit_once('-').map_or(name.as_str(), |(b, _)| b);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{binary}.jsonl")))
            .expect("open the reliability record");
        f.write_all(format!("{line}\n").as_bytes())
            .expect("append to the reliability record");
    }

    /// Appends the trial to the record, then asserts that it lost and corrupted nothing; the
    /// failure names `what` and the damage.
    pub fn record_undamaged(&self, what: &str) {
        self.record();
        let damage = self.damage;
        assert_eq!(
            (damage.lost, damage.corrupted),
            (0, 0),
            "{what}: {damage:?}"
        );
    }
}

/// Records a trial that must have given back `source` at `output`, then asserts it did, byte
/// for byte.
pub fn recovered(fault: &str, test: &str, backend: Backend, source: &Path, output: &Path) {
    let damage = damage(source, output);
    let outcome = "recovered: whole file, byte for byte";
    Trial::once((fault, test), Some(backend), outcome, damage).record();
    assert_eq!(
        (damage.lost, damage.corrupted),
        (0, 0),
        "{test} backend={backend:?} {fault}: {} of {} bytes missing or wrong at {}",
        damage.lost + damage.corrupted,
        damage.checked,
        output.display()
    );
}

/// Records a trial that must have failed cleanly, with nothing under `output`'s final name
/// nor a partial file left (the caller asserts the failure itself).
pub fn failed_cleanly(fault: &str, test: &str, backend: Backend, outcome: &str, output: &Path) {
    Trial::once((fault, test), Some(backend), outcome, leftover(output)).record();
}

/// Where the record goes: `$FERRY_RELIABILITY_DIR`, else `target/reliability`.
pub fn record_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FERRY_RELIABILITY_DIR") {
        return PathBuf::from(d);
    }
    // Test executables live in target/<profile>/deps, binaries in target/<profile>.
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir");
    if dir.ends_with("deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    dir.parent().unwrap_or(dir).join("reliability")
}
