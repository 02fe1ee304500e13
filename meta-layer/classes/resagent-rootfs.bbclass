# resagent-rootfs.bbclass: completes resagent's configuration in an image's root file
# system, after every package is installed (a rootfs post-process step). Inherited
# globally by the layer (conf/layer.conf); it acts only in images that hold resagent's
# configuration file, and changes nothing else.
#
#   - plugin_config: each plugin recipe's RESAGENT_PLUGIN_CONFIG (resagent-plugin.bbclass
#     installs it under ${datadir}/resagent/plugin-config.d/) is merged into the config's
#     "plugin_config"; an entry the image's config already has wins.
#   - plugin_only: each plugin recipe's RESAGENT_PLUGIN_CLAIMS (installed under
#     ${datadir}/resagent/plugin-only.d/) is added to the config's "plugin_only", so a
#     `*.swu` never reaches the default installer, even when its plugin does not load.
#   - RESAGENT_PIN_PLUGINS = "1" (the default; "0" in the image recipe, local.conf or the
#     distro turns it off): the config's "plugin_sha256" is set to the SHA-256 of every
#     plugin in the image's plugin_dir — the stripped files that ship — so a plugin
#     altered or added on the device never runs (resagent fails closed), and no one
#     copies a hash by hand. The agent's own checks are applied here first: a plugin
#     that is a symbolic link, not a regular file, or writable by group or others stops
#     the build with the reason (the device would refuse it and fail every download -9).
#     plugin_dir is resolved inside the image (an absolute link points into the image,
#     not the build host); a plugin_dir that exists but yields no plugin stops the build.
#     An image with no plugin_dir pins none: no plugin may be added on the device.

RESAGENT_PIN_PLUGINS ??= "1"
# The configuration file inside the image.
RESAGENT_IMAGE_CONFIG ??= "${sysconfdir}/resagent/config.json"

python resagent_rootfs_config() {
    import hashlib
    import json
    import os
    rootfs = d.getVar('IMAGE_ROOTFS')
    config_path = rootfs + d.getVar('RESAGENT_IMAGE_CONFIG')
    if not os.path.isfile(config_path):
        return
    with open(config_path) as f:
        try:
            config = json.load(f)
        except ValueError as e:
            bb.fatal('%s is not JSON: %s' % (d.getVar('RESAGENT_IMAGE_CONFIG'), e))
    entries = dict(config.get('plugin_config') or {})
    fragments = rootfs + d.getVar('datadir') + '/resagent/plugin-config.d'
    if os.path.isdir(fragments):
        for name in sorted(os.listdir(fragments)):
            if name.endswith('.json'):
                with open(os.path.join(fragments, name)) as f:
                    for key, value in json.load(f).items():
                        entries.setdefault(key, value)
    if entries:
        config['plugin_config'] = entries
    only = list(config.get('plugin_only') or [])
    claims = rootfs + d.getVar('datadir') + '/resagent/plugin-only.d'
    if os.path.isdir(claims):
        for name in sorted(os.listdir(claims)):
            with open(os.path.join(claims, name)) as f:
                for pattern in f.read().split():
                    if pattern not in only:
                        only.append(pattern)
    if only:
        config['plugin_only'] = only

    def inside(path):
        # `path` (absolute, as the device sees it) resolved inside the image root: an
        # absolute link points into the image, never at the build host.
        parts = [p for p in path.split('/') if p]
        real = ''
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == '..':
                real = real.rsplit('/', 1)[0]
                continue
            if part == '.':
                continue
            candidate = real + '/' + part
            if os.path.islink(rootfs + candidate):
                hops += 1
                if hops > 40:
                    bb.fatal('resagent: %s: too many symbolic links inside the image' % path)
                target = os.readlink(rootfs + candidate)
                parts = [p for p in target.split('/') if p] + parts
                if target.startswith('/'):
                    real = ''
                continue
            real = candidate
        return rootfs + real

    if bb.utils.to_boolean(d.getVar('RESAGENT_PIN_PLUGINS')):
        import stat
        plugin_dir = config.get('plugin_dir') or (d.getVar('libdir') + '/resagent/plugins')
        folder = inside(plugin_dir)
        pins = {}
        exists = os.path.isdir(folder)
        for name in sorted(os.listdir(folder)) if exists else []:
            if not name.endswith('.so'):
                continue
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                bb.fatal('resagent: plugin %s/%s is a symbolic link; the agent refuses it (install the file itself)' % (plugin_dir, name))
            if not stat.S_ISREG(st.st_mode):
                bb.fatal('resagent: plugin %s/%s is not a regular file; the agent refuses it' % (plugin_dir, name))
            if st.st_mode & 0o022:
                bb.fatal('resagent: plugin %s/%s is writable by group or others (mode %o); the agent refuses it' % (plugin_dir, name, st.st_mode & 0o7777))
            with open(path, 'rb') as f:
                pins[name] = hashlib.sha256(f.read()).hexdigest()
        if exists and not pins:
            bb.fatal('resagent: RESAGENT_PIN_PLUGINS is on but %s in the image holds no plugin to pin' % plugin_dir)
        config['plugin_sha256'] = pins
        bb.note('resagent: pinned %d plugin(s): %s' % (len(pins), ' '.join(sorted(pins))))
    tmp = config_path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write('\n')
    os.chmod(tmp, 0o644)
    os.replace(tmp, config_path)
}
resagent_rootfs_config[doc] = "Merges plugin recipes' plugin_config into the image's resagent config; pins the plugins when RESAGENT_PIN_PLUGINS = 1"
resagent_rootfs_config[vardeps] += "RESAGENT_PIN_PLUGINS RESAGENT_IMAGE_CONFIG"

# Only image recipes run ROOTFS_POSTPROCESS_COMMAND; for every other recipe this is an
# unused variable.
ROOTFS_POSTPROCESS_COMMAND:append = " resagent_rootfs_config"
