"""The photo datasets (data=pets, svhn, stl10, flowers102, tiny_imagenet) on tiny files written in
each dataset's official layout (the real ones cannot be downloaded here): classes, labels, the
official split, and what a job says when the files are missing."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
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
    first = lines["trainval"][0].split()[0]
    # the official archive holds a few .mat files named as listed images are (Abyssinian_100.mat
    # beside Abyssinian_100.jpg): here one, ahead of its image
    images = {f"{first}.mat": b"MATLAB 5.0 MAT-file, not an image"}
    images.update({f"{line.split()[0]}.jpg": jpeg(COLOURS[i % len(COLOURS)])
                   for i, (b, _, _) in enumerate(breeds) for split in lines.values()
                   for line in split if line.startswith(f"{b}_")})
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
    with pytest.raises(DataError, match="lacks 1 of the images .*Abyssinian_77"):
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


# --- SVHN, STL-10, Flowers-102, Tiny ImageNet ----------------------------------------------------

def a_smoke_job_completes(out: Path, data: list[str], *extra: str) -> bool:
    """One epoch of a smoke-sized job on the dataset, as `python train.py` runs it."""
    run_here(["experiment=smoke", "logger=none", "trainer.progress=false", "trainer.epochs=1",
              "trainer.batch_size=4", "trainer.eval_batch_size=8", *data, *extra], out)
    return json.loads((out / "summary.json").read_text())["status"] == "completed"


def test_svhn_reads_the_mat_files_and_label_10_is_digit_0(tmp_path, compose_cfg):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    written = {}
    for split, n in (("train", 12), ("test", 5), ("extra", 4)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)
        y[0] = 10
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        written[split] = (x, y)
    md5s = [f"data.files.{k}.md5=null" for k in written]
    splits = load_splits(compose_cfg(["data=svhn", f"data.root={tmp_path}", "data.val_size=2", *md5s]).data)
    assert splits.classes == [str(d) for d in range(10)] and (len(splits.train), len(splits.test)) == (10, 5)
    x, y = written["test"]
    assert torch.equal(splits.test.images[1], torch.from_numpy(x[..., 1].transpose(2, 0, 1).copy()))
    assert splits.test.labels.tolist() == [int(v) % 10 for v in y[:, 0]] and splits.test.labels[0] == 0
    extra = load_splits(compose_cfg(["data=svhn", f"data.root={tmp_path}", "data.val_size=0",
                                     "data.extra=true", *md5s]).data)
    assert len(extra.train) == 16 and (tmp_path / "svhn-extra.uint8.pt").exists()
    assert a_smoke_job_completes(tmp_path / "run", ["data=svhn", f"data.root={tmp_path}", "data.val_size=2",
                                                    *md5s], "aug=none")  # (no flips for digits)


def stl10_files(rng, n):
    images = rng.integers(0, 256, size=(n, 3, 96, 96), dtype=np.uint8)
    labels = rng.integers(1, 11, size=n).astype(np.uint8)
    return images, labels, images.transpose(0, 1, 3, 2).tobytes(), labels.tobytes()  # column-major


@pytest.mark.parametrize("extracted", [False, True], ids=["archive", "extracted"])
def test_stl10_reads_the_binary_files_with_1_based_labels(tmp_path, compose_cfg, extracted):
    rng = np.random.default_rng(0)
    train, test = stl10_files(rng, 6), stl10_files(rng, 4)
    members = {"train_X.bin": train[2], "train_y.bin": train[3], "test_X.bin": test[2],
               "test_y.bin": test[3], "unlabeled_X.bin": b"\0" * 96 * 96 * 3,
               "class_names.txt": "\n".join(["airplane", "bird", "car", "cat", "deer", "dog",
                                             "horse", "monkey", "ship", "truck"]).encode()}
    if extracted:
        (tmp_path / "stl10_binary").mkdir()
        for name, payload in members.items():
            (tmp_path / "stl10_binary" / name).write_bytes(payload)
    else:
        with tarfile.open(tmp_path / "stl10_binary.tar.gz", "w:gz") as tar:
            for name, payload in members.items():
                add(tar, f"stl10_binary/{name}", payload)
    splits = load_splits(compose_cfg(["data=stl10", f"data.root={tmp_path}", "data.val_size=0",
                                      "data.files.archive.md5=null"]).data)
    assert splits.classes[0] == "airplane" and len(splits.classes) == 10
    assert torch.equal(splits.test.images, torch.from_numpy(test[0]))  # images upright, in order
    assert splits.test.labels.tolist() == (test[1].astype(int) - 1).tolist()
    assert len(splits.train) == 6  # no unlabelled images
    if not extracted:
        assert a_smoke_job_completes(tmp_path / "run", ["data=stl10", f"data.root={tmp_path}",
                                                        "data.val_size=2", "data.files.archive.md5=null"],
                                       "aug=rrc")  # (96 px: a padding crop is refused)


def test_flowers102_trains_on_train_and_val_and_tests_on_tstid(tmp_path, compose_cfg):
    from scipy.io import savemat

    labels = np.array([1, 1, 2, 2, 3, 3, 1, 2, 3, 1], dtype=np.uint8)  # images 1..10, 1-based classes
    savemat(tmp_path / "imagelabels.mat", {"labels": labels[None]})
    savemat(tmp_path / "setid.mat", {"trnid": np.array([[1, 3, 5]]), "valid": np.array([[2, 4, 6]]),
                                     "tstid": np.array([[7, 8, 9, 10]])})
    with tarfile.open(tmp_path / "102flowers.tgz", "w:gz") as tar:
        for i, label in enumerate(labels, 1):
            add(tar, f"jpg/image_{i:05d}.jpg", jpeg(COLOURS[label - 1]))
    md5s = [f"data.files.{k}.md5=null" for k in ("images", "labels", "setid")]
    splits = load_splits(compose_cfg(["data=flowers102", f"data.root={tmp_path}", "data.val_size=0",
                                      "data.image_size=16", *md5s]).data)
    assert len(splits.classes) == 102 and splits.classes[0] == "pink primrose"
    assert sorted(splits.train.labels.tolist()) == [0, 0, 1, 1, 2, 2]  # trnid + valid
    assert splits.test.labels.tolist() == [0, 1, 2, 0]
    check_colours(splits.train, splits.classes)
    check_colours(splits.test, splits.classes)
    assert a_smoke_job_completes(tmp_path / "run", ["data=flowers102", f"data.root={tmp_path}",
                                                    "data.val_size=2", "data.image_size=16", *md5s])


def write_tiny_imagenet(root: Path, as_zip: bool) -> None:
    wnids = ["n02", "n01", "n03"]  # wnids.txt's order is not the class order: sorted is
    files = {"wnids.txt": "\n".join(wnids).encode(),
             "words.txt": b"n01\tgoldfish, Carassius auratus\nn02\tsalamander\nn03\tbullfrog\nn99\tother\n"}
    for w in wnids:
        label = sorted(wnids).index(w)
        files[f"train/{w}/{w}_boxes.txt"] = b"boxes, not an image"
        for i in range(3):
            files[f"train/{w}/images/{w}_{i}.JPEG"] = jpeg(COLOURS[label], (64, 64))
    notes = []
    for i, w in enumerate(["n03", "n01", "n02", "n01"]):
        files[f"val/images/val_{i}.JPEG"] = jpeg(COLOURS[sorted(wnids).index(w)], (64, 64))
        notes.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    files["val/val_annotations.txt"] = "\n".join(notes).encode()
    files["test/images/test_0.JPEG"] = jpeg((0, 0, 0), (64, 64))  # unlabelled: not used
    root.mkdir(parents=True, exist_ok=True)
    if as_zip:
        with zipfile.ZipFile(root / "tiny-imagenet-200.zip", "w") as z:
            for name, payload in files.items():
                z.writestr(f"tiny-imagenet-200/{name}", payload)
    else:
        for name, payload in files.items():
            (root / "tiny-imagenet-200" / name).parent.mkdir(parents=True, exist_ok=True)
            (root / "tiny-imagenet-200" / name).write_bytes(payload)


@pytest.mark.parametrize("as_zip", [True, False], ids=["zip", "extracted"])
def test_tiny_imagenet_reads_train_and_uses_val_as_test(tmp_path, compose_cfg, as_zip):
    write_tiny_imagenet(tmp_path, as_zip)
    cfg = compose_cfg(["data=tiny_imagenet", f"data.root={tmp_path}", "data.val_size=3",
                       "data.num_classes=3", "data.files.archive.md5=null", "data.image_size=16"]).data
    splits = load_splits(cfg)
    assert splits.classes == ["goldfish", "salamander", "bullfrog"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 3, 4)
    assert splits.test.labels.tolist() == [2, 0, 1, 0]
    for split in (splits.train, splits.val, splits.test):
        check_colours(split, splits.classes)
    if as_zip:
        assert a_smoke_job_completes(tmp_path / "run", ["data=tiny_imagenet", f"data.root={tmp_path}",
                                                        "data.val_size=3", "data.num_classes=3",
                                                        "data.files.archive.md5=null", "data.image_size=16"])
    with pytest.raises(DataError, match="lists 3 classes.*data.num_classes=3"):
        load_splits(compose_cfg(["data=tiny_imagenet", f"data.root={tmp_path}",
                                 f"data.cache_dir={tmp_path / 'other'}", "data.files.archive.md5=null"]).data)


@pytest.mark.parametrize("name,files", [
    ("svhn", ["train_32x32.mat", "test_32x32.mat"]),
    ("stl10", ["stl10_binary.tar.gz", "stl10_binary/"]),
    ("flowers102", ["102flowers.tgz", "imagelabels.mat", "setid.mat"]),
    ("tiny_imagenet", ["tiny-imagenet-200.zip", "tiny-imagenet-200/"]),
])
def test_missing_files_say_which_and_where(tmp_path, compose_cfg, name, files):
    cfg = compose_cfg([f"data={name}", f"data.root={tmp_path}", "data.download=false"]).data
    with pytest.raises(DataError) as err:
        load_splits(cfg)
    message = str(err.value)
    assert all(f in message for f in files) and str(tmp_path) in message, message
    assert "experiment=smoke" in message, message


def test_pets_downloads_the_archives_and_checks_their_md5(tmp_path, compose_cfg):
    """The fetch machinery of the other datasets, over a local HTTP server (no other network)."""
    import functools
    import http.server
    import threading

    from torchvision.datasets.utils import calculate_md5

    served = tmp_path / "served"
    write_pets(served)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"data.url=http://127.0.0.1:{server.server_port}/"
        root = tmp_path / "data"
        with pytest.raises(DataError, match="checksum"):
            load_splits(pets_cfg(compose_cfg, root, url, "data.files.images.md5=0123abcd"))
        assert not (root / "images.tar.gz").exists()
        md5s = [f"data.files.{k}.md5={calculate_md5(served / f'{k}.tar.gz')}" for k in ("images", "annotations")]
        splits = load_splits(pets_cfg(compose_cfg, root, url, *md5s, "data.val_size=0"))
        assert len(splits.train) == 12 and (root / "images.tar.gz").exists()
    finally:
        server.shutdown()


def test_pets_an_image_listed_in_both_splits_is_refused(tmp_path, compose_cfg):
    write_pets(tmp_path)
    with tarfile.open(tmp_path / "annotations.tar.gz", "w:gz") as tar:
        add(tar, "annotations/trainval.txt", b"Abyssinian_1 1 1 1\nAbyssinian_2 1 1 1\n")
        add(tar, "annotations/test.txt", b"Abyssinian_1 1 1 1\n")
    with pytest.raises(DataError, match="name Abyssinian_1 more than once"):
        load_splits(pets_cfg(compose_cfg, tmp_path, "data.num_classes=1", "data.val_size=0"))
