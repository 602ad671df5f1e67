//! The Hub's API as a pull reads it: the revision resolved to a commit, then the listing pinned
//! to that commit (the paged `/tree` walk, or the revision's `siblings` as a fallback), from the
//! endpoint or else the first mirror that can say; and the file URLs of a listing.
//!
//! Invariants: a listing is bounded ([`MAX_PAGES`] pages, [`MAX_ENTRIES`] entries) before it is
//! checked ([`super::listing::check`]); the Hub's own error codes become [`HubError`]s. Not
//! here: the HTTP client (`api.rs`) or fetching the files (`pull.rs`).

use std::collections::HashSet;

use url::Url;

use super::api::{Answer, Api, error_message};
use super::error::HubError;
use super::listing::{self, RemoteFile, RevisionInfo, TreeEntry};
use super::pull::PullOptions;
use super::repo::{encode_path, encode_segment, is_commit};
use crate::engine::Engine;

/// Pages of a tree walk followed at most (a loop guard; the Hub pages by 1,000 entries).
const MAX_PAGES: usize = 2_000;
/// Entries of a listing, files and directories together, before it is refused: a million
/// entries take some 450 MB to hold and check (the Hub's largest repos have a few hundred
/// thousand files).
const MAX_ENTRIES: usize = 1_000_000;

/// The revision's commit and its files, from the endpoint, else from the first mirror that
/// can say (when the endpoint fails for a reason a mirror may not have: the network, a 5xx, a
/// rate limit, a certificate, a proxy).
pub(crate) fn list_somewhere(
    engine: &Engine,
    options: &PullOptions,
) -> Result<(String, Vec<RemoteFile>), HubError> {
    somewhere(engine, options, |api| {
        let commit = resolve_revision(api, options)?;
        let files = list_files(api, options, &commit)?;
        Ok((commit, files))
    })
}

/// The BitTorrent metainfo of `commit` (`GET /api/{kind}s/{repo}/torrent/{commit}`, as `ferry
/// serve --torrents` publishes it), from the endpoint, else the first mirror that has it. A
/// server still hashing answers 503 with `Retry-After`, which [`Api::get`] waits out.
#[cfg(feature = "swarm")]
pub(crate) fn torrent_somewhere(
    engine: &Engine,
    options: &PullOptions,
    commit: &str,
) -> Result<Vec<u8>, HubError> {
    somewhere(engine, options, |api| {
        let url = api_url(api, options, &format!("torrent/{commit}"))?;
        let answer = api.get(&url)?;
        if answer.head.status != 200 {
            return Err(api_error(api, options, &url, &answer));
        }
        Ok(answer.body)
    })
}

/// The commit `options`' revision names, from the endpoint, else the first mirror that can say.
pub(crate) fn resolve_somewhere(
    engine: &Engine,
    options: &PullOptions,
) -> Result<String, HubError> {
    somewhere(engine, options, |api| resolve_revision(api, options))
}

/// Every file at `commit` (checked as a pull checks them), from the endpoint, else the first
/// mirror that can say.
pub(crate) fn list_at_somewhere(
    engine: &Engine,
    options: &PullOptions,
    commit: &str,
) -> Result<Vec<RemoteFile>, HubError> {
    somewhere(engine, options, |api| list_files(api, options, commit))
}

/// The JSON answer to `GET /api/{kind}s/{repo}/{rest}` (`rest` encoded, with its query), from
/// the endpoint, else the first mirror that can answer; an error status is the Hub's error.
pub(crate) fn api_json_somewhere(
    engine: &Engine,
    options: &PullOptions,
    rest: &str,
) -> Result<serde_json::Value, HubError> {
    somewhere(engine, options, |api| {
        let url = api_url(api, options, rest)?;
        get_json(api, options, &url)
    })
}

/// `ask` of the endpoint, else of the first mirror that can answer (when the endpoint fails for
/// a reason a mirror may not have: the network, a 5xx, a rate limit, a certificate, a proxy).
fn somewhere<T>(
    engine: &Engine,
    options: &PullOptions,
    ask: impl Fn(&Api) -> Result<T, HubError>,
) -> Result<T, HubError> {
    if let Some(token) = &options.authorization {
        token.check().map_err(HubError::Usage)?;
    }
    let mut first_error = None;
    for (i, endpoint) in std::iter::once(&options.endpoint)
        .chain(&options.mirrors)
        .enumerate()
    {
        // The token goes to the endpoint only; credentials in a URL to that URL's origin.
        let mut endpoint = endpoint.clone();
        let in_url = crate::net::target::take_credentials(&mut endpoint);
        let token = (i == 0).then(|| options.authorization.clone()).flatten();
        let api = Api::new(endpoint.clone(), token.or(in_url), engine.dialer().clone());
        match ask(&api) {
            Ok(answer) => {
                if i > 0 {
                    tracing::warn!("listed {} from the mirror {endpoint}", options.repo);
                }
                return Ok(answer);
            }
            Err(
                e @ (HubError::Remote { .. }
                | HubError::RateLimited { .. }
                | HubError::Tls(_)
                | HubError::Proxy(_)),
            ) if i < options.mirrors.len() => {
                tracing::warn!("{e}; asking the next mirror for the listing");
                first_error.get_or_insert(e);
            }
            Err(e) => return Err(first_error.unwrap_or(e)),
        }
    }
    Err(first_error.unwrap_or_else(|| HubError::Usage("no endpoint".into())))
}

/// One file of the repo as a URL on `options`' endpoint and on each mirror, at the commit the
/// revision resolves to (listed as a pull lists it, from the endpoint or else a mirror): `file`
/// when given, else the largest file, so that a ranged read of it is full. For
/// `ferry ping --repo`. Returns the file's path and the URLs, the endpoint's first.
pub fn file_urls(
    engine: &Engine,
    options: &PullOptions,
    file: Option<&str>,
) -> Result<(String, Vec<String>), HubError> {
    let (commit, files) = list_somewhere(engine, options)?;
    let chosen = match file {
        Some(path) => {
            files
                .iter()
                .find(|f| f.path == path)
                .ok_or_else(|| HubError::EntryNotFound {
                    repo: options.repo.to_string(),
                    path: path.to_owned(),
                    commit: commit.clone(),
                })?
        }
        None => files
            .iter()
            .max_by_key(|f| f.size)
            .ok_or_else(|| HubError::Usage(format!("{} has no files", options.repo)))?,
    };
    let urls = std::iter::once(&options.endpoint)
        .chain(&options.mirrors)
        .map(|e| file_url(e, options, &commit, &chosen.path))
        .collect();
    Ok((chosen.path.clone(), urls))
}

/// `E/{prefix}{repo}/resolve/{commit}/{path}` on `endpoint`.
pub(super) fn file_url(endpoint: &Url, options: &PullOptions, commit: &str, path: &str) -> String {
    format!(
        "{}/{}{}/resolve/{commit}/{}",
        endpoint.as_str().trim_end_matches('/'),
        options.kind.url_prefix(),
        options.repo,
        encode_path(path)
    )
}

/// `{api's endpoint}/api/{models|datasets|spaces}/{repo}/{rest}`.
fn api_url(api: &Api, options: &PullOptions, rest: &str) -> Result<Url, HubError> {
    let s = format!(
        "{}/api/{}/{}/{rest}",
        api.endpoint().as_str().trim_end_matches('/'),
        options.kind.plural(),
        options.repo
    );
    Url::parse(&s).map_err(|e| HubError::Usage(format!("bad endpoint URL {s:?}: {e}")))
}

/// The commit `options.revision` names, asked once.
fn resolve_revision(api: &Api, options: &PullOptions) -> Result<String, HubError> {
    let url = api_url(
        api,
        options,
        &format!("revision/{}", encode_segment(&options.revision)),
    )?;
    let info: RevisionInfo = get_json(api, options, &url)?;
    if !is_commit(&info.sha) {
        return Err(HubError::Remote {
            url: url.to_string(),
            detail: format!("the revision resolved to {:?}, not a commit id", info.sha),
        });
    }
    if is_commit(&options.revision) && !info.sha.eq_ignore_ascii_case(&options.revision) {
        return Err(HubError::Remote {
            url: url.to_string(),
            detail: format!("asked for commit {}, got {}", options.revision, info.sha),
        });
    }
    Ok(info.sha.to_ascii_lowercase())
}

/// Every file at `commit`: the paged `/tree` walk, or `siblings` where the endpoint has no tree.
fn list_files(api: &Api, options: &PullOptions, commit: &str) -> Result<Vec<RemoteFile>, HubError> {
    let bad = |detail| bad_listing(options, detail);
    let first = api_url(
        api,
        options,
        &format!("tree/{commit}?recursive=true&expand=false"),
    )?;
    let mut next = Some(first);
    let mut entries: Vec<TreeEntry> = Vec::new();
    let mut visited = HashSet::new();
    while let Some(url) = next.take() {
        if !visited.insert(url.to_string()) {
            return Err(bad(format!("the tree pages loop (back to {url})")));
        }
        if visited.len() > MAX_PAGES {
            return Err(bad(format!(
                "more than {MAX_PAGES} pages of tree (at {url}); refused"
            )));
        }
        let answer = api.get(&url)?;
        if answer.head.status == 404
            && answer.head.header("x-error-code").is_none()
            && entries.is_empty()
        {
            tracing::info!("{url}: no tree API here; listing from the revision's siblings");
            return list_siblings(api, options, commit);
        }
        if answer.head.status != 200 {
            return Err(api_error(api, options, &url, &answer));
        }
        let page: Vec<TreeEntry> = parse_json(&url, &answer)?;
        entries.extend(page);
        check_entry_count(entries.len(), MAX_ENTRIES).map_err(bad)?;
        next = match answer.head.header("link").and_then(next_link) {
            Some(link) => Some(
                url.join(&link)
                    .map_err(|e| bad(format!("bad next-page link {link:?}: {e}")))?,
            ),
            None => None,
        };
    }
    listing::check(listing::from_tree(entries).map_err(bad)?).map_err(bad)
}

/// Refuses a listing of more than `max` entries.
fn check_entry_count(n: usize, max: usize) -> Result<(), String> {
    if n > max {
        return Err(format!("more than {max} entries; refused"));
    }
    Ok(())
}

fn list_siblings(
    api: &Api,
    options: &PullOptions,
    commit: &str,
) -> Result<Vec<RemoteFile>, HubError> {
    let bad = |detail| bad_listing(options, detail);
    let url = api_url(api, options, &format!("revision/{commit}?blobs=true"))?;
    let info: RevisionInfo = get_json(api, options, &url)?;
    let siblings = info
        .siblings
        .ok_or_else(|| bad("the revision lists no siblings".into()))?;
    check_entry_count(siblings.len(), MAX_ENTRIES).map_err(bad)?;
    listing::check(listing::from_siblings(siblings).map_err(bad)?).map_err(bad)
}

fn bad_listing(options: &PullOptions, detail: String) -> HubError {
    HubError::BadListing {
        repo: options.repo.to_string(),
        detail,
    }
}

/// GETs `url` and reads its JSON; an error status becomes what the user must do.
fn get_json<T: serde::de::DeserializeOwned>(
    api: &Api,
    options: &PullOptions,
    url: &Url,
) -> Result<T, HubError> {
    let answer = api.get(url)?;
    if answer.head.status != 200 {
        return Err(api_error(api, options, url, &answer));
    }
    parse_json(url, &answer)
}

/// The `rel="next"` target of a `Link` header.
fn next_link(value: &str) -> Option<String> {
    value.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"" || p.trim() == "rel=next");
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| target.to_owned())
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(url: &Url, answer: &Answer) -> Result<T, HubError> {
    serde_json::from_slice(&answer.body).map_err(|e| HubError::Remote {
        url: url.to_string(),
        detail: format!("unreadable JSON answer: {e}"),
    })
}

/// Maps an API error answer to what the user must do.
fn api_error(api: &Api, options: &PullOptions, url: &Url, answer: &Answer) -> HubError {
    let repo = options.repo.to_string();
    let code = answer.head.header("x-error-code").unwrap_or("");
    let status = answer.head.status;
    let had_token = options.authorization.is_some();
    match (status, code) {
        (_, "GatedRepo") => HubError::Gated {
            page: format!(
                "{}/{}{repo}",
                api.endpoint().as_str().trim_end_matches('/'),
                options.kind.url_prefix()
            ),
            repo,
        },
        (_, "RevisionNotFound") => HubError::RevisionNotFound {
            repo,
            revision: options.revision.clone(),
        },
        (401 | 403, code) if had_token && code != "RepoNotFound" => {
            HubError::BadToken { repo, status }
        }
        // Private repos answer 401 to a request without a token: it looks like a missing one.
        (_, "RepoNotFound") | (404 | 401, _) => HubError::RepoNotFound {
            repo,
            kind: options.kind.to_string(),
            endpoint: api.endpoint().to_string(),
        },
        _ => HubError::Remote {
            url: url.to_string(),
            detail: format!(
                "{status} {}{}",
                answer.head.reason,
                error_message(answer)
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_are_bounded() {
        assert!(check_entry_count(MAX_ENTRIES, MAX_ENTRIES).is_ok());
        let e = check_entry_count(MAX_ENTRIES + 1, MAX_ENTRIES).expect_err("too many");
        assert!(e.contains("more than 1000000 entries"), "{e}");
    }

    #[test]
    fn next_links_are_found() {
        assert_eq!(
            next_link("<http://h/api/models/a/tree/x?cursor=abc>; rel=\"next\"").as_deref(),
            Some("http://h/api/models/a/tree/x?cursor=abc")
        );
        assert_eq!(
            next_link("<http://h/p1>; rel=\"prev\", <http://h/p3>; rel=\"next\"").as_deref(),
            Some("http://h/p3")
        );
        assert_eq!(next_link("<http://h/p1>; rel=\"prev\""), None);
    }
}
