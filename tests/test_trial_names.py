"""An Optuna trial's directory is named by its number and its sampled values
(`3-lr=0.0123-wd=3e-4-bs=64`), not by the config groups' options every trial of a study shares
(`3-lenet-sgd-basic`): short, safe in a file name, and distinct in the report's labels.
A study itself runs in tests/test_reports.py (test_an_optuna_search_in_sqlite...)."""

from hydra import compose, initialize_config_dir
from omegaconf import open_dict, read_write

from conftest import CONF
from experiments.config.optuna import searched_keys, short_number, trial_name

SEARCHED = ["optim.lr", "optim.weight_decay", "trainer.batch_size"]


def test_sampled_values_are_rounded_to_three_significant_digits_in_the_shorter_form():
    assert [short_number(v) for v in ("0.012345678", "0.0003", "0.000312", "1e-05", "0.5", "-0.002")] == [
        "0.0123", "3e-4", "3.12e-4", "1e-5", "0.5", "-2e-3"]
    assert [short_number(v) for v in ("64", "True", "adamw", "a/b c")] == ["64", "True", "adamw", "a_b_c"]


def test_a_trial_is_named_by_its_sampled_values_in_the_search_spaces_order():
    overrides = ["trainer.batch_size=64", "optim.weight_decay=0.000300001", "optim.lr=0.012345678",
                 "experiment=smoke", "logger=none"]  # the command line's fixed overrides too
    assert trial_name(overrides, SEARCHED) == "lr=0.0123-wd=3e-4-bs=64"
    # two keys with one short name: each its whole key
    assert trial_name(["optim.lr=0.1", "sched.lr=0.2"], ["optim.lr", "sched.lr"]) == "optim.lr=0.1-sched.lr=0.2"
    assert trial_name(["optim=adamw", "+optim.momentum=0.9"], ["optim", "optim.momentum"]) == "optim=adamw-mom=0.9"
    assert trial_name(["experiment=smoke"], SEARCHED) == "trial"  # nothing sampled (never from Optuna)
    long = trial_name([f"k{i}.v=0.123456" for i in range(40)], [f"k{i}.v" for i in range(40)])
    assert len(long) <= 120 and not long.endswith("-")


def test_the_searched_keys_are_the_search_spaces_not_the_fixed_values():
    params = {"optim.lr": "tag(log, interval(0.01, 0.5))", "trainer.batch_size": "choice(64, 128, 256)",
              "optim.momentum": "0.9"}  # a fixed value in params is no search
    assert searched_keys(params, ["experiment=smoke", "optim=sgd,adamw"]) == [
        "optim.lr", "trainer.batch_size", "optim"]
    assert searched_keys(None, ["optim.lr=interval(0.01,0.1)"]) == ["optim.lr"]


def test_the_optuna_configs_trial_directory_is_its_number_and_its_values():
    """conf/hparams_search/optuna.yaml's hydra.sweep.subdir, resolved as Hydra resolves it for a
    trial: the trial's overrides are its sampled values and the command line's."""
    overrides = ["hparams_search=optuna", "experiment=smoke", "optim.lr=0.0123456",
                 "optim.weight_decay=0.0003", "trainer.batch_size=64"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.job.num = 3
    assert cfg.hydra.sweep.subdir == "3-lr=0.0123-wd=3e-4-bs=64"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):  # a grid keeps its names
        grid = compose(config_name="train", overrides=["experiment=smoke"], return_hydra_config=True)
    with read_write(grid.hydra), open_dict(grid.hydra):
        grid.hydra.job.num = 3
    choices = grid.hydra.runtime.choices
    assert grid.hydra.sweep.subdir == f"3-{choices.model}-{choices.optim}-{choices.aug}"
