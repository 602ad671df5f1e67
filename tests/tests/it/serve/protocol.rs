//! The protocol of `ferry serve`, through a raw HTTP/1.1 client: headers and ranges of `resolve`,
//! tree paging by `Link`, errors with the Hub's codes, no request path reaching outside the root,
//! and local-dir files without metadata never served.

use super::*;

#[test]
fn resolve_headers_and_ranges() {
    let tmp = cache_root();
    let serve = Serve::start(&tmp.path().join("root"), None);
    let files = cache_model_files();
    let by_name: BTreeMap<&str, &FixtureFile> =
        files.iter().map(|f| (f.path.as_str(), f)).collect();

    for f in &files {
        for rev in ["main", COMMIT] {
            let target = format!("/org/name/resolve/{rev}/{}", quote(&f.path));
            let head = request(&serve, "HEAD", &target, &[]);
            let what = format!("HEAD {target}");
            assert_eq!(head.status, 200, "{what}");
            assert_eq!(head.header("X-Repo-Commit"), Some(COMMIT), "{what}");
            let quoted = format!("\"{}\"", f.etag());
            assert_eq!(head.header("ETag"), Some(quoted.as_str()), "{what}");
            assert_eq!(
                head.header("X-Linked-Etag"),
                Some(quoted.as_str()),
                "{what}"
            );
            let size = f.bytes.len().to_string();
            assert_eq!(head.header("X-Linked-Size"), Some(size.as_str()), "{what}");
            assert_eq!(head.header("Content-Length"), Some(size.as_str()), "{what}");
            assert_eq!(head.header("Accept-Ranges"), Some("bytes"), "{what}");
            if f.lfs {
                let digest = format!("SHA-256={}", base64(&Sha256::digest(&f.bytes)));
                assert_eq!(head.header("Digest"), Some(digest.as_str()), "{what}");
            }
            let body = get(&serve, &target);
            assert_eq!(body.status, 200, "GET {target}");
            assert!(body.body == f.bytes, "GET {target}: bytes differ");
        }
    }
    eprintln!(
        "HEAD and GET of {} files at main and at the commit",
        files.len()
    );

    let model = "/org/name/resolve/main/model.safetensors";
    let m = &by_name["model.safetensors"].bytes;
    let total = m.len();
    // A thousand small ranges in one header (12 KiB, under the 16 KiB head limit).
    let many: Vec<String> = (0..1000)
        .map(|i| format!("{}-{}", i * 10, i * 10 + 5))
        .collect();
    let many = format!("bytes={}", many.join(","));
    let cases: [(&str, u16, Option<String>, &[u8]); 8] = [
        (
            "bytes=0-0",
            206,
            Some(format!("bytes 0-0/{total}")),
            &m[..1],
        ),
        (
            "bytes=100-199",
            206,
            Some(format!("bytes 100-199/{total}")),
            &m[100..200],
        ),
        (
            "bytes=-10",
            206,
            Some(format!("bytes {}-{}/{total}", total - 10, total - 1)),
            &m[total - 10..],
        ),
        (
            "bytes=3145000-",
            206,
            Some(format!("bytes 3145000-{}/{total}", total - 1)),
            &m[3_145_000..],
        ),
        (
            &format!("bytes={total}-"),
            416,
            Some(format!("bytes */{total}")),
            b"",
        ),
        ("bytes=0-1,5-9", 200, None, m),
        // Overlapping ranges, and many: the whole file once (RFC 9110 lets a server ignore
        // Range), never a multipart body that repeats or outgrows the file.
        ("bytes=0-99,50-149", 200, None, m),
        (&many, 200, None, m),
    ];
    for (range, status, content_range, want) in cases {
        let r = get_range(&serve, model, range);
        assert_eq!(r.status, status, "{range}");
        assert_eq!(
            r.header("Content-Range").map(str::to_owned),
            content_range,
            "{range}"
        );
        assert!(r.body == want, "{range}: body differs");
        assert_eq!(r.header("X-Repo-Commit"), Some(COMMIT), "{range}");
    }

    let one = "/org/name/resolve/main/one.bin";
    let r = get_range(&serve, one, "bytes=0-0");
    assert_eq!(
        (r.status, r.header("Content-Range")),
        (206, Some("bytes 0-0/1"))
    );
    assert_eq!(r.body, [0x5a]);
    let r = get_range(&serve, one, "bytes=1-");
    assert_eq!(
        (r.status, r.header("Content-Range")),
        (416, Some("bytes */1"))
    );

    let empty = "/org/name/resolve/main/empty.bin";
    for range in ["bytes=0-0", "bytes=0-", "bytes=-1", "bytes=5-9"] {
        let r = get_range(&serve, empty, range);
        assert_eq!(
            (r.status, r.header("Content-Range")),
            (416, Some("bytes */0")),
            "{range}"
        );
    }
    let r = get(&serve, empty);
    assert_eq!((r.status, r.body.len()), (200, 0));

    // If-Range with another validator: the whole file.
    let r = request(
        &serve,
        "GET",
        one,
        &[("Range", "bytes=0-0"), ("If-Range", "\"other\"")],
    );
    assert_eq!(r.status, 200);
    eprintln!(
        "ranges: single, suffix, open, unsatisfiable, multiple, overlapping and 1000 (ignored: the file once), 1-byte and 0-byte files"
    );

    // Revision info with blobs, as old clients read it.
    for q in ["?blobs=true", "?blobs=True"] {
        let info = get(&serve, &format!("/api/models/org/name/revision/main{q}")).json();
        assert_eq!(info["id"], "org/name");
        assert_eq!(info["sha"], COMMIT);
        let siblings = info["siblings"].as_array().expect("siblings");
        assert_eq!(siblings.len(), files.len());
        for s in siblings {
            let f = by_name[s["rfilename"].as_str().expect("rfilename")];
            assert_eq!(s["size"], f.bytes.len(), "{s}");
            assert_eq!(s["blobId"], f.oid(), "{s}");
            if f.lfs {
                assert_eq!(s["lfs"]["sha256"], f.etag(), "{s}");
                assert_eq!(s["lfs"]["size"], f.bytes.len(), "{s}");
                let pointer = lfs_pointer(&f.etag(), f.bytes.len());
                assert_eq!(s["lfs"]["pointerSize"], pointer.len(), "{s}");
            } else {
                assert!(s.get("lfs").is_none(), "{s}");
            }
        }
    }
    let info = get(&serve, "/api/models/org/name").json();
    assert_eq!(info["sha"], COMMIT, "no revision is main");
    let info = get(&serve, "/api/models/org/name/revision/refs%2Fpr%2F1").json();
    assert_eq!(info["sha"], COMMIT_PR);
    assert_eq!(
        info["siblings"],
        serde_json::json!([{ "rfilename": "config.json" }])
    );
    let info = get(&serve, "/api/datasets/org/data/revision/main").json();
    assert_eq!(info["id"], "org/data");

    // Tree sizes.
    let all: usize = files.iter().map(|f| f.bytes.len()).sum();
    let r = get(&serve, "/api/models/org/name/treesize/main").json();
    assert_eq!(r["size"], all);
    let sub: usize = files
        .iter()
        .filter(|f| f.path.starts_with("sub/"))
        .map(|f| f.bytes.len())
        .sum();
    let r = get(&serve, "/api/models/org/name/treesize/main/sub").json();
    assert_eq!(
        (r["path"].as_str(), r["size"].as_u64()),
        (Some("sub"), Some(sub as u64))
    );
}

/// Follows a tree listing through its `Link` pages; returns every entry and the page count.
fn walk_tree(serve: &Serve, first: &str) -> (Vec<serde_json::Value>, usize) {
    let mut entries = Vec::new();
    let mut url = format!("{}{first}", serve.endpoint());
    let mut pages = 0;
    loop {
        let target = url
            .strip_prefix(&serve.endpoint())
            .unwrap_or_else(|| panic!("next page on another origin: {url}"))
            .to_owned();
        let r = get(serve, &target);
        assert_eq!(r.status, 200, "{target}");
        pages += 1;
        let page = r.json();
        entries.extend(page.as_array().expect("array").iter().cloned());
        match r.header("Link") {
            None => break,
            Some(link) => {
                assert!(link.ends_with("; rel=\"next\""), "{link}");
                url = link
                    .strip_prefix('<')
                    .and_then(|l| l.split_once('>'))
                    .map(|(u, _)| u.to_owned())
                    .expect("link url");
                assert!(url.contains("cursor="), "{url}");
            }
        }
        assert!(pages < 100, "paging does not end");
    }
    (entries, pages)
}

#[test]
fn tree_pages_follow_link_to_the_end() {
    let tmp = cache_root();
    let serve = Serve::start(&tmp.path().join("root"), Some(3));
    let files = cache_model_files();
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    for f in &files {
        let mut p = f.path.as_str();
        while let Some(i) = p.rfind('/') {
            p = &p[..i];
            dirs.insert(p.to_owned());
        }
    }

    for rev in ["main", COMMIT] {
        let (entries, pages) = walk_tree(
            &serve,
            &format!("/api/models/org/name/tree/{rev}?recursive=true&expand=false"),
        );
        let want = files.len() + dirs.len();
        assert_eq!(entries.len(), want, "every entry exactly once: {entries:?}");
        assert_eq!(pages, want.div_ceil(3), "pages of 3");
        let mut seen = BTreeSet::new();
        for e in &entries {
            let path = e["path"].as_str().expect("path").to_owned();
            assert!(seen.insert(path.clone()), "{path} listed twice");
            let oid = e["oid"].as_str().expect("oid");
            assert!(
                oid.len() == 40 && oid.bytes().all(|b| b.is_ascii_hexdigit()),
                "{e}"
            );
            match e["type"].as_str() {
                Some("directory") => assert!(dirs.contains(&path), "{path}"),
                Some("file") => {
                    let f = files.iter().find(|f| f.path == path).expect("fixture file");
                    assert_eq!(e["size"], f.bytes.len(), "{e}");
                    assert_eq!(oid, f.oid(), "{e}");
                    if f.lfs {
                        assert_eq!(e["lfs"]["oid"], f.etag(), "{e}");
                        assert_eq!(e["lfs"]["size"], f.bytes.len(), "{e}");
                        assert_eq!(
                            e["lfs"]["pointerSize"],
                            lfs_pointer(&f.etag(), f.bytes.len()).len(),
                            "{e}"
                        );
                    } else {
                        assert!(e.get("lfs").is_none(), "{e}");
                    }
                }
                other => panic!("type {other:?}"),
            }
        }
        eprintln!(
            "tree at {rev}: {} entries in {pages} pages of 3",
            entries.len()
        );
    }

    // Non-recursive: direct children only, directories included.
    let (entries, _) = walk_tree(&serve, "/api/models/org/name/tree/main?recursive=false");
    let top: BTreeSet<String> = entries
        .iter()
        .map(|e| e["path"].as_str().expect("path").to_owned())
        .collect();
    let mut want: BTreeSet<String> = files
        .iter()
        .filter(|f| !f.path.contains('/'))
        .map(|f| f.path.clone())
        .collect();
    want.insert("sub".into());
    assert_eq!(top, want);
    // A sub-folder, its path encoded as clients do (`quote(path, safe="")`).
    let (entries, _) = walk_tree(&serve, "/api/models/org/name/tree/main/sub?recursive=false");
    let sub: Vec<&str> = entries
        .iter()
        .map(|e| e["path"].as_str().expect("path"))
        .collect();
    assert_eq!(sub, ["sub/dir", "sub/y.txt"]);
    let (entries, _) = walk_tree(
        &serve,
        "/api/models/org/name/tree/main/sub%2Fdir?recursive=true",
    );
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["path"], "sub/dir/x.txt");
    // The Link URL never echoes the request's Host (a cache in front could hand a page that
    // names the client's host to others): it names the address the client connected to, and
    // X-Forwarded-* from a peer that is not a trusted proxy is ignored.
    let tree = "/api/models/org/name/tree/main?recursive=true";
    let own = format!(
        "<http://127.0.0.1:{}/api/models/org/name/tree/main?",
        serve.port
    );
    for extra in [
        &[("Host", "mirror.example:8443")][..],
        &[("Host", "bad\"host>")][..],
        &[
            ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-Prefix", "/x"),
        ][..],
    ] {
        let r = request(&serve, "GET", tree, extra);
        let link = r.header("Link").expect("link");
        assert!(link.starts_with(&own), "{extra:?}: {link}");
    }
    drop(serve);
    // Behind a reverse proxy: --public-url, or a trusted proxy's X-Forwarded-*.
    let root = tmp.path().join("root");
    let serve = Serve::start_with(
        &root,
        Some(3),
        None,
        &["--public-url", "https://hub.example/mirror/"],
    );
    let r = request(&serve, "GET", tree, &[("Host", "other.example")]);
    let link = r.header("Link").expect("link");
    assert!(
        link.starts_with("<https://hub.example/mirror/api/models/org/name/tree/main?"),
        "{link}"
    );
    drop(serve);
    let serve = Serve::start_with(&root, Some(3), None, &["--trusted-proxy", "127.0.0.1"]);
    let forwarded = [
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "hub.example"),
        ("X-Forwarded-Prefix", "/hf"),
    ];
    let r = request(&serve, "GET", tree, &forwarded);
    let link = r.header("Link").expect("link");
    assert!(
        link.starts_with("<https://hub.example/hf/api/models/org/name/tree/main?"),
        "{link}"
    );
}

#[test]
fn errors_carry_hub_codes() {
    let tmp = cache_root();
    let serve = Serve::start(&tmp.path().join("root"), None);
    let cases: [(&str, &str, u16, Option<&str>); 12] = [
        (
            "GET",
            "/api/models/nope/nope/revision/main",
            404,
            Some("RepoNotFound"),
        ),
        ("GET", "/api/models/nope", 404, Some("RepoNotFound")),
        (
            "GET",
            "/api/datasets/org/name/revision/main",
            404,
            Some("RepoNotFound"),
        ),
        (
            "HEAD",
            "/nope/nope/resolve/main/config.json",
            404,
            Some("RepoNotFound"),
        ),
        (
            "GET",
            "/datasets/org/name/resolve/main/config.json",
            404,
            Some("RepoNotFound"),
        ),
        (
            "GET",
            "/api/models/org/name/revision/nope",
            404,
            Some("RevisionNotFound"),
        ),
        (
            "GET",
            "/api/models/org/name/tree/nope?recursive=true",
            404,
            Some("RevisionNotFound"),
        ),
        (
            "HEAD",
            "/org/name/resolve/nope/config.json",
            404,
            Some("RevisionNotFound"),
        ),
        (
            "HEAD",
            "/org/name/resolve/main/missing.txt",
            404,
            Some("EntryNotFound"),
        ),
        (
            "GET",
            "/api/models/org/name/tree/main/missing",
            404,
            Some("EntryNotFound"),
        ),
        ("GET", "/favicon.ico", 404, None),
        ("POST", "/org/name/resolve/main/config.json", 405, None),
    ];
    for (method, target, status, code) in cases {
        let r = request(&serve, method, target, &[]);
        let what = format!("{method} {target}");
        assert_eq!(r.status, status, "{what}");
        assert_eq!(r.error_code(), code, "{what}");
        assert!(r.header("X-Error-Message").is_some(), "{what}");
        if method == "GET" {
            assert!(r.json()["error"].is_string(), "{what}");
        }
        if code == Some("EntryNotFound") {
            assert_eq!(r.header("X-Repo-Commit"), Some(COMMIT), "{what}");
        }
        eprintln!("{what} -> {status} {code:?}");
    }
}

#[test]
fn no_path_reaches_outside_the_root() {
    let tmp = cache_root();
    let serve = Serve::start(&tmp.path().join("root"), None);
    let targets = [
        "/org/name/resolve/main/..%2F..%2F..%2F..%2Foutside%2Fsecret.txt",
        "/org/name/resolve/main/..%2F..%2Fetc%2Fpasswd",
        "/org/name/resolve/main/%2e%2e/%2e%2e/%2e%2e/%2e%2e/outside/secret.txt",
        "/org/name/resolve/main/%2E%2E%2F%2E%2E%2Fblobs",
        "/org/name/resolve/main/../../../../outside/secret.txt",
        "/org/name/resolve/main/sub/../../../../../outside/secret.txt",
        "/org/name/resolve/main/sub%5C..%5C..%5Cconfig.json",
        "/org/name/resolve/main/config.json%00",
        "/org/name/resolve/main/%00",
        "/org/name/resolve/main//etc/passwd",
        "/org/name/resolve/main/%2Fetc%2Fpasswd",
        "/org/name/resolve/main/leak.txt",
        "/org/name/resolve/main/leak2.txt",
        "/org/name/resolve/..%2F..%2Foutside/secret.txt",
        "/api/models/org/name/tree/main/..%2F..?recursive=true",
        "/api/models/org/name/treesize/main/..%2F..%2F..",
        "/api/models/..%2F..%2Foutside/tree/main",
    ];
    // Every answer that is not a refusal or carries the secret counts as bytes served wrongly.
    let mut leaked = 0u64;
    let answers: Vec<(&str, &str, Resp)> = targets
        .iter()
        .flat_map(|t| ["GET", "HEAD"].map(|m| (*t, m)))
        .map(|(t, m)| (t, m, request(&serve, m, t, &[])))
        .collect();
    for (_, _, r) in &answers {
        let body = String::from_utf8_lossy(&r.body);
        if !(400..500).contains(&r.status) || body.contains("TOP-SECRET") || body.contains("root:")
        {
            leaked += r.body.len().max(1) as u64;
        }
    }
    let damage = record::Damage {
        corrupted: leaked,
        ..record::Damage::default()
    };
    Trial {
        times: answers.len() as u64,
        ..Trial::once(
            (
                "path traversal: encoded ../, backslashes, NUL, absolute paths, symlinks out",
                "serve::no_path_reaches_outside_the_root",
            ),
            None,
            "refused with a 4xx; nothing outside the root served",
            damage,
        )
    }
    .record();
    for (target, method, r) in &answers {
        assert!(
            (400..500).contains(&r.status),
            "{method} {target}: status {}",
            r.status
        );
        let body = String::from_utf8_lossy(&r.body);
        assert!(
            !body.contains("TOP-SECRET") && !body.contains("root:"),
            "{target}: {body}"
        );
    }
    eprintln!("refused: {targets:#?}");
    // The symlinks out of the root are not even listed.
    let (entries, _) = walk_tree(&serve, "/api/models/org/name/tree/main?recursive=true");
    for e in &entries {
        let p = e["path"].as_str().expect("path");
        assert!(!p.starts_with("leak"), "listed {p}");
    }
    let info = get(&serve, "/api/models/org/name/revision/main").json();
    assert!(!info.to_string().contains("leak"), "{info}");
}

#[test]
fn local_dir_files_without_metadata_are_not_served() {
    let tmp = local_root();
    let serve = Serve::start(&tmp.path().join("root"), None);
    let r = request(&serve, "HEAD", "/org/name/resolve/main/stray.txt", &[]);
    assert_eq!((r.status, r.error_code()), (404, Some("EntryNotFound")));
    let r = request(
        &serve,
        "HEAD",
        "/org/name/resolve/main/.cache/huggingface/download/config.json.metadata",
        &[],
    );
    assert_eq!(r.status, 404);
    let r = request(&serve, "HEAD", "/org/name/resolve/main/config.json", &[]);
    assert_eq!((r.status, r.header("X-Repo-Commit")), (200, Some(COMMIT)));
    let r = request(
        &serve,
        "HEAD",
        &format!("/datasets/org/data/resolve/{COMMIT}/data/train.parquet"),
        &[],
    );
    assert_eq!(r.status, 200);
    let info = get(&serve, "/api/models/org/name/revision/main").json();
    let names: BTreeSet<&str> = info["siblings"]
        .as_array()
        .expect("siblings")
        .iter()
        .map(|s| s["rfilename"].as_str().expect("name"))
        .collect();
    let want: BTreeSet<String> = model_files().into_iter().map(|f| f.path).collect();
    assert_eq!(names, want.iter().map(String::as_str).collect());
}
