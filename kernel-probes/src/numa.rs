//! NUMA topology from sysfs: nodes and their CPUs, and the node of each NIC and of the block
//! device under the target directory, where sysfs tells (a node of -1 means "not reported").
//!
//! This is the portable fallback the engine always has; the optional hwloc path would add
//! cache and PCIe detail, not different facts.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::read_trimmed;

/// One NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NumaNode {
    /// Node id.
    pub id: u32,
    /// Online CPUs of the node.
    pub cpus: Vec<usize>,
}

/// A device and the node sysfs places it on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceNode {
    /// Device name (`eth0`, `nvme0n1`).
    pub name: String,
    /// The node, when sysfs reports one.
    pub node: Option<u32>,
}

/// NUMA facts.
#[derive(Debug, Clone, Serialize)]
pub struct Numa {
    /// Nodes with CPUs; one node 0 with every online CPU when the kernel has no NUMA support.
    pub nodes: Vec<NumaNode>,
    /// Network interfaces other than loopback.
    pub nics: Vec<DeviceNode>,
    /// The block device under the probed directory, when it has one (not tmpfs or overlay).
    pub dir_device: Option<DeviceNode>,
}

impl Numa {
    /// The CPUs of `node`, if the node exists.
    pub fn cpus_of(&self, node: u32) -> Option<&[usize]> {
        self.nodes
            .iter()
            .find(|n| n.id == node)
            .map(|n| n.cpus.as_slice())
    }
}

/// Reads the topology; `dir` selects the block device to place.
pub fn probe(dir: Option<&Path>) -> Numa {
    Numa {
        nodes: nodes(),
        nics: nics(),
        dir_device: dir.and_then(block_device_of),
    }
}

/// Parses a sysfs CPU list such as `0-3,8,10-11`.
pub fn parse_cpu_list(s: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    cpus.extend(a..=b);
                }
            }
            None => cpus.extend(part.parse::<usize>().ok()),
        }
    }
    cpus
}

fn nodes() -> Vec<NumaNode> {
    let mut nodes: Vec<NumaNode> = std::fs::read_dir("/sys/devices/system/node")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_prefix("node")?.parse().ok()?;
            let cpus = parse_cpu_list(&read_trimmed(e.path().join("cpulist"))?);
            (!cpus.is_empty()).then_some(NumaNode { id, cpus })
        })
        .collect();
    nodes.sort_by_key(|n| n.id);
    if nodes.is_empty() {
        let online = read_trimmed("/sys/devices/system/cpu/online").map(|s| parse_cpu_list(&s));
        let cpus = online.filter(|c| !c.is_empty()).unwrap_or_else(|| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            (0..n).collect()
        });
        nodes.push(NumaNode { id: 0, cpus });
    }
    nodes
}

fn node_file(path: &Path) -> Option<u32> {
    // sysfs writes -1 when the platform does not say.
    read_trimmed(path)?
        .parse::<i64>()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
}

fn nics() -> Vec<DeviceNode> {
    let mut nics: Vec<DeviceNode> = std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            (name != "lo").then(|| DeviceNode {
                node: node_file(&e.path().join("device/numa_node")),
                name,
            })
        })
        .collect();
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    nics
}

fn block_device_of(dir: &Path) -> Option<DeviceNode> {
    let st = rustix::fs::stat(dir).ok()?;
    let (major, minor) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
    if major == 0 {
        return None; // tmpfs, overlayfs, NFS: no block device behind it
    }
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    let name = sys.file_name()?.to_string_lossy().into_owned();
    // Walk up from the block device (or partition) to the first ancestor that knows its node:
    // the PCI function of an NVMe or virtio disk.
    let node = sys
        .ancestors()
        .take_while(|p| p.starts_with("/sys/devices"))
        .map(|p: &Path| PathBuf::from(p).join("numa_node"))
        .find(|p| p.exists())
        .and_then(|p| node_file(&p));
    Some(DeviceNode { name, node })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpu_list("5"), vec![5]);
        assert!(parse_cpu_list("").is_empty());
    }

    #[test]
    fn topology_has_cpus() {
        let numa = probe(Some(Path::new("/")));
        assert!(numa.nodes.iter().all(|n| !n.cpus.is_empty()));
        eprintln!("numa: {numa:?}");
    }
}
