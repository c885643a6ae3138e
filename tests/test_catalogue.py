"""The option catalogue: every dataset, model, optimizer, schedule and mixing option trains a few
steps on tiny data; SAM, mixing and the batch-size schedule do what they claim; bad combinations
are refused."""

import csv
import functools
import os
import re

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from experiments.config.checks import check_config
from experiments.data import load_splits
from experiments.errors import ConfigError, DataError
from experiments.training.options import TrainerOptions
from experiments.training.sam import SAM
from experiments.training.schedules import constant
from experiments.training.trainer import Trainer
from support.archives import write_mnist_files
from support.batches import PreMadeBatches as Batches
from support.jobs import train_here

TINY_DATA = ["data=synthetic", "data.train_size=128", "data.val_size=32", "data.test_size=32"]
TINY_RUN = ["trainer.epochs=1", "trainer.batch_size=32", "trainer.eval_batch_size=64",
            "logger=none", "trainer.progress=false"]


@pytest.fixture
def run_job(compose_cfg, tmp_path):
    """Compose like `python train.py ...` and run the job in this process."""

    def _run(*overrides, name="job"):
        out = tmp_path / name
        out.mkdir()
        data = [] if any(o.startswith("data=") for o in overrides) else TINY_DATA
        cfg = compose_cfg([*data, *TINY_RUN, f"paths.root_dir={tmp_path}", f"paths.output_dir={out}",
                           *overrides])
        check_config(cfg)
        return train_here(cfg, out, name, overrides), out

    return _run


@pytest.mark.parametrize("overrides", [
    ["model=timm", "model.name=mobilenetv3_small_050"],
    ["model=timm", "model.name=resnet10t"],
    ["model=mlp"],
    ["model=lenet"],
    ["model=preact", "model.width=4", "optim=sgd", "optim.momentum=0", "optim.nesterov=false"],
    ["model=preact", "model.width=4", "optim=adam"],
    ["model=preact", "model.width=4", "optim=adamw"],
    ["model=preact", "model.width=4", "optim=rmsprop"],
    ["model=preact", "model.width=4", "optim=sam"],
    ["model=preact", "model.width=4", "optim=sam", "optim@optim.base=adamw",
     "trainer.grad_accum_steps=2"],
    ["model=preact", "model.width=4", "sched=step", "sched.step_size=1"],
    ["model=preact", "model.width=4", "sched=plateau"],
    ["model=preact", "model.width=4", "sched=onecycle"],
    ["model=preact", "model.width=4", "sched=none"],
    ["model=preact", "model.width=4", "mix=cutmix"],
    ["model=preact", "model.width=4", "mix=mixup"],
    ["model=preact", "model.width=4", "mix=cutmix_mixup", "trainer.label_smoothing=0.1"],
    ["model=preact", "model.width=4", "trainer.ema_decay=0.9", "trainer.tta=flip"],
    ["model=resnet18", "model.width=4", "loader=dataloader", "loader.workers=0", "aug=advanced"],
], ids=lambda o: " ".join(o))
def test_option_trains_a_few_steps(run_job, overrides):
    summary, out = run_job(*overrides)
    assert summary["status"] == "completed"
    assert np.isfinite(summary["test_loss"]) and summary["test_acc_final"] is not None


def test_final_best_and_tta_accuracies_are_reported_apart(run_job):
    summary, _ = run_job("model=preact", "model.width=4", "trainer.epochs=2", "trainer.tta=flip")
    assert {"test_acc", "test_acc_final", "test_tta_acc"} <= set(summary)
    assert summary["test_tta_acc"] is not None
    plain, _ = run_job("model=preact", "model.width=4", "trainer.epochs=2", name="plain")
    assert plain["test_tta_acc"] is None and plain["test_acc"] == summary["test_acc"]


def test_mixing_gives_soft_targets_that_sum_to_one(compose_cfg):
    for option in ("cutmix", "mixup", "cutmix_mixup"):
        mix = instantiate(compose_cfg([f"mix={option}", "data=synthetic", "trainer.label_smoothing=0.1"]).mix)
        images, labels = torch.rand(8, 3, 32, 32), torch.arange(8)
        mixed, targets = mix(images, labels)
        assert targets.shape == (8, mix.num_classes) and mixed.shape == images.shape
        assert torch.allclose(targets.sum(dim=1), torch.ones(8))
        assert (targets >= 0).all() and (targets.max(dim=1).values < 1).all()  # soft, not one-hot


def toy_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 10, generator=gen)
    y = (x @ torch.randn(10, 3, generator=gen)).argmax(dim=1)
    return x, y



def sam_trainer(accum=1, precision="fp32"):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 3))
    opt = SAM(model.parameters(), functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9), rho=0.05)
    return Trainer(model, opt, constant(opt, epochs=1, steps=lambda e: round(1 * e)),
                   TrainerOptions(progress=False, grad_accum_steps=accum, precision=precision),
                   device=torch.device("cpu"))


@pytest.mark.parametrize("accum", [1, 2])
def test_sam_evaluates_the_gradient_twice_per_step(accum):
    trainer = sam_trainer(accum)
    x, y = toy_problem()
    forwards, steps = [], []
    trainer.model.register_forward_hook(lambda *a: forwards.append(1))
    base_step = trainer.optimizer.base_optimizer.step
    trainer.optimizer.base_optimizer.step = lambda *a, **k: (steps.append(1), base_step())[1]
    batches = Batches((x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64))
    trainer.train_epoch(batches)
    assert len(steps) == 4 // accum and len(forwards) == 2 * 4


def test_sam_reduces_the_loss_and_restores_weights():
    trainer = sam_trainer()
    x, y = toy_problem()
    batches = Batches((x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64))
    before = torch.nn.functional.cross_entropy(trainer.model.eval()(x), y).item()
    for _ in range(20):
        trainer.train_epoch(batches)
    after = torch.nn.functional.cross_entropy(trainer.model.eval()(x), y).item()
    assert after < 0.5 * before
    assert not any("w" in s for s in trainer.optimizer.state.values())  # back at w after steps


def test_sam_with_fp16_loss_scaling_steps():
    trainer = sam_trainer(precision="fp16")
    assert trainer.scaler.is_enabled()
    x, y = toy_problem()
    batches = Batches((x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64))
    first = [p.detach().clone() for p in trainer.model.parameters()]
    metrics = trainer.train_epoch(batches)
    assert np.isfinite(metrics["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(first, trainer.model.parameters()))


def test_batch_size_schedule_changes_the_batch_and_scales_lr(run_job):
    _, out = run_job("model=preact", "model.width=4", "sched=none", "trainer.epochs=3",
                     "trainer.batch_schedule={epochs:[2],sizes:[64],scale_lr:true}")
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(float(r["train/batch_size"])) for r in rows] == [32, 64, 64]
    assert [float(r["train/lr"]) for r in rows] == pytest.approx([0.1, 0.2, 0.2])


def test_batch_size_schedule_without_scale_lr_keeps_the_lr(run_job):
    _, out = run_job("model=preact", "model.width=4", "sched=none", "trainer.epochs=2",
                     "trainer.batch_schedule={epochs:[2],sizes:[64]}")
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(float(r["train/batch_size"])) for r in rows] == [32, 64]
    assert [float(r["train/lr"]) for r in rows] == pytest.approx([0.1, 0.1])


def write_png_tree(root, classes=("cat", "dog", "eel"), per_class=6, size=(20, 14)):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")


def test_folder_dataset_from_png_files(run_job, tmp_path, compose_cfg):
    root = tmp_path / "pets"
    write_png_tree(root)
    cfg = compose_cfg(["data=folder", f"data.root={root}", "data.val_size=3"])
    assert cfg.data.num_classes == 3 and cfg.model.num_classes == 3
    splits = load_splits(cfg.data)
    assert splits.classes == ["cat", "dog", "eel"]
    assert splits.train.images.shape == (15, 3, 32, 32) and len(splits.val) == 3
    assert sorted(splits.test.labels.tolist()) == [0] * 6 + [1] * 6 + [2] * 6
    assert list(root.glob(".cache-32px-3ch-center_crop.uint8.pt"))
    summary, _ = run_job("data=folder", f"data.root={root}", "data.val_size=3",
                         "model=preact", "model.width=4", "trainer.batch_size=8")
    assert summary["status"] == "completed"


def test_folder_dataset_reports_a_corrupt_image(tmp_path, compose_cfg):
    root = tmp_path / "pets"
    write_png_tree(root)
    (root / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png is not a readable image"):
        load_splits(compose_cfg(["data=folder", f"data.root={root}"]).data)


def test_folder_cache_follows_an_image_moved_to_another_class(tmp_path, compose_cfg):
    """Same file count, total size and newest mtime: only the paths say that a label changed."""
    root = tmp_path / "pets"
    write_png_tree(root)
    cfg = compose_cfg(["data=folder", f"data.root={root}", "data.val_size=0"]).data
    assert load_splits(cfg).test.labels.bincount().tolist() == [6, 6, 6]  # cache written
    src, dst = root / "test" / "cat" / "0.png", root / "test" / "dog" / "moved.png"
    before = src.stat()
    os.replace(src, dst)
    os.utime(dst, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert load_splits(cfg).test.labels.bincount().tolist() == [5, 7, 6]


def test_mnist_reads_the_official_idx_files(tmp_path, compose_cfg, run_job):
    written = write_mnist_files(tmp_path / "mnist", n_train=60, n_test=20)
    cfg = compose_cfg(["data=mnist", f"data.root={tmp_path / 'mnist'}", "data.val_size=10",
                       "data.files.train_images.md5=null", "data.files.train_labels.md5=null",
                       "data.files.test_images.md5=null", "data.files.test_labels.md5=null"])
    splits = load_splits(cfg.data)
    assert splits.train.images.shape == (50, 1, 28, 28) and splits.test.images.shape == (20, 1, 28, 28)
    assert torch.equal(splits.test.images[:, 0], torch.from_numpy(written["test_images"].astype(np.uint8)))
    assert splits.test.labels.tolist() == written["test_labels"].tolist()
    md5s = [f"data.files.{k}.md5=null" for k in ("train_images", "train_labels", "test_images", "test_labels")]
    for model in ("lenet", "mlp"):
        summary, _ = run_job("data=mnist", f"data.root={tmp_path / 'mnist'}", "data.val_size=10",
                             "aug=none", f"model={model}", "trainer.batch_size=16", *md5s, name=model)
        assert summary["status"] == "completed"


def test_truncated_idx_file_is_reported(tmp_path, compose_cfg):
    from experiments.data.mnist import read_idx

    write_mnist_files(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    import gzip

    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


@pytest.mark.parametrize("overrides,message", [
    (["optim=sam", "sched=plateau", "sched.monitor=train/acc"], "sched.monitor must be one of"),
    (["optim.momentum=0"], "optim.nesterov=true needs optim.momentum > 0"),
    (["data=mnist", "aug=basic"], "aug.flip=true mirrors images"),
    (["data=mnist", "aug=none", "trainer.tta=flip"], "trainer.tta=flip mirrors"),
    (["mix=cutmix", "trainer.batch_size=33"], "trainer.batch_size must be even"),
    (["mix=mixup", "trainer.batch_schedule={epochs:[2,3],sizes:[64,65]}"],
     "trainer.batch_schedule.sizes[1] must be even, got 65"),
    # under DDP each rank mixes its own part of every batch: timm's assertion at step 1, before
    (["mix=mixup", "trainer.devices=2", "trainer.batch_size=34"],
     "trainer.batch_size=34 is 17 images per rank, which must be even. Use a multiple of 4, e.g. "
     "trainer.batch_size=32 or 36"),
    (["mix=cutmix", "trainer.devices=2", "trainer.batch_size=2"],
     "trainer.batch_size=2 is 1 image per rank, which must be even. Use a multiple of 4, e.g. "
     "trainer.batch_size=4"),
    (["mix=cutmix_mixup", "trainer.devices=4", "trainer.batch_size=128",
      "trainer.batch_schedule={epochs:[2],sizes:[132]}"],
     "trainer.batch_schedule.sizes[0]=132 is 33 images per rank, which must be even. Use a multiple "
     "of 8, e.g. trainer.batch_schedule.sizes[0]=128 or 136"),
    (["trainer.batch_schedule={epochs:[2,3],sizes:[64]}"], "equal length"),
])
def test_bad_combinations_are_refused(compose_cfg, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_config(compose_cfg(["data=synthetic", *overrides]))


def test_mlp_on_cifar_shaped_data_just_works(run_job):
    summary, _ = run_job("model=mlp", "model.width=64", "model.depth=1")
    assert summary["status"] == "completed"


def test_presets_compose_with_their_documented_settings(compose_cfg):
    best = compose_cfg(["experiment=best"])
    assert best.model.cifar_stem and best.optim.nesterov and best.mix._target_ == "timm.data.Mixup"
    assert best.sched._target_.endswith("warmup_cosine") and best.trainer.label_smoothing > 0
    assert best.trainer.ema_decay and best.trainer.tta == "flip" and best.trainer.epochs >= 300
    report = compose_cfg(["experiment=seed_report"])
    assert report.sched._target_.endswith("plateau") and report.trainer.grad_clip == 1.0
    assert report.trainer.early_stopping.patience and report.data.val_size > 0
    check_config(best)
    check_config(report)


def overflow_in_pass(trainer, which: int):
    """Make the `which`-th backward pass (1: SAM's first, 2: its second) produce inf gradients,
    as an fp16 overflow does."""
    calls = []

    def inject(grad):
        calls.append(1)
        return grad * float("inf") if len(calls) == which else grad

    trainer.model[3].weight.register_hook(inject)
    return calls


@pytest.mark.parametrize("which", [1, 2])
def test_sam_fp16_overflow_skips_the_step_and_keeps_batchnorm_finite(which):
    trainer = sam_trainer(precision="fp16")
    calls = overflow_in_pass(trainer, which)
    x, y = toy_problem()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    scale = trainer.scaler.get_scale()
    metrics = trainer.train_epoch(Batches([(x[:64], y[:64])]))  # one step
    after = trainer.model.state_dict()
    assert np.isfinite(metrics["loss"])
    assert all(torch.isfinite(v).all() for v in after.values())  # BN running stats too
    for name in ("0.weight", "0.bias", "3.weight", "3.bias", "1.weight", "1.bias"):
        assert torch.equal(after[name], before[name]), f"{name} changed: the step was not skipped"
    assert trainer.scaler.get_scale() < scale  # the scaler saw the overflow
    assert len(calls) == (1 if which == 1 else 2)  # no second pass after a first-pass overflow
    assert not any("w" in s for s in trainer.optimizer.state.values())
    trainer.train_epoch(Batches([(x[64:128], y[64:128])]))  # and the next step trains normally
    assert not torch.equal(trainer.model.state_dict()["3.weight"], before["3.weight"])


# --- grey images, added keys, smoke size of timm models without a width ------------------------

def test_grey_image_folders_train_with_grey_statistics(run_job, tmp_path, compose_cfg):
    """data=folder data.channels=1: images converted to grey, normalized with one mean and std
    (ImageNet's averaged), and trained (a 3-value mean crashed in broadcasting)."""
    root = tmp_path / "grey"
    write_png_tree(root)
    cfg = compose_cfg(["data=folder", f"data.root={root}", "data.channels=1"])
    assert list(cfg.data.mean) == [0.449] and list(cfg.data.std) == [0.226]
    summary, _ = run_job("data=folder", f"data.root={root}", "data.channels=1", "data.val_size=3",
                         "model=preact", "model.width=4", "trainer.batch_size=8")
    assert summary["status"] == "completed"


def test_a_mean_per_channel_is_checked(compose_cfg):
    cfg = compose_cfg(["experiment=smoke", "data.channels=1"])  # synthetic keeps 3 values
    with pytest.raises(ConfigError, match=r"data.mean has 3 values but data.channels=1"):
        check_config(cfg)


@pytest.mark.parametrize("loader", ["device", "dataloader"])
def test_a_pretrained_rgb_model_gets_grey_images_repeated_to_three_channels(tmp_path, loader):
    """Fine-tuning a 3-channel pretrained model on 1-channel data (MNIST, grey folders): every
    channel of a batch is the grey image, normalized with the pretrained statistics."""
    from experiments.batches import Batching
    from experiments.batches.device import device_loaders
    from experiments.batches.workers import worker_loaders
    from experiments.data import Split, Splits
    from experiments.models.pretrained import ModelInput

    grey = Split(torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8), torch.arange(8))
    spec = ModelInput(16, 3, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    make = device_loaders if loader == "device" else (lambda s, b: worker_loaders(s, b, workers=0))
    batches = make(Splits(grey, None, grey, ["x"] * 8), Batching(None, spec, 8, 8, 0, torch.device("cpu")))
    images, _ = next(iter(batches.test))
    assert images.shape == (8, 3, 16, 16)
    raw = grey.images.float() / 255
    for c, (m, s) in enumerate(zip(spec.mean, spec.std)):
        assert torch.allclose(images[:, c:c + 1], (raw - m) / s, atol=1e-5)


def test_a_pretrained_model_is_built_with_its_weights_channels(tmp_path):
    import timm

    from experiments.models import timm_model

    weights = tmp_path / "w.pth"
    torch.save(timm.create_model("test_resnet", num_classes=10).state_dict(), weights)
    model = timm_model("test_resnet", num_classes=10, in_chans=1, image_size=None,
                       pretrained_file=str(weights))
    assert model.conv1[0].in_channels == 3  # the weights', not data.channels


@pytest.mark.parametrize("overrides,key", [
    (["+optim.foo=1"], "optim.foo is not a key of optim (torch.optim.SGD): it takes params, lr"),
    (["optim=muon", "+optim.foreach=false"], "optim.foreach is not a key of optim (experiments.training.muon.Muon)"),
    (["optim=sam", "+optim.base.foo=1"], "optim.base.foo is not a key of optim.base (torch.optim.SGD)"),
    (["+sched.foo=1"], "sched.foo is not a key of sched (experiments.training.schedules.warmup_cosine)"),
    (["+loader.foo=1"], "loader.foo is not a key of loader"),
    (["model=preact", "+model.foo=1"], "model.foo is not a key of model (experiments.models.PreActResNet18)"),
    (["+data.foo=1"], "data.foo is not a key of data (experiments.data.synthetic.Synthetic)"),
    (["+logger.foo=1"], "logger.foo is not a key of logger (experiments.report.tracking.Tracker)"),
    (["+aug.foo=1"], "aug.foo is not a key of aug (experiments.batches.augment.BatchAugment)"),
    (["mix=cutmix", "+mix.foo=1"], "mix.foo is not a key of mix (timm.data.Mixup)"),
    (["+mix.prob=0.5"], "mix builds nothing (its option has no _target_), yet sets mix.prob"),
])
def test_a_key_added_to_a_group_is_refused_with_the_keys_it_takes(compose_cfg, overrides, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        check_config(compose_cfg(["experiment=smoke", *overrides]))


def test_a_key_timms_model_does_not_take_is_refused_where_it_is_built(compose_cfg):
    from experiments.job import build_model

    cfg = compose_cfg(["experiment=smoke", "+model.foo=1"])  # timm_resnet18 passes **kwargs on
    check_config(cfg)
    with pytest.raises(ConfigError, match="a model key is not one experiments.models.timm_resnet18 "
                                          "takes .*unexpected keyword argument 'foo'"):
        build_model(cfg, torch.device("cpu"), channels_last=False)


def test_smoke_size_keeps_a_timm_model_without_a_width_at_its_standard_size(compose_cfg, caplog):
    from experiments.config.resolvers import log_standard_size
    from experiments.job import build_model

    log_standard_size.cache_clear()  # said once per process
    caplog.set_level("INFO")
    cfg = compose_cfg(["experiment=smoke", "model=timm", "model.name=mobilenetv3_small_050"])
    assert cfg.model.width is None and "keeps its standard size" in caplog.text
    check_config(cfg)
    build_model(cfg, torch.device("cpu"), channels_last=False)
    explicit = compose_cfg(["experiment=smoke", "model=timm", "model.name=mobilenetv3_small_050",
                            "model.width=8"])
    with pytest.raises(ConfigError, match="model.width=8: timm's mobilenetv3_small_050 has no width"):
        build_model(explicit, torch.device("cpu"), channels_last=False)
