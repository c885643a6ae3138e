"""A smoke run must show learning, not noise: the first command a new user runs, and every search
at smoke size, is judged by it. The 8-job grid is checked in test_multirun.py; here the models
outside that grid, run exactly as `python train.py experiment=smoke model=X` would (in-process)."""

import json

import pytest

from support.jobs import run_here, train_here


@pytest.mark.parametrize("model", ["timm", "mlp", "lenet"])
def test_smoke_run_learns_at_least_three_times_chance(compose_cfg, tmp_path, model):
    cfg = compose_cfg(["experiment=smoke", f"model={model}", "logger=none", "trainer.progress=false",
                       f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}"])
    summary = train_here(cfg, tmp_path, model)
    chance = 1 / cfg.data.num_classes
    assert summary["test_acc"] >= 3 * chance, f"{model}: {summary['test_acc']:.3f} at chance {chance:.3f}"


def test_a_preset_at_smoke_size_runs_as_typed_and_is_labelled(tmp_path):
    """`experiment=best size=smoke`: the preset's recipe (CutMix/MixUp, EMA, TTA) at CPU size,
    and both choices in summary.json, so its row in a table says what it was."""
    out = tmp_path / "run"
    run_here(["experiment=best", "size=smoke", "logger=none", "trainer.progress=false"], out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 3
    assert summary["choices"].items() >= {"experiment": "best", "size": "smoke",
                                          "data": "synthetic"}.items()
    assert summary["test_tta_acc"] is not None  # best's flip TTA survived the resize
