require resagent-source.inc
require resagent.inc
