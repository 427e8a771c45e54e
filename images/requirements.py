"""Prints the project's requirements (base + the given extras) from pyproject.toml, one per line.

The image builds install these first, in a layer of their own, and the kubetrain sources afterwards with
--no-deps: a source change then rebuilds seconds of layers instead of the whole dependency install.
"""

import sys

import tomllib

project = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = project.get("optional-dependencies", {})
for requirement in project["dependencies"] + [r for name in sys.argv[2:] for r in extras[name]]:
    print(requirement)
