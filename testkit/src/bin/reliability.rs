//! Writes `tests/RELIABILITY.md` from the trials the fault tests recorded during a test run
//! (`ferry_testkit::record`): one row per fault and test, with how many times it was tried, on
//! which back-ends, what came of it, and the bytes lost or corrupted, summed.
//!
//! Usage: `reliability [OUTPUT]` (default `tests/RELIABILITY.md`), after `cargo test`; reads
//! `$FERRY_RELIABILITY_DIR` or `target/reliability`. Exits 1 when a trial lost or corrupted a
//! byte, or when nothing was recorded (the tests did not run).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Default)]
struct Row {
    trials: u64,
    times: u64,
    backends: BTreeSet<String>,
    outcomes: BTreeSet<String>,
    lost: u64,
    corrupted: u64,
    checked: u64,
    refetched: Option<u64>,
}

fn main() -> ExitCode {
    let output = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("tests/RELIABILITY.md"), PathBuf::from);
    let dir = ferry_testkit::record::record_dir();
    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for path in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
    {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            let Ok(t) = serde_json::from_str::<serde_json::Value>(line) else {
                eprintln!(
                    "reliability: skipping a malformed line in {}",
                    path.display()
                );
                continue;
            };
            let s = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
            let n = |k: &str| t[k].as_u64().unwrap_or(0);
            let row = rows.entry((s("test"), s("fault"))).or_default();
            row.trials += 1;
            row.times += n("times");
            row.backends.insert(match t["backend"].as_str() {
                Some(b) => b.to_owned(),
                None => "server".to_owned(),
            });
            row.outcomes.insert(s("outcome"));
            row.lost += n("lost");
            row.corrupted += n("corrupted");
            row.checked += n("checked");
            if let Some(r) = t["refetched"].as_u64() {
                *row.refetched.get_or_insert(0) += r;
            }
        }
    }
    if rows.is_empty() {
        eprintln!(
            "reliability: no trials recorded in {} (run the tests first)",
            dir.display()
        );
        return ExitCode::FAILURE;
    }
    let (mut times, mut lost, mut corrupted) = (0, 0, 0);
    let mut table = String::new();
    for ((test, fault), r) in &rows {
        times += r.times;
        lost += r.lost;
        corrupted += r.corrupted;
        let outcomes: Vec<&str> = r.outcomes.iter().map(String::as_str).collect();
        let backends: Vec<&str> = r.backends.iter().map(String::as_str).collect();
        let refetched = r
            .refetched
            .map_or_else(|| "".to_owned(), |b| format!("{b}"));
        table.push_str(&format!(
            "| {fault} | `{test}` | {} | {} | {} | {} | {} | {} | {refetched} |\n",
            r.times,
            backends.join(", "),
            outcomes.join("; "),
            r.checked,
            r.lost,
            r.corrupted,
        ));
    }
    let commit = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let doc = format!(
        "# Reliability record\n\n\
         Written by `scripts/test.sh` from the trials the fault tests recorded in one test run \
         (`testkit/src/record.rs`, `testkit/src/bin/reliability.rs`), at commit `{commit}`. Do not \
         edit: run the tests again.\n\n\
         Every trial compares the files with their sources byte by byte (*checked*) before its \
         test asserts on them: *lost* counts bytes missing from what should be there, *corrupted* bytes \
         under a final name that are wrong or should not be there at all. *Times* is how often \
         the fault was inflicted (one trial of the crash test kills the pull 50 times); \
         *re-fetched* is the bytes the origin sent again because of it, where the test \
         measures that.\n\n\
         **{} faults, inflicted {times} times: {lost} bytes lost, {corrupted} bytes corrupted.**\n\n\
         | fault | test | times | back-ends | outcome | bytes checked | bytes lost | bytes corrupted | re-fetched |\n\
         |---|---|---|---|---|---|---|---|---|\n{table}",
        rows.len(),
    );
    if let Err(e) = std::fs::write(&output, doc) {
        eprintln!("reliability: cannot write {}: {e}", output.display());
        return ExitCode::FAILURE;
    }
    println!(
        "reliability: {} faults, inflicted {times} times: {lost} bytes lost, {corrupted} corrupted -> {}",
        rows.len(),
        output.display()
    );
    if lost + corrupted > 0 {
        eprintln!(
            "reliability: data was lost or corrupted; see {}",
            output.display()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
