#!/usr/bin/env python3
"""Reference flattener written from FLATTEN.md, for env's differential test.

usage: flatten_ref.py FILE KEYS PREFIX POSTFIX
       flatten_ref.py --batch DIR KEYS PREFIX POSTFIX
Reads FILE with PyYAML's safe_load (the loader the original appliance uses)
and prints the variables as FLATTEN.md describes; missing keys go to stderr.
With --batch, does so for every DIR/*.yml, writing X.yml.out ("ERROR: ..."
if PyYAML or the flattening fails).
"""
import contextlib
import glob
import io
import shlex
import sys

import yaml


def collect(value, name, out):
    if isinstance(value, dict):
        for k, v in value.items():
            collect(v, name + "_" + k if name else k, out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            collect(v, name + "_" + str(i) if name else str(i), out)
        out[name + "_len"] = len(value)
    elif value is None:
        out[name] = ""
    elif isinstance(value, bool):
        out[name] = "true" if value else "false"
    elif isinstance(value, str):
        out[name] = shlex.quote(value.strip())
    else:
        out[name] = value


def flatten_file(path, keys, prefix, postfix):
    with open(path) as f:
        data = yaml.safe_load(f)
    for key in keys.split(","):
        root = ""
        if key == ".":
            value = data
        elif key in data:
            value = data[key]
            root = key.upper() + "_"
        else:
            print("missing: " + key, file=sys.stderr)
            continue
        out = {}
        collect(value, "", out)
        for name in sorted(out):
            print("{}{}{}={}{}".format(prefix, root, name.upper(), out[name], postfix))


def main():
    if sys.argv[1] == "--batch":
        directory, keys, prefix, postfix = sys.argv[2:6]
        for path in sorted(glob.glob(directory + "/*.yml")):
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                    flatten_file(path, keys, prefix, postfix)
                result = out.getvalue()
            except Exception as e:
                result = "ERROR: {}: {}".format(type(e).__name__, e)
            with open(path + ".out", "w") as f:
                f.write(result)
        return
    flatten_file(*sys.argv[1:5])


if __name__ == "__main__":
    main()
