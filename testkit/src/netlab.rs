//! A small network of namespaces for swarm tests, on one machine and touching none of its own
//! interfaces: a hub namespace holding a bridge, and nodes each in a network namespace of their
//! own, joined to the bridge by a veth pair, addressed `10.77.0.N/24`, each link optionally
//! capped both ways with `tbf` (as a switch port of that speed would be).
//!
//! Every namespace is held by a `sleep` that `unshare --net` started (as root); dropping the
//! [`Lab`] kills those by PID, and the namespaces and links go with them. Programs run in a
//! node through `nsenter --net`; the caller starts and stops them ([`Node::command`]).

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};

/// A namespace held open by a `sleep` child.
#[derive(Debug)]
struct Holder(Child);

impl Holder {
    fn new() -> Result<Holder, String> {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "86400"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("unshare (util-linux): {e}"))?;
        let holder = Holder(child);
        // Until unshare has exec'd sleep, the PID is not yet in its namespace.
        let own = std::fs::read_link("/proc/self/ns/net").map_err(|e| e.to_string())?;
        for _ in 0..200 {
            let ns = std::fs::read_link(format!("/proc/{}/ns/net", holder.pid()));
            if ns.is_ok_and(|ns| ns != own) {
                return Ok(holder);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Err("unshare --net: no namespace of its own (not root?)".into())
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `nsenter --target PID --net PROGRAM ARGS...`, which must succeed.
fn run_in(pid: u32, program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("nsenter")
        .arg(format!("--target={pid}"))
        .arg("--net")
        .arg(program)
        .args(args)
        .output()
        .map_err(|e| format!("nsenter: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One machine of the lab.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub addr: Ipv4Addr,
    holder: Holder,
}

impl Node {
    /// `program` run in this node's network namespace (its file system is the machine's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--target={}", self.holder.pid()))
            .arg("--net")
            .arg(program);
        c
    }

    /// Bytes this node's interface has sent, and received.
    pub fn bytes(&self) -> Result<(u64, u64), String> {
        let json = run_in(
            self.holder.pid(),
            "ip",
            &["-s", "-j", "link", "show", "dev", "eth0"],
        )?;
        let v: serde_json::Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
        let stats = &v[0]["stats64"];
        match (stats["tx"]["bytes"].as_u64(), stats["rx"]["bytes"].as_u64()) {
            (Some(tx), Some(rx)) => Ok((tx, rx)),
            _ => Err(format!("no byte counters in {json}")),
        }
    }
}

/// The hub and its nodes.
#[derive(Debug)]
pub struct Lab {
    hub: Holder,
    nodes: Vec<Node>,
}

impl Lab {
    /// A hub namespace with a bridge up and no node yet.
    pub fn new() -> Result<Lab, String> {
        let hub = Holder::new()?;
        run_in(hub.pid(), "ip", &["link", "add", "br0", "type", "bridge"])?;
        run_in(hub.pid(), "ip", &["link", "set", "br0", "up"])?;
        Ok(Lab {
            hub,
            nodes: Vec::new(),
        })
    }

    /// Adds a node at `10.77.0.N` (N counts from 1), its link capped at `mbit` both ways when
    /// given. Returns its index.
    pub fn add(&mut self, name: &str, mbit: Option<u32>) -> Result<usize, String> {
        let n = self.nodes.len() + 1;
        if n > 250 {
            return Err("at most 250 nodes".into());
        }
        let holder = Holder::new()?;
        let (hub, pid) = (self.hub.pid(), holder.pid().to_string());
        let port = format!("v{n}");
        run_in(
            hub,
            "ip",
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &pid,
            ],
        )?;
        run_in(hub, "ip", &["link", "set", &port, "master", "br0", "up"])?;
        let addr = Ipv4Addr::new(10, 77, 0, n as u8);
        let node = holder.pid();
        run_in(
            node,
            "ip",
            &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
        )?;
        run_in(node, "ip", &["link", "set", "eth0", "up"])?;
        run_in(node, "ip", &["link", "set", "lo", "up"])?;
        if let Some(mbit) = mbit {
            let rate = format!("{mbit}mbit");
            // A burst of a few ms at the rate, and a queue of 20 ms: what a switch port does.
            let burst = format!("{}kb", (mbit / 8).max(32));
            for (pid, dev) in [(node, "eth0"), (hub, port.as_str())] {
                run_in(
                    pid,
                    "tc",
                    &[
                        "qdisc", "add", "dev", dev, "root", "tbf", "rate", &rate, "burst", &burst,
                        "latency", "20ms",
                    ],
                )?;
            }
        }
        self.nodes.push(Node {
            name: name.to_owned(),
            addr,
            holder,
        });
        Ok(self.nodes.len() - 1)
    }

    /// The node at `index`.
    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index]
    }
}

/// Debian's opentracker (`cmd`: the program, prepared by the caller, in a node or not) on
/// `ip:port` (TCP and UDP), in whitelist mode for `hashes` (hex info hashes), its files in
/// `dir/opentracker`. It drops to `nobody`: `dir` and that folder are made readable to all.
pub fn opentracker(
    mut cmd: Command,
    (ip, port): (&str, u16),
    dir: &std::path::Path,
    hashes: &[&str],
) -> Result<crate::KillOnDrop, String> {
    use std::os::unix::fs::PermissionsExt;
    let otr = dir.join("opentracker");
    std::fs::create_dir_all(&otr).map_err(|e| format!("{}: {e}", otr.display()))?;
    for d in [dir, &otr] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", d.display()))?;
    }
    let list: String = hashes.iter().map(|h| format!("{h}\n")).collect();
    std::fs::write(otr.join("whitelist.txt"), list).map_err(|e| e.to_string())?;
    let port = port.to_string();
    cmd.args(["-i", ip, "-p", &port, "-P", &port, "-d"])
        .arg(&otr)
        .args(["-w", "whitelist.txt"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(crate::KillOnDrop)
        .map_err(|e| format!("opentracker (scripts/setup.sh): {e}"))
}
