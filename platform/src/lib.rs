//! A local stand-in for Tencent Cloud IoT Hub's side of the resource protocol: an MQTT
//! peer on `$resource/up/service/+/+` that answers `get_download_task`, acknowledges
//! progress reports and hands out upload URLs, plus the HTTP storage those URLs point at.
//! Integration tests drive it in-process; the `resagent-platform` binary runs it for the
//! demo and for vendors trying plugins without the cloud.
//!
//! It is written apart from resagent's own protocol code (plain `serde_json::Value`s), so
//! the tests check resagent against a second reading of docs/protocol.md, not against itself.

pub mod http;
pub mod rig;
pub mod s3;

use http::{Fault, RequestLog, Storage, StoredUpload};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Something a device published, as the platform received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// `PRODUCT/DEVICE`, from the topic.
    pub device: String,
    pub message: Value,
    /// Unix milliseconds.
    pub at_ms: u64,
}

#[derive(Default)]
struct Shared {
    received: Vec<Received>,
    /// What `get_download_task` is answered with, per device.
    offers: HashMap<String, Value>,
    /// `result_code` of `report_download_progress_rsp` (non-zero cancels).
    download_rsp_code: i64,
    /// How many `create_upload_task` requests to refuse before handing out URLs.
    refuse_uploads: u32,
    /// `result_code` of the `upload_result` sent after an upload's `done` (None: none sent).
    upload_result_code: Option<i64>,
    /// When set, upload URLs are presigned for this S3 server instead of our storage.
    s3: Option<s3::S3Target>,
    connected: bool,
}

/// The running platform; clones share everything.
#[derive(Clone)]
pub struct Platform {
    shared: Arc<(Mutex<Shared>, Condvar)>,
    client: paho_mqtt::Client,
    storage: Storage,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The URL path of the upload URL handed to `device` for `name` (for faults and logs).
pub fn upload_path(device: &str, name: &str) -> String {
    format!(
        "/uploads/{}/{}",
        http::percent_encode(device),
        http::percent_encode(name)
    )
}

/// `$resource/down/service/PRODUCT/DEVICE` for `PRODUCT/DEVICE`.
pub fn down_topic(device: &str) -> String {
    format!("$resource/down/service/{device}")
}

impl Platform {
    /// Starts the storage server on `http_listen` (uploads land in `upload_dir`) and the
    /// MQTT peer on `broker` (`tcp://host:port`); the peer reconnects on its own.
    pub fn start(
        broker: &str,
        http_listen: &str,
        upload_dir: PathBuf,
    ) -> std::io::Result<Platform> {
        let storage = Storage::start(http_listen, upload_dir)?;
        let create = paho_mqtt::CreateOptionsBuilder::new()
            .server_uri(broker)
            .client_id(format!(
                "resagent-platform-{}-{}",
                std::process::id(),
                unix_ms() % 100_000
            ))
            .persistence(paho_mqtt::PersistenceType::None)
            .finalize();
        let mut client = paho_mqtt::Client::new(create).map_err(std::io::Error::other)?;
        client.set_timeout(Duration::from_secs(5));
        let platform = Platform {
            shared: Arc::new((Mutex::new(Shared::default()), Condvar::new())),
            client,
            storage,
        };
        let p = platform.clone();
        storage_page(&platform);
        std::thread::Builder::new()
            .name("platform-mqtt".into())
            .spawn(move || p.mqtt_loop())?;
        Ok(platform)
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Serves `file` and returns the task a device would get for it (`allow_http` needed).
    pub fn task_for(&self, name: &str, file: &Path) -> Value {
        self.task_served_as(name, file, name)
    }

    /// Like [`task_for`](Self::task_for), served under `served_as` (two versions of one
    /// resource need two URLs).
    pub fn task_served_as(&self, name: &str, file: &Path, served_as: &str) -> Value {
        let path = self.storage.serve(served_as, file.to_path_buf());
        let (size, md5) = file_md5(file);
        json!({
            "name": name,
            "size": size,
            "md5sum": md5,
            "url": format!("{}{path}?sign=PRESIGNED-SECRET-{}", self.storage.base_url(), unix_ms()),
        })
    }

    /// The URL path a task's URL points at (for faults and request logs).
    pub fn path_of(task: &Value) -> String {
        let url = task["url"].as_str().unwrap_or("");
        let after_host = url.splitn(4, '/').nth(3).unwrap_or("");
        format!("/{}", after_host.split('?').next().unwrap_or(""))
    }

    /// What `get_download_task` from `device` is answered with from now on.
    pub fn offer(&self, device: &str, task: Value) {
        self.lock().offers.insert(device.to_string(), task);
    }

    /// Pushes a task as `{"type":"download",…}`.
    pub fn push(&self, device: &str, task: &Value) -> Result<(), String> {
        let mut msg = task.clone();
        msg["type"] = json!("download");
        self.send(device, msg.to_string().as_bytes())
    }

    /// Publishes raw bytes on the device's down topic (QoS 1).
    pub fn send(&self, device: &str, payload: &[u8]) -> Result<(), String> {
        let m = paho_mqtt::Message::new(down_topic(device), payload.to_vec(), 1);
        self.client.publish(m).map_err(|e| e.to_string())
    }

    pub fn set_download_rsp_code(&self, code: i64) {
        self.lock().download_rsp_code = code;
    }

    pub fn refuse_uploads(&self, times: u32) {
        self.lock().refuse_uploads = times;
    }

    /// Hands out upload URLs presigned for a real S3-compatible server from now on.
    pub fn use_s3(&self, target: s3::S3Target) {
        self.lock().s3 = Some(target);
    }

    pub fn set_upload_result(&self, code: Option<i64>) {
        self.lock().upload_result_code = code;
    }

    pub fn set_fault(&self, path: &str, fault: Fault) {
        self.storage.set_fault(path, fault);
    }

    pub fn requests(&self) -> Vec<RequestLog> {
        self.storage.requests()
    }

    /// GET requests for `path`, and the body bytes sent for them in all.
    pub fn gets(&self, path: &str) -> (usize, u64) {
        let reqs: Vec<_> = self
            .requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path == path)
            .collect();
        (reqs.len(), reqs.iter().map(|r| r.body_bytes).sum())
    }

    pub fn uploads(&self) -> Vec<StoredUpload> {
        self.storage.uploads()
    }

    pub fn is_connected(&self) -> bool {
        self.lock().connected
    }

    /// Everything `device` published so far.
    pub fn received(&self, device: &str) -> Vec<Value> {
        self.lock()
            .received
            .iter()
            .filter(|r| r.device == device)
            .map(|r| r.message.clone())
            .collect()
    }

    /// Everything `device` published so far, with the Unix milliseconds it arrived at.
    pub fn received_at(&self, device: &str) -> Vec<(u64, Value)> {
        self.lock()
            .received
            .iter()
            .filter(|r| r.device == device)
            .map(|r| (r.at_ms, r.message.clone()))
            .collect()
    }

    /// Progress reports of `device` for resource `name`, in order.
    pub fn reports_for(&self, device: &str, name: &str) -> Vec<Value> {
        self.received(device)
            .into_iter()
            .filter(|m| {
                m["type"].as_str().is_some_and(|t| t.starts_with("report_")) && m["name"] == name
            })
            .collect()
    }

    /// Waits until `device` published a message matching `pred`; returns it.
    pub fn wait_for(
        &self,
        device: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.shared;
        let mut g = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = g
                .received
                .iter()
                .find(|r| r.device == device && pred(&r.message))
            {
                return Some(r.message.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = cvar
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits for the final (`done` or `fail`) upload report of `name`.
    pub fn wait_upload_final(&self, device: &str, name: &str, timeout: Duration) -> Option<Value> {
        self.wait_for(device, timeout, |m| {
            m["type"] == "report_upload_progress"
                && m["name"] == name
                && matches!(m["progress"]["state"].as_str(), Some("done" | "fail"))
        })
    }

    /// Waits for the final (`done` or `fail`) download report of `name`.
    pub fn wait_final(&self, device: &str, name: &str, timeout: Duration) -> Option<Value> {
        self.wait_for(device, timeout, |m| {
            m["type"] == "report_download_progress"
                && m["name"] == name
                && matches!(m["progress"]["state"].as_str(), Some("done" | "fail"))
        })
    }

    /// Waits until the platform's own MQTT session is up.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.is_connected() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mqtt_loop(&self) {
        let rx = self.client.start_consuming();
        loop {
            let opts = paho_mqtt::ConnectOptionsBuilder::new_v3()
                .clean_session(true)
                .keep_alive_interval(Duration::from_secs(20))
                .connect_timeout(Duration::from_secs(5))
                .finalize();
            let up = self
                .client
                .connect(opts)
                .and_then(|_| self.client.subscribe("$resource/up/service/+/+", 1));
            if up.is_err() {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            self.lock().connected = true;
            log::info!("platform connected to the broker");
            while let Ok(Some(msg)) = rx.recv() {
                self.on_message(&msg);
            }
            self.lock().connected = false;
            log::warn!("platform lost the broker; reconnecting");
        }
    }

    fn on_message(&self, msg: &paho_mqtt::Message) {
        let device = msg
            .topic()
            .strip_prefix("$resource/up/service/")
            .unwrap_or("")
            .to_string();
        let message: Value = match serde_json::from_slice(msg.payload()) {
            Ok(v) => v,
            Err(e) => {
                log::warn!("{device}: not JSON: {e}");
                return;
            }
        };
        log_received(&device, &message);
        let reply = self.answer(&device, &message);
        {
            let (lock, cvar) = &*self.shared;
            let mut g = lock.lock().unwrap_or_else(|p| p.into_inner());
            g.received.push(Received {
                device: device.clone(),
                message: message.clone(),
                at_ms: unix_ms(),
            });
            cvar.notify_all();
        }
        for r in reply {
            // Published from a helper thread: Paho's callback thread must not block on
            // its own acknowledgements.
            let client = self.client.clone();
            let topic = down_topic(&device);
            std::thread::spawn(move || {
                let _ = client.publish(paho_mqtt::Message::new(topic, r.to_string(), 1));
            });
        }
    }

    /// The platform's answers to one message.
    fn answer(&self, device: &str, m: &Value) -> Vec<Value> {
        let mut g = self.lock();
        match m["type"].as_str().unwrap_or("") {
            "get_download_task" => {
                let mut rsp = g.offers.get(device).cloned().unwrap_or_else(|| json!({}));
                rsp["type"] = json!("get_download_task_rsp");
                vec![rsp]
            }
            "report_download_progress" => vec![json!({
                "type": "report_download_progress_rsp",
                "result_code": g.download_rsp_code,
                "result_msg": if g.download_rsp_code == 0 { "ok" } else { "task cancelled" },
            })],
            "create_upload_task" => {
                let mut rsp = json!({
                    "type": "create_upload_task_rsp",
                    "size": m["size"], "name": m["name"], "md5sum": m["md5sum"],
                });
                if g.refuse_uploads > 0 {
                    g.refuse_uploads -= 1;
                    rsp["result_code"] = json!(-1);
                    rsp["result_msg"] = json!("refused by the test platform");
                } else {
                    let name = m["name"].as_str().unwrap_or("upload");
                    let url = match &g.s3 {
                        Some(target) => {
                            let date = s3::amz_date(unix_ms() / 1000);
                            target.presign("PUT", &format!("{device}/{name}"), &date, 900)
                        }
                        None => format!(
                            "{}{}?sign=PRESIGNED-SECRET-{}",
                            self.storage.base_url(),
                            upload_path(device, name),
                            unix_ms()
                        ),
                    };
                    rsp["url"] = json!(url);
                }
                vec![rsp]
            }
            "report_upload_progress" => {
                let mut out = vec![
                    json!({"type": "report_upload_progress_rsp", "result_code": 0, "result_msg": "ok"}),
                ];
                if m["progress"]["state"] == "done" {
                    if let Some(code) = g.upload_result_code {
                        out.push(json!({"type": "upload_result", "report": {"progress": {"result_code": code}}}));
                    }
                }
                out
            }
            _ => Vec::new(),
        }
    }

    /// The live page: the newest report of each resource of each device, and the last
    /// messages received.
    fn page(&self) -> String {
        let g = self.lock();
        let mut latest: Vec<(String, String, String)> = Vec::new();
        for r in &g.received {
            if let (Some(name), Some(state)) = (
                r.message["name"].as_str(),
                r.message["progress"]["state"].as_str(),
            ) {
                let line = format!(
                    "{state} {}% {}",
                    r.message["progress"]["percent"],
                    r.message["progress"]["result_msg"].as_str().unwrap_or("")
                );
                match latest
                    .iter_mut()
                    .find(|(d, n, _)| *d == r.device && n == name)
                {
                    Some(entry) => entry.2 = line,
                    None => latest.push((r.device.clone(), name.to_string(), line)),
                }
            }
        }
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let mut html = String::from("<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=1><title>resagent local platform</title><style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 12px;text-align:left}pre{background:#f4f4f4;padding:1em}</style></head><body><h1>resagent local platform</h1>");
        html.push_str(&format!(
            "<p>broker session: {}</p><h2>Resources</h2><table><tr><th>device</th><th>resource</th><th>latest report</th></tr>",
            if g.connected { "connected" } else { "disconnected" }
        ));
        for (d, n, l) in &latest {
            html.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(d),
                esc(n),
                esc(l)
            ));
        }
        html.push_str("</table><h2>Last messages from devices</h2><pre>");
        for r in g.received.iter().rev().take(50) {
            html.push_str(&esc(&format!("{} {}\n", r.device, r.message)));
        }
        html.push_str("</pre></body></html>");
        html
    }
}

fn storage_page(platform: &Platform) {
    let p = platform.clone();
    platform.storage.set_page(Arc::new(move || p.page()));
}

fn log_received(device: &str, m: &Value) {
    match m["type"].as_str() {
        Some(t @ ("report_download_progress" | "report_upload_progress")) => log::info!(
            "{device}: {} {} {} {}% {}",
            if t.contains("download") {
                "download"
            } else {
                "upload"
            },
            m["name"].as_str().unwrap_or("?"),
            m["progress"]["state"].as_str().unwrap_or("?"),
            m["progress"]["percent"],
            m["progress"]["result_msg"].as_str().unwrap_or("")
        ),
        _ => log::info!("{device}: {m}"),
    }
}

/// Size and MD5 (hex) of a file, streamed.
pub fn file_md5(path: &Path) -> (u64, String) {
    use std::io::Read;
    let mut f = std::fs::File::open(path).expect("file to serve is readable");
    let mut ctx = md5::Context::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).expect("read file to serve");
        if n == 0 {
            break;
        }
        ctx.consume(&buf[..n]);
        size += n as u64;
    }
    (size, format!("{:x}", ctx.compute()))
}

pub use http::Fault as HttpFault;
