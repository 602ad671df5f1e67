//! The environment of every client the tests and the benchmark start: the variables that could
//! send it somewhere other than the loopback origin it is given (proxies), make it trust another
//! CA than the one it is told to, or hand it a credential of the machine's user (tokens).
//! [`scrub`] removes them from a `Command`; a client that needs one (a private CA, a proxy
//! under test) is given it explicitly after, on its own command line or environment.
//!
//! This module changes no variable of the running process, and does not remove ferry's own
//! (`FERRY_*`): each caller says which of those it clears.

use std::process::Command;

/// Credentials of the machine's user for the Hub.
pub const TOKENS: &[&str] = &["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"];

/// Proxies, as curl, Python and ferry read them (both spellings).
pub const PROXIES: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];

/// Where OpenSSL, rustls-native-certs and Python's requests look for other CAs.
pub const TRUST: &[&str] = &["SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE"];

/// Removes [`TOKENS`], [`PROXIES`] and [`TRUST`] from `cmd`'s environment.
pub fn scrub(cmd: &mut Command) -> &mut Command {
    for var in TOKENS.iter().chain(PROXIES).chain(TRUST) {
        cmd.env_remove(var);
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_every_listed_variable_and_nothing_else() {
        let mut cmd = Command::new("true");
        cmd.env("KEEP", "1");
        scrub(&mut cmd);
        let envs: Vec<_> = cmd.get_envs().collect();
        for var in TOKENS.iter().chain(PROXIES).chain(TRUST) {
            assert!(
                envs.contains(&(std::ffi::OsStr::new(var), None)),
                "{var} removed"
            );
        }
        assert!(envs.contains(&(
            std::ffi::OsStr::new("KEEP"),
            Some(std::ffi::OsStr::new("1"))
        )));
    }
}
