"""`python -m experiments.evaluate JOB_DIR`: a finished job's model.pt on its own test set (the
numbers its summary reports), on its validation split, and on another dataset with the same
classes; a dataset with other classes is refused."""

import json

import numpy as np
import pytest
from PIL import Image

from experiments import evaluate
from experiments.errors import ConfigError
from support.jobs import run_here

TINY = ["experiment=smoke", "logger=none", "trainer.progress=false", "model=preact", "model.width=4",
        "data.train_size=256", "data.val_size=64", "data.test_size=64", "trainer.epochs=2"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "job"
    run_here(TINY, out)
    return out, json.loads((out / "summary.json").read_text())


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
    assert (out / "eval-folder-test.json").exists()


def test_a_dataset_with_other_classes_is_refused(job):
    out, _ = job
    with pytest.raises(ConfigError, match="has 100 classes, the job's model 10"):
        evaluate.run(out, ["data=cifar100", "data.root=/nonexistent"])


def test_a_directory_without_a_finished_job_says_so(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        evaluate.main([str(tmp_path)])
    assert exited.value.code == 2 and "holds no finished job" in capsys.readouterr().err
