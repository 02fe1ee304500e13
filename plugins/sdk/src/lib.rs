//! The resagent plugin ABI, version 1, for Rust — the one Rust definition of
//! `plugins/include/resagent_plugin.h` (the C header stays the source of truth; a test,
//! `tests/layout.rs`, compiles a C program against it and checks every size, offset and
//! constant here). resagent's plugin child uses the raw structs to call plugins; a Rust
//! plugin uses the safe layer ([`call`], [`HostApi`], [`ResourceView`]) and needs no
//! `unsafe` of its own beyond its `extern "C"` entry points:
//!
//! ```ignore
//! use resagent_plugin_sdk::{self as sdk, HostApi, ResourceView, Verdict};
//! #[no_mangle]
//! pub extern "C" fn resagent_plugin_abi() -> u32 { sdk::ABI_VERSION }
//! #[no_mangle]
//! pub extern "C" fn resagent_plugin_name() -> *const std::ffi::c_char { b"mine\0".as_ptr().cast() }
//! /// # Safety
//! /// Called by resagent with the pointers `resagent_plugin.h` promises.
//! #[no_mangle]
//! pub unsafe extern "C" fn resagent_install(h: *const sdk::Host, r: *const sdk::Resource,
//!     err: *mut std::ffi::c_char, err_len: usize) -> std::ffi::c_int {
//!     sdk::call(h, r, err, err_len, |host: &HostApi, res: &ResourceView| {
//!         host.log(sdk::LOG_INFO, &format!("installing {}", res.name));
//!         Ok(Verdict::Ok)
//!     })
//! }
//! ```

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};

/// `RESAGENT_PLUGIN_ABI`: what `resagent_plugin_abi()` returns.
pub const ABI_VERSION: u32 = 1;

/// `RESAGENT_LOG_*`: levels of [`Host::log`].
pub const LOG_ERROR: c_int = 1;
pub const LOG_WARN: c_int = 2;
pub const LOG_INFO: c_int = 3;
pub const LOG_DEBUG: c_int = 4;

/// `RESAGENT_OK`, `RESAGENT_DECLINED`, `RESAGENT_FAILED`: what validate and install return.
pub const OK: c_int = 0;
pub const DECLINED: c_int = 1;
pub const PENDING: c_int = 2;
pub const FAILED: c_int = -1;

/// `struct resagent_host`: the host's functions during a call.
#[repr(C)]
pub struct Host {
    /// `sizeof(struct resagent_host)` as resagent was built.
    pub struct_size: u32,
    /// Writes a NUL-terminated message to resagent's log at a `LOG_*` level.
    pub log: extern "C" fn(c_int, *const c_char),
    /// Reports install progress, 0..100 (`burning`).
    pub progress: extern "C" fn(u32),
    /// fsync(src), rename(src, dest), fsync of dest's folder; 0 or a negative errno.
    pub atomic_replace: extern "C" fn(*const c_char, *const c_char) -> c_int,
    /// Appended: the plugin's `plugin_config` entry as JSON text, or NULL.
    pub config_json: *const c_char,
    /// Appended: the plugin's private folder, `state_dir/plugins/NAME/`.
    pub private_dir: *const c_char,
}

/// The size of `struct resagent_host` before the firmware-grade fields were appended:
/// what a plugin built against the first header knows.
pub const HOST_SIZE_V1: u32 = 32;

/// `struct resagent_resource`: the resource a call is about.
#[repr(C)]
pub struct Resource {
    /// `sizeof(struct resagent_resource)` as resagent was built.
    pub struct_size: u32,
    pub name: *const c_char,
    pub path: *const c_char,
    pub dest: *const c_char,
    pub md5sum: *const c_char,
    pub size: u64,
    /// NULL when nothing is installed under this name.
    pub installed_md5sum: *const c_char,
}

/// `uint32_t resagent_plugin_abi(void)`.
pub type AbiFn = unsafe extern "C" fn() -> u32;
/// `const char *resagent_plugin_name(void)`.
pub type NameFn = unsafe extern "C" fn() -> *const c_char;
/// `int resagent_validate(...)` and `int resagent_install(...)`.
pub type CallFn = unsafe extern "C" fn(*const Host, *const Resource, *mut c_char, usize) -> c_int;

/// The symbol names, NUL-terminated for `dlsym`.
pub const SYMBOL_ABI: &[u8] = b"resagent_plugin_abi\0";
pub const SYMBOL_NAME: &[u8] = b"resagent_plugin_name\0";
pub const SYMBOL_VALIDATE: &[u8] = b"resagent_validate\0";
pub const SYMBOL_INSTALL: &[u8] = b"resagent_install\0";
pub const SYMBOL_CLAIMS: &[u8] = b"resagent_plugin_claims\0";
pub const SYMBOL_INSTALLED: &[u8] = b"resagent_installed\0";
pub const SYMBOL_CONFIRM: &[u8] = b"resagent_confirm\0";

/// An entry point a plugin may export with the signature [`CallFn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    /// Its name: the mode of resagent's plugin child, and the word `plugin check` shows.
    pub name: &'static str,
    /// The symbol, NUL-terminated for `dlsym`.
    pub symbol: &'static [u8],
    /// Whether `RESAGENT_PENDING` (2) is a meaning of its own (effective after a
    /// reboot) rather than a failure.
    pub may_pend: bool,
}

/// Every call hook, in the order of resagent's `Op`: the one table of them. resagent's
/// probe, dispatch and `plugin check` derive from it, and `tests/layout.rs` checks that
/// the C header declares exactly these functions. A new hook is a line here, its
/// declaration in the header, an `Op` variant and its caller (docs/architecture.md).
pub const HOOKS: [Hook; 4] = [
    Hook {
        name: "validate",
        symbol: SYMBOL_VALIDATE,
        may_pend: false,
    },
    Hook {
        name: "install",
        symbol: SYMBOL_INSTALL,
        may_pend: true,
    },
    Hook {
        name: "installed",
        symbol: SYMBOL_INSTALLED,
        may_pend: false,
    },
    Hook {
        name: "confirm",
        symbol: SYMBOL_CONFIRM,
        may_pend: true,
    },
];

/// What a successful validate or install says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Acceptable (validate) or installed (install).
    Ok,
    /// Not this plugin's resource.
    Declined,
    /// Install only: written, effective after a reboot (`RESAGENT_PENDING`).
    Pending,
}

/// The host's functions, safely.
pub struct HostApi<'a> {
    host: &'a Host,
}

impl HostApi<'_> {
    /// A line in resagent's log (an interior NUL cuts the message there).
    pub fn log(&self, level: c_int, message: &str) {
        let text = message.split('\0').next().unwrap_or_default();
        if let Ok(c) = CString::new(text) {
            (self.host.log)(level, c.as_ptr());
        }
    }

    /// The plugin's `plugin_config` entry as JSON text, when resagent gives one.
    pub fn config_json(&self) -> Option<String> {
        self.appended(self.host.config_json)
    }

    /// The plugin's private folder, when resagent gives one.
    pub fn private_dir(&self) -> Option<PathBuf> {
        self.appended(self.host.private_dir).map(PathBuf::from)
    }

    /// An appended string field, read only when `struct_size` says it is there.
    fn appended(&self, field: *const c_char) -> Option<String> {
        if self.host.struct_size as usize >= std::mem::size_of::<Host>() && !field.is_null() {
            // SAFETY: the field is present (struct_size) and, when not NULL, a
            // NUL-terminated string valid for the call (the header).
            Some(
                unsafe { CStr::from_ptr(field) }
                    .to_string_lossy()
                    .into_owned(),
            )
        } else {
            None
        }
    }

    /// Install progress, 0..100.
    pub fn progress(&self, percent: u32) {
        (self.host.progress)(percent.min(100));
    }

    /// resagent's durable replacement of `dest` by `src`; the error is an errno.
    pub fn atomic_replace(&self, src: &Path, dest: &Path) -> Result<(), i32> {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| 22); // EINVAL
        let (src, dest) = (c(src)?, c(dest)?);
        match (self.host.atomic_replace)(src.as_ptr(), dest.as_ptr()) {
            0 => Ok(()),
            e => Err(-e),
        }
    }
}

/// The resource of a call, copied out of the C struct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceView {
    pub name: String,
    /// The downloaded, MD5-checked file: read it, never modify it.
    pub path: PathBuf,
    /// Where the default installer would place it.
    pub dest: PathBuf,
    pub md5sum: String,
    pub size: u64,
    pub installed_md5sum: Option<String>,
}

/// Runs `f` for one validate or install call and turns its result into the ABI's:
/// `Ok(Verdict)` → 0 or 1; `Err(reason)` → -1 with the reason in `err`; a panic → -1
/// with "panicked" (a panic must not unwind into resagent's C caller).
///
/// # Safety
/// The pointers must be what resagent passes (`resagent_plugin.h`): valid structs and
/// NUL-terminated strings for the call, `err` writable for `err_len` bytes.
pub unsafe fn call(
    host: *const Host,
    resource: *const Resource,
    err: *mut c_char,
    err_len: usize,
    f: impl FnOnce(&HostApi, &ResourceView) -> Result<Verdict, String>,
) -> c_int {
    if host.is_null() || resource.is_null() {
        // SAFETY: `err` is as resagent passed it (this function's contract).
        unsafe { write_err(err, err_len, "resagent passed no host or resource") };
        return FAILED;
    }
    // SAFETY: non-null, and valid for the call per this function's contract.
    let (host, res) = unsafe { (&*host, &*resource) };
    let text = |p: *const c_char| -> Option<String> {
        // SAFETY: every non-null string in the struct is NUL-terminated (the header).
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    };
    let view = ResourceView {
        name: text(res.name).unwrap_or_default(),
        path: PathBuf::from(text(res.path).unwrap_or_default()),
        dest: PathBuf::from(text(res.dest).unwrap_or_default()),
        md5sum: text(res.md5sum).unwrap_or_default(),
        size: res.size,
        installed_md5sum: text(res.installed_md5sum),
    };
    let api = HostApi { host };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&api, &view))) {
        Ok(Ok(Verdict::Ok)) => OK,
        Ok(Ok(Verdict::Declined)) => DECLINED,
        Ok(Ok(Verdict::Pending)) => PENDING,
        Ok(Err(reason)) => {
            // SAFETY: as above.
            unsafe { write_err(err, err_len, &reason) };
            FAILED
        }
        Err(_) => {
            // SAFETY: as above.
            unsafe { write_err(err, err_len, "panicked") };
            FAILED
        }
    }
}

/// Writes `msg` into the host's `err` buffer: truncated to `err_len - 1` bytes (at a
/// character boundary), NUL-terminated, never overrun.
///
/// # Safety
/// `err` is NULL or writable for `err_len` bytes (what resagent passes).
pub unsafe fn write_err(err: *mut c_char, err_len: usize, msg: &str) {
    if err.is_null() || err_len == 0 {
        return;
    }
    let mut n = msg.len().min(err_len - 1);
    while !msg.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: `err` is writable for `err_len` bytes (this function's contract); at most
    // err_len - 1 bytes and the NUL are written.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), err.cast::<u8>(), n);
        *err.add(n) = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    static LOGGED: Mutex<Vec<(c_int, String)>> = Mutex::new(Vec::new());

    extern "C" fn log(level: c_int, message: *const c_char) {
        // SAFETY: `HostApi::log` passes a NUL-terminated string.
        let m = unsafe { CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned();
        LOGGED.lock().unwrap().push((level, m));
    }
    extern "C" fn progress(_: u32) {}
    extern "C" fn replace(_: *const c_char, _: *const c_char) -> c_int {
        -2
    }

    #[test]
    fn write_err_truncates_at_a_character_and_terminates() {
        let mut buf = [0x55u8; 6];
        // SAFETY: 5 of the buffer's 6 bytes are offered.
        unsafe { write_err(buf.as_mut_ptr().cast(), 5, "abc\u{e9}f") };
        assert_eq!(
            &buf[..4],
            b"abc\0",
            "the two-byte character does not fit whole"
        );
        assert_eq!(buf[5], 0x55, "nothing written past err_len");
    }

    #[test]
    fn call_maps_verdicts_reasons_and_panics() {
        let host = Host {
            struct_size: std::mem::size_of::<Host>() as u32,
            log,
            progress,
            atomic_replace: replace,
            config_json: std::ptr::null(),
            private_dir: std::ptr::null(),
        };
        let name = CString::new("fw.bin").unwrap();
        let path = CString::new("/tmp/fw.bin").unwrap();
        let res = Resource {
            struct_size: std::mem::size_of::<Resource>() as u32,
            name: name.as_ptr(),
            path: path.as_ptr(),
            dest: path.as_ptr(),
            md5sum: name.as_ptr(),
            size: 5,
            installed_md5sum: std::ptr::null(),
        };
        let mut err = [0u8; 64];
        let e = err.as_mut_ptr().cast();
        // SAFETY: valid structs and buffer for each call.
        unsafe {
            let code = call(&host, &res, e, 64, |h, r| {
                h.log(LOG_INFO, &format!("{} {}", r.name, r.size));
                assert_eq!(r.installed_md5sum, None);
                assert_eq!(h.atomic_replace(&r.path, &r.dest), Err(2));
                Ok(Verdict::Ok)
            });
            assert_eq!(code, OK);
            assert_eq!(
                call(&host, &res, e, 64, |_, _| Ok(Verdict::Declined)),
                DECLINED
            );
            assert_eq!(
                call(&host, &res, e, 64, |_, _| Err("bad header".into())),
                FAILED
            );
            assert_eq!(
                CStr::from_bytes_until_nul(&err).unwrap().to_str(),
                Ok("bad header")
            );
            let code = call(&host, &res, err.as_mut_ptr().cast(), 64, |_, _| {
                panic!("boom")
            });
            assert_eq!(code, FAILED);
            assert_eq!(
                CStr::from_bytes_until_nul(&err).unwrap().to_str(),
                Ok("panicked")
            );
        }
        assert_eq!(
            LOGGED.lock().unwrap()[0],
            (LOG_INFO, "fw.bin 5".to_string())
        );
    }
}
