"""``--help`` in a fraction of a second: the text the parser printed last time, kept while nothing it depends on
changed (hf_mkcd's sources, the transformers and timm versions, Python, the terminal width).

Building the parser needs ``transformers.TrainingArguments``, which imports torch: several seconds on an idle
machine, half a minute on a loaded one. This module imports neither; the first ``--help`` after a change builds
the parser and fills the cache (``$XDG_CACHE_HOME/hf_mkcd/help``).
"""

import hashlib
import importlib.metadata
import importlib.util
import os
import sys


def help_cache_path(script: str) -> str:
    spec = importlib.util.find_spec("hf_mkcd")  # found, not imported
    root = spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else ""
    h = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if name.endswith(".py"):
                st = os.stat(os.path.join(folder, name))
                h.update(f"{folder}/{name}:{st.st_mtime_ns}:{st.st_size};".encode())
    for package in ("transformers", "timm"):
        try:
            h.update(importlib.metadata.version(package).encode())
        except importlib.metadata.PackageNotFoundError:
            pass
    h.update(f"{sys.version}|{os.environ.get('COLUMNS', '')}|{os.path.abspath(sys.argv[0])}".encode())
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hf_mkcd", "help")
    return os.path.join(cache, f"{script}-{h.hexdigest()[:16]}.txt")


def print_cached_help(script: str, argv) -> bool:
    """Print the cached ``--help`` of ``script`` if asked for and current; True when printed."""
    if not {"-h", "--help"} & set(argv):
        return False
    path = help_cache_path(script)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        sys.stdout.write(f.read())
    return True
