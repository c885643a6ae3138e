"""The CUDA-only paths, imitated on the CPU: a patched `torch.cuda` (capability, GPU count,
current device), an out-of-memory raised by the device copy, `torch.compile(backend="eager")`,
a checkpoint whose RNG states come from a GPU machine, and a data root the job cannot write."""

import functools

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf
from test_catalogue import TINY_DATA, TINY_RUN, write_png_tree

from experiments.batches.device import DeviceLoader, Normalize
from experiments.config.checks import check_config
from experiments.data import Split, load_splits
from experiments.errors import ConfigError, DataError, UserError
from experiments.job import CompileWatch, build_optimizer, configure_backends, maybe_compile
from experiments.task import explain
from experiments.training.backends import resolve_device, resolve_precision
from experiments.training.checkpoint import CHECKPOINT_FILE, load_checkpoint, restore, save_checkpoint
from experiments.training.options import TrainerOptions
from experiments.training.schedules import constant
from experiments.training.trainer import FitState, Trainer
from support.archives import write_cifar_archive, write_mnist_files
from support.jobs import train_here

CUDA0, CUDA1 = torch.device("cuda", 0), torch.device("cuda", 1)


@pytest.fixture
def two_gpus(monkeypatch):
    """torch.cuda as on a machine with two GPUs; records the set_device calls."""
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    return current


@pytest.fixture
def backend_flags():
    """Put back the process-wide switches a test's configure_backends changes."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    yield
    torch.use_deterministic_algorithms(saved[0])
    (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
     torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) = saved[1:]


def trainer_cfg(**values):
    return OmegaConf.create({"device": "auto", "cudnn_benchmark": True, "deterministic": False,
                             **values})


def job_for(compose_cfg, out, *overrides):
    """What `python train.py OVERRIDES hydra.run.dir=OUT` trains, in this process."""
    cfg = compose_cfg([*TINY_DATA, *TINY_RUN, f"paths.root_dir={out.parent}",
                       f"paths.output_dir={out}", *overrides])
    check_config(cfg)
    return cfg, out


# --- 1. precision=auto reads the capability of the job's own GPU ----------------------------

def test_precision_auto_is_bf16_from_compute_capability_8_and_fp16_below(monkeypatch):
    capability = {0: (8, 0), 1: (7, 0)}  # e.g. an A100 next to a V100
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability[device.index])
    assert resolve_precision("auto", CUDA0) == torch.bfloat16
    assert resolve_precision("auto", CUDA1) == torch.float16  # emulated bf16 would be slow here
    capability[0] = (7, 5)  # T4
    assert resolve_precision("auto", CUDA0) == torch.float16
    assert resolve_precision("auto", torch.device("cpu")) is None


def test_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="trainer.precision must be one of auto, bf16, fp16"):
        resolve_precision("fp8", torch.device("cpu"))


# --- 4. the job's GPU is made the current device ---------------------------------------------

def test_a_job_on_cuda_n_makes_it_the_current_device(two_gpus, backend_flags):
    device = resolve_device("auto", slot=3)  # round robin: job 3 of a sweep on 2 GPUs
    assert device == CUDA1
    configure_backends(trainer_cfg(), device)
    assert two_gpus == [CUDA1]
    assert resolve_device("cuda") == CUDA0  # a bare "cuda" is GPU 0, not whatever is current
    with pytest.raises(UserError, match=r"trainer.device=cuda:2 but 2 GPU\(s\) are visible"):
        configure_backends(trainer_cfg(device="cuda:2"), torch.device("cuda", 2))


# --- 5. per-job switches, user-chosen optimizer implementation, dataset too big --------------

def test_deterministic_mode_is_set_per_job_not_left_on(backend_flags):
    configure_backends(trainer_cfg(deterministic=True), torch.device("cpu"))
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.benchmark
    configure_backends(trainer_cfg(deterministic=False), torch.device("cpu"))  # the next job
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic
    assert torch.backends.cudnn.benchmark


@pytest.mark.parametrize("chosen", ["+optim.foreach=true", "+optim.foreach=false",
                                    "+optim.fused=false"])
def test_fused_is_only_added_when_the_user_chose_no_implementation(compose_cfg, chosen):
    model = nn.Linear(4, 2)
    options = TrainerOptions()
    automatic = build_optimizer(compose_cfg(["data=synthetic"]), options, model, CUDA0)
    assert automatic.defaults["fused"] is True
    optimizer = build_optimizer(compose_cfg(["data=synthetic", chosen]), options, model, CUDA0)
    key, value = chosen[len("+optim."):].split("=")
    assert optimizer.defaults[key] is (value == "true") and not optimizer.defaults["fused"]


def test_a_dataset_too_big_for_the_gpu_points_to_the_dataloader(monkeypatch):
    split = Split(torch.zeros(40, 3, 32, 32, dtype=torch.uint8), torch.zeros(40, dtype=torch.long))
    normalize = Normalize([0.5] * 3, [0.25] * 3, "cpu")

    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.72 GiB")

    monkeypatch.setattr(torch.Tensor, "to", out_of_memory)
    with pytest.raises(UserError) as caught:
        DeviceLoader(split, 16, normalize, device="cpu")
    monkeypatch.undo()
    cfg = OmegaConf.create({"trainer": {"batch_size": 16, "grad_accum_steps": 1}})
    message = explain(caught.value, cfg)
    assert "40 images (0.00 GiB as uint8)" in message and "Use loader=dataloader" in message
    assert "batch_size" not in message


# --- 2. torch.compile: a fresh Dynamo per job, and a fallback to eager in summary.json -------

@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile through Dynamo with the eager backend: Dynamo's caches and limits, on a CPU
    without a C++ toolchain; static shapes, so each new shape takes one recompile."""
    eager = functools.partial(torch.compile, backend="eager", dynamic=False)
    monkeypatch.setattr(torch, "compile", eager)
    yield
    torch._dynamo.reset()


def test_each_job_gets_its_own_recompile_budget(eager_compile):
    with torch._dynamo.config.patch(recompile_limit=2):
        for width in (4, 8):  # two jobs of one sweep process, each using both of its slots
            model = maybe_compile(nn.Linear(width, 2), True)
            with CompileWatch(True) as compiled:
                model(torch.randn(1, width))
                model(torch.randn(2, width))
            assert compiled.status == "compiled"


def test_a_fallback_to_eager_is_in_the_summary_and_the_log(eager_compile, compose_cfg, tmp_path,
                                                           caplog):
    tiny = ["model=mlp", "model.width=16", "model.depth=1", "trainer.compile=true"]
    summary = train_here(*job_for(compose_cfg, tmp_path / "ok", *tiny))
    assert summary["compile"] == "compiled"
    with torch._dynamo.config.patch(recompile_limit=1):  # training, then evaluation: 2 graphs
        summary = train_here(*job_for(compose_cfg, tmp_path / "fallback", *tiny))
    assert summary["status"] == "completed"
    assert summary["compile"].startswith(
        "eager fallback: torch._dynamo hit config.recompile_limit (1)")
    assert "part of this job ran uncompiled" in caplog.text
    assert train_here(*job_for(compose_cfg, tmp_path / "off", "model=mlp"))["compile"] is None


# --- 3. resuming on another device setup --------------------------------------------------

def as_if_written_on_two_gpus(path):
    """Rewrite a CPU checkpoint's device-specific parts the way a 2-GPU bf16 job writes them."""
    payload = torch.load(path, weights_only=True)
    [rng] = payload["rng"]  # (one rank's)
    rng["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 2  # one Philox state per GPU
    loaders = len(rng["generators"])  # CUDA generators: 16 bytes each, not 5056
    rng["generators"] = [torch.zeros(16, dtype=torch.uint8)] * loaders
    rng["generator_devices"] = ["cuda"] * loaders
    payload["device"] = {"type": "cuda", "gpus": 2, "precision": "bf16", "ranks": 1}
    for group in payload["trainer"]["optimizer"]["param_groups"]:
        group["fused"] = True
    torch.save(payload, path)


def test_a_gpu_checkpoint_resumes_on_the_cpu_and_says_what_was_not_restored(compose_cfg, tmp_path,
                                                                            caplog):
    cfg, out = job_for(compose_cfg, tmp_path / "job", "model=mlp", "model.width=16", "model.depth=1",
                               "trainer.keep_checkpoint=true")
    first = train_here(cfg, out)
    as_if_written_on_two_gpus(out / CHECKPOINT_FILE)
    resumed = train_here(cfg, out)  # the same job again, as `python train.py` re-run would
    assert resumed["status"] == "completed" and resumed["resumed_from_epoch"] == 1
    note = resumed["resume_note"]
    assert note.startswith("resumed on cpu (0 GPUs visible, fp32) from a checkpoint written on "
                           "cuda (2 GPUs visible, bf16)")
    assert "the CUDA RNGs (saved for 2 GPUs, 0 visible)" in note
    assert "the loader's cuda generator (now on cpu) start again from the seed" in note
    assert note in caplog.text
    assert resumed["test_acc"] == first["test_acc"]  # the restored weights
    assert first["resume_note"] is None


def test_restore_keeps_this_devices_optimizer_implementation_and_loss_scaler(tmp_path):
    def make(precision):
        model = nn.Linear(4, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        schedule = constant(optimizer, epochs=1, steps=lambda e: round(1 * e))
        return Trainer(model, optimizer, schedule, TrainerOptions(precision=precision, progress=False),
                       device=torch.device("cpu"))

    generator = torch.Generator().manual_seed(0)
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(path, make("fp32"), FitState(epoch=1), [generator], {"seed": 0}, {})
    as_if_written_on_two_gpus(path)
    fp16 = make("fp16")  # fp16 here; the checkpoint has no loss scale (bf16 there)
    state, note = restore(load_checkpoint(path, {"seed": 0}), fp16, [generator])
    assert state.epoch == 1 and "start again from the seed" in note
    assert not fp16.optimizer.param_groups[0]["fused"]  # as built here, not the GPU's fused=True
    assert fp16.scaler.is_enabled() and fp16.scaler.get_scale() == 65536.0  # a fresh scaler


# --- 7. data.cache_dir: the cache and its lock outside a read-only data root ------------------

def read_only_dataset(kind, root):
    if kind == "cifar100":
        write_cifar_archive(root / "cifar-100-python.tar.gz")
        return ["data=cifar100", "data.md5=null", "data.val_size=0"]
    if kind == "mnist":
        write_mnist_files(root)
        files = ("train_images", "train_labels", "test_images", "test_labels")
        return ["data=mnist", "data.val_size=0", *(f"data.files.{k}.md5=null" for k in files)]
    write_png_tree(root)
    return ["data=folder", "data.val_size=0"]


@pytest.mark.parametrize("kind", ["cifar100", "mnist", "folder"])
def test_a_read_only_data_root_with_a_cache_dir(compose_cfg, tmp_path, kind):
    root, cache = tmp_path / "mount", tmp_path / "cache"
    overrides = read_only_dataset(kind, root)
    files = sorted(root.rglob("*"))
    root.chmod(0o555)  # (root may write anyway: the check is that nothing was written there)
    try:
        cfg = compose_cfg([*overrides, f"data.root={root}", f"data.cache_dir={cache}"]).data
        first = load_splits(cfg)
        again = load_splits(cfg)  # from the cache
    finally:
        root.chmod(0o755)
    assert sorted(root.rglob("*")) == files
    assert sorted(p.suffix for p in cache.iterdir()) == [".lock", ".pt"]  # the cache and its lock
    assert torch.equal(first.train.images, again.train.images)


def test_an_unwritable_cache_dir_says_which_key_to_set(compose_cfg, tmp_path):
    write_cifar_archive(tmp_path / "cifar-100-python.tar.gz")
    (tmp_path / "a-file").write_text("not a folder")
    cfg = compose_cfg(["data=cifar100", f"data.root={tmp_path}", "data.md5=null",
                       f"data.cache_dir={tmp_path / 'a-file' / 'cache'}"]).data
    with pytest.raises(DataError, match="cannot write the data cache in .*Set data.cache_dir=DIR"):
        load_splits(cfg)


def test_the_cache_dir_is_not_part_of_the_config_fingerprint(compose_cfg):
    from experiments.training.checkpoint import fingerprint

    a, b = (OmegaConf.to_container(compose_cfg(["data=cifar100", f"data.cache_dir={d}"]))
            for d in ("/a", "/b"))
    assert fingerprint(a) == fingerprint(b)


# --- the non-finite count read on CUDA without waiting (training/divergence.py) ---------------

class SlowCopy:
    """A CUDA event as the lazy read sees it when the GPU runs behind: the copy queued with
    `record` has landed at the third `query` after it."""

    def __init__(self):
        self.queries = 0

    def record(self):
        self.queries = 0

    def query(self) -> bool:
        self.queries += 1
        return self.queries >= 3


def lazy_watch(precision="bf16"):
    from experiments.training.divergence import NonfiniteWatch

    return NonfiniteWatch(torch.device("cpu"), precision, TrainerOptions(), lazy=True, event=SlowCopy)


def test_on_cuda_the_count_is_read_once_its_copy_has_landed_and_for_certain_when_asked():
    from experiments.training.divergence import DivergedError

    watch = lazy_watch()
    counts = {1: 0, 2: 0, 3: 1, 4: 1, 5: 1, 6: 1}  # step 3's loss is NaN
    for step, count in counts.items():  # step 1's copy lands at step 4, which queues step 4's
        watch.after_step(torch.tensor(count), step)
    with pytest.raises(DivergedError, match="by step 4 in bf16"):  # ... which lands at step 7
        watch.after_step(torch.tensor(1), 7)
    unlanded = lazy_watch()
    for step, count in [(1, 0), (2, 1)]:
        unlanded.after_step(torch.tensor(count), step)
    with pytest.raises(DivergedError, match="by step 2"):
        unlanded.settle(torch.tensor(1), 2)


class SaveAtStep:
    """Interrupts that ask for a checkpoint inside the epoch after step `step` (as
    trainer.checkpoint_every_min does)."""

    def __init__(self, step: int):
        self.step, self.polls = step, 0

    def poll(self) -> int:
        from experiments.training.interrupts import GO_ON, SAVE

        self.polls += 1
        return SAVE if self.polls == self.step else GO_ON

    def saved(self) -> None:
        pass


@pytest.mark.parametrize("save_at", [None, 5])
def test_a_lazily_read_divergence_stops_within_the_lag_and_is_never_checkpointed(save_at):
    """NaN in step 3 of 8: the lazy read stops the fit at step 7 (the lag of SlowCopy), not at
    the epoch's end; a checkpoint asked for after step 5 reads the count first and is not written."""
    from experiments.models import PreActResNet18
    from experiments.training.divergence import DivergedError
    from experiments.training.interrupts import NEVER
    from support.batches import PreMadeBatches

    torch.manual_seed(0)
    model = PreActResNet18(num_classes=4, width=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    trainer = Trainer(model, opt, constant(opt, epochs=1, steps=lambda e: e),
                      TrainerOptions(progress=False, epochs=1), device=torch.device("cpu"),
                      interrupts=SaveAtStep(save_at) if save_at else NEVER)
    trainer.divergence = lazy_watch("fp32")
    gen = torch.Generator().manual_seed(0)
    batches = PreMadeBatches((torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 4, (8,), generator=gen))
                             for _ in range(8))
    batches[2][0][0, 0, 0, 0] = float("nan")
    saved = []
    with pytest.raises(DivergedError, match="by step 5 " if save_at else "by step 4 "):
        trainer.fit(batches, None, save=saved.append)
    assert trainer.steps_taken == (save_at or 7) and saved == []
