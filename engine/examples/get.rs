//! Downloads one URL to a file, verified against a sha256 when one is given, with a progress
//! line while it runs. Uses only the public API of the `ferry` crate.
//!
//! ```sh
//! cargo run -p ferry --example get -- http://127.0.0.1:8080/big big.bin [SHA256]
//! ```

use std::time::Duration;

use ferry::{Config, Engine, Event, GetItem};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(output)) = (args.next(), args.next()) else {
        eprintln!("usage: get URL OUTPUT [SHA256]");
        std::process::exit(2);
    };
    let engine = Engine::new(Config::default())?;
    let mut item = GetItem::new(url, &output);
    if let Some(sha256) = args.next() {
        item = item.sha256(sha256);
    }
    let mut job = engine.get_many([item])?;
    for event in job.events(Duration::from_millis(500)) {
        if let Event::Progress(p) = event {
            eprintln!("{} of {:?} bytes", p.done, p.total);
        }
    }
    let report = job.wait()?;
    println!(
        "{} bytes in {:.2} s ({:.2} GB/s) on {:?}, verified: {}",
        report.bytes,
        report.seconds,
        report.gb_per_s,
        report.backend,
        report.verified.is_some()
    );
    Ok(())
}
