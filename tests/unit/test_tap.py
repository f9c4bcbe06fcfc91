"""``twistd gateway`` options (docs/protocol.md section 10) parsed into a Config, and the
service built from them (never started here); twistd's Options turn every error into
one line on stderr and exit status 1."""

from __future__ import annotations

import gc
import sys

import pytest
from twisted.python import usage

import gateway
from gateway.config import load_config
from gateway.tap import GatewayOptions, Options, as_command_line, makeService


@pytest.fixture(autouse=True)
def _restore_excepthook(monkeypatch):
    """makeService installs a sys.excepthook (for twistd): put the original back after each test."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)


def parse(*argv: str) -> GatewayOptions:
    options = GatewayOptions()
    options.parseOptions(list(argv))
    return options


def test_no_arguments_gives_the_default_config():
    """No arguments give the same configuration as load_config() (node id aside)."""
    default = load_config()
    config = parse().config
    assert (default.listen, default.history_size, default.heartbeat) == (config.listen, config.history_size, config.heartbeat)


def test_listen_is_repeatable():
    """--listen given twice listens on both endpoints, in order."""
    assert ("tcp:8080", "unix:/tmp/gw.sock") == parse("--listen", "tcp:8080", "--listen=unix:/tmp/gw.sock").config.listen


def test_allowed_origin_is_repeatable():
    """--allowed-origin given twice allows both origins, in order."""
    config = parse("--allowed-origin", "https://a.example", "--allowed-origin", "https://b.example").config
    assert ("https://a.example", "https://b.example") == config.allowed_origin


def test_numeric_options_are_converted():
    """Numeric options given as strings are converted to numbers."""
    config = parse(
        "--history-size", "5", "--history-ttl", "1.5", "--heartbeat", "3", "--max-message-size", "4096", "--drain-timeout", "0"
    ).config
    assert (5, 1.5, 3.0, 4096, 0.0) == (
        config.history_size,
        config.history_ttl,
        config.heartbeat,
        config.max_message_size,
        config.drain_timeout,
    )


def test_string_options_are_kept():
    """--redis and --node-id are taken as given."""
    config = parse("--redis", "redis://127.0.0.1:6379/0", "--node-id", "n7").config
    assert ("redis://127.0.0.1:6379/0", "n7") == (config.redis, config.node_id)


def test_config_file_is_merged_under_command_line(tmp_path):
    """--config FILE sets options, the command line overrides them, the rest keep defaults."""
    path = tmp_path / "gateway.toml"
    path.write_text('listen = ["tcp:9000"]\nhistory-size = 50\nheartbeat = 5\n', encoding="utf-8")
    config = parse("--config", str(path), "--heartbeat", "7").config
    assert (("tcp:9000",), 50, 7.0, 300.0) == (config.listen, config.history_size, config.heartbeat, config.history_ttl)


def test_command_line_listen_replaces_config_file_listen(tmp_path):
    """--listen on the command line replaces the file's listen array."""
    path = tmp_path / "gateway.toml"
    path.write_text('listen = ["tcp:9000", "tcp:9001"]\n', encoding="utf-8")
    assert ("tcp:1",) == parse("--config", str(path), "--listen", "tcp:1").config.listen


@pytest.mark.parametrize(
    "argv",
    [
        ["--history-size", "lots"],
        ["--history-size", "0"],
        ["--heartbeat", "-1"],
        ["--history-ttl", "0"],
        ["--max-message-size", "12"],
        ["--drain-timeout", "-1"],
    ],
    ids=" ".join,
)
def test_bad_value_is_usage_error(argv):
    """A bad option value raises UsageError naming the option."""
    with pytest.raises(usage.UsageError) as info:
        parse(*argv)
    assert True == (argv[0][2:] in str(info.value))


def test_unknown_option_is_usage_error():
    """An option that does not exist raises UsageError."""
    with pytest.raises(usage.UsageError):
        parse("--no-such-option", "1")


def test_missing_config_file_is_usage_error(tmp_path):
    """--config naming a missing file raises UsageError."""
    with pytest.raises(usage.UsageError):
        parse("--config", str(tmp_path / "missing.toml"))


def test_bad_config_file_value_is_usage_error(tmp_path):
    """A bad value in the --config file raises UsageError naming the option."""
    path = tmp_path / "gateway.toml"
    path.write_text("heartbeat = 0\n", encoding="utf-8")
    with pytest.raises(usage.UsageError) as info:
        parse("--config", str(path))
    assert True == ("heartbeat" in str(info.value))


def test_make_service_uses_the_parsed_config():
    """makeService returns a service whose config is the parsed one, not yet running."""
    options = parse("--listen", "tcp:0:interface=127.0.0.1", "--history-size", "9")
    svc = makeService(options)
    assert (options.config, 0) == (svc.config, svc.running)


def test_make_service_does_not_listen():
    """makeService binds nothing: the service has no ports until it is started."""
    svc = makeService(parse("--listen", "tcp:0:interface=127.0.0.1"))
    assert [] == svc.ports


@pytest.mark.parametrize(
    "url,message",
    [("http://localhost", "expected redis://"), ("redis://h/abc", "database must be a number"), ("redis://h/0?x=1", "unknown URL parameter")],
)
def test_bad_redis_url_is_a_usage_error_at_option_parsing(url, message):
    """A malformed --redis is refused while parsing options, with a message naming the problem."""
    with pytest.raises(usage.UsageError, match=message):
        GatewayOptions().parseOptions(["--redis", url])


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["--history-size", "0"], "gateway: --history-size: must be > 0"),
        (["--redis", "http://x"], "gateway: --redis: expected redis://"),
        (["--nope"], "gateway: option --nope not recognized (see twistd gateway --help)"),
    ],
)
def test_twistd_options_report_one_line_and_exit_1(capfd, argv, expected):
    """twistd's Options: a bad option is one line on the real stderr (fd 2) and SystemExit(1)."""
    with pytest.raises(SystemExit) as info:
        Options().parseOptions(argv)
    out, err = capfd.readouterr()
    assert (info.value.code, out) == (1, "")
    assert err.startswith(expected) and err.count("\n") == 1


def test_version_option_prints_the_version(capsys):
    """--version prints `gateway <version>` and exits 0."""
    with pytest.raises(SystemExit) as info:
        Options().parseOptions(["--version"])
    assert (info.value.code, capsys.readouterr().out) == (0, f"gateway {gateway.__version__}\n")


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["--hook", "nope"], "gateway: --hook: unknown hook 'nope'"),
        (["--listen", "tcp:x"], "gateway: --listen tcp:x: "),
        (["--listen", "ssl:0:privateKey=/no/such/key.pem"], "gateway: --listen ssl:0:privateKey=/no/such/key.pem: No such file"),
    ],
)
def test_make_service_errors_are_one_line_and_exit_1(capfd, argv, expected):
    """Errors found while building the service (hooks, endpoints, TLS files) are one line and SystemExit(1)."""
    options = parse(*argv)
    with pytest.raises(SystemExit) as info:
        makeService(options)
    _, err = capfd.readouterr()
    assert info.value.code == 1
    assert err.startswith(expected) and err.count("\n") == 1


@pytest.mark.parametrize(
    "message,expected",
    [
        ("history-size: must be > 0", "--history-size: must be > 0"),
        ("listen tcp:x: bad", "--listen tcp:x: bad"),
        ("config: cannot read f", "--config: cannot read f"),
        ("give --jwt-secret or --jwt-public-key, not both", "give --jwt-secret or --jwt-public-key, not both"),
        ("authentication: not yet", "authentication: not yet"),
    ],
)
def test_config_messages_name_the_command_line_option(message, expected):
    """A config error that starts with an option's long name is shown as --name."""
    assert as_command_line(message) == expected



def test_make_service_makes_an_uncaught_listen_error_one_line(capfd):
    """After makeService, an uncaught ListenError (twistd's privilegedStartService) prints one
    line instead of a traceback; any other exception still goes to the previous hook."""
    from gateway.service import ListenError

    seen = []
    sys.excepthook = lambda *exc_info: seen.append(exc_info[0])
    makeService(parse("--listen", "tcp:0:interface=127.0.0.1"))
    makeService(parse("--listen", "tcp:0:interface=127.0.0.1"))  # installed once only
    error = ListenError("listen tcp:1: Address already in use")
    sys.excepthook(ListenError, error, None)
    sys.excepthook(KeyError, KeyError("x"), None)
    _, err = capfd.readouterr()
    assert err == "gateway: --listen tcp:1: Address already in use\n"
    assert seen == [KeyError]


# -- probing listen addresses before twistd goes into the background ------------------

import socket as _socket  # noqa: E402

from gateway.tap import probe_listen, tcp_address  # noqa: E402


@pytest.mark.parametrize(
    "description,expected",
    [
        ("tcp:8080", ("", 8080)),
        ("tcp:8080:interface=127.0.0.1", ("127.0.0.1", 8080)),
        ("tcp:port=81:interface=\\:\\:1", ("::1", 81)),
        ("ssl:8443:privateKey=k.pem:certKey=c.pem", ("", 8443)),
        ("tcp6:8081", ("::", 8081)),
        ("tcp:0:interface=127.0.0.1", None),
        ("unix:/run/gw.sock", None),
        ("systemd:domain=INET:index=0", None),
    ],
)
def test_tcp_address_of_a_listen_description(description, expected):
    assert tcp_address(description) == expected


def test_probe_listen_finds_a_port_in_use_and_leaves_a_free_one_free():
    with _socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert "in use" in (probe_listen(f"tcp:{port}:interface=127.0.0.1") or "")
    # Closed again: the probe itself does not hold the port.
    assert probe_listen(f"tcp:{port}:interface=127.0.0.1") is None
    with _socket.socket() as again:
        again.bind(("127.0.0.1", port))


def test_access_log_flags():
    """--no-access-log turns the access log off, --access-log on; neither leaves the default (on)."""
    assert parse().config.access_log is True
    assert parse("--no-access-log").config.access_log is False
    assert parse("--access-log").config.access_log is True
    assert parse("--no-access-log", "--access-log").config.access_log is True


def test_make_service_tunes_the_collector_once_running(monkeypatch):
    """Once the reactor runs, twistd's node moves everything loaded so far out of the
    cyclic collector's reach (gc.freeze), so full collections do not re-scan it, and
    raises the collector's thresholds (held polls die young instead of filling the
    old generation)."""
    from twisted.internet import reactor

    from gateway.tap import GC_THRESHOLDS, tune_gc

    from twisted.web import server

    from gateway.transports._httpdate import CachedHTTPDate

    scheduled = []
    monkeypatch.setattr(reactor, "callWhenRunning", lambda f, *a, **k: scheduled.append(f))
    monkeypatch.setattr(server, "datetimeToString", server.datetimeToString)
    makeService(parse("--listen", "tcp:0:interface=127.0.0.1"))
    assert scheduled == [tune_gc]
    assert isinstance(server.datetimeToString, CachedHTTPDate)  # Date formatted once a second
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > frozen
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
