"""Many ``Gateway`` clients in one page (for the drain tests and bench/drain_spread.py).

:func:`start_many` makes ``window.many``: ``n`` clients of the same URL and options,
each subscribed to ``channels`` and recording, per client, the seqs it delivered per
channel and its state changes with wall-clock times (``Date.now()``, comparable with
the test process's ``time.time()`` on the same machine).
"""

from __future__ import annotations

from typing import Any

START_MANY = """([url, options, channels, n]) => {
  window.many = window.many || [];
  for (let i = 0; i < n; i++) {
    const gw = new Gateway(url, options);
    const rec = {gw: gw, seqs: {}, states: [], errors: []};
    gw.on("state", (s) => rec.states.push(Object.assign({at: Date.now()}, s)));
    gw.on("error", (e) => rec.errors.push(e));
    for (const c of channels) {
      rec.seqs[c] = [];
      gw.subscribe(c, (e) => rec.seqs[c].push(e.type === "reset" ? "reset" : e.seq));
    }
    window.many.push(rec);
  }
  return window.many.length;
}"""

SUMMARY = """() => window.many.map((r) => ({state: r.gw.state, seqs: r.seqs, states: r.states, errors: r.errors}))"""


def start_many(page: Any, url: str, n: int, channels: tuple[str, ...] = ("room",), **options: Any) -> int:
    """Start ``n`` more clients in ``page`` (a Playwright page); returns how many it has."""
    return int(page.evaluate(START_MANY, [url, options, list(channels), n]))


def count_connected(page: Any, transport: str = "websocket") -> int:
    return int(page.evaluate(
        "(t) => window.many.filter((r) => r.gw.state.state === 'connected' && r.gw.state.transport === t).length",
        transport,
    ))


def summary(page: Any) -> list[dict[str, Any]]:
    return list(page.evaluate(SUMMARY))


def close_many(page: Any) -> None:
    page.evaluate("() => { for (const r of window.many || []) r.gw.close(); }")
