//! HTTP for resources and uploads (`http1.rs`, on OpenSSL through native-tls): the proxy
//! from the environment, redirects followed by hand (at most 5, allowed schemes only), a
//! read timeout on every socket, and the checks docs/protocol.md asks of a response
//! before its body is used.

use crate::config::Config;
use crate::http1::{self, Url};
use crate::protocol::{redact_url, ResultCode};
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Redirects followed before a request fails (docs/protocol.md).
pub(crate) const MAX_REDIRECTS: usize = 5;

/// What went wrong with a request; every URL in here is already redacted.
#[derive(Debug, Error)]
pub(crate) enum TransferError {
    /// The server answered with an HTTP error status.
    #[error("GET {url}: HTTP {code}")]
    Status { code: u16, url: String },
    /// No byte arrived within `transfer_timeout_s` (connect, headers or body).
    #[error("{url}: no data for {secs} s")]
    Timeout { url: String, secs: u64 },
    /// The connection could not be made: DNS, refused, TLS handshake, proxy.
    #[error("{url}: {reason}")]
    Connect { url: String, reason: String },
    /// The connection broke while the body was arriving; resumable.
    #[error("{url}: connection lost mid-body: {reason}")]
    Interrupted { url: String, reason: String },
    /// A redirect pointed at a scheme that is not allowed (code -10).
    #[error("{url}: redirect to a `{scheme}` URL is not allowed")]
    RedirectScheme { url: String, scheme: String },
    /// A redirect without a usable `Location`.
    #[error("{url}: redirect without a valid Location")]
    BadRedirect { url: String },
    /// More than [`MAX_REDIRECTS`] redirects.
    #[error("{url}: more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects { url: String },
    /// `Content-Length` or the total of `Content-Range` disagrees with the task's `size`.
    #[error("{url}: server announces {got} bytes ({header}), the task says {expected}")]
    SizeMismatch {
        url: String,
        header: &'static str,
        got: u64,
        expected: u64,
    },
    /// A resumed request got a 206 that does not continue where it asked, or a 416, or a
    /// changed ETag: the part on disk is not trusted and the download starts over.
    #[error("{url}: resume not trusted: {reason}")]
    ResumeRefused { url: String, reason: String },
    /// A success status that makes no sense for the request (204, 206 unasked, …).
    #[error("{url}: unexpected answer: {reason}")]
    Unexpected { url: String, reason: String },
    /// The storage server refused an upload (a non-2xx answer to the PUT).
    #[error("PUT {url}: HTTP {code}{detail}")]
    PutRefused {
        url: String,
        code: u16,
        detail: String,
    },
    /// The TLS handshake with the server failed (an untrusted certificate, a refused
    /// protocol): -11 at once, not retried as the network failing.
    #[error("{url}: TLS: {reason}")]
    TlsHandshake { url: String, reason: String },
    /// The TLS configuration could not be built.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The proxy the environment names cannot be used (an unknown scheme, a malformed
    /// address): nothing is sent, rather than sent around it.
    #[error("proxy `{proxy}` from the environment is unusable: {reason}")]
    Proxy { proxy: String, reason: String },
}

impl TransferError {
    /// The result code a task ends with when this error is final.
    pub(crate) fn result_code(&self) -> ResultCode {
        match self {
            TransferError::Status { code: 404, .. } => ResultCode::NotFound,
            TransferError::Status {
                code: 401 | 403, ..
            } => ResultCode::Forbidden,
            TransferError::Timeout { .. } => ResultCode::Timeout,
            TransferError::RedirectScheme { .. } => ResultCode::InvalidTask,
            TransferError::SizeMismatch { .. } => ResultCode::Mismatch,
            _ => ResultCode::Other,
        }
    }

    /// Whether trying again later can help (a 5xx, a broken connection), as opposed to an
    /// answer that will not change (404, 403, a size that disagrees).
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            TransferError::Status { code, .. } => *code >= 500 || *code == 408 || *code == 429,
            TransferError::Timeout { .. }
            | TransferError::Connect { .. }
            | TransferError::Interrupted { .. }
            | TransferError::ResumeRefused { .. } => true,
            _ => false,
        }
    }
}

/// Whether an I/O error is a socket read timeout (`http1` sets `SO_RCVTIMEO`).
pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// A successful answer to a GET, its body not read yet. Whether it may be used — and
/// from which byte of the resource its body starts — is the caller's judgement (the
/// HTTP client knows nothing of resuming: `download/partial_response.rs`).
pub(crate) struct Body {
    pub(crate) reader: Box<dyn Read + Send + Sync + 'static>,
    /// The URL it came from, redacted (for messages).
    pub(crate) url: String,
    pub(crate) status: u16,
    pub(crate) content_range: Option<String>,
    pub(crate) content_length: Option<u64>,
    pub(crate) etag: Option<String>,
}

/// Blocking HTTP client for resources and uploads.
#[derive(Clone)]
pub(crate) struct HttpClient {
    /// Built on the first `https` request: loading trust stores costs time and memory
    /// that plain-`http` storage on a LAN never needs.
    tls: Arc<std::sync::OnceLock<Result<Arc<native_tls::TlsConnector>, String>>>,
    ca_file: std::path::PathBuf,
    timeout: Duration,
    allow_http: bool,
}

impl HttpClient {
    /// A client with the system's trust store plus the certificates in `ca_file` (a
    /// private storage server's CA), every socket timing out after `transfer_timeout`.
    pub(crate) fn new(config: &Config) -> HttpClient {
        HttpClient {
            tls: Arc::new(std::sync::OnceLock::new()),
            ca_file: config.ca_file.clone(),
            timeout: config.transfer_timeout,
            allow_http: config.allow_http,
        }
    }

    fn tls(&self) -> Result<Arc<native_tls::TlsConnector>, TransferError> {
        self.tls
            .get_or_init(|| {
                let mut b = native_tls::TlsConnector::builder();
                if let Ok(pem) = std::fs::read(&self.ca_file) {
                    for cert in split_pem(&pem) {
                        if let Ok(c) = native_tls::Certificate::from_pem(cert) {
                            b.add_root_certificate(c);
                        }
                    }
                }
                b.build().map(Arc::new).map_err(|e| e.to_string())
            })
            .clone()
            .map_err(TransferError::Tls)
    }

    /// The client for `url`: its proxy from the environment (never bypassed: an unusable
    /// one fails the request), TLS for `https`.
    fn request(
        &self,
        method: &str,
        url: &Url,
        headers: &[(&str, String)],
        body: Option<(&mut dyn Read, u64)>,
    ) -> Result<http1::Response, TransferError> {
        let proxy = match proxy_for(url, &|k| std::env::var(k).ok()) {
            Some(p) => Some(
                http1::Proxy::parse(&p).map_err(|reason| TransferError::Proxy {
                    proxy: redact_url(&p),
                    reason,
                })?,
            ),
            None => None,
        };
        let tls = if url.scheme() == "https" {
            Some(self.tls()?)
        } else {
            None
        };
        let client = http1::Client {
            timeout: self.timeout,
            proxy: proxy.as_ref(),
            tls: tls.as_deref(),
            user_agent: concat!("resagent/", env!("CARGO_PKG_VERSION")),
        };
        let shown = redact_url(&url.to_string());
        client
            .request(method, url, headers, body)
            .map_err(|f| match f {
                http1::Failure::TimedOut => TransferError::Timeout {
                    url: shown,
                    secs: self.timeout.as_secs(),
                },
                http1::Failure::Connect(reason) => TransferError::Connect { url: shown, reason },
                http1::Failure::Tls(reason) => TransferError::TlsHandshake { url: shown, reason },
            })
    }

    /// GETs `url` from byte `offset` (a `Range` request when non-zero, conditional on
    /// `etag` when known), following redirects; the caller judges the answer.
    pub(crate) fn get_resource(
        &self,
        url: &str,
        offset: u64,
        etag: Option<&str>,
    ) -> Result<Body, TransferError> {
        let mut current = Url::parse(url).map_err(|reason| TransferError::Unexpected {
            url: redact_url(url),
            reason,
        })?;
        for _ in 0..=MAX_REDIRECTS {
            let mut headers = Vec::new();
            if offset > 0 {
                headers.push(("Range", format!("bytes={offset}-")));
                if let Some(e) = etag {
                    headers.push(("If-Range", e.to_string()));
                }
            }
            let shown = redact_url(&current.to_string());
            let resp = self.request("GET", &current, &headers, None)?;
            let status = resp.status;
            if (300..400).contains(&status) && status != 304 {
                current = self.follow(&current, resp.header("Location"))?;
                continue;
            }
            if status == 416 && offset > 0 {
                return Err(TransferError::ResumeRefused {
                    url: shown,
                    reason: "416 Range Not Satisfiable".into(),
                });
            }
            if status >= 400 {
                return Err(TransferError::Status {
                    code: status,
                    url: shown,
                });
            }
            return Ok(Body {
                url: shown,
                status,
                content_range: resp.header("Content-Range").map(str::to_string),
                content_length: resp
                    .header("Content-Length")
                    .and_then(|v| v.trim().parse::<u64>().ok()),
                etag: resp.header("ETag").map(str::to_string),
                reader: Box::new(resp.into_body()),
            });
        }
        Err(TransferError::TooManyRedirects {
            url: redact_url(url),
        })
    }

    /// PUTs `size` bytes from `body` to a presigned `url` with `Content-Length` and
    /// `Content-MD5` (base64 of the 16 raw digest bytes). Any 2xx is success.
    pub(crate) fn put(
        &self,
        url: &str,
        mut body: impl Read,
        size: u64,
        md5_hex: &str,
    ) -> Result<(), TransferError> {
        let shown = redact_url(url);
        let parsed = Url::parse(url).map_err(|reason| TransferError::Unexpected {
            url: shown.clone(),
            reason,
        })?;
        let content_md5 = content_md5(md5_hex).ok_or_else(|| TransferError::Unexpected {
            url: shown.clone(),
            reason: format!("md5sum `{md5_hex}` is not 32 hex characters"),
        })?;
        let headers = [
            ("Content-MD5", content_md5),
            ("Content-Type", "application/octet-stream".to_string()),
        ];
        let resp = self.request("PUT", &parsed, &headers, Some((&mut body, size)))?;
        if (200..300).contains(&resp.status) {
            return Ok(());
        }
        Err(TransferError::PutRefused {
            url: shown,
            code: resp.status,
            detail: error_detail(resp.into_body()),
        })
    }

    /// The target of a redirect, if its scheme is allowed.
    fn follow(&self, from: &Url, location: Option<&str>) -> Result<Url, TransferError> {
        let shown = redact_url(&from.to_string());
        let Some(location) = location else {
            return Err(TransferError::BadRedirect { url: shown });
        };
        if let Some((scheme, _)) = location.trim().split_once("://") {
            let scheme = scheme.to_ascii_lowercase();
            if scheme != "https" && !(scheme == "http" && self.allow_http) {
                return Err(TransferError::RedirectScheme { url: shown, scheme });
            }
        }
        let next = from
            .join(location)
            .map_err(|_| TransferError::BadRedirect { url: shown.clone() })?;
        match next.scheme() {
            "https" => Ok(next),
            "http" if self.allow_http => Ok(next),
            other => Err(TransferError::RedirectScheme {
                url: shown,
                scheme: other.to_string(),
            }),
        }
    }
}

/// `Content-MD5`: base64 of the raw digest bytes, not of the hex string.
pub(crate) fn content_md5(md5_hex: &str) -> Option<String> {
    use base64::Engine;
    let raw = hex::decode(md5_hex).ok().filter(|r| r.len() == 16)?;
    Some(base64::engine::general_purpose::STANDARD.encode(raw))
}

/// The `<Code>` of an S3/COS XML error body (e.g. ` (BadDigest)`), read at most 4 KiB.
fn error_detail(body: http1::Body) -> String {
    let mut text = String::new();
    let _ = body.take(4096).read_to_string(&mut text);
    match (text.find("<Code>"), text.find("</Code>")) {
        (Some(a), Some(b)) if b > a + 6 => format!(" ({})", &text[a + 6..b]),
        _ => String::new(),
    }
}

/// The proxy for `url` from `https_proxy`/`http_proxy` (either case), unless `no_proxy`
/// names its host (exact, a domain suffix, or `*`).
pub(crate) fn proxy_for(url: &Url, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let get = |k: &str| {
        env(k)
            .or_else(|| env(&k.to_ascii_uppercase()))
            .filter(|v| !v.is_empty())
    };
    let proxy = match url.scheme() {
        "https" => get("https_proxy"),
        "http" => get("http_proxy"),
        _ => None,
    }?;
    let host = url.host().trim_matches(['[', ']']).to_ascii_lowercase();
    if let Some(no_proxy) = get("no_proxy") {
        for entry in no_proxy.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let entry = entry.split(':').next().unwrap_or(entry);
            if entry == "*" {
                return None;
            }
            let entry = entry.trim_start_matches('.').to_ascii_lowercase();
            if host == entry || host.ends_with(&format!(".{entry}")) {
                return None;
            }
        }
    }
    Some(proxy)
}

/// The `-----BEGIN CERTIFICATE-----` blocks of a PEM bundle.
fn split_pem(pem: &[u8]) -> Vec<&[u8]> {
    const END: &[u8] = b"-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(end) = rest.windows(END.len()).position(|w| w == END) {
        out.push(&rest[..end + END.len()]);
        rest = &rest[end + END.len()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_honours_no_proxy() {
        let env = |k: &str| match k {
            "https_proxy" => Some("http://proxy:3128".to_string()),
            "NO_PROXY" => Some("localhost, .internal.example,10.0.0.1:80".to_string()),
            _ => None,
        };
        let u = |s: &str| Url::parse(s).unwrap();
        assert_eq!(
            proxy_for(&u("https://cos.example/x"), &env).as_deref(),
            Some("http://proxy:3128")
        );
        assert_eq!(proxy_for(&u("https://localhost/x"), &env), None);
        assert_eq!(proxy_for(&u("https://a.internal.example/x"), &env), None);
        assert_eq!(proxy_for(&u("https://10.0.0.1/x"), &env), None);
        assert_eq!(proxy_for(&u("http://cos.example/x"), &env), None);
    }

    #[test]
    fn result_codes_follow_the_table() {
        let s = |code| TransferError::Status {
            code,
            url: String::new(),
        };
        assert_eq!(s(404).result_code(), ResultCode::NotFound);
        assert_eq!(s(401).result_code(), ResultCode::Forbidden);
        assert_eq!(s(403).result_code(), ResultCode::Forbidden);
        assert_eq!(s(500).result_code(), ResultCode::Other);
        assert!(s(503).is_transient());
        assert!(!s(404).is_transient());
        let r = TransferError::RedirectScheme {
            url: String::new(),
            scheme: "ftp".into(),
        };
        assert_eq!(r.result_code(), ResultCode::InvalidTask);
    }

    #[test]
    fn content_md5_is_base64_of_raw_bytes() {
        // md5("hello"), and `printf hello | openssl md5 -binary | base64`.
        assert_eq!(
            content_md5("5d41402abc4b2a76b9719d911017c592").as_deref(),
            Some("XUFAKrxLKna5cZ2REBfFkg==")
        );
        assert_eq!(content_md5("xyz"), None);
    }

    #[test]
    fn pem_bundles_split() {
        let pem = b"-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n";
        assert_eq!(split_pem(pem).len(), 2);
    }
}
