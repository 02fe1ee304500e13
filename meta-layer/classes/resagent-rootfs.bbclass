# resagent-rootfs.bbclass: completes resagent's configuration in an image's root file
# system, after every package is installed (a rootfs post-process step). Inherited
# globally by the layer (conf/layer.conf); it acts only in images that hold resagent's
# configuration file, and changes nothing else.
#
#   - plugin_config: each plugin recipe's RESAGENT_PLUGIN_CONFIG (resagent-plugin.bbclass
#     installs it under ${datadir}/resagent/plugin-config.d/) is merged into the config's
#     "plugin_config"; an entry the image's config already has wins.
#   - RESAGENT_PIN_PLUGINS = "1" (in the image recipe, local.conf or the distro): the
#     config's "plugin_sha256" is set to the SHA-256 of every plugin in the image's
#     plugin_dir — the stripped files that ship — so a plugin altered or added on the
#     device never runs (resagent fails closed), and no one copies a hash by hand.

RESAGENT_PIN_PLUGINS ??= "0"
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
    if bb.utils.to_boolean(d.getVar('RESAGENT_PIN_PLUGINS')):
        plugin_dir = config.get('plugin_dir') or (d.getVar('libdir') + '/resagent/plugins')
        folder = rootfs + plugin_dir
        pins = {}
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if name.endswith('.so'):
                with open(os.path.join(folder, name), 'rb') as f:
                    pins[name] = hashlib.sha256(f.read()).hexdigest()
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
