"""Tiny ImageNet (200 ImageNet classes, 64 px) from the official tiny-imagenet-200.zip (read without
unpacking) or its extracted folder ROOT/tiny-imagenet-200/, decoded once into the uint8 cache.

The layout: wnids.txt (the 200 class ids), words.txt (`wnid<TAB>names` for all of ImageNet),
train/<wnid>/images/*.JPEG (500 a class) and val/images/*.JPEG with val/val_annotations.txt
(`file<TAB>wnid<TAB>box`). The official val set (50 a class) is the test set here (the official
test set has no labels); validation is carved from train. Classes: the wnids in sorted order (as
an image-folder reader orders them), named by the first name words.txt gives them.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar

from experiments.data.base import ImageData
from experiments.data.fetch import DownloadedSource
from experiments.data.folder import SUFFIXES, ImageSlots, Photos
from experiments.data.folder import stamp as files_stamp
from experiments.errors import DataError

FOLDER = "tiny-imagenet-200"


class Tree:
    """The dataset's files, in the zip or the extracted folder, by their path under FOLDER/."""

    def __init__(self, zip_path: Path | None, folder: Path | None):
        self.zip = zipfile.ZipFile(zip_path) if zip_path else None
        self.folder = folder
        self.where = str(zip_path or folder)
        if self.zip:
            self.names = [n.removeprefix(f"{FOLDER}/") for n in self.zip.namelist()
                          if n.startswith(f"{FOLDER}/") and not n.endswith("/")]
        else:
            self.names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]

    def text(self, name: str) -> str:
        try:
            if self.zip:
                return self.zip.read(f"{FOLDER}/{name}").decode()
            return (self.folder / name).read_text()
        except (KeyError, FileNotFoundError):
            raise DataError(f"{self.where} lacks {FOLDER}/{name}: it is not the official Tiny "
                            "ImageNet layout.") from None

    def open(self, name: str):
        return self.zip.open(f"{FOLDER}/{name}") if self.zip else self.folder / name


def read_tiny_imagenet(tree: Tree, size: int, channels: int, fit: str, num_classes: int) -> ImageData:
    wnids = sorted({line.strip() for line in tree.text("wnids.txt").splitlines() if line.strip()})
    if len(wnids) != num_classes:
        raise DataError(f"{tree.where}: wnids.txt lists {len(wnids)} classes, but "
                        f"data.num_classes={num_classes}: for a subset set data.num_classes={len(wnids)}.")
    words = dict(line.split("\t", 1) for line in tree.text("words.txt").splitlines() if "\t" in line)
    classes = [words.get(w, w).split(",")[0].strip() for w in wnids]
    label = {w: i for i, w in enumerate(wnids)}
    images = sorted(n for n in tree.names if PurePosixPath(n).suffix.lower() in SUFFIXES)
    train = [(n, label[parts[1]]) for n in images if len(parts := n.split("/")) == 4
             and parts[0] == "train" and parts[2] == "images" and parts[1] in label]
    val = {}
    for line in tree.text("val/val_annotations.txt").splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[1] in label:
            val[f"val/images/{fields[0]}"] = label[fields[1]]
        elif len(fields) >= 2:
            raise DataError(f"{tree.where}: val/val_annotations.txt names class {fields[1]}, which "
                            "wnids.txt does not list.")
    present = set(images)
    test = [(n, y) for n, y in val.items() if n in present]  # in val_annotations.txt's order
    if not train or len(test) != len(val):
        raise DataError(f"{tree.where} has {len(train)} training images and {len(test)} of the "
                        f"{len(val)} validation images val/val_annotations.txt lists: it is not the "
                        "official Tiny ImageNet layout.")
    # ImageSlots is keyed by file stems: unique across the dataset (n01443537_0, val_0, ...)
    slots = ImageSlots({"train": [(PurePosixPath(n).stem, y) for n, y in train],
                        "test": [(PurePosixPath(n).stem, y) for n, y in test]}, size, channels, fit)
    for name, _ in train + test:
        try:
            file = tree.open(name)
            slots.put(PurePosixPath(name).name, file, f"{tree.where} ({name})")
        except (zipfile.BadZipFile, zlib.error) as err:
            raise DataError(f"{tree.where} is not a readable zip file ({err}). Delete it so it is "
                            "downloaded again.") from None
    return slots.data(tree.where, classes)


@dataclass(kw_only=True)
class TinyImagenet(Photos, DownloadedSource):
    """data=tiny_imagenet: `files` maps archive to {name, md5}, fetched from `url` + name."""

    names: ClassVar[tuple[str, ...]] = ("tiny_imagenet",)

    files: dict[str, dict[str, str | None]]

    def load(self) -> ImageData:
        folder = Path(self.root) / FOLDER

        def read(tree: Tree) -> ImageData:
            return read_tiny_imagenet(tree, self.image_size, self.channels, self.fit, self.num_classes)

        if folder.is_dir():
            tree = Tree(None, folder)
            listed = [(folder / n, -1) for n in sorted(tree.names)]
            return self.cached(lambda: read(tree), files_stamp(folder, listed, []))

        def build() -> ImageData:  # the official zip: no stamp (it never changes, as CIFAR's)
            path = self.fetch_files(self.files, f"extract it there ({folder}/)")["archive"]
            try:
                tree = Tree(path, None)
            except (zipfile.BadZipFile, OSError) as err:
                raise DataError(f"{path} is not a readable zip file ({err}). Delete it so it is "
                                "downloaded again, or replace it with the official file.") from None
            try:
                return read(tree)
            finally:
                tree.zip.close()

        return self.cached(build)
