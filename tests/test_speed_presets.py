"""The speed presets (experiment=speedrun, experiment=airbench) against their sources, as the
sources describe themselves (github.com/CerovazS/Cifar100Speedrun; github.com/KellerJordan/
cifar10-airbench, legacy/airbench94.py): parameter counts, the lr schedules step by step, the
Muon/SGD split, the lookahead, the TTA; both presets run at smoke size and learn. And the job's
own costs: `time_s` accounts for the wall time, `trainer.checkpoint_every` and
`trainer.val_every` thin out the checkpoints and validations (and a job killed between two
checkpoints resumes to the uninterrupted numbers), `trainer.profile` writes a trace."""

import csv
import json
import math
import time

import pytest
import torch
import torch.nn as nn

from conftest import run_train
from experiments.config.checks import check_config
from experiments.data import load_splits
from experiments.job import build_model, build_optimizer, build_trainer, init_from_data
from experiments.models import AirbenchNet, SpeedResNet
from experiments.timing import SECTIONS
from experiments.training.batch_schedule import BatchSchedule
from experiments.training.lookahead import Lookahead
from experiments.training.options import LookaheadOptions
from experiments.training.schedules import linear_warmup_decay, warmup_cosine
from experiments.training.trainer import tta_log_probs
from support.forked import fork, kill_after_checkpoint, wait
from support.jobs import run_here

SPEEDRUN = ["experiment=speedrun", "data=synthetic", "data.num_classes=100"]  # the real shapes
AIRBENCH = ["experiment=airbench", "data=synthetic"]


def count(model: nn.Module, trained_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trained_only)


# --- the networks ------------------------------------------------------------------------------

def test_the_networks_have_their_sources_parameter_counts():
    # speedrun: 15 convs 2,770,624 + 15 BatchNorms 4,480 + the head 25,600
    assert count(SpeedResNet(100)) == 2_800_704
    airbench = AirbenchNet(10)
    # whitening 288 (frozen) + 24, convs 13,824 + 36,864 + 147,456 + 3 x 589,824, BatchNorm
    # weights 1,152 (frozen) and biases 1,152, the head 2,560
    assert count(airbench) == 1_972_792 and count(airbench, trained_only=True) == 1_971_352
    assert airbench(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert SpeedResNet(100)(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


def test_airbench_starts_its_conv_groups_as_identities_and_its_batchnorm_as_the_source():
    net = AirbenchNet(10)
    x = torch.randn(2, 256, 4, 4)
    assert torch.equal(net.groups[2][0](x), x)  # the 256 -> 256 conv: the identity
    norm = net.groups[0][2]
    assert norm.eps == 1e-12 and norm.momentum == 0.4 and not norm.weight.requires_grad
    assert norm.bias.requires_grad and net.logit_scale == pytest.approx(1 / 9)


def test_whitening_decorrelates_the_training_patches():
    """The 12 filters are the patch covariance's eigenvectors over sqrt(eigenvalue + 5e-4): on
    the images they came from, their outputs are uncorrelated, each with second moment
    eigenvalue / (eigenvalue + 5e-4); the other 12 channels are their negatives."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(300, 3, 32, 32, generator=gen)
    images = base + 0.8 * torch.roll(base, 1, dims=3) + 0.3 * base[:, :1]  # correlated pixels
    net = AirbenchNet(10)
    net.init_from_data(images)
    with torch.no_grad():
        out = nn.functional.conv2d(images, net.whiten.weight)  # without the bias
    half = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()
    moments = half.T @ half / len(half)
    patches = images.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    eigenvalues = torch.linalg.eigvalsh(patches.double().T @ patches.double() / len(patches))
    assert torch.allclose(moments.diagonal(), eigenvalues / (eigenvalues + 5e-4), atol=1e-4)
    assert (moments - torch.diag(moments.diagonal())).abs().max() < 1e-4
    assert torch.equal(out[:, 12:], -out[:, :12])


def test_the_job_whitens_airbench_from_its_first_training_images(compose_cfg, tmp_path):
    cfg = compose_cfg([*AIRBENCH, "size=smoke", "model.width=64"])
    device = torch.device("cpu")
    model, model_input = build_model(cfg, device, channels_last=False)
    before = model.whiten.weight.clone()
    splits = load_splits(cfg.data)
    init_from_data(model, splits, model_input, device)
    reference = AirbenchNet(10)
    mean, std = torch.tensor(model_input.mean).view(1, 3, 1, 1), torch.tensor(model_input.std).view(1, 3, 1, 1)
    reference.init_from_data((splits.train.images[:5000].float() / 255 - mean) / std)
    assert not torch.equal(model.whiten.weight, before)
    assert torch.allclose(model.whiten.weight, reference.whiten.weight, atol=1e-4)


# --- the recipes' numbers ----------------------------------------------------------------------

def composed(compose_cfg, overrides):
    cfg = compose_cfg(overrides)
    return cfg, check_config(cfg)


def test_the_presets_carry_their_sources_settings(compose_cfg):
    cfg, options = composed(compose_cfg, SPEEDRUN)
    assert (options.epochs, options.batch_size, options.label_smoothing) == (16, 1024, 0.05)
    assert cfg.model._target_.endswith("SpeedResNet") and cfg.data.val_size == 0
    assert (cfg.aug.crop_padding, cfg.aug.crop_pad_mode, cfg.aug.flip) == (4, "reflect", True)
    assert options.compile and options.tta == "none" and options.lookahead is None
    cfg, options = composed(compose_cfg, AIRBENCH)
    assert (options.epochs, options.batch_size, options.label_smoothing) == (10, 1024, 0.2)
    assert (cfg.aug.crop_padding, cfg.aug.crop_pad_mode, cfg.aug.flip) == (2, "reflect", True)
    assert options.tta == "flip_translate" and cfg.data.val_size == 0
    assert (options.lookahead.every, options.lookahead.warmup_power) == (5, 3.0)
    assert options.lookahead.decay == pytest.approx(0.95 ** 5)
    # both: checkpoint and validate at the end only (their epochs are 0.4-2 s on a GPU)
    for preset in (SPEEDRUN, AIRBENCH):
        _, options = composed(compose_cfg, preset)
        assert options.checkpoint_every == options.val_every == options.epochs


def steps_of(schedule, n):
    """The lr factor of optimizer steps 0..n-1, as the schedule gives them."""
    factors = []
    for _ in range(n):
        factors.append(schedule.optimizer.param_groups[0]["lr"] / 1.0)
        schedule.optimizer.step()
        schedule.step_batch()
    return factors


def one_param_optimizer():
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)


def test_the_speedrun_schedule_is_a_cosine_from_the_lr_to_zero_over_768_steps(compose_cfg):
    """50,000 images at 1024, the partial batch dropped: 48 steps an epoch, 16 epochs; step k
    trains at 0.5 (1 + cos(pi k / 768))."""
    cfg, options = composed(compose_cfg, SPEEDRUN)
    plan = BatchSchedule(options)
    assert plan.steps_until(50_000, options.epochs) == 768
    schedule = warmup_cosine(one_param_optimizer(), epochs=16, steps=lambda e: plan.steps_until(50_000, e),
                             warmup_epochs=cfg.sched.warmup_epochs, min_lr_ratio=cfg.sched.min_lr_ratio)
    factors = steps_of(schedule, 768)
    for k in (0, 1, 100, 384, 700, 767):
        assert factors[k] == pytest.approx(0.5 * (1 + math.cos(math.pi * k / 768)), abs=1e-9), k


def test_the_airbench_schedule_is_its_triangle(compose_cfg):
    """The source's 476 steps: 0.2 + 0.8 k / 109 up to step 109, then 1 - 0.93 (k - 109) / 367;
    the preset's 10 epochs are 480 steps, peaking at step int(0.23 x 480) = 110."""
    cfg, options = composed(compose_cfg, AIRBENCH)
    s = cfg.sched
    factors = steps_of(linear_warmup_decay(one_param_optimizer(), epochs=1, steps=lambda e: round(476 * e),
                                           start_ratio=s.start_ratio, peak_at=s.peak_at, end_ratio=s.end_ratio), 476)
    assert factors[0] == pytest.approx(0.2) and factors[109] == pytest.approx(1.0)
    assert factors[50] == pytest.approx(0.2 + 0.8 * 50 / 109)
    assert factors[300] == pytest.approx(1 - 0.93 * 191 / 367)
    assert factors[475] == pytest.approx(1 - 0.93 * 366 / 367)  # 0.0725
    assert BatchSchedule(options).steps_until(50_000, options.epochs) == 480


def test_the_speedrun_splits_muon_and_sgd_as_its_source(compose_cfg):
    """Muon: every conv kernel and the head (2,796,224 parameters) at lr 0.035, momentum 0.95
    without nesterov, decay 2e-4; SGD: the BatchNorm weights and biases (4,480) at lr 0.02,
    momentum 0.9, nesterov, no decay."""
    cfg, options = composed(compose_cfg, SPEEDRUN)
    model = SpeedResNet(100)
    optimizer = build_optimizer(cfg, options, model, torch.device("cpu"))
    muon = [g for g in optimizer.param_groups if g["use_muon"]]
    sgd = [g for g in optimizer.param_groups if g.get("sgd")]
    assert len(muon) + len(sgd) == len(optimizer.param_groups)
    assert sum(p.numel() for g in muon for p in g["params"]) == 2_796_224
    assert sum(p.numel() for g in sgd for p in g["params"]) == 4_480
    assert all(p.ndim == 1 for g in sgd for p in g["params"])
    assert {(g["lr"], g["momentum"], g["nesterov"], g["weight_decay"]) for g in muon} == {(0.035, 0.95, False, 2e-4)}
    assert {(g["lr"], g["momentum"], g["nesterov"], g["weight_decay"]) for g in sgd} == {(0.02, 0.9, True, 0.0)}


def test_muons_sgd_side_steps_as_torchs_sgd(compose_cfg):
    cfg, options = composed(compose_cfg, SPEEDRUN)
    torch.manual_seed(0)
    model = SpeedResNet(10, width=4)
    twin = SpeedResNet(10, width=4)
    twin.load_state_dict(model.state_dict())
    optimizer = build_optimizer(cfg, options, model, torch.device("cpu"))
    vectors = [p for p in twin.parameters() if p.ndim == 1]
    reference = torch.optim.SGD(vectors, lr=0.02, momentum=0.9, nesterov=True)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(3):
        for net, opt in ((model, optimizer), (twin, reference)):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        with torch.no_grad():  # the matrices as Muon stepped them, so that only the SGD side differs
            for a, b in zip(model.parameters(), twin.parameters()):
                if a.ndim > 1:
                    b.copy_(a)
    ours = [p for p in model.parameters() if p.ndim == 1]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours, vectors))
    state = optimizer.state_dict()  # the SGD side's momentum is in the checkpoint
    assert sum("momentum_buffer" in s for s in state["state"].values()) >= len(ours)


def test_airbench_gives_its_batchnorm_biases_64x_the_lr_at_the_same_lr_times_decay(compose_cfg):
    cfg, options = composed(compose_cfg, AIRBENCH)
    optimizer = build_optimizer(cfg, options, AirbenchNet(10), torch.device("cpu"))
    weights, vectors = optimizer.param_groups
    assert weights["lr"] == 1.5 and vectors["lr"] == 96.0 and weights["momentum"] == 0.85
    assert all(p.ndim > 1 for p in weights["params"]) and all(p.ndim == 1 for p in vectors["params"])
    # the source: lr 11.5 / 7850.67 on the summed loss, x 1024 on the mean; lr x decay 0.0019957
    for group in (weights, vectors):
        assert group["lr"] * group["weight_decay"] == pytest.approx(0.0153 * 1024 / 7850.67, rel=1e-3)


def test_airbench_keeps_its_lr_per_image_at_another_batch_size(compose_cfg):
    """The source's loss is a sum: its step per image does not depend on the batch. On our mean
    loss the lr follows the batch (size=smoke's 32: 1.5 / 32), and lr x decay with it."""
    cfg, options = composed(compose_cfg, [*AIRBENCH, "size=smoke"])
    assert options.batch_size == 32
    optimizer = build_optimizer(cfg, options, AirbenchNet(10), torch.device("cpu"))
    weights, vectors = optimizer.param_groups
    assert weights["lr"] == pytest.approx(1.5 * 32 / 1024) and vectors["lr"] == pytest.approx(64 * 1.5 * 32 / 1024)
    assert weights["lr"] * weights["weight_decay"] == pytest.approx(0.0153 * 32 / 7850.67, rel=1e-3)


def test_the_lookahead_follows_airbench94():
    """Every 5 steps: slow = d slow + (1 - d) w, w = slow, d = 0.95^5 (step / total)^3; the last
    step ends on the slow weights."""
    model = nn.Linear(1, 1, bias=False)
    look = Lookahead(model, LookaheadOptions(every=5), total_steps=20)
    assert look.decay_at(5) == pytest.approx(0.95 ** 5 * (5 / 20) ** 3)
    assert look.decay_at(20) == 1.0
    with torch.no_grad():
        model.weight.fill_(0.0)
        look.slow["weight"].fill_(0.0)
    weight = slow = 0.0  # the same, by hand
    for step in range(1, 21):
        with torch.no_grad():
            model.weight.add_(1.0)  # an optimizer step
        weight += 1.0
        look.after_step(step)
        if step % 5 == 0:
            d = 0.95 ** 5 * (step / 20) ** 3 if step < 20 else 1.0
            slow = d * slow + (1 - d) * weight
            weight = slow
        assert model.weight.item() == pytest.approx(weight, abs=1e-6), step
    assert weight == slow


def test_flip_translate_tta_weights_the_image_half_and_each_shift_a_quarter():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    images = torch.randn(6, 3, 8, 8)
    padded = nn.functional.pad(images, (1, 1, 1, 1), mode="reflect")

    def mirrored(x):
        return 0.5 * (model(x).softmax(1) + model(x.flip(3)).softmax(1))

    expected = 0.5 * mirrored(images) + 0.25 * mirrored(padded[..., :8, :8]) + 0.25 * mirrored(padded[..., 2:, 2:])
    with torch.no_grad():
        ours = tta_log_probs(model, images, "flip_translate").exp()
        assert torch.allclose(ours, expected, atol=1e-6)
        assert torch.allclose(tta_log_probs(model, images, "flip").exp(), mirrored(images), atol=1e-6)


# --- the presets run, and the job accounts for its time -----------------------------------------

def test_the_speedrun_preset_runs_at_smoke_size_and_learns(tmp_path):
    run_here(["experiment=speedrun", "size=smoke", "logger=none", "trainer.progress=false"], tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["test_acc"] > 0.5  # chance: 0.1
    assert summary["best_val_acc"] is None  # no validation split, as the speedrun
    assert summary["choices"]["model"] == "speedrun" and summary["choices"]["optim"] == "speedrun"


def test_airbench_runs_at_smoke_size_learns_and_its_time_adds_up_to_the_wall_time(tmp_path):
    """As a user runs it: `time_s`'s sections add up to its wall, `rest` (what no section
    claims) stays under 3% of it, and the wall is the process's time, timed from outside, but
    for the interpreter's start and exit."""
    started = time.perf_counter()
    done = run_train("experiment=airbench", "size=smoke", "logger=tensorboard", "trainer.progress=false",
                     f"hydra.run.dir={tmp_path}", cwd=tmp_path, fresh=True)  # (its imports counted)
    outside = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    # (0.98 here, 2026-12-02; at a fixed lr 1.5, meant for batch 1024, it had reached 0.87 and
    # diverged to 0.31 without the lookahead)
    assert summary["test_acc"] > 0.9 and summary["test_tta_acc"] > 0.9
    t = summary["time_s"]
    sections = (*SECTIONS, "rest")
    assert sum(t[k] for k in sections) == pytest.approx(t["wall"], abs=0.01)
    assert all(t[k] >= 0 for k in sections) and t["rest"] < 0.03 * t["wall"], t
    assert t["train"] == pytest.approx(summary["train_time_s"], abs=0.01)
    assert t["validation"] == 0 and t["test"] > 0 and t["startup"] > 0 and t["warmup"] > 0
    # outside the wall: the interpreter's start and its exit after summary.json is written (the
    # teardown of torch's and timm's modules: 0.8-1.8 s here, 2026-12-01)
    assert t["wall"] <= outside < t["wall"] + 4.0, (t["wall"], outside)


def test_checkpoint_every_and_val_every_thin_out_checkpoints_and_validations(tmp_path):
    from experiments.training.checkpoint import Checkpoint
    epochs = []
    save = Checkpoint.save

    def counting(self, trainer, state, extra):
        epochs.append((state.epoch, state.progress is not None))
        save(self, trainer, state, extra)

    Checkpoint.save = counting
    try:
        run_here(["experiment=smoke", "logger=none", "trainer.progress=false", "trainer.epochs=5",
                  "trainer.checkpoint_every=2", "trainer.val_every=2", "trainer.keep_checkpoint=true"],
                 tmp_path)
    finally:
        Checkpoint.save = save
    assert epochs == [(2, False), (4, False), (5, False)]  # every 2nd, and the last
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    validated = [int(r["epoch"]) for r in rows if r.get("val/acc")]
    assert validated == [2, 4, 5]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best_epoch"] in validated


def test_a_job_killed_between_sparse_checkpoints_resumes_to_the_uninterrupted_numbers(tmp_path):
    """checkpoint_every=2: killed in epoch 3, after the checkpoint of epoch 2, it redoes epoch 3
    and ends as an uninterrupted run."""
    args = ["experiment=smoke", "logger=none", "trainer.progress=false", "model=preact",
            "model.width=4", "data.train_size=448", "data.val_size=64", "data.test_size=64",
            "trainer.epochs=4", "trainer.checkpoint_every=2"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    reference = fork(lambda: run_here(args, clean))

    def crash():
        kill_after_checkpoint()
        run_here(args, killed)

    assert wait(fork(crash)) == -9
    assert wait(fork(lambda: run_here(args, killed))) == 0
    assert wait(reference) == 0
    resumed, uninterrupted = (json.loads((o / "summary.json").read_text()) for o in (killed, clean))
    assert resumed["resumed_from_epoch"] == 2
    for key in ("test_acc", "test_loss", "best_val_acc", "best_epoch", "epochs_completed"):
        assert resumed[key] == uninterrupted[key], key


def profiled(out, caplog, *overrides) -> tuple[str, dict]:
    """A smoke job with `overrides`: what it logged of trainer.profile, and its summary."""
    caplog.set_level("INFO")
    run_here(["experiment=smoke", "logger=tensorboard", "trainer.progress=false", "trainer.epochs=1",
              *overrides], out)
    traces = list((out / "tb").glob("*.pt.trace.json"))
    assert len(traces) == 1 and json.loads(traces[0].read_text())["traceEvents"]
    logged = "\n".join(r.getMessage() for r in caplog.records if "trainer.profile" in r.getMessage())
    return logged, json.loads((out / "summary.json").read_text())


def test_profile_writes_a_trace_and_logs_the_top_ops(tmp_path, caplog):
    logged, summary = profiled(tmp_path, caplog, "trainer.profile=2")
    assert "aten::" in logged and "Self CPU" in logged
    assert "trainer.profile: 2 training steps recorded (trace in" in logged
    # the trace's collection and writing, inside the epoch's training pass, is no training time
    t = summary["time_s"]
    assert t["profile"] > 0 and t["train"] == pytest.approx(summary["train_time_s"], abs=0.02), t


def test_profile_beyond_the_runs_steps_records_what_there_is_and_says_so(tmp_path, caplog):
    """4 optimizer steps, the first 2 not recorded: 2 are, not the 50 asked; the trace's export
    (0.13 s of this job's 0.66 s here, 2026-12-07) is charged to `profile`: it had been outside
    every section, in `rest` (29-47% of a smoke job's wall)."""
    logged, summary = profiled(tmp_path, caplog, "trainer.profile=50", "data.train_size=160",
                               "data.val_size=32", "data.test_size=32", "trainer.batch_size=32")
    assert "trainer.profile=50: the run has 4 optimizer steps and the first 2 are not recorded: " \
           "recording 2" in logged
    assert "trainer.profile: 2 training steps recorded of the 50 asked" in logged
    t = summary["time_s"]
    assert t["profile"] > 0 and t["rest"] < 0.1 * t["wall"], t  # (3-7 ms of 0.5-2 s here)
    assert t["train"] == pytest.approx(summary["train_time_s"], abs=0.02), t


def test_a_profile_cut_short_reports_the_steps_it_recorded(tmp_path, caplog):
    """A run that ends before the recording does (early stopping, a resumed run's fewer steps)."""
    from experiments.timing import JobClock
    from experiments.training.profile import StepProfiler

    caplog.set_level("INFO")
    clock, model = JobClock(), nn.Linear(4, 2)
    profiler = StepProfiler(10, tmp_path, torch.device("cpu"), clock)
    for _ in range(5):
        model(torch.randn(2, 4)).sum().backward()
        assert profiler.step() == 0.0
    profiler.close()
    assert profiler.recorded == 3 and clock.seconds["profile"] > 0
    assert "trainer.profile: 3 training steps recorded of the 10 asked" in caplog.text
    early = StepProfiler(10, tmp_path / "early", torch.device("cpu"))
    early.step()
    early.close()
    assert "trainer.profile=10: the run ended before a step was recorded" in caplog.text


def test_the_trainer_builds_the_lookahead_over_the_runs_steps(compose_cfg):
    cfg, options = composed(compose_cfg, [*AIRBENCH, "size=smoke"])
    device = torch.device("cpu")
    model, _ = build_model(cfg, device, channels_last=False)
    plan = BatchSchedule(options)
    trainer = build_trainer(cfg, options, model, device, 1024, plan)
    assert trainer.lookahead is not None and trainer.lookahead.total == plan.steps_until(1024, options.epochs)
    assert "lookahead" in trainer.state_dict()
