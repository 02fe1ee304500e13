//! HTTP with blocking `ureq` on OpenSSL (native-tls): the proxy from the environment,
//! redirects followed by hand (at most 5, allowed schemes only), a read timeout on every
//! socket, and the checks docs/protocol.md asks of a response before its body is used.

use crate::config::Config;
use crate::protocol::{redact_url, ResultCode};
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use url::Url;

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

/// Whether an I/O error is a socket read timeout (ureq sets `SO_RCVTIMEO`).
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

    fn agent_for(&self, url: &Url) -> Result<ureq::Agent, TransferError> {
        let mut b = ureq::AgentBuilder::new()
            .timeout_connect(self.timeout)
            .timeout_read(self.timeout)
            .timeout_write(self.timeout)
            .redirects(0)
            .user_agent(concat!("resagent/", env!("CARGO_PKG_VERSION")));
        if url.scheme() == "https" {
            b = b.tls_connector(self.tls()?);
        }
        if let Some(proxy) = proxy_for(url, &|k| std::env::var(k).ok()) {
            // A proxy set for a reason (a network that only lets it through, an
            // inspecting gateway) is never bypassed: unusable, the request is not made.
            let p = ureq::Proxy::new(&proxy).map_err(|e| TransferError::Proxy {
                proxy: redact_url(&proxy),
                reason: e.to_string(),
            })?;
            b = b.proxy(p);
        }
        Ok(b.build())
    }

    /// GETs `url` from byte `offset` (a `Range` request when non-zero, conditional on
    /// `etag` when known), following redirects; the caller judges the answer.
    pub(crate) fn get_resource(
        &self,
        url: &str,
        offset: u64,
        etag: Option<&str>,
    ) -> Result<Body, TransferError> {
        let mut current = Url::parse(url).map_err(|e| TransferError::Unexpected {
            url: redact_url(url),
            reason: e.to_string(),
        })?;
        for _ in 0..=MAX_REDIRECTS {
            let agent = self.agent_for(&current)?;
            let mut req = agent.get(current.as_str());
            if offset > 0 {
                req = req.set("Range", &format!("bytes={offset}-"));
                if let Some(e) = etag {
                    req = req.set("If-Range", e);
                }
            }
            let shown = redact_url(current.as_str());
            let resp = match req.call() {
                Ok(r) => r,
                Err(ureq::Error::Status(416, _)) if offset > 0 => {
                    return Err(TransferError::ResumeRefused {
                        url: shown,
                        reason: "416 Range Not Satisfiable".into(),
                    })
                }
                Err(ureq::Error::Status(code, _)) => {
                    return Err(TransferError::Status { code, url: shown })
                }
                Err(ureq::Error::Transport(t)) => return Err(self.classify(&shown, t)),
            };
            if (300..400).contains(&resp.status()) {
                current = self.follow(&current, resp.header("Location"))?;
                continue;
            }
            return Ok(Body {
                url: shown,
                status: resp.status(),
                content_range: resp.header("Content-Range").map(str::to_string),
                content_length: resp
                    .header("Content-Length")
                    .and_then(|v| v.trim().parse::<u64>().ok()),
                etag: resp.header("ETag").map(str::to_string),
                reader: resp.into_reader(),
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
        body: impl Read,
        size: u64,
        md5_hex: &str,
    ) -> Result<(), TransferError> {
        let shown = redact_url(url);
        let parsed = Url::parse(url).map_err(|e| TransferError::Unexpected {
            url: shown.clone(),
            reason: e.to_string(),
        })?;
        let content_md5 = content_md5(md5_hex).ok_or_else(|| TransferError::Unexpected {
            url: shown.clone(),
            reason: format!("md5sum `{md5_hex}` is not 32 hex characters"),
        })?;
        let result = self
            .agent_for(&parsed)?
            .put(parsed.as_str())
            .set("Content-Length", &size.to_string())
            .set("Content-MD5", &content_md5)
            .set("Content-Type", "application/octet-stream")
            .send(body);
        match result {
            Ok(resp) if (200..300).contains(&resp.status()) => Ok(()),
            Ok(resp) => Err(TransferError::PutRefused {
                url: shown,
                code: resp.status(),
                detail: String::new(),
            }),
            Err(ureq::Error::Status(code, resp)) => Err(TransferError::PutRefused {
                url: shown,
                code,
                detail: error_detail(resp),
            }),
            Err(ureq::Error::Transport(t)) => Err(self.classify(&shown, t)),
        }
    }

    /// The target of a redirect, if its scheme is allowed.
    fn follow(&self, from: &Url, location: Option<&str>) -> Result<Url, TransferError> {
        let shown = redact_url(from.as_str());
        let next = location
            .and_then(|l| from.join(l).ok())
            .ok_or(TransferError::BadRedirect { url: shown.clone() })?;
        match next.scheme() {
            "https" => Ok(next),
            "http" if self.allow_http => Ok(next),
            other => Err(TransferError::RedirectScheme {
                url: shown,
                scheme: other.to_string(),
            }),
        }
    }

    fn classify(&self, url: &str, t: ureq::Transport) -> TransferError {
        let timed_out = std::error::Error::source(&t)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .is_some_and(is_timeout);
        if timed_out {
            TransferError::Timeout {
                url: url.to_string(),
                secs: self.timeout.as_secs(),
            }
        } else {
            // ureq's message may quote the URL it was given: keep only its kind and
            // the underlying cause.
            let cause = std::error::Error::source(&t)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            TransferError::Connect {
                url: url.to_string(),
                reason: format!("{}{cause}", t.kind()),
            }
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
fn error_detail(resp: ureq::Response) -> String {
    let mut body = String::new();
    let _ = resp.into_reader().take(4096).read_to_string(&mut body);
    match (body.find("<Code>"), body.find("</Code>")) {
        (Some(a), Some(b)) if b > a + 6 => format!(" ({})", &body[a + 6..b]),
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
    let host = url
        .host_str()
        .unwrap_or("")
        .trim_matches(['[', ']'])
        .to_ascii_lowercase();
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
