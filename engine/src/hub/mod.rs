//! The Hugging Face Hub: mirror a repo (`ferry pull`) the way huggingface_hub lays it out, with
//! every file verified.
//!
//! A [`Pull`] resolves the revision to a commit once, walks the listing pinned to that commit,
//! refuses a hostile listing, skips what is already in place, fetches the rest through the
//! [`Engine`](crate::Engine) as one job (each file checked against its sha256 or git blob id
//! before it gets its name), then publishes it in a [`Layout`]. The protocol is that of the
//! Hub's HTTP API; the serving side is [`crate::serve`].
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ferry::hub::{Layout, Pull, PullOptions, RepoId};
//! use ferry::{Config, Engine};
//!
//! let engine = Engine::new(Config::default())?;
//! let options = PullOptions::new(
//!     RepoId::parse("org/model")?,
//!     Layout::Cache("/data/hf/hub".into()),
//!     "http://127.0.0.1:8080".parse()?,
//! );
//! let report = Pull::start(&engine, options)?.finish()?;
//! println!("{} files at {}", report.files, report.path.display());
//! # Ok(())
//! # }
//! ```
//!
//! [`verify`] re-hashes a mirror against its listing; [`gc`] removes what interrupted pulls
//! left and no run resumes. Not here: serving
//! ([`crate::serve`]).

pub(crate) mod api;
pub mod env;
mod error;
mod gc;
mod layout;
pub(crate) mod listing;
mod pull;
mod remote;
pub(crate) mod repo;
#[cfg(feature = "swarm")]
mod swarm;
pub(crate) mod trees;
pub(crate) mod upstream;
mod verify;

pub use error::HubError;
pub use gc::{GcReport, gc, parse_age};
pub use layout::Layout;
pub use pull::{Pull, PullOptions, PullReport};
pub use remote::file_urls;
pub use repo::{RepoId, RepoType};
#[cfg(feature = "swarm")]
pub use swarm::{ProgressFn, SwarmOptions, SwarmProgress, SwarmReport};
pub use verify::{FileCheck, FileState, VerifyReport, verify};
