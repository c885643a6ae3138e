"""The console on a terminal: a bar over each epoch's images (img/s, the epoch's and the job's
ETA), log lines above it, never inside it; without a terminal, a progress line now and then.
(`python train.py` through a pipe: test_jobs.py; a sweep's job lines: test_multirun.py.)"""

import logging
import re
import time

import torch
import torch.nn as nn

from experiments.training import progress
from experiments.training.options import TrainerOptions
from experiments.training.progress import EpochBar, duration
from experiments.training.schedules import constant
from experiments.training.trainer import Trainer


def test_the_bar_counts_images_per_second_with_the_epoch_and_the_jobs_eta(capsys):
    bar = EpochBar(3, 30, 1000, job_eta_s=754, terminal=True)
    for _ in range(4):
        time.sleep(0.12)  # (tqdm redraws at most every 0.1 s)
        bar.update(250)
    bar.close()
    shown = capsys.readouterr().err
    assert "epoch 3/30" in shown and "img/s" in shown and "job ETA 12m34s" in shown
    assert "1.00k/1.00k" in shown


def test_without_a_terminal_a_line_now_and_then_instead_of_a_bar(capsys, caplog, monkeypatch):
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    caplog.set_level(logging.INFO)
    bar = EpochBar(2, 5, 100, terminal=False)
    bar.update(50)
    bar.close()
    assert capsys.readouterr().err == ""
    lines = [r for r in caplog.records if r.name == progress.__name__]
    assert len(lines) == 1 and getattr(lines[0], "console_only", False)
    assert re.fullmatch(r"epoch 2/5  50%  \d+ img/s  epoch ETA .+", lines[0].getMessage())


def test_log_lines_go_above_the_bar_never_into_it(capsys, monkeypatch):
    """A record logged during the fit is written whole, on its own line (tqdm.write), and the
    bar is redrawn after it: no `...]` followed by the record on the same line."""
    monkeypatch.setattr(progress, "interactive", lambda: True)
    monkeypatch.setattr("experiments.training.trainer.interactive", lambda: True)
    root = logging.getLogger()
    handler = logging.StreamHandler()  # a console handler, as Hydra's
    root.addHandler(handler)
    try:
        model = nn.Linear(4, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        trainer = Trainer(model, opt, constant(opt, epochs=2, steps=lambda e: e), TrainerOptions(epochs=2),
                          device=torch.device("cpu"))

        class Batches(list):
            batch_size, num_images = 8, 32

        x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
        batches = Batches([(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)])
        calls = []

        def log_inside_the_epoch(module, inputs, output):  # with the bar on the screen
            calls.append(1)
            if len(calls) == 3:
                logging.getLogger("x").warning("inside epoch 1")

        model.register_forward_hook(log_inside_the_epoch)
        trainer.fit(batches, None)
    finally:
        root.removeHandler(handler)
    err = capsys.readouterr().err
    assert "epoch 2/2" in err
    for line in err.replace("\r", "\n").split("\n"):
        if "inside epoch" in line:
            assert line == "inside epoch 1", repr(line)


def test_durations_read_at_a_glance():
    assert duration(3.24) == "3.2 s" and duration(252) == "4m12s" and duration(3900) == "1h05m"
