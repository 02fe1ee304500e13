//! A local stand-in for Tencent Cloud IoT Hub's side of the resource protocol: an MQTT
//! peer on `$resource/up/service/+/+` that answers `get_download_task`, acknowledges
//! progress reports and hands out upload URLs, plus the HTTP storage those URLs point at.
//! Integration tests drive it in-process; the `resagent-platform` binary runs it for the
//! demo and for vendors trying plugins without the cloud.
//!
//! It is written apart from resagent's own protocol code (plain `serde_json::Value`s), so
//! the tests check resagent against a second reading of docs/protocol.md, not against itself.

pub mod front;
pub mod http;
pub mod rig;
pub mod s3;

use http::{Fault, RequestLog, Storage, StoredUpload};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a task's URL is valid (a task may wait in a device's queue; Tencent's are
/// valid for hours).
const TASK_URL_TTL_S: u64 = 24 * 3600;

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
    /// Patches served (`NAME.rdelta`, by task name): their bytes and their target's.
    deltas: HashMap<String, (u64, u64)>,
    /// `result_code` of `report_download_progress_rsp` (non-zero cancels).
    download_rsp_code: i64,
    /// The code answering download `fail` reports (0: as every other report).
    fail_rsp_code: i64,
    /// How long every answer waits before it goes out (a slow platform; the order stays).
    answer_delay: Duration,
    /// How many `create_upload_task` requests to refuse before handing out URLs.
    refuse_uploads: u32,
    /// `result_code` of the `upload_result` sent after an upload's `done` (None: none sent).
    upload_result_code: Option<i64>,
    /// How many upload `done` reports to answer with -1 (a rejection) before answering 0.
    reject_done: u32,
    /// Upload names whose next `done` is answered -1, once each.
    reject_done_of: Vec<String>,
    /// Leave upload `done` reports unanswered (no verdict at all).
    silent_on_done: bool,
    /// When set, upload URLs are presigned for this S3 server instead of our storage.
    s3: Option<s3::S3Target>,
    connected: bool,
    /// Stopped for good ([`Platform::stop`]): never connects again.
    stopped: bool,
}

/// The running platform; clones share everything.
#[derive(Clone)]
pub struct Platform {
    shared: Arc<(Mutex<Shared>, Condvar)>,
    client: paho_mqtt::Client,
    storage: Storage,
    /// Answers go out through one thread, in the order their messages came (a device
    /// matches an answer to its report by that order).
    answers: std::sync::mpsc::Sender<Answer>,
}

/// One answer waiting to be published: its topic, payload and when it is due.
struct Answer {
    topic: String,
    payload: String,
    due: std::time::Instant,
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
        let (answers, queued) = std::sync::mpsc::channel::<Answer>();
        let publisher = client.clone();
        // Not on Paho's callback thread, which must not block on its own
        // acknowledgements; one thread, so the order stays.
        std::thread::Builder::new()
            .name("platform-answers".into())
            .spawn(move || {
                for a in queued {
                    std::thread::sleep(a.due.saturating_duration_since(std::time::Instant::now()));
                    let _ = publisher.publish(paho_mqtt::Message::new(a.topic, a.payload, 1));
                }
            })?;
        let platform = Platform {
            shared: Arc::new((Mutex::new(Shared::default()), Condvar::new())),
            client,
            storage,
            answers,
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
        if let Some(target) = patch_target_size(name, file) {
            self.lock().deltas.insert(name.to_string(), (size, target));
        }
        json!({
            "name": name,
            "size": size,
            "md5sum": md5,
            "url": self.storage.signed_url("GET", &path, TASK_URL_TTL_S),
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

    /// Answers download `fail` reports with `code` (a platform refusing a report about
    /// a task it never created), every other report as before.
    pub fn set_fail_rsp_code(&self, code: i64) {
        self.lock().fail_rsp_code = code;
    }

    /// Every answer from now on goes out `delay` after the message it answers (in order).
    pub fn set_answer_delay(&self, delay: Duration) {
        self.lock().answer_delay = delay;
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

    /// Answers the next `times` upload `done` reports with -1 (rejected).
    pub fn reject_upload_done(&self, times: u32) {
        self.lock().reject_done = times;
    }

    /// Answers the next upload `done` of `name` with -1 (rejected), once.
    pub fn reject_upload_done_of(&self, name: &str) {
        self.lock().reject_done_of.push(name.to_string());
    }

    /// Leaves upload `done` reports unanswered (`true`), or answers them again.
    pub fn silent_on_upload_done(&self, silent: bool) {
        self.lock().silent_on_done = silent;
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

    /// Disconnects for good. A platform left reconnecting after its test ended would
    /// reach the next test's broker once that one gets the same port, and answer its
    /// device (the same name in every test) — offers and answers from another test.
    pub fn stop(&self) {
        self.lock().stopped = true;
        let _ = self.client.disconnect(None);
    }

    fn mqtt_loop(&self) {
        let rx = self.client.start_consuming();
        loop {
            if self.lock().stopped {
                return;
            }
            let opts = paho_mqtt::ConnectOptionsBuilder::new_v3()
                .clean_session(true)
                .keep_alive_interval(Duration::from_secs(20))
                .connect_timeout(Duration::from_secs(5))
                .finalize();
            // QoS 0 on the platform's side: a Paho client that acknowledges each report
            // (a 4-byte PUBACK) and then publishes its answer waits out the broker's
            // delayed ACK under Nagle (~40 ms an answer); a cloud broker answers at once.
            // What the devices publish and how the broker treats them is unchanged.
            let up = self
                .client
                .connect(opts)
                .and_then(|_| self.client.subscribe("$resource/up/service/+/+", 0));
            if up.is_err() {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            if self.lock().stopped {
                let _ = self.client.disconnect(None);
                return;
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
        let due = std::time::Instant::now() + self.lock().answer_delay;
        for r in reply {
            let _ = self.answers.send(Answer {
                topic: down_topic(&device),
                payload: r.to_string(),
                due,
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
            "report_download_progress" => {
                let code = if m["progress"]["state"] == "fail" && g.fail_rsp_code != 0 {
                    g.fail_rsp_code
                } else {
                    g.download_rsp_code
                };
                vec![json!({
                    "type": "report_download_progress_rsp",
                    "result_code": code,
                    "result_msg": if code == 0 { "ok" } else { "task cancelled" },
                })]
            }
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
                        None => self
                            .storage
                            .signed_url("PUT", &upload_path(device, name), 900),
                    };
                    rsp["url"] = json!(url);
                }
                vec![rsp]
            }
            "report_upload_progress" => {
                let done = m["progress"]["state"] == "done";
                let name = m["name"].as_str().unwrap_or("").to_string();
                let named = g.reject_done_of.iter().position(|n| *n == name);
                let code = if let (true, Some(i)) = (done, named) {
                    g.reject_done_of.remove(i);
                    -1
                } else if done && g.reject_done > 0 {
                    g.reject_done -= 1;
                    -1
                } else {
                    0
                };
                let mut out = Vec::new();
                // A platform that gives its verdict as `upload_result` answers `done`
                // with that alone (the first answer to `done` is the verdict).
                let by_result = done && g.upload_result_code.is_some();
                if !(by_result || done && g.silent_on_done) {
                    out.push(
                        json!({"type": "report_upload_progress_rsp", "result_code": code,
                                    "result_msg": if code == 0 { "ok" } else { "rejected" }}),
                    );
                }
                if done {
                    if let Some(code) = g.upload_result_code {
                        out.push(json!({"type": "upload_result", "report": {"progress": {"result_code": code}}}));
                    }
                }
                out
            }
            _ => Vec::new(),
        }
    }

    /// `GET /reports.json`: the broker session, each device with its offer, and every
    /// report received (oldest first) — what the page shows, for scripts too.
    pub fn reports_json(&self) -> String {
        let g = self.lock();
        let mut devices: Vec<&str> = g.received.iter().map(|r| r.device.as_str()).collect();
        devices.sort_unstable();
        devices.dedup();
        let reports: Vec<Value> = g
            .received
            .iter()
            .filter(|r| {
                r.message["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("report_") && !t.ends_with("_rsp"))
            })
            .map(|r| json!({"device": r.device, "at_ms": r.at_ms, "message": r.message}))
            .collect();
        // A device given an offer (`--device`, the page) is listed before it speaks.
        devices.extend(g.offers.keys().map(String::as_str));
        devices.sort_unstable();
        devices.dedup();
        let uploads: Vec<Value> = self
            .storage
            .uploads()
            .iter()
            .map(|u| {
                json!({
                    "path": u.path, "size": u.size, "md5": u.md5_hex,
                    // A link to its bytes, valid for an hour from this answer.
                    "link": self.storage.signed_path("GET", &u.path, 3600),
                })
            })
            .collect();
        json!({
            "connected": g.connected,
            "uploads": uploads,
            "devices": devices.iter().map(|d| json!({
                "device": d,
                "offer": g.offers.get(*d).and_then(|o| o["name"].as_str()),
            })).collect::<Vec<_>>(),
            "reports": reports,
            // What each patch offered saves against its target's full download.
            "deltas": g.deltas.iter().map(|(name, (patch, target))| json!({
                "name": name, "patch_bytes": patch, "target_bytes": target,
                "saved_bytes": target.saturating_sub(*patch),
            })).collect::<Vec<_>>(),
        })
        .to_string()
    }

    /// The live page: devices and their offers, the latest state of each resource, the
    /// reports as they arrive. Static HTML whose script polls `/reports.json` four times
    /// a second and builds the tables with text nodes (device input is never markup).
    fn page(&self) -> String {
        PAGE.replace("__OFFER_TOKEN__", &self.storage.page_token())
    }
}

const PAGE: &str = r##"<!doctype html>
<html><head><meta charset="utf-8"><title>resagent local platform</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse}td,th{padding:4px 14px;text-align:left;border-bottom:1px solid #ddd}
.done{color:#176a2c;font-weight:600}.fail{color:#b3261e;font-weight:600}
.downloading,.uploading,.burning{color:#0b57d0}
progress{width:9em;vertical-align:middle;margin-right:.5em}
#offer-form{display:flex;gap:.6em;align-items:center}
pre{background:#f4f4f4;padding:1em;max-height:20em;overflow:auto}
</style></head>
<body>
<h1>resagent local platform</h1>
<p>Broker session: <b id="session">…</b> · <span id="count">0</span> reports</p>
<h2>Devices</h2>
<table id="devices"><thead><tr><th>device</th><th>offered task</th></tr></thead><tbody></tbody></table>
<h2>Offer a file</h2>
<div id="offer-form"><select id="offer-device"></select><input type="file" id="pick">
<button id="offer">Offer</button><span id="offer-said"></span></div>
<h2>Resources</h2>
<table id="resources"><thead><tr><th>device</th><th>direction</th><th>resource</th><th>state</th><th>percent</th><th>result</th><th>delta</th></tr></thead><tbody></tbody></table>
<h2>Uploads</h2>
<table id="uploads"><thead><tr><th>device</th><th>name</th><th>size</th><th>md5</th><th></th></tr></thead><tbody></tbody></table>
<h2>Reports, newest first</h2>
<pre id="log"></pre>
<script>
// Tencent's SDK leaves percent out of done and fail: say so, not "undefined%".
function shownPercent(p) {
  return typeof p.percent === "number" ? p.percent + "%" : "(no percent)";
}
function size(n) {
  return n >= 1048576 ? (n / 1048576).toFixed(1) + " MiB" : n >= 1024 ? (n / 1024).toFixed(1) + " KiB" : n + " B";
}
function row(cells, cls, bar) {
  const tr = document.createElement("tr");
  cells.forEach((c, i) => {
    const td = document.createElement("td");
    if (c instanceof Node) td.appendChild(c);
    else td.textContent = c === null || c === undefined ? "" : String(c);
    if (i === 3 && cls) td.className = cls;
    if (i === 4 && bar !== undefined) {
      const p = document.createElement("progress");
      p.max = 100;
      p.value = bar;
      td.prepend(p);
    }
    tr.appendChild(td);
  });
  return tr;
}
// A bar per resource: the last percent reported (done: full, even without a percent).
function barOf(p) {
  return p.state === "done" ? 100 : typeof p.percent === "number" ? p.percent : 0;
}
function link(href, text) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  return a;
}
async function offer() {
  const said = document.getElementById("offer-said");
  const file = document.getElementById("pick").files[0];
  const device = document.getElementById("offer-device").value;
  if (!file || !device) { said.textContent = "pick a device and a file"; return; }
  said.textContent = "sending " + file.name + "…";
  const q = new URLSearchParams({device: device, name: file.name, token: "__OFFER_TOKEN__"});
  try {
    const r = await fetch("/offer?" + q, {method: "POST", body: file});
    said.textContent = (await r.text()).trim();
  } catch (e) { said.textContent = "not sent: " + e; }
}
document.getElementById("offer").addEventListener("click", offer);
async function refresh() {
  let j;
  try { j = await (await fetch("/reports.json", {cache: "no-store"})).json(); } catch (e) { return; }
  document.getElementById("session").textContent = j.connected ? "connected" : "disconnected";
  document.getElementById("count").textContent = j.reports.length;
  const devices = document.querySelector("#devices tbody");
  devices.replaceChildren(...j.devices.map(d => row([d.device, d.offer || "-"])));
  const pickDevice = document.getElementById("offer-device");
  const names = j.devices.map(d => d.device);
  if (pickDevice.options.length !== names.length) {
    const keep = pickDevice.value;
    pickDevice.replaceChildren(...names.map(n => new Option(n, n)));
    if (names.includes(keep)) pickDevice.value = keep;
  }
  document.querySelector("#uploads tbody").replaceChildren(...j.uploads.map(u => {
    const parts = u.path.split("/").map(decodeURIComponent);
    return row([parts[2], parts.slice(3).join("/"), size(u.size), u.md5, link(u.link, "bytes")]);
  }));
  const saved = new Map(j.deltas.map(d => [d.name,
    "patch " + size(d.patch_bytes) + " for " + size(d.target_bytes) + ": " +
    size(d.saved_bytes) + " saved (" + (100 * d.saved_bytes / Math.max(d.target_bytes, 1)).toFixed(1) + " %)"]));
  const latest = new Map();
  for (const r of j.reports) {
    const m = r.message, p = m.progress || {};
    const dir = m.type === "report_upload_progress" ? "upload" : "download";
    latest.set(r.device + "|" + dir + "|" + m.name,
      {bar: barOf(p), cells: [r.device, dir, m.name, p.state, shownPercent(p),
       (p.result_code || 0) + " " + (p.result_msg || ""), dir === "download" ? saved.get(m.name) : ""]});
  }
  document.querySelector("#resources tbody").replaceChildren(
    ...[...latest.values()].map(l => row(l.cells, l.cells[3], l.bar)));
  document.getElementById("log").textContent = j.reports.slice().reverse().slice(0, 100)
    .map(r => {
      const m = r.message, p = m.progress || {};
      const dir = m.type === "report_upload_progress" ? "upload" : "download";
      return [new Date(r.at_ms).toISOString().slice(11, 23), r.device, dir, m.name, p.state,
              shownPercent(p), p.result_code, p.result_msg || ""].join("  ");
    })
    .join("\n");
}
refresh();
setInterval(refresh, 250);
</script>
</body></html>
"##;

/// For a patch (`NAME.rdelta` whose header reads), the size of the file it rebuilds.
fn patch_target_size(name: &str, file: &Path) -> Option<u64> {
    use std::io::Read;
    if !name.ends_with(resagent::rdelta::SUFFIX) {
        return None;
    }
    let mut header = Vec::new();
    std::fs::File::open(file)
        .ok()?
        .take(resagent::rdelta::HEADER_LEN as u64)
        .read_to_end(&mut header)
        .ok()?;
    let h = resagent::rdelta::Header::parse(&header).ok()?;
    Some(h.target.size)
}

fn storage_page(platform: &Platform) {
    let p = platform.clone();
    platform.storage.set_page(Arc::new(move || p.page()));
    let p = platform.clone();
    platform
        .storage
        .set_reports_json(Arc::new(move || p.reports_json()));
    let p = platform.clone();
    platform.storage.set_offer(Arc::new(move |device, name, file| {
        let task = p.task_for(name, &file);
        log::info!(
            "offer from the page: {name} ({} bytes, md5 {}) to {device}",
            task["size"],
            task["md5sum"].as_str().unwrap_or("")
        );
        p.offer(device, task.clone());
        Ok(match p.push(device, &task) {
            Ok(()) => format!("{name} offered to {device} and pushed"),
            Err(e) => format!("{name} offered to {device}; the push was not sent ({e}): the device gets it when it asks"),
        })
    }));
}

fn log_received(device: &str, m: &Value) {
    match m["type"].as_str() {
        Some(t @ ("report_download_progress" | "report_upload_progress")) => log::info!(
            "{device}: {} {} {} {} {}",
            if t.contains("download") {
                "download"
            } else {
                "upload"
            },
            m["name"].as_str().unwrap_or("?"),
            m["progress"]["state"].as_str().unwrap_or("?"),
            // Tencent's SDK leaves `percent` out of `done` and `fail`.
            m["progress"]["percent"]
                .as_u64()
                .map_or_else(|| "(no percent)".to_string(), |p| format!("{p}%")),
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
