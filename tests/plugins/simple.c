/* SPDX-License-Identifier: MIT */
/* Test plugin: ABI version ABI (default 1); install declines everything (claiming the
 * names of CLAIMS when defined); a constructor
 * leaves a marker file when LOAD_MARKER is set, to show whether it was ever loaded. */
#include <stdio.h>
#include "resagent_plugin.h"

#ifndef ABI
#define ABI RESAGENT_PLUGIN_ABI
#endif

#ifdef LOAD_MARKER
__attribute__((constructor)) static void loaded(void) {
    FILE *f = fopen(LOAD_MARKER, "a");
    if (f) {
        fputs("loaded\n", f);
        fclose(f);
    }
}
#endif

uint32_t resagent_plugin_abi(void) { return ABI; }

#ifdef CLAIMS
const char *resagent_plugin_claims(void) { return CLAIMS; }
#endif
const char *resagent_plugin_name(void) { return PLUGIN_NAME; }

int resagent_install(const struct resagent_host *h, const struct resagent_resource *r, char *e,
                     size_t n) {
    (void)h;
    (void)r;
    (void)e;
    (void)n;
    return RESAGENT_DECLINED;
}
