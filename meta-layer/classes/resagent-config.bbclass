# SPDX-License-Identifier: MIT
#
# The agent's image configuration and systemd unit, written at do_install by the
# resagent recipe (inherited by resagent.inc):
#
# - /etc/resagent/config.json from config.json.in with the RESAGENT_*_DIR/FILE
#   variables, then RESAGENT_CONFIG_JSON merged over it: any further keys of
#   docs/configuration.md, e.g.
#     RESAGENT_CONFIG_JSON = '{"poll_interval_s": 900, "max_bytes_per_s": 262144,
#                              "reboot_command": "/sbin/reboot"}'
#   checked here, at build time: not JSON, not an object, or a key the agent does not
#   know stops the build naming it (the agent would refuse to start: exit 2).
# - resagent.service with ReadWritePaths= derived from the merged configuration:
#   every folder the agent writes (state_dir, resource_dir, outbox_dir, the pid file's
#   folder), so a folder moved by a variable or by RESAGENT_CONFIG_JSON is writable
#   without being listed a second time. A folder inside another listed one is left out.

RESAGENT_CONFIG_JSON ?= ""

python resagent_install_config() {
    import json
    import os
    import re
    dest = d.getVar('D')
    unpacked = d.getVar('UNPACKDIR_OR_WORKDIR')
    text = open(os.path.join(unpacked, 'config.json.in')).read()
    for var, mark in (('RESAGENT_DEVICE_INFO', '@DEVICE_INFO@'), ('RESAGENT_CA_FILE', '@CA_FILE@'),
                      ('RESAGENT_STATE_DIR', '@STATE_DIR@'), ('RESAGENT_RESOURCE_DIR', '@RESOURCE_DIR@'),
                      ('RESAGENT_OUTBOX_DIR', '@OUTBOX_DIR@'), ('RESAGENT_PLUGIN_DIR', '@PLUGIN_DIR@'),
                      ('RESAGENT_PID_FILE', '@PID_FILE@')):
        text = text.replace(mark, d.getVar(var))
    config = json.loads(text)
    extra = (d.getVar('RESAGENT_CONFIG_JSON') or '').strip()
    if extra:
        try:
            more = json.loads(extra)
        except ValueError as e:
            bb.fatal('RESAGENT_CONFIG_JSON is not JSON: %s' % e)
        if not isinstance(more, dict):
            bb.fatal('RESAGENT_CONFIG_JSON must be a JSON object, like \'{"poll_interval_s": 900}\'')
        # The agent's own key table (src/config/keys.rs), read from the sources built.
        known = set()
        keys_rs = os.path.join(d.getVar('S') or '', 'src/config/keys.rs')
        if os.path.exists(keys_rs):
            table = open(keys_rs).read()
            known = set(re.findall(r'(?:Key = \w+\(|identity\()\s*"([^"]+)"', table))
            known |= set(re.findall(r'name: "([^"]+)"', table))
        unknown = sorted(k for k in more if known and k not in known)
        if unknown:
            bb.fatal('RESAGENT_CONFIG_JSON: %s not a configuration key of this resagent '
                     '(docs/configuration.md); the agent would refuse to start with it'
                     % ', '.join('`%s` is' % k for k in unknown))
        config.update(more)
    folder = dest + d.getVar('sysconfdir') + '/resagent'
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, 'config.json')
    with open(path, 'w') as f:
        json.dump(config, f, indent=2)
        f.write('\n')
    os.chmod(path, 0o644)

    # Every folder the agent writes, from the configuration as merged.
    wanted = [config.get(k) for k in ('state_dir', 'resource_dir', 'outbox_dir')]
    if config.get('pid_file'):
        wanted.append(os.path.dirname(config['pid_file']))
    paths = []
    for p in wanted:
        if not isinstance(p, str) or not p.startswith('/'):
            continue
        p = os.path.normpath(p)
        if p not in paths:
            paths.append(p)
    inside = lambda p, q: p != q and p.startswith(q.rstrip('/') + '/')
    paths = [p for p in paths if not any(inside(p, q) for q in paths)]

    if bb.utils.contains('DISTRO_FEATURES', 'systemd', True, False, d):
        unit = open(os.path.join(unpacked, 'resagent.service')).read()
        unit = (unit.replace('@BINDIR@', d.getVar('bindir'))
                    .replace('@SYSCONFDIR@', d.getVar('sysconfdir'))
                    .replace('@RW_PATHS@', ' '.join(paths)))
        folder = dest + d.getVar('systemd_system_unitdir')
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, 'resagent.service')
        with open(path, 'w') as f:
            f.write(unit)
        os.chmod(path, 0o644)
}
resagent_install_config[doc] = "Writes config.json (RESAGENT_CONFIG_JSON merged, keys checked) and resagent.service with ReadWritePaths derived from it"
resagent_install_config[vardeps] += "RESAGENT_CONFIG_JSON RESAGENT_DEVICE_INFO RESAGENT_CA_FILE RESAGENT_STATE_DIR RESAGENT_RESOURCE_DIR RESAGENT_OUTBOX_DIR RESAGENT_PLUGIN_DIR RESAGENT_PID_FILE"
