//! A download suite's origin, the one every tool of the suite fetches from: nginx on loopback over
//! HTTP, or over HTTPS for `https` (`https.rs`), or either behind the test kit's relay that
//! emulates a WAN path for the `wan-*` suites (`wan.rs`). It also says what nginx logged about a
//! run (the TLS and HTTP versions each tool used; for `h3`, whose origin is Caddy, the HTTP
//! versions its access log names), and for `wan-80-frozen` it arms the relay's
//! fault before each run of the row that has it and disarms it before every other run.
//!
//! Invariants: every server and relay it starts is stopped when it is dropped (nginx by its
//! PID), also on an error; a fault fires only in the runs of the row that asks for it. It
//! measures nothing, and `ferry serve` (the `pull` and `wan-80-repo` origin) is `pull.rs`'s.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::bail;
use ferry_testkit::Nginx;
use ferry_testkit::relay::{Freeze, Relay};

use crate::{https, wan};

/// Stopped by its PID when dropped. Over HTTPS, every URL a tool is given is HTTPS (the kit's
/// nginx also listens for HTTP on another port, which none is), with a certificate signed by a
/// CA made for this run.
pub(crate) enum Origin {
    Http(Nginx),
    Https {
        nginx: Nginx,
        ca: PathBuf,
    },
    /// Caddy (`h3`): HTTP/1.1, HTTP/2 and HTTP/3 on one port, with its internal CA.
    Caddy {
        caddy: ferry_testkit::caddy::Caddy,
        ca: PathBuf,
    },
    /// nginx (over HTTPS where `ca` is set) behind a relay that emulates a WAN path; `fault`:
    /// the freeze armed for the runs of [`wan::FROZEN`].
    Wan {
        relay: Relay,
        nginx: Nginx,
        ca: Option<PathBuf>,
        fault: Option<Freeze>,
    },
}

impl Origin {
    pub(crate) fn start(suite: &str, root: &Path, scratch: &Path) -> anyhow::Result<Origin> {
        let plain = || Nginx::try_start(root, &Default::default()).map_err(anyhow::Error::msg);
        if let Some(s) = wan::scenario(suite) {
            let (nginx, ca, port) = if s.tls {
                let pki = https::Pki::create(&scratch.join("pki"))?;
                let nginx = https::start(root, &pki, true)?;
                let port = nginx.tls_port();
                (nginx, Some(pki.ca), port)
            } else {
                let nginx = plain()?;
                let port = nginx.port();
                (nginx, None, port)
            };
            let relay = Relay::start(SocketAddr::from(([127, 0, 0, 1], port)), s.path)?;
            eprintln!("{suite}: relay at {} ({})", relay.addr(), s.path.label());
            return Ok(Origin::Wan {
                relay,
                nginx,
                ca,
                fault: s.fault,
            });
        }
        if suite == "h3" {
            let caddy = ferry_testkit::caddy::Caddy::start(root);
            let ca = caddy.ca();
            return Ok(Origin::Caddy { caddy, ca });
        }
        if suite != "https" {
            return Ok(Origin::Http(plain()?));
        }
        let pki = https::Pki::create(&scratch.join("pki"))?;
        let nginx = https::start(root, &pki, false)?;
        Ok(Origin::Https { nginx, ca: pki.ca })
    }

    /// The URL the suite's files are under.
    pub(crate) fn base(&self) -> String {
        match self {
            Origin::Http(nginx) => format!("http://127.0.0.1:{}/files", nginx.port()),
            Origin::Https { nginx, .. } => https::base(nginx.tls_port()),
            Origin::Caddy { caddy, .. } => caddy.url("").trim_end_matches('/').to_owned(),
            Origin::Wan {
                relay, ca: Some(_), ..
            } => https::base(relay.addr().port()),
            Origin::Wan { relay, .. } => format!("http://{}/files", relay.addr()),
        }
    }

    /// The CA every tool must trust (HTTPS only).
    pub(crate) fn ca(&self) -> Option<&Path> {
        match self {
            Origin::Http(_) => None,
            Origin::Https { ca, .. } | Origin::Caddy { ca, .. } => Some(ca),
            Origin::Wan { ca, .. } => ca.as_deref(),
        }
    }

    /// nginx, where its log is worth reading: over HTTPS.
    fn logging(&self) -> Option<&Nginx> {
        match self {
            Origin::Https { nginx, .. } => Some(nginx),
            Origin::Wan {
                nginx, ca: Some(_), ..
            } => Some(nginx),
            _ => None,
        }
    }

    /// A mark in the origin's log, for [`Origin::tls_since`] and [`Origin::http_since`].
    pub(crate) fn mark(&self) -> usize {
        if let Origin::Caddy { caddy, .. } = self {
            return caddy.requests().len();
        }
        self.logging().map_or(0, https::mark)
    }

    /// The TLS versions and ciphers of the requests served since `mark` (HTTPS only).
    pub(crate) fn tls_since(&self, mark: usize) -> Option<String> {
        https::tls_since(self.logging()?, mark)
    }

    /// The HTTP versions of the requests served since `mark` (HTTPS only: over plain HTTP
    /// nginx offers HTTP/1.1 alone).
    pub(crate) fn http_since(&self, mark: usize) -> Option<String> {
        if let Origin::Caddy { caddy, .. } = self {
            let mut seen: Vec<String> = Vec::new();
            for r in caddy.requests().into_iter().skip(mark) {
                if !seen.contains(&r.proto) {
                    seen.push(r.proto);
                }
            }
            return (!seen.is_empty()).then(|| seen.join(", "));
        }
        https::http_since(self.logging()?, mark)
    }

    /// Before a run of `tool`: arms the suite's fault when `tool` is the row that has it,
    /// disarms it otherwise. Give what it returns to [`Origin::after_run`].
    pub(crate) fn before_run(&self, tool: &str) -> Armed {
        let Origin::Wan { relay, fault, .. } = self else {
            return Armed::default();
        };
        match fault {
            Some(f) if tool == wan::FROZEN => relay.freeze_next(*f),
            _ => relay.disarm(),
        }
        Armed {
            frozen: relay.frozen(),
            connections: relay.connections(),
        }
    }

    /// After a run of `tool`: an error when it was to have the fault and none fired (the row
    /// would measure a run without it), with the connections the run opened.
    pub(crate) fn after_run(&self, tool: &str, before: Armed) -> anyhow::Result<()> {
        let Origin::Wan {
            relay,
            fault: Some(f),
            ..
        } = self
        else {
            return Ok(());
        };
        if tool == wan::FROZEN && relay.frozen() == before.frozen {
            bail!(
                "{tool}: the fault did not fire: the run opened {} connections, and connection \
                 {} (if any) carried less than {} MiB; a larger --wan-size gives it more",
                relay.connections() - before.connections,
                f.connection + 1,
                f.after >> 20
            );
        }
        Ok(())
    }
}

/// The relay's counts before a run ([`Origin::before_run`]).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Armed {
    frozen: usize,
    connections: usize,
}
