//! The crossing into plugin code: loading a plugin image, reading its exports, calling
//! an entry point with the structs of `plugins/include/resagent_plugin.h` (their Rust
//! twin is `resagent-plugin-sdk`), and the three host functions the plugin calls back.
//! Each `unsafe` here rests on the ABI contract the plugin claims by exporting the
//! header's names. The plugin child (`plugin::child`) uses it through safe functions;
//! what a call means, and what the host functions do, is its business ([`HostFns`]).

use resagent_plugin_sdk::{AbiFn, CallFn, Host, NameFn, Resource};
use resagent_plugin_sdk::{SYMBOL_ABI, SYMBOL_CLAIMS, SYMBOL_NAME};
use std::ffi::{c_char, c_int, CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;

/// What the host functions do, given as plain Rust (set once, before a call).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostFns {
    /// `host->log(level, message)`, the message's bytes.
    pub(crate) log: fn(c_int, &[u8]),
    /// `host->progress(percent)`.
    pub(crate) progress: fn(u32),
    /// `host->atomic_replace(src, dest)`: 0 or a negative errno.
    pub(crate) atomic_replace: fn(&Path, &Path) -> c_int,
}

static HOST_FNS: OnceLock<HostFns> = OnceLock::new();

/// Sets what the host functions do (the first setting stays).
pub(crate) fn set_host_fns(fns: HostFns) {
    let _ = HOST_FNS.set(fns);
}

extern "C" fn host_log(level: c_int, message: *const c_char) {
    if message.is_null() {
        return;
    }
    // SAFETY: the header requires a NUL-terminated string valid for the call.
    let text = unsafe { CStr::from_ptr(message) };
    if let Some(fns) = HOST_FNS.get() {
        (fns.log)(level, text.to_bytes());
    }
}

extern "C" fn host_progress(percent: u32) {
    if let Some(fns) = HOST_FNS.get() {
        (fns.progress)(percent);
    }
}

extern "C" fn host_atomic_replace(src: *const c_char, dest: *const c_char) -> c_int {
    if src.is_null() || dest.is_null() {
        return -nix::libc::EINVAL;
    }
    // SAFETY: the header requires NUL-terminated strings valid for the call.
    let (src, dest) = unsafe { (CStr::from_ptr(src), CStr::from_ptr(dest)) };
    let src = Path::new(OsStr::from_bytes(src.to_bytes()));
    let dest = Path::new(OsStr::from_bytes(dest.to_bytes()));
    match HOST_FNS.get() {
        Some(fns) => (fns.atomic_replace)(src, dest),
        None => -nix::libc::ENOSYS,
    }
}

/// A loaded plugin: its ABI version and name, read at load.
pub(crate) struct Loaded {
    lib: libloading::Library,
    pub(crate) abi: u32,
    /// What `resagent_plugin_name` returned (None: NULL).
    pub(crate) name: Option<Vec<u8>>,
}

/// Loads the plugin at `image` (running its initialisers) and reads its ABI version and
/// name; the reason when it cannot be loaded or lacks either function.
pub(crate) fn load(image: &Path) -> Result<Loaded, String> {
    // SAFETY: loading runs the library's initialisers; running untrusted plugin code is
    // the purpose of the plugin child, which the agent isolates and times out.
    let lib =
        unsafe { libloading::Library::new(image) }.map_err(|e| format!("cannot load: {e}"))?;
    // SAFETY: the symbol types are those of resagent_plugin.h; a plugin exporting these
    // names with other signatures breaks the ABI contract it claims by exporting them.
    let (abi_fn, name_fn) = unsafe {
        (
            lib.get::<AbiFn>(SYMBOL_ABI).map(|f| *f),
            lib.get::<NameFn>(SYMBOL_NAME).map(|f| *f),
        )
    };
    let abi_fn = abi_fn.map_err(|_| "does not export resagent_plugin_abi".to_string())?;
    let name_fn = name_fn.map_err(|_| "does not export resagent_plugin_name".to_string())?;
    // SAFETY: both are plain C functions without arguments (resagent_plugin.h); the
    // library they live in is loaded.
    let (abi, name) = unsafe { (abi_fn(), name_fn()) };
    // SAFETY: the header requires a static NUL-terminated name (or NULL).
    let name = (!name.is_null()).then(|| unsafe { CStr::from_ptr(name) }.to_bytes().to_vec());
    Ok(Loaded { lib, abi, name })
}

/// The strings and size of one call, as C wants them.
pub(crate) struct CallArgs {
    pub(crate) name: CString,
    pub(crate) path: Option<CString>,
    pub(crate) dest: CString,
    pub(crate) md5sum: CString,
    pub(crate) size: u64,
    pub(crate) installed_md5sum: Option<CString>,
    pub(crate) config_json: Option<CString>,
    pub(crate) private_dir: Option<CString>,
}

impl Loaded {
    /// The entry point `symbol` (NUL-terminated), when exported.
    fn entry(&self, symbol: &[u8]) -> Option<CallFn> {
        // SAFETY: as in `load`, the type is the header's for every call hook.
        unsafe { self.lib.get::<CallFn>(symbol) }.ok().map(|f| *f)
    }

    /// Whether the plugin exports `symbol` (NUL-terminated).
    pub(crate) fn exports(&self, symbol: &[u8]) -> bool {
        self.entry(symbol).is_some()
    }

    /// What `resagent_plugin_claims` returns, if exported and not NULL.
    pub(crate) fn claims(&self) -> Option<Vec<u8>> {
        // SAFETY: the header's type, as in `load`.
        let f = unsafe { self.lib.get::<NameFn>(SYMBOL_CLAIMS) }
            .ok()
            .map(|f| *f)?;
        // SAFETY: a plain C function without arguments returning a static string or NULL.
        let p = unsafe { f() };
        // SAFETY: the header requires it NUL-terminated and static.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_bytes().to_vec())
    }

    /// Calls the entry point `symbol` with `args` and an `err` buffer of `err_len`
    /// bytes: its return code and the text it left in `err`. None: not exported.
    pub(crate) fn call(
        &self,
        symbol: &[u8],
        args: &CallArgs,
        err_len: usize,
    ) -> Option<(c_int, Vec<u8>)> {
        let function = self.entry(symbol)?;
        let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        let resource = Resource {
            struct_size: std::mem::size_of::<Resource>() as u32,
            name: args.name.as_ptr(),
            path: ptr(&args.path),
            dest: args.dest.as_ptr(),
            md5sum: args.md5sum.as_ptr(),
            size: args.size,
            installed_md5sum: ptr(&args.installed_md5sum),
        };
        let host = Host {
            struct_size: std::mem::size_of::<Host>() as u32,
            log: host_log,
            progress: host_progress,
            atomic_replace: host_atomic_replace,
            config_json: ptr(&args.config_json),
            private_dir: ptr(&args.private_dir),
        };
        let mut err = vec![0u8; err_len];
        // SAFETY: host, resource and the strings they point to outlive the call; err is
        // err_len writable bytes, and err_len is what the plugin is told.
        let code =
            unsafe { function(&host, &resource, err.as_mut_ptr().cast::<c_char>(), err_len) };
        let end = err.iter().position(|&b| b == 0).unwrap_or(err_len);
        err.truncate(end);
        Some((code, err))
    }
}
