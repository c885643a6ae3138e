"""The photo datasets (data=pets, svhn, stl10, flowers102, tiny_imagenet) on tiny files written in
each dataset's official layout (the real ones cannot be downloaded here): classes, labels, the
official split, and what a job says when the files are missing."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.data import load_splits
from experiments.errors import DataError
from support.jobs import run_here

# (breed as the image names spell it, CLASS-ID, SPECIES: 1 cat, 2 dog): a subset of the 37
PET_BREEDS = [("Abyssinian", 1, 1), ("american_bulldog", 2, 2), ("Bengal", 6, 1), ("yorkshire_terrier", 37, 2)]
COLOURS = [(220, 30, 30), (30, 220, 30), (30, 30, 220), (220, 220, 30), (30, 220, 220)]


def jpeg(colour, size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def pet_listing(breeds, trainval: int, test: int) -> dict[str, list[str]]:
    """Image names per split: trainval images numbered 1..trainval, test ones after them."""
    lines = {"trainval": [], "test": []}
    for b, class_id, species in breeds:
        for split, numbers in (("trainval", range(1, trainval + 1)),
                               ("test", range(trainval + 1, trainval + test + 1))):
            lines[split] += [f"{b}_{n} {class_id} {species} 1" for n in numbers]
    return lines


def write_pets(root: Path, breeds=PET_BREEDS, trainval: int = 3, test: int = 2,
               extracted: bool = False) -> dict[str, list[str]]:
    """The two official archives (or their extracted folders): each breed's images in its colour,
    a .mat file among the images as in the official archive, and the split lists."""
    lines = pet_listing(breeds, trainval, test)
    images = {f"{line.split()[0]}.jpg": jpeg(COLOURS[i % len(COLOURS)])
              for i, (b, _, _) in enumerate(breeds) for split in lines.values()
              for line in split if line.startswith(f"{b}_")}
    images["Abyssinian_100.mat"] = b"MATLAB 5.0 MAT-file, not an image"
    annotations = {f"{split}.txt": ("\n".join(rows) + "\n").encode() for split, rows in lines.items()}
    annotations["list.txt"] = b"#Image CLASS-ID SPECIES BREED ID\n"
    root.mkdir(parents=True, exist_ok=True)
    if extracted:
        for folder, files in (("images", images), ("annotations", annotations)):
            (root / "oxford-iiit-pet" / folder).mkdir(parents=True, exist_ok=True)
            for name, payload in files.items():
                (root / "oxford-iiit-pet" / folder / name).write_bytes(payload)
    else:
        for archive, folder, files in (("images.tar.gz", "images", images),
                                       ("annotations.tar.gz", "annotations", annotations)):
            with tarfile.open(root / archive, "w:gz") as tar:
                for name, payload in files.items():
                    add(tar, f"{folder}/{name}", payload)
    return lines


def pets_cfg(compose_cfg, root, *extra):
    return compose_cfg(["data=pets", f"data.root={root}", "data.files.images.md5=null",
                        "data.files.annotations.md5=null", "data.image_size=16",
                        f"data.num_classes={len(PET_BREEDS)}", *extra]).data


def mean_colour(images: torch.Tensor) -> np.ndarray:
    return images.float().mean(dim=(2, 3)).numpy()


def check_colours(split, classes):
    """Each image is its breed's colour: the labels follow the images."""
    for colour, label in zip(mean_colour(split.images), split.labels.tolist()):
        assert np.abs(colour - COLOURS[label]).max() < 12, (classes[label], colour)


@pytest.mark.parametrize("extracted", [False, True], ids=["archives", "extracted"])
def test_pets_reads_the_official_split_and_breeds(tmp_path, compose_cfg, extracted):
    write_pets(tmp_path, extracted=extracted)
    splits = load_splits(pets_cfg(compose_cfg, tmp_path, "data.val_size=2"))
    assert splits.classes == ["Abyssinian", "american_bulldog", "Bengal", "yorkshire_terrier"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 2, 8)  # the .mat skipped
    assert splits.train.images.shape[1:] == (3, 16, 16) and splits.train.images.dtype == torch.uint8
    assert sorted(splits.test.labels.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    for split in (splits.train, splits.val, splits.test):
        check_colours(split, splits.classes)
    assert (tmp_path / "pets-16px-3ch-center_crop.uint8.pt").exists()


def test_pets_subset_has_dense_labels_and_a_wrong_class_count_says_so(tmp_path, compose_cfg):
    breeds = [PET_BREEDS[1], PET_BREEDS[3]]  # CLASS-IDs 2 and 37: labels 0 and 1
    write_pets(tmp_path, breeds=breeds)
    splits = load_splits(pets_cfg(compose_cfg, tmp_path, "data.val_size=0", "data.num_classes=2"))
    assert splits.classes == ["american_bulldog", "yorkshire_terrier"]
    assert sorted(set(splits.train.labels.tolist())) == [0, 1]
    with pytest.raises(DataError, match="list 2 breeds.*data.num_classes=2"):
        load_splits(pets_cfg(compose_cfg, tmp_path, "data.num_classes=37",
                             f"data.cache_dir={tmp_path / 'other'}"))


def test_pets_an_image_the_annotations_list_but_the_archive_lacks_is_named(tmp_path, compose_cfg):
    write_pets(tmp_path)
    with tarfile.open(tmp_path / "annotations.tar.gz", "w:gz") as tar:
        add(tar, "annotations/trainval.txt", b"Abyssinian_1 1 1 1\nAbyssinian_77 1 1 1\n")
        add(tar, "annotations/test.txt", b"Abyssinian_4 1 1 1\n")
    with pytest.raises(DataError, match="lacks 1 of the images .*Abyssinian_77.jpg"):
        load_splits(pets_cfg(compose_cfg, tmp_path, "data.num_classes=1", "data.val_size=0"))


@pytest.mark.parametrize("download", ["true", "false"])
def test_pets_missing_files_name_them_and_where_to_put_them(tmp_path, compose_cfg, download):
    cfg = pets_cfg(compose_cfg, tmp_path, "data.url=http://127.0.0.1:9/", "data.download_timeout_s=5",
                   f"data.download={download}")
    with pytest.raises(DataError) as err:
        load_splits(cfg)
    message = str(err.value)
    assert "images.tar.gz" in message and "annotations.tar.gz" in message and str(tmp_path) in message
    assert "oxford-iiit-pet/images" in message and "experiment=smoke" in message
    assert not list(tmp_path.glob("*.part"))


def test_a_pets_job_trains_and_a_job_without_files_stops_with_the_message(tmp_path, caplog):
    write_pets(tmp_path / "data", trainval=4, test=2)
    common = ["experiment=smoke", "data=pets", "data.files.images.md5=null",
              "data.files.annotations.md5=null", "data.image_size=32", "data.num_classes=4",
              "data.val_size=4", "trainer.epochs=1", "trainer.batch_size=4", "trainer.progress=false",
              "logger=none"]
    run_here([*common, f"data.root={tmp_path / 'data'}"], tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed", summary
    assert (tmp_path / "data" / "pets-32px-3ch-center_crop.uint8.pt").exists()  # not synthetic data
    with pytest.raises(SystemExit) as exited:
        run_here([*common, f"data.root={tmp_path / 'none'}", "data.download=false"], tmp_path / "run2")
    assert exited.value.code == 2
    assert "images.tar.gz" in caplog.text and "annotations.tar.gz" in caplog.text, caplog.text[-3000:]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
