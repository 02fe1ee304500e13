/* SPDX-License-Identifier: MIT */
/*
 * resagent_plugin_config.h — small helpers for C plugins, not part of the ABI: read the
 * host's appended fields only when this resagent passes them, pick values out of the
 * plugin's `plugin_config` entry (host->config_json), and keep a small record durably.
 *
 * The JSON reader is deliberately small: it finds "key": "string", "key": true/false
 * and "key": number at any depth of a flat object, without escapes in strings. A value
 * it cannot read is treated as absent, so a plugin falls back to its default and says so.
 */
#ifndef RESAGENT_PLUGIN_CONFIG_H
#define RESAGENT_PLUGIN_CONFIG_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "resagent_plugin.h"

/* host->config_json, or NULL (none configured, or a resagent without the field). */
static inline const char *rp_host_config(const struct resagent_host *h) {
    return RESAGENT_HAS_FIELD(h, struct resagent_host, config_json) ? h->config_json : NULL;
}

/* host->private_dir, or NULL (a resagent without the field). */
static inline const char *rp_host_private_dir(const struct resagent_host *h) {
    return RESAGENT_HAS_FIELD(h, struct resagent_host, private_dir) ? h->private_dir : NULL;
}

/* Where the value of `key` starts in `json` (after the colon and spaces), or NULL. */
static inline const char *rp_config_value(const char *json, const char *key) {
    char quoted[80];
    if (!json || snprintf(quoted, sizeof quoted, "\"%s\"", key) >= (int)sizeof quoted) return NULL;
    const char *p = strstr(json, quoted);
    if (!p || !(p = strchr(p + strlen(quoted), ':'))) return NULL;
    while (*++p == ' ' || *p == '\t' || *p == '\n') continue;
    return p;
}

/* The string value of `key` into `out` (NUL-terminated); "" when absent, not a string
 * or too long for `out`. Returns 1 when found. */
static inline int rp_config_string(const char *json, const char *key, char *out, size_t out_len) {
    out[0] = '\0';
    const char *p = rp_config_value(json, key);
    if (!p || *p != '"') return 0;
    const char *end = strchr(++p, '"');
    if (!end || (size_t)(end - p) >= out_len) return 0;
    memcpy(out, p, (size_t)(end - p));
    out[end - p] = '\0';
    return 1;
}

/* The boolean value of `key`; `fallback` when absent or not a boolean. */
static inline int rp_config_bool(const char *json, const char *key, int fallback) {
    const char *p = rp_config_value(json, key);
    if (p && strncmp(p, "true", 4) == 0) return 1;
    if (p && strncmp(p, "false", 5) == 0) return 0;
    return fallback;
}

/* The whole-number value of `key`; `fallback` when absent or not a number. */
static inline long rp_config_long(const char *json, const char *key, long fallback) {
    const char *p = rp_config_value(json, key);
    if (!p || *p < '0' || *p > '9') return fallback;
    return strtol(p, NULL, 10);
}

/* Reads the first line of the record `dir`/`file` into `out` ("" when absent). */
static inline void rp_read_record(const char *dir, const char *file, char *out, size_t len) {
    char path[4200];
    out[0] = '\0';
    if (!dir || snprintf(path, sizeof path, "%s/%s", dir, file) >= (int)sizeof path) return;
    FILE *f = fopen(path, "r");
    if (!f) return;
    if (!fgets(out, (int)len, f)) out[0] = '\0';
    fclose(f);
    out[strcspn(out, "\n")] = '\0';
}

/* Writes `text` to `dest` durably: a temporary file beside it, then resagent's
 * atomic_replace (fsync, rename, fsync of the folder). 0, or a negative errno. */
static inline int rp_write_record(const struct resagent_host *host, const char *dest,
                                  const char *text) {
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", dest) >= (int)sizeof tmp) return -ENAMETOOLONG;
    FILE *f = fopen(tmp, "w");
    if (!f) return -errno;
    fputs(text, f);
    if (fclose(f) != 0) return -errno;
    return host->atomic_replace(tmp, dest);
}

#endif /* RESAGENT_PLUGIN_CONFIG_H */
