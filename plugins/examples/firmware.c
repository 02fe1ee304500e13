/* SPDX-License-Identifier: MIT */
/*
 * firmware — an example install plugin for resagent, in C, built from
 * resagent_plugin.h alone; a real firmware plugin a vendor can copy:
 *
 *     cc -std=c99 -Wall -Wextra -shared -fPIC -I plugins/include \
 *        plugins/examples/firmware.c -o 20-firmware.so
 *
 * It owns every resource named `fw-*.bin` (resagent_plugin_claims): such an image never
 * reaches resagent's default installer. The image format is this product's:
 *
 *     "RSFW"  u32 LE header version (1)  u32 LE payload length  u32 LE CRC-32 of payload
 *     payload...
 *
 * validate  checks the header, the length and the CRC-32 (reporting progress);
 * install   writes the image to the partition named in plugin_config (through
 *           host->atomic_replace: the partition file holds the whole old or the whole
 *           new image), keeps a record "MD5 CRC32" in its private folder, and returns
 *           RESAGENT_PENDING on an A/B device ("ab": true), where the image runs only
 *           after a reboot;
 * installed answers from that record and the partition's content (and, on A/B, the
 *           boot process's word that it runs): an image rolled back or reflashed behind
 *           resagent's back (or a downgrade to an earlier name) is reported gone, so
 *           resagent flashes it again instead of saying `done`;
 * confirm   after the reboot, reads the version the boot process says is running (a
 *           file named by "booted_file", holding the running image's MD5): the pending
 *           image runs (done), another one runs (rolled back: fail), or nothing is
 *           known yet (still pending).
 *
 * plugin_config for it, in resagent's config.json (keyed by the plugin's name):
 *
 *     "plugin_config": {"firmware": {"partition": "/dev/mmcblk0p3",
 *                                    "ab": true, "booted_file": "/run/fw-booted"}}
 *
 * On a real device "partition" is a block device or an A/B slot file and "booted_file"
 * is written by the boot scripts (from the bootloader's environment); the tests use
 * plain files. Versions live in the names (fw-1.4.bin) or in the image; the task has no
 * version field.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "resagent_plugin.h"
#include "resagent_plugin_config.h"

enum { HEADER = 16, HEADER_VERSION = 1 };
static const char MAGIC[4] = {'R', 'S', 'F', 'W'};

uint32_t resagent_plugin_abi(void) { return RESAGENT_PLUGIN_ABI; }
const char *resagent_plugin_name(void) { return "firmware"; }
const char *resagent_plugin_claims(void) { return "fw-*.bin"; }

static uint32_t crc32_update(uint32_t crc, const unsigned char *p, size_t n) {
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static uint32_t le32(const unsigned char *b) {
    return b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24;
}

/* Checks the image at `path`; on success its CRC-32 is in *crc_out. */
static int check_image(const struct resagent_host *host, const char *path, uint64_t size,
                       uint32_t *crc_out, char *err, size_t err_len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, err_len, "cannot open %s: %s", path, strerror(errno));
        return RESAGENT_FAILED;
    }
    unsigned char h[HEADER];
    if (fread(h, 1, HEADER, f) != HEADER || memcmp(h, MAGIC, 4) != 0) {
        fclose(f);
        snprintf(err, err_len, "not a firmware image for this product (no RSFW header)");
        return RESAGENT_FAILED;
    }
    if (le32(h + 4) != HEADER_VERSION) {
        fclose(f);
        snprintf(err, err_len, "header version %u; this bootloader reads %d", le32(h + 4),
                 HEADER_VERSION);
        return RESAGENT_FAILED;
    }
    uint64_t length = le32(h + 8);
    if (size && length + HEADER != size) {
        fclose(f);
        snprintf(err, err_len, "header says %llu payload bytes, the file has %llu",
                 (unsigned long long)length, (unsigned long long)(size - HEADER));
        return RESAGENT_FAILED;
    }
    uint32_t crc = 0;
    unsigned char buf[65536];
    uint64_t done = 0;
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) {
        crc = crc32_update(crc, buf, got);
        done += got;
        if (host && length) host->progress((uint32_t)(done * 100 / length));
    }
    fclose(f);
    if (done != length) {
        snprintf(err, err_len, "payload is %llu bytes, the header says %llu",
                 (unsigned long long)done, (unsigned long long)length);
        return RESAGENT_FAILED;
    }
    if (crc != le32(h + 12)) {
        snprintf(err, err_len, "CRC-32 %08x does not match the header's %08x", crc, le32(h + 12));
        return RESAGENT_FAILED;
    }
    *crc_out = crc;
    return RESAGENT_OK;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int claimed(const char *name) {
    return strncmp(name, "fw-", 3) == 0 && ends_with(name, ".bin");
}

int resagent_validate(const struct resagent_host *host, const struct resagent_resource *res,
                      char *err, size_t err_len) {
    if (!claimed(res->name)) return RESAGENT_DECLINED;
    uint32_t crc;
    int rc = check_image(host, res->path, res->size, &crc, err, err_len);
    if (rc == RESAGENT_OK) {
        char line[160];
        snprintf(line, sizeof line, "%s: RSFW image, CRC-32 %08x: accepted", res->name, crc);
        host->log(RESAGENT_LOG_INFO, line);
    }
    return rc;
}

int resagent_install(const struct resagent_host *host, const struct resagent_resource *res,
                     char *err, size_t err_len) {
    if (!claimed(res->name)) return RESAGENT_DECLINED;
    const char *config = rp_host_config(host);
    const char *private_dir = rp_host_private_dir(host);
    char partition[4096];
    rp_config_string(config, "partition", partition, sizeof partition);
    if (!partition[0] || !private_dir) {
        snprintf(err, err_len, "no \"partition\" in plugin_config (or an old resagent)");
        return RESAGENT_FAILED;
    }
    uint32_t crc;
    if (check_image(NULL, res->path, res->size, &crc, err, err_len) != RESAGENT_OK)
        return RESAGENT_FAILED;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.firmware-new", partition);
    FILE *in = fopen(res->path, "rb"), *out = fopen(tmp, "wb");
    if (!in || !out) {
        snprintf(err, err_len, "cannot open %s: %s", in ? tmp : res->path, strerror(errno));
        if (in) fclose(in);
        if (out) fclose(out);
        return RESAGENT_FAILED;
    }
    unsigned char buf[65536];
    uint64_t done = 0;
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, in)) > 0) {
        if (fwrite(buf, 1, got, out) != got) break;
        done += got;
        host->progress((uint32_t)(done * 100 / (res->size ? res->size : 1)));
    }
    fclose(in);
    if (fclose(out) != 0 || done != res->size) {
        snprintf(err, err_len, "writing %s failed after %llu bytes", tmp, (unsigned long long)done);
        remove(tmp);
        return RESAGENT_FAILED;
    }
    int rc = host->atomic_replace(tmp, partition);
    if (rc != 0) {
        snprintf(err, err_len, "replacing %s: %s", partition, strerror(-rc));
        remove(tmp);
        return RESAGENT_FAILED;
    }
    char record_path[4200], record[80];
    snprintf(record_path, sizeof record_path, "%s/record", private_dir);
    snprintf(record, sizeof record, "%s %08x\n", res->md5sum, crc);
    if ((rc = rp_write_record(host, record_path, record)) != 0) {
        snprintf(err, err_len, "cannot keep the version record: %s", strerror(-rc));
        return RESAGENT_FAILED;
    }
    char line[2400];
    snprintf(line, sizeof line, "%.255s written to %.2048s", res->name, partition);
    host->log(RESAGENT_LOG_INFO, line);
    if (rp_config_bool(config, "ab", 0)) {
        host->log(RESAGENT_LOG_INFO, "slot switched; the image runs after a reboot");
        return RESAGENT_PENDING;
    }
    return RESAGENT_OK;
}

int resagent_installed(const struct resagent_host *host, const struct resagent_resource *res,
                       char *err, size_t err_len) {
    const char *private_dir = rp_host_private_dir(host);
    char partition[4096];
    rp_config_string(rp_host_config(host), "partition", partition, sizeof partition);
    if (!private_dir || !partition[0]) return RESAGENT_DECLINED; /* no opinion */
    char record_path[4200], md5[40] = "";
    unsigned crc = 0;
    snprintf(record_path, sizeof record_path, "%s/record", private_dir);
    FILE *f = fopen(record_path, "r");
    if (!f) return RESAGENT_DECLINED;
    int fields = fscanf(f, "%32s %8x", md5, &crc);
    fclose(f);
    if (fields != 2) return RESAGENT_DECLINED;
    if (strcmp(md5, res->md5sum) != 0) {
        snprintf(err, err_len, "the partition holds %s, not %s", md5, res->md5sum);
        return RESAGENT_FAILED;
    }
    uint32_t now;
    char why[200];
    if (check_image(NULL, partition, 0, &now, why, sizeof why) != RESAGENT_OK || now != crc) {
        snprintf(err, err_len, "%s no longer holds this image (rolled back or reflashed)",
                 partition);
        return RESAGENT_FAILED;
    }
    if (rp_config_bool(rp_host_config(host), "ab", 0)) {
        /* On A/B, written is not running: only the boot process can say it runs. */
        char booted_file[4096], booted[40] = "";
        rp_config_string(rp_host_config(host), "booted_file", booted_file, sizeof booted_file);
        FILE *b = booted_file[0] ? fopen(booted_file, "r") : NULL;
        int got = b ? fscanf(b, "%32s", booted) : 0;
        if (b) fclose(b);
        if (got != 1 || strcmp(booted, res->md5sum) != 0) {
            snprintf(err, err_len, "written to %s but not running", partition);
            return RESAGENT_FAILED;
        }
    }
    return RESAGENT_OK;
}

int resagent_confirm(const struct resagent_host *host, const struct resagent_resource *res,
                     char *err, size_t err_len) {
    char booted_file[4096], booted[40] = "";
    rp_config_string(rp_host_config(host), "booted_file", booted_file, sizeof booted_file);
    FILE *f = booted_file[0] ? fopen(booted_file, "r") : NULL;
    if (!f) return RESAGENT_PENDING; /* nothing known about the boot yet */
    int fields = fscanf(f, "%32s", booted);
    fclose(f);
    if (fields == 1 && strcmp(booted, res->md5sum) == 0) {
        host->log(RESAGENT_LOG_INFO, "the new image runs");
        return RESAGENT_OK;
    }
    snprintf(err, err_len, "the device booted %s, not %s: the new image did not stay",
             fields == 1 ? booted : "an unknown image", res->md5sum);
    return RESAGENT_FAILED;
}
