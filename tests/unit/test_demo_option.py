"""``--demo``: a flag on the command line, ``demo = true`` in TOML; off by default."""

from __future__ import annotations

import pytest

from gateway.config import Config, ConfigError, load_config
from gateway.tap import GatewayOptions


def parse(*args: str) -> Config:
    options = GatewayOptions()
    options.parseOptions(list(args))
    return options.config


def test_off_by_default_and_on_with_the_flag():
    assert parse().demo is False
    assert parse("--demo").demo is True


def test_toml_sets_it_and_an_absent_flag_does_not_undo_it(tmp_path):
    cfg = tmp_path / "g.toml"
    cfg.write_text("demo = true\n")
    assert parse("--config", str(cfg)).demo is True
    cfg.write_text("demo = false\n")
    assert parse("--config", str(cfg), "--demo").demo is True


def test_toml_value_must_be_a_boolean(tmp_path):
    cfg = tmp_path / "g.toml"
    cfg.write_text('demo = "yes"\n')
    with pytest.raises(ConfigError, match=r"demo: expected true or false, got 'yes'"):
        load_config({}, str(cfg))


def test_the_flag_takes_no_value():
    from twisted.python import usage

    with pytest.raises(usage.UsageError):
        GatewayOptions().parseOptions(["--demo=1"])
