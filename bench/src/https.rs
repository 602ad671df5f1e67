//! The `https` suite's origin: the `big` file served by nginx on 127.0.0.1 over HTTPS, the only
//! URLs any tool is given (`ssl_protocols TLSv1.3`, sendfile on, kernel TLS asked for with
//! `ssl_conf_command Options KTLS`; the plain listener the kit's nginx also opens is unused), with a certificate that `openssl` makes for each run: a throwaway CA and a leaf for
//! `localhost` and `127.0.0.1` signed by it (rustls rejects a CA certificate used as the server's
//! own). Every tool is given that CA explicitly; none runs with verification off.
//!
//! The server is the test kit's nginx ([`Nginx`], the one nginx configuration of the repository)
//! with these options; it logs the TLS version and cipher of every request, so the report can
//! say what each tool negotiated (and, where HTTP/2 is offered, as for the `wan-*-https` suites
//! behind the relay, which HTTP version each used); whether nginx encrypted in the kernel (kTLS) is read from
//! `/proc/net/tls_stat`. The server is stopped by its PID when dropped, also on an error.
//!
//! The download rounds, the ceilings and the checks are the `big` suite's (`main.rs`); this
//! module only provides the origin (`origin.rs` puts the relay in front for `wan-*-https`) and
//! these facts about it. It measures nothing itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use ferry_testkit::nginx::Options;
use ferry_testkit::tls::ServerCert;
use ferry_testkit::{Nginx, sha256_file, write_data};

use crate::report::Target;
use crate::{Item, LeftOut, Tool, peers, sh, tools};

/// The host name in every URL: the name the certificate is for (also valid for 127.0.0.1).
const HOST: &str = "localhost";

/// The throwaway CA and the server's certificate, as PEM files.
pub(crate) struct Pki {
    /// What every client trusts.
    pub(crate) ca: PathBuf,
    /// The server's certificate (for `localhost` and `127.0.0.1`) and key.
    server: ServerCert,
}

impl Pki {
    /// Makes a fresh CA (P-256, valid 2 days) and a leaf signed by it, in `dir`.
    pub(crate) fn create(dir: &Path) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let (ca, ca_key, key, csr, ext, cert) = (
            p("ca.pem"),
            p("ca.key"),
            p("localhost.key"),
            p("localhost.csr"),
            p("localhost.ext"),
            p("localhost.pem"),
        );
        std::fs::write(
            &ext,
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )?;
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        sh(&format!(
            "openssl req -x509 -new {ec} -keyout '{ca_key}' -out '{ca}' -days 2 \
             -subj '/CN=ferry-bench throwaway CA' \
             -addext 'basicConstraints=critical,CA:TRUE' \
             -addext 'keyUsage=critical,keyCertSign,cRLSign' 2>&1 && \
             openssl req -new {ec} -keyout '{key}' -out '{csr}' -subj '/CN=localhost' 2>&1 && \
             openssl x509 -req -in '{csr}' -CA '{ca}' -CAkey '{ca_key}' -CAcreateserial \
             -days 2 -sha256 -extfile '{ext}' -out '{cert}' 2>&1 && \
             openssl verify -CAfile '{ca}' '{cert}'"
        ))
        .context("make the throwaway CA and certificate with openssl")?;
        Ok(Pki {
            ca: ca.into(),
            server: ServerCert {
                cert: cert.into(),
                key: key.into(),
            },
        })
    }
}

/// nginx serving `root` as the suite's origin: the test kit's nginx ([`Nginx`]) with this run's
/// certificate, TLS 1.3 only and kernel TLS asked for, and with `http2` HTTP/2 offered beside
/// HTTP/1.1 (ALPN). Its HTTPS URLs are the only ones the suite uses.
pub(crate) fn start(root: &Path, pki: &Pki, http2: bool) -> anyhow::Result<Nginx> {
    let options = Options {
        tls: Some(pki.server.clone()),
        tls_protocols: Some("TLSv1.3".into()),
        ktls: true,
        http2,
        ..Options::default()
    };
    let nginx = Nginx::try_start(root, &options).map_err(anyhow::Error::msg)?;
    eprintln!("https: nginx at {}/", base(nginx.tls_port()));
    Ok(nginx)
}

/// `https://localhost:PORT/files`: nginx's own port, or a relay's in front of it.
pub(crate) fn base(port: u16) -> String {
    format!("https://{HOST}:{port}/files")
}

/// How many requests the origin has logged: give it to [`tls_since`] after a run.
pub(crate) fn mark(nginx: &Nginx) -> usize {
    nginx.requests(0).len()
}

/// The TLS versions and ciphers of the requests logged after `mark`, each once, e.g.
/// `TLSv1.3 TLS_AES_256_GCM_SHA384`; none when no request was logged.
pub(crate) fn tls_since(nginx: &Nginx, mark: usize) -> Option<String> {
    let mut seen: Vec<String> = Vec::new();
    for tls in nginx
        .requests(0)
        .into_iter()
        .skip(mark)
        .filter_map(|r| r.tls)
    {
        if !seen.contains(&tls) {
            seen.push(tls);
        }
    }
    (!seen.is_empty()).then(|| seen.join(", "))
}

/// The HTTP versions of the requests logged after `mark`, each once, e.g. `HTTP/2.0`; none
/// when no request was logged.
pub(crate) fn http_since(nginx: &Nginx, mark: usize) -> Option<String> {
    let mut seen: Vec<String> = Vec::new();
    for r in nginx.requests(0).into_iter().skip(mark) {
        if !seen.contains(&r.protocol) {
            seen.push(r.protocol);
        }
    }
    (!seen.is_empty()).then(|| seen.join(", "))
}

/// Known causes of a peer's failure over HTTPS, by what it printed: (tool, message, cause).
const KNOWN: [(&str, &str, &str); 1] = [(
    "axel",
    "Hostname verification failed",
    "axel's own name check (its dn_match, axel 2.17) takes a one-label DNS name such as \
     `localhost` for malformed and checks no IP address names, so no certificate for this \
     origin passes it",
)];

/// Runs every tool once, untimed, on a small file from the same origin (`base`, trusting `ca`),
/// before the suite's rounds: a peer that cannot verify the origin (or fails otherwise) is left
/// out with what it printed, instead of ever being run with verification off. ferry must pass.
pub(crate) fn probe(
    all: Vec<Tool>,
    root: &Path,
    base: &str,
    ca: &Path,
    scratch: &Path,
) -> anyhow::Result<(Vec<Tool>, Vec<LeftOut>)> {
    let name = "probe.bin";
    let source = root.join(name);
    write_data(&source, 1 << 20, 999);
    let item = Item {
        name: name.into(),
        sha256: sha256_file(&source),
    };
    // The same commands, for the small file.
    let (small, _) = tools(
        "https",
        std::slice::from_ref(&item),
        base,
        scratch,
        Some(ca),
        &ferry_testkit::ferry_bin(),
    )?;
    let out = scratch.join("out-probe");
    let (mut usable, mut left_out) = (Vec::new(), Vec::new());
    for tool in all {
        let line = small
            .iter()
            .find(|t| t.name == tool.name)
            .with_context(|| format!("no probe command for {}", tool.name))?
            .shell
            .replace("{OUT}", &out.to_string_lossy());
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out)?;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &line]);
        ferry_testkit::env::scrub(&mut cmd);
        let run = cmd.output().with_context(|| format!("run {line}"))?;
        let got = out.join(name);
        let why = if !run.status.success() {
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&run.stderr),
                String::from_utf8_lossy(&run.stdout)
            );
            let cause = KNOWN
                .iter()
                .find(|(t, msg, _)| *t == tool.name && said.contains(msg))
                .map(|(_, _, cause)| format!(" ({cause})"))
                .unwrap_or_default();
            let said: Vec<&str> = said
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            Some(format!(
                "it fails to fetch over HTTPS while trusting the CA ({}): {}{cause}",
                run.status,
                said.join(" / ")
            ))
        } else if !got.is_file() || sha256_file(&got) != item.sha256 {
            Some("its output differs from the source".to_owned())
        } else {
            None
        };
        match why {
            None => usable.push(tool),
            Some(why) if tool.name.starts_with("ferry") => {
                bail!(
                    "https: {} cannot fetch from the origin: {why}\n{line}",
                    tool.name
                )
            }
            Some(reason) => {
                eprintln!("https: leaving out {}: {reason}", tool.name);
                left_out.push(LeftOut {
                    tool: tool.name,
                    reason,
                });
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_file(&source);
    Ok((usable, left_out))
}

/// The suite's goal: ferry (durable, verified) at most 0.4x the wall time of the best peer.
pub(crate) fn target(tools: &[Tool]) -> Target {
    let peers = peers(tools);
    Target {
        text: format!(
            "the `big` file over HTTPS (TLS 1.3, nginx on loopback): `ferry` (durable, verified) \
             takes at most 0.4x the wall time of the best peer over HTTPS (the fastest median of \
             {})",
            peers.join(", ")
        ),
        tool: "the best peer".into(),
        best_of: peers,
        max_ratio: Some(0.4),
        ..Target::default()
    }
}

/// TLS send sessions the kernel has encrypted for so far (`TlsTxSw` + `TlsTxDevice` of
/// `/proc/net/tls_stat`); none where the kernel offers no kernel TLS.
pub(crate) fn ktls_sent() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/net/tls_stat").ok()?;
    Some(
        stat.lines()
            .filter_map(|l| l.split_once(char::is_whitespace))
            .filter(|(name, _)| matches!(*name, "TlsTxSw" | "TlsTxDevice"))
            .filter_map(|(_, n)| n.trim().parse::<u64>().ok())
            .sum(),
    )
}

/// Whether nginx sent with kernel TLS between two [`ktls_sent`] readings, in words.
pub(crate) fn ktls_note(before: Option<u64>, after: Option<u64>) -> String {
    match (before, after) {
        (Some(b), Some(a)) if a > b => format!(
            "nginx encrypted in the kernel (kTLS: {} TLS send sessions opened in the network \
             ceiling's transfers), so sendfile stayed in the kernel",
            a - b
        ),
        (Some(_), Some(_)) => "nginx encrypted in user space: the kernel offers kTLS, but \
                               nginx's OpenSSL did not use it"
            .into(),
        _ => "nginx encrypted in user space: this kernel offers no kernel TLS (no \
              /proc/net/tls_stat), so `ssl_conf_command Options KTLS` had no effect and sendfile \
              was not used for the bodies"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ktls_note_says_which_side_encrypted() {
        assert!(ktls_note(None, None).contains("no kernel TLS"));
        assert!(ktls_note(Some(3), Some(3)).contains("did not use it"));
        assert!(ktls_note(Some(3), Some(5)).contains("2 TLS send sessions"));
    }
}
