"""The CIFAR loaders on small archives in the official format, the download, the cache, the splits,
and the data package's shape: one source class per conf/data/*.yaml, imports only downward."""

import ast
import functools
import hashlib
import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import experiments
from experiments.data import Source, Split, load_splits, make_source
from experiments.data import cifar as cifar_mod
from experiments.data.base import split_validation
from experiments.data.cifar import CIFAR_FORMATS, read_cifar_archive
from experiments.errors import ConfigError, DataError
from support.archives import write_cifar_archive


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("dataset", ["cifar100", "cifar10"])
def test_reads_the_official_layout(tmp_path, dataset):
    path = tmp_path / "archive.tar.gz"
    written = write_cifar_archive(path, dataset, n_train=50, n_test=20)
    data = read_cifar_archive(path, CIFAR_FORMATS[dataset])
    assert data.train.images.shape == (50, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert np.array_equal(data.train.images.reshape(50, -1).numpy(), written["train_data"])
    assert data.train.labels.tolist() == written["train_labels"]
    assert data.test.labels.tolist() == written["test_labels"]
    assert len(data.classes) == (100 if dataset == "cifar100" else 10)


def cifar_cfg(compose_cfg, root, *extra):
    return compose_cfg(["data=cifar100", f"data.root={root}", *extra]).data


def test_first_load_builds_the_cache_and_later_loads_use_it(tmp_path, compose_cfg, monkeypatch):
    archive = tmp_path / "cifar-100-python.tar.gz"
    write_cifar_archive(archive, n_train=60, n_test=20)
    cfg = cifar_cfg(compose_cfg, tmp_path, f"data.md5={md5(archive)}", "data.val_size=10")
    first = load_splits(cfg)
    assert (tmp_path / "cifar100.uint8.pt").exists()
    assert (len(first.train), len(first.val), len(first.test)) == (50, 10, 20)

    def no_parsing(*args):
        raise AssertionError("the archive was parsed again")

    monkeypatch.setattr(cifar_mod, "read_cifar_archive", no_parsing)
    start = time.perf_counter()
    again = load_splits(cfg)
    assert time.perf_counter() - start < 1.0
    assert torch.equal(again.train.images, first.train.images)
    assert torch.equal(again.val.labels, first.val.labels)


def test_a_corrupt_cache_is_rebuilt(tmp_path, compose_cfg):
    archive = tmp_path / "cifar-100-python.tar.gz"
    write_cifar_archive(archive)
    (tmp_path / "cifar100.uint8.pt").write_bytes(b"not a cache")
    cfg = cifar_cfg(compose_cfg, tmp_path, "data.md5=null", "data.val_size=0")
    assert len(load_splits(cfg).train) == 60


def test_a_corrupt_archive_names_the_file(tmp_path, compose_cfg):
    archive = tmp_path / "cifar-100-python.tar.gz"
    archive.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="cifar-100-python.tar.gz is not a readable CIFAR archive"):
        load_splits(cifar_cfg(compose_cfg, tmp_path, "data.md5=null"))


def test_a_wrong_checksum_is_reported(tmp_path, compose_cfg):
    write_cifar_archive(tmp_path / "cifar-100-python.tar.gz")
    with pytest.raises(DataError, match="checksum .* expected eb9058c3"):
        load_splits(cifar_cfg(compose_cfg, tmp_path))


def test_missing_data_without_network_says_what_to_do(tmp_path, compose_cfg):
    cfg = cifar_cfg(compose_cfg, tmp_path, "data.url=http://127.0.0.1:9/cifar-100-python.tar.gz",
                    "data.download_timeout_s=5")
    with pytest.raises(DataError) as err:
        load_splits(cfg)
    message = str(err.value)
    assert "cifar-100-python.tar.gz" in message and "data.root=" in message and "experiment=smoke" in message
    assert not list(tmp_path.glob("*.part"))


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server over tmp_path/served (the only network a test may use)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_download_verifies_the_checksum(http_root, tmp_path, compose_cfg):
    served, url = http_root
    write_cifar_archive(served / "cifar-100-python.tar.gz")
    good = md5(served / "cifar-100-python.tar.gz")
    root = tmp_path / "data"
    with pytest.raises(DataError, match="checksum"):
        load_splits(cifar_cfg(compose_cfg, root, f"data.url={url}/cifar-100-python.tar.gz", "data.md5=0123abcd", "data.val_size=0"))
    assert not (root / "cifar-100-python.tar.gz").exists()  # a bad download never looks complete
    splits = load_splits(cifar_cfg(compose_cfg, root, f"data.url={url}/cifar-100-python.tar.gz",
                                   f"data.md5={good}", "data.val_size=0"))
    assert md5(root / "cifar-100-python.tar.gz") == good and len(splits.train) == 60


def test_validation_split_is_seeded_disjoint_and_sized():
    train = Split(torch.zeros(100, 3, 32, 32, dtype=torch.uint8), torch.arange(100))
    rest, val = split_validation(train, 20, seed=0)
    assert len(val) == 20 and len(rest) == 80
    assert not set(val.labels.tolist()) & set(rest.labels.tolist())
    assert torch.equal(split_validation(train, 20, seed=0)[1].labels, val.labels)
    assert not torch.equal(split_validation(train, 20, seed=1)[1].labels, val.labels)
    assert len(split_validation(train, 0.1, seed=0)[1]) == 10
    assert split_validation(train, 0, seed=0)[1] is None
    with pytest.raises(ConfigError, match="val_size"):
        split_validation(train, 100, seed=0)


def test_synthetic_data_is_deterministic_and_cifar_shaped(compose_cfg):
    cfg = compose_cfg(["data=synthetic"]).data
    a, b = load_splits(cfg), load_splits(cfg)
    assert a.train.images.shape[1:] == (3, 32, 32) and a.train.images.dtype == torch.uint8
    assert torch.equal(a.train.images, b.train.images)
    assert int(a.train.labels.max()) < cfg.num_classes and len(a.classes) == cfg.num_classes


def test_synthetic_classes_are_mirror_symmetric(compose_cfg):
    """`hflip_ok: true` lets aug=basic flip synthetic images: a mirrored image must still be
    its class, so with no noise every image equals its mirror image."""
    cfg = compose_cfg(["data=synthetic", "data.noise=0.0", "data.train_size=64", "data.val_size=0"]).data
    train = load_splits(cfg).train
    assert cfg.hflip_ok and torch.equal(train.images, train.images.flip(3))
    assert len(train.images.unique(dim=0)) == len(train.labels.unique())  # one template a class


DATA_CONFIGS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "data").glob("*.yaml"))


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_every_data_config_names_its_source(compose_cfg, tmp_path, name):
    """`_target_` builds the source from the config's keys (each one a field of the class)."""
    # (conftest imports experiments.config, which registers data=folder's num_classes resolver)
    (tmp_path / "train" / "a").mkdir(parents=True)  # data=folder counts the class folders
    root = [f"data.root={tmp_path}"] if name != "synthetic" else []
    cfg = compose_cfg([f"data={name}", *root]).data
    source = make_source(cfg)
    assert isinstance(source, Source) and source.name == name
    assert source.cache_path is None or source.cache_path.parent == tmp_path


def test_the_data_package_imports_only_itself_and_lower_layers():
    """No cycle through the package's __init__ (it imports the sources, so they must not import
    it back) and nothing from a layer above (batches, training, report, config)."""
    package = Path(experiments.__file__).parent / "data"
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                     for alias in node.names]
        ours = [m for m in imported if m and m.split(".")[0] == "experiments"]
        assert all(m in ("experiments.errors", "experiments.atomic") or m.startswith("experiments.data.")
                   for m in ours), (path.name, ours)


def test_the_benchmark_imports_from_the_package_alone(tmp_path):
    """The benchmark's CIFAR writer ships in the package: it imports without tests/ on the path."""
    env = {**os.environ, "PYTHONPATH": str(Path(experiments.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", "import experiments.bench"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
