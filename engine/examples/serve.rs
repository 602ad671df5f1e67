//! Serves the repos under a folder (a huggingface_hub cache, or local dirs) as a read-only,
//! Hub-compatible endpoint that `huggingface_hub` with `HF_ENDPOINT` downloads from. Uses only
//! the public API.
//!
//! ```sh
//! cargo run -p ferry --example serve -- /data/hf/hub 127.0.0.1:8080
//! ```

use ferry::serve::{ServeOptions, Server};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(root), Some(addr)) = (args.next(), args.next()) else {
        eprintln!("usage: serve ROOT ADDR");
        std::process::exit(2);
    };
    let mut options = ServeOptions::default();
    options.max_connections = 64;
    let server = Server::bind(std::path::Path::new(&root), addr.parse()?, options)?;
    let found = server.summary();
    println!(
        "serving {} repos ({} files) on http://{}",
        found.repos,
        found.files,
        server.local_addr()
    );
    server.run()
}
