"""Every config group's option is recorded and tabled, swept or not: the list of groups is defined
once (experiments.config.groups) and cannot miss a directory of conf/."""

import csv
import json

from conftest import CONF, run_train
from experiments.config.groups import CONFIG_GROUPS, NAMED_GROUPS
from experiments.config.schema import SCHEMAS
from experiments.report import sweep_report as report
from experiments.report.job_summary import write_json

HYDRA_OWN = {"hydra"}  # Hydra's groups (launcher, sweeper, ...): not the job's choices


def test_every_conf_group_is_listed_once():
    on_disk = {p.name for p in CONF.iterdir() if p.is_dir()} - HYDRA_OWN | set(SCHEMAS)
    assert set(CONFIG_GROUPS) == on_disk, "add the new conf/ group to experiments.config.groups"
    assert len(set(CONFIG_GROUPS)) == len(CONFIG_GROUPS)
    assert set(NAMED_GROUPS) <= set(CONFIG_GROUPS)


def test_a_job_records_every_group_and_the_sweep_table_has_a_column_for_each(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_train("-m", "experiment=smoke", "logger=none", "trainer.epochs=1",
                     "hydra.callbacks.sweep_summary.plots=false", f"hydra.sweep.dir={sweep}",
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(next(sweep.glob("0-*/summary.json")).read_text())
    assert list(summary["choices"]) == list(CONFIG_GROUPS)
    assert summary["choices"] | {"mix": "none", "loader": "device", "experiment": "smoke",
                                 "hparams_search": None} == summary["choices"]
    (row,) = csv.DictReader(open(sweep / "summary.csv"))
    assert set(CONFIG_GROUPS) <= set(row)
    assert (row["mix"], row["loader"], row["experiment"], row["hparams_search"]) == (
        "none", "device", "smoke", "")


def test_markdown_lists_shared_choices_once_above_the_table(tmp_path):
    sweep = tmp_path / "sweep"
    for i, optim in enumerate(("sgd", "adamw")):
        job = sweep / f"{i}-preact-{optim}-basic"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- optim={optim}\n")
        write_json(job / "summary.json", {
            "status": "completed", "test_acc": 0.5 + i / 10, "best_val_acc": 0.5,
            "choices": {"model": "preact", "optim": optim, "mix": "cutmix", "loader": "device",
                        "experiment": None}})
    report.write_tables([sweep], sweep)
    header = next(csv.reader(open(sweep / "summary.csv")))
    assert {"mix", "loader", "experiment"} <= set(header)
    md = (sweep / "summary.md").read_text()
    assert "all jobs: model=preact mix=cutmix loader=device\n" in md
    table_header = next(line for line in md.splitlines() if line.startswith("| job"))
    assert "| optim |" in table_header and "mix" not in table_header
