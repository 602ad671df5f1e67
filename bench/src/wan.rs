//! The `wan-*` suites: downloads through a relay that emulates a path users have
//! (`ferry_testkit::relay`): a round trip, a per-flow rate cap (a CDN edge), and a link cap that
//! all flows share. The link cap is the ceiling; ferry's throughput is reported as a share of
//! it, round by round, beside the peers that open several connections.
//!
//! The three paths are those issue 29 measured first: 30 ms with 100 MB/s per flow and a
//! 1000 MB/s link, 80 ms with 40 and 400, 150 ms with 25 and 300. Over them (issue 29, item 1):
//! the big file over plain HTTP (`wan-30`, `wan-80`, `wan-150`) and over HTTPS with HTTP/2
//! offered (`wan-*-https`); at 80 ms also a model repo from `ferry serve` (`wan-80-repo`, run by
//! `pull.rs`), the `small` suite's 2,000 files (`wan-80-small`), and the big file with one flow
//! frozen mid-range in every other run (`wan-80-frozen`). `wan-80-narrow` is an edge that caps
//! each flow at 10 MB/s on a 300 MB/s link: 30 flows fill it, where ferry starts with 16 and
//! opens more by measurement (the `ferry -c 16` row is the count fixed at the start).
//!
//! This module says what each suite is: its path, its data, its tools and its targets; the
//! rounds are `main.rs`'s and `pull.rs`'s, the origin `origin.rs`'s. Not here: loss (TCP under
//! the relay recovers it on loopback), or HTTP/2 for ferry (it speaks HTTP/1.1; ALPN picks
//! that for it).

use std::time::Duration;

use ferry_testkit::relay::{Freeze, WanPath};

use crate::report::Target;
use crate::{LeftOut, Tool, peers};

/// The suites `--suites wan` names: the big file over plain HTTP, shortest round trip first.
pub(crate) const SUITES: [&str; 3] = ["wan-30", "wan-80", "wan-150"];

/// Every WAN suite, in the order they run (`--suites wan-all`).
pub(crate) const ALL: [&str; 10] = [
    "wan-30",
    "wan-80",
    "wan-150",
    "wan-30-https",
    "wan-80-https",
    "wan-150-https",
    "wan-80-repo",
    "wan-80-small",
    "wan-80-frozen",
    "wan-80-narrow",
];

/// The shard size of `wan-80-repo` when `--shard` is not given (issue 29: 4 x 512 MiB).
pub(crate) const REPO_SHARD: u64 = 512 << 20;

/// The fault of `wan-80-frozen`: the third connection of a run goes silent after 8 MiB.
pub(crate) const FREEZE: Freeze = Freeze {
    connection: 2,
    after: 8 << 20,
};

/// The row of `wan-80-frozen` that runs with [`FREEZE`] (the same command as `ferry`).
pub(crate) const FROZEN: &str = "ferry, one flow frozen";

/// What goes over a suite's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Load {
    /// One file of `--wan-size` (the `big` suite's tools).
    Big,
    /// A model repo from `ferry serve` (the `pull` suite's tools).
    Repo,
    /// The `small` suite's 2,000 files.
    Small,
}

/// One `wan-*` suite.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scenario {
    pub(crate) path: WanPath,
    pub(crate) load: Load,
    /// Over HTTPS (TLS 1.3, HTTP/2 offered) rather than plain HTTP.
    pub(crate) tls: bool,
    /// The fault armed for the [`FROZEN`] row's runs.
    pub(crate) fault: Option<Freeze>,
}

/// The suite `suite` names; `None` for the suites that are not WAN.
pub(crate) fn scenario(suite: &str) -> Option<Scenario> {
    let (plain, tls) = match suite.strip_suffix("-https") {
        Some(plain) => (plain, true),
        None => (suite, false),
    };
    let (plain, load, fault) = match plain {
        "wan-80-repo" => ("wan-80", Load::Repo, None),
        "wan-80-small" => ("wan-80", Load::Small, None),
        "wan-80-frozen" => ("wan-80", Load::Big, Some(FREEZE)),
        other => (other, Load::Big, None),
    };
    let (rtt, flow, link) = match plain {
        "wan-30" => (30, 100, 1000),
        "wan-80" => (80, 40, 400),
        "wan-150" => (150, 25, 300),
        "wan-80-narrow" => (80, 10, 300),
        _ => return None,
    };
    let scenario = Scenario {
        path: WanPath {
            rtt: Duration::from_millis(rtt),
            flow_rate: Some(flow * 1_000_000),
            link_rate: Some(link * 1_000_000),
        },
        load,
        tls,
        fault,
    };
    // Only the names above: `wan-80-repo-https` and the like are no suite.
    ALL.contains(&suite).then_some(scenario)
}

/// The path a `wan-*` suite emulates; `None` for the other suites.
pub(crate) fn path(suite: &str) -> Option<WanPath> {
    scenario(suite).map(|s| s.path)
}

/// Keeps the tools named in `keep` (in `all`'s order); every other is left out with `why`.
fn keep(all: Vec<Tool>, keep: &[&str], why: impl Fn(&Tool) -> String) -> (Vec<Tool>, Vec<LeftOut>) {
    let mut left_out = Vec::new();
    let mut tools = Vec::new();
    for t in all {
        if keep.contains(&t.name.as_str()) {
            tools.push(t);
        } else {
            left_out.push(LeftOut {
                reason: why(&t),
                tool: t.name,
            });
        }
    }
    (tools, left_out)
}

/// Why the loopback suites' variants of ferry do not run over a WAN path.
const ONLY_DEFAULT: &str = "the loopback suites compare ferry's own variants; here only the \
                            default (verified, durable) runs";

/// The tools worth running over a suite's path, from the loopback suite's table (`all`). Big
/// file: ferry verified and the peers that open several connections (a one-connection tool is
/// capped at the per-flow rate by construction; it is left out with that reason rather than
/// spending minutes to show it). Small files: ferry, `curl -Z` and aria2c, 16 at a time each.
/// The frozen flow: ferry alone, twice, the second row with the fault.
pub(crate) fn tools(all: Vec<Tool>, s: Scenario) -> (Vec<Tool>, Vec<LeftOut>) {
    let flow = s.path.flow_rate.unwrap_or(0) as f64 / 1e6;
    if s.fault.is_some() {
        let (mut tools, left_out) = keep(all, &["ferry"], |t| {
            if t.name.starts_with("ferry") {
                ONLY_DEFAULT.into()
            } else {
                "this suite measures what the fault costs ferry, beside the same run without \
                 it; the peers run over the same path in `wan-80`"
                    .into()
            }
        });
        if let Some(ferry) = tools.first() {
            let frozen = Tool::new(FROZEN, ferry.shell.clone());
            tools.push(frozen);
        }
        return (tools, left_out);
    }
    match s.load {
        Load::Big => keep(
            all,
            &[
                "ferry",
                // What pipelining is worth on this path.
                "ferry --no-pipelining",
                // Over https://, what HTTP/2 is worth against HTTP/1.1.
                "ferry --http2",
                // What connections by measurement are worth: the count fixed at the start.
                "ferry -c 16",
                "aria2c",
                "axel",
                "hf_transfer",
            ],
            |t| {
                if t.name.starts_with("ferry") {
                    ONLY_DEFAULT.into()
                } else {
                    format!(
                        "one connection: capped at the path's per-flow {flow:.0} MB/s by \
                         construction"
                    )
                }
            },
        ),
        Load::Small => keep(all, &["ferry", "curl -Z", "aria2c"], |t| {
            if t.name.starts_with("ferry") {
                ONLY_DEFAULT.into()
            } else {
                "one file at a time over one connection: a round trip per file, 2,000 round \
                 trips by construction"
                    .into()
            }
        }),
        Load::Repo => keep(all, &[crate::pull::FERRY, crate::pull::HF], |t| {
            if t.name == crate::pull::AGAIN {
                "a pull of a complete mirror fetches nothing; its goal (under 1 s) is the \
                 loopback `pull` suite's"
                    .into()
            } else {
                ONLY_DEFAULT.into()
            }
        }),
    }
}

/// `{link} MB/s, {rtt} ms round trip, {flow} MB/s per flow`.
fn describe(path: WanPath) -> String {
    format!(
        "{} MB/s, {} ms round trip, {} MB/s per flow",
        path.link_rate.unwrap_or(0) / 1_000_000,
        path.rtt.as_millis(),
        path.flow_rate.unwrap_or(0) / 1_000_000
    )
}

/// A suite's goals (issue 29). Big file: at least 0.9 of the link cap, and ahead of every peer.
/// Small files: at most 0.25x the wall time of `curl -Z`. Repo: at least 0.85 of the link cap,
/// and at most 0.6x the wall time of `snapshot_download`. Frozen flow: at most 3 s more than the
/// same run without the fault (the difference of the medians).
pub(crate) fn targets(tools: &[Tool], s: Scenario) -> Vec<Target> {
    let link = describe(s.path);
    let over = if s.tls { " over HTTPS" } else { "" };
    if let Some(f) = s.fault {
        return vec![Target {
            text: format!(
                "issue 29: one flow frozen mid-range (connection {} of each run, after {} MiB) \
                 costs `ferry` at most 3 s over the same run without the fault ({link}; the \
                 difference of the medians)",
                f.connection + 1,
                f.after >> 20
            ),
            tool: FROZEN.into(),
            max_extra_s: Some(3.0),
            ..Default::default()
        }];
    }
    match s.load {
        Load::Big => {
            let peers = peers(tools);
            vec![
                Target {
                    text: format!(
                        "`ferry` (durable, verified){over} as a share of the link cap ({link})"
                    ),
                    tool: "ferry".into(),
                    min_share: Some(0.9),
                    link_rate: s.path.link_rate,
                    ..Default::default()
                },
                Target {
                    text: format!(
                        "`ferry`{over} ahead of every peer (the fastest median of {})",
                        peers.join(", ")
                    ),
                    tool: "the best peer".into(),
                    best_of: peers,
                    max_ratio: Some(1.0),
                    ..Default::default()
                },
            ]
        }
        Load::Small => vec![Target {
            text: format!(
                "issue 29: 2,000 files of 4-64 KiB ({link}): `ferry` (durable, every file \
                 verified) takes at most 0.25x the wall time of `curl -Z --parallel-max 16` \
                 (made durable)"
            ),
            tool: "curl -Z".into(),
            max_ratio: Some(0.25),
            ..Default::default()
        }],
        Load::Repo => {
            let (ferry, hf) = (crate::pull::FERRY, crate::pull::HF);
            vec![
                Target {
                    text: format!(
                        "issue 29: `{ferry}` (durable, every file verified) as a share of the \
                         link cap ({link})"
                    ),
                    tool: ferry.into(),
                    min_share: Some(0.85),
                    link_rate: s.path.link_rate,
                    ..Default::default()
                },
                Target {
                    text: format!(
                        "issue 29: `{ferry}` takes at most 0.6x the wall time of \
                         `{hf}(max_workers=16)` (made durable) over the same path"
                    ),
                    tool: hf.into(),
                    max_ratio: Some(0.6),
                    ..Default::default()
                },
            ]
        }
    }
}

/// How a WAN suite is measured, in words, for the report; `None` for the other suites.
pub(crate) fn note(suite: &str) -> Option<&'static str> {
    let s = scenario(suite)?;
    Some(match (s.load, s.tls, s.fault.is_some()) {
        (_, _, true) => {
            "Origin: nginx on 127.0.0.1 behind the test kit's relay (`testkit/src/relay.rs`), \
             which holds every byte for half the round trip each way, caps each TCP flow and \
             the link, and here freezes one flow: in the runs of the row with the fault, the \
             third connection ferry opens goes silent after 8 MiB and stays open (a stalled CDN \
             edge). The fault is armed before each of those runs and disarmed before every \
             other; a run in which it did not fire stops the benchmark. Both rows run the same \
             command, in turn, round by round. Every output is made durable and sha256-checked \
             after its run."
        }
        (Load::Big, false, _) => {
            "Origin: nginx on 127.0.0.1 behind the test kit's relay (`testkit/src/relay.rs`), \
             which holds every byte for half the round trip each way, delays a connection's \
             first bytes one more round trip, and caps each TCP flow and the link. Every run \
             ends with its output durable and every output is sha256-checked after its run; \
             `ferry` verifies the sha256 while downloading, the peers verify nothing."
        }
        (Load::Big, true, _) => {
            "Origin: nginx on 127.0.0.1 over HTTPS only (TLS 1.3, HTTP/2 offered beside \
             HTTP/1.1 by ALPN, a certificate signed by a throwaway CA every tool trusts \
             explicitly), behind the test kit's relay (`testkit/src/relay.rs`), which holds every \
             byte for half the round trip each way, delays a connection's first bytes one more \
             round trip, and caps each TCP flow and the link: a tool that multiplexes its \
             ranges over one HTTP/2 connection gets one flow's rate. A peer that cannot verify \
             the origin in an untimed probe is left out with what it said. Every run ends with \
             its output durable and is sha256-checked after it."
        }
        (Load::Small, ..) => {
            "Origin: nginx on 127.0.0.1 behind the test kit's relay (`testkit/src/relay.rs`): \
             every request costs a round trip, every new connection one more. Every run ends \
             with its output durable (ferry fsyncs; peers are followed by `sync FILE...`) and \
             every file is sha256-checked after its run; `ferry` verifies every file while \
             downloading, the peers verify nothing."
        }
        (Load::Repo, ..) => {
            "Origin: `ferry serve` on 127.0.0.1, serving the `pull` suite's synthetic model \
             repo, behind the test kit's relay (`testkit/src/relay.rs`), through which every \
             request of both tools goes (the listing and the files). `ferry pull` fsyncs and \
             verifies every file; `snapshot_download` is followed, inside the timing, by `sync` \
             of every file and folder it wrote. After each run every file of the snapshot is \
             compared with the origin by sha256."
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(names: &[&str]) -> Vec<Tool> {
        names
            .iter()
            .map(|n| Tool::new(n, format!("run {n}")))
            .collect()
    }

    #[test]
    fn each_suite_names_its_path_and_keeps_the_many_connection_tools() {
        let s = scenario("wan-80").expect("a wan suite");
        assert_eq!(s.path.label(), "80ms-40M-400M");
        assert!(path("big").is_none());
        let all = named(&[
            "ferry",
            "ferry --no-pipelining",
            "ferry --safe-mode",
            "curl",
            "aria2c",
            "hf_transfer",
            "axel",
        ]);
        let (kept, left_out) = tools(all, s);
        let names: Vec<_> = kept.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "ferry",
                "ferry --no-pipelining",
                "aria2c",
                "hf_transfer",
                "axel"
            ]
        );
        assert_eq!(left_out.len(), 2);
        assert!(
            left_out[1].reason.contains("40 MB/s"),
            "{}",
            left_out[1].reason
        );
        let t = targets(&kept, s);
        assert_eq!(t[0].link_rate, Some(400_000_000));
        assert_eq!(t[1].best_of, ["aria2c", "hf_transfer", "axel"]);
    }

    #[test]
    fn every_wan_suite_is_known_and_only_those() {
        for suite in ALL {
            let s = scenario(suite).unwrap_or_else(|| panic!("{suite}"));
            assert_eq!(s.tls, suite.ends_with("-https"), "{suite}");
            assert!(note(suite).is_some(), "{suite}");
        }
        for suite in [
            "wan-80-repo-https",
            "wan-30-small",
            "wan-40",
            "small",
            "pull",
        ] {
            assert!(scenario(suite).is_none(), "{suite}");
        }
        assert!(SUITES.iter().all(|s| ALL.contains(s)));
        assert_eq!(scenario("wan-150-https").map(|s| s.load), Some(Load::Big));
        assert_eq!(
            scenario("wan-80-repo").map(|s| (s.load, s.path.rtt.as_millis())),
            Some((Load::Repo, 80))
        );
    }

    #[test]
    fn the_frozen_suite_runs_ferry_twice_and_the_fault_row_alone_has_the_fault() {
        let s = scenario("wan-80-frozen").expect("a wan suite");
        assert_eq!(s.fault.map(|f| (f.connection, f.after)), Some((2, 8 << 20)));
        assert!(scenario("wan-80").and_then(|s| s.fault).is_none());
        let (kept, left_out) = tools(named(&["ferry", "ferry --no-pipelining", "aria2c"]), s);
        let names: Vec<_> = kept.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["ferry", FROZEN]);
        assert_eq!(kept[0].shell, kept[1].shell, "the same command");
        assert!(!kept[1].is_peer());
        assert_eq!(left_out.len(), 2);
        let t = targets(&kept, s);
        assert_eq!((t[0].tool.as_str(), t[0].max_extra_s), (FROZEN, Some(3.0)));
        assert!(t[0].text.contains("connection 3 of each run, after 8 MiB"));
    }

    #[test]
    fn small_files_run_against_curl_z_and_aria2c_and_the_repo_against_snapshot_download() {
        let small = scenario("wan-80-small").expect("a wan suite");
        let all = named(&[
            "ferry",
            "ferry --sink buffered",
            "curl -Z",
            "wget",
            "aria2c",
        ]);
        let (kept, left_out) = tools(all, small);
        let names: Vec<_> = kept.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["ferry", "curl -Z", "aria2c"]);
        assert!(left_out[1].reason.contains("one file at a time"));
        let t = targets(&kept, small);
        assert_eq!(
            (t[0].tool.as_str(), t[0].max_ratio),
            ("curl -Z", Some(0.25))
        );

        let repo = scenario("wan-80-repo").expect("a wan suite");
        let all = named(&[
            crate::pull::FERRY,
            crate::pull::AGAIN,
            crate::pull::SAFE,
            crate::pull::HF,
        ]);
        let (kept, left_out) = tools(all, repo);
        let names: Vec<_> = kept.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, [crate::pull::FERRY, crate::pull::HF]);
        assert_eq!(left_out.len(), 2);
        let t = targets(&kept, repo);
        assert_eq!(
            (t[0].min_share, t[0].link_rate, t[1].max_ratio),
            (Some(0.85), Some(400_000_000), Some(0.6))
        );
    }
}
