#!/usr/bin/env python3
"""Checks that includes point down the layers (docs/design.md section 1):

    core  <-  kernels  <-  model  <-  infer, optim  <-  train
    comm, data: beside core (they include core only)

A file may include its own folder and the folders listed for it below; no file outside tests/ and
bench/ includes anything under tests/ or bench/. Prints every violation as FILE:LINE: ... and exits 1
if there is one, else prints a one-line summary and exits 0.

usage: check_layers.py [SOURCE_DIR]        (ctest runs it as `layering`)
"""
import os
import re
import sys

# What each layer may include besides itself.
ALLOWED = {
    "core": set(),
    "comm": {"core"},
    "data": {"core"},
    "kernels": {"core"},
    "model": {"core", "comm", "kernels"},
    "infer": {"core", "comm", "kernels", "model"},
    "optim": {"core", "comm", "kernels", "model"},
    "train": {"core", "comm", "data", "kernels", "model", "infer", "optim"},
}
SUFFIXES = (".h", ".cuh", ".cpp", ".cu")
INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
    problems, files, includes = [], 0, 0
    for layer in sorted(ALLOWED):
        for dirpath, _, names in os.walk(os.path.join(root, layer)):
            for name in sorted(names):
                if not name.endswith(SUFFIXES):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root)
                files += 1
                with open(path, encoding="utf-8", errors="replace") as f:
                    for lineno, line in enumerate(f, 1):
                        m = INCLUDE.match(line)
                        if not m or "/" not in m.group(1):
                            continue  # system headers and same-folder includes
                        includes += 1
                        target = m.group(1).split("/")[0]
                        if target in ("tests", "bench"):
                            problems.append(f"{rel}:{lineno}: includes {m.group(1)}: production code must not "
                                            f"depend on {target}/")
                        elif target in ALLOWED and target != layer and target not in ALLOWED[layer]:
                            problems.append(f"{rel}:{lineno}: includes {m.group(1)}: {layer}/ may include only "
                                            f"{', '.join(sorted(ALLOWED[layer] | {layer}))}")
    for p in problems:
        print(p)
    if problems:
        print(f"check_layers: {len(problems)} include(s) point up a layer or into tests/ (see docs/design.md)")
        return 1
    print(f"check_layers: {includes} project includes in {files} files, all pointing down the layers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
