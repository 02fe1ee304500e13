//! The HTTP/1.1 the agent needs and no more: one GET (a `Range` from a byte, the
//! answer's headers, the body read straight from the socket into the caller's buffer)
//! and one PUT (a body of known length), over TCP or TLS (`native-tls`, OpenSSL), direct
//! or through an `http://` proxy (absolute-form requests; `CONNECT` for TLS), every
//! socket with read and write timeouts. `Connection: close`: one request per connection.
//!
//! Why not ureq (the design's first choice, used until issue #26): ureq 2 reads bodies
//! through a fixed 8 KiB buffer — 131 072 `recv`s and a second copy per GiB, which cost
//! the reading thread as much CPU as curl spends receiving *and* writing — and ureq 3,
//! which has the setting, adds 88 KiB to a binary already over its 1.5 MiB budget. Both,
//! with `url` and `idna`, were 209 KiB of the stripped binary. What they did for us is
//! this file: the request line, the head, three body framings and the redirects'
//! `Location` (followed by the caller, `transfer.rs`).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A response head larger than this is refused (a server that never ends its headers).
const MAX_HEAD: usize = 64 * 1024;
/// A chunk-size line longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;

/// An `http`/`https` URL, as far as a request needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    https: bool,
    /// As written in the URL (an IPv6 address keeps its brackets).
    host: String,
    port: u16,
    /// Path and query, from the `/` on (the fragment dropped).
    target: String,
}

impl Url {
    /// Parses an absolute `http://` or `https://` URL: a host of ASCII letters, digits,
    /// `-`, `.` and `_` (a punycode name works; a Unicode one is refused), or a bracketed
    /// IPv6 address; an optional port; no user name or password; a path and query of
    /// printable ASCII.
    pub(crate) fn parse(s: &str) -> Result<Url, String> {
        let (scheme, rest) = s.split_once("://").ok_or("not an absolute URL")?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            other => return Err(format!("unsupported scheme `{other}`")),
        };
        let rest = rest.split('#').next().unwrap_or("");
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if authority.contains('@') {
            return Err("a user name or password in the URL".into());
        }
        if !target.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err("a space, control or non-ASCII character in the path".into());
        }
        let (host, port) = split_host_port(authority)?;
        let port = port.unwrap_or(if https { 443 } else { 80 });
        Ok(Url {
            https,
            host: host.to_string(),
            port,
            target,
        })
    }

    pub(crate) fn scheme(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }

    /// The host as written (brackets kept).
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// The host to dial and to name in TLS (an IPv6 address without its brackets).
    fn bare_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }

    fn default_port(&self) -> bool {
        self.port == if self.https { 443 } else { 80 }
    }

    /// `host[:port]`, as the `Host` header and `CONNECT` want it.
    fn authority(&self) -> String {
        if self.default_port() {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL a redirect's `Location` names, relative to this one.
    pub(crate) fn join(&self, location: &str) -> Result<Url, String> {
        let location = location.trim();
        if location.contains("://") {
            return Url::parse(location);
        }
        if let Some(rest) = location.strip_prefix("//") {
            return Url::parse(&format!("{}://{rest}", self.scheme()));
        }
        let target = if location.starts_with('/') {
            location.to_string()
        } else {
            let path = self.target.split('?').next().unwrap_or("/");
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{location}")
        };
        Url::parse(&format!("{}://{}{target}", self.scheme(), self.authority()))
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme(), self.authority(), self.target)
    }
}

/// `host` and the port, if one is given, of an authority.
fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if authority.starts_with('[') {
        let close = authority.find(']').ok_or("an unclosed IPv6 address")?;
        let port = authority[close + 1..].strip_prefix(':');
        if port.is_none() && close + 1 != authority.len() {
            return Err("garbage after an IPv6 address".into());
        }
        (&authority[..=close], port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().map_err(|_| format!("port `{p}`"))?),
        None => None,
    };
    let name_ok = |h: &str| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    };
    let v6_ok = |h: &str| {
        h.len() > 2
            && h[1..h.len() - 1]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    };
    if host.starts_with('[') && v6_ok(host) || name_ok(host) {
        Ok((host, port))
    } else if host.is_empty() {
        Err("no host".into())
    } else {
        Err(
            "a host name that is not ASCII letters, digits, `-`, `.` (use its punycode form)"
                .into(),
        )
    }
}

/// An `http://` proxy from the environment: where to dial, and its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Proxy {
    host: String,
    port: u16,
    /// `Basic …` for `Proxy-Authorization`, when the proxy URL carries a user.
    auth: Option<String>,
}

impl Proxy {
    /// `http://[user[:password]@]host[:port]` (port 80 when none is given).
    pub(crate) fn parse(s: &str) -> Result<Proxy, String> {
        let rest = match s.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => return Err(format!("unsupported proxy scheme `{scheme}`")),
            None => s,
        };
        let authority = rest.split('/').next().unwrap_or("");
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport)?;
        let auth = userinfo.map(|u| {
            use base64::Engine;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(u.as_bytes())
            )
        });
        Ok(Proxy {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: port.unwrap_or(80),
            auth,
        })
    }
}

/// What went wrong before a response could be read.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Nothing came within the timeout (connect, head).
    TimedOut,
    /// The connection could not be made or broke (DNS, refused, a proxy's refusal, a
    /// connection closed before the head).
    Connect(String),
    /// The TLS handshake failed: a certificate not trusted, a protocol refused. Not the
    /// network failing — trying again will not change it.
    Tls(String),
}

impl Failure {
    fn io(what: &str, e: io::Error) -> Failure {
        if matches!(
            e.kind(),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
        ) {
            Failure::TimedOut
        } else {
            Failure::Connect(format!("{what}: {e}"))
        }
    }
}

/// How a request is made: the timeouts, the proxy, TLS.
pub(crate) struct Client<'a> {
    pub(crate) timeout: Duration,
    pub(crate) proxy: Option<&'a Proxy>,
    /// Needed for `https` URLs.
    pub(crate) tls: Option<&'a native_tls::TlsConnector>,
    pub(crate) user_agent: &'a str,
}

/// A TCP or TLS connection.
enum Stream {
    Plain(TcpStream),
    Tls(Box<native_tls::TlsStream<TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A response: its status and headers; the body follows through [`Response::into_body`].
pub(crate) struct Response {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    stream: Stream,
    /// Body bytes read with the head.
    early: Vec<u8>,
}

impl Response {
    /// The first header `name` (any case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body, framed as the head says.
    pub(crate) fn into_body(self) -> Body {
        let framing = framing(&self.headers);
        Body {
            stream: self.stream,
            early: self.early,
            at: 0,
            framing,
        }
    }
}

/// Chunked, `Content-Length`, or to the close — in that order, as RFC 9112 says.
fn framing(headers: &[(String, String)]) -> Framing {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    if get("Transfer-Encoding").is_some_and(|t| t.to_ascii_lowercase().contains("chunked")) {
        Framing::Chunked {
            left: 0,
            done: false,
        }
    } else if let Some(n) = get("Content-Length").and_then(|v| v.trim().parse::<u64>().ok()) {
        Framing::Length(n)
    } else {
        Framing::Close
    }
}

enum Framing {
    /// Bytes still to come.
    Length(u64),
    /// Bytes left in the current chunk; `done` after the last.
    Chunked {
        left: u64,
        done: bool,
    },
    Close,
}

/// A response body. Reads go straight into the caller's buffer (no copy through one
/// of ours, no cap on their size): a 256 KiB read is one `recv` where the socket has
/// the bytes.
pub(crate) struct Body {
    stream: Stream,
    early: Vec<u8>,
    at: usize,
    framing: Framing,
}

impl Body {
    /// Reads from what came with the head first, then from the connection.
    fn raw(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at < self.early.len() {
            let n = buf.len().min(self.early.len() - self.at);
            buf[..n].copy_from_slice(&self.early[self.at..self.at + n]);
            self.at += n;
            return Ok(n);
        }
        self.stream.read(buf)
    }

    /// One line of chunked framing (without its CRLF).
    fn line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            if self.raw(&mut byte)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the chunked body ended in a size line",
                ));
            }
            if byte[0] == b'\n' {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            line.push(byte[0]);
            if line.len() > MAX_CHUNK_LINE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a chunk-size line too long",
                ));
            }
        }
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match self.framing {
            Framing::Close => self.raw(buf),
            Framing::Length(0) => Ok(0),
            Framing::Length(left) => {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = self.raw(&mut buf[..want])?;
                self.framing = Framing::Length(left - n as u64);
                Ok(n)
            }
            Framing::Chunked { done: true, .. } => Ok(0),
            Framing::Chunked { left: 0, .. } => {
                let line = self.line()?;
                let size = line.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size, 16).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "a chunk size that is not hex")
                })?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    while !self.line()?.is_empty() {}
                    self.framing = Framing::Chunked {
                        left: 0,
                        done: true,
                    };
                    return Ok(0);
                }
                self.framing = Framing::Chunked {
                    left: size,
                    done: false,
                };
                self.read(buf)
            }
            Framing::Chunked { left, .. } => {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = self.raw(&mut buf[..want])?;
                if n == 0 {
                    return Ok(0);
                }
                let left = left - n as u64;
                if left == 0 {
                    // The CRLF after the chunk's data.
                    self.line()?;
                }
                self.framing = Framing::Chunked { left, done: false };
                Ok(n)
            }
        }
    }
}

impl Client<'_> {
    /// Sends `method` for `url` with `headers`, then `body` (`length` bytes) if any, and
    /// reads the response head.
    pub(crate) fn request(
        &self,
        method: &str,
        url: &Url,
        headers: &[(&str, String)],
        body: Option<(&mut dyn Read, u64)>,
    ) -> Result<Response, Failure> {
        let mut stream = self.connect(url)?;
        let target = match (self.proxy, url.https) {
            // Plain HTTP through a proxy: the absolute form.
            (Some(_), false) => url.to_string(),
            _ => url.target.clone(),
        };
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {}\r\nConnection: close\r\n",
            url.authority(),
            self.user_agent
        );
        if let (Some(p), false) = (self.proxy, url.https) {
            if let Some(auth) = &p.auth {
                head.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
            }
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some((_, length)) = &body {
            head.push_str(&format!("Content-Length: {length}\r\n"));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .map_err(|e| Failure::io("send", e))?;
        if let Some((reader, length)) = body {
            send_body(&mut stream, reader, length)?;
        }
        stream.flush().map_err(|e| Failure::io("send", e))?;
        read_response(stream)
    }

    fn connect(&self, url: &Url) -> Result<Stream, Failure> {
        let (host, port) = match self.proxy {
            Some(p) => (p.host.as_str(), p.port),
            None => (url.bare_host(), url.port),
        };
        let addrs = (host, port)
            .to_socket_addrs()
            .map_err(|e| Failure::Connect(format!("resolve {host}: {e}")))?;
        let mut last = None;
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, self.timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = match (tcp, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(Failure::io(&format!("connect {host}:{port}"), e)),
            (None, None) => return Err(Failure::Connect(format!("resolve {host}: no address"))),
        };
        let set = |r: io::Result<()>| r.map_err(|e| Failure::io("socket", e));
        set(tcp.set_read_timeout(Some(self.timeout)))?;
        set(tcp.set_write_timeout(Some(self.timeout)))?;
        let _ = tcp.set_nodelay(true);
        let mut tcp = tcp;
        if let (Some(p), true) = (self.proxy, url.https) {
            tunnel(&mut tcp, p, url)?;
        }
        if !url.https {
            return Ok(Stream::Plain(tcp));
        }
        let tls = self
            .tls
            .ok_or_else(|| Failure::Connect("TLS is not set up".into()))?;
        tls.connect(url.bare_host(), tcp)
            .map(|s| Stream::Tls(Box::new(s)))
            .map_err(|e| match e {
                native_tls::HandshakeError::Failure(e) => Failure::Tls(e.to_string()),
                native_tls::HandshakeError::WouldBlock(_) => Failure::TimedOut,
            })
    }
}

/// `CONNECT host:port` through the proxy; Ok once it answers 2xx.
fn tunnel(tcp: &mut TcpStream, proxy: &Proxy, url: &Url) -> Result<(), Failure> {
    let target = format!("{}:{}", url.host, url.port);
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = &proxy.auth {
        head.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes())
        .map_err(|e| Failure::io("proxy", e))?;
    let (status, _, early) = read_head(tcp)?;
    if !(200..300).contains(&status) || !early.is_empty() {
        return Err(Failure::Connect(format!(
            "proxy refused the tunnel: HTTP {status}"
        )));
    }
    Ok(())
}

fn send_body(stream: &mut Stream, reader: &mut dyn Read, length: u64) -> Result<(), Failure> {
    let mut buf = vec![0u8; 128 * 1024];
    let mut left = length;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match reader.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(Failure::Connect(format!(
                    "the body ended {left} bytes short"
                )))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failure::Connect(format!("body: {e}"))),
        };
        stream
            .write_all(&buf[..n])
            .map_err(|e| Failure::io("send", e))?;
        left -= n as u64;
    }
    Ok(())
}

/// A status, its headers, and the body bytes read past the head.
type Head = (u16, Vec<(String, String)>, Vec<u8>);

/// Reads a head: its status, its headers and the bytes read past it.
fn read_head(stream: &mut dyn Read) -> Result<Head, Failure> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = find_end(&buf) {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(Failure::Connect(format!(
                "a response head over {MAX_HEAD} bytes"
            )));
        }
        let n = stream
            .read(&mut chunk)
            .map_err(|e| Failure::io("receive", e))?;
        if n == 0 {
            return Err(Failure::Connect(
                "the connection closed before a response".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let early = buf[end + 4..].to_vec();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code.parse::<u16>().ok(),
        _ => None,
    }
    .filter(|c| (100..600).contains(c))
    .ok_or_else(|| {
        Failure::Connect(format!(
            "not an HTTP/1 response: `{}`",
            status_line.chars().take(60).collect::<String>()
        ))
    })?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok((status, headers, early))
}

fn find_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// The response to a request: informational answers (1xx) skipped.
fn read_response(mut stream: Stream) -> Result<Response, Failure> {
    loop {
        let (status, headers, early) = read_head(&mut stream)?;
        if (100..200).contains(&status) {
            if !early.is_empty() {
                // What followed the 1xx is the next head: read it from those bytes first.
                let mut chained = early.as_slice().chain(&mut stream);
                let (status, headers, rest) = read_head(&mut chained)?;
                return Ok(Response {
                    status,
                    headers,
                    stream,
                    early: rest,
                });
            }
            continue;
        }
        return Ok(Response {
            status,
            headers,
            stream,
            early,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_as_requests_need_them() {
        let u = Url::parse("https://cos.example.com/a/b.bin?sign=x#frag").unwrap();
        assert_eq!(
            (u.scheme(), u.host(), u.port),
            ("https", "cos.example.com", 443)
        );
        assert_eq!(u.target, "/a/b.bin?sign=x");
        assert_eq!(u.to_string(), "https://cos.example.com/a/b.bin?sign=x");
        let u = Url::parse("http://127.0.0.1:8080?x=1").unwrap();
        assert_eq!((u.port, u.target.as_str()), (8080, "/?x=1"));
        assert_eq!(u.authority(), "127.0.0.1:8080");
        let u = Url::parse("http://[::1]:9/x").unwrap();
        assert_eq!((u.bare_host(), u.port), ("::1", 9));
        assert!(Url::parse("http://xn--bcher-kva.example/").is_ok());
        for bad in [
            "ftp://h/x",
            "https://b\u{fc}cher.example/",
            "https:///x",
            "https://user:pw@h/x",
            "http://h:99999/",
            "http://h/a b",
            "nothing",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redirects_join_like_browsers_for_the_forms_servers_send() {
        let base = Url::parse("http://s:8/dir/file.bin?q=1").unwrap();
        let j = |l: &str| base.join(l).unwrap().to_string();
        assert_eq!(j("https://other/x"), "https://other/x");
        assert_eq!(j("//other/y"), "http://other/y");
        assert_eq!(j("/abs?z"), "http://s:8/abs?z");
        assert_eq!(j("next.bin"), "http://s:8/dir/next.bin");
        assert!(base.join("ftp://x/").is_err());
    }

    #[test]
    fn proxies_are_http_with_optional_credentials() {
        let p = Proxy::parse("http://user:pw@proxy.lan:3128").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.lan", 3128));
        assert_eq!(p.auth.as_deref(), Some("Basic dXNlcjpwdw=="));
        assert_eq!(Proxy::parse("proxy.lan").unwrap().port, 80);
        assert!(Proxy::parse("socks9://proxy.invalid:1080").is_err());
    }

    fn body(framing_head: &str, wire: &[u8]) -> Vec<u8> {
        let mut all = format!("HTTP/1.1 200 OK\r\n{framing_head}\r\n").into_bytes();
        all.extend_from_slice(wire);
        // The head arrives in one read here; the rest comes from a socket.
        let mut cursor = io::Cursor::new(all);
        let (status, headers, early) = read_head(&mut cursor).unwrap();
        assert_eq!(status, 200);
        let rest = cursor.get_ref()[cursor.position() as usize..].to_vec();
        let mut body = Body {
            stream: Stream::Plain(loopback_with(&rest)),
            early,
            at: 0,
            framing: framing(&headers),
        };
        let mut out = Vec::new();
        body.read_to_end(&mut out).unwrap();
        out
    }

    /// A TCP stream whose peer sent `bytes` and closed.
    fn loopback_with(bytes: &[u8]) -> TcpStream {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let bytes = bytes.to_vec();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(&bytes).unwrap();
        });
        let s = TcpStream::connect(addr).unwrap();
        t.join().unwrap();
        s
    }

    #[test]
    fn bodies_are_framed_by_length_chunks_or_the_close() {
        assert_eq!(body("Content-Length: 5\r\n", b"hello, and more"), b"hello");
        assert_eq!(
            body(
                "Transfer-Encoding: chunked\r\n",
                b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer: x\r\n\r\nignored"
            ),
            b"hello, world"
        );
        assert_eq!(body("", b"to the close"), b"to the close");
    }

    #[test]
    fn heads_that_are_not_http_or_never_end_are_refused() {
        let mut c = io::Cursor::new(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec());
        assert!(matches!(read_head(&mut c), Err(Failure::Connect(_))));
        let mut endless = io::Cursor::new(vec![b'a'; MAX_HEAD + 10_000]);
        assert!(matches!(read_head(&mut endless), Err(Failure::Connect(_))));
        let mut closed = io::Cursor::new(b"HTTP/1.1 200 OK\r\n".to_vec());
        assert!(matches!(read_head(&mut closed), Err(Failure::Connect(_))));
    }
}
