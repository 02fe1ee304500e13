//! The child side of a plugin call (`resagent __plugin MODE FILE`): the only place that
//! loads plugin code and crosses into C, so all of resagent's `unsafe` lives here. The
//! child answers the agent with JSON lines (see [`ChildMessage`]) on a private copy of
//! its stdout; the plugin's own stdout goes to stderr, so a `printf` in a plugin cannot
//! corrupt the answer. The C structs and symbol names come from `resagent-plugin-sdk`,
//! the one Rust definition of `plugins/include/resagent_plugin.h`.

use super::{ChildMessage, Probe, ResourceArgs, ABI_VERSION, MAX_PLUGIN_TEXT};
use std::ffi::{c_char, c_int, CStr, CString};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Mutex, OnceLock};

use resagent_plugin_sdk::{
    AbiFn, CallFn, Host, NameFn, Resource, SYMBOL_ABI, SYMBOL_INSTALL, SYMBOL_NAME, SYMBOL_VALIDATE,
};

/// Size of the `err` buffer handed to the plugin (the header promises at least 256).
const ERR_LEN: usize = 1024;

/// The answer channel to the agent (a duplicate of the original stdout).
static CHANNEL: OnceLock<Mutex<std::fs::File>> = OnceLock::new();

fn send(m: &ChildMessage) {
    if let Some(c) = CHANNEL.get() {
        let mut f = c.lock().unwrap_or_else(|p| p.into_inner());
        let line = serde_json::to_string(m).expect("message serialises");
        let _ = writeln!(f, "{line}");
    }
}

/// A C string from the plugin, lossily decoded and cut to [`MAX_PLUGIN_TEXT`] bytes.
fn plugin_text(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    crate::protocol::truncate_for_log(&s, MAX_PLUGIN_TEXT)
}

extern "C" fn host_log(level: c_int, message: *const c_char) {
    if message.is_null() {
        return;
    }
    // SAFETY: the header requires a NUL-terminated string valid for the call.
    let text = unsafe { CStr::from_ptr(message) };
    send(&ChildMessage::Log {
        level,
        message: plugin_text(text.to_bytes()),
    });
}

extern "C" fn host_progress(percent: u32) {
    send(&ChildMessage::Progress {
        percent: percent.min(100),
    });
}

extern "C" fn host_atomic_replace(src: *const c_char, dest: *const c_char) -> c_int {
    if src.is_null() || dest.is_null() {
        return -nix::libc::EINVAL;
    }
    // SAFETY: the header requires NUL-terminated strings valid for the call.
    let (src, dest) = unsafe { (CStr::from_ptr(src), CStr::from_ptr(dest)) };
    let src = Path::new(std::ffi::OsStr::from_bytes(src.to_bytes()));
    let dest = Path::new(std::ffi::OsStr::from_bytes(dest.to_bytes()));
    match crate::fsutil::atomic_replace(src, dest) {
        Ok(()) => 0,
        Err(e) => -e.source.raw_os_error().unwrap_or(nix::libc::EIO),
    }
}

/// Fails the call with `reason` (a result the agent reads) and exit status 3.
fn fail(reason: String) -> ExitCode {
    send(&ChildMessage::Result { code: -1, reason });
    ExitCode::from(3)
}

/// Entry point of `resagent __plugin MODE FILE`, MODE one of probe, validate, install.
pub(crate) fn main(mode: &str, plugin: &Path) -> ExitCode {
    // The agent blocks its signals in every thread and a mask survives exec: the plugin
    // must see SIGTERM. If the agent dies, so does this child.
    let _ = crate::signals::unblock();
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
    let channel = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => {
            eprintln!("resagent plugin child: {e}");
            return ExitCode::from(3);
        }
    };
    let _ = CHANNEL.set(Mutex::new(channel));
    let _ = nix::unistd::dup2(2, 1);

    // SAFETY: loading runs the library's initialisers; running untrusted plugin code is
    // the purpose of this child process, which the agent isolates and times out.
    let lib = match unsafe { libloading::Library::new(plugin) } {
        Ok(l) => l,
        Err(e) => return fail(format!("cannot load: {e}")),
    };
    // SAFETY: the symbol types are those of resagent_plugin.h; a plugin exporting these
    // names with other signatures breaks the ABI contract it claims by exporting them.
    let (abi_fn, name_fn) =
        unsafe { (lib.get::<AbiFn>(SYMBOL_ABI), lib.get::<NameFn>(SYMBOL_NAME)) };
    let (abi_fn, name_fn) = match (abi_fn, name_fn) {
        (Ok(a), Ok(n)) => (a, n),
        (Err(_), _) => return fail("does not export resagent_plugin_abi".into()),
        (_, Err(_)) => return fail("does not export resagent_plugin_name".into()),
    };
    // SAFETY: both are plain C functions without arguments (resagent_plugin.h).
    let (abi, name_ptr) = unsafe { (abi_fn(), name_fn()) };
    let name = if name_ptr.is_null() {
        "unnamed".to_string()
    } else {
        // SAFETY: the header requires a static NUL-terminated name.
        plugin_text(unsafe { CStr::from_ptr(name_ptr) }.to_bytes())
    };
    // SAFETY: as above, the types are those of the header.
    let validate = unsafe { lib.get::<CallFn>(SYMBOL_VALIDATE) }.ok();
    // SAFETY: as above.
    let install = unsafe { lib.get::<CallFn>(SYMBOL_INSTALL) }.ok();
    if mode == "probe" {
        send(&ChildMessage::Probe(Probe {
            abi,
            name,
            validate: validate.is_some(),
            install: install.is_some(),
        }));
        return ExitCode::SUCCESS;
    }
    if abi != ABI_VERSION {
        return fail(format!("ABI version {abi}, expected {ABI_VERSION}"));
    }
    let entry = match (mode, validate, install) {
        ("validate", Some(f), _) | ("install", _, Some(f)) => f,
        ("validate" | "install", _, _) => return fail(format!("does not export resagent_{mode}")),
        _ => return fail(format!("unknown mode `{mode}`")),
    };
    let mut input = Vec::new();
    if std::io::stdin()
        .take(1 << 20)
        .read_to_end(&mut input)
        .is_err()
    {
        return fail("no resource on stdin".into());
    }
    let args: ResourceArgs = match serde_json::from_slice(&input) {
        Ok(a) => a,
        Err(e) => return fail(format!("bad resource description: {e}")),
    };
    let c =
        |bytes: &[u8]| CString::new(bytes.to_vec()).map_err(|_| "a string holds NUL".to_string());
    let strings = (|| {
        Ok::<_, String>((
            c(args.name.as_bytes())?,
            c(args.path.as_os_str().as_bytes())?,
            c(args.dest.as_os_str().as_bytes())?,
            c(args.md5sum.as_bytes())?,
            args.installed_md5sum
                .as_deref()
                .map(|m| c(m.as_bytes()))
                .transpose()?,
        ))
    })();
    let (name_c, path_c, dest_c, md5_c, installed_c) = match strings {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let resource = Resource {
        struct_size: std::mem::size_of::<Resource>() as u32,
        name: name_c.as_ptr(),
        path: path_c.as_ptr(),
        dest: dest_c.as_ptr(),
        md5sum: md5_c.as_ptr(),
        size: args.size,
        installed_md5sum: installed_c
            .as_ref()
            .map_or(std::ptr::null(), |s| s.as_ptr()),
    };
    let host = Host {
        struct_size: std::mem::size_of::<Host>() as u32,
        log: host_log,
        progress: host_progress,
        atomic_replace: host_atomic_replace,
    };
    let mut err = vec![0u8; ERR_LEN];
    // SAFETY: host, resource and the strings they point to outlive the call; err is
    // ERR_LEN writable bytes, and ERR_LEN is what the plugin is told.
    let code = unsafe { entry(&host, &resource, err.as_mut_ptr().cast::<c_char>(), ERR_LEN) };
    let end = err.iter().position(|&b| b == 0).unwrap_or(ERR_LEN);
    send(&ChildMessage::Result {
        code,
        reason: plugin_text(&err[..end]),
    });
    ExitCode::SUCCESS
}
