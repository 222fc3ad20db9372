"""Files: atomic output (a reader never sees a half-written file under its final name) and content hashes.

Every stage writes through these (checkpoints, configs, model cards,
manifests, summaries): the data goes to a temporary file in the same folder,
which is renamed onto the final name only when complete, and removed if
writing fails or is interrupted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def check_new_outputs(folder: str | os.PathLike[str], names: tuple[str, ...], force: bool) -> None:
    """Refuse to replace an earlier run's results in ``folder`` unless ``force`` (then each must be replaceable)."""
    for name in names:
        if check_replaceable(Path(folder) / name).exists() and not force:
            raise FileExistsError(f"{Path(folder) / name} already exists: choose another --out or pass --force")


def check_replaceable(path: str | os.PathLike[str]) -> Path:
    """``path`` if it is absent or a regular file; an ``OSError`` for a device, symlink, folder or pipe.

    Renaming a finished temporary file over the final name is right for regular files only: over
    ``/dev/...`` it would replace the device node, over a symlink the link instead of its target.
    """
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    if stat.S_ISREG(mode):
        return path
    kind = ("a symbolic link" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a pipe or socket")
    raise OSError(f"refusing to write {path}: it is {kind}, not a regular file")


def safe_file_stem(text: str, fallback: str = "unnamed") -> str:
    """A name from a card, manifest or source made safe as one path component (no separators, no ``..``)."""
    cleaned = re.sub(r"[^\w.+-]+", "_", str(text), flags=re.ASCII).strip("._")
    return cleaned[:64] or fallback


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` (mode per umask, not 0600).

    Raises:
        OSError: ``path`` exists and is not a regular file (see ``check_replaceable``).
    """
    path = check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _default_mode())
        check_replaceable(path)  # it may have appeared while the data was written
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
