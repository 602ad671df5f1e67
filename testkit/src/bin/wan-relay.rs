//! `wan-relay UPSTREAM RTT_MS FLOW_MB LINK_MB [FREEZE_CONN FREEZE_AFTER_BYTES]`: the benchmark's
//! WAN relay (`ferry_testkit::relay`) in front of `UPSTREAM` (`127.0.0.1:PORT`), for looking at
//! one download by hand, over TCP and, on the same port, over UDP (`ferry_testkit::udprelay`,
//! for QUIC). Prints the address to connect to, then relays until killed, saying
//! on stderr every 5 s (every 50 ms with `WAN_RELAY_TRACE` set: a download's ramp and tail)
//! how many connections it took, how many bytes went down and how many datagrams a full queue
//! dropped; a rate of 0 is no cap.

use std::time::Duration;

use ferry_testkit::relay::{Freeze, Relay, WanPath};
use ferry_testkit::udprelay::UdpRelay;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        matches!(args.len(), 4 | 6),
        "usage: wan-relay UPSTREAM RTT_MS FLOW_MB LINK_MB [FREEZE_CONN FREEZE_AFTER_BYTES]"
    );
    let rate = |s: &str| -> anyhow::Result<Option<u64>> {
        let mb: u64 = s.parse()?;
        Ok((mb > 0).then_some(mb * 1_000_000))
    };
    let path = WanPath {
        rtt: Duration::from_millis(args[1].parse()?),
        flow_rate: rate(&args[2])?,
        link_rate: rate(&args[3])?,
    };
    let upstream = args[0].parse()?;
    let relay = Relay::start(upstream, path)?;
    let udp = UdpRelay::start(relay.addr().port(), upstream, path)?;
    if args.len() == 6 {
        relay.freeze(Freeze {
            connection: args[4].parse()?,
            after: args[5].parse()?,
        });
    }
    println!("{}", relay.addr());
    let every = match std::env::var_os("WAN_RELAY_TRACE") {
        Some(_) => Duration::from_millis(50),
        None => Duration::from_secs(5),
    };
    loop {
        std::thread::sleep(every);
        eprintln!(
            "{} connections, {} MB down; UDP {} MB down, {} datagrams dropped",
            relay.connections(),
            relay.bytes_down() / 1_000_000,
            udp.bytes_down() / 1_000_000,
            udp.dropped()
        );
    }
}
