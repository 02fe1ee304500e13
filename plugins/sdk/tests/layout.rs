//! The Rust definition of the ABI against the C header, field by field: a C program
//! compiled with the system compiler from `plugins/include/resagent_plugin.h` prints the
//! size of each struct, the offset and size of every field and each constant, and the
//! same figures computed from this crate must be equal. A field added to one side only,
//! or a type that differs in width or alignment, fails here before any plugin runs.

use resagent_plugin_sdk::*;
use std::mem::{size_of, MaybeUninit};
use std::path::Path;
use std::process::Command;

/// Offset of `$field` in `$t`, without creating a reference to uninitialised memory
/// (`std::mem::offset_of!` needs Rust 1.77; the crate supports 1.75).
macro_rules! offset {
    ($t:ty, $field:ident) => {{
        let u = MaybeUninit::<$t>::uninit();
        let base = u.as_ptr();
        // SAFETY: `addr_of!` computes the field's address without reading it or making
        // a reference; `base` points to a live (uninitialised) allocation of `$t`.
        let field = unsafe { std::ptr::addr_of!((*base).$field) };
        field as usize - base as usize
    }};
}

/// Size of `$field` in `$t`.
macro_rules! field_size {
    ($t:ty, $field:ident) => {{
        fn size_of_pointee<T>(_: *const T) -> usize {
            size_of::<T>()
        }
        let u = MaybeUninit::<$t>::uninit();
        // SAFETY: as in `offset!`.
        size_of_pointee(unsafe { std::ptr::addr_of!((*u.as_ptr()).$field) })
    }};
}

const C_PROGRAM: &str = r#"
#include <stdio.h>
#include "resagent_plugin.h"
#define F(t, f) printf(#t "." #f " %zu %zu\n", offsetof(struct t, f), sizeof(((struct t *)0)->f))
int main(void) {
    printf("resagent_host %zu\n", sizeof(struct resagent_host));
    F(resagent_host, struct_size); F(resagent_host, log); F(resagent_host, progress);
    F(resagent_host, atomic_replace); F(resagent_host, config_json);
    F(resagent_host, private_dir);
    printf("resagent_resource %zu\n", sizeof(struct resagent_resource));
    F(resagent_resource, struct_size); F(resagent_resource, name);
    F(resagent_resource, path); F(resagent_resource, dest); F(resagent_resource, md5sum);
    F(resagent_resource, size); F(resagent_resource, installed_md5sum);
    printf("ABI %u\n", RESAGENT_PLUGIN_ABI);
    printf("LOG %d %d %d %d\n", RESAGENT_LOG_ERROR, RESAGENT_LOG_WARN, RESAGENT_LOG_INFO,
           RESAGENT_LOG_DEBUG);
    printf("RETURNS %d %d %d %d\n", RESAGENT_OK, RESAGENT_DECLINED, RESAGENT_PENDING,
           RESAGENT_FAILED);
    printf("HOST_V1 %zu\n", offsetof(struct resagent_host, config_json));
    return 0;
}
"#;

fn c_layout() -> String {
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("../include");
    let dir = std::env::temp_dir().join(format!("resagent-sdk-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&src, C_PROGRAM).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(&cc)
        .args(["-std=c99", "-Wall", "-Werror", "-I"])
        .arg(&include)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
    assert!(built.success(), "the C layout program did not compile");
    let out = Command::new(&exe).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8(out.stdout).unwrap()
}

fn rust_layout() -> String {
    let mut s = String::new();
    let mut f = |name: &str, off: usize, size: usize| s += &format!("{name} {off} {size}\n");
    let mut lines = vec![format!("resagent_host {}", size_of::<Host>())];
    f(
        "resagent_host.struct_size",
        offset!(Host, struct_size),
        field_size!(Host, struct_size),
    );
    f(
        "resagent_host.log",
        offset!(Host, log),
        field_size!(Host, log),
    );
    f(
        "resagent_host.progress",
        offset!(Host, progress),
        field_size!(Host, progress),
    );
    f(
        "resagent_host.atomic_replace",
        offset!(Host, atomic_replace),
        field_size!(Host, atomic_replace),
    );
    f(
        "resagent_host.config_json",
        offset!(Host, config_json),
        field_size!(Host, config_json),
    );
    f(
        "resagent_host.private_dir",
        offset!(Host, private_dir),
        field_size!(Host, private_dir),
    );
    lines.push(std::mem::take(&mut s).trim_end().to_string());
    lines.push(format!("resagent_resource {}", size_of::<Resource>()));
    let mut f = |name: &str, off: usize, size: usize| s += &format!("{name} {off} {size}\n");
    f(
        "resagent_resource.struct_size",
        offset!(Resource, struct_size),
        field_size!(Resource, struct_size),
    );
    f(
        "resagent_resource.name",
        offset!(Resource, name),
        field_size!(Resource, name),
    );
    f(
        "resagent_resource.path",
        offset!(Resource, path),
        field_size!(Resource, path),
    );
    f(
        "resagent_resource.dest",
        offset!(Resource, dest),
        field_size!(Resource, dest),
    );
    f(
        "resagent_resource.md5sum",
        offset!(Resource, md5sum),
        field_size!(Resource, md5sum),
    );
    f(
        "resagent_resource.size",
        offset!(Resource, size),
        field_size!(Resource, size),
    );
    f(
        "resagent_resource.installed_md5sum",
        offset!(Resource, installed_md5sum),
        field_size!(Resource, installed_md5sum),
    );
    lines.push(s.trim_end().to_string());
    lines.push(format!("ABI {ABI_VERSION}"));
    lines.push(format!("LOG {LOG_ERROR} {LOG_WARN} {LOG_INFO} {LOG_DEBUG}"));
    lines.push(format!("RETURNS {OK} {DECLINED} {PENDING} {FAILED}"));
    lines.push(format!("HOST_V1 {HOST_SIZE_V1}"));
    lines.join("\n") + "\n"
}

#[test]
fn the_rust_definition_matches_the_c_header_field_by_field() {
    let c = c_layout();
    assert!(c.contains("resagent_resource.installed_md5sum"), "{c}");
    assert_eq!(rust_layout(), c);
}

/// The C header declares, with the call signature, exactly the functions of [`HOOKS`].
#[test]
fn the_header_declares_exactly_the_hooks_of_the_table() {
    let header = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../include/resagent_plugin.h"),
    )
    .unwrap();
    let flat = header.split_whitespace().collect::<Vec<_>>().join(" ");
    let signature = "(const struct resagent_host *host, const struct resagent_resource *resource, char *err, size_t err_len);";
    let mut declared: Vec<String> = flat
        .match_indices(signature)
        .map(|(i, _)| {
            let before = &flat[..i];
            before.rsplit(' ').next().unwrap().to_string()
        })
        .collect();
    declared.sort();
    let mut table: Vec<String> = HOOKS
        .iter()
        .map(|h| {
            let symbol = std::str::from_utf8(h.symbol).unwrap();
            assert_eq!(symbol, format!("resagent_{}\0", h.name), "{}", h.name);
            symbol.trim_end_matches('\0').to_string()
        })
        .collect();
    table.sort();
    assert_eq!(declared, table, "the header's call hooks and HOOKS differ");
}
