//! The `swarm` suite (issue 33's targets): a fleet pulls one commit of a synthetic repo (4
//! shards of 128 MiB by default, `--shards`, `--shard`, and 200 small files) from `ferry serve
//! --seed` on a network of namespaces (`ferry_testkit::netlab`): an origin, a stock opentracker,
//! and 8 peers, every link capped at 400 Mbit/s both ways with `tbf`. Round trips and loss are
//! not emulated: the nodes share one bridge on one machine, and its two cores.
//!
//! Round after round: one `ferry pull --swarm` alone (the base); 8 at once, the origin serving
//! 1 peer at once (its default), then 2; 8 plain `ferry pull`s over HTTP from the same origin. A row's time runs until its last peer has the whole
//! commit in place (`refs/main`, written last); swarm peers seed meanwhile (`--seed-for`) and
//! are stopped (SIGINT) once all are done. The origin's interface counters give the copies of
//! the repo it sent; `/proc` gives each process's CPU time and peak RSS. Every peer's snapshot is
//! checked file by file against the origin, outside the timing. It asserts nothing about speed:
//! the targets are read off the report.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_testkit::KillOnDrop as Guard;
use ferry_testkit::netlab::{Lab, Node};

use crate::pull::{self, REPO};
use crate::report::{Target, spread};
use crate::{Args, Sample, SuiteResult, Tool};

pub(crate) const SUITE: &str = "swarm";
/// The same fleet on 100 Mbit/s links, with a smaller repo (64 MiB shards by default) and no
/// HTTP row: slow enough that the links, not this machine's cores, are the limit.
pub(crate) const SLOW: &str = "swarm-100";
/// The default shard size of [`SLOW`].
pub(crate) const SLOW_SHARD: u64 = 64 << 20;
/// The default shard size.
pub(crate) const SHARD: u64 = 128 << 20;
/// Every link, both ways.
const LINK_MBIT: u32 = 400;
/// Every link of [`SLOW`].
const SLOW_MBIT: u32 = 100;
const PEERS: usize = 8;
/// How long a row may take before the suite gives up.
const ROW_LIMIT: Duration = Duration::from_secs(600);

const ALONE: &str = "1 ferry pull --swarm";
const SWARM: &str = "8 ferry pull --swarm";
const SWARM_TWO: &str = "8 ferry pull --swarm, origin serves 2 at once";
const HTTP: &str = "8 ferry pull over HTTP";
/// `ferry serve --seed-peers`'s default.
const DEFAULT_SEED_PEERS: usize = 1;

/// The network: origin, tracker, peers.
struct Net {
    lab: Lab,
    origin: usize,
    peers: Vec<usize>,
}

impl Net {
    fn node(&self, i: usize) -> &Node {
        self.lab.node(i)
    }
}

/// One process's CPU seconds and peak RSS, from `/proc`, while it runs.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    cpu: f64,
    rss_kib: u64,
}

fn usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Some(Usage {
        cpu: ticks / 100.0,
        rss_kib,
    })
}

/// A peer: its process, cache, report file, last usage seen.
struct Peer {
    child: Guard,
    cache: PathBuf,
    report: PathBuf,
    usage: Usage,
}

fn start_peer(
    node: &Node,
    endpoint: &str,
    dir: &Path,
    i: usize,
    swarm: bool,
) -> anyhow::Result<Peer> {
    let cache = dir.join(format!("c{i}"));
    let report = dir.join(format!("r{i}.json"));
    let log = std::fs::File::create(dir.join(format!("e{i}.log")))?;
    let mut cmd = node.command(ferry_testkit::ferry_bin());
    cmd.args([
        "pull",
        REPO,
        "--endpoint",
        endpoint,
        "--json",
        "--cache-dir",
    ])
    .arg(&cache)
    .env("FERRY_CACHE_DIR", dir.join(format!("f{i}")))
    .env_remove("FERRY_LOG")
    .stdin(Stdio::null())
    .stdout(Stdio::from(std::fs::File::create(&report)?))
    .stderr(Stdio::from(log));
    if swarm {
        cmd.args(["--swarm", "--seed-for", "1h"]);
    }
    let child: Child = cmd.spawn().context("ferry pull")?;
    Ok(Peer {
        child: Guard(child),
        cache,
        report,
        usage: Usage::default(),
    })
}

/// What one row measured.
struct Row {
    /// Until every peer's commit is in place.
    wall: f64,
    usages: Vec<Usage>,
    /// By the origin's interface.
    sent: u64,
    origin_cpu: f64,
    machine: Option<crate::Machine>,
}

/// Runs one row: `n` peers at once; its wall time (until every peer's commit is in place), the
/// peers' usage, and the origin's bytes sent.
fn row(
    net: &Net,
    endpoint: &str,
    out: &Path,
    (n, swarm): (usize, bool),
    serve_pid: u32,
) -> anyhow::Result<Row> {
    let (sent0, _) = net.node(net.origin).bytes().map_err(anyhow::Error::msg)?;
    let origin0 = usage(serve_pid).unwrap_or_default();
    let jiffies0 = crate::cpu_jiffies();
    let start = Instant::now();
    let mut peers = Vec::new();
    for (i, &p) in net.peers[..n].iter().enumerate() {
        peers.push(start_peer(net.node(p), endpoint, out, i, swarm)?);
    }
    let done = |p: &Peer| pull::cache_has_ref(&p.cache);
    loop {
        for p in &mut peers {
            if let Some(u) = usage(p.child.0.id()) {
                p.usage = u;
            }
            if !swarm
                && let Some(status) = p.child.0.try_wait()?
                && !status.success()
            {
                bail!("a ferry pull failed ({status}): {}", p.cache.display());
            }
        }
        if peers.iter().all(done) {
            break;
        }
        if start.elapsed() > ROW_LIMIT {
            bail!("the row did not complete within {ROW_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let wall = start.elapsed().as_secs_f64();
    let machine = match (jiffies0, crate::cpu_jiffies()) {
        (Some((b0, s0)), Some((b1, s1))) if wall > 0.0 => Some(crate::Machine {
            busy_cores: b1.saturating_sub(b0) as f64 / 100.0 / wall,
            steal_cores: s1.saturating_sub(s0) as f64 / 100.0 / wall,
        }),
        _ => None,
    };
    let (sent1, _) = net.node(net.origin).bytes().map_err(anyhow::Error::msg)?;
    let origin_cpu = usage(serve_pid).unwrap_or_default().cpu - origin0.cpu;
    for p in &mut peers {
        if let Some(u) = usage(p.child.0.id()) {
            p.usage = u;
        }
        if swarm {
            let _ = Command::new("kill")
                .args(["-INT", &p.child.0.id().to_string()])
                .status();
        }
    }
    let mut usages = Vec::new();
    for mut p in peers {
        let status = p.child.0.wait()?;
        if !status.success() {
            bail!("a ferry pull ended with {status}: {}", p.cache.display());
        }
        let text = std::fs::read_to_string(&p.report)?;
        let v: serde_json::Value = serde_json::from_str(text.trim())
            .with_context(|| format!("ferry pull --json printed {text:?}"))?;
        if swarm && !v["swarm"]["fallback"].is_null() {
            bail!("a swarm peer went over HTTP: {}", v["swarm"]["fallback"]);
        }
        usages.push(p.usage);
    }
    Ok(Row {
        wall,
        usages,
        sent: sent1 - sent0,
        origin_cpu,
        machine,
    })
}

/// The network, the origin (`ferry serve --seed`, once its torrent is announced) and the tracker.
fn start_net(
    root: &Path,
    scratch: &Path,
    mbit: u32,
) -> anyhow::Result<(Net, Origin, Guard, String)> {
    let mut lab = Lab::new().map_err(anyhow::Error::msg)?;
    let origin = lab.add("origin", Some(mbit)).map_err(anyhow::Error::msg)?;
    let tracker = lab.add("tracker", None).map_err(anyhow::Error::msg)?;
    let peers = (0..PEERS)
        .map(|i| lab.add(&format!("peer{i}"), Some(mbit)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let net = Net { lab, origin, peers };
    let announce = format!("http://{}:6969/announce", net.node(tracker).addr);
    let pieces = scratch.join("swarm-pieces");
    let hash = info_hash(root, &pieces, &announce, scratch)?;
    let ip = net.node(tracker).addr.to_string();
    let tracker_proc = ferry_testkit::netlab::opentracker(
        net.node(tracker).command("opentracker"),
        (&ip, 6969),
        scratch,
        &[&hash],
    )
    .map_err(anyhow::Error::msg)?;
    let at = format!("{}:8080", net.node(origin).addr);
    let origin = Origin {
        root: root.to_owned(),
        pieces,
        announce,
        seed_peers: 0,
        serve: None,
    };
    Ok((net, origin, tracker_proc, format!("http://{at}")))
}

/// The origin, `ferry serve --seed --seed-peers N`, started again when a row wants another N.
struct Origin {
    root: PathBuf,
    pieces: PathBuf,
    announce: String,
    seed_peers: usize,
    serve: Option<Guard>,
}

impl Origin {
    /// The origin's PID, serving `seed_peers` peers at once.
    fn with(&mut self, net: &Net, seed_peers: usize) -> anyhow::Result<u32> {
        if let (Some(s), true) = (&self.serve, self.seed_peers == seed_peers) {
            return Ok(s.0.id());
        }
        drop(self.serve.take());
        let node = net.node(net.origin);
        let (serve, _) = serve(
            Some(node),
            &self.root,
            &self.pieces,
            &[
                "--addr",
                &format!("{}:8080", node.addr),
                "--tracker",
                &self.announce,
                "--seed",
                "--seed-addr",
                &format!("{}:6881", node.addr),
                "--seed-peers",
                &seed_peers.to_string(),
            ],
        )?;
        // The seed joins once the torrent is ready (its pieces are kept: at once) and announces.
        std::thread::sleep(Duration::from_secs(2));
        self.seed_peers = seed_peers;
        let pid = serve.0.id();
        self.serve = Some(serve);
        Ok(pid)
    }
}

/// `ferry serve --root ROOT EXTRA...` (on `node`, else here), once it listens; and its URL.
fn serve(
    node: Option<&Node>,
    root: &Path,
    pieces: &Path,
    extra: &[&str],
) -> anyhow::Result<(Guard, String)> {
    let bin = ferry_testkit::ferry_bin();
    let mut cmd = match node {
        Some(n) => n.command(bin),
        None => Command::new(bin),
    };
    cmd.args(["serve", "--root"])
        .arg(root)
        .args(extra)
        .env("FERRY_CACHE_DIR", pieces)
        .env_remove("FERRY_LOG")
        .stderr(Stdio::null());
    ferry_testkit::serve::spawn_listening(cmd).map_err(anyhow::Error::msg)
}

/// The commit's info hash, from a `ferry serve --torrents` on loopback (which keeps its pieces
/// in `pieces` for the origin): the tracker's whitelist needs it before the seed announces.
fn info_hash(root: &Path, pieces: &Path, announce: &str, scratch: &Path) -> anyhow::Result<String> {
    let (_serve, url) = serve(
        None,
        root,
        pieces,
        &["--addr", "127.0.0.1:0", "--tracker", announce],
    )?;
    let torrent = scratch.join("swarm.torrent");
    let out = Command::new("curl")
        .args([
            "-sSf",
            "-D",
            "-",
            "--retry",
            "120",
            "--retry-all-errors",
            "-o",
        ])
        .arg(&torrent)
        .arg(format!(
            "{}/api/models/{REPO}/torrent/main",
            url.trim_end_matches('/')
        ))
        .output()?;
    if !out.status.success() {
        bail!("the torrent: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-info-hash")
                .then(|| v.trim().to_owned())
        })
        .context("no X-Info-Hash")
}

/// Runs `suite` ([`SUITE`] or [`SLOW`]).
pub(crate) fn run(args: &Args, scratch: &Path, suite: &str) -> anyhow::Result<SuiteResult> {
    let (shard, shards) = (args.shard(suite), args.shards);
    let origin = scratch.join(format!("src-{suite}"));
    let mut outputs = crate::Outputs::new(scratch, suite)?;
    let (commit, files, bytes) = pull::synth(suite, &origin, (shard, shards))?;
    eprintln!("== {suite}: the network, the tracker and the origin's seed ...");
    let mbit = if suite == SLOW { SLOW_MBIT } else { LINK_MBIT };
    let (net, mut origin_serve, _tracker, endpoint) = start_net(&origin, scratch, mbit)?;
    let ferry = ferry_testkit::ferry_bin().to_string_lossy().into_owned();
    let line = |swarm: bool| {
        format!(
            "{ferry} pull {REPO} --endpoint {endpoint} --cache-dir '{{OUT}}/cI' --json{} \
             (I = 1..N, each in a node of its own)",
            if swarm { " --swarm --seed-for 1h" } else { "" }
        )
    };
    // (row, peers, swarm, the origin's --seed-peers)
    let rows = [
        (ALONE, 1, true, DEFAULT_SEED_PEERS),
        (SWARM, PEERS, true, DEFAULT_SEED_PEERS),
        (SWARM_TWO, PEERS, true, 2),
        (HTTP, PEERS, false, DEFAULT_SEED_PEERS),
    ];
    // The slow links' HTTP row would take 8 copies at 100 Mbit/s; the fast one measures it.
    let rows = &rows[..if suite == SLOW { 3 } else { 4 }];
    let tools: Vec<Tool> = rows
        .iter()
        .map(|&(tool, _, swarm, _)| Tool::new(tool, line(swarm)))
        .collect();
    let mut samples = Vec::new();
    let mut copies: Vec<(&str, Vec<f64>)> = rows.iter().map(|r| (r.0, vec![])).collect();
    let mut origin_cpu: Vec<(&str, Vec<f64>)> = copies.iter().map(|(t, _)| (*t, vec![])).collect();
    let mut per_peer_cpu: Vec<(&str, Vec<f64>)> =
        copies.iter().map(|(t, _)| (*t, vec![])).collect();
    for round in 0..=args.runs {
        for &(tool, n, swarm, seed_peers) in rows {
            let out = outputs.next()?.to_owned();
            let serve_pid = origin_serve.with(&net, seed_peers)?;
            let Row {
                wall,
                usages,
                sent,
                origin_cpu: o_cpu,
                machine,
            } = row(&net, &endpoint, &out, (n, swarm), serve_pid)
                .with_context(|| format!("{suite}: {tool}"))?;
            for i in 0..n {
                pull::verify(&out.join(format!("c{i}")), &commit, &files)
                    .with_context(|| format!("{suite}: {tool}: peer {i} got a wrong snapshot"))?;
            }
            let cpu: f64 = usages.iter().map(|u| u.cpu).sum();
            let rss = usages.iter().map(|u| u.rss_kib).max().unwrap_or(0);
            let x = sent as f64 / bytes as f64;
            eprintln!(
                "{suite} round {round} {tool:<24} {wall:7.2} s (last peer), origin sent {x:.2}x \
                 the repo, peers' CPU {cpu:.1} s ({:.2} s/GB each), origin CPU {o_cpu:.1} s, \
                 machine {:.2} cores busy{}",
                cpu / n as f64 / (bytes as f64 / 1e9),
                machine.as_ref().map_or(f64::NAN, |m| m.busy_cores),
                if round == 0 { " (warm-up)" } else { "" }
            );
            if round > 0 {
                let push = |v: &mut Vec<(&str, Vec<f64>)>, value: f64| {
                    if let Some((_, e)) = v.iter_mut().find(|(t, _)| *t == tool) {
                        e.push(value);
                    }
                };
                push(&mut copies, x);
                push(&mut origin_cpu, o_cpu / (bytes as f64 / 1e9));
                push(&mut per_peer_cpu, cpu / n as f64 / (bytes as f64 / 1e9));
                samples.push(Sample {
                    tool: tool.into(),
                    round,
                    wall,
                    cpu,
                    rss_kib: rss,
                    backend: None,
                    bytes_fetched: Some(bytes * n as u64),
                    tls: None,
                    http: None,
                    machine,
                });
            }
            let _ = std::fs::remove_dir_all(&out);
        }
    }
    drop(origin_serve);
    drop(outputs);
    let _ = std::fs::remove_dir_all(&origin);
    let mut notes = vec![format!(
        "{PEERS} peers and the origin on one bridge, every link {mbit} Mbit/s both ways \
         (tbf); round-trip time and loss were not emulated; all processes share this machine's \
         cores"
    )];
    for ((tool, c), ((_, o), (_, p))) in copies.iter().zip(origin_cpu.iter().zip(&per_peer_cpu)) {
        if let (Some((m, lo, hi)), Some((om, _, _)), Some((pm, _, _))) =
            (spread(c), spread(o), spread(p))
        {
            notes.push(format!(
                "{tool}: the origin sent a median {m:.2}x the repo ({lo:.2}-{hi:.2}); CPU s/GB: \
                 origin {om:.2}, each peer {pm:.2}"
            ));
        }
    }
    let mut r = SuiteResult::new(suite, bytes, files.len(), tools);
    r.base = ALONE.into();
    r.targets = vec![Target {
        text: "issue 33: the last of 8 `ferry pull --swarm` peers finishes within 1.5x of one \
               peer alone (and the origin sends at most 1.5x the repo: see the notes)"
            .into(),
        tool: SWARM.into(),
        max_times: Some(1.5),
        ..Target::default()
    }];
    r.samples = samples;
    r.notes = notes;
    drop(net);
    Ok(r)
}
