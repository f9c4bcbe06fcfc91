"""`twistd -n gateway` with an unusable authenticator or secret: one line on stderr
naming the option, exit status 1, no traceback, and no secret in the output
(docs/protocol.md sections 8 and 10)."""

from __future__ import annotations

import pytest

from tests.integration.test_startup_errors import assert_one_line_error, run_twistd


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--authenticator", "nope"], ["--authenticator: unknown authenticator 'nope'", "api-key, http, jwt"]),
        (["--authenticator", "jwt:secret=half-one,half-two"], ["--authenticator jwt:", "NAME=VALUE"]),
        (["--authenticator", "http"], ["--authenticator http:", "needs a URL"]),
        (["--auth-url", "ftp://backend/"], ["--auth-url:", "http://"]),
        (["--jwt-secret-file", "/nonexistent/jwt.secret"], ["--jwt-secret-file:", "/nonexistent/jwt.secret", "No such file"]),
    ],
)
def test_authentication_startup_errors_are_one_line(args, expected):
    proc = run_twistd(*args)
    line = assert_one_line_error(proc, *expected)
    assert "half-one" not in proc.stdout + proc.stderr and "half-two" not in line
