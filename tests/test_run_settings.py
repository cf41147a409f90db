"""Typed run settings (common.pipeline.settings): parsed once from a preset, one-line ConfigErrors."""

from __future__ import annotations

import pytest

from mammo_fl.common.pipeline.settings import load_run_settings, parse_run_settings
from mammo_fl.common.utils.config import load_config
from mammo_fl.common.utils.errors import ConfigError


@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_presets_parse_into_the_values_they_hold(preset: str) -> None:
    raw = load_config(preset, "train")
    s = parse_run_settings(raw)
    assert s.source == raw and s.seed == raw["seed"] and s.threads == raw["threads"]
    assert (s.data.preprocess.height, s.data.preprocess.width) == (raw["data"]["height"], raw["data"]["width"])
    assert s.data.mean == (None if raw["data"]["mean"] == "auto" else raw["data"]["mean"])
    assert s.patches.patch_size == raw["patches"]["patch_size"] and s.patches.scheme == raw["patches"]["scheme"]
    assert s.whole_model.top_spec == raw["tops"][raw["whole_model"]["top"]]
    assert s.evaluate.bootstrap == raw["evaluate"]["bootstrap"] and s.evaluate.tta is raw["evaluate"]["tta"]
    assert [st.epochs for st in s.whole_train.stages] == [raw["whole_train"][k]["epochs"] for k in ("stage1", "stage2")]
    assert s.baseline is not None and s.baseline.seed == s.seed
    assert s.patch_config() == {k: raw[k] for k in ("seed", "patches", "patch_model", "patch_train")}


def test_cli_options_and_overrides_reach_the_settings() -> None:
    s = load_run_settings("cpu", ["data.mean=40.5", "evaluate.tta=false", "seed=3"], device="cpu", progress=False)
    assert s.data.mean == 40.5 and s.evaluate.tta is False and s.seed == 3 and s.baseline.seed == 3
    assert s.device == "cpu" and s.progress is False and s.source["device"] == "cpu"


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("evaluate"), r"section \[evaluate\] is missing"),
    (lambda c: c["data"].update(colour=1), r"unknown key\(s\) in \[data\]: colour"),
    (lambda c: c.update(sede=1), r"unknown key\(s\) in \[top level\]: sede"),
    (lambda c: c["data"].update(mean="bright"), r"data.mean must be a number or \"auto\""),
    (lambda c: c["data"].pop("height"), r"data.height is missing"),
    (lambda c: c["whole_train"].update(batch_size="eight"), r"whole_train.batch_size must be int"),
    (lambda c: c["evaluate"].update(tta="yes"), r"evaluate.tta must be true or false"),
    (lambda c: c["whole_model"].update(top="nope"), r"whole_model.top = 'nope' is not a \[tops.\*\] entry"),
    (lambda c: c["patch_train"].update(augmentation=3), r"augmentation setting must be a table"),
    (lambda c: c["patches"].update(scheme="X3"), r"patches.scheme"),
    (lambda c: c["data"].update(mode="fancy"), r"unknown preprocessing mode"),
    (lambda c: c["patch_train"]["stage3"].update(lr=-1.0), r"bad training stage"),
])
def test_bad_settings_are_one_line_config_errors(change, message) -> None:
    config = load_config("cpu", "train")
    change(config)
    with pytest.raises(ConfigError, match=message) as info:
        parse_run_settings(config)
    assert "\n" not in str(info.value)


def test_baseline_table_is_optional_until_the_baseline_step() -> None:
    config = load_config("cpu", "train")
    del config["baseline"]
    settings = parse_run_settings(config)
    with pytest.raises(ConfigError, match=r"\[baseline\] is missing"):
        settings.require_baseline()
