//! ferry: a Linux data-plane engine that moves bytes from the network to disk at the speed of the
//! hardware, on io_uring where the kernel allows it and on portable syscalls (safe mode) where it
//! does not.
//!
//! The library runs the same jobs as the `ferry` command. Build an [`Engine`] from a [`Config`]
//! (this probes the kernel, picks the back-end and starts one pinned worker per core), start a
//! [`Job`] on it (one file with [`Engine::get`], many over shared connections with
//! [`Engine::get_many`]), watch its [`Event`]s, and get a [`Report`] or a typed [`GetError`]:
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # use std::io::{Read, Write};
//! # let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! # let port = listener.local_addr()?.port();
//! # std::thread::spawn(move || {
//! #     // A one-shot origin for the example: answers any request with 11 bytes.
//! #     let (mut s, _) = listener.accept().unwrap();
//! #     let mut req = [0u8; 1024];
//! #     let _ = s.read(&mut req);
//! #     s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello ferry").unwrap();
//! # });
//! # let dir = tempfile::tempdir()?;
//! use std::time::Duration;
//! use ferry::{Config, Engine, Event};
//!
//! let engine = Engine::new(Config::default())?;
//! let out = dir.path().join("hello.txt");
//! let mut job = engine.get(&format!("http://127.0.0.1:{port}/hello.txt"), &out)?;
//! for event in job.events(Duration::from_millis(100)) {
//!     if let Event::Progress(p) = event {
//!         eprintln!("{} of {:?} bytes", p.done, p.total);
//!     }
//! }
//! let report = job.wait()?;
//! assert_eq!(report.bytes, 11);
//! assert_eq!(std::fs::read(&out)?, b"hello ferry");
//! println!("{} bytes in {:.3} s on {}", report.bytes, report.seconds, report.backend);
//! # Ok(())
//! # }
//! ```
//!
//! A download either completes byte for byte (checked against a sha256 when given one, see
//! [`GetItem::sha256`]) or fails with a [`GetError`] and leaves nothing under its final name.
//! [`hub::Pull`] mirrors a Hugging Face repo (verified, resumable after a crash through its
//! journal) and [`serve::Server`] serves such mirrors; [`hls::download`] downloads an HLS stream
//! (a variant and its renditions, AES-128 decrypted, live streams recorded, gaps reported). Downloads speak HTTPS (rustls), go
//! through proxies, race IPv6 and IPv4 (Happy Eyeballs), take a file's bytes from several
//! mirrors ([`GetItem::mirror`]) and keep to a bandwidth cap ([`Config::limit_rate`]); HTTP/2
//! is offered where asked ([`Config::http2`]), and HTTP/3 over QUIC tried first where asked
//! ([`Config::http3`]; what its connections did: [`QuicReport`]). What the crate does not do
//! yet: QUIC 0-RTT, and racing QUIC against TCP.
//!
//! How the crate is built, module by module, and the flow of a download from its first request
//! to its rename: `ARCHITECTURE.md` at the repository's root.
#![warn(missing_docs)]
#![warn(unreachable_pub)]

mod backend;
mod config;
mod download;
mod engine;
mod error;
/// Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`); not part of the API.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod hls;
pub mod hub;
mod job;
mod journal;
mod net;
mod proto;
mod report;
mod runtime;
pub mod serve;
mod swarm;
pub mod units;
mod verify;

pub use crate::backend::{Backend, BackendKind, SAFE_MODE_ENV, Selection, select};
pub use crate::config::{Config, DEFAULT_CONNECTIONS, START_CONNECTIONS};
pub use crate::engine::{Engine, Interrupter};
pub use crate::error::{ErrorKind, GetError, StartError};
pub use crate::job::{Event, Events, GetItem, Job, Progress};
pub use crate::net::tls::{TlsInfo, tls_info};
pub use crate::report::{EndpointReport, HashReport, PingReport, QuicReport, Report, SinkKind};
pub use crate::runtime::WorkerInfo;
pub use crate::verify::HashAlgorithm;
