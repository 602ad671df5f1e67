//! The `wan-*` suites: one file from nginx through a relay that emulates a path users have
//! (`ferry_testkit::relay`): a round trip, a per-flow rate cap (a CDN edge), and a link cap that
//! all flows share. The link cap is the ceiling; ferry's throughput is reported as a share of
//! it, round by round, beside the peers that open several connections.
//!
//! The three paths are those issue 29 measured first: 30 ms with 100 MB/s per flow and a
//! 1000 MB/s link, 80 ms with 40 and 400, 150 ms with 25 and 300. Not here: loss (TCP under the
//! relay recovers it on loopback) or HTTP/2 (the origin speaks HTTP/1.1 here).

use std::time::Duration;

use ferry_testkit::relay::WanPath;

use crate::report::Target;
use crate::{LeftOut, Tool, peers};

/// The suites, shortest round trip first.
pub(crate) const SUITES: [&str; 3] = ["wan-30", "wan-80", "wan-150"];

/// The path a `wan-*` suite emulates; `None` for the other suites.
pub(crate) fn path(suite: &str) -> Option<WanPath> {
    let (rtt, flow, link) = match suite {
        "wan-30" => (30, 100, 1000),
        "wan-80" => (80, 40, 400),
        "wan-150" => (150, 25, 300),
        _ => return None,
    };
    Some(WanPath {
        rtt: Duration::from_millis(rtt),
        flow_rate: Some(flow * 1_000_000),
        link_rate: Some(link * 1_000_000),
    })
}

/// The tools worth running over `path`: ferry verified and the peers that open several
/// connections. One-connection tools are capped at the per-flow rate by construction; they
/// are left out with that reason rather than spending minutes to show it.
pub(crate) fn tools(all: Vec<Tool>, path: WanPath) -> (Vec<Tool>, Vec<LeftOut>) {
    let keep = [
        "ferry",
        "ferry --no-pipelining",
        "aria2c",
        "axel",
        "hf_transfer",
    ];
    let flow = path.flow_rate.unwrap_or(0) as f64 / 1e6;
    let mut left_out = Vec::new();
    let mut tools = Vec::new();
    for t in all {
        // ferry --no-pipelining: what pipelining is worth on this path.
        if keep.contains(&t.name.as_str()) {
            tools.push(t);
        } else if t.name.starts_with("ferry") {
            left_out.push(LeftOut {
                tool: t.name,
                reason: "the loopback suites compare ferry's own variants; here only the \
                         default (verified, durable) runs"
                    .into(),
            });
        } else {
            left_out.push(LeftOut {
                tool: t.name,
                reason: format!(
                    "one connection: capped at the path's per-flow {flow:.0} MB/s by construction"
                ),
            });
        }
    }
    (tools, left_out)
}

/// The goals over a WAN path: at least 0.9 of the link cap, and ahead of every peer.
pub(crate) fn targets(tools: &[Tool], path: WanPath) -> Vec<Target> {
    let peers = peers(tools);
    vec![
        Target {
            text: format!(
                "`ferry` (durable, verified) as a share of the link cap ({} MB/s, {} ms round \
                 trip, {} MB/s per flow)",
                path.link_rate.unwrap_or(0) / 1_000_000,
                path.rtt.as_millis(),
                path.flow_rate.unwrap_or(0) / 1_000_000
            ),
            tool: "ferry".into(),
            min_share: Some(0.9),
            link_rate: path.link_rate,
            ..Default::default()
        },
        Target {
            text: format!(
                "`ferry` ahead of every peer (the fastest median of {})",
                peers.join(", ")
            ),
            tool: "the best peer".into(),
            best_of: peers,
            max_ratio: Some(1.0),
            ..Default::default()
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_suite_names_its_path_and_keeps_the_many_connection_tools() {
        let p = path("wan-80").expect("a wan suite");
        assert_eq!(p.label(), "80ms-40M-400M");
        assert!(path("big").is_none());
        let all = [
            "ferry",
            "ferry --no-pipelining",
            "ferry --safe-mode",
            "curl",
            "aria2c",
            "hf_transfer",
            "axel",
        ]
        .map(|n| Tool::new(n, String::new()))
        .to_vec();
        let (kept, left_out) = tools(all, p);
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
        let t = targets(&kept, p);
        assert_eq!(t[0].link_rate, Some(400_000_000));
        assert_eq!(t[1].best_of, ["aria2c", "hf_transfer", "axel"]);
    }
}
