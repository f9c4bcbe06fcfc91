"""gateway.js's timing logic, deterministic: the page runs the real client on a manual
clock (``_clock``), a fixed or scripted ``_random`` and a scripted WebSocket / fetch
(tests/browser/fakes.js), so backoff, jitter, the 30 s reset, 1001 spreading, the
``online`` retry, heartbeat pings, dead-connection detection, connect timeouts,
moving back up, token refresh and publish retries are checked to the millisecond.
The same behaviours run over real sockets in the other browser tests."""

from __future__ import annotations

from typing import Any


def run(page: Any, body: str, arg: Any = None) -> Any:
    """Run an async function body in the page with ``arg``."""
    return page.evaluate(f"async (arg) => {{ {body} }}", arg)


def reconnect_delays(page: Any) -> list[int]:
    return [s["delay"] for s in page.evaluate("() => fstates") if s["state"] == "reconnecting"]


def test_backoff_is_full_jitter_doubling_to_30s(fake_page):
    """A server that refuses every time: delays random() * min(30 s, 0.5 s * 2^attempt), attempts exactly that far apart."""
    times = run(
        fake_page,
        """
        FakeWebSocket.script = "refuse";
        fakeGateway({random: 0.999}, ["room"]);
        await clock.advance(200000);
        return sockets.map(s => s.createdAt);
        """.replace("sockets.map(s => s.createdAt)", "window.fstates.filter(s => s.state === 'connecting').map(s => s.t)"),
    )
    delays = reconnect_delays(fake_page)
    assert delays[:9] == [499, 999, 1998, 3996, 7992, 15984, 29970, 29970, 29970]
    # The first attempt is at 0 (no state change: the client starts "connecting").
    gaps = [b - a for a, b in zip([0, *times], times)]
    assert gaps[:8] == delays[:8]


def test_jitter_draws_from_random(fake_page):
    """Each delay is its own draw: random 0.5, 0.25, 0.75 give 250, 250, 1500 ms."""
    run(fake_page, """
        FakeWebSocket.script = "refuse";
        fakeGateway({randoms: [0.5, 0.25, 0.75]}, ["room"]);
        await clock.advance(3000);
    """)
    assert reconnect_delays(fake_page)[:3] == [250, 250, 1500]


def test_backoff_resets_after_30s_of_stable_connection(fake_page):
    """Drops after 1 s keep doubling the ceiling; a connection that lasted 30 s starts again from 0.5 s."""
    run(fake_page, """
        fakeGateway({random: 0.999}, ["room"]);
        await clock.advance(10);
        sockets[0].serverClose(1006);           // after ~0 s: ceiling 0.5 s
        await clock.advance(1000);
        sockets[1].serverClose(1006);           // after ~0.5 s up: ceiling 1 s
        await clock.advance(2000);
        await clock.advance(30000);             // up for 30 s
        sockets[2].serverClose(1006);           // ceiling back to 0.5 s
        await clock.advance(1000);
    """)
    assert reconnect_delays(fake_page) == [499, 999, 499]
    assert fake_page.evaluate("() => fgw.state.state") == "connected"


def test_close_1001_reconnects_within_2s_whatever_the_attempt(fake_page):
    """A 1001 (node draining) waits random() * 2 s, not the backoff: 0.1 -> 200 ms, 0.999 -> 1998 ms."""
    run(fake_page, """
        fakeGateway({randoms: [0.999, 0.1, 0.999]}, ["room"]);
        FakeWebSocket.script = "refuse";
        await clock.advance(10);  // the first attempt is refused...
    """)
    run(fake_page, """
        FakeWebSocket.script = "answer";
        await clock.advance(5000);                // ...then connects (after 499 ms)
        sockets[sockets.length - 1].serverClose(1001);
        await clock.advance(5000);
        sockets[sockets.length - 1].serverClose(1001);
        await clock.advance(5000);
    """)
    states = fake_page.evaluate("() => fstates")
    after_1001 = [s["delay"] for s in states if s["state"] == "reconnecting"][-2:]
    assert after_1001 == [200, 1998]


def test_online_event_retries_at_once(fake_page):
    """While waiting out a long backoff, the browser's `online` event starts the next attempt immediately."""
    result = run(fake_page, """
        FakeWebSocket.script = "refuse";
        fakeGateway({random: 0.999}, ["room"]);
        await clock.advance(20000);
        const before = sockets.length;
        const waiting = fgw.state;
        FakeWebSocket.script = "answer";
        window.dispatchEvent(new Event("online"));
        await flush(); await flush();
        return {before, after: sockets.length, waiting, state: fgw.state.state};
    """)
    assert result["waiting"]["state"] == "reconnecting" and result["waiting"]["delay"] > 5000
    assert result["after"] == result["before"] + 1
    assert result["state"] == "connected"


def test_websocket_pings_when_idle_and_reconnects_when_dead(fake_page):
    """Silent server: ping after 20 s and 40 s of silence, dead (socket closed, reconnecting) at 45 s = 2 x 20 + 5."""
    result = run(fake_page, """
        fakeGateway({random: 0.5}, ["room"]);
        await clock.advance(1);
        const ws = sockets[0];
        ws.script = "silent";
        const pings = () => ws.sent.filter(m => m.type === "ping").length;
        const start = pings();
        const at = {};
        await clock.advance(19990); at.t20 = pings() - start;
        await clock.advance(20); at.t20b = pings() - start;
        await clock.advance(20000); at.t40 = pings() - start;
        await clock.advance(4980); at.alive = fgw.state.state; at.closed1 = ws.closedWith === undefined;
        await clock.advance(20); at.dead = fstates.filter(s => s.state === "reconnecting").length; at.closed = ws.closedWith;
        return at;
    """)
    assert result == {"t20": 0, "t20b": 1, "t40": 2, "alive": "connected", "closed1": True, "dead": 1, "closed": 1000}


def test_answered_pings_keep_a_quiet_connection(fake_page):
    """A server that answers pings: 5 quiet minutes, a ping every 20 s, one socket, still connected."""
    result = run(fake_page, """
        fakeGateway({random: 0.5}, ["room"]);
        await clock.advance(1);
        const start = sockets[0].sent.filter(m => m.type === "ping").length;
        await clock.advance(300000);
        return {sockets: sockets.length, pings: sockets[0].sent.filter(m => m.type === "ping").length - start, state: fgw.state.state};
    """)
    assert result == {"sockets": 1, "pings": 15, "state": "connected"}


POLL_FETCH = """
    const cursor = btoa(JSON.stringify({room: ["E", 0]})).replace(/=+$/, "").replace(/\\+/g, "-").replace(/\\//g, "_");
    window.polls = [];
    const fetch = (url, init) => {
      polls.push(url);
      if (url.includes("timeout=0")) {
        return Promise.resolve(new Response(JSON.stringify({messages: [], cursor}), {status: 200, headers: {"content-type": "application/json"}}));
      }
      // A held poll: answered empty after its 25 s (on the fake clock), unless aborted.
      return new Promise((resolve, reject) => {
        const timer = clock.setTimeout(() => resolve(new Response(JSON.stringify({messages: [], cursor}), {status: 200})), 25000);
        init.signal.addEventListener("abort", () => { clock.clearTimeout(timer); reject(new DOMException("aborted", "AbortError")); });
      });
    };
"""


def test_socket_that_never_speaks_falls_back_after_10s_and_moves_up_after_60s(fake_page):
    """WebSocket opens but stays silent: at 10 s the client is on poll; 60 s later it tries WebSocket again, which now works: it moves up."""
    result = run(fake_page, POLL_FETCH + """
        FakeWebSocket.script = "silent";
        fakeGateway({random: 0.5, fetch, gateway: {transports: ["websocket", "poll"]}}, ["room"]);
        await clock.advance(9999);
        const before = fgw.state;
        await clock.advance(2);
        const fallback = fgw.state;
        const firstSocketClosed = sockets[0].closedWith;
        FakeWebSocket.script = "answer";
        await clock.advance(59990);
        const stillPoll = fgw.state.transport;
        await clock.advance(20);
        return {before, fallback, firstSocketClosed, stillPoll, after: fgw.state, sockets: sockets.length,
                subscribedWith: sockets[1].sent.filter(m => m.type === "subscribe").map(m => m.since)};
    """)
    assert result["before"] == {"state": "connecting", "transport": "websocket", "delay": 0}
    assert result["fallback"] == {"state": "connected", "transport": "poll", "delay": 0}
    assert result["firstSocketClosed"] == 1000
    assert result["stillPoll"] == "poll"
    assert result["after"] == {"state": "connected", "transport": "websocket", "delay": 0}
    assert result["sockets"] == 2
    # The WebSocket resumed from the position the polls had learned.
    assert result["subscribedWith"] == [{"epoch": "E", "seq": 0}]
    assert fake_page.evaluate("() => fgw._probe === null && fgw._conn.transport") == "websocket"


def test_refused_upgrade_falls_back_at_once(fake_page):
    """A WebSocket closed before it opens (upgrade refused): poll is tried at once, no backoff."""
    result = run(fake_page, POLL_FETCH + """
        FakeWebSocket.script = "refuse";
        fakeGateway({random: 0.5, fetch, gateway: {transports: ["websocket", "poll"]}}, ["room"]);
        await clock.advance(0);
        return {state: fgw.state, reconnecting: fstates.filter(s => s.state === "reconnecting").length, t: clock.now() - 1000000};
    """)
    assert result == {"state": {"state": "connected", "transport": "poll", "delay": 0}, "reconnecting": 0, "t": 0}


JWT = """
    const b64 = (o) => btoa(JSON.stringify(o)).replace(/=+$/, "").replace(/\\+/g, "-").replace(/\\//g, "_");
    window.issued = [];
    const tokenFor = (ttl) => () => { const t = b64({alg: "HS256"}) + "." + b64({sub: "u", exp: Math.floor(clock.now() / 1000) + ttl}) + ".sig" + issued.length; issued.push(clock.now() - 1000000); return t; };
"""


def test_short_lived_token_is_refreshed_halfway_in_place(fake_page):
    """A token living 40 s: called before connecting, then every 20 s; the WebSocket sends `auth` in place (one socket)."""
    result = run(fake_page, JWT + """
        window.clock = null;
        const gw = fakeGateway({random: 0.5, gateway: {token: (...a) => tokenFor(40)(...a)}}, ["room"]);
        await clock.advance(65000);
        return {issued, auths: sockets[0].sent.filter(m => m.type === "auth").map(m => m.id), sockets: sockets.length};
    """)
    assert result["issued"] == [0, 20000, 40000, 60000]
    assert result["auths"] == ["auth", "refresh", "refresh", "refresh"]
    assert result["sockets"] == 1


def test_long_lived_token_is_refreshed_30s_before_exp(fake_page):
    """A token living 10 minutes is renewed at 9.5 minutes."""
    result = run(fake_page, JWT + """
        fakeGateway({random: 0.5, gateway: {token: (...a) => tokenFor(600)(...a)}}, ["room"]);
        await clock.advance(600000);
        return issued;
    """)
    assert result == [0, 570000]


def test_publish_lost_with_its_connection_is_sent_again_with_the_same_key(fake_page):
    """A publish without an ack when the socket drops goes out again after the reconnect, same idempotency_key; the ack resolves it."""
    result = run(fake_page, """
        fakeGateway({random: 0.5}, ["room"]);
        await clock.advance(1);
        sockets[0].script = "silent";
        const p = fgw.publish("room", {n: 1});
        await clock.advance(10);
        sockets[0].serverClose(1006);
        await clock.advance(1000);
        const ack = await p;
        const sent = sockets.map(s => s.sent.filter(m => m.type === "publish"));
        return {ack, keys: sent.map(list => list.map(m => m.idempotency_key))};
    """)
    assert result["ack"] == {"channel": "room", "seq": 1, "epoch": "E"}
    first, second = result["keys"]
    assert len(first) == 1 and second == first
    assert 16 <= len(first[0]) <= 64


def test_publish_without_ack_rejects_after_30s(fake_page):
    result = run(fake_page, """
        fakeGateway({random: 0.5}, ["room"]);
        await clock.advance(1);
        sockets[0].script = "silent";
        let outcome = null;
        fgw.publish("room", 1).then(a => outcome = {ack: a}, e => outcome = {code: e.code, name: e.name});
        await clock.advance(29990);
        const early = outcome;
        await clock.advance(20);
        return {early, outcome};
    """)
    assert result == {"early": None, "outcome": {"code": "timeout", "name": "GatewayError"}}


def test_events_at_or_below_the_position_are_dropped(fake_page):
    """Repeats and older seqs in the same epoch are dropped; a reset and a new epoch pass."""
    result = run(fake_page, """
        fakeGateway({random: 0.5}, ["room"]);
        await clock.advance(1);
        const ws = sockets[0];
        const msg = (seq, epoch) => ws.receive({type: "message", channel: "room", seq, epoch: epoch || "E", data: seq});
        msg(1); msg(2); msg(2); msg(1); msg(3);
        ws.receive({type: "reset", channel: "room", epoch: "F", seq: 0});
        msg(1, "F"); msg(1, "F"); msg(2, "F");
        ws.receive({type: "message", channel: "other", seq: 1, epoch: "E", data: 0});
        return fevents.map(e => [e.type, e.epoch, e.seq]);
    """)
    assert result == [["message", "E", 1], ["message", "E", 2], ["message", "E", 3], ["reset", "F", 0], ["message", "F", 1], ["message", "F", 2]]


def test_close_leaves_no_timer_and_no_socket(fake_page):
    """close() while connected with a pending publish: no timer left on the clock, socket closed, publish rejected 'closed', state closed."""
    result = run(fake_page, """
        fakeGateway({random: 0.5}, ["room"]);
        await clock.advance(1);
        sockets[0].script = "silent";
        let code = null;
        fgw.publish("room", 1).catch(e => code = e.code);
        await clock.advance(1);
        const timersBefore = clock.pending().length;
        fgw.close();
        await flush();
        await clock.advance(120000);
        return {timersBefore, timers: clock.pending(), closed: sockets[0].closedWith, code, state: fgw.state.state, sockets: sockets.length};
    """)
    assert result["timersBefore"] >= 2
    assert result == {**result, "timers": [], "closed": 1000, "code": "closed", "state": "closed", "sockets": 1}


def test_publish_refused_as_unavailable_is_sent_again_after_a_second(fake_page):
    """`unavailable` (the bus cannot take it now) is not final: the same key goes again 1 s later and its ack resolves the Promise."""
    result = run(fake_page, """
        fakeGateway({random: 0.5}, ["room"]);
        await clock.advance(1);
        const ws = sockets[0];
        const send = ws.send.bind(ws);
        let refused = 0;
        ws.send = (text) => {
          const m = JSON.parse(text);
          if (m.type === "publish" && refused++ === 0) { ws.sent.push(m); ws.receive({type: "error", id: m.id, code: "unavailable", message: "draining"}); return; }
          send(text);
        };
        let outcome = null;
        fgw.publish("room", "x").then(a => outcome = a, e => outcome = e.code);
        await clock.advance(999);
        const before = outcome;
        await clock.advance(2);
        return {before, outcome, keys: ws.sent.filter(m => m.type === "publish").map(m => m.idempotency_key)};
    """)
    assert result["before"] is None
    assert result["outcome"] == {"channel": "room", "seq": 1, "epoch": "E"}
    assert len(result["keys"]) == 2 and result["keys"][0] == result["keys"][1]


def test_http_publish_lost_on_the_network_is_sent_again_with_the_same_key(fake_page):
    """On poll, POST /publish fails (network) once: retried 1 s later with the same idempotency_key, then acked; a 403 rejects at once."""
    result = run(fake_page, POLL_FETCH.replace("const fetch = (url, init) => {", """
    window.posts = [];
    const fetch = (url, init) => {
      if (init && init.method === "POST") {
        const body = JSON.parse(init.body);
        posts.push(body);
        if (body.channel === "secret") return Promise.resolve(new Response(JSON.stringify({error: {code: "forbidden", message: "no"}}), {status: 403}));
        if (posts.length === 1) return Promise.reject(new TypeError("Failed to fetch"));
        return Promise.resolve(new Response(JSON.stringify({channel: body.channel, seq: 7, epoch: "E"}), {status: 200}));
      }""") + """
        fakeGateway({random: 0.5, fetch, gateway: {transports: ["poll"]}}, ["room"]);
        await clock.advance(1);
        let outcome = null, refused = null;
        fgw.publish("room", "x").then(a => outcome = a, e => outcome = e.code);
        await clock.advance(500);
        const before = outcome;
        await clock.advance(600);
        fgw.publish("secret", "y").catch(e => refused = e.code);
        await clock.advance(1);
        return {before, outcome, refused, keys: posts.map(p => p.idempotency_key)};
    """)
    assert result["before"] is None
    assert result["outcome"] == {"channel": "room", "seq": 7, "epoch": "E"}
    assert result["refused"] == "forbidden"
    assert result["keys"][0] == result["keys"][1] and result["keys"][2] != result["keys"][0]


def test_restarts_for_new_channels_do_not_postpone_moving_up(fake_page):
    """On poll after a fallback, subscribing more channels (a new poll request each time) every 20 s does not push back the try of WebSocket due 60 s after connecting."""
    result = run(fake_page, POLL_FETCH + """
        FakeWebSocket.script = "silent";
        fakeGateway({random: 0.5, fetch, gateway: {transports: ["websocket", "poll"]}}, ["room"]);
        await clock.advance(10001);
        FakeWebSocket.script = "answer";
        for (const c of ["a", "b", "c"]) { await clock.advance(19000); fgw.subscribe(c, () => {}); }
        await clock.advance(3000);   // 70.001 s: 60 s after the poll connected
        return {transport: fgw.state.transport, sockets: sockets.length};
    """)
    assert result == {"transport": "websocket", "sockets": 2}
