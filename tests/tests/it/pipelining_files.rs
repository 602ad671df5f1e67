//! Many small files over one connection each lane, their first requests pipelined (sent ahead,
//! behind the answer being read) where the origin is a WAN's round trip away, against an origin
//! that keeps connections alive and misbehaves as pipelining meets: it closes a connection
//! with requests unanswered, or answers one of them with a redirect. Every file must come out
//! byte-identical, on both back-ends.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ferry_testkit::{backends_under_test, ferry, record};

/// How the origin misbehaves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Misbehaviour {
    None,
    /// Closes its first connection after the first answer, with the requests sent behind it
    /// unanswered (and without saying `Connection: close`).
    CloseAfterFirst,
    /// Answers the second request of every connection with a redirect to the same file under
    /// another path, on the same connection.
    RedirectSecond,
}

/// An origin 30 ms away (it waits that long before each answer), serving `/f/NNNN` and the
/// same bytes at `/moved/f/NNNN`, with ranges, several requests per connection, in order.
struct FilesOrigin {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Requests whose bytes had arrived before the answer ahead of them was sent: pipelined.
    pipelined: Arc<AtomicUsize>,
    files: usize,
}

impl FilesOrigin {
    fn start(files: Arc<Vec<Vec<u8>>>, misbehaviour: Misbehaviour) -> FilesOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let pipelined = Arc::new(AtomicUsize::new(0));
        let count = files.len();
        let (s, p) = (Arc::clone(&stop), Arc::clone(&pipelined));
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let how = match misbehaviour {
                    Misbehaviour::CloseAfterFirst if n > 0 => Misbehaviour::None,
                    other => other,
                };
                let (files, p) = (Arc::clone(&files), Arc::clone(&p));
                std::thread::spawn(move || serve(conn, &files, how, &p));
            }
        });
        FilesOrigin {
            port,
            stop,
            pipelined,
            files: count,
        }
    }

    fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}/f/{i:04}", self.port)
    }
}

impl Drop for FilesOrigin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(mut conn: TcpStream, files: &[Vec<u8>], how: Misbehaviour, pipelined: &AtomicUsize) {
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut answered = 0;
    loop {
        let head = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end + 4);
                break head;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        std::thread::sleep(std::time::Duration::from_millis(30));
        // Whatever came meanwhile was sent before this answer: a pipelined request.
        let _ = conn.set_nonblocking(true);
        let mut chunk = [0u8; 4096];
        while let Ok(n) = conn.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let _ = conn.set_nonblocking(false);
        if !buf.is_empty() {
            pipelined.fetch_add(1, Ordering::Relaxed);
        }
        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
        let Some(i) = path
            .strip_prefix("/moved")
            .unwrap_or(&path)
            .strip_prefix("/f/")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&i| i < files.len())
        else {
            let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            continue;
        };
        let reply = if how == Misbehaviour::RedirectSecond
            && answered == 1
            && !path.starts_with("/moved")
        {
            format!("HTTP/1.1 302 Found\r\nLocation: /moved{path}\r\nContent-Length: 0\r\n\r\n")
                .into_bytes()
        } else {
            ranged(&head, &files[i])
        };
        if conn.write_all(&reply).is_err() {
            return;
        }
        answered += 1;
        if how == Misbehaviour::CloseAfterFirst && answered == 1 {
            return;
        }
    }
}

/// A 206 for the `Range` the request asks (`bytes=A-B`), or a 200 of the whole body.
fn ranged(head: &str, body: &[u8]) -> Vec<u8> {
    let range = head.lines().find_map(|l| {
        let v = l.strip_prefix("Range: bytes=")?;
        let (a, b) = v.split_once('-')?;
        Some((
            a.trim().parse::<usize>().ok()?,
            b.trim().parse::<usize>().ok()?,
        ))
    });
    let (status, part, extra) = match range {
        Some((a, b)) if a < body.len() => {
            let b = b.min(body.len() - 1);
            let cr = format!("Content-Range: bytes {a}-{b}/{}\r\n", body.len());
            ("206 Partial Content", &body[a..=b], cr)
        }
        _ => ("200 OK", body, String::new()),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\n\r\n",
        part.len()
    )
    .into_bytes();
    out.extend_from_slice(part);
    out
}

/// 120 files of 1-40 KiB, different bytes each, written under a temporary directory to
/// compare against.
fn fixture() -> (tempfile::TempDir, Arc<Vec<Vec<u8>>>) {
    let dir = tempfile::tempdir().expect("tmp");
    let files: Vec<Vec<u8>> = (0..120u32)
        .map(|i| {
            let len = 1024 + (i as usize * 7919) % (39 * 1024);
            (0..len)
                .map(|j| (j as u32 ^ i.wrapping_mul(2654435761)) as u8)
                .collect()
        })
        .collect();
    for (i, body) in files.iter().enumerate() {
        std::fs::write(dir.path().join(format!("src-{i:04}")), body).expect("write");
    }
    (dir, Arc::new(files))
}

/// Downloads every file of `origin` on `backend` over 2 connections; records the trial of
/// `fault` (for `tests/RELIABILITY.md`), checks every file came out byte-identical, and
/// returns ferry's stderr.
fn get_all(
    backend: ferry_testkit::Backend,
    origin: &FilesOrigin,
    dir: &std::path::Path,
    (fault, test): (&str, &str),
    what: &str,
) -> String {
    let n = origin.files;
    let out = dir.join(format!("out-{what}"));
    std::fs::create_dir_all(&out).expect("out dir");
    let list = dir.join(format!("urls-{what}"));
    let urls: Vec<String> = (0..n).map(|i| origin.url(i)).collect();
    std::fs::write(&list, urls.join("\n")).expect("url list");
    let o = ferry(
        backend,
        &[
            "-v",
            "get",
            "-i",
            list.to_str().expect("utf-8"),
            "-o",
            out.to_str().expect("utf-8"),
            "-c",
            "2",
        ],
    );
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{what}: ferry failed: {stderr}");
    let mut damage = record::Damage::default();
    for i in 0..n {
        let d = record::damage(
            &dir.join(format!("src-{i:04}")),
            &out.join(format!("{i:04}")),
        );
        damage.lost += d.lost;
        damage.corrupted += d.corrupted;
        damage.checked += d.checked;
    }
    let outcome = "recovered: every file whole, byte for byte";
    record::Trial::once((fault, test), Some(backend), outcome, damage).record_undamaged(what);
    stderr
}

#[test]
fn small_files_are_asked_for_ahead_where_the_origin_is_far() {
    let (dir, files) = fixture();
    for backend in backends_under_test() {
        let origin = FilesOrigin::start(Arc::clone(&files), Misbehaviour::None);
        let what = format!("{backend:?}-plain");
        let fault = "120 small files, their first requests pipelined (30 ms origin)";
        let test = "pipelining_files::small_files_are_asked_for_ahead_where_the_origin_is_far";
        get_all(backend, &origin, dir.path(), (fault, test), &what);
        let pipelined = origin.pipelined.load(Ordering::Relaxed);
        // 120 files on 2 connections: nearly every request but each connection's first.
        assert!(
            pipelined >= files.len() / 2,
            "{what}: only {pipelined} requests came pipelined"
        );
        eprintln!("ran on backend {backend:?}: {pipelined} of 120 requests pipelined");
    }
}

#[test]
fn a_connection_closed_with_requests_unanswered_loses_no_file() {
    let (dir, files) = fixture();
    for backend in backends_under_test() {
        let origin = FilesOrigin::start(Arc::clone(&files), Misbehaviour::CloseAfterFirst);
        let what = format!("{backend:?}-close");
        let fault = "a connection closed with pipelined requests for other files unanswered";
        let test = "pipelining_files::a_connection_closed_with_requests_unanswered_loses_no_file";
        let stderr = get_all(backend, &origin, dir.path(), (fault, test), &what);
        assert!(
            stderr.contains("closed a connection with a request unanswered"),
            "{what}: the endpoint is asked one request at a time from then on: {stderr}"
        );
        eprintln!("ran on backend {backend:?}: closed with requests unanswered, every file whole");
    }
}

#[test]
fn a_redirect_answering_a_request_sent_ahead_still_gives_the_right_file() {
    let (dir, files) = fixture();
    for backend in backends_under_test() {
        let origin = FilesOrigin::start(Arc::clone(&files), Misbehaviour::RedirectSecond);
        let what = format!("{backend:?}-redirect");
        let fault = "a redirect answering a file's pipelined first request";
        let test = "pipelining_files::a_redirect_answering_a_request_sent_ahead_still_gives_the_right_file";
        get_all(backend, &origin, dir.path(), (fault, test), &what);
        eprintln!("ran on backend {backend:?}: redirected requests sent ahead, every file right");
    }
}
