//! The stock huggingface_hub client, run by the tests: the release `scripts/setup.sh` installs
//! for `python3`, or another interpreter (an older release in a virtualenv). Every network
//! variable that could send it elsewhere is removed ([`crate::env::scrub`]); it talks to the
//! endpoint given only.

use std::path::{Path, PathBuf};
use std::process::Command;

/// True when `python3` can import huggingface_hub; prints why not.
pub fn have_hf_client() -> bool {
    match Command::new("python3")
        .args([
            "-c",
            "import huggingface_hub; print(huggingface_hub.__version__)",
        ])
        .output()
    {
        Ok(o) if o.status.success() => {
            eprintln!(
                "huggingface_hub {}",
                String::from_utf8_lossy(&o.stdout).trim()
            );
            true
        }
        Ok(o) => {
            eprintln!(
                "SKIP: huggingface_hub not importable (scripts/setup.sh installs it): {}",
                String::from_utf8_lossy(&o.stderr)
            );
            false
        }
        Err(e) => {
            eprintln!("SKIP: python3 not runnable: {e}");
            false
        }
    }
}

const CLIENT_SCRIPT: &str = r#"
import json, sys
from huggingface_hub import hf_hub_download, snapshot_download
out = []
for job in json.loads(sys.argv[1]):
    if job["op"] == "snapshot":
        out.append(snapshot_download(job["repo"], repo_type=job["type"], revision=job["revision"]))
    else:
        out.append(hf_hub_download(job["repo"], job["file"], repo_type=job["type"], revision=job["revision"]))
print(json.dumps(out))
"#;

/// Runs the huggingface_hub client on `jobs` and returns the paths it returned.
pub fn hf_client(
    endpoint: &str,
    cache: &Path,
    offline: bool,
    jobs: &serde_json::Value,
) -> Vec<PathBuf> {
    hf_client_ca(endpoint, cache, offline, jobs, None)
}

/// [`hf_client`] trusting the CA in `ca` (through `SSL_CERT_FILE`, as users of a private CA do).
pub fn hf_client_ca(
    endpoint: &str,
    cache: &Path,
    offline: bool,
    jobs: &serde_json::Value,
    ca: Option<&Path>,
) -> Vec<PathBuf> {
    hf_client_python(Path::new("python3"), endpoint, cache, (offline, jobs), ca)
}

/// [`hf_client_ca`] run by `python` (a virtualenv's interpreter, for another release).
pub fn hf_client_python(
    python: &Path,
    endpoint: &str,
    cache: &Path,
    (offline, jobs): (bool, &serde_json::Value),
    ca: Option<&Path>,
) -> Vec<PathBuf> {
    let mut cmd = client_command(python, endpoint, cache, offline);
    cmd.args(["-c", CLIENT_SCRIPT, &jobs.to_string()]);
    if let Some(ca) = ca {
        cmd.env("SSL_CERT_FILE", ca);
    }
    eprintln!("python3 huggingface_hub (offline={offline}): {jobs}");
    let o = cmd.output().expect("run python3");
    assert!(
        o.status.success(),
        "huggingface_hub failed (offline={offline}):\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    let last = stdout.lines().last().expect("client output");
    serde_json::from_str::<Vec<String>>(last)
        .expect("client JSON")
        .into_iter()
        .map(PathBuf::from)
        .collect()
}

/// `python` set up to talk to `endpoint` only, with `cache` as its cache: the variables the
/// client reads are set, the ones that could send it elsewhere (tokens, proxies, CAs) removed.
pub fn client_command(python: &Path, endpoint: &str, cache: &Path, offline: bool) -> Command {
    let mut cmd = Command::new(python);
    cmd.env("HF_ENDPOINT", endpoint)
        .env("HF_HUB_DISABLE_XET", "1")
        .env("HF_HUB_CACHE", cache)
        .env("HF_HOME", cache.join("home"))
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env("HF_HUB_OFFLINE", if offline { "1" } else { "0" })
        .env("NO_PROXY", "*")
        .env("no_proxy", "*");
    crate::env::scrub(&mut cmd).env_remove("HF_HUB_ENABLE_HF_TRANSFER");
    cmd
}
