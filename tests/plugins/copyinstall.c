/* SPDX-License-Identifier: MIT */
/* Test plugin: installs `*.cfg` resources with the host's own functions — copies the
 * file beside its destination, reports progress, logs, and calls host->atomic_replace. */
#include <stdio.h>
#include <string.h>
#include "resagent_plugin.h"

uint32_t resagent_plugin_abi(void) { return RESAGENT_PLUGIN_ABI; }
const char *resagent_plugin_name(void) { return "copyinstall"; }

int resagent_install(const struct resagent_host *host, const struct resagent_resource *res,
                     char *err, size_t err_len) {
    size_t n = strlen(res->name);
    if (n < 4 || strcmp(res->name + n - 4, ".cfg") != 0) return RESAGENT_DECLINED;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.copyinstall-tmp", res->dest);
    FILE *in = fopen(res->path, "rb"), *out = fopen(tmp, "wb");
    if (!in || !out) {
        snprintf(err, err_len, "cannot open files");
        return RESAGENT_FAILED;
    }
    char buf[65536];
    size_t got, total = 0;
    while ((got = fread(buf, 1, sizeof buf, in)) > 0) {
        fwrite(buf, 1, got, out);
        total += got;
        host->progress((uint32_t)(total * 100 / (res->size ? res->size : 1)) / 2);
    }
    fclose(in);
    fclose(out);
    host->progress(50);
    host->log(RESAGENT_LOG_INFO, "copied; replacing atomically");
    printf("stdout noise from the plugin must not confuse the agent\n");
    int rc = host->atomic_replace(tmp, res->dest);
    if (rc != 0) {
        snprintf(err, err_len, "atomic_replace: %d", rc);
        return RESAGENT_FAILED;
    }
    host->progress(100);
    return RESAGENT_OK;
}
