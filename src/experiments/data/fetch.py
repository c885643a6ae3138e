"""Official dataset files: downloaded into data.root once, checked against their MD5.

The checksum is torchvision's `calculate_md5`. The download is written here rather than with
torchvision's `download_url`, which (read in torchvision 0.29) opens the URL without a timeout, so a
stalled server hangs the job (data.download_timeout_s bounds it here); writes straight to the
final path, so a killed download leaves a partial file that looks complete on the next run
(here: a .part file renamed only once complete and checksummed); keeps a file that fails its
checksum; and on a failed https download silently retries over plain http.
"""

from __future__ import annotations

import logging
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from torchvision.datasets.utils import calculate_md5

from experiments.data.cache import CachedSource
from experiments.errors import DataError

log = logging.getLogger(__name__)


def check_md5(path: Path, expected: str | None) -> None:
    """Nothing when `expected` is None (data.md5=null skips the check)."""
    if expected and (actual := calculate_md5(path)) != expected:
        raise DataError(f"{path} has checksum {actual}, expected {expected}: the file is corrupt "
                        "or incomplete. Delete it so it is downloaded again.")


class DownloadFailed(DataError):
    """A missing file that could not be downloaded; `reason` says why (the network's error)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def download(url: str, dest: Path, md5: str | None, timeout_s: float) -> None:
    """Stream `url` to `dest` through a temporary file, so a broken download never looks complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    log.info("downloading %s -> %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
        check_md5(part, md5)
    except (urllib.error.URLError, OSError) as err:
        part.unlink(missing_ok=True)
        raise DownloadFailed(
            f"{dest} is missing and downloading it from {url} failed ({err}). Either download "
            f"that file yourself and put it at {dest}, pass data.root=DIR for a folder that "
            "holds it, or try experiment=smoke (synthetic data, no download).",
            f"downloading {url} failed: {err}") from None
    except DataError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)


def fetch(url: str, md5: str | None, root: str | Path, allow_download: bool, timeout_s: float) -> Path:
    """The file of `url` under `root`, downloaded (and checksummed) when it is not there yet."""
    path = Path(root) / Path(urlparse(url).path).name
    if path.exists():
        check_md5(path, md5)
    elif allow_download:
        download(url, path, md5, timeout_s)
    else:
        raise DataError(f"{path} is missing and data.download=false. Put the official file "
                        f"({url}) there, or pass data.root=DIR for a folder that holds it.")
    return path


@dataclass(kw_only=True)
class DownloadedSource(CachedSource):
    """A source whose official files are fetched from `url` into data.root, then decoded once."""

    url: str
    download: bool  # false: a missing file stops the job instead
    download_timeout_s: float

    def fetch(self, url: str, md5: str | None) -> Path:
        return fetch(url, md5, self.root, self.download, self.download_timeout_s)

    def fetch_files(self, files: dict[str, dict[str, str | None]], alternative: str = "",
                    root: Path | None = None) -> dict[str, Path]:
        """Each of `files` ({key: {name, md5}}, fetched from `url` + name) under `root`
        (default: data.root).

        Without them (and without network, or with data.download=false) the job stops with one
        message that names every missing file, its URL, where to put it and `alternative` (e.g.
        the extracted folders that stand in for the archives)."""
        root = Path(root or self.root)
        missing = [f["name"] for f in files.values() if not (root / f["name"]).exists()]
        try:
            return {key: fetch(self.url + f["name"], f.get("md5"), root, self.download,
                               self.download_timeout_s) for key, f in files.items()}
        except DataError as err:
            if not missing or not any(not (root / name).exists() for name in missing):
                raise  # a corrupt file, not a missing one: its own message says what to do
            urls = ", ".join(self.url + name for name in missing)
            raise DataError(
                f"data={self.name} needs {', '.join(missing)} in {root}, and "
                + ("data.download=false" if not self.download else getattr(err, "reason", str(err)))
                + f". Download the official files ({urls}) yourself and put them in {root}"
                + (f", or {alternative}" if alternative else "")
                + "; or pass data.root=DIR for a folder that holds them, or try experiment=smoke "
                "(synthetic data, no download).") from None
