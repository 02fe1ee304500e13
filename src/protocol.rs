//! The resource protocol as data: topics, message shapes, task validation, progress states
//! and result codes (docs/protocol.md). Pure code with no I/O, so every rule
//! about what the network may send is testable without a broker.
//!
//! Over 700 lines on purpose: ~620 of code and ~300 of tests that feed it hostile
//! messages. Every check of what the network sends stays in this one file, so a reader
//! looking for "what do we trust" reads one place.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::fmt;
use thiserror::Error;

/// Largest message accepted from the broker; anything bigger is bad input (docs/protocol.md).
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Longest URL accepted (a presigned URL is a few hundred bytes).
pub(crate) const MAX_URL_BYTES: usize = 8 * 1024;
/// Longest resource name a file system takes as one path component (NAME_MAX).
pub(crate) const MAX_NAME_BYTES: usize = 255;
/// Longest `name` string echoed back in a `fail` report for a task that was refused.
pub(crate) const MAX_ECHOED_NAME_BYTES: usize = 1024;
/// Folder inside `resource_dir` that holds partial downloads. It lives beside the
/// destinations so that installing is one `rename(2)` on one file system; a task may not
/// use it as its name.
pub(crate) const STAGING_DIR_NAME: &str = ".resagent-staging";
/// The `sdkappid` field of the MQTT username, as the platform's documentation gives it.
pub(crate) const SDK_APP_ID: &str = "12010126";

/// The device's identity on the platform: the two halves of every topic and client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceId {
    pub(crate) product_id: String,
    pub(crate) device_name: String,
}

impl DeviceId {
    /// `$resource/up/service/${productId}/${deviceName}`: where the device publishes.
    pub(crate) fn up_topic(&self) -> String {
        format!(
            "$resource/up/service/{}/{}",
            self.product_id, self.device_name
        )
    }

    /// `$resource/down/service/${productId}/${deviceName}`: what the device subscribes to.
    pub(crate) fn down_topic(&self) -> String {
        format!(
            "$resource/down/service/{}/{}",
            self.product_id, self.device_name
        )
    }

    /// `${productId}${deviceName}`: the MQTT client id.
    pub(crate) fn client_id(&self) -> String {
        format!("{}{}", self.product_id, self.device_name)
    }
}

/// Result codes of progress reports (docs/protocol.md, "Result codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "i32", try_from = "i32")]
pub(crate) enum ResultCode {
    Success,
    Timeout,
    NotFound,
    Forbidden,
    Mismatch,
    InstallFailed,
    NoSpace,
    UploadFailed,
    ValidateRejected,
    InvalidTask,
    Other,
    /// A patch (`NAME.rdelta`) whose base is missing or not the one it was made against.
    BaseMismatch,
}

impl ResultCode {
    pub(crate) fn code(self) -> i32 {
        match self {
            ResultCode::Success => 0,
            ResultCode::Timeout => -1,
            ResultCode::NotFound => -2,
            ResultCode::Forbidden => -3,
            ResultCode::Mismatch => -4,
            ResultCode::InstallFailed => -5,
            ResultCode::NoSpace => -6,
            ResultCode::UploadFailed => -8,
            ResultCode::ValidateRejected => -9,
            ResultCode::InvalidTask => -10,
            ResultCode::Other => -11,
            ResultCode::BaseMismatch => -12,
        }
    }
}

impl From<ResultCode> for i32 {
    fn from(code: ResultCode) -> i32 {
        code.code()
    }
}

impl TryFrom<i32> for ResultCode {
    type Error = String;
    fn try_from(v: i32) -> Result<Self, String> {
        Ok(match v {
            0 => ResultCode::Success,
            -1 => ResultCode::Timeout,
            -2 => ResultCode::NotFound,
            -3 => ResultCode::Forbidden,
            -4 => ResultCode::Mismatch,
            -5 => ResultCode::InstallFailed,
            -6 => ResultCode::NoSpace,
            -8 => ResultCode::UploadFailed,
            -9 => ResultCode::ValidateRejected,
            -10 => ResultCode::InvalidTask,
            -11 => ResultCode::Other,
            -12 => ResultCode::BaseMismatch,
            other => return Err(format!("unknown result code {other}")),
        })
    }
}

/// Progress states of a transfer; `Done` and `Fail` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ProgressState {
    Downloading,
    Burning,
    Uploading,
    Done,
    Fail,
}

impl ProgressState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ProgressState::Downloading => "downloading",
            ProgressState::Burning => "burning",
            ProgressState::Uploading => "uploading",
            ProgressState::Done => "done",
            ProgressState::Fail => "fail",
        }
    }
}

impl fmt::Display for ProgressState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which half of the protocol a report belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Direction {
    Download,
    Upload,
}

/// One progress report, ready to be serialised for the up topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Report {
    pub(crate) direction: Direction,
    pub(crate) name: String,
    pub(crate) state: ProgressState,
    pub(crate) percent: u8,
    pub(crate) result_code: i32,
    pub(crate) result_msg: String,
}

impl Report {
    pub(crate) fn progress(
        direction: Direction,
        name: &str,
        state: ProgressState,
        percent: u8,
    ) -> Self {
        Report {
            direction,
            name: name.to_string(),
            state,
            percent,
            result_code: 0,
            result_msg: String::new(),
        }
    }

    pub(crate) fn done(direction: Direction, name: &str) -> Self {
        Report {
            direction,
            name: name.to_string(),
            state: ProgressState::Done,
            percent: 100,
            result_code: 0,
            result_msg: "success".to_string(),
        }
    }

    pub(crate) fn fail(
        direction: Direction,
        name: &str,
        percent: u8,
        code: ResultCode,
        msg: &str,
    ) -> Self {
        Report {
            direction,
            name: name.to_string(),
            state: ProgressState::Fail,
            percent,
            result_code: code.code(),
            result_msg: msg.to_string(),
        }
    }

    /// The JSON object published on the up topic.
    pub(crate) fn to_message(&self) -> Value {
        let kind = match self.direction {
            Direction::Download => "report_download_progress",
            Direction::Upload => "report_upload_progress",
        };
        json!({
            "type": kind,
            "name": self.name,
            "progress": {
                "state": self.state.as_str(),
                "percent": self.percent,
                "result_code": self.result_code,
                "result_msg": self.result_msg,
            }
        })
    }
}

/// `{"type":"create_upload_task",…}`: announces an outbox file (docs/protocol.md, "Upload").
pub(crate) fn create_upload_task_message(name: &str, md5sum: &str, size: u64) -> Value {
    json!({"type": "create_upload_task", "size": size, "name": name, "md5sum": md5sum})
}

/// `{"type":"get_download_task"}`.
pub(crate) fn get_download_task_message() -> Value {
    json!({ "type": "get_download_task" })
}

/// Percent of `done` out of `total`, computed in 64 bits (resources over 4 GiB).
pub(crate) fn percent(done: u64, total: u64) -> u8 {
    if total == 0 {
        return 100;
    }
    let p = (u128::from(done.min(total)) * 100) / u128::from(total);
    p as u8
}

/// A download task that passed every check of docs/protocol.md's "Bad input".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Task {
    pub(crate) name: String,
    /// 32 lowercase hex characters.
    pub(crate) md5sum: String,
    pub(crate) size: u64,
    /// The presigned URL: a secret. Log only [`redact_url`] of it.
    pub(crate) url: String,
}

impl Task {
    /// Whether `other` asks for the same content under the same name.
    pub(crate) fn same_content(&self, other: &Task) -> bool {
        self.name == other.name && self.md5sum == other.md5sum
    }
}

/// The rules a task is checked against before anything is fetched.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TaskLimits {
    pub(crate) max_resource_bytes: u64,
    pub(crate) allow_http: bool,
}

/// Why a message from the broker was refused. `name` is the task's name when the message
/// carried one that can be echoed in a `fail` report.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{reason}")]
pub(crate) struct BadMessage {
    pub(crate) reason: String,
    pub(crate) name: Option<String>,
    /// Whether the message asked for a download (a `fail` is owed) or an upload.
    pub(crate) direction: Option<Direction>,
}

impl BadMessage {
    fn new(reason: impl Into<String>) -> Self {
        BadMessage {
            reason: reason.into(),
            name: None,
            direction: None,
        }
    }
}

/// A message from the down topic, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DownMessage {
    /// A download task, from `get_download_task_rsp` or a `download` push.
    DownloadTask(Task),
    /// `get_download_task_rsp` without a URL: nothing to do.
    NoDownloadTask,
    /// `report_download_progress_rsp`; a non-zero code cancels the download in flight.
    DownloadProgressRsp {
        result_code: i64,
        result_msg: String,
    },
    /// `create_upload_task_rsp`: a URL for a pending upload, or a refusal.
    UploadTaskRsp(UploadTaskRsp),
    /// `report_upload_progress_rsp`.
    UploadProgressRsp {
        result_code: i64,
        result_msg: String,
    },
    /// `upload_result` after an upload's `done`.
    UploadResult { result_code: i64 },
}

/// The platform's answer to `create_upload_task`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UploadTaskRsp {
    pub(crate) name: String,
    pub(crate) md5sum: String,
    pub(crate) size: Option<u64>,
    pub(crate) grant: UploadGrant,
}

/// What `create_upload_task_rsp` grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UploadGrant {
    /// The presigned URL to PUT the file to.
    Url(String),
    /// A non-zero `result_code`: the platform refused the task.
    Refused { result_code: i64 },
    /// A zero code but no (or an empty) `url`.
    NoUrl,
}

/// Parses and checks one message from the down topic.
pub(crate) fn parse_down(payload: &[u8], limits: &TaskLimits) -> Result<DownMessage, BadMessage> {
    if payload.len() > MAX_MESSAGE_BYTES {
        return Err(BadMessage::new(format!(
            "message of {} bytes is over the {} byte limit",
            payload.len(),
            MAX_MESSAGE_BYTES
        )));
    }
    let value: Value = serde_json::from_slice(payload)
        .map_err(|e| BadMessage::new(format!("malformed JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| BadMessage::new("message is not a JSON object"))?;
    let kind = match obj.get("type") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(BadMessage::new("field `type` is not a string")),
        None => return Err(BadMessage::new("message has no `type`")),
    };
    match kind {
        "get_download_task_rsp" | "download" => parse_download_task(&value, limits),
        "report_download_progress_rsp" => {
            let (result_code, result_msg) = parse_rsp_code(&value)?;
            Ok(DownMessage::DownloadProgressRsp {
                result_code,
                result_msg,
            })
        }
        "report_upload_progress_rsp" => {
            let (result_code, result_msg) = parse_rsp_code(&value)?;
            Ok(DownMessage::UploadProgressRsp {
                result_code,
                result_msg,
            })
        }
        "create_upload_task_rsp" => parse_upload_task_rsp(&value).map(DownMessage::UploadTaskRsp),
        "upload_result" => {
            let code = value
                .pointer("/report/progress/result_code")
                .ok_or_else(|| {
                    BadMessage::new("upload_result without report.progress.result_code")
                })?;
            let result_code = code
                .as_i64()
                .ok_or_else(|| BadMessage::new("upload_result: result_code is not an integer"))?;
            Ok(DownMessage::UploadResult { result_code })
        }
        other => Err(BadMessage::new(format!(
            "unknown message type `{}`",
            truncate_for_log(other, 64)
        ))),
    }
}

/// `result_code` (required, integer) and `result_msg` (optional string) of a `_rsp`.
fn parse_rsp_code(value: &Value) -> Result<(i64, String), BadMessage> {
    let code = match value.get("result_code") {
        Some(v) => v
            .as_i64()
            .ok_or_else(|| BadMessage::new("`result_code` is not an integer"))?,
        None => return Err(BadMessage::new("response has no `result_code`")),
    };
    let msg = match value.get("result_msg") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => truncate_for_log(s, 256),
        Some(_) => return Err(BadMessage::new("`result_msg` is not a string")),
    };
    Ok((code, msg))
}

/// The `name` of a message, when it is a string short enough to echo in a report.
fn echoable_name(value: &Value) -> Option<String> {
    match value.get("name") {
        Some(Value::String(s)) if s.len() <= MAX_ECHOED_NAME_BYTES => Some(s.clone()),
        _ => None,
    }
}

fn parse_download_task(value: &Value, limits: &TaskLimits) -> Result<DownMessage, BadMessage> {
    let no_url = match value.get("url") {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(_) => false,
    };
    if no_url && value.get("type").and_then(Value::as_str) == Some("get_download_task_rsp") {
        return Ok(DownMessage::NoDownloadTask);
    }
    validate_task(value, limits)
        .map(DownMessage::DownloadTask)
        .map_err(|reason| BadMessage {
            reason,
            name: echoable_name(value),
            direction: Some(Direction::Download),
        })
}

/// Checks every field of a download task; the error is the reason, for log and report.
pub(crate) fn validate_task(value: &Value, limits: &TaskLimits) -> Result<Task, String> {
    let name = match value.get("name") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("field `name` is not a string".into()),
        None => return Err("task has no `name`".into()),
    };
    validate_name(&name)?;
    let md5sum = match value.get("md5sum") {
        Some(Value::String(s)) => normalize_md5(s)?,
        Some(_) => return Err("field `md5sum` is not a string".into()),
        None => return Err("task has no `md5sum`".into()),
    };
    let size = match value.get("size") {
        Some(v) => v.as_u64().ok_or_else(|| {
            format!(
                "field `size` is not a non-negative integer: {}",
                truncate_for_log(&v.to_string(), 40)
            )
        })?,
        None => return Err("task has no `size`".into()),
    };
    if size > limits.max_resource_bytes {
        return Err(format!(
            "size {size} is over max_resource_bytes ({})",
            limits.max_resource_bytes
        ));
    }
    let url = match value.get("url") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("field `url` is not a string".into()),
        None => return Err("task has no `url`".into()),
    };
    check_url_scheme(&url, limits.allow_http)?;
    Ok(Task {
        name,
        md5sum,
        size,
        url,
    })
}

/// A resource name must be one safe path component (docs/protocol.md, "Bad input").
pub(crate) fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name is empty".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "name is {} bytes, longer than {MAX_NAME_BYTES}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("name `{name}` is not a file name"));
    }
    if let Some(c) = name.chars().find(|c| matches!(c, '/' | '\\' | '\0')) {
        return Err(format!(
            "name `{}` contains {}",
            name.escape_debug(),
            match c {
                '/' => "`/`",
                '\\' => "`\\`",
                _ => "NUL",
            }
        ));
    }
    if name == STAGING_DIR_NAME {
        return Err(format!(
            "name `{name}` is reserved for resagent's staging folder"
        ));
    }
    Ok(())
}

/// 32 hex characters, returned in lowercase.
pub(crate) fn normalize_md5(s: &str) -> Result<String, String> {
    if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!(
            "md5sum `{}` is not 32 hex characters",
            truncate_for_log(s, 40)
        ))
    }
}

/// Only `https`, or `http` when `allow_http` is set, and a host must be present.
pub(crate) fn check_url_scheme(url: &str, allow_http: bool) -> Result<(), String> {
    if url.len() > MAX_URL_BYTES {
        return Err(format!(
            "url of {} bytes is over the {MAX_URL_BYTES} byte limit",
            url.len()
        ));
    }
    let parsed = crate::http1::Url::parse(url)
        .map_err(|e| format!("url `{}` is not valid: {e}", redact_url(url)))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err(format!(
                "url `{}` uses http, which is allowed only with allow_http",
                redact_url(url)
            ))
        }
        other => {
            return Err(format!(
                "url scheme `{}` is not allowed",
                truncate_for_log(other, 20)
            ))
        }
    }
    if parsed.host().is_empty() {
        return Err(format!("url `{}` has no host", redact_url(url)));
    }
    Ok(())
}

fn parse_upload_task_rsp(value: &Value) -> Result<UploadTaskRsp, BadMessage> {
    let name = match value.get("name") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(BadMessage::new(
                "create_upload_task_rsp without a string `name`",
            ))
        }
    };
    let md5sum = match value.get("md5sum") {
        Some(Value::String(s)) => normalize_md5(s).map_err(BadMessage::new)?,
        _ => {
            return Err(BadMessage::new(
                "create_upload_task_rsp without a string `md5sum`",
            ))
        }
    };
    let size = value.get("size").and_then(Value::as_u64);
    let code = match value.get("result_code") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| BadMessage::new("`result_code` is not an integer"))?,
    };
    let grant = match value.get("url") {
        _ if code != 0 => UploadGrant::Refused { result_code: code },
        Some(Value::String(s)) if !s.is_empty() => UploadGrant::Url(s.clone()),
        _ => UploadGrant::NoUrl,
    };
    Ok(UploadTaskRsp {
        name,
        md5sum,
        size,
        grant,
    })
}

/// A URL without its query string and fragment: presigned URLs carry their signature
/// there, so this is the only form of a URL that may reach a log, a report or `status`.
pub(crate) fn redact_url(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    // `user:password@` (a proxy's, a storage's) goes too.
    let without_userinfo = match url[..end].split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://…@{}", &rest[at + 1..]),
                None => url[..end].to_string(),
            }
        }
        None => url[..end].to_string(),
    };
    let mut out = truncate_for_log(&without_userinfo, 200);
    if end < url.len() {
        out.push_str("?…");
    }
    out
}

/// At most `max` bytes of `s`, cut on a character boundary, for log lines about input.
pub(crate) fn truncate_for_log(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.escape_debug().to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", s[..end].escape_debug())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: TaskLimits = TaskLimits {
        max_resource_bytes: 1 << 40,
        allow_http: false,
    };

    fn task_json(name: &str) -> Value {
        json!({"type":"get_download_task_rsp","size":10,"name":name,
               "md5sum":"0123456789ABCDEF0123456789abcdef","url":"https://cos.example/x?sign=s3cr3t"})
    }

    #[test]
    fn host_names_are_ascii_or_punycode_never_unicode_tables() {
        // No Unicode tables in the binary (`http1::Url`): a Unicode host name is an
        // invalid URL (-10), its punycode form works.
        assert!(check_url_scheme("https://xn--bcher-kva.example/fw.bin", false).is_ok());
        assert!(check_url_scheme("https://cos.ap-guangzhou.myqcloud.com/a", false).is_ok());
        let e = check_url_scheme("https://b\u{fc}cher.example/fw.bin", false).unwrap_err();
        assert!(e.contains("is not valid"), "{e}");
    }

    #[test]
    fn topics_and_client_id_follow_the_platform() {
        let id = DeviceId {
            product_id: "ABCDEF1234".into(),
            device_name: "dev1".into(),
        };
        assert_eq!(id.up_topic(), "$resource/up/service/ABCDEF1234/dev1");
        assert_eq!(id.down_topic(), "$resource/down/service/ABCDEF1234/dev1");
        assert_eq!(id.client_id(), "ABCDEF1234dev1");
    }

    #[test]
    fn a_valid_task_is_accepted_and_md5_lowercased() {
        let msg = parse_down(task_json("fw.bin").to_string().as_bytes(), &LIMITS).unwrap();
        match msg {
            DownMessage::DownloadTask(t) => {
                assert_eq!(t.name, "fw.bin");
                assert_eq!(t.md5sum, "0123456789abcdef0123456789abcdef");
                assert_eq!(t.size, 10);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_download_push_is_a_task_too() {
        let mut v = task_json("a");
        v["type"] = json!("download");
        assert!(matches!(
            parse_down(v.to_string().as_bytes(), &LIMITS),
            Ok(DownMessage::DownloadTask(_))
        ));
    }

    #[test]
    fn a_response_without_url_means_no_task() {
        for v in [
            json!({"type":"get_download_task_rsp"}),
            json!({"type":"get_download_task_rsp","url":""}),
        ] {
            assert_eq!(
                parse_down(v.to_string().as_bytes(), &LIMITS),
                Ok(DownMessage::NoDownloadTask)
            );
        }
    }

    #[test]
    fn unsafe_names_are_refused_with_the_name_echoed() {
        let long = "x".repeat(256);
        for name in [
            "",
            ".",
            "..",
            "a/b",
            "../etc/passwd",
            "a\\b",
            "a\0b",
            &long,
            STAGING_DIR_NAME,
        ] {
            let err = parse_down(task_json(name).to_string().as_bytes(), &LIMITS).unwrap_err();
            assert_eq!(err.name.as_deref(), Some(name), "{name:?}");
            assert_eq!(err.direction, Some(Direction::Download));
        }
        assert!(validate_name(&"x".repeat(255)).is_ok());
        assert!(validate_name("固件.bin").is_ok());
    }

    #[test]
    fn bad_fields_are_refused() {
        let cases = [
            json!({"type":"download","name":"a","md5sum":"xyz","size":1,"url":"https://h/"}),
            json!({"type":"download","name":"a","md5sum":"0123456789abcdef0123456789abcdef","size":-1,"url":"https://h/"}),
            json!({"type":"download","name":"a","md5sum":"0123456789abcdef0123456789abcdef","size":1.5,"url":"https://h/"}),
            json!({"type":"download","name":"a","md5sum":"0123456789abcdef0123456789abcdef","size":"1","url":"https://h/"}),
            json!({"type":"download","name":"a","md5sum":"0123456789abcdef0123456789abcdef","size":1u64<<41,"url":"https://h/"}),
            json!({"type":"download","name":"a","md5sum":"0123456789abcdef0123456789abcdef","size":1,"url":"http://h/"}),
            json!({"type":"download","name":"a","md5sum":"0123456789abcdef0123456789abcdef","size":1,"url":"file:///etc/passwd"}),
            json!({"type":"download","name":"a","md5sum":"0123456789abcdef0123456789abcdef","size":1,"url":"ftp://h/x"}),
            json!({"type":"download","name":"a","md5sum":"0123456789abcdef0123456789abcdef","size":1}),
            json!({"type":"download","name":7,"md5sum":"0123456789abcdef0123456789abcdef","size":1,"url":"https://h/"}),
        ];
        for c in cases {
            let err = parse_down(c.to_string().as_bytes(), &LIMITS).unwrap_err();
            assert_eq!(err.direction, Some(Direction::Download), "{c}");
        }
        let http_ok = TaskLimits {
            allow_http: true,
            ..LIMITS
        };
        let v = json!({"type":"download","name":"a","md5sum":"0123456789abcdef0123456789abcdef","size":1,"url":"http://h/"});
        assert!(parse_down(v.to_string().as_bytes(), &http_ok).is_ok());
    }

    #[test]
    fn malformed_messages_are_typed_errors() {
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        for payload in [
            &b"not json"[..],
            b"[]",
            b"{}",
            b"{\"type\":5}",
            b"{\"type\":\"nonsense\"}",
            b"{\"type\":\"report_download_progress_rsp\",\"result_code\":\"x\"}",
            &big,
        ] {
            let err = parse_down(payload, &LIMITS).unwrap_err();
            assert!(err.name.is_none());
        }
    }

    #[test]
    fn progress_rsp_carries_its_code() {
        let v = json!({"type":"report_download_progress_rsp","result_code":-1,"result_msg":"cancelled"});
        assert_eq!(
            parse_down(v.to_string().as_bytes(), &LIMITS),
            Ok(DownMessage::DownloadProgressRsp {
                result_code: -1,
                result_msg: "cancelled".into()
            })
        );
    }

    #[test]
    fn reports_have_the_documented_shape() {
        let r = Report::progress(Direction::Download, "AAAA", ProgressState::Downloading, 89);
        assert_eq!(
            r.to_message(),
            json!({"type":"report_download_progress","name":"AAAA","progress":{"state":"downloading","percent":89,"result_code":0,"result_msg":""}})
        );
        let d = Report::done(Direction::Upload, "zxc").to_message();
        assert_eq!(d["type"], "report_upload_progress");
        assert_eq!(d["progress"]["result_msg"], "success");
        assert_eq!(d["progress"]["percent"], 100);
        let f = Report::fail(Direction::Download, "a", 3, ResultCode::Mismatch, "md5").to_message();
        assert_eq!(f["progress"]["result_code"], -4);
        assert_eq!(f["progress"]["state"], "fail");
    }

    #[test]
    fn percent_is_64_bit() {
        let five_gib = 5u64 << 30;
        assert_eq!(percent(five_gib / 2, five_gib), 50);
        assert_eq!(percent(five_gib, five_gib), 100);
        assert_eq!(percent(0, 0), 100);
        assert_eq!(percent(u64::MAX - 1, u64::MAX), 99);
    }

    #[test]
    fn urls_lose_their_signature_when_redacted() {
        assert_eq!(
            redact_url("https://cos.example/a/b?sign=abc&t=1"),
            "https://cos.example/a/b?…"
        );
        assert_eq!(redact_url("https://h/x"), "https://h/x");
        assert_eq!(
            redact_url("http://user:proxy-secret@proxy:3128"),
            "http://…@proxy:3128"
        );
        assert_eq!(
            redact_url("https://u:p@h/a@b?x=1"),
            "https://…@h/a@b?…",
            "only the authority's userinfo"
        );
    }

    /// Arbitrary bytes and JSON for the property tests below, from the tests' one
    /// deterministic generator.
    struct Gen(resagent_platform::rig::XorShift);

    impl Gen {
        fn new(state: u64) -> Gen {
            Gen(resagent_platform::rig::XorShift(state))
        }
        fn next(&mut self) -> u64 {
            self.0.next_u64()
        }
        fn below(&mut self, n: u64) -> u64 {
            self.0.below(n)
        }
        fn bytes(&mut self, max: u64) -> Vec<u8> {
            let n = self.below(max);
            (0..n).map(|_| self.next() as u8).collect()
        }
        fn value(&mut self, depth: u32) -> Value {
            match self.below(if depth > 2 { 5 } else { 7 }) {
                0 => Value::Null,
                1 => json!(self.below(2) == 0),
                2 => json!(self.next() as i64),
                3 => json!(f64::from(self.next() as u32) / 7.0),
                4 => json!(String::from_utf8_lossy(&self.bytes(40)).into_owned()),
                5 => Value::Array((0..self.below(4)).map(|_| self.value(depth + 1)).collect()),
                _ => {
                    let mut m = serde_json::Map::new();
                    for _ in 0..self.below(5) {
                        let k = ["type", "name", "size", "md5sum", "url", "result_code", "x"]
                            [self.below(7) as usize];
                        m.insert(k.to_string(), self.value(depth + 1));
                    }
                    Value::Object(m)
                }
            }
        }
    }

    /// Any bytes: never a panic, and a rejection always carries a reason.
    #[test]
    fn arbitrary_bytes_never_panic_and_rejections_are_typed() {
        let mut g = Gen::new(0x9E3779B97F4A7C15);
        for _ in 0..20_000 {
            let bytes = g.bytes(300);
            if let Err(e) = parse_down(&bytes, &LIMITS) {
                assert!(!e.reason.is_empty());
            }
        }
    }

    /// Arbitrary JSON and near-valid tasks with one field mutated: never a panic; what is
    /// accepted really passes every rule.
    #[test]
    fn arbitrary_and_near_valid_json_never_panics() {
        let mut g = Gen::new(0xD1B54A32D192ED03);
        let types = [
            "download",
            "get_download_task_rsp",
            "report_download_progress_rsp",
            "create_upload_task_rsp",
            "upload_result",
            "nonsense",
        ];
        for i in 0..20_000 {
            let mut v = if i % 2 == 0 {
                g.value(0)
            } else {
                task_json("fw.bin")
            };
            if let Some(obj) = v.as_object_mut() {
                let field = ["type", "name", "size", "md5sum", "url"][g.below(5) as usize];
                let replacement = if g.below(3) == 0 {
                    json!(types[g.below(6) as usize])
                } else {
                    g.value(1)
                };
                obj.insert(field.to_string(), replacement);
            }
            match parse_down(v.to_string().as_bytes(), &LIMITS) {
                Ok(DownMessage::DownloadTask(t)) => {
                    assert!(validate_name(&t.name).is_ok());
                    assert_eq!(t.md5sum.len(), 32);
                    assert!(t.size <= LIMITS.max_resource_bytes);
                    assert!(t.url.starts_with("https://"));
                }
                Ok(_) => {}
                Err(e) => assert!(!e.reason.is_empty()),
            }
        }
    }

    #[test]
    fn upload_rsp_refusals_are_errors_in_the_url() {
        let ok = json!({"type":"create_upload_task_rsp","name":"z","md5sum":"0123456789abcdef0123456789abcdef","size":3,"url":"https://u"});
        let refused = json!({"type":"create_upload_task_rsp","name":"z","md5sum":"0123456789abcdef0123456789abcdef","result_code":-1,"url":"https://u"});
        let no_url = json!({"type":"create_upload_task_rsp","name":"z","md5sum":"0123456789abcdef0123456789abcdef"});
        let parse = |v: Value| match parse_down(v.to_string().as_bytes(), &LIMITS).unwrap() {
            DownMessage::UploadTaskRsp(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(parse(ok).grant, UploadGrant::Url("https://u".into()));
        assert!(matches!(parse(refused).grant, UploadGrant::Refused { .. }));
        assert_eq!(parse(no_url).grant, UploadGrant::NoUrl);
    }
}
