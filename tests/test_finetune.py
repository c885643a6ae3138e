"""Fine-tuning, on the CPU with no network: a tiny timm model's random weights act as the
"pretrained" weights (a file, a timm checkpoint, or a Hugging Face cache entry the test writes),
loaded tensor by tensor but the head; inputs resized and normalized as the model was pretrained;
per-group learning rates; image folders of photos at larger sizes; what is refused."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import timm
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image
from torchvision.transforms import v2

from conftest import run_train
from experiments.batches import Batching
from experiments.batches.augment import BatchAugment
from experiments.batches.device import DeviceLoader, Normalize, check_fits_device, device_loaders
from experiments.data import Split, Splits
from experiments.data.folder import check_decoded_size, decode
from experiments.errors import ConfigError, DataError, UserError
from experiments.models import timm_model
from experiments.models.pretrained import ModelInput, input_for
from experiments.training.param_groups import param_groups
from experiments.training.schedules import warmup_cosine
from support.pickles import creates

NAME = "test_resnet"  # timm's 0.5M-parameter test model, pretrained at 160 px, mean/std 0.5


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    return timm.create_model(NAME, pretrained=False)  # 1000 classes, as the real weights


@pytest.fixture(scope="module")
def weights(source, tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "w.pth"
    torch.save(source.state_dict(), path)
    return path


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network, and an empty Hugging Face cache unless a test writes one."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    import huggingface_hub.constants as hf
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)


def assert_loaded_but_head(model, source, num_classes):
    mine, theirs = model.state_dict(), source.state_dict()
    head = model.pretrained_cfg["classifier"]
    body = [k for k in theirs if not k.startswith(head + ".")]
    assert body and all(torch.equal(mine[k], theirs[k]) for k in body)
    assert mine[f"{head}.weight"].shape == (num_classes, theirs[f"{head}.weight"].shape[1])
    if mine[f"{head}.weight"].shape == theirs[f"{head}.weight"].shape:  # a new head all the same
        assert not torch.equal(mine[f"{head}.weight"], theirs[f"{head}.weight"])


def test_a_weights_file_loads_all_but_the_head(source, weights):
    model = timm_model(NAME, num_classes=10, image_size=None, pretrained_file=str(weights))
    assert_loaded_but_head(model, source, 10)
    assert type(model.maxpool) is type(source.maxpool)  # the pretrained stem, no CIFAR surgery
    spec = input_for(OmegaConf.create({"name": NAME, "image_size": None, "pretrained_file": str(weights)}),
                     None, model)
    assert spec == ModelInput(160, 3, (0.5,) * 3, (0.5,) * 3, str(weights))


def test_a_timm_checkpoint_and_a_file_with_another_head_load_too(source, tmp_path):
    torch.save({"state_dict": source.state_dict(), "epoch": 7}, tmp_path / "ck.pth")
    assert_loaded_but_head(timm_model(NAME, 10, image_size=None, pretrained_file=str(tmp_path / "ck.pth")),
                           source, 10)
    tuned = timm.create_model(NAME, num_classes=37)  # e.g. fine-tuned on Oxford-IIIT Pet
    torch.save(tuned.state_dict(), tmp_path / "pets.pth")
    model = timm_model(NAME, 100, image_size=None, pretrained_file=str(tmp_path / "pets.pth"))
    assert_loaded_but_head(model, tuned, 100)
    assert_loaded_but_head(timm_model(NAME, 37, image_size=None, pretrained_file=str(tmp_path / "pets.pth")),
                           tuned, 37)  # as many classes as the file's: still a new classifier


def test_a_timm_training_checkpoint_loads_its_ema_weights(source, tmp_path):
    """As timm's train.py saves it: optimizer state, the run's argparse.Namespace, EMA weights."""
    other = timm.create_model(NAME)
    optimizer = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    other(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    torch.save({"epoch": 3, "arch": NAME, "state_dict": other.state_dict(),
                "optimizer": optimizer.state_dict(), "version": 2,
                "args": argparse.Namespace(model=NAME, lr=0.1), "metric": 12.5,
                "state_dict_ema": source.state_dict()}, tmp_path / "last.pth.tar")
    model = timm_model(NAME, 10, image_size=None, pretrained_file=str(tmp_path / "last.pth.tar"))
    assert_loaded_but_head(model, source, 10)


def test_a_weights_file_that_runs_code_is_refused_unrun(source, tmp_path):
    marker = tmp_path / "ran"
    torch.save({"state_dict": source.state_dict(), "hook": creates(marker)}, tmp_path / "w.pth")
    with pytest.raises(UserError) as err:
        timm_model(NAME, 10, image_size=None, pretrained_file=str(tmp_path / "w.pth"))
    assert "holds pickled Python objects (builtins.exec) besides tensors" in str(err.value)
    assert "nothing in it was run" in str(err.value) and not marker.exists()
    torch.load(tmp_path / "w.pth", weights_only=False)  # the test is not vacuous: this runs it
    assert marker.exists()


def test_the_cache_is_read_without_network(source, tmp_path):
    """A Hugging Face cache entry, laid out as huggingface_hub writes it."""
    from safetensors.torch import save_file
    repo = tmp_path / "hf" / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, snapshot / "model.safetensors")
    model = timm_model(NAME, num_classes=10, image_size=None, pretrained=True)
    assert_loaded_but_head(model, source, 10)
    spec = input_for(OmegaConf.create({"name": NAME, "image_size": None, "pretrained": True}), None, model)
    assert spec.weights.startswith("hf-hub:timm/test_resnet.r160_in1k (")


def test_missing_weights_name_the_model_and_both_ways():
    with pytest.raises(UserError) as err:
        timm_model(NAME, num_classes=10, image_size=None, pretrained=True)
    text = str(err.value)
    assert "no weights for timm's test_resnet in the local cache" in text
    assert "timm.create_model('test_resnet', pretrained=True)" in text and "model.pretrained_file=PATH" in text


def test_refused(weights, tmp_path):
    with pytest.raises(UserError, match="does not fit timm's resnet18"):
        timm_model("resnet18", 10, image_size=None, pretrained_file=str(weights))
    with pytest.raises(UserError, match="no such file"):
        timm_model(NAME, 10, image_size=None, pretrained_file=str(tmp_path / "nothere.pth"))
    (tmp_path / "junk.pth").write_text("not weights")
    with pytest.raises(UserError, match="not a readable state dict"):
        timm_model(NAME, 10, image_size=None, pretrained_file=str(tmp_path / "junk.pth"))
    with pytest.raises(ConfigError, match="a pretrained model's size is its weights'"):
        timm_model(NAME, 10, image_size=None, width=8, pretrained_file=str(weights))
    with pytest.raises(ConfigError, match="model.image_size=null means the pretrained input size"):
        timm_model(NAME, 10, image_size=None)


# --- the batch path: resized and normalized as the model was pretrained ------------------------

def test_batches_are_resized_on_the_device_and_normalized_with_the_pretrained_statistics():
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    split = Split(images, torch.arange(8))
    loader = DeviceLoader(split, 8, Normalize((0.5,) * 3, (0.5,) * 3, "cpu"), device="cpu", size=160)
    batch, _ = next(iter(loader))
    assert batch.shape == (8, 3, 160, 160)
    expected = (v2.functional.resize(images.float(), [160, 160], antialias=True) / 255 - 0.5) / 0.5
    assert torch.allclose(batch, expected, atol=1e-5)  # torchvision's Resize, then Normalize


def test_the_dataset_that_will_not_fit_on_the_device_is_refused_up_front():
    split = Split(torch.zeros(100, 3, 224, 224, dtype=torch.uint8), torch.zeros(100, dtype=torch.long))
    splits = Splits(split, None, split, ["a"])
    check_fits_device(splits, torch.device("cpu"), None)  # the CPU: nothing to check
    check_fits_device(splits, torch.device("cuda"), 10 * 2 * split.images.nbytes)
    with pytest.raises(UserError, match="loader=dataloader"):
        check_fits_device(splits, torch.device("cuda"), 2 * split.images.nbytes)


def test_device_loaders_check_the_fit(monkeypatch):
    import experiments.batches.device as device
    monkeypatch.setattr(device, "free_device_memory", lambda d: 1000)
    split = Split(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    batching = Batching(None, ModelInput(32, 3, (0.5,) * 3, (0.5,) * 3), 2, 2, 0, torch.device("cpu"))
    with pytest.raises(UserError, match="GiB free"):
        device_loaders(Splits(split, None, split, ["a"]), batching)


# --- learning rates per group ------------------------------------------------------------------

def test_the_backbone_learns_slower_than_the_new_head_through_the_schedule(source):
    model = timm.create_model(NAME, num_classes=10)
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, backbone_lr_scale=0.1)
    head = {id(p) for p in model.fc.parameters()}
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-3])
    assert {id(p) for p in groups[1]["params"]} == head
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    schedule = warmup_cosine(optimizer, epochs=4, steps=lambda e: round(10 * e), warmup_epochs=1,
                             min_lr_ratio=0.0)
    for _ in range(15):
        optimizer.step()
        schedule.step_batch()
    backbone, head_lr = (g["lr"] for g in optimizer.param_groups)
    assert 0 < backbone and backbone == pytest.approx(0.1 * head_lr)


def test_layer_decay_uses_timms_layers():
    model = timm.create_model(NAME, num_classes=10)
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    scales = sorted({g["lr_scale"] for g in groups})
    assert scales[-1] == 1.0 and len(scales) >= 3 and scales[0] < 0.2  # the stem learns slowest
    assert all(g["lr"] == pytest.approx(1e-3 * g["lr_scale"]) for g in groups)
    with pytest.raises(ConfigError, match="not both"):
        param_groups(model, 1e-3, 0.05, backbone_lr_scale=0.1, layer_decay=0.5)
    assert param_groups(model, 1e-3, 0.05) == list(model.parameters())  # the default: unchanged


# --- image folders of photos -------------------------------------------------------------------

def test_photos_keep_their_aspect_shorter_side_then_centre_crop(tmp_path):
    """A smooth 160x90 photo whose outer 35 columns on each side are pure red: the centre crop
    drops them, as torchvision's Resize(64) + CenterCrop(64) does; stretching keeps them."""
    y, x = np.mgrid[0:90, 0:160]
    pixels = np.stack([x * 1.5, y * 2.5, 128 + 60 * np.sin(x / 15.0)], axis=-1).astype(np.uint8)
    pixels[:, :35] = pixels[:, -35:] = (255, 0, 0)
    photo = Image.fromarray(pixels)
    photo.save(tmp_path / "p.png")
    mine = torch.from_numpy(decode(tmp_path / "p.png", 64, 3).copy()).float()
    reference = v2.Compose([v2.PILToTensor(), v2.Resize(64, antialias=True), v2.CenterCrop(64)])(photo).float()
    assert mine.shape == reference.shape == (3, 64, 64)
    assert (mine - reference).abs().mean() < 2.0  # PIL's and torch's antialiased bilinear differ slightly
    assert (mine[0] == 255).float().mean() < 0.05  # the red sides are (almost) cropped away
    stretched = torch.from_numpy(decode(tmp_path / "p.png", 64, 3, fit="stretch").copy()).float()
    assert (stretched[0] == 255).float().mean() > 0.3


def test_the_decoded_size_is_estimated_and_refused_when_memory_cannot_hold_it():
    assert check_decoded_size(3680, 3, 224, free=None) == 3680 * 3 * 224 * 224  # Oxford-IIIT Pet
    with pytest.raises(DataError, match="more than the 0.1 GiB of free memory"):
        check_decoded_size(3680, 3, 224, free=2**30 // 10)


# --- the preset, end to end --------------------------------------------------------------------

def test_finetune_preset_runs_from_a_weights_file(weights, tmp_path):
    """experiment=finetune as a user runs it, at smoke size: loads, fine-tunes, records the source."""
    result = run_train("experiment=finetune", f"model.name={NAME}", f"model.pretrained_file={weights}",
                       "size=smoke", "model.image_size=48", "data.train_size=96", "data.val_size=32",
                       "data.test_size=32", "trainer.epochs=1", "logger=none", "trainer.progress=false",
                       f"hydra.run.dir={tmp_path / 'job'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["pretrained"] == str(weights)
    assert summary["choices"]["experiment"] == "finetune" and summary["choices"]["aug"] == "rrc"
    config = yaml.safe_load((tmp_path / "job" / "config.yaml").read_text())
    assert config["model"]["width"] is None and config["param_groups"]["backbone_lr_scale"] == 0.1


def test_muon_takes_the_groups_rates_once():
    """param_groups gives each group its final lr (and lr_scale as a record): Muon must not
    scale it again; its AdamW side is scaled from adamw_lr."""
    from test_muon import make_muon
    model = timm.create_model(NAME, num_classes=10)
    optimizer = make_muon(param_groups(model, lr=0.24, weight_decay=0.0, backbone_lr_scale=0.1),
                     lr=0.24, adamw_lr=3e-4)
    rates = {(g["use_muon"], g["lr_scale"]): g["lr"] for g in optimizer.param_groups}
    assert rates[(True, 0.1)] == pytest.approx(0.024)  # backbone matrices
    assert rates[(False, 0.1)] == pytest.approx(3e-5)  # backbone norms, biases, stem
    assert rates[(False, 1.0)] == pytest.approx(3e-4)  # the classifier


def test_the_dataloader_path_resizes_like_the_device_path():
    """Evaluation batches at a pretrained size from 32 px data: the same on both loaders (the
    DataLoader's Resize works in uint8 fixed point: within one grey level)."""
    from experiments.batches.workers import WorkerLoader, torchvision_transform
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    split, mean, std = Split(images, torch.arange(6)), (0.5,) * 3, (0.25,) * 3
    device = DeviceLoader(split, 6, Normalize(mean, std, "cpu"), device="cpu", size=72)
    workers = WorkerLoader(split, 6, torchvision_transform(None, mean, std, 72, stored_size=32),
                           device="cpu", workers=0)
    (a, _), (b, _) = next(iter(device)), next(iter(workers))
    assert a.shape == b.shape == (6, 3, 72, 72)
    assert (a - b).abs().max() <= 1 / 255 / 0.25 + 1e-5
    assert (a - b).abs().mean() < 0.5 / 255 / 0.25  # rounding: ~0.3 levels on average
    # augmented: crop and flip at the stored size first, then the resize (as the device path)
    names = [type(op).__name__ for op in
             torchvision_transform(BatchAugment(4, True), mean, std, 72, stored_size=32).transforms]
    assert names[:3] == ["RandomCrop", "RandomHorizontalFlip", "Resize"]
