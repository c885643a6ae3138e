"""Oxford 102 Flowers from its official files: 102flowers.tgz (jpg/image_NNNNN.jpg, read without
unpacking) or its extracted jpg/ folder, imagelabels.mat (labels 1..102) and setid.mat (trnid,
valid, tstid: 1-based image numbers). In data.root, or torchvision's ROOT/flowers-102/.

The official train (trnid) and val (valid) sets, 10 images a class each, together are the training
set here, and validation is carved from them (data.val_size) as for every dataset; tstid (6149
images) is the test set. Class names are torchvision's. Images are decoded once into the uint8
cache at data.image_size with data.fit, as data=folder decodes them.
"""

from __future__ import annotations

import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from experiments.data.base import ImageData
from experiments.data.fetch import DownloadedSource
from experiments.data.folder import ImageSlots, Photos
from experiments.data.folder import stamp as files_stamp
from experiments.errors import DataError

FOLDER = "flowers-102"  # torchvision's folder
NUM_CLASSES = 102


def class_names() -> list[str]:
    from torchvision.datasets import Flowers102  # its list of the 102 names

    return list(Flowers102.classes)


def read_mat(path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat  # here: scipy only when SVHN or Flowers-102 is read

    try:
        return np.asarray(loadmat(path, squeeze_me=True)[key], dtype=np.int64).reshape(-1)
    except (OSError, ValueError, KeyError, TypeError, NotImplementedError) as err:
        raise DataError(f"{path} is not a readable Flowers-102 .mat file with {key!r} ({err}). "
                        "Delete it so it is downloaded again, or replace it with the official file.") from None


def listing(labels_path: Path, setid_path: Path) -> dict[str, list[tuple[str, int]]]:
    """{"train": [(image stem, label)], "test": [...]}: trnid and valid train, tstid tests."""
    labels = read_mat(labels_path, "labels")
    if len(labels) and not (1 <= labels.min() and labels.max() <= NUM_CLASSES):
        raise DataError(f"{labels_path} has labels outside 1..{NUM_CLASSES}: it is not the official file.")
    ids = {key: read_mat(setid_path, key) for key in ("trnid", "valid", "tstid")}
    if any(len(v) and not (1 <= v.min() and v.max() <= len(labels)) for v in ids.values()):
        raise DataError(f"{setid_path} names images that {labels_path} has no label for: they are "
                        "not the official pair of files.")

    def rows(*keys: str) -> list[tuple[str, int]]:
        return [(f"image_{i:05d}", int(labels[i - 1]) - 1) for k in keys for i in ids[k].tolist()]

    return {"train": rows("trnid", "valid"), "test": rows("tstid")}


def read_images_archive(path: Path, images: ImageSlots) -> ImageData:
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:  # one sequential pass
                parts = Path(member.name).parts
                if member.isfile() and len(parts) == 2 and parts[0] == "jpg" and images.wants(parts[1]):
                    images.put(parts[1], tar.extractfile(member), f"{path} ({member.name})")
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise DataError(f"{path} is not a readable Flowers-102 archive ({err}). Delete it so it "
                        "is downloaded again, or replace it with the official file.") from None
    return images.data(str(path), class_names())


@dataclass(kw_only=True)
class Flowers102(Photos, DownloadedSource):
    """data=flowers102: `files` maps images, labels and setid to {name, md5}, fetched from
    `url` + name."""

    names: ClassVar[tuple[str, ...]] = ("flowers102",)

    files: dict[str, dict[str, str | None]]

    def load(self) -> ImageData:
        base = Path(self.root) / FOLDER if (Path(self.root) / FOLDER).is_dir() else Path(self.root)
        jpg = base / "jpg"
        alternative = f"extract {self.files['images']['name']} there ({jpg}/)"
        if not jpg.is_dir():  # the official archive: no stamp (it never changes, as CIFAR's)
            def build_from_archive() -> ImageData:
                paths = self.fetch_files(self.files, alternative, base)
                return read_images_archive(paths["images"], self.slots(paths))

            return self.cached(build_from_archive)
        paths = self.fetch_files({k: f for k, f in self.files.items() if k != "images"}, alternative, base)
        files = sorted(p for p in jpg.iterdir() if p.suffix.lower() == ".jpg")

        def build_from_folder() -> ImageData:
            images = self.slots(paths)
            for path in files:
                if images.wants(path.name):
                    images.put(path.name, path, str(path))
            return images.data(str(jpg), class_names())

        listed = [(p, -1) for p in [*files, paths["labels"], paths["setid"]]]
        return self.cached(build_from_folder, files_stamp(base, listed, []))

    def slots(self, paths: dict[str, Path]) -> ImageSlots:
        return ImageSlots(listing(paths["labels"], paths["setid"]), self.image_size, self.channels,
                          self.fit)
