//! The answer the hostile origins (`h2origin.rs`, `h3origin.rs`) give to a GET of a file held
//! in memory, with the byte-level faults they share applied: a `Range` honoured (206 with its
//! `Content-Range`) or not asked (200), a `Content-Range` shifted one byte, a byte too many, no
//! `Content-Length` and a byte short.

use bytes::Bytes;

/// Which byte-level faults an answer gets.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Twists {
    /// The `Content-Range` starts one byte later than the bytes sent.
    pub wrong_range: bool,
    /// One byte more than `Content-Length` says.
    pub too_many: bool,
    /// No `Content-Length` at all.
    pub no_length: bool,
    /// With `no_length`: the body a byte short.
    pub short: bool,
}

/// An answer's status, header fields and body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub fields: Vec<(&'static str, String)>,
    pub body: Bytes,
}

/// The answer to a GET of `file` with the `Range` header `range`, twisted as `twists` says.
pub(crate) fn answer(file: &Bytes, range: Option<&str>, twists: Twists) -> Answer {
    let size = file.len() as u64;
    let range = range
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| Some(a.parse::<u64>().ok()?..b.parse::<u64>().ok()? + 1))
        .map(|r| r.start.min(size)..r.end.min(size));
    let mut fields = Vec::new();
    let (status, mut body) = match range {
        Some(r) if r.start < r.end => {
            let shown = if twists.wrong_range {
                r.start + 1..r.end
            } else {
                r.clone()
            };
            fields.push((
                "content-range",
                format!("bytes {}-{}/{size}", shown.start, shown.end - 1),
            ));
            (206, file.slice(r.start as usize..r.end as usize))
        }
        _ => (200, file.clone()),
    };
    if twists.no_length {
        if twists.short && body.len() > 1 {
            body = body.slice(..body.len() - 1);
        }
    } else {
        fields.push(("content-length", body.len().to_string()));
    }
    if twists.too_many {
        let mut more = body.to_vec();
        more.push(0xA5);
        body = Bytes::from(more);
    }
    Answer {
        status,
        fields,
        body,
    }
}
