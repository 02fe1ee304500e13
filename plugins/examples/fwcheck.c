/* SPDX-License-Identifier: MIT */
/*
 * fwcheck — an example validate plugin for resagent, in C, built from
 * resagent_plugin.h alone:
 *
 *     cc -std=c99 -Wall -Wextra -shared -fPIC -I plugins/include \
 *        plugins/examples/fwcheck.c -o 10-fwcheck.so
 *
 * The rule is the kind a device maker really writes: a firmware image (a resource whose
 * name ends in ".fw") must start with this product's header — the magic "RSFW" and a
 * header version this bootloader understands (1) — and must fit the firmware partition
 * (FWCHECK_MAX_BYTES, 256 MiB unless set at build time). Anything that is not a
 * firmware image is not this plugin's business: it declines.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "resagent_plugin.h"

#ifndef FWCHECK_MAX_BYTES
#define FWCHECK_MAX_BYTES (256ull * 1024 * 1024)
#endif

static const char MAGIC[4] = {'R', 'S', 'F', 'W'};
enum { HEADER_VERSION = 1 };

uint32_t resagent_plugin_abi(void) { return RESAGENT_PLUGIN_ABI; }

const char *resagent_plugin_name(void) { return "fwcheck"; }

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

int resagent_validate(const struct resagent_host *host, const struct resagent_resource *res,
                      char *err, size_t err_len) {
    if (!ends_with(res->name, ".fw")) {
        return RESAGENT_DECLINED;
    }
    if (res->size > FWCHECK_MAX_BYTES) {
        snprintf(err, err_len, "%.255s is %llu bytes, over the %llu byte firmware partition",
                 res->name, (unsigned long long)res->size, (unsigned long long)FWCHECK_MAX_BYTES);
        return RESAGENT_FAILED;
    }
    FILE *f = fopen(res->path, "rb");
    if (f == NULL) {
        snprintf(err, err_len, "cannot open %s: %s", res->path, strerror(errno));
        return RESAGENT_FAILED;
    }
    unsigned char header[8];
    size_t got = fread(header, 1, sizeof header, f);
    fclose(f);
    if (got < sizeof header || memcmp(header, MAGIC, sizeof MAGIC) != 0) {
        snprintf(err, err_len, "%s is not a firmware image for this product (no RSFW header)",
                 res->name);
        return RESAGENT_FAILED;
    }
    unsigned version = header[4] | header[5] << 8 | header[6] << 16 | (unsigned)header[7] << 24;
    if (version != HEADER_VERSION) {
        snprintf(err, err_len, "%s has header version %u; this bootloader reads version %d",
                 res->name, version, HEADER_VERSION);
        return RESAGENT_FAILED;
    }
    char line[160];
    snprintf(line, sizeof line, "%s: RSFW header v%u, %llu bytes: accepted", res->name, version,
             (unsigned long long)res->size);
    host->log(RESAGENT_LOG_INFO, line);
    return RESAGENT_OK;
}
