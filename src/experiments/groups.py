"""The config groups (the directories of conf/ a job picks one option from), named once.

Every job records its choice of each in summary.json (`choices`), and every sweep table has a
column for each, so two jobs that differ only in a group nobody swept (`mix`, `loader`,
`experiment`) never look alike. tests/test_choices.py fails when a conf/ directory is missing here.

A module of its own, outside experiments.config, so that reading a sweep back (the report, the
summarize command) does not import what importing experiments.config registers with Hydra: its
schemas import the trainer's options, and with them torch (2-3 s and ~400 MB for a report).
experiments.config.groups gives the same names.
"""

# in the order of the table's columns; Hydra's own groups (hydra/*) are not the job's choices
CONFIG_GROUPS = ("model", "optim", "aug", "mix", "sched", "data", "loader", "trainer", "logger",
                 "experiment", "size", "hparams_search", "paths")

# always in a job directory's name (conf/hydra/default.yaml's sweep.subdir)
NAMED_GROUPS = ("model", "optim", "aug")
