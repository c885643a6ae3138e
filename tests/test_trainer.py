"""Direct calls into the trainer: it learns, selects on validation, stops early, accumulates, clips."""

import pytest
import torch
import torch.nn as nn

from experiments.batches.device import DeviceLoader, Normalize
from experiments.data import Split
from experiments.models import PreActResNet18
from experiments.training.backends import resolve_precision
from experiments.training.options import EarlyStopping, TrainerOptions
from experiments.training.schedules import constant, warmup_cosine
from experiments.training.selection import Monitor
from experiments.training.trainer import Trainer
from support.batches import PreMadeBatches as Batches


def separable(n: int, classes: int = 4, seed: int = 0) -> Split:
    """Each class a flat colour plus noise: a narrow net separates them within a few epochs."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=gen)
    colours = torch.linspace(30, 220, classes).view(classes, 1, 1, 1)
    noise = torch.randint(-25, 26, (n, 3, 32, 32), generator=gen)
    return Split((colours[labels] + noise).clamp(0, 255).to(torch.uint8), labels)


def loader(split, batch=32, shuffle=False):
    return DeviceLoader(split, batch, Normalize([0.5] * 3, [0.25] * 3, "cpu"), device="cpu",
                        shuffle=shuffle, drop_last=shuffle)


def make_trainer(lr=0.05, **options):
    torch.manual_seed(0)
    model = PreActResNet18(num_classes=4, width=4)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    trainer = Trainer(model, opt, constant(opt, epochs=1, steps=lambda e: round(1 * e)),
                      TrainerOptions(progress=False, **options), device=torch.device("cpu"))
    return trainer


def test_it_learns_and_keeps_the_best_validation_weights():
    trainer = make_trainer(epochs=4)
    train, val = loader(separable(256), shuffle=True), loader(separable(128, seed=1))
    before = trainer.evaluate(val)["acc"]
    result = trainer.fit(train, val)
    trainer.use_best_weights(result)  # (a best epoch before the last: see the test below)
    after = trainer.evaluate(val)
    assert result.epoch == 4 and not result.early_stopped
    assert after["acc"] > max(before, 0.25) + 0.3
    assert after["acc"] == pytest.approx(result.best_val["acc"])
    # the images and seconds of the training passes, but for the warm-up step (one batch of 32),
    # which the job accounts apart, as the speed runs' published times leave it out
    assert result.images_per_s > 0 and result.train_images == 4 * 256 - 32 and result.warmup_s > 0
    assert result.train_time_s == pytest.approx(sum(e["time/epoch_s"] for e in result.history)
                                                - result.warmup_s)


def test_early_stopping_after_patience_epochs_without_improvement():
    # no loss can drop by 100 in an epoch: after the first epoch nothing counts as improvement
    trainer = make_trainer(epochs=10, early_stopping=EarlyStopping(
        patience=2, monitor="val/loss", min_delta=100.0))
    train, val = loader(separable(64), shuffle=True), loader(separable(64, seed=1))
    result = trainer.fit(train, val)
    assert result.early_stopped and result.epoch == 3


def test_without_validation_the_last_weights_are_kept():
    trainer = make_trainer(epochs=2)
    result = trainer.fit(loader(separable(64), shuffle=True), None)
    assert result.best_epoch is None and result.best_val == {} and result.epoch == 2


def test_monitor_modes_and_min_delta():
    m = Monitor("val/loss", min_delta=0.1, patience=1)
    assert m.update({"val/loss": 1.0}) and not m.update({"val/loss": 0.95}) and m.exhausted
    assert m.update({"val/loss": 0.8}) and not m.exhausted


def test_gradient_accumulation_steps_the_optimizer_once_per_group():
    trainer = make_trainer(grad_accum_steps=3)
    steps = []
    trainer.optimizer.step = lambda *a, **k: steps.append(1)
    trainer.train_epoch(loader(separable(7 * 8), batch=8))  # 7 micro-batches -> groups 3, 3, 1
    assert len(steps) == 3


def test_accumulated_gradients_equal_the_big_batch_gradient():
    torch.manual_seed(0)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))

    def grads(batches, accum):
        torch.manual_seed(0)
        model = nn.Linear(5, 3)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        trainer = Trainer(model, opt, constant(opt, epochs=1, steps=lambda e: round(1 * e)),
                          TrainerOptions(grad_accum_steps=accum, progress=False), device=torch.device("cpu"))
        seen = {}
        opt.step = lambda *a, **k: seen.setdefault("g", model.weight.grad.clone())
        trainer.train_epoch(Batches(batches))
        return seen["g"]

    whole = grads([(x, y)], 1)
    halves = grads([(x[:8], y[:8]), (x[8:], y[8:])], 2)
    assert torch.allclose(whole, halves, atol=1e-6)


def test_clipping_bounds_the_gradient_norm():
    trainer = make_trainer(lr=0.05, grad_clip=0.01)
    norms = []
    real_step = trainer.optimizer.step

    def step(*a, **k):
        norms.append(torch.norm(torch.stack([p.grad.norm() for p in trainer.model.parameters()])).item())
        return real_step(*a, **k)

    trainer.optimizer.step = step
    trainer.train_epoch(loader(separable(64), batch=32))
    assert norms and max(norms) <= 0.01 + 1e-6


def test_bf16_autocast_trains_on_cpu():
    trainer = make_trainer(precision="bf16")
    assert trainer.amp_dtype == torch.bfloat16 and not trainer.scaler.is_enabled()
    metrics = trainer.train_epoch(loader(separable(64), batch=32))
    assert torch.isfinite(torch.tensor(metrics["loss"]))


def test_precision_auto_is_fp32_on_cpu():
    assert resolve_precision("auto", torch.device("cpu")) is None
    assert resolve_precision("fp16", torch.device("cpu")) == torch.float16


def test_warmup_cosine_shape():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_cosine(opt, epochs=10, steps=lambda e: round(10 * e), warmup_epochs=2,
                             min_lr_ratio=0.0)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        schedule.step_batch()
    assert lrs[0] == pytest.approx(0.05) and lrs[19] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[19:], lrs[20:])) and lrs[-1] < 0.01


def test_nan_loss_fails_fast_without_a_loss_scaler():
    from experiments.training.divergence import DivergedError

    trainer = make_trainer(lr=1e30, epochs=3)
    with pytest.raises(DivergedError, match="diverged"):
        trainer.fit(loader(separable(128), shuffle=True), None)


def test_a_nonfinite_loss_stops_the_fit_at_its_step_not_at_the_epochs_end():
    """fp32 (and bf16) stop after the first step whose loss is NaN/inf: its gradient has put NaN
    into the weights, and the epoch's other 5 steps would be lost time."""
    from experiments.training.divergence import DivergedError

    split = separable(256)
    x = (split.images.float() - 128) / 64
    batches = Batches([(x[i:i + 32].clone(), split.labels[i:i + 32]) for i in range(0, 256, 32)])
    batches[2][0][0, 0, 0, 0] = float("nan")  # one pixel of step 3's batch
    trainer = make_trainer(epochs=2)
    with pytest.raises(DivergedError) as failed:
        trainer.fit(batches, None)
    assert trainer.steps_taken == 3 and "NaN/inf by step 3 (epoch 1) in fp32" in str(failed.value)
    assert "trainer.precision" not in str(failed.value)  # it is fp32 already: lr and clipping


def test_the_advice_follows_the_precision_the_job_ran_in():
    from experiments.training.divergence import advice

    assert advice("fp32", TrainerOptions()) == "lower optim.lr or set trainer.grad_clip (e.g. 1.0)"
    assert advice("fp32", TrainerOptions(grad_clip=1.0)) == "lower optim.lr or a lower trainer.grad_clip (now 1.0)"
    assert advice("bf16", TrainerOptions()).endswith("or try trainer.precision=fp32 (bf16 keeps 8 bits of mantissa)")
    assert advice("fp16", TrainerOptions()).endswith(
        "or use trainer.precision=bf16 (on GPUs of compute capability 8.0 or more) or fp32")


def test_fp16_scaler_tolerates_a_few_skipped_steps():
    from experiments.training.divergence import DivergedError, NonfiniteWatch

    watch = NonfiniteWatch(torch.device("cpu"), "fp16", TrainerOptions(nonfinite_tolerance=3))
    watch.after_step(torch.tensor(3), step=7)  # within tolerance: fine
    with pytest.raises(DivergedError, match=r"for 4 losses in a row, more than fp16's loss scaler skips "
                                            r"\(trainer.nonfinite_tolerance=3\), by step 8 in fp16"):
        watch.after_step(torch.tensor(4), step=8)
    with pytest.raises(DivergedError):  # bf16: at the first
        NonfiniteWatch(torch.device("cpu"), "bf16", TrainerOptions()).after_step(torch.tensor(1), step=1)


def test_a_partial_last_group_gets_its_own_mean_gradient():
    """3 micro-batches with accum 2: the last step's group is one micro-batch, and its gradient
    must be that batch's mean-loss gradient, not half of it."""
    torch.manual_seed(0)
    x, y = torch.randn(24, 5), torch.randint(0, 3, (24,))
    model = nn.Linear(5, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    trainer = Trainer(model, opt, constant(opt, epochs=1, steps=lambda e: round(1 * e)),
                      TrainerOptions(grad_accum_steps=2, progress=False), device=torch.device("cpu"))
    seen = []
    opt.step = lambda *a, **k: seen.append(model.weight.grad.clone())
    trainer.train_epoch(Batches([(x[:8], y[:8]), (x[8:16], y[8:16]), (x[16:], y[16:])]))

    def full_batch_gradient(xs, ys):
        model.zero_grad()
        nn.functional.cross_entropy(model(xs), ys).backward()
        return model.weight.grad.clone()

    assert len(seen) == 2
    assert torch.allclose(seen[0], full_batch_gradient(x[:16], y[:16]), atol=1e-6)
    assert torch.allclose(seen[1], full_batch_gradient(x[16:], y[16:]), atol=1e-6)


def test_model_selection_tests_the_best_epoch_even_when_it_is_not_the_last():
    """After epoch 2 the weights are scrambled and frozen (lr 0): epoch 3 validates near chance,
    so epoch 2 is the best one, and `use_best_weights` must bring back exactly its weights."""
    trainer = make_trainer(epochs=3)
    train, val = loader(separable(256), shuffle=True), loader(separable(128, seed=1))
    snapshots = {}

    def after_epoch(state, metrics):
        snapshots[state.epoch] = {k: v.clone() for k, v in trainer.eval_weights().items()}
        if state.epoch == 2:
            with torch.no_grad():
                for p in trainer.model.parameters():
                    p.copy_(torch.randn_like(p))
            for group in trainer.optimizer.param_groups:
                group["lr"] = 0.0

    result = trainer.fit(train, val, after_epoch=after_epoch)
    assert result.best_epoch == 2 and result.history[2]["val/acc"] < result.best_val["acc"]
    last = trainer.evaluate(val)
    assert last["acc"] == pytest.approx(result.history[2]["val/acc"])  # fit leaves the last epoch's
    trainer.use_best_weights(result)
    chosen = trainer.eval_weights()
    assert all(torch.equal(chosen[k], snapshots[2][k]) for k in chosen)
    assert not all(torch.equal(chosen[k], snapshots[3][k]) for k in chosen)
    assert trainer.evaluate(val) == pytest.approx(result.best_val)


def test_under_mixing_train_acc_counts_the_mixed_targets_dominant_label():
    """A model that always predicts the dominant label of the mixed target scores 100%, even
    though that label is never the image's original one."""
    classes = 4

    class Oracle(nn.Module):  # predicts the class written in the first input value
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(classes))

        def forward(self, x):
            return nn.functional.one_hot(x[:, 0].long(), classes).float() * 10 + self.bias

    def mix(images, labels):  # 70% of the image of class label+1, 30% of its own
        other = (labels + 1) % classes
        one_hot = nn.functional.one_hot
        return other.float().view(-1, 1).expand_as(images), \
            0.7 * one_hot(other, classes).float() + 0.3 * one_hot(labels, classes).float()

    model = Oracle()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    trainer = Trainer(model, opt, constant(opt, epochs=1, steps=lambda e: round(1 * e)),
                      TrainerOptions(progress=False), device=torch.device("cpu"), mixup=mix)
    labels = torch.arange(16) % classes
    metrics = trainer.train_epoch(Batches([(torch.zeros(16, 3), labels)]))
    assert metrics["acc"] == 1.0


def test_compiled_model_saves_plain_weights():
    """torch.compile wraps the model (`_orig_mod.` names): saved weights, checkpoints and the
    selected weights must still load into the plain model the config builds."""
    trainer = make_trainer(epochs=1)
    plain = trainer.model
    trainer.model = torch.compile(plain, backend="eager")  # as maybe_compile does
    assert any(k.startswith("_orig_mod.") for k in trainer.model.state_dict())
    result = trainer.fit(loader(separable(64), shuffle=True), loader(separable(32, seed=1)))
    for weights in (trainer.eval_weights(), trainer.state_dict()["model"], result.best_weights):
        assert not any(k.startswith("_orig_mod.") for k in weights)
        PreActResNet18(num_classes=4, width=4).load_state_dict(weights)  # strict
    trainer.load_state_dict(trainer.state_dict())  # a resume of the compiled trainer
    trainer.use_best_weights(result)


# --- every schedule's step counts follow the batch schedule ----------------------------------

def scheduled_lrs(compose_cfg, *overrides, n_train=768):
    """The learning rate at every optimizer step of a run, epoch by epoch, as the job builds
    its schedule (batch schedule included)."""
    from experiments.config.checks import check_config
    from experiments.job import build_trainer
    from experiments.training.batch_schedule import BatchSchedule

    cfg = compose_cfg(["experiment=smoke", "model=mlp", "model.width=8", *overrides])
    options = check_config(cfg)
    plan, lrs = BatchSchedule(options), []
    trainer = build_trainer(cfg, options, nn.Linear(4, 2), torch.device("cpu"), n_train, plan)
    for epoch in range(1, options.epochs + 1):
        epoch_lrs = []
        for _ in range(plan.steps_per_epoch(n_train, epoch)):
            epoch_lrs.append(trainer.optimizer.param_groups[0]["lr"])
            trainer.schedule.step_batch()
        lrs.append(epoch_lrs)
        trainer.schedule.step_epoch({"val/acc": 0.5})
    return lrs, cfg


BATCH_SCHEDULE = ["trainer.epochs=6", "trainer.batch_schedule={epochs:[2],sizes:[128]}"]


def test_warmup_ends_where_its_epochs_end_when_the_batch_size_changes_during_it(compose_cfg):
    """The issue's case: warm-up over 2 epochs, the batch growing 32 -> 128 at epoch 2 (24 then 6
    steps an epoch). Counted in epoch 1's steps the warm-up ran 48 steps and peaked at the
    run's last epoch; it must peak at the start of epoch 3."""
    lrs, cfg = scheduled_lrs(compose_cfg, *BATCH_SCHEDULE, "sched.warmup_epochs=2")
    assert [len(e) for e in lrs] == [24, 6, 6, 6, 6, 6]
    flat = [lr for epoch in lrs for lr in epoch]
    assert max(flat) == pytest.approx(cfg.optim.lr) and lrs[2][0] == pytest.approx(cfg.optim.lr)
    assert flat.index(max(flat)) == 29  # the warm-up's last step: the end of epoch 2
    assert lrs[-1][-1] < 0.01 * cfg.optim.lr  # and the cosine ends with the run's last step


def test_one_cycle_peaks_after_its_share_of_the_epochs_under_a_batch_schedule(compose_cfg):
    lrs, cfg = scheduled_lrs(compose_cfg, *BATCH_SCHEDULE, "sched=onecycle", "sched.pct_start=0.5")
    flat = [lr for epoch in lrs for lr in epoch]
    assert sum(len(e) for e in lrs[:3]) - 1 <= flat.index(max(flat)) <= sum(len(e) for e in lrs[:3])
    assert max(flat) == pytest.approx(cfg.optim.lr)


def test_step_decay_counts_epochs_whatever_the_batch_size(compose_cfg):
    lrs, cfg = scheduled_lrs(compose_cfg, *BATCH_SCHEDULE, "sched=step", "sched.step_size=2",
                             "sched.gamma=0.5")
    assert [e[0] for e in lrs] == pytest.approx([cfg.optim.lr * f for f in (1, 1, .5, .5, .25, .25)])


# --- validation loss is not capped ------------------------------------------------------------

class Fixed(nn.Module):
    """Given logits per image: an image is [row, -1] (one pixel row of two); its mirror image,
    [-1, row], gets the row of `mirrored`."""

    def __init__(self, logits, mirrored=None):
        super().__init__()
        self.logits, self.mirrored = logits, mirrored if mirrored is not None else logits

    def forward(self, images):
        first, last = images[:, 0, 0, 0], images[:, 0, 0, -1]
        flipped = first < 0
        rows = torch.where(flipped, last, first).long()
        return torch.where(flipped.view(-1, 1), self.mirrored[rows], self.logits[rows])


def rows_as_images(n):
    images = torch.full((n, 1, 1, 2), -1.0)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)
    return images


def test_a_confidently_wrong_prediction_costs_its_true_loss():
    logits = torch.tensor([[60.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # image 0: sure of a wrong class
    labels = torch.tensor([2, 1])
    trainer = make_trainer()
    trainer.model = Fixed(logits)
    result = trainer.evaluate(Batches([(rows_as_images(2), labels)]))
    expected = nn.functional.cross_entropy(logits.double(), labels).item()
    assert expected > 27.6 and result["loss"] == pytest.approx(expected, rel=1e-6)


def test_flip_tta_loss_is_the_log_of_the_mean_probability():
    logits, mirrored = torch.tensor([[70.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 80.0], [3.0, 0.0]])
    labels = torch.tensor([0, 1])
    trainer = make_trainer()
    trainer.model = Fixed(logits, mirrored)
    result = trainer.evaluate(Batches([(rows_as_images(2), labels)]), tta="flip")
    p = (logits.double().softmax(1) + mirrored.double().softmax(1)) / 2
    assert result["loss"] == pytest.approx(nn.functional.nll_loss(p.log(), labels).item(), rel=1e-6)
    assert result["acc"] == (p.argmax(1) == labels).double().mean().item()
