//! A file that comes as one stream (the server ignored `Range`, or the body has no length):
//! one lane copies it alone, from the first answer's body to the end.
//!
//! Invariant: the file's size is the body's length when it states one, else what the stream
//! brought. Not here: ranged files (`lease.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use compio::fs::File;

use super::conn::Conn;
use super::file::FileDownload;
use super::pipe::Pipeline;
use super::request::Lane;
use crate::error::GetError;
use crate::proto::http1::Framing;

/// A file whose first answer is its whole body, as one stream: the connection with the body
/// behind the head just read, how the body is framed, the partial file the lane created, and
/// the source that answered.
pub(super) struct OneStream {
    pub(super) conn: Conn,
    pub(super) framing: Framing,
    pub(super) created: File,
    pub(super) src: usize,
}

/// Copies a file that comes as one stream.
pub(super) async fn run_stream(file: &Arc<FileDownload>, lane: &mut Lane, stream: OneStream) {
    file.used_connections.fetch_add(1, Ordering::Relaxed);
    let OneStream {
        mut conn,
        framing,
        created,
        src,
    } = stream;
    let result = single_stream(file, &mut conn, (framing, src, lane.grown()), created).await;
    lane.conn = Some(conn);
    if let Err(e) = result {
        file.fail(e);
    }
}

/// The body of the answer on `conn`, framed as `framing`, from source `src`, into `created`;
/// `grown`: the lane was opened by growth.
async fn single_stream(
    file: &Arc<FileDownload>,
    conn: &mut Conn,
    (framing, src, grown): (Framing, usize, bool),
    created: File,
) -> Result<(), GetError> {
    let sink = match framing {
        Framing::Length(n) => file.open_whole_sink(created, n).await?,
        _ => file.open_sink(Some(created)).await?,
    };
    let mut pipe = Pipeline::for_lane(file, sink, grown);
    let before = (conn.body_bytes(), conn.read_time());
    let copied = conn.copy_stream(file, &mut pipe, framing).await;
    let complete = matches!(copied, Ok(Some(_)));
    let (bytes, time) = (conn.body_bytes() - before.0, conn.read_time() - before.1);
    file.count_served(src, bytes, time, complete);
    let drained = pipe.drain().await;
    if let Some(n) = copied? {
        file.set_total(n);
    }
    drained
}
