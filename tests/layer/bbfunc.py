#!/usr/bin/env python3
"""Runs one `python NAME() { ... }` function of a .bbclass outside bitbake, with the
variables given as JSON: what tests/meta_layer.rs uses to exercise the layer's build-
and rootfs-time Python (bitbake itself only parses here; nothing is built).

usage: bbfunc.py CLASS FUNCTION VARS_JSON
A bb.fatal() ends with exit status 3 and its message on stderr."""
import json
import sys
import textwrap
import types


class Fatal(Exception):
    pass


def fatal(msg):
    raise Fatal(msg)


def to_boolean(v):
    return str(v).strip().lower() in ("1", "yes", "y", "true", "t", "on")


def contains(var, item, yes, no, d):
    return yes if item in (d.getVar(var) or "").split() else no


bb = types.ModuleType("bb")
bb.fatal = fatal
bb.note = lambda *a: print("NOTE:", *a)
bb.utils = types.SimpleNamespace(to_boolean=to_boolean, contains=contains)


class Data:
    def __init__(self, values):
        self.values = values

    def getVar(self, name):
        return self.values.get(name)


def function_body(path, name):
    lines = open(path).read().splitlines()
    start = lines.index("python %s() {" % name) + 1
    end = next(i for i in range(start, len(lines)) if lines[i] == "}")
    return textwrap.dedent("\n".join(lines[start:end]))


def main():
    path, name, values = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    code = "def %s(d):\n%s\n" % (name, textwrap.indent(function_body(path, name), "    "))
    scope = {"bb": bb}
    exec(code, scope)
    try:
        scope[name](Data(values))
    except Fatal as e:
        print("FATAL: %s" % e, file=sys.stderr)
        sys.exit(3)


main()
