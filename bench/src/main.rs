//! `ferry-bench`: downloads one seeded file from nginx on loopback with ferry (each back-end) and
//! curl, interleaved round by round, and prints wall time, GB/s, CPU seconds per GB and peak RSS.
//!
//! Every timed command ends with the output durable: ferry fsyncs before it exits; curl is
//! followed by `sync FILE` inside the timed command. Every output is sha256-checked against the
//! source after its run, outside the timing; a wrong byte aborts the benchmark. The first round
//! is a warm-up and is not reported. This is the foundation's harness; the full suite of
//! `../shared/BENCH.md` (more peers, memory states, ceilings, SVG) builds on it.
//!
//! Usage: `ferry-bench [--size 8G] [--rounds 3] [--dir DIR] [--json FILE]`

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use ferry_tests::{Nginx, sha256_file, write_data};

struct Args {
    size: u64,
    rounds: usize,
    dir: Option<PathBuf>,
    json: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        size: 1 << 30,
        rounds: 3,
        dir: None,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--size" => a.size = parse_size(&value()?)?,
            "--rounds" => a.rounds = value()?.parse().context("--rounds")?,
            "--dir" => a.dir = Some(PathBuf::from(value()?)),
            "--json" => a.json = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!("usage: ferry-bench [--size 8G] [--rounds 3] [--dir DIR] [--json FILE]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(a)
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

#[derive(Debug, Clone)]
struct Sample {
    tool: &'static str,
    wall: f64,
    cpu: f64,
    rss_kib: u64,
}

/// Runs `cmd` under `/usr/bin/time`, returning wall seconds, CPU seconds and peak RSS.
fn timed(cmd: &[String]) -> anyhow::Result<(f64, f64, u64)> {
    let stats = tempfile::NamedTempFile::new()?;
    let start = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%U %S %M", "-o"])
        .arg(stats.path())
        .args(cmd)
        .output()
        .context("run /usr/bin/time (scripts/setup.sh installs it)")?;
    let wall = start.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = std::fs::read_to_string(stats.path())?;
    let f: Vec<&str> = text.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Ok((wall, num(0) + num(1), num(2) as u64))
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let ferry = ferry_tests::ferry_bin();
    let scratch = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let src = scratch.path().join("src");
    let out_dir = scratch.path().join("out");
    std::fs::create_dir_all(&src)?;
    std::fs::create_dir_all(&out_dir)?;
    let source = src.join("big");
    eprintln!("generating {} bytes ...", args.size);
    write_data(&source, args.size, 1);
    let want = sha256_file(&source); // also warms the server's page cache
    let nginx = Nginx::start(&src);
    let url = nginx.url("files", "big");
    let out = out_dir.join("big");
    let out_s = out.to_string_lossy().into_owned();
    let ferry_s = ferry.to_string_lossy().into_owned();
    let tools: [(&'static str, Vec<String>); 3] = [
        (
            "ferry-uring",
            vec![
                ferry_s.clone(),
                "--backend".into(),
                "uring".into(),
                "get".into(),
                url.clone(),
                "-o".into(),
                out_s.clone(),
                "-q".into(),
            ],
        ),
        (
            "ferry-portable",
            vec![
                ferry_s,
                "--backend".into(),
                "portable".into(),
                "get".into(),
                url.clone(),
                "-o".into(),
                out_s.clone(),
                "-q".into(),
            ],
        ),
        (
            "curl",
            vec![
                "sh".into(),
                "-c".into(),
                format!("curl -sS -o '{out_s}' '{url}' && sync '{out_s}'"),
            ],
        ),
    ];
    let mut samples = Vec::new();
    for round in 0..=args.rounds {
        for (tool, cmd) in &tools {
            let _ = std::fs::remove_file(&out);
            let (wall, cpu, rss_kib) = timed(cmd)?;
            let got = sha256_file(&out);
            if got != want {
                bail!("{tool}: output differs from the source (sha256 {got} != {want})");
            }
            let gbps = args.size as f64 / wall / 1e9;
            eprintln!(
                "round {round} {tool:<15} {wall:7.2} s {gbps:6.3} GB/s  cpu {cpu:6.2} s  rss {} MiB{}",
                rss_kib / 1024,
                if round == 0 { "  (warm-up)" } else { "" }
            );
            if round > 0 {
                samples.push(Sample {
                    tool,
                    wall,
                    cpu,
                    rss_kib,
                });
            }
        }
    }
    let _ = std::fs::remove_file(&out);
    report(
        &args,
        &samples,
        &tools.iter().map(|t| t.0).collect::<Vec<_>>(),
        &url,
    )
}

fn report(
    args: &Args,
    samples: &[Sample],
    tools: &[&'static str],
    url: &str,
) -> anyhow::Result<()> {
    let gb = args.size as f64 / 1e9;
    println!(
        "\n{} bytes from nginx on loopback, {} rounds, durable and sha256-verified after each run",
        args.size, args.rounds
    );
    println!("| tool | wall median (s) | min | max | GB/s (median) | CPU s/GB | peak RSS MiB |");
    println!("|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for tool in tools {
        let mut walls: Vec<f64> = samples
            .iter()
            .filter(|s| s.tool == *tool)
            .map(|s| s.wall)
            .collect();
        let cpus: Vec<f64> = samples
            .iter()
            .filter(|s| s.tool == *tool)
            .map(|s| s.cpu)
            .collect();
        let rss = samples
            .iter()
            .filter(|s| s.tool == *tool)
            .map(|s| s.rss_kib)
            .max()
            .unwrap_or(0);
        walls.sort_by(f64::total_cmp);
        let med = walls[walls.len() / 2];
        let cpu_per_gb = cpus.iter().sum::<f64>() / cpus.len() as f64 / gb;
        println!(
            "| {tool} | {med:.2} | {:.2} | {:.2} | {:.3} | {cpu_per_gb:.2} | {} |",
            walls[0],
            walls[walls.len() - 1],
            gb / med,
            rss / 1024
        );
        rows.push(serde_json::json!({"tool": tool, "wall_median_s": med, "wall_min_s": walls[0], "wall_max_s": walls[walls.len()-1], "gb_per_s": gb / med, "cpu_s_per_gb": cpu_per_gb, "peak_rss_kib": rss}));
    }
    if let Some(path) = &args.json {
        let doc = serde_json::json!({"bytes": args.size, "rounds": args.rounds, "url": url, "results": rows});
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
