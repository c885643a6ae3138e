"""`python -m experiments.evaluate JOB_DIR`: a finished job's model.pt on its own test set (the
numbers its summary reports), on its validation split, and on another dataset with the same
classes; a dataset with other classes is refused."""

import json

import numpy as np
import pytest
import yaml
from hydra.core.hydra_config import HydraConfig
from PIL import Image

from experiments import evaluate
from experiments.errors import ConfigError
from support.archives import write_cifar_archive
from support.jobs import run_here

TINY = ["experiment=smoke", "logger=none", "trainer.progress=false", "model=preact", "model.width=4",
        "data.train_size=256", "data.val_size=64", "data.test_size=64", "trainer.epochs=2"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "job"
    run_here(TINY, out)
    return out, json.loads((out / "summary.json").read_text())


@pytest.fixture(autouse=True)
def no_hydra_runtime():
    """Each test evaluates as `python -m experiments.evaluate` does: with no Hydra runtime set
    (run_here set this process's, as Hydra sets a job's)."""
    runtime = HydraConfig.instance()
    before, runtime.cfg = runtime.cfg, None
    yield
    runtime.cfg = before


def test_the_jobs_own_test_set_gives_the_numbers_of_its_summary(job, capsys):
    out, summary = job
    report = evaluate.run(out, [])
    assert (report["acc"], report["loss"]) == (summary["test_acc"], summary["test_loss"])
    assert report["images"] == 64 and report["split"] == "test"
    assert json.loads((out / "eval-synthetic-test.json").read_text())["acc"] == summary["test_acc"]
    assert "synthetic test: acc=" in capsys.readouterr().out
    assert len(summary["provenance"]["data"]["classes"]) == 10  # the class names, recorded


def test_its_validation_split_with_flip_tta(job):
    out, summary = job
    report = evaluate.run(out, ["split=val", "trainer.tta=flip"])
    assert report["acc"] == summary["best_val_acc"]  # model.pt holds the chosen epoch's weights
    assert "tta_acc" in report  # (the mean of each image's and its mirror's softmax)
    plain = evaluate.run(out, ["split=val"])  # another file: the TTA's report stays
    assert "tta_acc" not in plain and plain["acc"] == report["acc"]
    assert json.loads((out / "eval-synthetic-val-flip.json").read_text())["tta"] == "flip"
    assert json.loads((out / "eval-synthetic-val.json").read_text())["tta"] == "none"


def test_flip_tta_on_digits_is_refused_as_in_training(job):
    out, _ = job  # e.g. a CIFAR-10 job with trainer.tta=flip, evaluated on SVHN's digits
    with pytest.raises(ConfigError, match="trainer.tta=flip mirrors data=svhn images, which changes "
                                          "their class: use trainer.tta=none"):
        evaluate.run(out, ["data=svhn", "trainer.tta=flip"])
    with pytest.raises(ConfigError, match="trainer.tta=flip_translate mirrors data=synthetic"):
        evaluate.run(out, ["data.hflip_ok=false", "trainer.tta=flip_translate"])


def test_a_dataset_under_the_default_data_dir_of_the_directory_it_runs_from(job, tmp_path, monkeypatch):
    """data=cifar10 without data.root: its root is paths.data_dir, under paths.root_dir, which
    Hydra's runtime gives (the directory train.py starts from); so are `${hydra:...}` values in
    an override or in the job's stored config."""
    out, _ = job
    monkeypatch.chdir(tmp_path)
    write_cifar_archive(tmp_path / "data" / "cifar-10-python.tar.gz", "cifar10", n_train=30, n_test=12)
    report = evaluate.run(out, ["data=cifar10", "data.md5=null", "data.val_size=0"])
    assert (report["data"], report["images"]) == ("cifar10", 12)
    write_cifar_archive(tmp_path / "elsewhere" / "cifar-10-python.tar.gz", "cifar10", n_train=30, n_test=8)
    report = evaluate.run(out, ["data=cifar10", "data.root=${hydra:runtime.cwd}/elsewhere", "data.md5=null",
                                "data.val_size=0"])
    assert report["images"] == 8
    assert not HydraConfig.initialized()  # (the runtime it set is gone)
    config = yaml.safe_load((out / "config.yaml").read_text())  # a stored interpolation
    config["paths"]["output_dir"] = "${hydra:runtime.output_dir}"
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "config.yaml").write_text(yaml.safe_dump(config))
    (edited / "model.pt").write_bytes((out / "model.pt").read_bytes())
    assert evaluate.run(edited, [])["images"] == 64


@pytest.mark.parametrize("override,message", [
    ("data=nope", "Could not find 'data/nope'\n\nAvailable options in 'data':\n\tcifar10"),
    ("data.root=${paths.nope}", "data.root: Interpolation key 'paths.nope' not found"),
    ("trainer.nope=1", "Key 'nope' not in 'TrainerOptions'"),
    ("data=folder", "data.root is required"),
    ("trainer.tta=both", "trainer.tta must be one of"),
    ("trainer.eval_batch_size=[1", "trainer.eval_batch_size=[1: its value is not YAML"),
])
def test_what_cannot_be_composed_or_resolved_is_one_message(job, capsys, override, message):
    out, _ = job
    with pytest.raises(SystemExit) as exited:
        evaluate.main([str(out), override])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.startswith("error: ") and message in err, err
    assert "Traceback" not in err and "Config search path" not in err


def test_another_dataset_with_the_same_classes(job, tmp_path):
    out, _ = job
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(10):  # the synthetic data's 10 classes
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
                    root / split / f"class{c}" / f"{i}.png")
    report = evaluate.run(out, ["data=folder", f"data.root={root}", "data.val_size=0"])
    assert report["data"] == "folder" and report["images"] == 20  # resized to the job's 32 px
    assert (out / "eval-folder-images-test.json").exists()  # (by the folder's name: `folder` says nothing)


def test_a_dataset_with_other_classes_is_refused(job):
    out, _ = job
    with pytest.raises(ConfigError, match="has 100 classes, the job's model 10"):
        evaluate.run(out, ["data=cifar100", "data.root=/nonexistent"])


def test_a_directory_without_a_finished_job_says_so(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        evaluate.main([str(tmp_path)])
    assert exited.value.code == 2 and "holds no finished job" in capsys.readouterr().err
