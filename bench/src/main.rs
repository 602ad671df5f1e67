//! `ferry-bench`: ferry against every peer, side by side, as `bench/README.md` says.
//!
//! For each download suite (`big`, `https`, `repo`, `small`) it generates seeded data, serves it
//! from nginx on loopback (read once first, so the server side is warm; `https`: the `big` file
//! over TLS 1.3 only, `https.rs`; the `wan-*` suites through a relay emulating a WAN path,
//! `wan.rs`; the origins are `origin.rs`'s), and runs ferry and each peer in turn,
//! round after round (A B C A B C ...), so every ratio compares tools measured in the same minutes.
//! Every timed command ends with its output durable: ferry fsyncs before it exits; a peer is
//! followed by `sync FILE...` inside the timed command. Every output is sha256-checked against the
//! source after its run, outside the timing; a wrong byte aborts the benchmark. The first round is
//! a warm-up, not reported. The ceilings (network, disk, sha256) are measured in the same run. The
//! `pull` suite (`pull.rs`) mirrors a model repo from `ferry serve` with `ferry pull` and with
//! huggingface_hub's `snapshot_download`, the same way (`wan-80-repo` too, through the relay).
//! Results go to a markdown report, a JSON file and an SVG chart (`report.rs`), merged by suite
//! with the suites an earlier run recorded, and to this run's own folder under `runs/`.
//!
//! The memory state (`--state fresh|steady`, bench/README.md): `fresh` deletes each output after its
//! run, which returns its page cache to free memory; `steady` first fills free memory with clean
//! page cache from a filler file (written with O_DIRECT, then read) and tops it up before every
//! run, as on a server that has been up for days.
//!
//! This harness measures; it asserts nothing about speed (targets are read off the report).
//!
//! Long (some 1,100 lines) because every loopback suite's tools and their exact shell lines are
//! one table here, where a reader compares them; the origins and the suites with their own flow
//! have their own files (`origin.rs`, `https.rs`, `pull.rs`, `wan.rs`).

mod hls;
mod https;
mod mirror;
mod origin;
mod pull;
mod report;
mod swarm;
mod wan;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use ferry_testkit::{sha256_file, write_data};

use crate::origin::Origin;

const USAGE: &str = "usage: ferry-bench [--suites big,https,repo,small,pull,wan,wan-all,...] \
[--runs 5] [--big 8G] [--shard 2G] [--shards 4] [--wan-size 1G] [--state fresh|steady] [--dir DIR] \
[--out DIR]";

/// The suites a run without `--suites` runs.
const DEFAULT_SUITES: [&str; 5] = ["big", "https", "repo", "small", "pull"];

/// Every suite, in the order they run and are reported: the default ones, then the `wan-*`
/// suites (`wan.rs`), which run only when asked for: `--suites wan` names the three big-file
/// paths over plain HTTP, `wan-all` every one; then [`OTHER_SUITES`].
pub(crate) fn suites() -> impl Iterator<Item = &'static str> {
    DEFAULT_SUITES
        .into_iter()
        .chain(wan::ALL)
        .chain(OTHER_SUITES)
}

/// Suites that run only when named: `h3` (HTTP/3 against TCP from Caddy, and ngtcp2's
/// client), `mirror` (`ferry serve --upstream` and its clients, `mirror.rs`), `hls-80` and
/// `hls-80-aes` (an HLS stream through the relay, `hls.rs`), `swarm` (a fleet of `ferry pull
/// --swarm` peers on a network of namespaces, `swarm.rs`; `swarm-100` on slower links).
const OTHER_SUITES: [&str; 6] = [
    "h3",
    mirror::SUITE,
    hls::SUITE,
    hls::AES,
    swarm::SUITE,
    swarm::SLOW,
];

struct Args {
    /// The arguments as given, for the report.
    line: String,
    suites: Vec<String>,
    runs: usize,
    big: u64,
    /// The shard size of `repo`, `pull` and `wan-80-repo` as given; see [`Args::shard`].
    shard: Option<u64>,
    /// How many shards those suites' repos have.
    shards: u32,
    /// The file of the `wan-*` suites.
    wan_size: u64,
    state: String,
    dir: Option<PathBuf>,
    out: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        line: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        suites: DEFAULT_SUITES.iter().map(|s| s.to_string()).collect(),
        runs: 5,
        big: 8 << 30,
        shard: None,
        shards: 4,
        wan_size: 1 << 30,
        state: "fresh".into(),
        dir: None,
        out: PathBuf::from("bench"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--suites" => {
                a.suites = value()?
                    .split(',')
                    .flat_map(|s| match s {
                        "wan" => wan::SUITES.iter().map(|w| w.to_string()).collect(),
                        "wan-all" => wan::ALL.iter().map(|w| w.to_string()).collect(),
                        other => vec![other.to_owned()],
                    })
                    .collect()
            }
            "--wan-size" => a.wan_size = parse_size(&value()?)?,
            "--runs" => a.runs = value()?.parse().context("--runs")?,
            "--big" => a.big = parse_size(&value()?)?,
            "--shard" => a.shard = Some(parse_size(&value()?)?),
            "--shards" => a.shards = value()?.parse().context("--shards")?,
            "--state" => a.state = value()?,
            "--dir" => a.dir = Some(PathBuf::from(value()?)),
            "--out" => a.out = PathBuf::from(value()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if a.shards == 0 {
        bail!("--shards is at least 1");
    }
    if !matches!(a.state.as_str(), "fresh" | "steady") {
        bail!("--state is fresh or steady");
    }
    if let Some(s) = a.suites.iter().find(|s| !suites().any(|k| k == s.as_str())) {
        bail!(
            "unknown suite {s:?} ({})",
            suites().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(a)
}

impl Args {
    /// The shard size of `suite`'s repo: `--shard` where given, else 2 GiB, or for
    /// `wan-80-repo` issue 29's 512 MiB.
    fn shard(&self, suite: &str) -> u64 {
        let default = if wan::path(suite).is_some() {
            wan::REPO_SHARD
        } else if suite == mirror::SUITE {
            mirror::SHARD
        } else if suite == swarm::SUITE {
            swarm::SHARD
        } else if suite == swarm::SLOW {
            swarm::SLOW_SHARD
        } else {
            2 << 30
        };
        self.shard.unwrap_or(default)
    }
}

fn parse_size(s: &str) -> anyhow::Result<u64> {
    let (num, mult) = match s.chars().last() {
        Some('G' | 'g') => (&s[..s.len() - 1], 1u64 << 30),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('K' | 'k') => (&s[..s.len() - 1], 1 << 10),
        _ => (s, 1),
    };
    Ok(num.parse::<u64>().with_context(|| format!("size {s:?}"))? * mult)
}

/// One file of a suite: its name under the served root and its sha256.
struct Item {
    name: String,
    sha256: String,
}

/// A tool's command for a suite, as a shell line (`{OUT}` is the output directory).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Tool {
    name: String,
    shell: String,
    /// False for a run that moves no bytes (a second pull of a complete mirror): the report
    /// shows its wall time, but no GB/s, CPU s/GB or ratio.
    #[serde(default = "yes")]
    moves_bytes: bool,
    /// A ceiling measured in every round beside the tools (the network or the disk alone):
    /// its output is not a download to check, and it is never a peer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    ceiling: bool,
}

impl Tool {
    /// A tool ferry is compared with: neither one of ferry's own rows nor a ceiling.
    fn is_peer(&self) -> bool {
        !self.name.starts_with("ferry") && !self.ceiling
    }
}

fn yes() -> bool {
    true
}

impl Tool {
    fn new(name: &str, shell: String) -> Tool {
        Tool {
            name: name.into(),
            shell,
            moves_bytes: true,
            ceiling: false,
        }
    }

    fn ceiling(name: &str, shell: String) -> Tool {
        Tool {
            ceiling: true,
            ..Tool::new(name, shell)
        }
    }
}

/// The name of the per-round network ceiling row.
const NETWORK_CEILING: &str = "ceiling: network (curl -o /dev/null)";
/// The name of the per-round disk ceiling row (it makes no connection).
const DISK_CEILING: &str = "ceiling: disk (fio, O_DIRECT)";
/// The name of the per-round row that runs the three parts of a verified, durable download at
/// once, each on its own, none waiting for another.
const PARTS_CEILING: &str = "ceiling: network + sha256 + disk, side by side";
/// The hidden command that hashes bytes from memory for [`PARTS_CEILING`].
const HASH_FROM_MEMORY: &str = "sha256-from-memory";

/// The rows that measure the ceilings again in every round, beside the tools: the network
/// alone (`curl -o /dev/null` of `url`) and the disk alone (fio, O_DIRECT, `bytes` written and
/// fsynced). A ceiling measured once, minutes away from a tool's run, on a machine whose
/// network and disk rates drift by 1.5x within an hour, says little about that run; the same
/// round's does.
///
/// And the three parts of a verified, durable download run side by side (`PARTS_CEILING`):
/// the network alone, the sha256 of as many bytes from memory on one core (this harness's
/// hidden `sha256-from-memory`, the same sha2 crate as ferry), and the disk alone, all started
/// at once, timed until the last ends. No part waits for another, as none can in a download
/// (the hash follows the bytes received, the disk takes them as they come), so this is what
/// this machine's cores can do for the whole at best, with the kernel's scheduler sharing them:
/// a download at that wall time adds nothing but its parts.
fn ceiling_rows(url: &str, bytes: u64, ca: Option<&Path>) -> anyhow::Result<Vec<Tool>> {
    let disk = format!(
        "{} --end_fsync=1 --output=/dev/null",
        disk_ceiling("{OUT}/fio.tmp", (bytes >> 20).max(1))
    );
    let me = std::env::current_exe().context("the harness's own path")?;
    let hash = format!("'{}' {HASH_FROM_MEMORY} {bytes} >/dev/null", me.display());
    let parts = format!(
        "{} & n=$!; {hash} & h=$!; {disk} & d=$!; \
         wait $n; a=$?; wait $h; b=$?; wait $d; c=$?; [ \"$a$b$c\" = 000 ]",
        network_ceiling(url, ca)
    );
    Ok(vec![
        Tool::ceiling(NETWORK_CEILING, network_ceiling(url, ca)),
        Tool::ceiling(DISK_CEILING, disk),
        Tool::ceiling(PARTS_CEILING, parts),
    ])
}

/// `sha256-from-memory BYTES`: hashes `BYTES` bytes of a 1 MiB buffer in memory, fed 1 MiB at
/// a time as ferry's verifier is fed, and prints the digest (so the work cannot be left out).
fn hash_from_memory(bytes: &str) -> anyhow::Result<()> {
    use sha2::Digest;
    let mut left: u64 = bytes
        .parse()
        .with_context(|| format!("{HASH_FROM_MEMORY} {bytes}"))?;
    let block: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut hasher = sha2::Sha256::new();
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        hasher.update(&block[..n]);
        left -= n as u64;
    }
    println!("{}", hex::encode(hasher.finalize()));
    Ok(())
}

/// The network alone: `url` received and thrown away by curl (trusting `ca` over HTTPS).
fn network_ceiling(url: &str, ca: Option<&Path>) -> String {
    format!("curl -sS -L{} -o /dev/null '{url}'", trust(ca, "--cacert "))
}

/// The disk alone: fio writing `size_mib` MiB to `file` with O_DIRECT, 1 MiB at a time, 32 in
/// flight (bench/README.md's disk ceiling).
fn disk_ceiling(file: &str, size_mib: u64) -> String {
    format!(
        "fio --name=w --rw=write --bs=1M --direct=1 --ioengine=io_uring --iodepth=32 \
         --filename='{file}' --size={size_mib}M"
    )
}

/// The tools a suite's ferry is compared with: neither ferry's own rows nor the ceilings.
fn peers(tools: &[Tool]) -> Vec<String> {
    tools
        .iter()
        .filter(|t| t.is_peer())
        .map(|t| t.name.clone())
        .collect()
}

/// The `h3` suite's row every other is compared with, and ngtcp2's client.
const H3_BASE: &str = "ferry --http3";
const NGTCP2: &str = "gtlsclient (ngtcp2)";

/// Issue 30's goals for `h3`, read off the report: over HTTP/3 at least 0.7x the throughput of
/// ferry over TLS/TCP from the same server, and ahead of ngtcp2's client.
fn h3_targets() -> Vec<report::Target> {
    vec![
        report::Target {
            text: "`ferry --http3`'s throughput as a share of `ferry` over TLS/TCP (HTTP/1.1) \
                   from the same Caddy, round by round"
                .into(),
            tool: "ferry".into(),
            min_share: Some(0.7),
            ..Default::default()
        },
        report::Target {
            text: "`ferry --http3` ahead of ngtcp2's HTTP/3 client on the same file".into(),
            tool: NGTCP2.into(),
            max_ratio: Some(1.0),
            ..Default::default()
        },
    ]
}

/// Issue 3's goals for `big`, read off the report: 0.4x the best peer's wall time, 0.85x the
/// network ceiling's throughput (round by round), 1.0 CPU s/GB.
fn big_targets(tools: &[Tool]) -> Vec<report::Target> {
    let peers = peers(tools);
    vec![
        report::Target {
            text: format!(
                "`ferry` (durable, verified) takes at most 0.4x the wall time of the best peer \
                 (the fastest median of {})",
                peers.join(", ")
            ),
            tool: "the best peer".into(),
            best_of: peers,
            max_ratio: Some(0.4),
            ..Default::default()
        },
        report::Target {
            text: "`ferry`'s throughput as a share of the network ceiling measured in the same \
                   round"
                .into(),
            tool: NETWORK_CEILING.into(),
            min_share: Some(0.85),
            ..Default::default()
        },
        report::Target {
            text: "`ferry`'s client CPU per GB".into(),
            tool: "ferry".into(),
            max_cpu_s_gb: Some(1.0),
            ..Default::default()
        },
    ]
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Sample {
    tool: String,
    round: usize,
    wall: f64,
    cpu: f64,
    rss_kib: u64,
    /// The back-end ferry reported (`ferry pull --json`), where it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backend: Option<String>,
    /// Bytes ferry reported as fetched (`ferry pull --json`), where it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bytes_fetched: Option<u64>,
    /// The TLS version and cipher the origin logged for this run's requests (HTTPS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tls: Option<String>,
    /// The HTTP versions the origin logged for this run's requests (HTTPS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<String>,
    /// The whole machine during the run (absent in runs recorded before it was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    machine: Option<Machine>,
}

/// A peer's run that failed (a crash, an error exit): left out of the figures and listed in
/// the report. One peer's bad run does not throw away the rounds of every tool; a failure of
/// ferry or of a ceiling still stops the suite.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct FailedRun {
    tool: String,
    round: usize,
    error: String,
}

/// A tool a suite does not run, and why (printed in the report).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct LeftOut {
    tool: String,
    reason: String,
}

/// What `timed` measured of one command.
struct Timed {
    wall: f64,
    cpu: f64,
    rss_kib: u64,
    /// The whole machine while it ran (None where /proc/stat cannot be read).
    machine: Option<Machine>,
    stdout: String,
}

/// How busy the whole machine was during a run, in cores (mean over the run's wall time):
/// every process's CPU, the origin's and the kernel's included, and the time the hypervisor
/// gave this machine's CPUs to someone else (steal). On this shared VM the same work costs up
/// to a third more CPU from one round to the next; these say which rounds that was.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Machine {
    pub(crate) busy_cores: f64,
    pub(crate) steal_cores: f64,
}

/// Busy and steal jiffies of all CPUs so far (`/proc/stat`, in USER_HZ: 100 per second on
/// every Linux ABI).
pub(crate) fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_cpu_jiffies(stat.lines().next()?)
}

/// `cpu  user nice system idle iowait irq softirq steal ...` -> (busy, steal); busy is user,
/// nice, system, irq and softirq (not idle, iowait or steal).
fn parse_cpu_jiffies(line: &str) -> Option<(u64, u64)> {
    let mut f = line.split_whitespace();
    if f.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = f.take(8).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = v[..] else {
        return None;
    };
    Some((user + nice + system + irq + softirq, steal))
}

/// Runs `sh -c line` under `/usr/bin/time`: wall seconds, CPU seconds (user + sys of every
/// process the line starts), peak RSS (KiB, of the largest of them), and its stdout.
fn timed(line: &str) -> anyhow::Result<Timed> {
    let stats = tempfile::NamedTempFile::new()?;
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "%U %S %M", "-o"])
        .arg(stats.path())
        .args(["sh", "-c", line]);
    // Every origin is on loopback, and each tool is told which CA to trust.
    ferry_testkit::env::scrub(&mut cmd);
    let before = cpu_jiffies();
    let start = Instant::now();
    let out = cmd
        .output()
        .context("run /usr/bin/time (scripts/setup.sh installs it)")?;
    let wall = start.elapsed().as_secs_f64();
    let machine = match (before, cpu_jiffies()) {
        (Some((b0, s0)), Some((b1, s1))) if wall > 0.0 => Some(Machine {
            busy_cores: b1.saturating_sub(b0) as f64 / 100.0 / wall,
            steal_cores: s1.saturating_sub(s0) as f64 / 100.0 / wall,
        }),
        _ => None,
    };
    if !out.status.success() {
        bail!(
            "{line}\nfailed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(stats.path())?;
    let f: Vec<&str> = text.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Ok(Timed {
        wall,
        cpu: num(0) + num(1),
        rss_kib: num(2) as u64,
        machine,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    })
}

fn sh(line: &str) -> anyhow::Result<String> {
    let out = Command::new("sh").args(["-c", line]).output()?;
    if !out.status.success() {
        bail!("{line}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Generates a suite's files under `root`; returns them with their digests.
fn generate(suite: &str, root: &Path, args: &Args) -> anyhow::Result<Vec<Item>> {
    let mut specs: Vec<(String, u64)> = Vec::new();
    match suite {
        // `https` serves the same file as `big`: same name, size and seed.
        "big" | "https" => specs.push(("big.bin".into(), args.big)),
        // HTTP/3 costs several times TCP's CPU per byte: the WAN suites' smaller file.
        "h3" => specs.push(("big.bin".into(), args.wan_size)),
        s if wan::scenario(s).is_some_and(|w| w.load == wan::Load::Big) => {
            specs.push(("big.bin".into(), args.wan_size))
        }
        "repo" => {
            let n = args.shards;
            for i in 0..n {
                specs.push((
                    format!("model-{:05}-of-{n:05}.safetensors", i + 1),
                    args.shard(suite),
                ));
            }
            for i in 0..200u64 {
                // 1-100 KiB, spread deterministically.
                specs.push((
                    format!("extra-{i:03}.json"),
                    1024 + (i * 7919) % (99 * 1024),
                ));
            }
        }
        // `wan-80-small`: the same files, through the relay.
        "small" | "wan-80-small" => {
            for i in 0..2000u64 {
                specs.push((format!("s{i:04}.bin"), 4096 + (i * 104_729) % (60 * 1024)));
            }
        }
        other => bail!("unknown suite {other:?} (big, https, h3, repo, small, wan-*)"),
    }
    let mut items = Vec::new();
    for (i, (name, size)) in specs.into_iter().enumerate() {
        let path = root.join(&name);
        write_data(&path, size, 1000 + i as u64);
        // Hashing reads the file: the server's page cache is warm afterwards.
        items.push(Item {
            sha256: sha256_file(&path),
            name,
        });
    }
    Ok(items)
}

/// ` FLAG'CA'` (as ` --cacert 'CA'` or ` --ca-certificate='CA'`) when the origin is HTTPS with
/// its own CA, else nothing.
fn trust(ca: Option<&Path>, flag: &str) -> String {
    ca.map_or(String::new(), |c| format!(" {flag}'{}'", c.display()))
}

/// Every tool's shell line for a suite, and the tools it leaves out. Over HTTPS (`ca`: the CA
/// the origin's certificate is signed by), each tool is told to trust that CA its own way;
/// none is ever told to skip verification.
fn tools(
    suite: &str,
    items: &[Item],
    base: &str,
    lists: &Path,
    ca: Option<&Path>,
    ferry: &Path,
) -> anyhow::Result<(Vec<Tool>, Vec<LeftOut>)> {
    let ferry = ferry.to_string_lossy().into_owned();
    let ferry_ca = trust(ca, "--ca-file ");
    let curl_ca = trust(ca, "--cacert ");
    // wget and aria2c spell it the same way.
    let wget_ca = trust(ca, "--ca-certificate=");
    // hf_transfer (reqwest on a vendored OpenSSL) and axel (OpenSSL's default paths) have no
    // option: both read OpenSSL's SSL_CERT_FILE.
    let ssl_env = ca.map_or(String::new(), |c| {
        format!("SSL_CERT_FILE='{}' ", c.display())
    });
    let mut left_out = Vec::new();
    // Over TLS the socket carries ciphertext, so ferry's splice sink falls back to buffers
    // (README): a splice row would repeat the buffered one.
    let splice = ca.is_none();
    if !splice {
        left_out.push(LeftOut {
            tool: "ferry --sink splice".into(),
            reason: "over TLS the socket carries ciphertext, so ferry's splice sink falls back \
                     to buffers (README): the row would repeat `ferry --sink buffered`"
                .into(),
        });
    }
    let urls: Vec<String> = items.iter().map(|i| format!("{base}/{}", i.name)).collect();
    let outs: String = items
        .iter()
        .map(|i| format!("'{{OUT}}/{}'", i.name))
        .collect::<Vec<_>>()
        .join(" ");
    let sync = format!("sync {outs}");
    let mut t = Vec::new();
    let mut add = |name: &str, shell: String| t.push(Tool::new(name, shell));
    if let ("h3", [one]) = (suite, items) {
        // The same server (Caddy) over QUIC and over TLS/TCP, and ngtcp2's HTTP/3 client.
        let (url, out, sha) = (&urls[0], format!("{{OUT}}/{}", one.name), &one.sha256);
        add(
            H3_BASE,
            format!("{ferry} --http3 get '{url}' -o '{out}' -q --sha256 {sha}{ferry_ca}"),
        );
        add(
            "ferry",
            format!("{ferry} get '{url}' -o '{out}' -q --sha256 {sha}{ferry_ca}"),
        );
        add(
            "ferry --http2",
            format!("{ferry} --http2 get '{url}' -o '{out}' -q --sha256 {sha}{ferry_ca}"),
        );
        add(
            "curl",
            format!("curl -sS{curl_ca} -o '{out}' '{url}' && {sync}"),
        );
        // gtlsclient verifies no certificate (ngtcp2's example client); it names the file by
        // the URL's last segment, and its progress goes to /dev/null.
        let (host, port) = url
            .trim_start_matches("https://")
            .split('/')
            .next()
            .and_then(|a| a.rsplit_once(':'))
            .context("the h3 suite's URL has a host and a port")?;
        add(
            NGTCP2,
            format!(
                "gtlsclient -q --exit-on-all-streams-close --download='{{OUT}}' {host} {port} \
                 '{url}' >/dev/null && {sync}"
            ),
        );
        return Ok((t, left_out));
    }
    if let [one] = items {
        let url = &urls[0];
        let out = format!("{{OUT}}/{}", one.name);
        let sha = &one.sha256;
        add(
            "ferry",
            format!("{ferry} get '{url}' -o '{out}' -q --sha256 {sha}{ferry_ca}"),
        );
        add(
            "ferry (no sha256)",
            format!("{ferry} get '{url}' -o '{out}' -q{ferry_ca}"),
        );
        add(
            "ferry --no-pipelining",
            format!("{ferry} --no-pipelining get '{url}' -o '{out}' -q --sha256 {sha}{ferry_ca}"),
        );
        // What connections by measurement are worth on a path: the count it starts with.
        if wan::scenario(suite).is_some() {
            add(
                "ferry -c 16",
                format!("{ferry} get '{url}' -o '{out}' -q --sha256 {sha} -c 16{ferry_ca}"),
            );
        }
        // What HTTP/2 is worth against HTTP/1.1 to the same server: over the WAN suites'
        // HTTPS origin, which offers it (the loopback `https` origin offers HTTP/1.1 only).
        if !ferry_ca.is_empty() && wan::scenario(suite).is_some() {
            add(
                "ferry --http2",
                format!("{ferry} --http2 get '{url}' -o '{out}' -q --sha256 {sha}{ferry_ca}"),
            );
        }
        add(
            "ferry --sink buffered",
            format!("{ferry} get '{url}' -o '{out}' -q --sha256 {sha} --sink buffered{ferry_ca}"),
        );
        if splice {
            add(
                "ferry --sink splice",
                format!("{ferry} get '{url}' -o '{out}' -q --sha256 {sha} --sink splice"),
            );
        }
        add(
            "ferry --safe-mode",
            format!("{ferry} --safe-mode get '{url}' -o '{out}' -q --sha256 {sha}{ferry_ca}"),
        );
        add(
            "curl",
            format!("curl -sS{curl_ca} -o '{out}' '{url}' && {sync}"),
        );
        add(
            "wget",
            format!("wget -q{wget_ca} -O '{out}' '{url}' && {sync}"),
        );
        add(
            "aria2c",
            format!(
                "aria2c -q -x16 -s16 -k8M --file-allocation=falloc --allow-overwrite=true \
                 --auto-file-renaming=false{wget_ca} -d '{{OUT}}' -o '{}' '{url}' && {sync}",
                one.name
            ),
        );
        add(
            "axel",
            format!("{ssl_env}axel -q -n 16 -o '{out}' '{url}' >/dev/null && {sync}"),
        );
        add(
            "hf_transfer",
            format!(
                "{ssl_env}python3 -c 'import hf_transfer; hf_transfer.download(url=\"{url}\", \
                 filename=\"{out}\", max_files=16, chunk_size=10485760)' && {sync}"
            ),
        );
        return Ok((t, left_out));
    }
    // Many files: each tool gets the list its own way.
    let curl_cfg = lists.join(format!("{suite}.curl"));
    let mut cfg = String::new();
    let mut plain = String::new();
    let mut aria = String::new();
    let mut ferry_list = String::new();
    for (i, url) in urls.iter().enumerate() {
        writeln!(ferry_list, "{url} {}", items[i].sha256)?;
        writeln!(
            cfg,
            "url = \"{url}\"\noutput = \"OUTDIR/{}\"",
            items[i].name
        )?;
        writeln!(plain, "{url}")?;
        writeln!(aria, "{url}\n  out={}", items[i].name)?;
    }
    std::fs::write(&curl_cfg, cfg)?;
    let plain_list = lists.join(format!("{suite}.urls"));
    std::fs::write(&plain_list, plain)?;
    let aria_list = lists.join(format!("{suite}.aria2"));
    std::fs::write(&aria_list, aria)?;
    // ferry verifies every file against its sha256 (`URL SHA256` per line).
    let ferry_input = lists.join(format!("{suite}.ferry"));
    std::fs::write(&ferry_input, ferry_list)?;
    let input = ferry_input.display();
    add(
        "ferry",
        format!("{ferry} get -i '{input}' -o '{{OUT}}' -q{ferry_ca}"),
    );
    for sink in ["buffered", "splice"]
        .into_iter()
        .filter(|s| splice || *s != "splice")
    {
        add(
            &format!("ferry --sink {sink}"),
            format!("{ferry} get -i '{input}' -o '{{OUT}}' -q --sink {sink}{ferry_ca}"),
        );
    }
    add(
        "ferry --safe-mode",
        format!("{ferry} --safe-mode get -i '{input}' -o '{{OUT}}' -q{ferry_ca}"),
    );
    add(
        "curl -Z",
        format!(
            "sed 's|OUTDIR|{{OUT}}|' '{}' | curl -sS -Z --parallel-max 16{curl_ca} -K - && {sync}",
            curl_cfg.display()
        ),
    );
    add(
        "wget",
        format!(
            "wget -q -nd{wget_ca} -P '{{OUT}}' -i '{}' && {sync}",
            plain_list.display()
        ),
    );
    add(
        "aria2c",
        format!(
            "aria2c -q -j16 -x16 -s16 -k8M --file-allocation=falloc --allow-overwrite=true \
             --auto-file-renaming=false{wget_ca} -d '{{OUT}}' -i '{}' && {sync}",
            aria_list.display()
        ),
    );
    Ok((t, left_out))
}

/// Where each run writes: a new directory per run, under a parent that ext4 treats as a top
/// directory (`chattr +T`), so that its allocator puts each run's directory, and the files in
/// it, in a block group with free inodes rather than next to the files just deleted.
///
/// Why: this machine's ext4 has no journal, and without one ext4 does not reuse an inode freed
/// in the last 60-360 s; each new inode is found by scanning past every such inode of the group
/// (`recently_deleted`), once per file created. With the output deleted and made again at the
/// same place before every run, 2,000 small files cost every tool 3-5 s of kernel CPU that
/// depended on how many files the runs before it had deleted, not on the tool (ferry 3.0 s,
/// curl 2.9-3.5 s, against 0.6 s and 1.1-1.8 s in spread directories). A journaled ext4 (the
/// usual server) does not do this. The previous run's directory is deleted before the next is
/// made. Where `chattr +T` does not take (another filesystem), runs still get new directories.
pub(crate) struct Outputs {
    parent: PathBuf,
    current: Option<PathBuf>,
    made: u32,
}

impl Outputs {
    pub(crate) fn new(scratch: &Path, suite: &str) -> anyhow::Result<Outputs> {
        let parent = scratch.join(format!("out-{suite}"));
        let _ = std::fs::remove_dir_all(&parent);
        std::fs::create_dir_all(&parent)?;
        let spread = Command::new("chattr")
            .arg("+T")
            .arg(&parent)
            .output()
            .is_ok_and(|o| o.status.success());
        if !spread {
            eprintln!(
                "note: chattr +T {} did not take; run directories are not spread",
                parent.display()
            );
        }
        Ok(Outputs {
            parent,
            current: None,
            made: 0,
        })
    }

    /// Deletes the last run's directory and makes an empty one for the next run.
    pub(crate) fn next(&mut self) -> anyhow::Result<&Path> {
        if let Some(old) = self.current.take() {
            let _ = std::fs::remove_dir_all(old);
        }
        self.made += 1;
        let dir = self.parent.join(format!("run-{}", self.made));
        std::fs::create_dir(&dir)?;
        Ok(self.current.insert(dir))
    }

    /// The directory of the last run (for a run that must find what the one before it wrote).
    pub(crate) fn current(&self) -> Option<&Path> {
        self.current.as_deref()
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.parent);
    }
}

/// Fills free memory with clean page cache (bench/README.md, `steady`): a filler written with O_DIRECT
/// (so writing it leaves nothing cached), then read until free memory is under ~1 GiB.
struct Filler(PathBuf);

impl Filler {
    /// A filler in `dir` for the `steady` state; none for `fresh`.
    fn for_state(state: &str, dir: &Path) -> anyhow::Result<Option<Filler>> {
        match state {
            "steady" => Filler::create(dir).map(Some),
            _ => Ok(None),
        }
    }

    fn create(dir: &Path) -> anyhow::Result<Filler> {
        let free_kib: u64 = sh("awk '/MemFree/ {print $2}' /proc/meminfo")?
            .trim()
            .parse()?;
        let mib = (free_kib / 1024).saturating_sub(1024);
        let path = dir.join("filler");
        eprintln!("steady state: writing a {mib} MiB filler with O_DIRECT ...");
        sh(&format!(
            "dd if=/dev/zero of='{}' bs=1M count={mib} oflag=direct status=none",
            path.display()
        ))?;
        let f = Filler(path);
        f.top_up()?;
        Ok(f)
    }

    fn top_up(&self) -> anyhow::Result<()> {
        sh(&format!("cat '{}' > /dev/null", self.0.display()))?;
        Ok(())
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Ceilings {
    network_gb_s: f64,
    disk_gb_s: f64,
    sha256_gb_s: f64,
    /// Over HTTPS: the TLS version and cipher of the network ceiling's transfers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network_tls: Option<String>,
    /// Over HTTPS: whether nginx encrypted in the kernel (kTLS) or in user space, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ktls: Option<String>,
}

/// The ceilings of this machine, now: network (curl to /dev/null of `url`, `bytes` long, from
/// the suite's own origin, trusting `ca` over HTTPS), O_DIRECT disk writes (fio), one core of
/// sha256 (openssl).
fn ceilings(url: &str, bytes: u64, dir: &Path, ca: Option<&Path>) -> anyhow::Result<Ceilings> {
    let mut best_net = f64::MAX;
    for _ in 0..3 {
        best_net = best_net.min(timed(&network_ceiling(url, ca))?.wall);
    }
    let fio_file = dir.join("fio.tmp");
    let size_mib = (bytes >> 20).clamp(256, 8192);
    let fio = sh(&format!(
        "{} --output-format=json",
        disk_ceiling(&fio_file.to_string_lossy(), size_mib)
    ))?;
    let _ = std::fs::remove_file(&fio_file);
    let fio: serde_json::Value = serde_json::from_str(&fio).context("fio JSON")?;
    let disk = fio["jobs"][0]["write"]["bw_bytes"].as_f64().unwrap_or(0.0) / 1e9;
    let speed = sh("openssl speed -evp sha256 -bytes 1048576 -seconds 3 2>/dev/null | tail -1")?;
    let kbs = speed
        .split_whitespace()
        .last()
        .and_then(|v| v.trim_end_matches('k').parse::<f64>().ok())
        .unwrap_or(0.0);
    Ok(Ceilings {
        network_gb_s: bytes as f64 / best_net / 1e9,
        disk_gb_s: disk,
        sha256_gb_s: kbs * 1000.0 / 1e9,
        network_tls: None,
        ktls: None,
    })
}

/// One suite's figures, as recorded in `results.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SuiteResult {
    suite: String,
    bytes: u64,
    files: usize,
    /// The run these figures come from (absent in files written before runs were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run: Option<report::RunInfo>,
    ceilings: Option<Ceilings>,
    /// Tool name -> shell line (the same as `tools`, kept for readers of older files).
    #[serde(default)]
    commands: BTreeMap<String, String>,
    /// The tools in the order they ran (older files have only `commands`).
    #[serde(default)]
    tools: Vec<Tool>,
    /// The tool every other is compared with (the ratio column).
    #[serde(default = "ferry_name")]
    base: String,
    /// Goals this suite measures, read off the report (never asserted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    targets: Vec<report::Target>,
    /// Tools this suite does not run, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    left_out: Vec<LeftOut>,
    /// Peers' runs that failed, not in `samples`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    failed: Vec<FailedRun>,
    samples: Vec<Sample>,
    /// Figures measured beside the timed runs, in words (`mirror`: upstream egress, readers'
    /// waits).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
}

fn ferry_name() -> String {
    "ferry".into()
}

impl SuiteResult {
    fn new(suite: &str, bytes: u64, files: usize, tools: Vec<Tool>) -> SuiteResult {
        SuiteResult {
            suite: suite.into(),
            bytes,
            files,
            run: None,
            ceilings: None,
            commands: tools
                .iter()
                .map(|t| (t.name.clone(), t.shell.clone()))
                .collect(),
            tools,
            base: ferry_name(),
            targets: Vec::new(),
            left_out: Vec::new(),
            failed: Vec::new(),
            samples: Vec::new(),
            notes: Vec::new(),
        }
    }
}

fn run_suite(suite: &str, args: &Args, scratch: &Path) -> anyhow::Result<SuiteResult> {
    if suite == mirror::SUITE {
        return mirror::run(args, scratch);
    }
    if suite == swarm::SUITE || suite == swarm::SLOW {
        return swarm::run(args, scratch, suite);
    }
    if hls::SUITES.contains(&suite) {
        return hls::run(suite, args, scratch);
    }
    if suite == "pull" || wan::scenario(suite).is_some_and(|w| w.load == wan::Load::Repo) {
        return pull::run(suite, args, scratch);
    }
    let root = scratch.join(format!("src-{suite}"));
    let mut outputs = Outputs::new(scratch, suite)?;
    std::fs::create_dir_all(&root)?;
    eprintln!("== {suite}: generating data ...");
    let items = generate(suite, &root, args)?;
    let bytes: u64 = items
        .iter()
        .map(|i| std::fs::metadata(root.join(&i.name)).map_or(0, |m| m.len()))
        .sum();
    let origin = Origin::start(suite, &root, scratch)?;
    let base = origin.base();
    let ferry = ferry_testkit::ferry_bin();
    let (mut tools, mut left_out) = tools(suite, &items, &base, scratch, origin.ca(), &ferry)?;
    if let Some(w) = wan::scenario(suite) {
        (tools, left_out) = wan::tools(tools, w);
    }
    if let Some(ca) = origin.ca().filter(|_| suite != "h3") {
        let unusable;
        (tools, unusable) = https::probe(tools, &root, &base, ca, scratch)?;
        left_out.extend(unusable);
    }
    if matches!(suite, "big" | "https") {
        tools.extend(ceiling_rows(
            &format!("{base}/{}", items[0].name),
            bytes,
            origin.ca(),
        )?);
    }
    let ceilings = if matches!(suite, "big" | "https") {
        eprintln!("== {suite}: ceilings ...");
        let (mark, ktls_before) = (origin.mark(), https::ktls_sent());
        let mut c = ceilings(
            &format!("{base}/{}", items[0].name),
            bytes,
            scratch,
            origin.ca(),
        )?;
        if origin.ca().is_some() {
            c.network_tls = origin.tls_since(mark);
            c.ktls = Some(https::ktls_note(ktls_before, https::ktls_sent()));
        }
        eprintln!("{c:?}");
        Some(c)
    } else {
        None
    };
    let filler = Filler::for_state(&args.state, scratch)?;
    let mut samples = Vec::new();
    let mut failed = Vec::new();
    for round in 0..=args.runs {
        for tool in &tools {
            let out = outputs.next()?.to_owned();
            if let Some(f) = &filler {
                f.top_up()?;
            }
            let line = tool.shell.replace("{OUT}", &out.to_string_lossy());
            let mark = origin.mark();
            let armed = origin.before_run(&tool.name);
            let Timed {
                wall,
                cpu,
                rss_kib,
                machine,
                ..
            } = match timed(&line) {
                Ok(t) => t,
                Err(e) if tool.is_peer() => {
                    let error = format!("{e:#}");
                    let last = error.lines().rev().find(|l| !l.trim().is_empty());
                    let error = last.unwrap_or("failed").trim().to_owned();
                    eprintln!("{suite} round {round} {:<22} FAILED: {error}", tool.name);
                    failed.push(FailedRun {
                        tool: tool.name.clone(),
                        round,
                        error,
                    });
                    continue;
                }
                Err(e) => return Err(e.context(format!("{suite}: {}", tool.name))),
            };
            origin.after_run(&tool.name, armed)?;
            let (tls, http) = (origin.tls_since(mark), origin.http_since(mark));
            for item in items.iter().filter(|_| !tool.ceiling) {
                let got = sha256_file(&out.join(&item.name));
                if got != item.sha256 {
                    bail!(
                        "{suite}: {}: {} differs from the source (sha256 {got} != {})",
                        tool.name,
                        item.name,
                        item.sha256
                    );
                }
            }
            eprintln!(
                "{suite} round {round} {:<22} {wall:7.2} s {:6.3} GB/s cpu {cpu:6.2} s rss {:4} MiB{}{}{}",
                tool.name,
                bytes as f64 / wall / 1e9,
                rss_kib / 1024,
                machine
                    .map(|m| format!(
                        " machine {:.2} busy {:.2} steal",
                        m.busy_cores, m.steal_cores
                    ))
                    .unwrap_or_default(),
                [&tls, &http]
                    .into_iter()
                    .flatten()
                    .map(|t| format!(" [{t}]"))
                    .collect::<String>(),
                if round == 0 { " (warm-up)" } else { "" }
            );
            if round > 0 {
                samples.push(Sample {
                    tool: tool.name.clone(),
                    round,
                    wall,
                    cpu,
                    rss_kib,
                    backend: None,
                    bytes_fetched: None,
                    tls,
                    http,
                    machine,
                });
            }
        }
    }
    drop(origin);
    drop(outputs);
    let _ = std::fs::remove_dir_all(&root);
    let mut r = SuiteResult::new(suite, bytes, items.len(), tools);
    match suite {
        "big" => r.targets = big_targets(&r.tools),
        "https" => r.targets = vec![https::target(&r.tools)],
        "h3" => {
            r.base = H3_BASE.into();
            r.targets = h3_targets();
        }
        s => {
            if let Some(w) = wan::scenario(s) {
                r.targets = wan::targets(&r.tools, w);
            }
        }
    }
    r.samples = samples;
    r.ceilings = ceilings;
    r.left_out = left_out;
    r.failed = failed;
    Ok(r)
}

/// The checkout this harness was built from.
fn repo_dir() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir.parent().unwrap_or(crate_dir).to_owned()
}

fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some(HASH_FROM_MEMORY) {
        return hash_from_memory(&argv.next().context("sha256-from-memory BYTES")?);
    }
    let args = parse_args()?;
    let scratch = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let mut anonymize = report::Anonymize::new(
        &ferry_testkit::ferry_bin(),
        &std::env::current_exe().context("the harness's own path")?,
        scratch.path(),
        &repo_dir(),
    )
    .with(&args.out, "{REPORTS}", false);
    if let Some(dir) = &args.dir {
        anonymize = anonymize.with(dir, "{DIR}", false);
    }
    // What earlier runs recorded is read first: an unreadable results.json stops here, before
    // anything is measured, rather than being overwritten at the end.
    let mut reports = report::Reports::open(&args, anonymize)?;
    for suite in suites().filter(|s| args.suites.iter().any(|a| a == s)) {
        let result = run_suite(suite, &args, scratch.path())?;
        // Written after every suite, so a long run that is stopped keeps what it measured.
        reports.add(result)?;
    }
    print!("{}", reports.run_markdown());
    eprintln!("{}", reports.wrote());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_rows_are_never_peers_and_write_no_download() {
        let mut tools = vec![
            Tool::new("ferry", String::new()),
            Tool::new("ferry --safe-mode", String::new()),
            Tool::new("curl", String::new()),
        ];
        tools.extend(
            ceiling_rows("http://127.0.0.1:1/f", 8 << 30, None)
                .expect("the harness knows its path"),
        );
        assert_eq!(peers(&tools), ["curl"]);
        assert_eq!(tools[5].name, PARTS_CEILING);
        assert!(tools[5].ceiling && !tools[5].is_peer());
        for part in [&tools[3].shell, &tools[4].shell] {
            assert!(tools[5].shell.contains(part.as_str()), "{part}");
        }
        assert!(tools[5].shell.contains("sha256-from-memory 8589934592"));
        assert!(
            tools[3]
                .shell
                .contains("-o /dev/null 'http://127.0.0.1:1/f'")
        );
        assert!(tools[4].shell.contains("--size=8192M --end_fsync=1"));
        let targets = big_targets(&tools);
        assert_eq!(targets[0].best_of, ["curl"]);
        assert_eq!(targets[1].tool, NETWORK_CEILING);
    }

    #[test]
    fn every_wan_suite_is_a_suite_and_runs_last_in_wan_order() {
        let all: Vec<_> = suites().collect();
        let wan_end = DEFAULT_SUITES.len() + wan::ALL.len();
        assert_eq!(all[DEFAULT_SUITES.len()..wan_end], wan::ALL);
        assert_eq!(all[wan_end..], OTHER_SUITES);
        assert!(all.iter().all(|s| DEFAULT_SUITES.contains(s)
            || wan::scenario(s).is_some()
            || OTHER_SUITES.contains(s)));
    }

    #[test]
    fn busy_and_steal_come_from_the_cpu_line_of_proc_stat() {
        assert_eq!(
            parse_cpu_jiffies("cpu  100 2 30 900 7 4 5 60 0 0"),
            Some((141, 60))
        );
        assert_eq!(parse_cpu_jiffies("cpu0 1 2 3 4 5 6 7 8 0 0"), None);
        assert_eq!(parse_cpu_jiffies("cpu  1 2 3"), None);
        assert!(cpu_jiffies().is_some(), "this machine has /proc/stat");
    }
}
