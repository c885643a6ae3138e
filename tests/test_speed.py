"""The two data paths agree, both train, and the benchmark runs and writes its JSON shape."""

import json
import math
import multiprocessing
from contextlib import closing

import pytest
import torch

from experiments import bench, task
from experiments.batches.augment import BatchAugment
from experiments.batches.baselines import PilLoader, UnseededSplit, pil_transform, unseeded
from experiments.batches.device import DeviceLoader, Normalize
from experiments.batches.workers import WorkerLoader, torchvision_transform
from experiments.data import Split
from support.jobs import run_here

MEAN, STD = [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]


def test_device_and_dataloader_paths_serve_the_same_unaugmented_batches():
    split = Split(torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8), torch.arange(40))
    device = DeviceLoader(split, 16, Normalize(MEAN, STD, "cpu"), device="cpu")
    workers = WorkerLoader(split, 16, torchvision_transform(None, MEAN, STD, 32), device="cpu", workers=0)
    assert len(device) == len(workers) == 3 and device.num_images == workers.num_images == 40
    for (a, ya), (b, yb) in zip(device, workers):
        assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5) and torch.equal(ya, yb)


def test_dataloader_path_applies_the_same_augmentation_semantics():
    split = Split(torch.full((512, 3, 32, 32), 200, dtype=torch.uint8), torch.zeros(512, dtype=torch.long))
    aug = BatchAugment(4, True, 15.0, 0.5)
    workers = WorkerLoader(split, 512, torchvision_transform(aug, MEAN, STD, 32), device="cpu", workers=0)
    device = DeviceLoader(split, 512, Normalize(MEAN, STD, "cpu"), device="cpu", augment=aug)
    (a, _), (b, _) = next(iter(device)), next(iter(workers))
    # a flat grey image: every view is "image", "black fill" (padding/rotation) or "mean" (erased)
    image_value = Normalize(MEAN, STD, "cpu")(split.images[:1])[0, :, 0, 0]
    black_value = Normalize(MEAN, STD, "cpu")(torch.zeros(1, 3, 1, 1, dtype=torch.uint8))[0, :, 0, 0]
    for batch in (a, b):
        pixels = batch[:, 0]
        image = (pixels - image_value[0]).abs() < 1e-4
        black = (pixels - black_value[0]).abs() < 1e-4
        erased = pixels == 0
        assert (image | black | erased).all()
    erased_share = [(x[:, 0] == 0).flatten(1).any(1).float().mean().item() for x in (a, b)]
    black_share = [((x[:, 0] - black_value[0]).abs() < 1e-4).float().mean().item() for x in (a, b)]
    assert abs(erased_share[0] - erased_share[1]) < 0.1
    assert abs(black_share[0] - black_share[1]) < 0.03


def test_dataloader_augmentations_do_not_depend_on_the_workers():
    """Each image's transform is seeded from the loader's generator and its index: the same
    batches in the main process and in two persistent workers, and new views every pass."""
    split = Split(torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8), torch.arange(48))
    transform = torchvision_transform(BatchAugment(4, True, 15.0, 0.5), MEAN, STD, 32)
    passes = []
    for workers in (0, 2):
        with closing(WorkerLoader(split, 16, transform, device="cpu", workers=workers, shuffle=True,
                                  drop_last=True, seed=3)) as loader:
            passes.append([torch.cat([x for x, _ in loader]) for _ in range(2)])
    assert torch.equal(passes[0][0], passes[1][0]) and torch.equal(passes[0][1], passes[1][1])
    assert not torch.equal(passes[0][0], passes[0][1])


def test_both_paths_train_a_smoke_job_to_a_finite_loss(tmp_path):
    for loader in ("device", "dataloader"):
        out = tmp_path / loader
        run_here(["experiment=smoke", f"loader={loader}", "logger=none", "trainer.epochs=1"], out)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "completed" and math.isfinite(summary["test_loss"])
        rows = (out / "metrics.csv").read_text().splitlines()
        assert math.isfinite(float(rows[1].split(",")[rows[0].split(",").index("train/loss")]))
        # its loaders' persistent workers (2 each) ended with it, not at some later collection
        assert multiprocessing.active_children() == []


def test_a_failed_job_ends_its_dataloader_workers_before_its_memory_is_released(tmp_path, monkeypatch):
    # diverged (lr 1e30) with its workers mid-pass: release()'s collection would otherwise end
    # them, at 5 s a worker (workers.end_workers)
    alive_at_release = []
    release = task.release
    monkeypatch.setattr(task, "release", lambda err: (alive_at_release.extend(
        multiprocessing.active_children()), release(err)))
    with pytest.raises(SystemExit):
        run_here(["experiment=smoke", "loader=dataloader", "logger=none", "trainer.epochs=1",
                  "optim.lr=1e30"], tmp_path)
    assert "diverged" in json.loads((tmp_path / "summary.json").read_text())["error"]
    assert alive_at_release == [] and multiprocessing.active_children() == []


def test_quick_benchmark_writes_the_documented_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["aug"]) == set(bench.AUG_ROWS) == {"basic", "advanced", "rrc"}
    for row in result["aug"].values():
        # the device path, our DataLoader with and without its reseeding, the usual PIL one
        assert all(row[f"{path}_img_s"] > 0 for path in
                   ("device", "dataloader", "dataloader_unseeded", "pil_dataloader"))
        assert row["baseline"] in bench.DATALOADERS  # the faster of the two ways
        assert row[f"{row['baseline']}_img_s"] == max(row[f"{p}_img_s"] for p in bench.DATALOADERS)
        assert math.isclose(row["ratio"], row["device_img_s"] / row[f"{row['baseline']}_img_s"],
                            rel_tol=0.01)
        assert math.isclose(row["reseed_cost_pct"], 100 * (row["dataloader_unseeded_img_s"]
                                                           / row["dataloader_img_s"] - 1), abs_tol=0.1)
    assert isinstance(result["reseed_us_per_image"], float)
    assert result["load"]["archive_s"] > 0 and result["load"]["cache_s"] > 0
    assert result["step"]["framework_ms"] > 0 and result["step"]["bare_ms"] > 0
    printed = capsys.readouterr().out
    assert "| aug `basic` 32 px" in printed and "| aug `rrc` 64 px" in printed
    assert "DataLoader, usual (v1, PIL)" in printed and "per-image reseeding" in printed
    assert result["aug"]["rrc"]["image_px"] == 64


def test_the_usual_pil_baseline_runs_the_same_augmentation():
    """The benchmark's usual-way DataLoader: v1 ops on PIL images, with our path's semantics
    (a flat grey image shows only image, black fill and erased values, as in the check above)."""
    split = Split(torch.full((64, 3, 32, 32), 200, dtype=torch.uint8), torch.zeros(64, dtype=torch.long))
    aug = BatchAugment(4, True, 15.0, 0.5)
    with closing(PilLoader(split, 64, pil_transform(aug, MEAN, STD, 32), torch.device("cpu"))) as pil:
        images, labels = next(iter(pil))
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.float32 and labels.tolist() == [0] * 64
    image_value = Normalize(MEAN, STD, "cpu")(split.images[:1])[0, 0, 0, 0]
    black_value = Normalize(MEAN, STD, "cpu")(torch.zeros(1, 3, 1, 1, dtype=torch.uint8))[0, 0, 0, 0]
    pixels = images[:, 0]
    assert (((pixels - image_value).abs() < 1e-4) | ((pixels - black_value).abs() < 1e-4)
            | (pixels == 0)).all()
    assert ((pixels - black_value).abs() < 1e-4).any() and (pixels == 0).any()  # padded, erased


def test_the_unseeded_variant_draws_from_the_global_rng():
    split = Split(torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8), torch.arange(32))
    transform = torchvision_transform(BatchAugment(4, True, 15.0, 0.5), MEAN, STD, 32)
    seeded = WorkerLoader(split, 16, transform, device="cpu", workers=0, seed=1)
    plain = unseeded(WorkerLoader(split, 16, transform, device="cpu", workers=0, seed=1),
                           split, transform)
    assert isinstance(plain.dataset, UnseededSplit) and len(plain) == len(seeded) == 2
    torch.manual_seed(0)
    first = torch.cat([x for x, _ in plain])
    torch.manual_seed(0)
    assert torch.equal(first, torch.cat([x for x, _ in plain]))  # it draws from the global RNG
    assert not torch.equal(first, torch.cat([x for x, _ in seeded]))
