"""Writing files so that no reader (or a resumed job) ever sees half of one."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path: Path):
    """Yield a temporary path beside `path`; when the block succeeds, rename it over `path`.

    A rename is atomic on one filesystem: a killed writer leaves the old file (or none), and two
    concurrent writers leave one complete file. The temporary file is removed on failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
