"""The README and docs/: every relative link and #anchor resolves, the README stays a short guide,
and every `train.py` command line in the README composes as Hydra would compose it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, IntervalSweep
from hydra.errors import HydraException
from omegaconf import OmegaConf

from conftest import CONF, ROOT
from experiments.errors import ConfigError

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 450

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # https:, http:, mailto:, ...


def split_fences(text: str) -> tuple[list[str], list[list[str]]]:
    """The lines outside fenced code blocks, and each fenced block's lines."""
    prose, blocks, block = [], [], None
    for line in text.splitlines():
        if FENCE.match(line):
            if block is None:
                block = []
            else:
                blocks.append(block)
                block = None
        elif block is None:
            prose.append(line)
        else:
            block.append(line)
    return prose, blocks


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: links become their text, then lowercase, punctuation
    removed (letters, digits, '_', '-' and spaces kept), spaces to '-'."""
    text = LINK.sub(r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in split_fences(page.read_text())[0]:
        match = HEADING.match(line)
        if match:
            base = anchor(match.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")  # GitHub numbers repeated headings
    return out


def links(page: Path) -> list[str]:
    """Every link target in the page's prose (not in code)."""
    targets = []
    for line in split_fences(page.read_text())[0]:
        line = INLINE_CODE.sub("", line)
        targets += [m.group(2) for m in LINK.finditer(line)]
        ref = REFERENCE.match(line)
        if ref:
            targets.append(ref.group(1))
    return targets


def broken_links(page: Path) -> list[str]:
    problems = []
    for target in links(page):
        if EXTERNAL.match(target):
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{target}: {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file} "
                            "does not exist")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            problems.append(f"{target}: no heading of {file.name} has the anchor #{fragment}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page):
    assert broken_links(page) == []


def test_the_link_check_catches_a_broken_link_and_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Speed: presets & more\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n[ok](other.md#speed-presets--more) [ok](#page) `[code](nowhere.md)`\n"
                    "[gone](missing.md) [bad anchor](other.md#speed-presets) [bad](#nope)\n"
                    "```\n[in a code block](nowhere.md)\n```\n")
    problems = broken_links(page)
    assert len(problems) == 3, problems
    assert [p.split(":")[0] for p in problems] == ["missing.md", "other.md#speed-presets", "#nope"]


def test_readme_is_a_short_guide():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines: move reference into docs/"


def test_readme_keeps_the_commands_ci_and_newcomers_run():
    text = README.read_text()
    assert "python -m pytest" in text  # .ci/run runs the README's test command
    assert 'pip install -e ".[dev]"' in text
    assert "python train.py -m model=resnet18,preact optim=sgd,adamw aug=basic,advanced" in text


def command_lines(page: Path) -> list[str]:
    """Every command line that runs train.py: in code blocks (continuation lines joined), and in
    inline code."""
    prose, blocks = split_fences(page.read_text())
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", "\n".join(block))
        commands += [line.strip() for line in joined.splitlines()]
    for line in prose:
        commands += [m.group(0).strip("`") for m in INLINE_CODE.finditer(line)]
    return [c for c in commands if re.search(r"(^|\s|/)train\.py(\s|$)", c) and not c.startswith("#")]


README_COMMANDS = command_lines(README)
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-dir", "-cd"}


def train_arguments(command: str) -> list[str]:
    """What follows train.py, without the shell's comments, Hydra's flags and `...`."""
    words = shlex.split(command, comments=True)
    words = words[next(i for i, w in enumerate(words) if Path(w).name == "train.py") + 1:]
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in FLAGS_WITH_VALUE:
            skip = True
        elif not word.startswith("-") and word != "...":
            out.append(word)
    return out


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def one_job(arguments: list[str]) -> list[str]:
    """The overrides of one job of the sweep: each sweep's first value (a glob's first option,
    an interval's start). Sweeping a `hydra.*` key is refused, as Hydra refuses it."""
    overrides = []
    for o in OverridesParser.create().parse_overrides(arguments):
        if not o.is_sweep_override():
            overrides.append(o.input_line)
            continue
        assert not o.is_hydra_override(), (
            f"{o.input_line}: Hydra refuses sweeping over its own configuration; give a search "
            "range on the task's key itself (e.g. 'optim.lr=tag(log, interval(1e-4, 1e-2))')")
        value = o.value()
        if isinstance(value, Glob):
            options = value.filter(group_options(o.key_or_group))
            assert options, f"{o.input_line}: no option of {o.key_or_group} matches"
            first = options[0]
        elif isinstance(value, IntervalSweep):
            first = str(value.start)
        else:
            first = next(iter(o.sweep_string_iterator()))
        overrides.append(f"{o.get_key_element()}={first}")
    return overrides


@pytest.fixture(scope="module")
def hydra_conf():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def test_the_readme_has_train_commands():
    assert len(README_COMMANDS) >= 10, README_COMMANDS


@pytest.mark.parametrize("command", README_COMMANDS)
def test_readme_train_command_composes(hydra_conf, command):
    overrides = one_job(train_arguments(command))
    cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    OmegaConf.to_object(cfg.trainer)  # the trainer's own checks (ranges, ranks dividing the batch)


@pytest.mark.parametrize("command, error", [
    ("python train.py -m model=nosuchmodel,resnet18 optim=sgd", HydraException),  # a sweep's first value
    ("python train.py model=nosuchmodel", HydraException),
    ("python train.py trainer.nope=1", HydraException),
    ("python train.py trainer.devices=3", ConfigError),  # 128 is no multiple of 3
    ("python train.py hparams_search=optuna 'hydra.sweeper.params.optim.lr=tag(log, interval(1e-4, 1e-2))'",
     AssertionError),
])
def test_the_compose_check_catches_a_bad_command(hydra_conf, command, error):
    with pytest.raises(error):
        overrides = one_job(train_arguments(command))
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
        OmegaConf.to_object(cfg.trainer)
