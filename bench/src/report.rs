//! The report of `ferry-bench`: `RESULTS.md` (a table per suite), `results.json` (every sample)
//! and `results.svg` (median GB/s per tool), in the `--out` folder.
//!
//! A run may cover only some suites, so the report is merged by suite: the suites this run
//! measured replace their earlier figures, and every other suite keeps what an earlier run
//! recorded in `results.json` (or, for a suite missing there, in the newest `runs/*/results.json`
//! that has it). Each suite names the run its figures come from (date, arguments, machine,
//! ferry's git revision). Every run also gets its own folder, `runs/DATE-SUITES/`, with the same
//! three files for its suites only, so the history stays readable.
//!
//! No absolute path of the machine that ran it reaches a report ([`Anonymize`]): the binaries
//! are named, the scratch folder and the checkout are placeholders.
//!
//! This module only formats and files what was measured: it runs no tool, and it judges a
//! target only by printing whether the medians meet it. Long (some 1,200 lines, a quarter of
//! them tests that write and read real report files): the three writers and the merge share one
//! set of rows and medians. Splitting the SVG chart out is the natural next cut.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::{Args, Sample, SuiteResult, Tool, sh, suites};

/// Where a suite's figures come from.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct RunInfo {
    /// The run's folder under `runs/` (empty for figures recorded before runs had folders).
    #[serde(default)]
    pub(crate) id: String,
    /// When the run started, UTC (empty where it was not recorded).
    #[serde(default)]
    pub(crate) date: String,
    /// `ferry-bench`'s arguments.
    #[serde(default)]
    pub(crate) command: String,
    pub(crate) runs: usize,
    pub(crate) state: String,
    /// CPUs of the machine (0 where not recorded).
    #[serde(default)]
    pub(crate) cpus: usize,
    /// `uname -r` (empty where not recorded).
    #[serde(default)]
    pub(crate) kernel: String,
    /// `git describe --always --dirty` of the checkout the run was started in.
    #[serde(default)]
    pub(crate) git: String,
}

impl RunInfo {
    /// Figures from a file written before runs were recorded per suite: what its top level says,
    /// and the date its folder name starts with.
    fn legacy(folder: Option<&str>, runs: usize, state: &str) -> RunInfo {
        let id = folder.unwrap_or_default().to_owned();
        let date = id
            .get(..10)
            .filter(|d| {
                d.bytes().enumerate().all(|(i, b)| {
                    if i == 4 || i == 7 {
                        b == b'-'
                    } else {
                        b.is_ascii_digit()
                    }
                })
            })
            .unwrap_or_default()
            .to_owned();
        RunInfo {
            id,
            date,
            command: format!("--runs {runs} --state {state}"),
            runs,
            state: state.to_owned(),
            cpus: 0,
            kernel: String::new(),
            git: String::new(),
        }
    }

    /// One line: which run, when, how, on what.
    fn describe(&self, link: bool) -> String {
        let mut s = if self.id.is_empty() {
            "From an earlier run".to_owned()
        } else {
            format!("From run `{}`", self.id)
        };
        if !self.date.is_empty() {
            let _ = write!(s, " ({})", self.date);
        }
        let _ = write!(s, ": `ferry-bench {}`", self.command);
        if self.cpus > 0 {
            let _ = write!(s, " on {} CPUs, kernel {}", self.cpus, self.kernel);
        }
        if !self.git.is_empty() {
            let _ = write!(s, ", ferry at `{}`", self.git);
        }
        if link && !self.id.is_empty() {
            let _ = write!(
                s,
                "; that run's own report: [runs/{0}/RESULTS.md](runs/{0}/RESULTS.md)",
                self.id
            );
        }
        s.push('.');
        s
    }
}

/// A goal a suite measures, stated in the report with the medians that meet it or not.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Target {
    /// The goal in words.
    pub(crate) text: String,
    /// The tool whose figures it is about (with `best_of`, only its label).
    pub(crate) tool: String,
    /// When not empty: the target is about whichever of these tools has the lowest median wall
    /// time (the best peer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) best_of: Vec<String>,
    /// Met when the median of base wall / tool wall, round by round, is at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_ratio: Option<f64>,
    /// Met when the tool's median wall time is under this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_wall_s: Option<f64>,
    /// Met when the median of tool wall / base wall, round by round, is at least this: the
    /// base's throughput as a share of the tool's (the tool is a ceiling row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) min_share: Option<f64>,
    /// Met when the tool's mean CPU seconds per GB is at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_cpu_s_gb: Option<f64>,
    /// With `min_share`: the share is of this many bytes per second (a `wan-*` suite's link
    /// cap), not of a ceiling row: the suite's bytes / the tool's wall / this, round by round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) link_rate: Option<u64>,
    /// Met when the median of tool wall / base wall, round by round, is at most this: the
    /// tool may take this many times the base's time (`mirror`: N clients through a mirror
    /// against one pull straight from the upstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_times: Option<f64>,
    /// Met when the tool's median wall time exceeds the suite's base's (the same command
    /// without a fault) by at most this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_extra_s: Option<f64>,
}

/// The absolute paths of the machine that ran the benchmark, and what a report says instead:
/// the binaries by name (`ferry`, `ferry-bench`), the scratch folder (the lists, the CA, every
/// output) as `{SCRATCH}` (like `{OUT}`, an output folder in it), the checkout as `{REPO}`, and
/// the folders given as absolute `--out` and `--dir` as `{REPORTS}` and `{DIR}`. A report is read on other machines and kept in git: where this one
/// kept its files says nothing there, and the paths differ from one checkout to the next.
#[derive(Debug, Clone, Default)]
pub(crate) struct Anonymize {
    /// (path as it appears, replacement), longest first, so that a path inside another (the
    /// binaries inside the checkout, `ferry` a prefix of `ferry-bench`) is replaced whole.
    pairs: Vec<(String, String)>,
}

impl Anonymize {
    /// For a run of `harness` (this binary) measuring `ferry`, in `scratch`, from the checkout
    /// at `repo`.
    pub(crate) fn new(ferry: &Path, harness: &Path, scratch: &Path, repo: &Path) -> Anonymize {
        Anonymize::default()
            .with(ferry, "ferry", true)
            .with(harness, "ferry-bench", true)
            .with(scratch, "{SCRATCH}", false)
            .with(repo, "{REPO}", false)
    }

    /// Also `path` (and its canonical form; quoted too with `quoted_too`), as `to`. A relative
    /// path is left alone: it names no machine, and as text it could be part of anything.
    pub(crate) fn with(mut self, path: &Path, to: &str, quoted_too: bool) -> Anonymize {
        if path.is_relative() {
            return self;
        }
        let pairs = &mut self.pairs;
        let mut add = |path: &Path, to: &str, quoted_too: bool| {
            let canonical = std::fs::canonicalize(path).ok();
            for p in std::iter::once(path).chain(canonical.as_deref()) {
                let p = p.to_string_lossy().trim_end_matches('/').to_owned();
                if p.is_empty() || p == "/" {
                    continue;
                }
                if quoted_too {
                    pairs.push((format!("'{p}'"), to.to_owned()));
                }
                pairs.push((p, to.to_owned()));
            }
        };
        add(path, to, quoted_too);
        pairs.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        pairs.dedup();
        self
    }

    /// `text` with every path replaced.
    pub(crate) fn text(&self, text: &str) -> String {
        self.pairs
            .iter()
            .fold(text.to_owned(), |t, (from, to)| t.replace(from, to))
    }

    /// `result` with every path replaced in every string it holds (commands, reasons, errors,
    /// the run's arguments), whatever field it is in.
    pub(crate) fn result(&self, result: SuiteResult) -> anyhow::Result<SuiteResult> {
        fn walk(v: &mut serde_json::Value, a: &Anonymize) {
            match v {
                serde_json::Value::String(s) => *s = a.text(s),
                serde_json::Value::Array(items) => items.iter_mut().for_each(|i| walk(i, a)),
                serde_json::Value::Object(map) => {
                    let entries = std::mem::take(map);
                    for (k, mut v) in entries {
                        walk(&mut v, a);
                        map.insert(a.text(&k), v);
                    }
                }
                _ => {}
            }
        }
        let mut v = serde_json::to_value(&result)?;
        walk(&mut v, self);
        Ok(serde_json::from_value(v)?)
    }
}

/// This run's results and the earlier ones they are merged with.
pub(crate) struct Reports {
    out: PathBuf,
    run: RunInfo,
    /// What this machine's paths are replaced with in everything written.
    anonymize: Anonymize,
    /// `out/runs/<run.id>`.
    run_dir: PathBuf,
    /// What earlier runs recorded, by suite.
    previous: BTreeMap<String, SuiteResult>,
    /// What this run measured so far.
    current: Vec<SuiteResult>,
}

impl Reports {
    /// Reads what earlier runs recorded under `--out` and names this run's folder. Fails on a
    /// `results.json` it cannot read, rather than overwrite it later.
    pub(crate) fn open(args: &Args, anonymize: Anonymize) -> anyhow::Result<Reports> {
        let out = args.out.clone();
        let previous = load_previous(&out)?;
        let day = sh("date -u +%Y-%m-%d")?.trim().to_owned();
        let suites: Vec<&str> = suites()
            .filter(|s| args.suites.iter().any(|a| a == s))
            .collect();
        let stem = format!("{day}-{}", suites.join("-"));
        let mut id = stem.clone();
        let mut n = 1;
        while out.join("runs").join(&id).exists() {
            n += 1;
            id = format!("{stem}-{n}");
        }
        let run = RunInfo {
            id: id.clone(),
            date: sh("date -u '+%Y-%m-%d %H:%M UTC'")?.trim().to_owned(),
            command: anonymize.text(&args.line),
            runs: args.runs,
            state: args.state.clone(),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: sh("uname -r").unwrap_or_default().trim().to_owned(),
            git: sh("git describe --always --dirty 2>/dev/null")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        };
        Ok(Reports {
            run_dir: out.join("runs").join(&id),
            out,
            run,
            anonymize,
            previous,
            current: Vec::new(),
        })
    }
    /// Records a suite this run measured and writes both reports: this run's folder and the
    /// merged one.
    pub(crate) fn add(&mut self, mut result: SuiteResult) -> anyhow::Result<()> {
        result.run = Some(self.run.clone());
        let result = self.anonymize.result(result)?;
        self.current.retain(|r| r.suite != result.suite);
        self.current.push(result);
        self.write()
    }

    /// Every suite of the merged report: this run's, then the earlier ones it did not replace,
    /// in the order of `suites()` (unknown names last).
    fn merged(&self) -> Vec<&SuiteResult> {
        let mut all: Vec<&SuiteResult> = self.current.iter().collect();
        all.extend(
            self.previous
                .values()
                .filter(|p| self.current.iter().all(|c| c.suite != p.suite)),
        );
        let rank = |s: &str| suites().position(|x| x == s).unwrap_or(usize::MAX);
        all.sort_by(|a, b| (rank(&a.suite), &a.suite).cmp(&(rank(&b.suite), &b.suite)));
        all
    }

    fn write(&self) -> anyhow::Result<()> {
        let current: Vec<&SuiteResult> = self.current.iter().collect();
        std::fs::create_dir_all(&self.run_dir)
            .with_context(|| format!("create {}", self.run_dir.display()))?;
        let title = format!("ferry benchmark results: run `{}`", self.run.id);
        std::fs::write(
            self.run_dir.join("RESULTS.md"),
            markdown(&title, &current, false),
        )?;
        std::fs::write(self.run_dir.join("results.svg"), svg(&current))?;
        let json = serde_json::json!({
            "run": self.run,
            "runs": self.run.runs,
            "state": self.run.state,
            "suites": current,
        });
        std::fs::write(
            self.run_dir.join("results.json"),
            serde_json::to_string_pretty(&json)?,
        )?;

        let merged = self.merged();
        std::fs::write(
            self.out.join("RESULTS.md"),
            markdown("ferry benchmark results", &merged, true),
        )?;
        std::fs::write(self.out.join("results.svg"), svg(&merged))?;
        let json = serde_json::json!({
            "updated": self.run.date,
            "suites": merged,
        });
        std::fs::write(
            self.out.join("results.json"),
            serde_json::to_string_pretty(&json)?,
        )?;
        Ok(())
    }

    /// This run's report (its suites only), for stdout.
    pub(crate) fn run_markdown(&self) -> String {
        let current: Vec<&SuiteResult> = self.current.iter().collect();
        markdown(
            &format!("ferry benchmark results: run `{}`", self.run.id),
            &current,
            false,
        )
    }

    /// What was written, in words.
    pub(crate) fn wrote(&self) -> String {
        let kept: Vec<&str> = self
            .previous
            .keys()
            .map(String::as_str)
            .filter(|s| self.current.iter().all(|c| c.suite != *s))
            .collect();
        format!(
            "wrote {0}/RESULTS.md, results.json, results.svg (this run's suites{1}) and {2}/",
            self.out.display(),
            if kept.is_empty() {
                String::new()
            } else {
                format!(", and {} as recorded before", kept.join(", "))
            },
            self.run_dir.display()
        )
    }
}

/// The suites recorded under `out`: `results.json` first, then, for a suite it lacks, the newest
/// run folder (by name) that has it. A missing file is no error; an unreadable `results.json` is.
fn load_previous(out: &Path) -> anyhow::Result<BTreeMap<String, SuiteResult>> {
    let mut by_suite = BTreeMap::new();
    let mut folders: Vec<String> = std::fs::read_dir(out.join("runs"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().join("results.json").is_file())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    folders.sort();
    for folder in &folders {
        let path = out.join("runs").join(folder).join("results.json");
        match load_file(&path, Some(folder)) {
            Ok(suites) => {
                for s in suites {
                    by_suite.insert(s.suite.clone(), s);
                }
            }
            Err(e) => eprintln!("note: skipping {}: {e:#}", path.display()),
        }
    }
    let path = out.join("results.json");
    if path.exists() {
        let suites = load_file(&path, None).with_context(|| {
            format!(
                "{} cannot be read, so its suites cannot be kept; move it away to start afresh",
                path.display()
            )
        })?;
        for s in suites {
            by_suite.insert(s.suite.clone(), s);
        }
    }
    Ok(by_suite)
}

/// One `results.json`, old format or new.
fn load_file(path: &Path, folder: Option<&str>) -> anyhow::Result<Vec<SuiteResult>> {
    let text = std::fs::read_to_string(path)?;
    let v: serde_json::Value = serde_json::from_str(&text).context("JSON")?;
    let runs = v["runs"].as_u64().unwrap_or(0) as usize;
    let state = v["state"].as_str().unwrap_or("fresh");
    let Some(suites) = v["suites"].as_array() else {
        bail!("no \"suites\" list");
    };
    let mut out = Vec::new();
    for s in suites {
        let mut r: SuiteResult =
            serde_json::from_value(s.clone()).with_context(|| format!("suite {}", s["suite"]))?;
        if r.tools.is_empty() {
            // Older files: the tools in the order their samples ran.
            for sample in &r.samples {
                if r.tools.iter().all(|t| t.name != sample.tool) {
                    let shell = r.commands.get(&sample.tool).cloned().unwrap_or_default();
                    r.tools.push(Tool::new(&sample.tool, shell));
                }
            }
        }
        if r.run.is_none() {
            r.run = Some(RunInfo::legacy(folder, runs, state));
        }
        out.push(r);
    }
    Ok(out)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Per tool: walls, CPU, peak RSS; ratios to the suite's base tool computed round by round.
struct Row {
    tool: String,
    moves_bytes: bool,
    walls: Vec<f64>,
    /// Mean CPU seconds per run.
    cpu: f64,
    rss_mib: u64,
    /// base's wall / this tool's wall, per round; empty for the base itself and for a row
    /// that moves no bytes.
    ratios: Vec<f64>,
    /// The whole machine during this tool's runs: median busy and steal cores.
    machine: Option<(f64, f64)>,
}

impl Row {
    /// base's wall / this tool's wall over the rounds: (median, min, max).
    fn ratio(&self) -> Option<(f64, f64, f64)> {
        spread(&self.ratios)
    }

    /// This tool's wall / base's wall over the rounds: the base's throughput as a share of
    /// this tool's (median, min, max).
    fn share(&self) -> Option<(f64, f64, f64)> {
        spread(&self.ratios.iter().map(|r| 1.0 / r).collect::<Vec<_>>())
    }
}

/// (median, min, max) of `v`; None when it is empty.
pub(crate) fn spread(v: &[f64]) -> Option<(f64, f64, f64)> {
    let min = v.iter().copied().reduce(f64::min)?;
    let max = v.iter().copied().reduce(f64::max)?;
    Some((median(v.to_vec()), min, max))
}

fn rows(r: &SuiteResult) -> Vec<Row> {
    let by_round = |tool: &str| -> BTreeMap<usize, f64> {
        r.samples
            .iter()
            .filter(|s| s.tool == tool)
            .map(|s| (s.round, s.wall))
            .collect()
    };
    let base = by_round(&r.base);
    r.tools
        .iter()
        .map(|t| {
            let mine: Vec<&Sample> = r.samples.iter().filter(|s| s.tool == t.name).collect();
            let walls: Vec<f64> = mine.iter().map(|s| s.wall).collect();
            let cpu = mine.iter().map(|s| s.cpu).sum::<f64>() / mine.len().max(1) as f64;
            let ratios: Vec<f64> = if t.name != r.base && t.moves_bytes {
                by_round(&t.name)
                    .iter()
                    .filter_map(|(round, w)| Some(base.get(round)? / w))
                    .collect()
            } else {
                Vec::new()
            };
            let machine: Vec<_> = mine.iter().filter_map(|s| s.machine).collect();
            Row {
                machine: (!machine.is_empty()).then(|| {
                    (
                        median(machine.iter().map(|m| m.busy_cores).collect()),
                        median(machine.iter().map(|m| m.steal_cores).collect()),
                    )
                }),
                tool: t.name.clone(),
                moves_bytes: t.moves_bytes,
                walls,
                cpu,
                rss_mib: mine.iter().map(|s| s.rss_kib).max().unwrap_or(0) / 1024,
                ratios,
            }
        })
        .collect()
}

/// How a suite is measured, in words (also for suites recorded by an earlier run).
fn suite_note(suite: &str) -> &'static str {
    if let Some(note) = crate::wan::note(suite).or_else(|| crate::hls::note(suite)) {
        return note;
    }
    match suite {
        "pull" => {
            "Origin: `ferry serve` on 127.0.0.1, serving a synthetic model repo \
             (`scripts/synth-repo.py`: safetensors-like shards of seeded bytes plus small files, \
             some in subfolders) in the huggingface_hub cache layout; every run writes a fresh \
             huggingface_hub cache. `ferry pull` fsyncs every file and folder it writes and \
             verifies every file itself (sha256 for LFS files, the git blob id for the others). \
             `snapshot_download` checks sizes only; it is followed, inside the timing, by `sync` \
             of every file and folder it wrote. The second `ferry pull` runs on the complete \
             mirror the first one just left (it lists the repo and fetches nothing), so it has \
             no GB/s. After each run, outside the timing, every file of the snapshot is compared \
             with the origin by sha256, and the file list and `refs/main` must match."
        }
        "https" => {
            "The `big` file (same size and seed) from nginx on 127.0.0.1 over HTTPS only \
             (`ssl_protocols TLSv1.3`, sendfile on, `ssl_conf_command Options KTLS`), with a \
             leaf certificate for localhost and 127.0.0.1 signed by a throwaway CA that \
             `openssl` makes for each run. Every tool trusts that CA explicitly (ferry \
             `--ca-file`, curl `--cacert`, wget and aria2c `--ca-certificate`, hf_transfer and \
             axel `SSL_CERT_FILE`, which their OpenSSL reads); none runs with verification off. \
             Before the rounds, each tool fetches a small file from the same origin once, \
             untimed: a peer that cannot verify the origin is left out, with what it said. \
             Every run ends with its output durable (ferry fsyncs; peers are followed by `sync \
             FILE` inside the timing) and every output is sha256-checked against the source \
             after its run. `ferry` verifies the file against its sha256 while downloading \
             (except the row marked no sha256); the peers verify nothing."
        }
        "h3" => {
            "Origin: Debian's Caddy 2.6 on 127.0.0.1 (`tls internal`; HTTP/1.1, HTTP/2 and, on \
             the same port over UDP, HTTP/3 through quic-go), serving one file of `--wan-size` \
             bytes; every tool trusts Caddy's internal CA, except ngtcp2's `gtlsclient`, which \
             verifies no certificate. The base row is `ferry --http3`; `ferry` and `ferry \
             --http2` fetch the same file from the same server over TLS/TCP. Every run ends \
             with its output durable (ferry fsyncs; peers are followed by `sync FILE` inside \
             the timing) and every output is sha256-checked against the source after its run."
        }
        _ => {
            "Origin: nginx on 127.0.0.1. Every run ends with its output durable (ferry fsyncs; \
             peers are followed by `sync FILE...` inside the timing) and every output is \
             sha256-checked against the source after its run. `ferry` verifies every file \
             against its sha256 while downloading (except a row marked no sha256); the peers \
             verify nothing."
        }
    }
}

fn markdown(title: &str, results: &[&SuiteResult], link: bool) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# {title}\n\nGenerated by `scripts/bench.sh` (`ferry-bench`), as `bench/README.md` \
         says: the tools of a suite run in turn, round by round, after one warm-up round that \
         is not reported, against the same origin on loopback. Every run ends with its output \
         durable, and every output is checked against the source after its run, outside the \
         timing: a wrong byte stops the benchmark. Each run writes into a new directory, \
         spread by ext4's allocator (`chattr +T` on their parent), after the previous run's \
         is deleted: on this machine's journal-less ext4, files created where thousands were \
         just deleted cost every tool seconds of kernel time for skipping the freed inodes, \
         which depended on the runs before, not on the tool (`bench/src/main.rs`, \
         `Outputs`). The ratio column is the suite's ferry row's wall time over the tool's, \
         per round (below 1: ferry is faster). Rows named `ceiling:` are not tools: they \
         measure the network alone and the disk alone in every round, in turn with the tools, \
         and their ratio is ferry's wall time over the ceiling's (its inverse is ferry's \
         throughput as a share of that ceiling). The last column is the whole machine during the \
         tool's runs, in cores: busy (every process, the origin's and the kernel's included) \
         and steal (time the hypervisor gave this machine's CPUs to other guests).\n"
    );
    if link {
        let _ = writeln!(
            md,
            "A run may measure only some suites: each suite below says which run its figures \
             come from, and every run keeps its own report under `runs/`.\n"
        );
    }
    for r in results {
        let state = r.run.as_ref().map_or("fresh", |run| run.state.as_str());
        let _ = writeln!(
            md,
            "## {} ({} files, {:.2} GB, state {state})\n",
            r.suite,
            r.files,
            r.bytes as f64 / 1e9,
        );
        if let Some(run) = &r.run {
            let _ = writeln!(md, "{}\n", run.describe(link));
        }
        let _ = writeln!(md, "{}\n", suite_note(&r.suite));
        if let Some(c) = &r.ceilings {
            let network = match &c.network_tls {
                Some(tls) => format!(
                    "HTTPS network ceiling {:.2} GB/s (`curl --cacert CA.pem -o /dev/null` of the \
                     same file from the same nginx, {tls}, best of 3; {})",
                    c.network_gb_s,
                    c.ktls.as_deref().unwrap_or("kTLS not recorded")
                ),
                None => format!(
                    "network {:.2} GB/s (`curl -o /dev/null` from the same origin, best of 3)",
                    c.network_gb_s
                ),
            };
            let _ = writeln!(
                md,
                "Ceilings in the same run, before the rounds: {network}, O_DIRECT disk write \
                 {:.2} GB/s (fio, 1 MiB, iodepth 32), sha256 {:.2} GB/s per core (`openssl speed \
                 -evp sha256`). Where the table has `ceiling:` rows, the network and the disk \
                 were measured again in every round, and then the network, the sha256 of as \
                 many bytes from memory and the disk at once, side by side (the best this \
                 machine's cores can do for a verified, durable download).\n",
                c.disk_gb_s, c.sha256_gb_s
            );
        }
        let _ = writeln!(
            md,
            "| tool | runs | wall median (s) | min | max | GB/s | CPU s/GB | peak RSS (MiB) | {}/tool wall (median, min-max) | machine busy / steal (cores, median) |\n|---|---|---|---|---|---|---|---|---|---|",
            r.base
        );
        let gb = r.bytes as f64 / 1e9;
        let all = rows(r);
        for row in &all {
            let (med, min, max) = spread(&row.walls).unwrap_or((f64::NAN, f64::NAN, f64::NAN));
            let ratio = row.ratio().map_or("—".into(), |(m, lo, hi)| {
                format!("{m:.2} ({lo:.2}-{hi:.2})")
            });
            let (rate, cpu) = if row.moves_bytes {
                (format!("{:.3}", gb / med), format!("{:.2}", row.cpu / gb))
            } else {
                ("—".into(), format!("— ({:.2} CPU s)", row.cpu))
            };
            let machine = row.machine.map_or("—".into(), |(busy, steal)| {
                format!("{busy:.2} / {steal:.2}")
            });
            let _ = writeln!(
                md,
                "| {} | {} | {med:.2} | {min:.2} | {max:.2} | {rate} | {cpu} | {} | {ratio} | {machine} |",
                row.tool,
                row.walls.len(),
                row.rss_mib
            );
        }
        let backends = per_tool(r, |s| s.backend.as_deref());
        if !backends.is_empty() {
            let _ = writeln!(md, "\nBack-end ferry reported: {}.", listed(&backends));
        }
        let tls = per_tool(r, |s| s.tls.as_deref());
        let same = |(_, v): &(&str, &str)| tls.first().is_some_and(|(_, first)| first == v);
        // The disk ceiling makes no connection: "every tool" means every row that did.
        let connecting = r.tools.iter().filter(|t| t.name != crate::DISK_CEILING);
        if !tls.is_empty() && tls.len() == connecting.count() && tls.iter().all(same) {
            let _ = writeln!(
                md,
                "\nTLS every tool negotiated (nginx's log): {}.",
                tls[0].1
            );
        } else if !tls.is_empty() {
            let _ = writeln!(
                md,
                "\nTLS each tool negotiated (nginx's log): {}.",
                listed(&tls)
            );
        }
        let http = per_tool(r, |s| s.http.as_deref());
        if !http.is_empty() {
            let _ = writeln!(
                md,
                "\nHTTP version each tool used (the origin's log): {}.",
                listed(&http)
            );
        }
        if !r.left_out.is_empty() {
            let _ = writeln!(md, "\nLeft out:\n");
            for l in &r.left_out {
                let _ = writeln!(md, "- {}: {}", l.tool, l.reason.replace('`', "'"));
            }
        }
        if !r.failed.is_empty() {
            let _ = writeln!(md, "\nFailed runs (left out of the figures above):\n");
            for f in &r.failed {
                let _ = writeln!(
                    md,
                    "- {}, round {}: {}",
                    f.tool,
                    f.round,
                    f.error.replace('`', "'")
                );
            }
        }
        if !r.notes.is_empty() {
            let _ = writeln!(md, "\nAlso measured:\n");
            for n in &r.notes {
                let _ = writeln!(md, "- {n}");
            }
        }
        if !r.targets.is_empty() {
            let _ = writeln!(md, "\nTargets:\n");
            for t in &r.targets {
                let _ = writeln!(md, "- {}", target_line(t, &all, gb, &r.base));
            }
        }
        let _ = writeln!(
            md,
            "\nCommands (`{{OUT}}` is the output directory, `{{SCRATCH}}` the run's scratch \
             folder; `ferry` and `ferry-bench` are the binaries built from the checkout):\n"
        );
        for t in &r.tools {
            let mut shown = t.shell.clone();
            if shown.len() > 400 {
                let mut end = 400;
                while !shown.is_char_boundary(end) {
                    end -= 1;
                }
                shown.truncate(end);
                shown.push_str(" …");
            }
            let _ = writeln!(md, "- {}: `{}`", t.name, shown.replace('`', "'"));
        }
        let _ = writeln!(md);
    }
    md
}

/// In the tools' order, each value `what` gives, once per tool: (tool, value).
fn per_tool<'a>(
    r: &'a SuiteResult,
    what: impl Fn(&'a Sample) -> Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let mut seen = Vec::new();
    for t in &r.tools {
        for s in r.samples.iter().filter(|s| s.tool == t.name) {
            if let Some(v) = what(s)
                && !seen.contains(&(t.name.as_str(), v))
            {
                seen.push((t.name.as_str(), v));
            }
        }
    }
    seen
}

/// `tool: value; tool: value`.
fn listed(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(t, v)| format!("{t}: {v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A target and whether the medians meet it (`gb`: the suite's size, `base`: its base tool).
fn target_line(t: &Target, rows: &[Row], gb: f64, base: &str) -> String {
    let candidates: Vec<&str> = if t.best_of.is_empty() {
        vec![t.tool.as_str()]
    } else {
        t.best_of.iter().map(String::as_str).collect()
    };
    let Some(row) = rows
        .iter()
        .filter(|r| candidates.contains(&r.tool.as_str()) && !r.walls.is_empty())
        .min_by(|a, b| median(a.walls.clone()).total_cmp(&median(b.walls.clone())))
    else {
        return format!("{}: not measured.", t.text);
    };
    let best = if t.best_of.is_empty() {
        String::new()
    } else {
        format!(" against {} (the best peer)", row.tool)
    };
    let verdict = |met: bool| if met { "**met**" } else { "**not met**" };
    if let (Some(limit), Some((m, lo, hi))) = (t.max_ratio, row.ratio()) {
        return format!(
            "{}: median {m:.2}x{best} ({lo:.2}-{hi:.2} over {}), at most {limit:.2}x — {}.",
            t.text,
            rounds(row.walls.len()),
            verdict(m <= limit)
        );
    }
    let base_walls = rows
        .iter()
        .find(|r| r.tool == base && !r.walls.is_empty())
        .map(|r| r.walls.clone());
    if let (Some(limit), Some(base_walls)) = (t.max_extra_s, base_walls) {
        let (m, b) = (median(row.walls.clone()), median(base_walls));
        return format!(
            "{}: median {m:.2} s against {b:.2} s for `{base}` without the fault, {:+.2} s \
             (over {}), at most {limit:.2} s more — {}.",
            t.text,
            m - b,
            rounds(row.walls.len()),
            verdict(m - b <= limit)
        );
    }
    if let (Some(limit), Some((m, lo, hi))) = (t.max_times, row.share()) {
        return format!(
            "{}: median {m:.2}x the time of `{base}` ({lo:.2}-{hi:.2} over {}), at most \
             {limit:.2}x — {}.",
            t.text,
            rounds(row.ratios.len()),
            verdict(m <= limit)
        );
    }
    if let (Some(limit), Some(link)) = (t.min_share, t.link_rate) {
        let shares: Vec<f64> = row
            .walls
            .iter()
            .map(|w| gb * 1e9 / w / link as f64)
            .collect();
        if let Some((m, lo, hi)) = spread(&shares) {
            return format!(
                "{}: median {m:.2} ({lo:.2}-{hi:.2} over {}), at least {limit:.2} — {}.",
                t.text,
                rounds(shares.len()),
                verdict(m >= limit)
            );
        }
    }
    if let (Some(limit), Some((m, lo, hi))) = (t.min_share, row.share()) {
        return format!(
            "{}: median {m:.2} ({lo:.2}-{hi:.2} over {}), at least {limit:.2} — {}.",
            t.text,
            rounds(row.ratios.len()),
            verdict(m >= limit)
        );
    }
    if let Some(limit) = t.max_cpu_s_gb {
        let per_gb = row.cpu / gb;
        return format!(
            "{}: {per_gb:.2} CPU s/GB (mean over {}), at most {limit:.2} — {}.",
            t.text,
            rounds(row.walls.len()),
            verdict(per_gb <= limit)
        );
    }
    if let (Some(limit), Some((m, _, max))) = (t.max_wall_s, spread(&row.walls)) {
        return format!(
            "{}: median {m:.2} s (max {max:.2} s over {}), under {limit:.2} s — {}.",
            t.text,
            rounds(row.walls.len()),
            verdict(m < limit)
        );
    }
    format!("{}: no figure to compare.", t.text)
}

fn rounds(n: usize) -> String {
    if n == 1 {
        "1 round".into()
    } else {
        format!("{n} rounds")
    }
}

/// A horizontal bar chart of median GB/s per tool, one panel per suite.
fn svg(results: &[&SuiteResult]) -> String {
    let bar_h = 18.0;
    let width = 760.0;
    let label_w = 230.0;
    let mut y = 10.0;
    let mut body = String::new();
    for r in results {
        let rows = rows(r);
        let rates: Vec<Option<f64>> = rows
            .iter()
            .map(|row| {
                row.moves_bytes
                    .then(|| r.bytes as f64 / median(row.walls.clone()) / 1e9)
            })
            .collect();
        let max = rates.iter().flatten().copied().fold(0.01, f64::max);
        let _ = writeln!(
            body,
            r#"<text x="10" y="{:.0}" font-weight="bold">{} ({:.1} GB, median GB/s, durable)</text>"#,
            y + 14.0,
            r.suite,
            r.bytes as f64 / 1e9
        );
        y += 24.0;
        for (row, rate) in rows.iter().zip(&rates) {
            let color = if row.tool.starts_with("ferry") {
                "#2b7bb9"
            } else {
                "#999999"
            };
            let (w, text) = match rate {
                Some(rate) => ((width - label_w - 70.0) * rate / max, format!("{rate:.3}")),
                None => (
                    0.0,
                    format!("no bytes moved: {:.2} s median", median(row.walls.clone())),
                ),
            };
            let _ = writeln!(
                body,
                r#"<text x="10" y="{:.0}">{}</text><rect x="{label_w}" y="{y:.0}" width="{w:.1}" height="{:.0}" fill="{color}"/><text x="{:.1}" y="{:.0}">{text}</text>"#,
                y + 13.0,
                xml_escape(&row.tool),
                bar_h - 4.0,
                label_w + w + 5.0,
                y + 13.0
            );
            y += bar_h;
        }
        y += 14.0;
    }
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y:.0}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
{body}</svg>
"#
    )
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FailedRun, LeftOut};

    #[test]
    fn no_absolute_path_of_the_machine_that_ran_it_reaches_a_report() {
        let repo = crate::repo_dir();
        let ferry = repo.join("target/release/ferry");
        let harness = std::env::current_exe().expect("current_exe");
        let scratch = tempfile::tempdir().expect("tmp");
        let ca = scratch.path().join("pki/ca.pem");
        let items: Vec<crate::Item> = ["a.bin", "b.bin"]
            .iter()
            .map(|n| crate::Item {
                name: (*n).into(),
                sha256: "00".repeat(32),
            })
            .collect();
        // The lines the harness runs, as it makes them: a list of files (lists in the scratch
        // folder), one file over HTTPS (the CA in the scratch folder), the ceilings (the
        // harness's own path).
        let url = "https://localhost:1/files";
        let (mut tools, mut left_out) =
            crate::tools("small", &items, url, scratch.path(), None, &ferry).expect("tools");
        let (https, https_left_out) =
            crate::tools("https", &items[..1], url, scratch.path(), Some(&ca), &ferry)
                .expect("tools");
        tools.extend(https);
        left_out.extend(https_left_out);
        tools.extend(
            crate::ceiling_rows(&format!("{url}/a.bin"), 1 << 30, Some(&ca)).expect("ceilings"),
        );
        let mut result = SuiteResult::new("https", 1 << 30, 1, tools);
        // What tools print when they fail names files too.
        left_out.push(LeftOut {
            tool: "axel".into(),
            reason: format!("cannot read {}", ca.display()),
        });
        result.left_out = left_out;
        result.failed.push(FailedRun {
            tool: "wget".into(),
            round: 1,
            error: format!(
                "{}/out-https/3/a.bin: No space left on device",
                scratch.path().display()
            ),
        });
        // The arguments as given: the report's folder and the scratch folder's parent, absolute.
        let (out, dir) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let args = crate::Args {
            line: format!(
                "--out {} --dir {} --suites https",
                out.path().display(),
                dir.path().display()
            ),
            suites: vec!["https".into()],
            runs: 1,
            big: 1 << 30,
            shard: Some(1 << 30),
            shards: 4,
            wan_size: 1 << 30,
            state: "fresh".into(),
            dir: Some(dir.path().to_owned()),
            out: out.path().to_owned(),
        };
        let raw = format!(
            "{} {}",
            serde_json::to_string(&result).expect("json"),
            args.line
        );
        let paths = [
            ferry.to_string_lossy().into_owned(),
            harness.to_string_lossy().into_owned(),
            scratch.path().to_string_lossy().into_owned(),
            repo.to_string_lossy().into_owned(),
            out.path().to_string_lossy().into_owned(),
            dir.path().to_string_lossy().into_owned(),
        ];
        assert!(
            paths.iter().all(|p| raw.contains(p.as_str())),
            "the harness's own lines name every path (else this test checks nothing): {raw}"
        );

        // As main() makes it, then every file the reports are written to.
        let anonymize = Anonymize::new(&ferry, &harness, scratch.path(), &repo)
            .with(out.path(), "{REPORTS}", false)
            .with(dir.path(), "{DIR}", false)
            .with(Path::new("bench"), "{NOT-A-MACHINE-PATH}", false);
        let mut reports = Reports::open(&args, anonymize).expect("open");
        reports.add(result).expect("write the reports");
        let run_dir = out.path().join("runs").join(&reports.run.id);
        let tmp = std::env::temp_dir().to_string_lossy().into_owned();
        let mut read = 0;
        for folder in [out.path(), run_dir.as_path()] {
            for name in ["RESULTS.md", "results.json", "results.svg"] {
                let text = std::fs::read_to_string(folder.join(name)).expect("a report");
                read += 1;
                for p in paths.iter().chain([&tmp]) {
                    assert!(!text.contains(p.as_str()), "{name} names {p}:\n{text}");
                }
            }
        }
        assert_eq!(read, 6);
        let json = std::fs::read_to_string(run_dir.join("results.json")).expect("results.json");
        assert!(
            json.contains("\"ferry get -i '{SCRATCH}/small.ferry' -o '{OUT}' -q\""),
            "{json}"
        );
        assert!(json.contains("--ca-file '{SCRATCH}/pki/ca.pem'"), "{json}");
        assert!(json.contains("ferry-bench sha256-from-memory"), "{json}");
        assert!(
            json.contains("--out {REPORTS} --dir {DIR} --suites https"),
            "{json}"
        );
        assert!(
            !json.contains("NOT-A-MACHINE-PATH"),
            "a relative path is kept: {json}"
        );
    }

    /// A `results.json` as written before runs were recorded per suite.
    fn legacy(suite: &str, bytes: u64) -> String {
        serde_json::json!({
            "runs": 5,
            "state": "fresh",
            "suites": [{
                "suite": suite,
                "bytes": bytes,
                "files": 1,
                "ceilings": null,
                "commands": {"ferry": "ferry get", "curl": "curl"},
                "samples": [
                    {"tool": "ferry", "round": 1, "wall": 1.0, "cpu": 1.0, "rss_kib": 1024},
                    {"tool": "curl", "round": 1, "wall": 2.0, "cpu": 1.0, "rss_kib": 1024},
                ],
            }],
        })
        .to_string()
    }

    #[test]
    fn earlier_suites_come_from_results_json_then_the_newest_run_folder() {
        let out = tempfile::tempdir().expect("tempdir");
        std::fs::write(out.path().join("results.json"), legacy("big", 1)).expect("write");
        for (folder, bytes) in [("2026-01-01-small", 10), ("2026-01-02-small-repo", 20)] {
            let dir = out.path().join("runs").join(folder);
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join("results.json"), legacy("small", bytes)).expect("write");
        }
        let dir = out.path().join("runs/2026-01-03-big");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("results.json"), legacy("big", 2)).expect("write");

        let got = load_previous(out.path()).expect("load");
        assert_eq!(got.keys().collect::<Vec<_>>(), ["big", "small"]);
        // results.json wins over any run folder; among folders, the newest.
        assert_eq!(got["big"].bytes, 1);
        assert_eq!(got["small"].bytes, 20);
        let run = got["small"].run.as_ref().expect("run");
        assert_eq!(
            (run.id.as_str(), run.date.as_str()),
            ("2026-01-02-small-repo", "2026-01-02")
        );
        assert!(got["big"].run.as_ref().expect("run").id.is_empty());
        // Older files name their tools only in samples and commands: in the order they ran.
        let tools: Vec<&str> = got["big"].tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(tools, ["ferry", "curl"]);
        let md = markdown("t", &got.values().collect::<Vec<_>>(), true);
        assert!(md.contains("From an earlier run: `ferry-bench --runs 5 --state fresh`."));
        assert!(
            md.contains("[runs/2026-01-02-small-repo/RESULTS.md]"),
            "{md}"
        );
        assert!(md.contains("| curl | 1 | 2.00 |"), "{md}");
    }

    #[test]
    fn an_unreadable_results_json_is_an_error_not_overwritten() {
        let out = tempfile::tempdir().expect("tempdir");
        std::fs::write(out.path().join("results.json"), "{broken").expect("write");
        assert!(load_previous(out.path()).is_err());
    }

    #[test]
    fn a_best_peer_target_is_judged_against_the_fastest_peer() {
        let mut r = SuiteResult::new(
            "https",
            1,
            1,
            ["ferry", "curl", "aria2c"]
                .iter()
                .map(|t| Tool::new(t, String::new()))
                .collect(),
        );
        for (tool, wall) in [("ferry", 1.0), ("curl", 2.0), ("aria2c", 4.0)] {
            r.samples.push(Sample {
                tool: tool.into(),
                round: 1,
                wall,
                cpu: 1.0,
                rss_kib: 1024,
                backend: None,
                bytes_fetched: None,
                tls: Some("TLSv1.3 TLS_AES_256_GCM_SHA384".into()),
                http: Some(
                    if tool == "aria2c" {
                        "HTTP/1.1"
                    } else {
                        "HTTP/2.0"
                    }
                    .into(),
                ),
                machine: None,
            });
        }
        r.targets = vec![Target {
            text: "goal".into(),
            tool: "the best peer".into(),
            best_of: vec!["curl".into(), "aria2c".into()],
            max_ratio: Some(0.4),
            ..Target::default()
        }];
        r.left_out = vec![LeftOut {
            tool: "axel".into(),
            reason: "no".into(),
        }];
        r.failed = vec![FailedRun {
            tool: "aria2c".into(),
            round: 3,
            error: "failed: Segmentation fault".into(),
        }];
        let md = markdown("t", &[&r], false);
        assert!(
            md.contains("goal: median 0.50x against curl (the best peer)"),
            "{md}"
        );
        assert!(md.contains("**not met**"), "{md}");
        assert!(
            md.contains("TLS every tool negotiated (nginx's log): TLSv1.3 TLS_AES_256_GCM_SHA384."),
            "{md}"
        );
        assert!(
            md.contains(
                "HTTP version each tool used (the origin's log): ferry: HTTP/2.0; curl: HTTP/2.0; \
                 aria2c: HTTP/1.1."
            ),
            "{md}"
        );
        assert!(md.contains("- axel: no"), "{md}");
        assert!(
            md.contains("- aria2c, round 3: failed: Segmentation fault"),
            "{md}"
        );
    }

    #[test]
    fn a_ceiling_share_and_a_cpu_target_are_judged_round_by_round() {
        let mut r = SuiteResult::new(
            "big",
            2_000_000_000,
            1,
            vec![
                Tool::new("ferry", String::new()),
                Tool::new("ceiling", String::new()),
            ],
        );
        // ferry's share of the ceiling per round: 0.9, 0.6, 0.95, 0.5. The median of the shares
        // is 0.75; the inverse of the median of the ratios would be 0.72.
        let rounds = [
            (1, 10.0, 9.0),
            (2, 10.0, 6.0),
            (3, 10.0, 9.5),
            (4, 10.0, 5.0),
        ];
        for (round, ferry, ceiling) in rounds {
            for (tool, wall) in [("ferry", ferry), ("ceiling", ceiling)] {
                r.samples.push(Sample {
                    tool: tool.into(),
                    round,
                    wall,
                    cpu: 2.4,
                    rss_kib: 1024,
                    backend: None,
                    bytes_fetched: None,
                    tls: None,
                    http: None,
                    machine: None,
                });
            }
        }
        let share = |min| Target {
            text: "share".into(),
            tool: "ceiling".into(),
            min_share: Some(min),
            ..Target::default()
        };
        let cpu = |max| Target {
            text: "cpu".into(),
            tool: "ferry".into(),
            max_cpu_s_gb: Some(max),
            ..Target::default()
        };
        r.targets = vec![share(0.75), share(0.85), cpu(1.2), cpu(1.0)];
        let md = markdown("t", &[&r], false);
        let lines: Vec<&str> = md
            .lines()
            .filter(|l| l.starts_with("- share") || l.starts_with("- cpu"))
            .collect();
        assert_eq!(
            lines,
            [
                "- share: median 0.75 (0.50-0.95 over 4 rounds), at least 0.75 — **met**.",
                "- share: median 0.75 (0.50-0.95 over 4 rounds), at least 0.85 — **not met**.",
                "- cpu: 1.20 CPU s/GB (mean over 4 rounds), at most 1.20 — **met**.",
                "- cpu: 1.20 CPU s/GB (mean over 4 rounds), at most 1.00 — **not met**.",
            ],
            "{md}"
        );
    }

    #[test]
    fn a_fault_target_is_the_difference_of_the_medians() {
        let mut r = SuiteResult::new(
            "wan-80-frozen",
            1_000_000_000,
            1,
            vec![
                Tool::new("ferry", String::new()),
                Tool::new("ferry, faulty", String::new()),
            ],
        );
        // Medians 10.0 and 12.5 s, though no round differs by 2.5 s.
        for (round, ferry, faulty) in [(1, 9.0, 12.5), (2, 10.0, 11.0), (3, 11.0, 14.0)] {
            for (tool, wall) in [("ferry", ferry), ("ferry, faulty", faulty)] {
                r.samples.push(Sample {
                    tool: tool.into(),
                    round,
                    wall,
                    cpu: 1.0,
                    rss_kib: 1024,
                    backend: None,
                    bytes_fetched: None,
                    tls: None,
                    http: None,
                    machine: None,
                });
            }
        }
        let extra = |max| Target {
            text: "fault".into(),
            tool: "ferry, faulty".into(),
            max_extra_s: Some(max),
            ..Target::default()
        };
        r.targets = vec![extra(3.0), extra(2.0)];
        let md = markdown("t", &[&r], false);
        let lines: Vec<&str> = md.lines().filter(|l| l.starts_with("- fault")).collect();
        assert_eq!(
            lines,
            [
                "- fault: median 12.50 s against 10.00 s for `ferry` without the fault, +2.50 s \
                 (over 3 rounds), at most 3.00 s more — **met**.",
                "- fault: median 12.50 s against 10.00 s for `ferry` without the fault, +2.50 s \
                 (over 3 rounds), at most 2.00 s more — **not met**.",
            ],
            "{md}"
        );
    }
}
