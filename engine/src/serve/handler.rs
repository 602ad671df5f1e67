//! Answers one parsed request from the catalog: the JSON of `/api/...` (revision info, tree
//! pages, tree sizes), the headers and file of `/resolve/...`, and the Hub's error shape
//! (`X-Error-Code`, `X-Error-Message`, `{"error": ...}`).
//!
//! Files are opened here (read-only, `O_NOFOLLOW`, by the canonical path the scan recorded) and
//! handed back as a [`Body::File`] for the connection to send. This module does no socket I/O,
//! does not frame HTTP (status line, `Content-Length`, `Connection`, `Date` are the
//! connection's), and never emits Xet headers or fields.

use std::fs::File;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};

use super::Shared;
use super::catalog::{FileEntry, Repo, Snapshot, git_blob_sha1};
use super::date::iso8601;
use super::mirror::{Fill, Pin};
use super::range_request::{RangeAnswer, evaluate};
use super::route::{
    Resource, decode, header_safe, parse_target, query_flag, query_param, repo_id, valid_repo_path,
};
use super::signed::Signature;
use crate::hub::RepoType;
use crate::hub::repo::encode_segment;

/// What the handler needs from a request head.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    /// `GET`, `HEAD` or `POST`.
    pub method: &'a str,
    pub target: &'a str,
    /// `scheme://host[:port][/prefix]` clients reach this server by (for `Link`s).
    pub base: &'a str,
    pub range: Option<&'a str>,
    pub if_range: Option<&'a str>,
    /// `Authorization`: a mirror asks its upstream with the caller's own credential.
    pub authorization: Option<&'a str>,
    /// A POST's body (empty when it sent none); `None` for GET and HEAD.
    pub body: Option<&'a [u8]>,
}

/// A response body.
#[derive(Debug)]
pub(crate) enum Body {
    Bytes(Vec<u8>),
    /// `len` bytes of `file` from `offset`; a mirror's blob is pinned while they are sent.
    File {
        file: File,
        offset: u64,
        len: u64,
        pin: Option<Pin>,
    },
    /// `len` bytes from `offset` of a blob still being fetched, sent as they land (a mirror's).
    Filling {
        fill: Arc<Fill>,
        offset: u64,
        len: u64,
        pin: Option<Pin>,
    },
    /// `len` bytes that a HEAD answer announces and no one sends.
    Announced {
        len: u64,
    },
}

/// A response, without the framing headers.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
}

impl Response {
    pub(super) fn json(status: u16, value: &Value) -> Response {
        // Serializing a `Value` cannot fail (its map keys are strings).
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Response {
            status,
            headers: vec![("Content-Type", "application/json; charset=utf-8".into())],
            body: Body::Bytes(body),
        }
    }

    /// An error in the Hub's shape.
    pub(super) fn error(status: u16, code: Option<&'static str>, message: &str) -> Response {
        let mut r = Response::json(status, &json!({ "error": message }));
        if let Some(code) = code {
            r.headers.push(("X-Error-Code", code.into()));
        }
        r.headers.push(("X-Error-Message", header_safe(message)));
        r
    }

    /// Bytes the body holds (what `Content-Length` says, also for HEAD).
    pub(super) fn body_len(&self) -> u64 {
        match &self.body {
            Body::Bytes(b) => b.len() as u64,
            Body::File { len, .. } | Body::Filling { len, .. } | Body::Announced { len } => *len,
        }
    }
}

pub(super) fn not_found() -> Response {
    Response::error(404, None, "Not Found")
}

pub(super) fn repo_not_found(kind: RepoType, id: &str) -> Response {
    Response::error(
        404,
        Some("RepoNotFound"),
        &format!("Repository not found: {} {id}", kind.plural()),
    )
}

pub(super) fn revision_not_found(rev: &str) -> Response {
    Response::error(
        404,
        Some("RevisionNotFound"),
        &format!("Invalid rev id: {rev}"),
    )
}

pub(super) fn entry_not_found(commit: &str, path: &str) -> Response {
    let mut r = Response::error(
        404,
        Some("EntryNotFound"),
        &format!("Entry not found: {path}"),
    );
    r.headers.push(("X-Repo-Commit", commit.to_owned()));
    r
}

pub(super) fn bad_path() -> Response {
    Response::error(400, None, "Invalid path in repo")
}

/// Answers a request of any method, over HTTP/1.1 or HTTP/2: 405 for one this server does not
/// take, 413 for a POST whose body could not be read whole (`req.body` is `None`), else
/// [`handle`].
pub(crate) fn dispatch(ctx: &Shared, req: &Request<'_>) -> Response {
    let mut response = answer(ctx, req);
    if let Some(alt_svc) = &ctx.alt_svc {
        response.headers.push(("Alt-Svc", alt_svc.clone()));
    }
    response
}

/// [`dispatch`]'s answer before the fields every answer carries.
fn answer(ctx: &Shared, req: &Request<'_>) -> Response {
    match req.method {
        "GET" | "HEAD" => handle(ctx, req),
        "POST" if req.body.is_none() => Response::error(
            413,
            None,
            "Request body missing, too large or not length-framed",
        ),
        "POST" => handle(ctx, req),
        _ => {
            let mut r = Response::error(405, None, "Method Not Allowed");
            r.headers.push(("Allow", "GET, HEAD, POST".into()));
            r
        }
    }
}

/// Answers `req`.
pub(crate) fn handle(ctx: &Shared, req: &Request<'_>) -> Response {
    let signed = match signature(ctx, req) {
        Ok(signed) => signed,
        Err(refused) => return refused,
    };
    if let Some(mirror) = &ctx.mirror {
        return mirror.handle(ctx, req, signed);
    }
    match parse_target(req.target) {
        Some((Resource::Api { kind, segs }, query)) => api(ctx, req, kind, &segs, query),
        Some((Resource::File { .. }, _)) if req.method == "POST" => post_not_allowed(),
        Some((Resource::File { kind, segs }, _)) => resolve(ctx, req, kind, &segs),
        None => not_found(),
    }
}

/// With [`super::ServeOptions::sign_key`]: whether a file request came with a valid signed
/// link (`Ok(true)`), needs none (`Ok(false)`: not a file request, or a mirror's caller with a
/// token), or is refused.
fn signature(ctx: &Shared, req: &Request<'_>) -> Result<bool, Response> {
    let Some(key) = &ctx.options.sign_key else {
        return Ok(false);
    };
    let Some((Resource::File { .. }, query)) = parse_target(req.target) else {
        return Ok(false);
    };
    let path = req.target.split('?').next().unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match key.check(path, query, now) {
        Signature::Valid => Ok(true),
        Signature::Invalid(why) => Err(Response::error(403, Some("InvalidSignature"), why)),
        Signature::Unsigned if ctx.mirror.is_some() && req.authorization.is_some() => Ok(false),
        Signature::Unsigned => Err(Response::error(
            401,
            Some("SignatureRequired"),
            "This server serves files to signed links (ferry sign), or as a mirror to callers with a token",
        )),
    }
}

pub(super) fn post_not_allowed() -> Response {
    let mut r = Response::error(405, None, "Method Not Allowed");
    r.headers.push(("Allow", "GET, HEAD".into()));
    r
}

/// A route of the Hub's API that ferry serve does not implement: 501, saying so (never a
/// "repository not found" for a repo it has).
pub(super) fn not_implemented(what: &str) -> Response {
    Response::error(
        501,
        Some("NotImplemented"),
        &format!("ferry serve does not implement {what:?}: it is a read-only mirror"),
    )
}

/// The repo id `segs` spell (each segment decoded), if it is one the catalog has.
fn lookup<'c>(ctx: &'c Shared, kind: RepoType, segs: &[&str]) -> Option<&'c Repo> {
    ctx.catalog.repo(kind, &repo_id(segs)?)
}

/// `org/name` or `name`, raw, for error messages.
fn shown_id(segs: &[&str]) -> String {
    segs.iter().take(2).copied().collect::<Vec<_>>().join("/")
}

pub(super) const ACTIONS: [&str; 8] = [
    "revision",
    "tree",
    "treesize",
    "paths-info",
    "refs",
    "commits",
    "torrent",
    "magnet",
];

fn api(ctx: &Shared, req: &Request<'_>, kind: RepoType, segs: &[&str], query: &str) -> Response {
    // The repo id is `org/name` or `name`; the segment after it must be an action (or nothing).
    let found = [2, 1].into_iter().find_map(|n| {
        let rest = segs.get(n..)?;
        let fits = match rest {
            [] | [""] => true,
            [action, ..] => ACTIONS.contains(action),
        };
        fits.then(|| lookup(ctx, kind, &segs[..n]).map(|r| (r, rest)))
            .flatten()
    });
    let Some((repo, rest)) = found else {
        // A repo this server has, asked for something it does not do, is not "not found".
        if let Some(action) = [2, 1].into_iter().find_map(|n| {
            let action = segs.get(n)?;
            lookup(ctx, kind, &segs[..n]).map(|_| *action)
        }) {
            return not_implemented(action);
        }
        return repo_not_found(kind, &shown_id(segs));
    };
    let posting = req.method == "POST";
    if !posting
        && let [action, revs @ ..] = rest
        && let Some(format) = super::torrents::Format::of(action)
    {
        let Some(publisher) = &ctx.publisher else {
            return super::torrents::not_published();
        };
        let rev = decode(&revs.join("/")).unwrap_or_default();
        return match repo.snapshot(&rev) {
            Some(snap) => publisher.answer(req.base, repo, snap, format),
            None => revision_not_found(&rev),
        };
    }
    match rest {
        ["paths-info", revs @ ..] if posting => {
            let raw = revs.join("/");
            let rev = decode(&raw).unwrap_or_default();
            match repo.snapshot(&rev) {
                Some(snap) => paths_info(snap, req.body.unwrap_or_default()),
                None => revision_not_found(&rev),
            }
        }
        ["paths-info", ..] => {
            let mut r = Response::error(405, None, "Method Not Allowed");
            r.headers.push(("Allow", "POST".into()));
            r
        }
        _ if posting => post_not_allowed(),
        ["refs"] => refs(repo, query),
        ["commits", revs @ ..] => {
            let raw = revs.join("/");
            let rev = decode(&raw).unwrap_or_default();
            match repo.snapshot(&rev) {
                Some(snap) => commits(snap),
                None => revision_not_found(&rev),
            }
        }
        // `?revision=` on the bare route: what Dragonfly's `dfget hf://` (v2.1-2.3) asks.
        [] | [""] => match query_param(query, "revision").filter(|r| !r.is_empty()) {
            Some(rev) => match repo.snapshot(&rev) {
                Some(snap) => info(repo, snap, query),
                None => revision_not_found(&rev),
            },
            None => match repo.default_snapshot() {
                Some(snap) => info(repo, snap, query),
                None => revision_not_found("main"),
            },
        },
        ["revision", revs @ ..] => {
            let raw = revs.join("/");
            let rev = decode(&raw).unwrap_or_default();
            match repo.snapshot(&rev) {
                Some(snap) => info(repo, snap, query),
                None => revision_not_found(&rev),
            }
        }
        ["tree", rest @ ..] => match split_rev(repo, rest) {
            Ok((snap, rev, path)) => tree(ctx, req, repo, snap, &rev, &path, query),
            Err(r) => r,
        },
        ["treesize", rest @ ..] => match split_rev(repo, rest) {
            Ok((snap, _, path)) => match snap.size_under(&path) {
                Some(size) => Response::json(200, &json!({ "path": path, "size": size })),
                None => entry_not_found(&snap.commit, &path),
            },
            Err(r) => r,
        },
        _ => not_found(),
    }
}

/// Splits `rest` into a revision and a path in the repo. The revision is normally one segment
/// (clients encode its `/`s); a raw `refs/pr/1` is found too, the shortest known one winning.
/// The path is decoded and checked; `""` is the repo root.
fn split_rev<'r>(
    repo: &'r Repo,
    rest: &[&str],
) -> Result<(&'r Arc<Snapshot>, String, String), Response> {
    // At most 16 segments per revision: trying every split of a long path would cost
    // quadratic time per request.
    for k in 1..=rest.len().min(16) {
        let Some(rev) = decode(&rest[..k].join("/")) else {
            continue;
        };
        if let Some(snap) = repo.snapshot(&rev) {
            let raw = rest[k..].join("/");
            if raw.is_empty() {
                return Ok((snap, rev, String::new()));
            }
            return match decode(&raw) {
                Some(path) if valid_repo_path(&path) => Ok((snap, rev, path)),
                _ => Err(bad_path()),
            };
        }
    }
    let shown = rest.first().and_then(|r| decode(r)).unwrap_or_default();
    Err(revision_not_found(&shown))
}

fn lfs_json(f: &FileEntry, sha_key: &str) -> Option<Value> {
    f.lfs.as_ref().map(|l| {
        json!({
            sha_key: l.sha256,
            "size": f.size,
            "pointerSize": l.pointer_size,
        })
    })
}

/// `/api/{type}s/{repo}[/revision/{rev}]`: what ModelInfo / DatasetInfo / SpaceInfo parse.
pub(super) fn info(repo: &Repo, snap: &Snapshot, query: &str) -> Response {
    let blobs = query_flag(query, "blobs");
    let siblings: Vec<Value> = snap
        .files
        .iter()
        .map(|(path, f)| {
            if !blobs {
                return json!({ "rfilename": path });
            }
            let mut s = json!({ "rfilename": path, "size": f.size, "blobId": f.oid });
            if let (Some(lfs), Some(obj)) = (lfs_json(f, "sha256"), s.as_object_mut()) {
                obj.insert("lfs".into(), lfs);
            }
            s
        })
        .collect();
    let date = iso8601(snap.last_modified);
    let mut v = json!({
        "id": repo.id,
        "sha": snap.commit,
        "lastModified": date,
        "createdAt": date,
        "private": false,
        "disabled": false,
        "gated": false,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": siblings,
        "usedStorage": snap.size_under("").unwrap_or(0),
    });
    if let Some(obj) = v.as_object_mut() {
        if let Some((author, _)) = repo.id.split_once('/') {
            obj.insert("author".into(), author.into());
        }
        if repo.kind == RepoType::Model {
            obj.insert("modelId".into(), repo.id.clone().into());
        }
    }
    Response::json(200, &v)
}

/// `GET /api/{type}s/{repo}/refs`: the revisions this mirror has, as the Hub lists them
/// (branches; pull requests with `include_prs=1`). A cache does not tell tags from branches:
/// every ref that is not a pull request is listed as a branch.
fn refs(repo: &Repo, query: &str) -> Response {
    let (mut branches, mut prs) = (Vec::new(), Vec::new());
    for (name, commit) in &repo.refs {
        if name.starts_with("refs/pr/") {
            prs.push(json!({ "name": name, "ref": name, "targetCommit": commit }));
        } else {
            branches.push(json!({
                "name": name, "ref": format!("refs/heads/{name}"), "targetCommit": commit
            }));
        }
    }
    let mut v = json!({ "branches": branches, "tags": [], "converts": [] });
    if query_flag(query, "include_prs")
        && let Some(obj) = v.as_object_mut()
    {
        obj.insert("pullRequests".into(), Value::Array(prs));
    }
    Response::json(200, &v)
}

/// `GET /api/{type}s/{repo}/commits/{rev}`: the one commit this mirror knows of the revision
/// (its history is not kept).
pub(super) fn commits(snap: &Snapshot) -> Response {
    let date = iso8601(snap.last_modified);
    Response::json(
        200,
        &json!([{
            "id": snap.commit,
            "title": "",
            "message": "",
            "authors": [],
            "date": date,
        }]),
    )
}

/// Most paths one `paths-info` request may ask for.
const MAX_PATHS: usize = 10_000;

/// `POST /api/{type}s/{repo}/paths-info/{rev}` (huggingface_hub's `get_paths_info`): the
/// entries of the paths asked for that exist, as the tree lists them. The body is a form
/// (`paths=a&paths=b&expand=false`) or JSON (`{"paths": [...]}`).
pub(super) fn paths_info(snap: &Snapshot, body: &[u8]) -> Response {
    let paths: Vec<String> = match serde_json::from_slice::<Value>(body) {
        Ok(v) => v["paths"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        Err(_) => std::str::from_utf8(body)
            .unwrap_or("")
            .split('&')
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                let v = v.replace('+', " ");
                (k == "paths" || k == "paths%5B%5D" || k == "paths[]").then(|| decode(&v))?
            })
            .collect(),
    };
    if paths.len() > MAX_PATHS {
        return Response::error(400, None, &format!("more than {MAX_PATHS} paths"));
    }
    let mut out = Vec::new();
    for path in paths {
        let path = path.trim_matches('/').to_owned();
        if let Some(f) = snap.files.get(&path) {
            let mut e = json!({ "type": "file", "oid": f.oid, "size": f.size, "path": path });
            if let (Some(lfs), Some(obj)) = (lfs_json(f, "oid"), e.as_object_mut()) {
                obj.insert("lfs".into(), lfs);
            }
            out.push(e);
        } else if snap.dirs.contains(&path) {
            out.push(json!({
                "type": "directory",
                "oid": dir_oid(&snap.commit, &path),
                "size": 0,
                "path": path,
            }));
        }
    }
    Response::json(200, &Value::Array(out))
}

/// An oid for a directory: any stable 40-hex value does (clients only read it).
fn dir_oid(commit: &str, path: &str) -> String {
    git_blob_sha1(format!("tree {commit} {path}").as_bytes())
}

/// `/api/{type}s/{repo}/tree/{rev}[/{path}]`, one page.
pub(super) fn tree(
    ctx: &Shared,
    req: &Request<'_>,
    repo: &Repo,
    snap: &Snapshot,
    rev: &str,
    path: &str,
    query: &str,
) -> Response {
    if !path.is_empty() && !snap.dirs.contains(path) {
        return entry_not_found(&snap.commit, path);
    }
    let recursive = query_flag(query, "recursive");
    let expand = query_flag(query, "expand");
    let cursor = match query_param(query, "cursor").map(|c| c.parse::<usize>()) {
        None => 0,
        Some(Ok(c)) => c,
        Some(Err(_)) => return Response::error(400, None, "Invalid cursor"),
    };
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    // Items are sorted by path, so those under `prefix` are one run.
    let start = snap.items.partition_point(|i| i.path < prefix);
    let under = snap.items[start..]
        .iter()
        .take_while(|i| i.path.starts_with(&prefix))
        .filter(|i| recursive || !i.path[prefix.len()..].contains('/'));
    let page_size = ctx.options.page_size;
    let mut page: Vec<Value> = Vec::new();
    let mut more = false;
    for item in under.skip(cursor) {
        if page.len() == page_size {
            more = true;
            break;
        }
        if item.is_dir {
            page.push(json!({
                "type": "directory",
                "oid": dir_oid(&snap.commit, &item.path),
                "size": 0,
                "path": item.path,
            }));
        } else if let Some(f) = snap.files.get(&item.path) {
            let mut e = json!({ "type": "file", "oid": f.oid, "size": f.size, "path": item.path });
            if let (Some(lfs), Some(obj)) = (lfs_json(f, "oid"), e.as_object_mut()) {
                obj.insert("lfs".into(), lfs);
            }
            page.push(e);
        }
    }
    let mut r = Response::json(200, &Value::Array(page));
    if more {
        let sub = if path.is_empty() {
            String::new()
        } else {
            format!("/{}", encode_segment(path))
        };
        r.headers.push((
            "Link",
            format!(
                "<{}/api/{}/{}/tree/{}{sub}?recursive={recursive}&expand={expand}&cursor={}>; rel=\"next\"",
                req.base,
                repo.kind.plural(),
                repo.id,
                encode_segment(rev),
                cursor + page_size,
            ),
        ));
    }
    r
}

/// `/{prefix}{repo}/resolve/{rev}/{path}`: the file's headers and, for GET, its bytes.
fn resolve(ctx: &Shared, req: &Request<'_>, kind: RepoType, segs: &[&str]) -> Response {
    let mut shaped = false;
    for n in [2, 1] {
        if segs.get(n) != Some(&"resolve") {
            continue;
        }
        shaped = true;
        if let Some(repo) = lookup(ctx, kind, &segs[..n]) {
            return match split_rev(repo, &segs[n + 1..]) {
                Ok((snap, _, path)) if path.is_empty() => entry_not_found(&snap.commit, &path),
                Ok((snap, _, path)) => match snap.files.get(&path) {
                    // A listed file whose bytes are not here is missing, as on the Hub.
                    Some(f) if f.disk.is_some() => file_response(ctx, req, &snap.commit, f),
                    None => ctx
                        .publisher
                        .as_ref()
                        .and_then(|p| p.pad(req, repo, snap, &path))
                        .unwrap_or_else(|| entry_not_found(&snap.commit, &path)),
                    _ => entry_not_found(&snap.commit, &path),
                },
                Err(r) => r,
            };
        }
    }
    if shaped {
        repo_not_found(kind, &shown_id(segs))
    } else {
        not_found()
    }
}

/// Opens `disk` (a canonical path the scan found under the root) read-only, resolved beneath
/// the root at this moment and following no symlink: a folder swapped for a link out of the
/// root after the scan is not followed.
pub(super) fn open_beneath(
    root: &crate::backend::nofollow::Dir,
    disk: &std::path::Path,
) -> std::io::Result<File> {
    let rel = disk
        .strip_prefix(root.path())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not under the root"))?;
    root.open_beneath(rel, rustix::fs::OFlags::RDONLY)
}

fn file_response(ctx: &Shared, req: &Request<'_>, commit: &str, f: &FileEntry) -> Response {
    let Some(disk) = &f.disk else {
        // Callers answer a file without bytes as missing first.
        return Response::error(500, None, "File not here");
    };
    let opened = open_beneath(&ctx.root, disk).and_then(|file| {
        let meta = file.metadata()?;
        Ok((file, meta))
    });
    let file = match opened {
        Ok((file, meta)) if meta.is_file() && meta.len() == f.size => file,
        Ok(_) => {
            tracing::warn!(file = ?disk, "changed on disk since the scan");
            return Response::error(500, None, "File changed on disk; restart ferry serve");
        }
        Err(e) => {
            tracing::warn!(file = ?disk, error = %e, "cannot open beneath the root");
            return Response::error(500, None, "File unreadable");
        }
    };
    file_answer(req, commit, f, |offset, len| Body::File {
        pin: None,
        file,
        offset,
        len,
    })
}

/// The answer to a request for the file `f` of `commit`: its headers (`ETag`, `X-Repo-Commit`,
/// the linked size, `Digest`), the range asked (`206`, or `416` past the end), and the body
/// `body(offset, len)` makes for the bytes to send.
pub(super) fn file_answer(
    req: &Request<'_>,
    commit: &str,
    f: &FileEntry,
    body: impl FnOnce(u64, u64) -> Body,
) -> Response {
    let etag = f.etag();
    let quoted = format!("\"{etag}\"");
    let mut headers = vec![
        ("Content-Type", "application/octet-stream".to_owned()),
        ("Accept-Ranges", "bytes".to_owned()),
        ("X-Repo-Commit", commit.to_owned()),
        ("ETag", quoted.clone()),
        ("X-Linked-Etag", quoted.clone()),
        ("X-Linked-Size", f.size.to_string()),
    ];
    if let Some(lfs) = &f.lfs
        && let Ok(raw) = hex::decode(&lfs.sha256)
    {
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        headers.push(("Digest", format!("SHA-256={b64}")));
    }
    // If-Range: the range holds only for this exact representation.
    let range = match req.if_range {
        Some(v) if v.trim() != quoted => None,
        _ => req.range,
    };
    let (status, offset, len) = match evaluate(range, f.size) {
        RangeAnswer::Full => (200, 0, f.size),
        RangeAnswer::Partial { start, end } => {
            headers.push(("Content-Range", format!("bytes {start}-{end}/{}", f.size)));
            (206, start, end - start + 1)
        }
        RangeAnswer::Unsatisfiable => {
            headers.push(("Content-Range", format!("bytes */{}", f.size)));
            return Response {
                status: 416,
                headers,
                body: Body::Bytes(Vec::new()),
            };
        }
    };
    Response {
        status,
        headers,
        body: body(offset, len),
    }
}

#[cfg(test)]
mod tests;
