//! `ferry serve`: command-line front end of [`ferry::serve`]. Not implemented yet.

use clap::Args;

use super::Global;

/// Arguments of `ferry serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {}

pub(crate) fn run(_global: &Global, _args: ServeArgs) -> u8 {
    eprintln!("ferry: error: serve is not implemented yet");
    super::exit::INTERNAL
}
