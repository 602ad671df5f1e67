//! The verifier's read-back task: hashes, in file order, the written bytes that left memory
//! before the hash reached them, reading them back from the partial file.
//!
//! Invariant: it reads only ranges the verifier handed out as claims, each once. Not here: the
//! hashing itself (`verify/`).

use super::file::FileDownload;
use crate::backend::buf::AlignedBuf;
use crate::error::GetError;
use crate::verify::Verifier;

/// Bytes read back per read when the verifier needs bytes that left memory.
const READ_BACK: u64 = 8 << 20;

/// Hashes, in file order, the written bytes that left memory before the prefix reached them.
pub(super) async fn read_back_loop(
    file: &FileDownload,
    verifier: &Verifier,
    wake: flume::Receiver<()>,
) -> Result<(), GetError> {
    let mut sink = None;
    let mut buf = None;
    loop {
        while let Some(claim) = verifier.claim_read_back(READ_BACK) {
            if file.is_aborted() {
                return Ok(());
            }
            // Opened on first use: most files never need it.
            if sink.is_none() {
                sink = Some(file.open_sink(None).await?);
            }
            let sink = sink.as_ref().expect("opened above");
            let align = sink.align().max(1);
            let b = buf
                .take()
                .unwrap_or_else(|| AlignedBuf::new((READ_BACK + 2 * align) as usize));
            let (start, len) = (claim.range.start, claim.range.end - claim.range.start);
            let (res, back) = sink.read_back(b, start, len).await;
            let skip = res.map_err(|source| GetError::Io {
                op: "read back for sha256",
                path: file.incomplete.clone(),
                source,
            })?;
            verifier
                .complete_read_back(claim, &back.bytes()[skip..skip + len as usize])
                .hash_all();
            buf = Some(back);
        }
        if wake.recv_async().await.is_err() {
            // Every writer is gone; whatever they recorded last was claimed above.
            if !verifier.has_read_back() {
                return Ok(());
            }
        }
    }
}
