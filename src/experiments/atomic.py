"""Writing files so that no reader (or a resumed job) ever sees half of one."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from experiments.errors import DiskFull, out_of_space

# torch.save reports a failed write as "PytorchStreamWriter failed writing file ...: file write
# failed", without the errno: with less than this left on the filesystem, a full disk is the cause
NEARLY_FULL = 16 * 2**20


@contextmanager
def atomic_write(path: Path):
    """Yield a temporary path beside `path`; when the block succeeds, rename it over `path`.

    A rename is atomic on one filesystem: a killed writer leaves the old file (or none), and two
    concurrent writers leave one complete file. The temporary file is removed on failure; a
    failure for want of space is raised as a DiskFull naming `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception as err:
        if out_of_space(err) or ("write failed" in str(err) and nearly_full(path.parent)):
            raise DiskFull(path) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)


def nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < NEARLY_FULL
    except OSError:
        return False
