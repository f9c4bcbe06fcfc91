"""--access-log / --no-access-log on a real `twistd -n gateway` (docs/protocol.md section 10):
one Combined Log Format line per HTTP request by default, none with --no-access-log."""

from __future__ import annotations

import signal

import httpx

from tests.integration.test_twistd import free_port, twistd, wait_ready


def run_and_request(*options: str) -> str:
    """Start twistd with ``options``, make one marked poll, stop it; its log output."""
    port = free_port()
    proc = twistd("--listen", f"tcp:{port}:interface=127.0.0.1", *options)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc)
        r = httpx.get(base + "/poll", params={"channel": "marker-channel", "timeout": "0"}, timeout=5)
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out


def test_access_log_is_on_by_default_and_off_with_no_access_log(tmp_path):
    """Default: the poll has its access-log line; --no-access-log: no line for any request;
    access-log = false in a --config file does the same, and --access-log overrides it."""
    assert '"GET /poll?channel=marker-channel&timeout=0 HTTP/1.1" 200' in run_and_request()
    quiet = run_and_request("--no-access-log")
    assert "marker-channel" not in quiet and '"GET /readyz' not in quiet
    assert "gateway listening on" in quiet  # the rest of the log is still there
    config = tmp_path / "gateway.toml"
    config.write_text("access-log = false\n")
    assert "marker-channel" not in run_and_request("--config", str(config))
    assert "marker-channel" in run_and_request("--config", str(config), "--access-log")
