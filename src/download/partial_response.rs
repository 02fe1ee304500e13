//! Whether an HTTP answer may be used, and from which byte of the resource its body
//! starts — the judgement on a resumed request, as a pure function over the request and
//! the answer's status and headers (docs/protocol.md, "HTTP rules"): a `200` is the whole
//! resource; a `206` only to a request with `Range`, starting exactly where it asked,
//! with the task's total and an unchanged ETag; a `Content-Length` must equal what is
//! left. The download (`fetch.rs`) calls it on every answer before the body is read: the
//! HTTP client (`transfer.rs`) knows nothing of resuming.

use crate::transfer::TransferError;

/// What was asked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    /// The redacted URL, for messages.
    pub(crate) url: &'a str,
    /// The first byte asked for (0: no `Range`).
    pub(crate) offset: u64,
    /// The ETag the bytes on disk came with, if known.
    pub(crate) etag: Option<&'a str>,
    /// The task's size.
    pub(crate) size: u64,
}

/// What came back, before the body.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Answer<'a> {
    pub(crate) status: u16,
    pub(crate) content_range: Option<&'a str>,
    pub(crate) content_length: Option<u64>,
    pub(crate) etag: Option<&'a str>,
}

/// The offset of the body's first byte in the resource, or why the answer is not used.
pub(crate) fn judge(req: &Request, answer: &Answer) -> Result<u64, TransferError> {
    let url = || req.url.to_string();
    let refused = |reason: String| TransferError::ResumeRefused { url: url(), reason };
    let start = match answer.status {
        200 => 0,
        206 if req.offset > 0 => {
            let range = answer.content_range.unwrap_or("");
            let (first, total) = parse_content_range(range)
                .ok_or_else(|| refused(format!("206 with Content-Range `{range}`")))?;
            if let Some(total) = total.filter(|t| *t != req.size) {
                return Err(TransferError::SizeMismatch {
                    url: url(),
                    header: "Content-Range",
                    got: total,
                    expected: req.size,
                });
            }
            if first != req.offset {
                return Err(refused(format!(
                    "asked for byte {}, got Content-Range `{range}`",
                    req.offset
                )));
            }
            if let (Some(old), Some(new)) = (req.etag, answer.etag) {
                if old != new {
                    return Err(refused(format!("ETag changed from {old} to {new}")));
                }
            }
            req.offset
        }
        status => {
            return Err(TransferError::Unexpected {
                url: url(),
                reason: format!(
                    "HTTP {status} to a GET{}",
                    if req.offset > 0 { " with Range" } else { "" }
                ),
            })
        }
    };
    if let Some(len) = answer.content_length {
        if len != req.size.saturating_sub(start) {
            return Err(TransferError::SizeMismatch {
                url: url(),
                header: "Content-Length",
                got: start.saturating_add(len),
                expected: req.size,
            });
        }
    }
    Ok(start)
}

/// `bytes FIRST-LAST/TOTAL` → (FIRST, TOTAL); TOTAL is None for `*`.
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    if last < first {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((first, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: Request = Request {
        url: "https://s/x",
        offset: 100,
        etag: Some("\"v1\""),
        size: 200,
    };

    fn answer(status: u16, range: Option<&'static str>, len: Option<u64>) -> Answer<'static> {
        Answer {
            status,
            content_range: range,
            content_length: len,
            etag: Some("\"v1\""),
        }
    }

    #[test]
    fn content_range_parses() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
        assert_eq!(parse_content_range("bytes */200"), None);
        assert_eq!(parse_content_range("bytes 9-3/20"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn a_206_that_continues_where_asked_is_trusted() {
        let a = answer(206, Some("bytes 100-199/200"), Some(100));
        assert_eq!(judge(&REQ, &a).unwrap(), 100);
    }

    #[test]
    fn a_200_to_a_resumed_request_starts_from_zero() {
        assert_eq!(judge(&REQ, &answer(200, None, Some(200))).unwrap(), 0);
    }

    #[test]
    fn a_206_elsewhere_or_with_a_new_etag_is_not_trusted() {
        let a = answer(206, Some("bytes 0-199/200"), Some(200));
        assert!(matches!(
            judge(&REQ, &a),
            Err(TransferError::ResumeRefused { .. })
        ));
        let a = answer(206, Some("garbage"), None);
        assert!(matches!(
            judge(&REQ, &a),
            Err(TransferError::ResumeRefused { .. })
        ));
        let mut a = answer(206, Some("bytes 100-199/200"), Some(100));
        a.etag = Some("\"v2\"");
        assert!(matches!(
            judge(&REQ, &a),
            Err(TransferError::ResumeRefused { .. })
        ));
    }

    #[test]
    fn totals_and_lengths_must_match_the_task() {
        let a = answer(206, Some("bytes 100-299/300"), None);
        assert!(matches!(
            judge(&REQ, &a),
            Err(TransferError::SizeMismatch {
                header: "Content-Range",
                ..
            })
        ));
        let fresh = Request { offset: 0, ..REQ };
        assert!(matches!(
            judge(&fresh, &answer(200, None, Some(199))),
            Err(TransferError::SizeMismatch {
                header: "Content-Length",
                ..
            })
        ));
    }

    #[test]
    fn a_206_unasked_or_another_success_is_unexpected() {
        let fresh = Request { offset: 0, ..REQ };
        let a = answer(206, Some("bytes 0-199/200"), None);
        assert!(matches!(
            judge(&fresh, &a),
            Err(TransferError::Unexpected { .. })
        ));
        assert!(matches!(
            judge(&REQ, &answer(204, None, None)),
            Err(TransferError::Unexpected { .. })
        ));
    }
}
