"""Startup errors of the real `twistd -n gateway` (docs/protocol.md section 10): one line on
the process's real stderr naming the option and the problem, exit status 1, no traceback,
whichever phase fails (option parsing, building the service, listening)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

import gateway

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def run_twistd(*args: str, pidfile: str = "", cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [TWISTD, "-n", f"--pidfile={pidfile}", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit status 1, exactly one non-empty stderr line containing every ``expected`` text, no traceback."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), proc.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def private_key_pem(path) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(path)


BAD_OPTIONS = [
    (["--listen", "tcp:notaport"], ["--listen tcp:notaport:", "notaport"]),
    (["--listen", "nosuchtype:8080"], ["--listen nosuchtype:8080:", "nosuchtype"]),
    (["--listen", "tcp:0:bogus=1"], ["--listen tcp:0:bogus=1:", "bogus"]),
    (["--hook", "nope"], ["--hook", "unknown hook 'nope'", "log"]),
    (["--hook", "log:x"], ["--hook", "takes no arguments"]),
    (["--redis", "http://localhost"], ["--redis", "redis://"]),
    (["--history-size", "zero"], ["--history-size", "zero"]),
    (["--heartbeat", "-1"], ["--heartbeat", "> 0"]),
    (["--max-message-size", "12"], ["--max-message-size", ">= 256"]),
    (["--no-such-option", "1"], ["--no-such-option", "not recognized"]),
    (["--listen"], ["--listen", "requires argument"]),
    (["--jwt-secret", "s", "--jwt-public-key", "k.pem"], ["--jwt-secret", "--jwt-public-key"]),
]


@pytest.fixture(scope="module")
def bad_option_runs() -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    """Every BAD_OPTIONS case run at once (each is a separate twistd process)."""
    procs = {
        tuple(args): subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "gateway", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args, _ in BAD_OPTIONS
    }
    runs = {}
    for args, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        runs[args] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return runs


@pytest.mark.parametrize("args,expected", BAD_OPTIONS, ids=[" ".join(args) for args, _ in BAD_OPTIONS])
def test_bad_option_is_one_line(bad_option_runs, args, expected):
    """A bad option value is one stderr line naming the option, exit status 1."""
    assert_one_line_error(bad_option_runs[tuple(args)], *expected)


def test_missing_tls_key_file_is_one_line(tmp_path):
    """An ssl: endpoint whose private key file is missing: one line naming --listen and the file."""
    missing = tmp_path / "missing-key.pem"
    assert_one_line_error(run_twistd("--listen", f"ssl:0:privateKey={missing}"), "--listen ssl:0:", str(missing))


def test_missing_tls_certificate_file_is_one_line(tmp_path):
    """An ssl: endpoint whose certificate file is missing: one line naming --listen and the file."""
    key = private_key_pem(tmp_path / "key.pem")
    missing = tmp_path / "missing-cert.pem"
    assert_one_line_error(
        run_twistd("--listen", f"ssl:0:privateKey={key}:certKey={missing}"), "--listen ssl:0:", str(missing)
    )


def test_tls_key_file_that_is_not_a_key_is_one_line(tmp_path):
    """An ssl: endpoint whose key file holds no PEM key: one line naming --listen and TLS."""
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key\n")
    assert_one_line_error(run_twistd("--listen", f"ssl:0:privateKey={junk}"), "--listen ssl:0:", "TLS key or certificate")


def test_unix_socket_in_a_missing_directory_is_one_line(tmp_path):
    """A unix: endpoint that cannot be created fails while listening: one line naming it and the path."""
    path = tmp_path / "missing" / "gw.sock"
    assert_one_line_error(run_twistd("--listen", f"unix:{path}"), f"--listen unix:{path}:", "No such file or directory", str(path))


def test_port_in_use_is_one_line_and_the_pidfile_is_removed(tmp_path):
    """A port in use fails while listening (after twistd wrote its pid file): still one
    line naming --listen and the problem, exit status 1, and the pid file is gone."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        pidfile = tmp_path / "gateway.pid"
        proc = run_twistd("--listen", f"tcp:{port}:interface=127.0.0.1", pidfile=str(pidfile))
    line = assert_one_line_error(proc, f"--listen tcp:{port}:interface=127.0.0.1:", "in use")
    assert line.startswith("gateway: ")
    assert not pidfile.exists()


def test_port_in_use_is_one_line_without_nodaemon_too(tmp_path):
    """Without -n twistd goes into the background before it listens; a port in use is
    still found before that: one line on the terminal, exit status 1, no daemon left."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        pidfile, logfile = tmp_path / "gw.pid", tmp_path / "gw.log"
        proc = subprocess.run(
            [TWISTD, f"--pidfile={pidfile}", f"--logfile={logfile}", "gateway", "--listen", f"tcp:{port}:interface=127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    line = assert_one_line_error(proc, f"--listen tcp:{port}:interface=127.0.0.1:", "in use")
    assert line.startswith("gateway: ")
    assert not pidfile.exists()


def test_second_listen_in_use_is_one_line(tmp_path):
    """With two --listen endpoints, the one that cannot listen is the one named."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_twistd("--listen", "tcp:0:interface=127.0.0.1", "--listen", f"tcp:{port}:interface=127.0.0.1")
    assert_one_line_error(proc, f"--listen tcp:{port}:interface=127.0.0.1:")


def test_missing_config_file_is_one_line(tmp_path):
    """--config naming a missing file: one line naming --config and the file."""
    missing = tmp_path / "missing.toml"
    assert_one_line_error(run_twistd("--config", str(missing)), "--config", str(missing))


def test_invalid_toml_is_one_line(tmp_path):
    """--config naming a file that is not TOML: one line naming --config, the file and the position."""
    path = tmp_path / "gateway.toml"
    path.write_text("history-size = = 5\n")
    assert_one_line_error(run_twistd("--config", str(path)), "--config", str(path), "line 1")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("heartbeat = 0\n", "--heartbeat"),
        ("no-such-key = 1\n", "no-such-key"),
        ('listen = ["tcp:notaport"]\n', "--listen tcp:notaport"),
        ('hook = ["nope"]\n', "--hook"),
    ],
    ids=["bad value", "unknown key", "bad listen", "unknown hook"],
)
def test_bad_config_file_content_is_one_line(tmp_path, text, expected):
    """A bad value or unknown key in the --config file: one line naming it."""
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    assert_one_line_error(run_twistd("--config", str(path)), expected)


def test_version_prints_the_gateway_version():
    """`twistd gateway --version` prints the gateway's version and exits 0."""
    proc = subprocess.run([TWISTD, "gateway", "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"gateway {gateway.__version__}\n", "")
