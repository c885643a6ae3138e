"""Jobs in forked copies of the test process: real processes, killed for real (SIGKILL), that
skip the 8 s of imports a new interpreter pays on a 2-core machine (the test process has them).

Each child computes on one thread: a reference run and a killed-and-resumed run forked the same
way are bit-comparable, and two side by side do not oversubscribe the 2 cores (spinning OpenMP
threads of two 2-thread processes made a 6 s job take 20 to 70 s).
"""

from __future__ import annotations

import os
import signal
import traceback
from collections.abc import Callable

import torch

from experiments.training.checkpoint import Checkpoint
from experiments.training.trainer import Trainer


def fork(fn: Callable[[], object]) -> int:
    """Run `fn` in a child process; returns its pid. The child exits with 0, SystemExit's code,
    or 1 after printing an exception; it never returns into the test."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        torch.set_num_threads(1)
        fn()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001  (reported, then the child ends)
        traceback.print_exc()
    finally:
        os._exit(code)


def wait(pid: int) -> int:
    """The child's exit code; -N when signal N killed it."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def kill_after_checkpoint(steps_later: int = 2) -> None:
    """In a child: SIGKILL this process `steps_later` optimizer steps after its first checkpoint,
    i.e. inside the next epoch, whose work so far is lost, as in a real crash."""
    save, step = Checkpoint.save, Trainer.optimizer_step
    state = {"saved": False, "steps": 0}

    def saving(self, *args, **kwargs):
        save(self, *args, **kwargs)
        state["saved"] = True

    def stepping(self, *args, **kwargs):
        outputs = step(self, *args, **kwargs)
        if state["saved"]:
            state["steps"] += 1
            if state["steps"] >= steps_later:
                os.kill(os.getpid(), signal.SIGKILL)
        return outputs

    Checkpoint.save, Trainer.optimizer_step = saving, stepping


def signal_at_step(signum: int, step: int, again_while_saving: bool = False) -> None:
    """In a child: send this process `signum` during its `step`-th optimizer step overall (as a
    cluster does, at any moment); with `again_while_saving`, once more while the checkpoint it
    then writes is being saved."""
    save, optimizer_step = Checkpoint.save, Trainer.optimizer_step
    state = {"steps": 0}

    def stepping(self, *args, **kwargs):
        state["steps"] += 1
        if state["steps"] == step:
            os.kill(os.getpid(), signum)
        return optimizer_step(self, *args, **kwargs)

    def saving(self, *args, **kwargs):
        if again_while_saving and state["steps"] >= step:
            os.kill(os.getpid(), signum)
        save(self, *args, **kwargs)

    Checkpoint.save, Trainer.optimizer_step = saving, stepping


def signal_during_validation(signum: int) -> None:
    """In a child: send this process `signum` while it validates its first epoch."""
    evaluate = Trainer.evaluate

    def evaluating(self, *args, **kwargs):
        os.kill(os.getpid(), signum)
        Trainer.evaluate = evaluate
        return evaluate(self, *args, **kwargs)

    Trainer.evaluate = evaluating


def signal_during_the_test(signum: int, test_pass: int = 1) -> None:
    """In a child: send this process `signum` during the `test_pass`-th evaluation of the job's
    test (1: the final weights, 2: the chosen ones, 3: with TTA)."""
    import experiments.job as job

    test_once, evaluate = job.test_once, Trainer.evaluate

    def testing(*args, **kwargs):
        calls = [0]

        def evaluating(self, *a, **k):
            calls[0] += 1
            if calls[0] == test_pass:
                os.kill(os.getpid(), signum)
            return evaluate(self, *a, **k)

        Trainer.evaluate = evaluating
        try:
            return test_once(*args, **kwargs)
        finally:
            Trainer.evaluate = evaluate

    job.test_once = testing


def signal_on_call(owner, name: str, signum: int, when: Callable[..., bool] = lambda *a, **k: True,
                   group: bool = False) -> None:
    """In a child: send this process (`group`: its process group, from another process, as a
    terminal or Slurm does) `signum` as `owner.name` (a class's method, a module's function)
    is called with arguments for which `when` holds, the first time, before it runs."""
    original, sent = getattr(owner, name), []

    def calling(*args, **kwargs):
        if not sent and when(*args, **kwargs):
            sent.append(signum)
            send(signum, group)
        return original(*args, **kwargs)

    setattr(owner, name, calling)


def send(signum: int, group: bool = False) -> None:
    """`signum` to this process, or to its whole process group from a process of its own (the
    sender a terminal's Ctrl-C or Slurm is: not the job)."""
    if not group:
        os.kill(os.getpid(), signum)
        return
    pgid, pid = os.getpgid(0), os.fork()
    if pid == 0:
        os.killpg(pgid, signum)
        os._exit(0)
    os.waitpid(pid, 0)


def stand_in_handler(signum: int, record) -> None:
    """In a child: a Python handler for `signum`, as submitit installs one (it requeues the job),
    which writes the signal's number to the file `record` when called."""
    signal.signal(signum, lambda s, frame: record.write_text(str(s)))
