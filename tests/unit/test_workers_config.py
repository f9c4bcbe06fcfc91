"""--workers as configuration: the option, its rules, and the config a worker is given."""

from __future__ import annotations

import json

import pytest

from gateway.config import Config, ConfigError, load_config
from gateway.workers import (
    check_shareable,
    config_from_spec,
    worker_config,
    worker_spec,
)

REDIS = "redis://127.0.0.1:6390/0"


def test_workers_from_the_command_line_and_from_toml(tmp_path):
    assert 2 == load_config({"workers": "2", "redis": REDIS}).workers
    toml = tmp_path / "gateway.toml"
    toml.write_text(f'workers = 3\nredis = "{REDIS}"\n')
    assert 3 == load_config({}, str(toml)).workers
    assert load_config({}).workers is None


@pytest.mark.parametrize(
    ("cli", "message"),
    [
        ({"workers": "2"}, "workers: needs --redis"),
        ({"workers": "0", "redis": REDIS}, "workers: must be > 0"),
        ({"workers": "-3", "redis": REDIS}, "workers: must be > 0"),
        ({"workers": "many", "redis": REDIS}, "workers: expected int, got 'many'"),
    ],
)
def test_bad_workers_values(cli, message):
    with pytest.raises(ConfigError, match=message):
        load_config(cli)


@pytest.mark.parametrize("description", ["tcp:8080", "tcp6:8080:interface=\\:\\:1", "TCP:0"])
def test_tcp_listeners_are_shareable(description):
    check_shareable(description)


@pytest.mark.parametrize("description", ["unix:/tmp/g.sock", "ssl:8443:privateKey=k.pem", "systemd:domain=INET:index=0"])
def test_other_listeners_are_refused_naming_what_works(description):
    with pytest.raises(ConfigError, match=r"tcp: and tcp6:"):
        check_shareable(description)


def test_a_worker_gets_the_same_config_with_its_own_node_id():
    config = Config(
        node_id="gw", workers=2, redis=REDIS, listen=("tcp:0",), api_key=("k1", "k2"), hook=("log",), publish_rate=5.0
    )
    spec = json.loads(worker_spec(config, 2, [(4, 2, "tcp:0")], 123))
    assert (2, 123, [[4, 2, "tcp:0"]]) == (spec["index"], spec["supervisor"], spec["sockets"])
    worker = config_from_spec(spec["config"])
    assert worker == worker_config(config, 2)
    assert ("gw-2", None, ("k1", "k2")) == (worker.node_id, worker.workers, worker.api_key)
