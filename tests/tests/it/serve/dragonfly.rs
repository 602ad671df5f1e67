//! What Dragonfly's `dfget hf://REPO --hf-base-url ENDPOINT` asks of a Hub endpoint, replayed
//! against `ferry serve` (dfget is not packaged for Debian). The requests are those of
//! dragonfly-client-backend's Hugging Face backend, built with the `url` crate as it builds them:
//!
//! - v2.1-2.3 list a repo with `GET /api/{type}s/{repo}?revision=REV` and join each file's name
//!   onto the base unencoded (so a name holding `#` is cut at it, from any endpoint: that file
//!   is left out of this generation's replay);
//! - later releases list with `GET /api/{type}s/{repo}/revision/{REV}` (`?blobs=true` for
//!   models), every segment percent-encoded.
//!
//! Both check the repo with `HEAD /api/{type}s/{repo}`, then `HEAD` each file and `GET` it one
//! piece at a time (`Range: bytes=a-b`) on `/{prefix}{repo}/resolve/{REV}/{path}`, sending
//! `User-Agent: dragonfly/...` and, with `--hf-token`, `Authorization: Bearer`.
//!
//! ferry serve is blocking std I/O: no io_uring or safe-mode back-end is involved here.

use url::Url;

use super::*;

/// dfget's piece for these files (small, so the 3 MiB file is several pieces).
const PIECE: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Generation {
    /// v2.1-2.3: `?revision=`, names joined unencoded.
    Query,
    /// Later: `/revision/{REV}`, every segment encoded.
    Segments,
}

/// `url`'s path and query, the request target dfget sends.
fn target(url: &Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    }
}

fn push_segments(mut url: Url, segments: &[&str]) -> Url {
    url.path_segments_mut()
        .expect("a base URL")
        .pop_if_empty()
        .extend(segments);
    url
}

fn listing(generation: Generation, base: &Url, plural: &str, repo: &str, rev: &str) -> Url {
    let api = base.join("/api/").expect("api base");
    match generation {
        Generation::Query => api
            .join(&format!("{plural}/{repo}?revision={rev}"))
            .expect("join"),
        Generation::Segments => {
            let mut segments = vec![plural];
            segments.extend(repo.split('/'));
            segments.extend(["revision", rev]);
            let mut url = push_segments(api, &segments);
            if plural == "models" {
                url.query_pairs_mut().append_pair("blobs", "true");
            }
            url
        }
    }
}

fn resolve_url(
    generation: Generation,
    base: &Url,
    plural: &str,
    repo: &str,
    rev: &str,
    path: &str,
) -> Url {
    let prefix = if plural == "models" {
        String::new()
    } else {
        format!("{plural}/")
    };
    match generation {
        Generation::Query => base
            .join(&format!("{prefix}{repo}/resolve/{rev}/{path}"))
            .expect("join"),
        Generation::Segments => {
            let mut segments: Vec<&str> = Vec::new();
            if plural != "models" {
                segments.push(plural);
            }
            segments.extend(repo.split('/'));
            segments.extend(["resolve", rev]);
            segments.extend(path.split('/'));
            push_segments(base.clone(), &segments)
        }
    }
}

const AGENT: (&str, &str) = ("User-Agent", "dragonfly/v2.3.0");

/// dfget's requests for `hf://{type}/{repo}` at `rev`, which must give `want`, byte for byte.
fn replay(
    serve: &Serve,
    generation: Generation,
    (plural, repo, rev): (&str, &str, &str),
    want: &[FixtureFile],
) {
    let base = Url::parse(&serve.endpoint()).expect("endpoint");
    let what = format!("{generation:?} {plural}/{repo}@{rev}");
    let exists = request(serve, "HEAD", &format!("/api/{plural}/{repo}"), &[AGENT]);
    assert_eq!(exists.status, 200, "{what}: exists");
    let list = request(
        serve,
        "GET",
        &target(&listing(generation, &base, plural, repo, rev)),
        &[AGENT],
    );
    assert_eq!(list.status, 200, "{what}: listing");
    let siblings = list.json()["siblings"]
        .as_array()
        .expect("siblings")
        .clone();
    let listed: BTreeSet<String> = siblings
        .iter()
        .map(|s| s["rfilename"].as_str().expect("rfilename").to_owned())
        .collect();
    let names: BTreeSet<String> = want.iter().map(|f| f.path.clone()).collect();
    assert_eq!(listed, names, "{what}: listing");
    let mut fetched = 0;
    for f in want {
        if generation == Generation::Query && f.path.contains('#') {
            continue;
        }
        let url = resolve_url(generation, &base, plural, repo, rev, &f.path);
        let head = request(serve, "HEAD", &target(&url), &[AGENT]);
        assert_eq!(head.status, 200, "{what}: HEAD {url}");
        let len: u64 = head
            .header("Content-Length")
            .and_then(|v| v.parse().ok())
            .expect("Content-Length");
        assert_eq!(len, f.bytes.len() as u64, "{what}: {}", f.path);
        let mut got = Vec::new();
        let mut start = 0;
        while start < len {
            let end = (start + PIECE).min(len) - 1;
            let range = format!("bytes={start}-{end}");
            let piece = request(serve, "GET", &target(&url), &[AGENT, ("Range", &range)]);
            assert_eq!(piece.status, 206, "{what}: {} {range}", f.path);
            got.extend_from_slice(&piece.body);
            start = end + 1;
        }
        assert!(got == f.bytes, "{what}: {} differs", f.path);
        fetched += 1;
    }
    eprintln!("{what}: {fetched} files byte-identical through dfget's requests");
}

#[test]
fn dfget_requests_are_answered() {
    let tmp = cache_root();
    let serve = Serve::start(&tmp.path().join("root"), None);
    let pr = [file("config.json", b"{\"pr\": 1}".to_vec(), false)];
    for generation in [Generation::Query, Generation::Segments] {
        replay(
            &serve,
            generation,
            ("models", "org/name", "main"),
            &cache_model_files(),
        );
        replay(
            &serve,
            generation,
            ("models", "org/name", COMMIT),
            &cache_model_files(),
        );
        replay(&serve, generation, ("models", "org/name", "refs/pr/1"), &pr);
        replay(
            &serve,
            generation,
            ("datasets", "org/data", "main"),
            &dataset_files(),
        );
    }
    // A revision the server does not have is not answered with another one.
    let r = get(&serve, "/api/models/org/name?revision=nope");
    assert_eq!((r.status, r.error_code()), (404, Some("RevisionNotFound")));
}
