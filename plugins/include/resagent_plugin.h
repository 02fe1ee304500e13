/* SPDX-License-Identifier: MIT */
/*
 * resagent_plugin.h — the plugin ABI of resagent, version 1.
 *
 * This header is the whole contract between resagent and a vendor plugin: a plugin
 * written in C, C++ or Rust builds against it alone. A plugin is a shared library
 * (`*.so`) in resagent's `plugin_dir`; plugins run in the order of their file names
 * (`10-firmware.so` before `50-audio.so`).
 *
 * What a plugin exports, with C linkage:
 *
 *   uint32_t    resagent_plugin_abi(void);    required: return RESAGENT_PLUGIN_ABI (1)
 *   const char *resagent_plugin_name(void);   required: a short static name for logs and
 *                                             reports (owned by the plugin, never freed)
 *   int resagent_validate(host, resource, err, err_len);   optional (one of the two)
 *   int resagent_install (host, resource, err, err_len);   optional (one of the two)
 *
 * Firmware-grade additions, all optional (a plugin built without them behaves as before):
 *
 *   const char *resagent_plugin_claims(void);
 *       static, space-separated shell patterns (`*`, `?`, `[...]`) of the resource
 *       names this plugin owns, e.g. "fw-*.bin *.swu". A claimed resource never reaches
 *       the default installer: when its owner declines or fails, the task fails (-5,
 *       naming the plugin).
 *   int resagent_installed(host, resource, err, err_len);
 *       asked before a task equal to what resagent recorded as installed by this plugin
 *       is reported `done` without a transfer, and after an install of this plugin that
 *       a reboot or a crash cut short: 0 still installed (done, no transfer),
 *       1 no opinion (resagent's record decides), <0 not installed any more (rolled
 *       back, reflashed, wiped): the resource is downloaded and installed again. A
 *       downgrade to an earlier image is therefore never `done` without flashing.
 *   int resagent_confirm(host, resource, err, err_len);
 *       required of a plugin whose install returns RESAGENT_PENDING; called for each
 *       pending install only in a later boot than the install's (a restart of resagent
 *       is not a reboot), before the first task poll after a start, then every 60 s
 *       while it answers pending and on SIGUSR1: 0 the new image runs (`done`), <0 it
 *       did not boot or was rolled back (`fail` -5 with the reason; the same name and
 *       md5sum are then not installed again automatically), RESAGENT_PENDING still
 *       pending. resource->path is then NULL.
 *
 * When they are called:
 *   - After a download passed its size and MD5 check, every plugin that exports
 *     resagent_validate is asked, in order; one failure rejects the resource (the task
 *     ends `fail` with code -9 and the plugin's reason).
 *   - Then the first plugin whose resagent_install does not decline owns the resource;
 *     its failure ends the task with code -5. When every plugin declines, resagent's
 *     default installer places the file atomically at resource->dest.
 *
 * Return values of resagent_validate and resagent_install:
 *    0  ok (validate: acceptable; install: installed)
 *    1  declined: not this plugin's resource (validate: no opinion)
 *    2  install only, RESAGENT_PENDING: written, but effective after a reboot (an A/B
 *       slot switched). resagent reports `burning` 100 with "reboot pending", keeps the
 *       task open and reports `done` only once resagent_confirm says the image runs.
 *   <0  failed: write a NUL-terminated reason into `err`
 *
 * Validate may report progress too (shown as `burning`, like install's).
 *
 * Names in messages: log lines reach resagent's log as "[NAME] message", NAME being what
 * resagent_plugin_name returns; a reason reaches the platform as "plugin NAME: REASON".
 *
 * The `err` buffer: owned by resagent, `err_len` bytes long (at least 256), zeroed
 * before the call. Write at most err_len bytes including the terminating NUL: truncate,
 * never overrun (snprintf(err, err_len, ...) does this). The reason reaches the
 * platform in the report's result_msg, so keep secrets out of it.
 *
 * Isolation: every call runs in a child process (resagent re-executing itself), under
 * the configured plugin_timeout_s. A plugin that crashes, aborts, hangs or leaks fails
 * only that call: the reason names the plugin and the signal or the timeout. A plugin
 * keeps no state between calls (but see private_dir). When resagent stops during a
 * call, the child gets SIGTERM, and SIGKILL 3 s later; the call is made again after the
 * restart. Anything the plugin prints to stdout or stderr goes to resagent's log stream.
 * The child is a plain process: its own process group (a timeout ends the whole group,
 * helpers the plugin forked included; so does the end of every call), default signal
 * dispositions and an empty signal mask, no file descriptors but stdin, stdout, stderr
 * (never resagent's network sockets), and an environment limited to PATH, LANG, LC_*,
 * TZ and RESAGENT_CONFIG. The code loaded is exactly the file resagent checked (and
 * hashed, when pinned): a copy sealed in memory when plugin_dir was scanned.
 *
 * Strings: every `const char *` handed to the plugin is NUL-terminated UTF-8, owned by
 * resagent and valid only for the duration of the call; copy what you keep.
 *
 * Growth: both structs begin with `struct_size`, the size resagent filled in. Later ABI
 * revisions only add fields at the end; a plugin reads a field only when
 * `struct_size` covers it (see RESAGENT_HAS_FIELD), so plugins built against this
 * header keep working.
 */
#ifndef RESAGENT_PLUGIN_H
#define RESAGENT_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI version this header describes; resagent_plugin_abi() returns it. */
#define RESAGENT_PLUGIN_ABI 1u

/* Log levels for resagent_host.log. */
#define RESAGENT_LOG_ERROR 1
#define RESAGENT_LOG_WARN 2
#define RESAGENT_LOG_INFO 3
#define RESAGENT_LOG_DEBUG 4

/* Return values of resagent_validate and resagent_install. */
#define RESAGENT_OK 0
#define RESAGENT_DECLINED 1
#define RESAGENT_PENDING 2
#define RESAGENT_FAILED (-1)

/* Whether `ptr` (a struct with a leading struct_size) carries `field`. */
#define RESAGENT_HAS_FIELD(ptr, type, field) \
    ((ptr)->struct_size >= offsetof(type, field) + sizeof(((type *)0)->field))

/* The functions resagent offers a plugin during a call. */
struct resagent_host {
    /* sizeof(struct resagent_host) as resagent was built. */
    uint32_t struct_size;
    /* Writes `message` (NUL-terminated, copied) to resagent's log at `level`
     * (RESAGENT_LOG_*), prefixed with the plugin's name. */
    void (*log)(int level, const char *message);
    /* Reports install progress, 0..100; the platform sees the task `burning` at that
     * percent (throttled by resagent). */
    void (*progress)(uint32_t percent);
    /* resagent's own durable replacement: fsync(src), rename(src, dest), fsync of
     * dest's folder. src and dest must be on one file system. A symlink at dest is
     * replaced, never followed. Returns 0, or a negative errno. */
    int (*atomic_replace)(const char *src, const char *dest);
    /* Appended fields: read them only when RESAGENT_HAS_FIELD says they are there. */
    /* The plugin's entry of `plugin_config` in resagent's configuration (keyed by the
     * plugin's name), as a JSON object text; NULL when there is none. */
    const char *config_json;
    /* A folder of the plugin's own, state_dir/plugins/NAME/ (created 0700), kept across
     * calls, updates and reboots: version records and the like. */
    const char *private_dir;
};

/* The resource a call is about. */
struct resagent_resource {
    /* sizeof(struct resagent_resource) as resagent was built. */
    uint32_t struct_size;
    /* The resource name from the task (one path component). */
    const char *name;
    /* The downloaded file: complete, MD5-checked. Read it; never modify, move or
     * delete it (resagent removes it once the task is done). */
    const char *path;
    /* Where the default installer would place it: resource_dir/NAME. */
    const char *dest;
    /* The task's MD5, 32 lowercase hex characters. */
    const char *md5sum;
    /* Size in bytes (64-bit: resources over 4 GiB exist). */
    uint64_t size;
    /* The md5sum of the version installed now under this name, or NULL when none. */
    const char *installed_md5sum;
};

uint32_t resagent_plugin_abi(void);
const char *resagent_plugin_name(void);
int resagent_validate(const struct resagent_host *host, const struct resagent_resource *resource,
                      char *err, size_t err_len);
int resagent_install(const struct resagent_host *host, const struct resagent_resource *resource,
                     char *err, size_t err_len);
const char *resagent_plugin_claims(void);
int resagent_installed(const struct resagent_host *host, const struct resagent_resource *resource,
                       char *err, size_t err_len);
int resagent_confirm(const struct resagent_host *host, const struct resagent_resource *resource,
                     char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* RESAGENT_PLUGIN_H */
