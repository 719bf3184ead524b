"""Every default is kept once, in the signatures of AlignerPPO and RolloutDataModule. The seed config, --help and
the PuffeRL reference harness agree with them, and they are the seed's: cogames' own train.py."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import re

import pytest
import yaml
from helpers import ROOT, run_main
from puffer_reference import HYPERPARAMETERS, cogames_train_args, our_defaults, seed_config

from aligner_lightning.algorithm import AlgoConfig, LossConfig
from aligner_lightning.datamodule import RolloutDataModule
from aligner_lightning.envs import EnvFactory
from aligner_lightning.episodes import EvalSettings
from aligner_lightning.module import AlignerPPO
from aligner_lightning.policy_spec import canonical, spec_of
from aligner_lightning.rollout import Rollout

GROUPS = {"model": AlignerPPO, "data": RolloutDataModule}
RENAMED = {"eval_video": "eval_gif"}  # old argument names, still accepted


def arguments(cls) -> dict[str, inspect.Parameter]:
    params = inspect.signature(cls).parameters
    return {name: p for name, p in params.items() if name not in RENAMED}


def test_defaults_are_cogames_seed_config():
    """cogames' train.py passes these literals to PuffeRL; its batch size is 'auto' (agents x horizon), the
    notebook's 4096 is ours."""
    cogames, ours = cogames_train_args(), our_defaults()
    shared = (set(cogames) & set(ours)) - {"batch_size"}
    assert len(shared) >= 18, sorted(shared)
    assert {k: ours[k] for k in shared} == {k: cogames[k] for k in shared}
    assert cogames["batch_size"] == "auto" and ours["batch_size"] == ours["minibatch_size"] == 4096
    assert {k: seed_config()[k] for k in HYPERPARAMETERS} == {k: ours[k] for k in HYPERPARAMETERS}


def test_shipped_seed_config_is_the_defaults():
    """configs/aligner.yaml names every model and data argument, each with its default and a comment."""
    text = (ROOT / "configs" / "aligner.yaml").read_text()
    cfg = yaml.safe_load(text)
    for group, cls in GROUPS.items():
        params = arguments(cls)
        assert set(cfg[group]) == set(params), f"{group}: missing {set(params) - set(cfg[group])}, " \
                                               f"unknown {set(cfg[group]) - set(params)}"
        for name, param in params.items():
            if name == "policy":  # a class: the YAML names it with every argument at its default
                assert cfg[group][name] == canonical(spec_of(param.default)), cfg[group][name]
                continue
            assert cfg[group][name] == param.default, f"{group}.{name}: {cfg[group][name]!r} != {param.default!r}"
            line = next(line for line in text.splitlines() if line.strip().startswith(f"{name}:"))
            assert re.search(r"\s#\s*\S", line), f"{group}.{name} has no comment"


def test_help_describes_every_argument_with_its_default(monkeypatch, tmp_path):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run_main(monkeypatch, tmp_path, "fit", "--help") == 0
    entries = re.split(r"\n  (?=--)", printed.getvalue())
    for group, cls in GROUPS.items():
        for name, param in inspect.signature(cls).parameters.items():
            (entry,) = [e for e in entries if e.startswith(f"--{group}.{name} ")]
            text = " ".join(entry.split())
            description = text.split(" ", 2)[-1].split("(type:")[0].strip()
            assert description, f"--{group}.{name} has no description"
            if name == "policy":  # a class, shown by its path
                assert "aligner_lightning.policy.AlignerPolicy" in text, text
                continue
            shown = re.search(r"\(type: [^)]*default: ([^)]*)\)", text).group(1)
            assert yaml.safe_load(shown) == param.default or shown == str(param.default), f"--{group}.{name}: {shown}"


def test_no_second_copy_of_a_default():
    """The configs built from the arguments declare no defaults of their own."""
    for cls in (LossConfig, AlgoConfig, EnvFactory):
        defaults = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        assert defaults <= {"first_env"}, (cls.__name__, defaults)  # first_env: rank * num_envs, set per rank
    own = [f.name for f in dataclasses.fields(EvalSettings) if f.default is not dataclasses.MISSING]
    assert own == ["frame_stride"]  # not a model argument
    options = [p for p in inspect.signature(Rollout).parameters.values() if p.kind is p.KEYWORD_ONLY]
    assert options and all(p.default is p.empty for p in options)
    module = AlignerPPO()
    assert dataclasses.asdict(module.loss_cfg) == {k: module.hparams[k] for k in dataclasses.asdict(module.loss_cfg)}
    assert dataclasses.asdict(module.algo) == {k: module.hparams[k] for k in dataclasses.asdict(module.algo)}
    settings = module.eval_settings
    assert (settings.episodes, settings.greedy, settings.seed_base, settings.replays, settings.gif,
            settings.max_steps) == tuple(module.hparams[f"eval_{k}"] for k in
                                         ("episodes", "greedy", "seed_base", "replays", "gif", "max_steps"))


def test_renamed_argument_still_works_and_names_the_new_one():
    with pytest.warns(UserWarning, match="model.eval_gif"):
        module = AlignerPPO(eval_video=False)
    assert module.hparams.eval_gif is False and module.eval_settings.gif is False
    assert "eval_video" not in module.hparams


def test_the_configuration_docs_list_every_key():
    """docs/configuration.md's data.* and model.* tables name every argument (a row may name several)."""
    text = (ROOT / "docs/configuration.md").read_text()
    for group, cls in GROUPS.items():
        section = text.split(f"## `{group}.*`")[1].split("\n## ")[0]
        named = set(re.findall(r"`(\w+)`", section))
        missing = set(arguments(cls)) - named
        assert not missing, f"docs/configuration.md does not list {group}.{sorted(missing)}"
