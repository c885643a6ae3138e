"""Oxford-IIIT Pet (37 cat and dog breeds) from its two official archives, or their extracted folders.

data.root holds `images.tar.gz` and `annotations.tar.gz` (fetched from data.url when missing and
data.download allows; read without unpacking), or torchvision's extracted layout,
ROOT/oxford-iiit-pet/images/*.jpg and ROOT/oxford-iiit-pet/annotations/*.txt (used when both
folders are there). The official split: annotations/trainval.txt is the training set (validation is
carved from it, data.val_size), annotations/test.txt the test set. Their lines are
`Image_name CLASS-ID SPECIES BREED-ID`; the class is the breed, the image name without its
trailing `_<number>` (`Abyssinian_12` -> `Abyssinian`, `american_bulldog_3` -> `american_bulldog`),
ordered by CLASS-ID and numbered densely from 0 over the breeds listed, so a subset in the same
layout works (with data.num_classes set to its breed count). Images are decoded once into the
uint8 cache at data.image_size with data.fit, as data=folder decodes them.
"""

from __future__ import annotations

import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from experiments.data.base import ImageData
from experiments.data.fetch import DownloadedSource
from experiments.data.folder import SUFFIXES, ImageSlots, Photos
from experiments.data.folder import stamp as files_stamp
from experiments.errors import DataError

FOLDER = "oxford-iiit-pet"  # torchvision's folder of the extracted archives
SPLITS = ("trainval", "test")
Listing = dict[str, list[tuple[str, int]]]  # split: [(image name, CLASS-ID)]


def breed(image_name: str) -> str:
    return image_name.rsplit("_", 1)[0]


def parse_list(text: str, where: str) -> list[tuple[str, int]]:
    """`Image_name CLASS-ID SPECIES BREED-ID` lines (blank and `#` lines skipped)."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        try:
            rows.append((parts[0], int(parts[1])))
        except (IndexError, ValueError):
            raise DataError(f"{where} line {number} is not `Image_name CLASS-ID SPECIES BREED-ID`: "
                            f"{line.strip()!r}. Replace the file with the official one.") from None
    return rows


def classes_and_labels(listing: Listing) -> tuple[list[str], dict[str, int]]:
    """The breeds listed, in CLASS-ID order, and each breed's dense 0-based label."""
    ids: dict[str, int] = {}
    for rows in listing.values():
        for name, class_id in rows:
            ids.setdefault(breed(name), class_id)
    classes = sorted(ids, key=lambda b: (ids[b], b))
    return classes, {b: i for i, b in enumerate(classes)}


def read_annotations_archive(path: Path) -> Listing:
    texts: dict[str, str] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                split = Path(member.name).stem
                if member.isfile() and member.name == f"annotations/{split}.txt" and split in SPLITS:
                    texts[split] = tar.extractfile(member).read().decode()
    except (tarfile.TarError, EOFError, OSError, zlib.error, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not a readable Oxford-IIIT Pet archive ({err}). Delete it so it "
                        "is downloaded again, or replace it with the official file.") from None
    if missing := [s for s in SPLITS if s not in texts]:
        raise DataError(f"{path} lacks annotations/{missing[0]}.txt: it is not the official "
                        "Oxford-IIIT Pet annotations archive. Delete it or replace it.")
    return {s: parse_list(texts[s], f"{path} (annotations/{s}.txt)") for s in SPLITS}


def read_annotations_folder(folder: Path) -> Listing:
    listing = {}
    for split in SPLITS:
        path = folder / f"{split}.txt"
        if not path.is_file():
            raise DataError(f"{path} is missing: {folder} is not the official annotations folder.")
        listing[split] = parse_list(path.read_text(), str(path))
    return listing


def is_image(name: str) -> bool:
    """The archive's images; the official one also holds a few .mat files among them."""
    return Path(name).suffix.lower() in SUFFIXES


def slots(listing: Listing, size: int, channels: int, fit: str) -> tuple[ImageSlots, list[str]]:
    """Where each listed image goes (trainval trains), with its breed's label; and the breeds."""
    classes, labels = classes_and_labels(listing)
    rows = {new: [(name, labels[breed(name)]) for name, _ in listing[old]]
            for new, old in (("train", "trainval"), ("test", "test"))}
    return ImageSlots(rows, size, channels, fit), classes


def read_images_archive(path: Path, images: ImageSlots, classes: list[str]) -> ImageData:
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:  # one sequential pass
                parts = Path(member.name).parts
                if member.isfile() and len(parts) == 2 and parts[0] == "images" and images.wants(parts[1]):
                    images.put(parts[1], tar.extractfile(member), f"{path} ({member.name})")
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise DataError(f"{path} is not a readable Oxford-IIIT Pet archive ({err}). Delete it so it "
                        "is downloaded again, or replace it with the official file.") from None
    return images.data(str(path), classes)


@dataclass(kw_only=True)
class Pets(Photos, DownloadedSource):
    """data=pets: `files` maps images and annotations to {name, md5}, fetched from `url` + name."""

    names: ClassVar[tuple[str, ...]] = ("pets",)

    files: dict[str, dict[str, str | None]]

    @property
    def extracted(self) -> Path:
        return Path(self.root) / FOLDER

    def check_classes(self, classes: list[str]) -> None:
        if len(classes) != self.num_classes:
            raise DataError(f"the annotations in {self.root} list {len(classes)} breeds, but "
                            f"data.num_classes={self.num_classes}: for a subset of Oxford-IIIT Pet "
                            f"set data.num_classes={len(classes)}.")

    def load(self) -> ImageData:
        folder = self.extracted
        if (folder / "images").is_dir() and (folder / "annotations").is_dir():
            return self.load_folder(folder)

        def build() -> ImageData:  # the official archives (no stamp: they never change, as CIFAR's)
            paths = self.fetch_files(self.files, f"extract them there as torchvision does "
                                     f"({folder}/images and {folder}/annotations)")
            listing = read_annotations_archive(paths["annotations"])
            self.check_classes(classes_and_labels(listing)[0])  # before the arrays are allocated
            images, classes = slots(listing, self.image_size, self.channels, self.fit)
            return read_images_archive(paths["images"], images, classes)

        return self.cached(build)

    def load_folder(self, folder: Path) -> ImageData:
        listing = read_annotations_folder(folder / "annotations")
        classes, labels = classes_and_labels(listing)
        self.check_classes(classes)
        files = {p.stem: p for p in (folder / "images").iterdir() if p.is_file() and is_image(p.name)}
        listed = [(files[name], labels[breed(name)]) for rows in listing.values()
                  for name, _ in rows if name in files]
        annotations = [(folder / "annotations" / f"{s}.txt", -1) for s in SPLITS]

        def build() -> ImageData:
            images, _ = slots(listing, self.image_size, self.channels, self.fit)
            for path, _ in listed:
                images.put(path.name, path, str(path))
            return images.data(str(folder / "images"), classes)

        return self.cached(build, files_stamp(Path(self.root), listed + annotations, classes))
