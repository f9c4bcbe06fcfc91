"""The README tells the truth: its option table and its test command match the code and CI."""

from __future__ import annotations

import pathlib
import re

from gateway.config import options_markdown

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_readme_option_table_is_generated_from_the_option_table():
    """The README's option list is exactly what `python -m gateway.config` prints."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- options:start -->\n", 1)[1].split("\n<!-- options:end -->", 1)[0]
    assert table == options_markdown()


def test_ci_runs_the_readme_test_command():
    """.ci/run runs the very command the README gives for the tests."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.DOTALL)
    test_command = next(b for b in blocks if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci


# -- every shell block is copy-pasteable -------------------------------------------

TWISTD = ".venv/bin/twistd"  # what the README's own install provides
DEFAULT_REDIS_PORT = "6379"  # the machine's own Redis, if it has one: never the README's


def sh_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.*?)\n```", readme, re.DOTALL)


def commands(block: str) -> list[list[str]]:
    """The simple commands of a shell block, as argument lists (comments dropped)."""
    import shlex

    out = []
    for line in block.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        current: list[str] = []
        for token in lexer:
            if token in ("&&", "||", ";", "|", "&", "{", "}", "(", ")", "$"):
                if current:
                    out.append(current)
                current = []
            else:
                current.append(token)
        if current:
            out.append(current)
    return out


def all_commands(program: str) -> list[list[str]]:
    return [c for b in sh_blocks() for c in commands(b) if c[0].rsplit("/", 1)[-1] == program]


def test_readme_has_shell_blocks_with_twistd_and_redis():
    """The checks below have something to check."""
    assert len(sh_blocks()) >= 5
    assert len(all_commands("twistd")) >= 4
    assert all_commands("redis-server")


def test_readme_shell_blocks_parse():
    """Every ```sh block is valid bash (bash -n)."""
    import subprocess

    for block in sh_blocks():
        result = subprocess.run(["bash", "-n"], check=False, input=block, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{result.stderr}\nin:\n{block}"


def _parse_twistd(argv: list[str]):
    from twisted.scripts.twistd import ServerOptions

    options = ServerOptions()
    options.parseOptions(argv[1:])
    return options


def test_readme_twistd_commands_run_the_installed_twistd_with_existing_options():
    """Every twistd command is the venv's twistd (a fresh machine has no other on PATH),
    runs `gateway`, and twistd's own parser, which knows the gateway's options, accepts
    every option it passes."""
    from gateway.config import OPTIONS
    from gateway.tap import Options

    twistd_options = {"-n", "--nodaemon", "--pidfile", "--logfile"}
    gateway_options = {f"--{o.name}" for o in OPTIONS} | {f"--{p[0]}" for p in Options.optParameters}
    for argv in all_commands("twistd"):
        assert argv[0] == TWISTD, argv
        assert "gateway" in argv, argv
        split = argv.index("gateway")
        for arg in argv[1:split]:
            if arg.startswith("-"):
                assert arg.split("=", 1)[0] in twistd_options, f"{arg} in {argv}"
        for arg in argv[split + 1 :]:
            if arg.startswith("-"):
                assert arg.split("=", 1)[0] in gateway_options, f"{arg} in {argv}"
        options = _parse_twistd(argv)
        assert options.subCommand == "gateway"


def test_readme_listen_endpoints_parse_and_stay_on_loopback():
    """Every --listen in the README is a valid endpoint description bound to 127.0.0.1
    (a bare tcp:PORT would listen on every interface of a machine without auth)."""
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    listens = [desc for argv in all_commands("twistd") for desc in _parse_twistd(argv).subOptions.config.listen]
    assert any(d.startswith("ssl:") for d in listens)
    for desc in listens:
        assert "interface=127.0.0.1" in desc.split(":"), desc
        if not desc.startswith("ssl:"):  # ssl: would read its PEM files now
            serverFromString(MemoryReactor(), desc)


def test_readme_nodes_do_not_share_a_pid_file():
    """No two twistd commands write the same pid file (without --pidfile twistd writes
    twistd.pid in the current folder; --pidfile= writes none), so they can all run from
    the clone's folder at once."""
    pidfiles = []
    for argv in all_commands("twistd"):
        value = _parse_twistd(argv)["pidfile"]
        if value:
            pidfiles.append(value)
    assert len(pidfiles) == len(set(pidfiles)), pidfiles


def test_readme_redis_servers_are_throwaway_ones_on_their_own_port():
    """A redis-server the README starts never collides with a Redis already running on
    the default port, and keeps nothing on disk; redis-cli talks to that one."""
    for argv in all_commands("redis-server"):
        assert "--port" in argv, argv
        assert argv[argv.index("--port") + 1] != DEFAULT_REDIS_PORT, argv
        assert argv[argv.index("--save") + 1] == "", argv
        assert argv[argv.index("--appendonly") + 1] == "no", argv
    for argv in all_commands("redis-cli"):
        assert "-p" in argv and argv[argv.index("-p") + 1] != DEFAULT_REDIS_PORT, argv
    urls = [u for argv in all_commands("twistd") for u in argv if u.startswith("redis://")]
    assert urls and all(f":{DEFAULT_REDIS_PORT}/" not in u for u in urls), urls
