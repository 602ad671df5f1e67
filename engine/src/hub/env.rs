//! The Hugging Face environment conventions, as huggingface_hub reads them: where the Hub is
//! (`HF_ENDPOINT`), where the cache is (`HF_HUB_CACHE`, `HF_HOME`, `XDG_CACHE_HOME`), and the
//! access token (`HF_TOKEN`, `HF_TOKEN_PATH`, `HF_HOME/token`). A program embedding ferry gets
//! the defaults the `ferry` command has; an explicit value always wins over the environment.
//!
//! An empty or blank variable counts as unset. Not here: checking the values (a URL is parsed
//! by the caller, a token is checked when it is sent).
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ferry::hub::{Layout, PullOptions, RepoId, env};
//!
//! let endpoint = env::endpoint(None).parse()?;
//! let layout = Layout::Cache(env::cache_dir(None)?);
//! let mut options = PullOptions::new(RepoId::parse("org/model")?, layout, endpoint);
//! if let Some(token) = env::token(None, None)? {
//!     options = options.token(token);
//! }
//! # Ok(())
//! # }
//! ```

use std::path::PathBuf;

use super::HubError;

/// The Hub endpoint: `flag` (a command's `--endpoint`), else `HF_ENDPOINT`, else
/// `https://huggingface.co`.
pub fn endpoint(flag: Option<String>) -> String {
    flag.or_else(|| env("HF_ENDPOINT"))
        .unwrap_or_else(|| "https://huggingface.co".into())
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn hf_home() -> Option<PathBuf> {
    env("HF_HOME")
        .map(PathBuf::from)
        .or_else(|| env("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("huggingface")))
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface")))
}

/// The huggingface_hub cache: `flag` (`--cache-dir`), else `HF_HUB_CACHE`, else `HF_HOME/hub`,
/// else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub fn cache_dir(flag: Option<PathBuf>) -> Result<PathBuf, HubError> {
    if let Some(d) = flag {
        return Ok(d);
    }
    if let Some(d) = env("HF_HUB_CACHE") {
        return Ok(PathBuf::from(d));
    }
    hf_home().map(|h| h.join("hub")).ok_or_else(|| {
        HubError::Usage("no cache directory: set HF_HOME or pass --cache-dir".into())
    })
}

/// The access token: `flag` (`--token`), else `file` (`--token-file`; `-` reads standard input),
/// else `HF_TOKEN`, else the file `HF_TOKEN_PATH` names, else `HF_HOME/token` (what
/// huggingface_hub's login writes). `None` without any. The token is never printed.
pub fn token(
    flag: Option<String>,
    file: Option<&std::path::Path>,
) -> Result<Option<String>, HubError> {
    if let Some(path) = file {
        let read = if path == std::path::Path::new("-") {
            std::io::read_to_string(std::io::stdin())
        } else {
            std::fs::read_to_string(path)
        };
        let token = read.map_err(|e| {
            HubError::Usage(format!(
                "cannot read the token file {}: {e}",
                path.display()
            ))
        })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(HubError::Usage(format!(
                "the token file {} is empty",
                path.display()
            )));
        }
        return Ok(Some(token.to_owned()));
    }
    Ok(flag.or_else(|| env("HF_TOKEN")).or_else(|| {
        let path = env("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .or_else(|| hf_home().map(|h| h.join("token")))?;
        let t = std::fs::read_to_string(path).ok()?;
        Some(t.trim().to_owned()).filter(|t| !t.is_empty())
    }))
}
