// Deterministic doubles for gateway.js's internal options, for the fake-clock tests:
// a manual clock (_clock), a scripted WebSocket class (_WebSocket) and a scripted
// fetch (_fetch). Nothing here touches the network or real timers (except flush(),
// which lets pending promise callbacks run).
(function () {
  "use strict";

  const realSetTimeout = window.setTimeout.bind(window);
  // Let pending work run: every queued promise callback (a macrotask turn comes after
  // all microtasks), and the browser's own tasks such as reading a Response body
  // (Response.json() takes a few turns), before the fake clock moves on.
  const turn = () => new Promise((resolve) => realSetTimeout(resolve, 0));
  window.flush = async () => {
    for (let i = 0; i < 4; i++) await turn();
  };

  class FakeClock {
    constructor() {
      this.t = 1_000_000;
      this.nextId = 1;
      this.timers = new Map(); // id -> {at, fn}
    }
    now() {
      return this.t;
    }
    setTimeout(fn, ms) {
      const id = this.nextId++;
      this.timers.set(id, {at: this.t + Math.max(0, ms || 0), fn: fn, seq: id});
      return id;
    }
    clearTimeout(id) {
      this.timers.delete(id);
    }
    pending() {
      return Array.from(this.timers.values()).map((t) => t.at - this.t).sort((a, b) => a - b);
    }
    // Move time forward by ms, running each timer due on the way at its own time.
    async advance(ms) {
      const end = this.t + ms;
      await flush();
      for (;;) {
        let next = null;
        for (const [id, t] of this.timers) {
          if (t.at <= end && (next === null || t.at < next[1].at || (t.at === next[1].at && t.seq < next[1].seq))) next = [id, t];
        }
        if (next === null) break;
        this.timers.delete(next[0]);
        this.t = next[1].at;
        next[1].fn();
        await flush();
      }
      this.t = end;
      await flush();
    }
  }

  // A WebSocket whose server side the test plays. `FakeWebSocket.script` decides what
  // the "server" does: "answer" (open, reply to auth/subscribe/ping/publish), "refuse"
  // (close 1006 without opening), "silent" (open, never say anything).
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      this.script = FakeWebSocket.script;
      this.seq = {};
      FakeWebSocket.instances.push(this);
      Promise.resolve().then(() => this._begin());
    }
    _begin() {
      if (this.readyState !== 0) return;
      if (this.script === "refuse") return this.serverClose(1006);
      this.readyState = 1;
      if (this.onopen) this.onopen({});
    }
    send(text) {
      const m = JSON.parse(text);
      this.sent.push(m);
      if (this.script !== "answer") return;
      if (m.type === "auth") this.receive({type: "authenticated", id: m.id, sub: "u", exp: null});
      else if (m.type === "subscribe") this.receive({type: "subscribed", id: m.id, channel: m.channel, epoch: "E", seq: 0});
      else if (m.type === "ping") this.receive({type: "pong", id: m.id});
      else if (m.type === "publish") {
        const seq = (this.seq[m.channel] = (this.seq[m.channel] || 0) + 1);
        this.receive({type: "ack", id: m.id, channel: m.channel, seq: seq, epoch: "E"});
      }
    }
    receive(obj) {
      if (this.readyState === 1 && this.onmessage) this.onmessage({data: JSON.stringify(obj)});
    }
    serverClose(code) {
      if (this.readyState === 3) return;
      this.readyState = 3;
      if (this.onclose) this.onclose({code: code});
    }
    close(code) {
      this.closedWith = code;
      this.readyState = 3;
    }
  }
  FakeWebSocket.instances = [];
  FakeWebSocket.script = "answer";

  window.FakeClock = FakeClock;
  window.FakeWebSocket = FakeWebSocket;

  // A Gateway on the fakes: window.clock, window.sockets, window.fstates.
  window.fakeGateway = function (options, channels) {
    window.clock = new FakeClock();
    FakeWebSocket.instances = [];
    window.sockets = FakeWebSocket.instances;
    window.fstates = [];
    window.fevents = [];
    const randoms = options.randoms ? options.randoms.slice() : null;
    const fixed = options.random;
    const gw = new Gateway(
      "http://gateway.invalid/",
      Object.assign({transports: ["websocket"]}, options.gateway || {}, {
        _clock: window.clock,
        _WebSocket: FakeWebSocket,
        _random: () => (randoms && randoms.length ? randoms.shift() : fixed === undefined ? 0.5 : fixed),
        _fetch: options.fetch || (() => Promise.reject(new TypeError("no network in this test"))),
      })
    );
    gw.on("state", (s) => window.fstates.push(Object.assign({t: window.clock.now() - 1_000_000}, s)));
    for (const c of channels || []) gw.subscribe(c, (e) => window.fevents.push(e));
    window.fgw = gw;
    return gw;
  };
})();
