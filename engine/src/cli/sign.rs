//! `ferry sign`: prints a signed, expiring link to a file of a `ferry serve` started with
//! `--sign-key-file` (the same key). All the work is in [`ferry::serve::SignKey`].

use std::path::PathBuf;

use clap::Args;

use super::exit;

/// Arguments of `ferry sign`.
#[derive(Debug, Args)]
pub(crate) struct SignArgs {
    /// The file's URL on the server (`https://hub.example/org/name/resolve/main/model.bin`).
    url: String,
    /// The server's key (its `--sign-key-file`).
    #[arg(long, value_name = "FILE")]
    key_file: PathBuf,
    /// How long the link works, e.g. 90s, 30m, 12h, 7d.
    #[arg(long, value_name = "AGE", default_value = "1h", value_parser = ferry::hub::parse_age)]
    expires: std::time::Duration,
}

pub(crate) fn run(args: SignArgs) -> u8 {
    let key = match ferry::serve::SignKey::from_file(&args.key_file) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("ferry: error: {e}");
            return exit::USAGE;
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match key.sign(&args.url, now.saturating_add(args.expires.as_secs())) {
        Ok(url) => {
            println!("{url}");
            0
        }
        Err(e) => {
            eprintln!("ferry: error: {e}");
            exit::USAGE
        }
    }
}
