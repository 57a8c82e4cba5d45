"""Decode-once cache: decoded image arrays stored as ``.npy`` and loaded memory-mapped.

The key hashes the loader's name and options and every source file's path, size and mtime, so
adding, removing or touching an image rebuilds the entry. ``MAML_EXT_CACHE`` sets the directory
(default ``~/.cache/maml_ext``); ``MAML_EXT_CACHE=0`` turns the disk cache off. Within a process
decoded arrays are also kept in memory, so building several task families costs one decode.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

ENV = "MAML_EXT_CACHE"
_memory: dict[str, np.ndarray] = {}


def cache_dir() -> Path | None:
    value = os.environ.get(ENV)
    if value is not None and value.strip().lower() in ("0", "off", "false", "no", ""):
        return None
    return Path(value) if value else Path.home() / ".cache" / "maml_ext"


def key(name: str, options: dict, files: Iterable[Path]) -> str:
    h = hashlib.sha1(json.dumps([name, options], sort_keys=True, default=str).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"{name}-{h.hexdigest()[:16]}"


def cached_array(cache_key: str, decode: Callable[[], np.ndarray]) -> np.ndarray:
    """``decode()``'s result, from memory, from ``<cache dir>/<key>.npy`` (memory-mapped), or
    decoded now and written there atomically."""
    if cache_key in _memory:
        return _memory[cache_key]
    directory = cache_dir()
    path = directory / f"{cache_key}.npy" if directory is not None else None
    if path is not None and path.is_file():
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError):  # a truncated or foreign file: decode again
            array = None
        if array is not None:
            _memory[cache_key] = array
            return array
    array = decode()
    if path is not None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, array)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache directory only costs decoding again next time
    _memory[cache_key] = array
    return array
