/* SPDX-License-Identifier: MIT */
/*
 * rauc.c — a resagent install plugin that hands `*.raucb` bundles to the RAUC service
 * already running on the device (meta-rauc), through RAUC's D-Bus API
 * (de.pengutronix.rauc.Installer), with GIO — the library RAUC itself is built on.
 *
 * install: InstallBundle(path); RAUC verifies the bundle's signature and compatible,
 *   writes the inactive slot(s) and makes them primary. Its `Progress` property becomes
 *   resagent's `burning` percent; a refusal fails the task with RAUC's `LastError`. On
 *   success the slot now primary (GetPrimary) is recorded in the plugin's private folder
 *   and the call returns RESAGENT_PENDING ("reboot": true, the default) — RAUC switched
 *   the boot target; the bundle runs after a reboot.
 *   The bundle's MD5 is recorded (`submitted`) before InstallBundle: when resagent
 *   restarts while RAUC still installs it (a kill, a timeout), the next call follows that
 *   installation (Operation "installing") to its end instead of failing on a busy RAUC.
 * confirm (resagent asks only in a later boot): the recorded slot must be the booted one
 *   (GetSlotStatus: its "state" is "booted"); then it is marked good (Mark("good",
 *   "booted")), recorded (`installed`: MD5, slot, the slot's image SHA-256) and the task
 *   is `done`. Another slot booted: the bootloader fell back — `fail`. RAUC not
 *   reachable yet: still pending, asked again.
 * installed: the `installed` record names this bundle, its slot is the booted one and
 *   still holds the image RAUC wrote then (its "sha256"); otherwise (a fallback, a
 *   downgrade or another install since, RAUC not reachable) not installed.
 *
 * plugin_config (resagent's configuration, key "rauc"), all optional:
 *   "bus":    "system" (default), "session", or a D-Bus address ("unix:path=/run/...")
 *   "reboot": true (default) or false (then success is `done` at once; RAUC's slots were
 *             written but nothing waits for the boot — for bring-up only)
 *
 * Build: cc -shared -fPIC -I resagent/plugins/include rauc.c \
 *            $(pkg-config --cflags --libs gio-2.0) -o 40-rauc.so
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <gio/gio.h>

#include "resagent_plugin.h"
#include "resagent_plugin_config.h"

#define RAUC_NAME "de.pengutronix.rauc"
#define RAUC_PATH "/"
#define RAUC_INSTALLER "de.pengutronix.rauc.Installer"
/* Generous: writing a root file system to slow flash. resagent's plugin_timeout_s
 * bounds the call anyway. */
#define CALL_TIMEOUT_MS (10 * 60 * 1000)

uint32_t resagent_plugin_abi(void) { return RESAGENT_PLUGIN_ABI; }
const char *resagent_plugin_name(void) { return "rauc"; }
const char *resagent_plugin_claims(void) { return "*.raucb"; }

/* The bus RAUC is on, per plugin_config; NULL with the reason in err. */
static GDBusConnection *open_bus(const char *config, char *err, size_t err_len) {
    char bus[1024];
    g_autoptr(GError) e = NULL;
    GDBusConnection *c;
    if (!rp_config_string(config, "bus", bus, sizeof bus) || strcmp(bus, "system") == 0) {
        snprintf(bus, sizeof bus, "system");
        c = g_bus_get_sync(G_BUS_TYPE_SYSTEM, NULL, &e);
    } else if (strcmp(bus, "session") == 0) {
        c = g_bus_get_sync(G_BUS_TYPE_SESSION, NULL, &e);
    } else {
        c = g_dbus_connection_new_for_address_sync(
            bus,
            G_DBUS_CONNECTION_FLAGS_AUTHENTICATION_CLIENT |
                G_DBUS_CONNECTION_FLAGS_MESSAGE_BUS_CONNECTION,
            NULL, NULL, &e);
    }
    if (!c) {
        if (e) g_dbus_error_strip_remote_error(e);
        snprintf(err, err_len, "cannot reach the D-Bus bus %.300s: %.400s", bus,
                 e ? e->message : "?");
    }
    return c;
}

/* A method of RAUC's Installer; its reply or NULL with the reason in err. */
static GVariant *call(GDBusConnection *c, const char *method, GVariant *args,
                      const char *reply_type, char *err, size_t err_len) {
    g_autoptr(GError) e = NULL;
    GVariant *r = g_dbus_connection_call_sync(c, RAUC_NAME, RAUC_PATH, RAUC_INSTALLER, method, args,
                                              reply_type ? G_VARIANT_TYPE(reply_type) : NULL,
                                              G_DBUS_CALL_FLAGS_NONE, CALL_TIMEOUT_MS, NULL, &e);
    if (!r) {
        /* "GDBus.Error:de.pengutronix.rauc.Error.Failed: …" → "…", as RAUC shows it. */
        if (e) g_dbus_error_strip_remote_error(e);
        snprintf(err, err_len, "RAUC %s: %.600s", method, e ? e->message : "?");
    }
    return r;
}

/* One property of the Installer (a new reference), or NULL. */
static GVariant *property(GDBusConnection *c, const char *name) {
    g_autoptr(GVariant) r = g_dbus_connection_call_sync(
        c, RAUC_NAME, RAUC_PATH, "org.freedesktop.DBus.Properties", "Get",
        g_variant_new("(ss)", RAUC_INSTALLER, name), G_VARIANT_TYPE("(v)"), G_DBUS_CALL_FLAGS_NONE,
        5000, NULL, NULL);
    if (!r) return NULL;
    GVariant *v = NULL;
    g_variant_get(r, "(v)", &v);
    return v;
}

/* A string property, copied into out ("" when unavailable). */
static void string_property(GDBusConnection *c, const char *name, char *out, size_t len) {
    out[0] = '\0';
    g_autoptr(GVariant) v = property(c, name);
    if (v && g_variant_is_of_type(v, G_VARIANT_TYPE_STRING))
        snprintf(out, len, "%s", g_variant_get_string(v, NULL));
}

/* The booted slot's name into `booted`, and the "sha256" of slot `slot` (when given)
 * into `sha`; 0, or -1 with the reason in err. */
static int slot_status(GDBusConnection *bus, const char *slot, char *booted, size_t booted_len,
                       char *sha, size_t sha_len, char *err, size_t err_len) {
    booted[0] = '\0';
    if (sha) sha[0] = '\0';
    g_autoptr(GVariant) status = call(bus, "GetSlotStatus", NULL, "(a(sa{sv}))", err, err_len);
    if (!status) return -1;
    g_autoptr(GVariantIter) slots = NULL;
    const gchar *name = NULL;
    GVariant *props = NULL;
    g_variant_get(status, "(a(sa{sv}))", &slots);
    while (g_variant_iter_loop(slots, "(&s@a{sv})", &name, &props)) {
        const gchar *value = NULL;
        if (g_variant_lookup(props, "state", "&s", &value) && strcmp(value, "booted") == 0)
            snprintf(booted, booted_len, "%s", name);
        if (sha && slot && strcmp(name, slot) == 0 &&
            g_variant_lookup(props, "sha256", "&s", &value))
            snprintf(sha, sha_len, "%s", value);
    }
    return 0;
}

/* Writes `text` as the record `file` in the private folder; 0, or -1 with err set. */
static int write_private(const struct resagent_host *host, const char *file, const char *text,
                         char *err, size_t err_len) {
    const char *private_dir = rp_host_private_dir(host);
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", private_dir ? private_dir : ".", file);
    int rc = private_dir ? rp_write_record(host, path, text) : -ENOENT;
    if (rc != 0) {
        snprintf(err, err_len, "cannot keep the record %s: %s", file, strerror(-rc));
        return -1;
    }
    return 0;
}

/* What an install waits for. */
struct wait {
    const struct resagent_host *host;
    GDBusConnection *bus;
    GMainLoop *loop;
    int completed;
    int result;
    int last_percent;
    int attached; /* following an installation started before a restart */
};

static void on_completed(GDBusConnection *c, const gchar *sender, const gchar *path,
                         const gchar *iface, const gchar *signal, GVariant *params, gpointer data) {
    (void)c, (void)sender, (void)path, (void)iface, (void)signal;
    struct wait *w = data;
    if (g_variant_is_of_type(params, G_VARIANT_TYPE("(i)")))
        g_variant_get(params, "(i)", &w->result);
    w->completed = 1;
    g_main_loop_quit(w->loop);
}

/* Every 200 ms: RAUC's Progress as `burning`; an installation followed after a restart
 * may end between our look at Operation and the subscription, so an idle RAUC ends the
 * wait too (its LastError then says how). (A Completed signal that never comes — RAUC
 * killed midway — leaves the wait to resagent's plugin_timeout_s.) */
static gboolean on_tick(gpointer data) {
    struct wait *w = data;
    if (w->attached) {
        char operation[64];
        string_property(w->bus, "Operation", operation, sizeof operation);
        if (strcmp(operation, "idle") == 0) {
            char last_error[16];
            string_property(w->bus, "LastError", last_error, sizeof last_error);
            w->result = last_error[0] ? 1 : 0;
            w->completed = 1;
            g_main_loop_quit(w->loop);
            return G_SOURCE_CONTINUE;
        }
    }
    g_autoptr(GVariant) p = property(w->bus, "Progress");
    if (p && g_variant_is_of_type(p, G_VARIANT_TYPE("(isi)"))) {
        gint32 percent = 0, depth = 0;
        const gchar *message = NULL;
        g_variant_get(p, "(i&si)", &percent, &message, &depth);
        if (percent >= 0 && percent <= 100 && percent != w->last_percent) {
            w->last_percent = percent;
            w->host->progress((uint32_t)percent);
        }
    }
    return G_SOURCE_CONTINUE;
}

/* Starts RAUC on the bundle — or follows the installation of this very bundle that a
 * restart of resagent left running — and waits for its end, with `burning` progress;
 * 0, or -1 with the reason in err. */
static int follow_or_start(const struct resagent_host *host, const struct resagent_resource *res,
                           GDBusConnection *bus, char *err, size_t err_len) {
    const char *private_dir = rp_host_private_dir(host);
    struct wait w = {.host = host, .bus = bus, .result = -1, .last_percent = -1};
    g_autoptr(GMainContext) ctx = g_main_context_new();
    g_main_context_push_thread_default(ctx);
    g_autoptr(GMainLoop) loop = g_main_loop_new(ctx, FALSE);
    w.loop = loop;
    guint sub =
        g_dbus_connection_signal_subscribe(bus, RAUC_NAME, RAUC_INSTALLER, "Completed", RAUC_PATH,
                                           NULL, G_DBUS_SIGNAL_FLAGS_NONE, on_completed, &w, NULL);
    char operation[64], submitted[64];
    string_property(bus, "Operation", operation, sizeof operation);
    rp_read_record(private_dir, "submitted", submitted, sizeof submitted);
    g_autoptr(GVariant) r = NULL;
    if (strcmp(operation, "installing") == 0 && strcmp(submitted, res->md5sum) == 0) {
        char line[400];
        snprintf(line, sizeof line, "RAUC still installs %.255s from before; following it",
                 res->name);
        host->log(RESAGENT_LOG_INFO, line);
        w.attached = 1;
        r = g_variant_ref_sink(g_variant_new("()"));
    } else if (strcmp(operation, "idle") != 0) {
        snprintf(err, err_len, "RAUC is %s (its Operation), not idle: is another install running?",
                 operation[0] ? operation : "not answering");
    } else {
        char record[64];
        snprintf(record, sizeof record, "%s\n", res->md5sum);
        if (private_dir && write_private(host, "submitted", record, err, err_len) != 0) {
            /* without the record a restart could not follow this install: not started */
        } else {
            GVariantBuilder args;
            g_variant_builder_init(&args, G_VARIANT_TYPE("a{sv}"));
            r = call(bus, "InstallBundle", g_variant_new("(sa{sv})", res->path, &args), NULL, err,
                     err_len);
        }
    }
    int rc = -1;
    if (r) {
        g_autoptr(GSource) tick = g_timeout_source_new(200);
        g_source_set_callback(tick, on_tick, &w, NULL);
        g_source_attach(tick, ctx);
        g_main_loop_run(loop);
        g_source_destroy(tick);
        if (w.result != 0) {
            char last_error[1024];
            string_property(bus, "LastError", last_error, sizeof last_error);
            snprintf(err, err_len, "RAUC refused %s: %s", res->name,
                     last_error[0] ? last_error : "no reason given");
        } else {
            rc = 0;
        }
    }
    g_dbus_connection_signal_unsubscribe(bus, sub);
    g_main_context_pop_thread_default(ctx);
    return rc;
}

int resagent_install(const struct resagent_host *host, const struct resagent_resource *res,
                     char *err, size_t err_len) {
    size_t len = strlen(res->name);
    if (len < 6 || strcmp(res->name + len - 6, ".raucb") != 0) return RESAGENT_DECLINED;
    const char *config = rp_host_config(host);
    const char *private_dir = rp_host_private_dir(host);
    int reboot = rp_config_bool(config, "reboot", 1);
    if (reboot && !private_dir) {
        snprintf(err, err_len, "this resagent gives plugins no private folder (too old)");
        return RESAGENT_FAILED;
    }
    g_autoptr(GDBusConnection) bus = open_bus(config, err, err_len);
    if (!bus) return RESAGENT_FAILED;
    if (follow_or_start(host, res, bus, err, err_len) != 0) return RESAGENT_FAILED;

    host->progress(100);
    char line[1400];
    if (!reboot) {
        snprintf(line, sizeof line, "RAUC installed %.255s", res->name);
        host->log(RESAGENT_LOG_INFO, line);
        return RESAGENT_OK;
    }
    /* The slot RAUC will boot next is the one this bundle went to. */
    g_autoptr(GVariant) p = call(bus, "GetPrimary", NULL, "(s)", err, err_len);
    if (!p) return RESAGENT_FAILED;
    const gchar *primary = NULL;
    g_variant_get(p, "(&s)", &primary);
    char booted[300], sha[100], record[600];
    if (slot_status(bus, primary, booted, sizeof booted, sha, sizeof sha, err, err_len) != 0)
        return RESAGENT_FAILED;
    snprintf(record, sizeof record, "%s %.300s %.90s\n", res->md5sum, primary, sha[0] ? sha : "-");
    snprintf(line, sizeof line, "RAUC installed %.255s into %.300s; it runs after a reboot",
             res->name, primary);
    if (write_private(host, "pending", record, err, err_len) != 0) return RESAGENT_FAILED;
    host->log(RESAGENT_LOG_INFO, line);
    return RESAGENT_PENDING;
}

/* Reads the record `file` ("MD5 SLOT SHA256") of the private folder; the number of
 * fields read. */
static int read_slot_record(const struct resagent_host *host, const char *file, char *md5,
                            char *slot, char *sha) {
    char line[600];
    rp_read_record(rp_host_private_dir(host), file, line, sizeof line);
    md5[0] = slot[0] = sha[0] = '\0';
    return sscanf(line, "%39s %299s %99s", md5, slot, sha);
}

int resagent_confirm(const struct resagent_host *host, const struct resagent_resource *res,
                     char *err, size_t err_len) {
    char md5[40], slot[300], sha[100];
    int fields = read_slot_record(host, "pending", md5, slot, sha);
    if (fields < 2 || strcmp(md5, res->md5sum) != 0) {
        snprintf(err, err_len, "no record of which slot %s went to", res->name);
        return RESAGENT_FAILED;
    }
    char why[800];
    g_autoptr(GDBusConnection) bus = open_bus(rp_host_config(host), why, sizeof why);
    if (!bus) {
        host->log(RESAGENT_LOG_WARN, why);
        return RESAGENT_PENDING; /* RAUC's bus not up yet: ask again */
    }
    char booted[300];
    if (slot_status(bus, NULL, booted, sizeof booted, NULL, 0, why, sizeof why) != 0) {
        host->log(RESAGENT_LOG_WARN, why);
        return RESAGENT_PENDING;
    }
    if (strcmp(booted, slot) != 0) {
        snprintf(err, err_len, "RAUC booted %s, not %s where %s went: the bundle did not stay",
                 booted[0] ? booted : "an unknown slot", slot, res->name);
        return RESAGENT_FAILED;
    }
    g_autoptr(GVariant) marked =
        call(bus, "Mark", g_variant_new("(ss)", "good", "booted"), "(ss)", err, err_len);
    if (!marked) return RESAGENT_FAILED;
    char record[600];
    snprintf(record, sizeof record, "%s %s %s\n", md5, slot, fields == 3 ? sha : "-");
    if (write_private(host, "installed", record, err, err_len) != 0) return RESAGENT_FAILED;
    char line[700];
    snprintf(line, sizeof line, "%.255s runs from %.300s, marked good", res->name, slot);
    host->log(RESAGENT_LOG_INFO, line);
    return RESAGENT_OK;
}

int resagent_installed(const struct resagent_host *host, const struct resagent_resource *res,
                       char *err, size_t err_len) {
    char md5[40], slot[300], sha[100];
    int fields = read_slot_record(host, "installed", md5, slot, sha);
    if (fields < 2 || strcmp(md5, res->md5sum) != 0) {
        snprintf(err, err_len, "RAUC's last confirmed bundle is %s, not %s",
                 md5[0] ? md5 : "unknown", res->md5sum);
        return RESAGENT_FAILED;
    }
    g_autoptr(GDBusConnection) bus = open_bus(rp_host_config(host), err, err_len);
    if (!bus) return RESAGENT_FAILED;
    char booted[300], now[100];
    if (slot_status(bus, slot, booted, sizeof booted, now, sizeof now, err, err_len) != 0)
        return RESAGENT_FAILED;
    if (strcmp(booted, slot) != 0) {
        snprintf(err, err_len, "RAUC booted %s, not %s that holds %s",
                 booted[0] ? booted : "an unknown slot", slot, res->name);
        return RESAGENT_FAILED;
    }
    if (fields == 3 && strcmp(sha, "-") != 0 && strcmp(sha, now) != 0) {
        snprintf(err, err_len, "%s no longer holds %s (another image was written since)", slot,
                 res->name);
        return RESAGENT_FAILED;
    }
    return RESAGENT_OK;
}
