"""Configuration (docs/protocol.md section 10): defaults, TOML file, command line precedence
and validation with errors that name the option."""

from __future__ import annotations

import pytest

from gateway.config import OPTIONS, Config, ConfigError, load_config


def toml(tmp_path, text: str) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


SECTION_10_DEFAULTS = {
    "listen": ("tcp:8080:interface=127.0.0.1",),
    "redis": None,
    "jwt_secret": None,
    "jwt_public_key": None,
    "api_key": (),
    "allowed_origin": (),
    "history_size": 1000,
    "history_ttl": 300.0,
    "heartbeat": 20.0,
    "max_message_size": 65536,
    "drain_timeout": 10.0,
}


def fields(config: Config) -> dict:
    return {name: getattr(config, name) for name in SECTION_10_DEFAULTS}


def test_load_config_defaults_match_protocol():
    """load_config() with nothing given has the defaults of docs/protocol.md section 10."""
    assert SECTION_10_DEFAULTS == fields(load_config())


def test_config_class_defaults_match_protocol():
    """Config() has the same defaults as load_config()."""
    assert SECTION_10_DEFAULTS == fields(Config())


SECTION_10_OPTIONS = {
    "listen", "redis", "jwt-secret", "jwt-public-key", "api-key", "allowed-origin",
    "history-size", "history-ttl", "heartbeat", "max-message-size", "node-id", "drain-timeout",
}


def test_option_table_defaults_match_protocol():
    """The option table (which drives --help and TOML keys) declares the section 10 defaults."""
    by_attr = {o.attr: o.default for o in OPTIONS}
    assert SECTION_10_DEFAULTS == {name: by_attr.get(name) for name in SECTION_10_DEFAULTS}


def test_option_table_has_every_protocol_option():
    """Every long option name of docs/protocol.md section 10 is in the option table (extensions allowed)."""
    assert set() == SECTION_10_OPTIONS - {o.name for o in OPTIONS}


def test_protocol_repeatable_options_are_repeatable():
    """--listen, --api-key and --allowed-origin are repeatable; the other section 10 options are not."""
    assert {"listen", "api-key", "allowed-origin"} == {o.name for o in OPTIONS if o.repeatable and o.name in SECTION_10_OPTIONS}


def test_default_node_id_is_host_and_pid():
    """Without --node-id the node id is host:pid."""
    import os

    assert str(os.getpid()) == load_config().node_id.rsplit(":", 1)[1]


def test_toml_sets_options_by_long_name(tmp_path):
    """A TOML file sets options keyed by long name, repeatable ones as arrays."""
    path = toml(
        tmp_path,
        """
listen = ["tcp:9000", "unix:/tmp/gw.sock"]
redis = "redis://127.0.0.1:6379/0"
allowed-origin = ["https://a.example", "https://b.example"]
history-size = 50
history-ttl = 60
heartbeat = 2.5
max-message-size = 1024
node-id = "n1"
drain-timeout = 0
""",
    )
    config = load_config(config_file=path)
    assert (
        ("tcp:9000", "unix:/tmp/gw.sock"),
        "redis://127.0.0.1:6379/0",
        ("https://a.example", "https://b.example"),
        50,
        60.0,
        2.5,
        1024,
        "n1",
        0.0,
    ) == (
        config.listen,
        config.redis,
        config.allowed_origin,
        config.history_size,
        config.history_ttl,
        config.heartbeat,
        config.max_message_size,
        config.node_id,
        config.drain_timeout,
    )


def test_toml_repeatable_option_accepts_single_string(tmp_path):
    """A repeatable option given as one TOML string is a one-element tuple."""
    assert ("tcp:9000",) == load_config(config_file=toml(tmp_path, 'listen = "tcp:9000"')).listen


def test_toml_leaves_other_options_at_defaults(tmp_path):
    """Options absent from the TOML file keep their defaults."""
    config = load_config(config_file=toml(tmp_path, "history-size = 5"))
    assert {**SECTION_10_DEFAULTS, "history_size": 5} == fields(config)


def test_command_line_wins_over_toml(tmp_path):
    """A value on the command line overrides the TOML file's."""
    path = toml(tmp_path, "history-size = 50\nheartbeat = 5")
    config = load_config({"history-size": "7"}, path)
    assert (7, 5.0) == (config.history_size, config.heartbeat)


def test_command_line_repeatable_replaces_toml_array(tmp_path):
    """A repeatable option on the command line replaces (not extends) the TOML array."""
    path = toml(tmp_path, 'listen = ["tcp:9000", "tcp:9001"]')
    assert ("tcp:1",) == load_config({"listen": ["tcp:1"]}, path).listen


def test_absent_command_line_values_do_not_override_toml(tmp_path):
    """None and empty repeatable values on the command line leave the TOML values."""
    path = toml(tmp_path, 'listen = ["tcp:9000"]\nhistory-size = 50')
    config = load_config({"listen": [], "history-size": None}, path)
    assert (("tcp:9000",), 50) == (config.listen, config.history_size)


def test_command_line_strings_are_converted():
    """Command-line strings are converted to the option's type."""
    config = load_config({"history-size": "10", "history-ttl": "1.5", "max-message-size": "256"})
    assert (10, 1.5, 256) == (config.history_size, config.history_ttl, config.max_message_size)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("history-size", "abc"),
        ("history-size", "1.5"),
        ("history-size", "0"),
        ("history-size", "-1"),
        ("history-ttl", "x"),
        ("history-ttl", "0"),
        ("history-ttl", "-5"),
        ("history-ttl", "nan"),
        ("heartbeat", "soon"),
        ("heartbeat", "0"),
        ("heartbeat", "-1"),
        ("max-message-size", "big"),
        ("max-message-size", "0"),
        ("max-message-size", "-1"),
        ("max-message-size", "255"),
        ("drain-timeout", "x"),
        ("drain-timeout", "-1"),
        ("history-size", ["1", "2"]),
        ("redis", ["redis://a", "redis://b"]),
    ],
    ids=repr,
)
def test_bad_command_line_value_names_option(option, value):
    """A bad command-line value raises ConfigError whose message names the option."""
    with pytest.raises(ConfigError) as info:
        load_config({option: value})
    assert True == str(info.value).startswith(option)


@pytest.mark.parametrize(
    ("option", "text"),
    [
        ("history-size", 'history-size = "abc"'),
        ("history-size", "history-size = 1.5"),
        ("history-size", "history-size = 0"),
        ("history-size", "history-size = -3"),
        ("history-size", "history-size = true"),
        ("history-size", "history-size = [1, 2]"),
        ("history-ttl", "history-ttl = 0"),
        ("history-ttl", "history-ttl = nan"),
        ("heartbeat", "heartbeat = -1.5"),
        ("heartbeat", 'heartbeat = "fast"'),
        ("max-message-size", "max-message-size = 10"),
        ("drain-timeout", "drain-timeout = -1"),
        ("redis", "redis = 6379"),
        ("redis", 'redis = ["redis://a", "redis://b"]'),
        ("node-id", "node-id = 1"),
        ("listen", "listen = [8080]"),
        ("listen", "listen = []"),
        ("allowed-origin", "allowed-origin = [true]"),
    ],
    ids=repr,
)
def test_bad_toml_value_names_option(tmp_path, option, text):
    """A bad TOML value raises ConfigError whose message names the option."""
    with pytest.raises(ConfigError) as info:
        load_config(config_file=toml(tmp_path, text))
    assert True == str(info.value).startswith(option)


def test_unknown_toml_key_is_named(tmp_path):
    """An unknown key in the TOML file raises ConfigError naming the key."""
    with pytest.raises(ConfigError) as info:
        load_config(config_file=toml(tmp_path, "history-size = 5\nhistory_sise = 5"))
    assert True == ("history_sise" in str(info.value))


def test_unknown_command_line_option_is_rejected():
    """An unknown option name passed to load_config raises ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        load_config({"no-such-option": "1"})
    assert True == ("no-such-option" in str(info.value))


def test_invalid_toml_is_config_error(tmp_path):
    """A file that is not valid TOML raises ConfigError naming the file."""
    path = toml(tmp_path, "history-size = = 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(config_file=path)
    assert True == (path in str(info.value))


def test_missing_config_file_is_config_error(tmp_path):
    """A config file that does not exist raises ConfigError naming the file."""
    path = str(tmp_path / "missing.toml")
    with pytest.raises(ConfigError) as info:
        load_config(config_file=path)
    assert True == (path in str(info.value))


def test_jwt_secret_and_public_key_together_are_rejected():
    """--jwt-secret and --jwt-public-key together raise ConfigError."""
    with pytest.raises(ConfigError):
        load_config({"jwt-secret": "s", "jwt-public-key": "/k.pem"})


def test_config_is_immutable():
    """A Config cannot be changed after it is built."""
    import attrs

    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        load_config().heartbeat = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("name", ["heartbeat", "history-ttl", "drain-timeout"])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_non_finite_seconds_are_rejected(name, value):
    """Infinite or NaN durations are refused with a ConfigError naming the option."""
    with pytest.raises(ConfigError, match=name):
        load_config({name: value})


def test_access_log_is_a_boolean_on_by_default():
    """access-log defaults to on; TOML takes true/false and refuses anything else, naming it."""
    assert Config().access_log is True
    assert load_config({"access-log": False}).access_log is False
    with pytest.raises(ConfigError, match="access-log: expected true or false, got 'no'"):
        load_config({"access-log": "no"})
