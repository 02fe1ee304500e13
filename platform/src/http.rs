//! The platform's storage side: a small HTTP/1.1 server on std sockets that serves
//! registered files with Range (as COS does), accepts presigned-style PUT uploads checking
//! `Content-MD5` (400 `BadDigest` on a mismatch, like COS and S3), and can misbehave on
//! purpose (faults) so tests can meet the servers a device meets in the field.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Ways a served path can misbehave. The default is a well-behaved server.
#[derive(Debug, Clone, Default)]
pub struct Fault {
    /// Answer every request with this status and an empty body.
    pub status: Option<u16>,
    /// Answer with a 302 to this URL.
    pub redirect: Option<String>,
    /// Answer Range requests with 200 and the whole file.
    pub ignore_range: bool,
    /// Answer Range requests with a 206 whose Content-Range starts at byte 0.
    pub wrong_content_range: bool,
    /// Send no Content-Length (the body ends when the connection closes).
    pub no_content_length: bool,
    /// Bytes of garbage appended after the file (with `no_content_length`).
    pub extra_bytes: u64,
    /// Announce this Content-Length instead of the real one.
    pub content_length: Option<u64>,
    /// After this many body bytes, go silent (keep the socket open) for `stall_for`.
    pub stall_after: Option<u64>,
    pub stall_for: Duration,
    /// After this many body bytes, close the connection — for the next `close_times`
    /// responses only.
    pub close_after: Option<u64>,
    pub close_times: u32,
    /// Send (GET) or read (PUT) at most this many bytes per second.
    pub rate: Option<u64>,
    /// Answer PUTs with 400 `BadDigest` whatever their `Content-MD5`.
    pub bad_digest: bool,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct RequestLog {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub status: u16,
    /// Body bytes written to the client (GET) or read from it (PUT).
    pub body_bytes: u64,
}

/// An upload the server stored.
#[derive(Debug, Clone)]
pub struct StoredUpload {
    pub path: String,
    pub file: PathBuf,
    pub size: u64,
    pub md5_hex: String,
    /// Whether the request carried a Content-MD5 that matched.
    pub content_md5_checked: bool,
}

/// Renders the live page at `/`.
pub type PageFn = Arc<dyn Fn() -> String + Send + Sync>;

/// Makes an offer from the page: `(device, name, file)` → what to tell the person, or
/// why not.
pub type OfferFn = Arc<dyn Fn(&str, &str, PathBuf) -> Result<String, String> + Send + Sync>;

#[derive(Default)]
pub(crate) struct State {
    page: Option<PageFn>,
    reports_json: Option<PageFn>,
    offer: Option<OfferFn>,
    files: HashMap<String, PathBuf>,
    faults: HashMap<String, Fault>,
    requests: Vec<RequestLog>,
    uploads: Vec<StoredUpload>,
    upload_dir: PathBuf,
    /// The key of the signed tokens in every file and upload URL (random per start).
    secret: Vec<u8>,
    /// What URLs name as this server (`--public-url`), instead of the listening address.
    public_url: Option<String>,
}

/// A random key for the URL tokens, from the kernel.
fn random_secret() -> Vec<u8> {
    let mut key = vec![0u8; 32];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .is_err()
    {
        // No /dev/urandom (a chroot): the clock, which still differs between runs.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        key[..16].copy_from_slice(&now.to_le_bytes());
    }
    key
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The token of `METHOD path` valid until `expires`: HMAC-SHA256 of the three, hex (as
/// COS signs `q-sign-time` and the request line; HEAD uses GET's).
fn token(secret: &[u8], method: &str, path: &str, expires: u64) -> String {
    use hmac::{Mac, SimpleHmac};
    let method = if method == "HEAD" { "GET" } else { method };
    let mut mac =
        SimpleHmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(format!("{method}\n{path}\n{expires}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `query` holds a valid, unexpired token for `METHOD path`.
fn signed(secret: &[u8], method: &str, path: &str, query: &str) -> bool {
    let param = |k: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
    };
    let (Some(sign), Some(expires)) = (param("sign"), param("expires")) else {
        return false;
    };
    let Ok(expires) = expires.parse::<u64>() else {
        return false;
    };
    expires >= unix_now() && token(secret, method, path, expires) == sign
}

/// The storage server; clones share state.
#[derive(Clone)]
pub struct Storage {
    state: Arc<Mutex<State>>,
    addr: std::net::SocketAddr,
}

impl Storage {
    /// Listens on `listen` (e.g. `127.0.0.1:0`) and stores uploads in `upload_dir`.
    pub fn start(listen: &str, upload_dir: PathBuf) -> io::Result<Storage> {
        std::fs::create_dir_all(&upload_dir)?;
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            upload_dir,
            secret: random_secret(),
            ..State::default()
        }));
        let shared = state.clone();
        std::thread::Builder::new()
            .name("platform-http".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let st = shared.clone();
                    let _ = std::thread::Builder::new()
                        .name("platform-conn".into())
                        .spawn(move || {
                            if let Err(e) = handle(conn, &st) {
                                log::debug!("connection: {e}");
                            }
                        });
                }
            })?;
        Ok(Storage { state, addr })
    }

    /// What URLs name as this server: `--public-url` when given; else the listening
    /// address — with the host's own address for one listening on all of them (a
    /// device cannot dial `0.0.0.0`), and no port when it is 80 (Tencent's SDK dials 80
    /// and takes anything after the host as part of the host name).
    pub fn base_url(&self) -> String {
        if let Some(u) = self.lock().public_url.clone() {
            return u.trim_end_matches('/').to_string();
        }
        let ip = if self.addr.ip().is_unspecified() {
            outbound_ip().unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]))
        } else {
            self.addr.ip()
        };
        url_base(ip, self.addr.port())
    }

    /// URLs name `url` (e.g. `http://gateway.local:8080`) as this server from now on.
    pub fn set_public_url(&self, url: &str) {
        self.lock().public_url = Some(url.to_string());
    }

    /// A URL for `METHOD path` carrying a token valid for `ttl_s` seconds; requests
    /// without a valid token for their method and path are refused 403.
    pub fn signed_url(&self, method: &str, path: &str, ttl_s: u64) -> String {
        format!(
            "{}{}",
            self.base_url(),
            self.signed_path(method, path, ttl_s)
        )
    }

    /// Serves `file` at `/files/NAME`; returns the URL path.
    pub fn serve(&self, name: &str, file: PathBuf) -> String {
        let path = format!("/files/{}", percent_encode(name));
        self.lock().files.insert(path.clone(), file);
        path
    }

    pub fn set_fault(&self, path: &str, fault: Fault) {
        self.lock().faults.insert(path.to_string(), fault);
    }

    /// Sets what `GET /` shows.
    pub fn set_page(&self, page: PageFn) {
        self.lock().page = Some(page);
    }

    /// Sets what `POST /offer` does with a file picked on the page.
    pub fn set_offer(&self, offer: OfferFn) {
        self.lock().offer = Some(offer);
    }

    /// The token the page sends with `POST /offer` (another site's page cannot read
    /// it, so cannot post an offer through the person's browser).
    pub fn page_token(&self) -> String {
        token(&self.lock().secret, "POST", "/offer", 0)
    }

    /// `path` with a query carrying a token for `METHOD path` valid for `ttl_s` seconds
    /// (a link on the page: relative, whatever `--public-url` says).
    pub fn signed_path(&self, method: &str, path: &str, ttl_s: u64) -> String {
        let expires = unix_now() + ttl_s;
        let sign = token(&self.lock().secret, method, path, expires);
        format!("{path}?sign={sign}&expires={expires}")
    }

    /// Sets what `GET /reports.json` answers.
    pub fn set_reports_json(&self, json: PageFn) {
        self.lock().reports_json = Some(json);
    }

    pub fn clear_fault(&self, path: &str) {
        self.lock().faults.remove(path);
    }

    pub fn requests(&self) -> Vec<RequestLog> {
        self.lock().requests.clone()
    }

    pub fn uploads(&self) -> Vec<StoredUpload> {
        self.lock().uploads.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Percent-encodes a resource name for a URL path.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

struct Request {
    method: String,
    path: String,
    query: String,
    headers: HashMap<String, String>,
}

/// The address this host would use to reach the outside (a UDP "connect" sends
/// nothing): what a device elsewhere dials.
fn outbound_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    Some(s.local_addr().ok()?.ip()).filter(|ip| !ip.is_unspecified())
}

/// The 403 of a request without a valid token (COS's answer).
fn access_denied(out: &mut TcpStream) -> io::Result<(u16, u64)> {
    let body = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Request has expired or the signature does not match.</Message></Error>\n";
    Ok((403, respond(out, 403, "application/xml", body, &[])?))
}

fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
    let (path, query) = (path.to_string(), query.to_string());
    let mut headers = HashMap::new();
    let mut total = line.len();
    loop {
        let mut h = String::new();
        let n = reader.read_line(&mut h)?;
        total += n;
        if n == 0 || h == "\r\n" || h == "\n" || total > 64 * 1024 {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok(Some(Request {
        method,
        path,
        query,
        headers,
    }))
}

fn handle(stream: TcpStream, state: &Arc<Mutex<State>>) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let req = match read_request(&mut reader)? {
        Some(r) => r,
        None => return Ok(()),
    };
    let mut out = stream;
    // Logged on arrival, completed when answered: a stalled response is still counted.
    let index = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.requests.push(RequestLog {
            method: req.method.clone(),
            path: req.path.clone(),
            range: req.headers.get("range").cloned(),
            status: 0,
            body_bytes: 0,
        });
        st.requests.len() - 1
    };
    let (status, bytes) = match req.method.as_str() {
        "GET" if req.path == "/" => {
            let page = state.lock().unwrap_or_else(|p| p.into_inner()).page.clone();
            let html = page.map(|f| f()).unwrap_or_default();
            (
                200,
                respond(
                    &mut out,
                    200,
                    "text/html; charset=utf-8",
                    html.as_bytes(),
                    &[],
                )?,
            )
        }
        "GET" if req.path == "/reports.json" => {
            let json = state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .reports_json
                .clone();
            let body = json.map(|f| f()).unwrap_or_else(|| "{}".to_string());
            (
                200,
                respond(&mut out, 200, "application/json", body.as_bytes(), &[])?,
            )
        }
        "GET" | "HEAD" => serve_get(&mut out, state, &req)?,
        "PUT" => receive_put(&mut reader, &mut out, state, &req)?,
        "POST" if req.path == "/offer" => receive_offer(&mut reader, &mut out, state, &req)?,
        _ => (
            405,
            respond(&mut out, 405, "text/plain", b"method not allowed\n", &[])?,
        ),
    };
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(entry) = st.requests.get_mut(index) {
        entry.status = status;
        entry.body_bytes = bytes;
    }
    Ok(())
}

fn respond(
    out: &mut TcpStream,
    status: u16,
    ctype: &str,
    body: &[u8],
    extra: &[(&str, String)],
) -> io::Result<u64> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    Ok(body.len() as u64)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// `bytes=N-` or `bytes=N-M` → (N, Some(M)).
fn parse_range(v: &str) -> Option<(u64, Option<u64>)> {
    let spec = v.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let first = a.trim().parse().ok()?;
    let last = if b.trim().is_empty() {
        None
    } else {
        Some(b.trim().parse().ok()?)
    };
    Some((first, last))
}

fn serve_get(
    out: &mut TcpStream,
    state: &Arc<Mutex<State>>,
    req: &Request,
) -> io::Result<(u16, u64)> {
    let (file, fault, secret) = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        let fault = st.faults.get(&req.path).cloned().unwrap_or_default();
        if fault.close_after.is_some() {
            // Count down the responses this fault still applies to.
            if let Some(f) = st.faults.get_mut(&req.path) {
                if f.close_times > 0 {
                    f.close_times -= 1;
                }
                if f.close_times == 0 {
                    f.close_after = None;
                }
            }
        }
        (st.files.get(&req.path).cloned(), fault, st.secret.clone())
    };
    if let Some(code) = fault.status {
        return Ok((code, respond(out, code, "text/plain", b"", &[])?));
    }
    if let Some(to) = &fault.redirect {
        return Ok((
            302,
            respond(out, 302, "text/plain", b"", &[("Location", to.clone())])?,
        ));
    }
    if !signed(&secret, &req.method, &req.path, &req.query) {
        return access_denied(out);
    }
    let path = match file {
        Some(p) => p,
        None => {
            return Ok((
                404,
                respond(out, 404, "text/plain", b"no such file\n", &[])?,
            ))
        }
    };
    let mut f = File::open(&path)?;
    let meta = f.metadata()?;
    let size = meta.len();
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let etag = format!("\"{size:x}-{mtime:x}\"");
    let range = req.headers.get("range").and_then(|r| parse_range(r));
    let if_range_ok = req.headers.get("if-range").map_or(true, |v| *v == etag);
    let (status, start, end) = match range {
        Some((first, last)) if !fault.ignore_range && if_range_ok => {
            if first >= size {
                let extra = [("Content-Range", format!("bytes */{size}"))];
                return Ok((416, respond(out, 416, "text/plain", b"", &extra)?));
            }
            (206, first, last.map_or(size, |l| (l + 1).min(size)))
        }
        _ => (200, 0, size),
    };
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/octet-stream\r\nAccept-Ranges: bytes\r\nETag: {etag}\r\nConnection: close\r\n",
        reason(status)
    );
    if status == 206 {
        let shown_start = if fault.wrong_content_range { 0 } else { start };
        head.push_str(&format!(
            "Content-Range: bytes {shown_start}-{}/{size}\r\n",
            end.saturating_sub(1)
        ));
    }
    if !fault.no_content_length {
        let len = fault.content_length.unwrap_or(end - start);
        head.push_str(&format!("Content-Length: {len}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    if req.method == "HEAD" {
        return Ok((status, 0));
    }
    f.seek(SeekFrom::Start(start))?;
    let sent = send_body(out, &mut f.take(end - start), &fault)?;
    Ok((status, sent))
}

/// Streams the body with the fault's pacing, stall, cut and over-send.
fn send_body(out: &mut TcpStream, body: &mut impl Read, fault: &Fault) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    let started = Instant::now();
    let mut extra_left = fault.extra_bytes;
    loop {
        let mut want = buf.len() as u64;
        if let Some(rate) = fault.rate {
            want = want.min((rate / 10).max(1));
        }
        for limit in [fault.stall_after, fault.close_after].into_iter().flatten() {
            if sent < limit {
                want = want.min(limit - sent);
            }
        }
        if let Some(limit) = fault.stall_after {
            if sent >= limit {
                out.flush()?;
                std::thread::sleep(fault.stall_for);
                return Ok(sent);
            }
        }
        if let Some(limit) = fault.close_after {
            if sent >= limit {
                return Ok(sent);
            }
        }
        let mut n = body.read(&mut buf[..want as usize])?;
        if n == 0 {
            if extra_left == 0 {
                break;
            }
            n = (want.min(extra_left)) as usize;
            buf[..n].fill(b'X');
            extra_left -= n as u64;
        }
        if let Err(e) = out.write_all(&buf[..n]) {
            // The client went away (or cut us off): count what it took.
            log::debug!("client stopped reading after {sent} bytes: {e}");
            return Ok(sent);
        }
        sent += n as u64;
        if let Some(rate) = fault.rate {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            let elapsed = started.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
    }
    Ok(sent)
}

fn receive_put(
    reader: &mut BufReader<TcpStream>,
    out: &mut TcpStream,
    state: &Arc<Mutex<State>>,
    req: &Request,
) -> io::Result<(u16, u64)> {
    let (fault, dir, secret) = {
        let st = state.lock().unwrap_or_else(|p| p.into_inner());
        (
            st.faults.get(&req.path).cloned().unwrap_or_default(),
            st.upload_dir.clone(),
            st.secret.clone(),
        )
    };
    let len: u64 = match req
        .headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
    {
        Some(l) => l,
        None => {
            return Ok((
                411,
                respond(out, 411, "text/plain", b"length required\n", &[])?,
            ))
        }
    };
    if !signed(&secret, "PUT", &req.path, &req.query) {
        // Read (and drop) a bounded body first, so the client hears the answer.
        if len <= 64 << 20 {
            let _ = io::copy(&mut reader.take(len), &mut io::sink());
        }
        return access_denied(out);
    }
    if req
        .headers
        .get("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        // curl asks before sending a large body; without this it waits a second.
        out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let name = req.path.trim_start_matches('/').replace('/', "_");
    let tmp = dir.join(format!(".{name}.part"));
    let mut file = File::create(&tmp)?;
    let mut ctx = md5::Context::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    let mut body = reader.take(len);
    loop {
        let n = body.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.consume(&buf[..n]);
        file.write_all(&buf[..n])?;
        got += n as u64;
        if let Some(rate) = fault.rate {
            std::thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
        }
    }
    if let Some(code) = fault.status {
        let _ = std::fs::remove_file(&tmp);
        return Ok((code, respond(out, code, "text/plain", b"", &[])?));
    }
    let digest = ctx.compute();
    use base64::Engine;
    let expected = base64::engine::general_purpose::STANDARD.encode(digest.0);
    let checked = match req.headers.get("content-md5") {
        Some(v) if *v == expected && !fault.bad_digest => true,
        Some(_) => {
            let _ = std::fs::remove_file(&tmp);
            let body = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>BadDigest</Code><Message>The Content-MD5 you specified did not match what we received.</Message></Error>\n";
            return Ok((400, respond(out, 400, "application/xml", body, &[])?));
        }
        None => false,
    };
    if got != len {
        let _ = std::fs::remove_file(&tmp);
        return Ok((
            400,
            respond(
                out,
                400,
                "text/plain",
                b"body shorter than Content-Length\n",
                &[],
            )?,
        ));
    }
    let dest = dir.join(&name);
    std::fs::rename(&tmp, &dest)?;
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    // Its bytes can be fetched back (GET, with a token: the page links them).
    st.files.insert(req.path.clone(), dest.clone());
    st.uploads.push(StoredUpload {
        path: req.path.clone(),
        file: dest,
        size: got,
        md5_hex: format!("{digest:x}"),
        content_md5_checked: checked,
    });
    drop(st);
    let etag = format!("\"{digest:x}\"");
    Ok((
        200,
        respond(out, 200, "text/plain", b"", &[("ETag", etag)])?,
    ))
}

/// `http://HOST[:PORT]`: no port for 80 (Tencent's SDK dials 80 and takes anything
/// after the host as part of the host name), brackets for IPv6.
fn url_base(ip: std::net::IpAddr, port: u16) -> String {
    let host = match ip {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    match port {
        80 => format!("http://{host}"),
        port => format!("http://{host}:{port}"),
    }
}

/// Whether `name` can be a resource offered from the page: a plain file name.
fn offerable_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(char::is_control)
}

/// Percent-decodes a query value (`+` is a space, as a form sends it).
fn query_value(query: &str, key: &str) -> Option<String> {
    let raw = query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?;
    let mut out = Vec::new();
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `POST /offer?device=D&name=N&token=T`: a file picked on the page becomes the
/// device's offer (stored under the upload folder's `.offered/`, then offered and
/// pushed as any `--offer`). The page's token is required; the name is a plain file name.
fn receive_offer(
    reader: &mut BufReader<TcpStream>,
    out: &mut TcpStream,
    state: &Arc<Mutex<State>>,
    req: &Request,
) -> io::Result<(u16, u64)> {
    let (secret, dir, offer) = {
        let st = state.lock().unwrap_or_else(|p| p.into_inner());
        (
            st.secret.clone(),
            st.upload_dir.join(".offered"),
            st.offer.clone(),
        )
    };
    let refuse = |out: &mut TcpStream, code: u16, why: &str| -> io::Result<(u16, u64)> {
        Ok((
            code,
            respond(
                out,
                code,
                "text/plain; charset=utf-8",
                format!("{why}\n").as_bytes(),
                &[],
            )?,
        ))
    };
    if query_value(&req.query, "token").as_deref()
        != Some(token(&secret, "POST", "/offer", 0).as_str())
    {
        return refuse(out, 403, "an offer needs the page's token");
    }
    let (Some(device), Some(name)) = (
        query_value(&req.query, "device"),
        query_value(&req.query, "name"),
    ) else {
        return refuse(out, 400, "an offer needs device= and name=");
    };
    if !device.contains('/') || !offerable_name(&name) {
        return refuse(out, 400, "device is PRODUCT/DEVICE, name a plain file name");
    }
    let Some(len) = req
        .headers
        .get("content-length")
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return refuse(out, 411, "length required");
    };
    let Some(offer) = offer else {
        return refuse(out, 404, "this platform takes no offers from the page");
    };
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!(".{name}.part"));
    let mut file = File::create(&tmp)?;
    let got = io::copy(&mut reader.take(len), &mut file)?;
    if got != len {
        let _ = std::fs::remove_file(&tmp);
        return refuse(out, 400, "body shorter than Content-Length");
    }
    file.sync_all()?;
    let dest = dir.join(&name);
    std::fs::rename(&tmp, &dest)?;
    match offer(&device, &name, dest) {
        Ok(msg) => Ok((
            200,
            respond(
                out,
                200,
                "text/plain; charset=utf-8",
                format!("{msg}\n").as_bytes(),
                &[],
            )?,
        )),
        Err(why) => refuse(out, 400, &why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range("bytes=10-"), Some((10, None)));
        assert_eq!(parse_range("bytes=0-99"), Some((0, Some(99))));
        assert_eq!(parse_range("items=1-2"), None);
    }

    #[test]
    fn names_are_percent_encoded() {
        assert_eq!(percent_encode("a b/c"), "a%20b%2Fc");
        assert_eq!(percent_encode("fw-1.0_x~"), "fw-1.0_x~");
    }

    #[test]
    fn urls_name_no_port_for_80() {
        let lo = std::net::IpAddr::from([127, 0, 0, 1]);
        assert_eq!(url_base(lo, 80), "http://127.0.0.1");
        assert_eq!(url_base(lo, 8080), "http://127.0.0.1:8080");
        let v6 = std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST);
        assert_eq!(url_base(v6, 80), "http://[::1]");
    }

    #[test]
    fn an_offer_from_the_page_names_a_plain_file() {
        assert!(offerable_name("model v2.bin"));
        for bad in ["", ".hidden", "../x", "a/b", "a\\b", "a\0b", "a\nb"] {
            assert!(!offerable_name(bad), "{bad:?}");
        }
        assert!(!offerable_name(&"x".repeat(201)));
    }

    #[test]
    fn query_values_are_percent_decoded() {
        let q = "device=P%2Fd&name=model+v2.bin&token=ab";
        assert_eq!(query_value(q, "device").as_deref(), Some("P/d"));
        assert_eq!(query_value(q, "name").as_deref(), Some("model v2.bin"));
        assert_eq!(query_value(q, "nope"), None);
        assert_eq!(query_value("name=%2", "name"), None, "a cut escape");
        assert_eq!(query_value("name=%ZZ", "name"), None);
        assert_eq!(query_value("name=%FF", "name"), None, "not UTF-8");
    }
}
