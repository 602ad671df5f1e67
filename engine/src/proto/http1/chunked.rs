//! Incremental decoder for `Transfer-Encoding: chunked` (RFC 9112 section 7.1): feed it bytes as
//! they arrive, it appends the payload and says when the final chunk and trailers are consumed.
//! Chunk extensions and trailers are read and dropped.

/// Why a chunked body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChunkError {
    /// A chunk-size line that is not hex, or a size over 2^63.
    BadSize,
    /// A chunk not followed by CRLF.
    MissingCrlf,
    /// A size line or trailer line longer than 4 KiB.
    LineTooLong,
}

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChunkError::BadSize => "invalid chunk size",
            ChunkError::MissingCrlf => "chunk data not followed by CRLF",
            ChunkError::LineTooLong => "chunk size or trailer line too long",
        })
    }
}

const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line (the bytes so far are in `line`).
    Size,
    /// `n` payload bytes left in the current chunk.
    Data(u64),
    /// Expecting the CRLF after chunk data; `seen_cr` once the CR has come.
    DataEnd {
        seen_cr: bool,
    },
    /// Reading trailer lines after the last chunk.
    Trailer,
    Done,
}

/// The decoder. See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct ChunkedDecoder {
    state: State,
    line: Vec<u8>,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size,
            line: Vec::new(),
        }
    }
}

impl ChunkedDecoder {
    /// True once the last chunk and the trailers have been consumed.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes bytes from `input`, appending payload to `out`. Returns how many input bytes were
    /// consumed; that is fewer than `input.len()` only when the body ended inside `input`.
    pub(crate) fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => return Ok(i),
                State::Data(left) => {
                    let n = (left.min((input.len() - i) as u64)) as usize;
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                    self.state = if left == n as u64 {
                        State::DataEnd { seen_cr: false }
                    } else {
                        State::Data(left - n as u64)
                    };
                }
                State::DataEnd { seen_cr } => {
                    match (seen_cr, input[i]) {
                        (false, b'\r') => self.state = State::DataEnd { seen_cr: true },
                        (true, b'\n') => self.state = State::Size,
                        _ => return Err(ChunkError::MissingCrlf),
                    }
                    i += 1;
                }
                State::Size | State::Trailer => {
                    let Some(line) = self.take_line(input, &mut i)? else {
                        continue;
                    };
                    if self.state == State::Trailer {
                        if line.is_empty() {
                            self.state = State::Done;
                        }
                        continue;
                    }
                    let size_text = line.split(|&b| b == b';').next().unwrap_or(&[]);
                    let size_text = std::str::from_utf8(size_text)
                        .map_err(|_| ChunkError::BadSize)?
                        .trim();
                    if size_text.is_empty() || size_text.len() > 15 {
                        return Err(ChunkError::BadSize);
                    }
                    let size =
                        u64::from_str_radix(size_text, 16).map_err(|_| ChunkError::BadSize)?;
                    self.state = if size == 0 {
                        State::Trailer
                    } else {
                        State::Data(size)
                    };
                }
            }
        }
        Ok(i)
    }

    /// Moves bytes up to and including a LF into `self.line`; returns the finished line without
    /// its CRLF, or `None` when `input` ran out first.
    fn take_line(&mut self, input: &[u8], i: &mut usize) -> Result<Option<Vec<u8>>, ChunkError> {
        let rest = &input[*i..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(pos) => {
                self.line.extend_from_slice(&rest[..pos]);
                *i += pos + 1;
                if self.line.len() > MAX_LINE {
                    return Err(ChunkError::LineTooLong);
                }
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Ok(Some(line))
            }
            None => {
                self.line.extend_from_slice(rest);
                *i = input.len();
                if self.line.len() > MAX_LINE {
                    return Err(ChunkError::LineTooLong);
                }
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";

    #[test]
    fn decodes_in_one_go() {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let used = d.decode(BODY, &mut out).expect("valid");
        assert_eq!(out, b"Wikipedia in\r\n\r\nchunks.");
        assert!(d.is_done());
        assert_eq!(&BODY[used..], b"NEXT");
    }

    #[test]
    fn decodes_byte_by_byte() {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut used = 0;
        for b in BODY.chunks(1) {
            if d.is_done() {
                break;
            }
            used += d.decode(b, &mut out).expect("valid");
        }
        assert_eq!(out, b"Wikipedia in\r\n\r\nchunks.");
        assert_eq!(&BODY[used..], b"NEXT");
    }

    #[test]
    fn rejects_bad_framing() {
        let mut out = Vec::new();
        assert_eq!(
            ChunkedDecoder::default().decode(b"zz\r\n", &mut out),
            Err(ChunkError::BadSize)
        );
        assert_eq!(
            ChunkedDecoder::default().decode(b"1\r\nab", &mut out),
            Err(ChunkError::MissingCrlf)
        );
        assert_eq!(
            ChunkedDecoder::default().decode(b"ffffffffffffffffff\r\n", &mut out),
            Err(ChunkError::BadSize)
        );
        assert_eq!(
            ChunkedDecoder::default().decode(&[b'1'; 5000], &mut out),
            Err(ChunkError::LineTooLong)
        );
    }
}
