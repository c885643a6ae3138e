"""The CIFAR loaders on small archives in the official format, the download, the cache, the splits,
and the data package's shape: one source class per conf/data/*.yaml, imports only downward."""

import ast
import functools
import hashlib
import http.server
import os
import pickle
import pickletools
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import experiments
from conftest import run_train
from experiments.data import Source, Split, load_splits, make_source
from experiments.data import cifar as cifar_mod
from experiments.data.base import split_validation
from experiments.data.cifar import (
    CIFAR_FORMATS,
    Python2Pickler,
    cifar_members,
    pickle_like_the_official_files,
    read_cifar_archive,
    write_members,
)
from experiments.errors import ConfigError, DataError
from support.archives import write_cifar_archive
from support.pickles import RunsOnLoad, creates


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


def protocol_2_globals(payload: bytes) -> set[str]:
    return {arg for op, arg, _ in pickletools.genops(payload) if op.name == "GLOBAL"}


def test_the_writer_pickles_as_the_official_files_are():
    """Protocol 2, as Python 2 wrote it: Python 3's own protocol 2 pickles each bytes object as a
    call of _codecs.encode, a global the official files never name (and the reader refuses)."""
    batch = cifar_members("cifar10", n_train=50, n_test=20, seed=0, noise=None)["data_batch_1"]
    payload = pickle_like_the_official_files(batch)
    assert payload[:2] == b"\x80\x02"  # PROTO 2
    assert protocol_2_globals(payload) == {"numpy.core.multiarray _reconstruct", "numpy ndarray",
                                           "numpy dtype"}
    assert "_codecs encode" in protocol_2_globals(pickle.dumps(batch, protocol=2))


class Numpy2Names(Python2Pickler):
    reconstructor_module = "numpy._core.multiarray"


@pytest.mark.parametrize("dump,reconstructor", [
    (pickle_like_the_official_files, b"cnumpy.core.multiarray\n_reconstruct\n"),  # as the official files
    (lambda obj: pickle_like_the_official_files(obj, Numpy2Names), b"cnumpy._core.multiarray\n_reconstruct\n"),
    (lambda obj: pickle.dumps(obj, protocol=4), b"numpy._core.multiarray"),
], ids=["numpy-1 names, protocol 2", "numpy-2 names, protocol 2", "re-pickled by numpy 2, protocol 4"])
def test_the_array_reconstructor_loads_under_both_numpy_names(tmp_path, dump, reconstructor):
    members = cifar_members("cifar10", n_train=50, n_test=20, seed=0, noise=None)
    payloads = {name: dump(obj) for name, obj in members.items()}
    assert reconstructor in payloads["data_batch_1"]
    write_members(tmp_path / "archive.tar.gz", "cifar10", payloads)
    data = read_cifar_archive(tmp_path / "archive.tar.gz", CIFAR_FORMATS["cifar10"])
    assert np.array_equal(data.test.images.reshape(20, -1).numpy(), members["test_batch"][b"data"])
    assert data.test.labels.tolist() == members["test_batch"][b"labels"]


CRAFTED = {  # call: how the member is pickled (both opcodes that name a global: GLOBAL, STACK_GLOBAL)
    "os.system": lambda marker: pickle_like_the_official_files(  # protocol 2, GLOBAL posix.system
        {b"data": RunsOnLoad(os.system, f"touch {marker}")}),
    "builtins.exec": lambda marker: pickle.dumps({b"data": creates(marker)},  # protocol 4,
                                                 protocol=4),  # STACK_GLOBAL builtins.exec
}


def crafted_archive(root: Path, marker: Path, call: str) -> Path:
    """cifar-10-python.tar.gz, official but for its first training batch, which creates `marker`
    (by `call`) when unpickled."""
    payloads = {name: pickle_like_the_official_files(obj)
                for name, obj in cifar_members("cifar10", 50, 20, 0, None).items()}
    payloads["data_batch_1"] = CRAFTED[call](marker)
    write_members(root / "cifar-10-python.tar.gz", "cifar10", payloads)
    return root / "cifar-10-python.tar.gz"


@pytest.mark.parametrize("call", CRAFTED)
def test_a_crafted_archive_is_refused_and_nothing_in_it_runs(tmp_path, compose_cfg, call):
    """data.md5=null skips the checksum: the unpickler itself refuses every global but numpy's."""
    marker = tmp_path / "ran"
    archive = crafted_archive(tmp_path, marker, call)
    cfg = compose_cfg(["data=cifar10", f"data.root={tmp_path}", "data.md5=null"]).data
    with pytest.raises(DataError) as err:
        load_splits(cfg)
    message = str(err.value)
    assert "(cifar-10-batches-py/data_batch_1) asks to call " in message
    assert f".{call.split('.')[1]} when unpickled" in message  # e.g. posix.system
    assert "not the official python-version CIFAR archive" in message and "nothing in it was run" in message
    assert not marker.exists()
    with tarfile.open(archive) as tar:  # the test is not vacuous: a plain pickle.load runs it
        pickle.load(tar.extractfile("cifar-10-batches-py/data_batch_1"), encoding="bytes")
    assert marker.exists()


def test_a_job_on_a_crafted_archive_stops_with_the_message(tmp_path):
    marker = tmp_path / "ran"
    crafted_archive(tmp_path / "data", marker, "os.system")
    proc = run_train("data=cifar10", f"data.root={tmp_path / 'data'}", "data.md5=null", "logger=none",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-3000:]
    assert "not the official python-version CIFAR archive" in text and "Traceback" not in text, text[-3000:]
    assert not marker.exists()


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
        load_splits(cifar_cfg(compose_cfg, root, f"data.url={url}/cifar-100-python.tar.gz",
                              "data.md5=0123abcd", "data.val_size=0"))
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


def test_the_package_imports_alone_and_a_job_does_not_load_the_reports_libraries(tmp_path):
    """The benchmark's CIFAR writer ships in the package: it imports without tests/ on the path.
    What a job (and each of its ranks) imports leaves pandas, scipy and matplotlib to the sweep's
    report (pandas alone added 0.3 s to every job's start), and optuna and scikit-learn to an
    Optuna search's report (experiments.report.search; optuna alone took 1.4 s after those)."""
    env = {**os.environ, "PYTHONPATH": str(Path(experiments.__file__).parents[1])}
    check = ("import sys, experiments.task, experiments.bench; "
             "print(sorted(m for m in ('pandas', 'scipy', 'matplotlib', 'optuna', 'sklearn') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
