//! Mirrors a Hugging Face repo into a huggingface_hub cache, every file verified, from an
//! endpoint (the Hub, a mirror, or a `ferry serve`). Uses only the public API.
//!
//! ```sh
//! cargo run -p ferry --example pull -- org/model /data/hf/hub http://127.0.0.1:8080
//! ```

use ferry::hub::{Layout, Pull, PullOptions, RepoId};
use ferry::{Config, Engine};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(repo), Some(cache), Some(endpoint)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: pull ORG/NAME CACHE_DIR ENDPOINT");
        std::process::exit(2);
    };
    let engine = Engine::new(Config::default())?;
    let options = PullOptions::new(
        RepoId::parse(&repo)?,
        Layout::Cache(cache.into()),
        endpoint.parse()?,
    );
    let report = Pull::start(&engine, options)?.finish()?;
    println!(
        "{} at {}: {} files ({} fetched, {} already here) in {}",
        report.repo,
        report.commit,
        report.files,
        report.fetched,
        report.reused,
        report.path.display()
    );
    Ok(())
}
