// Loaded into every test page (Playwright add_init_script) before any page script.
// 1. Instrumentation: live timers, WebSockets and EventSources, so a test can check
//    from inside the page that gw.close() left nothing running.
// 2. Helpers: collect a client's events, states and errors; mint HS256 JWTs with
//    WebCrypto (so token functions need no round trip to Python).
(function () {
  "use strict";
  const live = {timers: new Map(), sockets: new Set(), sources: new Set(), fetches: 0, socketsCreated: 0};
  window.__live = live;

  const realSetTimeout = window.setTimeout.bind(window);
  const realClearTimeout = window.clearTimeout.bind(window);
  const realSetInterval = window.setInterval.bind(window);
  const realClearInterval = window.clearInterval.bind(window);
  window.setTimeout = function (fn, ms, ...args) {
    const stack = new Error().stack;
    const id = realSetTimeout(function () {
      live.timers.delete(id);
      if (typeof fn === "function") fn(...args);
    }, ms);
    live.timers.set(id, {ms: ms, stack: stack});
    return id;
  };
  window.clearTimeout = function (id) {
    live.timers.delete(id);
    realClearTimeout(id);
  };
  window.setInterval = function (fn, ms, ...args) {
    const id = realSetInterval(fn, ms, ...args);
    live.timers.set(id, {ms: ms, interval: true, stack: new Error().stack});
    return id;
  };
  window.clearInterval = function (id) {
    live.timers.delete(id);
    realClearInterval(id);
  };

  const RealWebSocket = window.WebSocket;
  window.WebSocket = class extends RealWebSocket {
    constructor(...args) {
      super(...args);
      live.socketsCreated++;
      live.sockets.add(this);
      this.addEventListener("close", () => live.sockets.delete(this));
    }
  };

  if (window.EventSource) {
    const RealEventSource = window.EventSource;
    window.EventSource = class extends RealEventSource {
      constructor(...args) {
        super(...args);
        live.sources.add(this);
        const close = this.close.bind(this);
        this.close = () => {
          live.sources.delete(this);
          close();
        };
      }
    };
  }

  const realFetch = window.fetch.bind(window);
  window.fetch = function (...args) {
    live.fetches++;
    return realFetch(...args).finally(() => live.fetches--);
  };

  // What is still running: timers, open sockets (not CLOSED), event sources.
  window.liveResources = function () {
    return {
      timers: Array.from(live.timers.values()).map((t) => t.ms + " ms " + (t.stack || "").split("\n").slice(2, 4).join(" | ")),
      sockets: Array.from(live.sockets).filter((s) => s.readyState !== 3).map((s) => s.url + " readyState " + s.readyState),
      sources: Array.from(live.sources).map((s) => s.url),
    };
  };

  // -- a client under test ---------------------------------------------------------
  window.events = []; // every delivered event, in delivery order
  window.states = [];
  window.errors = [];
  window.refreshes = [];
  window.tokensIssued = 0;

  function b64url(bytes) {
    let s = "";
    for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  // An HS256 JWT signed with `secret`, living `ttl` seconds, with `claims`.
  window.mintToken = async function (secret, ttl, claims) {
    const now = Math.floor(Date.now() / 1000);
    const enc = new TextEncoder();
    const header = b64url(enc.encode(JSON.stringify({alg: "HS256", typ: "JWT"})));
    const body = b64url(enc.encode(JSON.stringify(Object.assign({iat: now, exp: now + ttl}, claims))));
    const key = await crypto.subtle.importKey("raw", enc.encode(secret), {name: "HMAC", hash: "SHA-256"}, false, ["sign"]);
    const sig = new Uint8Array(await crypto.subtle.sign("HMAC", key, enc.encode(header + "." + body)));
    window.tokensIssued++;
    return header + "." + body + "." + b64url(sig);
  };

  // Start window.gw on `url` with `options`; options.jwt = {secret, ttl, claims} makes the
  // token a function minting a fresh token on each call.
  window.startClient = function (url, options, channels) {
    options = Object.assign({}, options);
    if (options.randomValue !== undefined) {
      // A fixed _random (JSON cannot carry a function): every jitter draw is this value.
      const value = options.randomValue;
      delete options.randomValue;
      options._random = () => value;
    }
    if (options.jwt) {
      const {secret, ttl, claims} = options.jwt;
      delete options.jwt;
      options.token = () => window.mintToken(secret, ttl, claims);
    }
    const gw = (window.gw = new Gateway(url, options));
    gw.on("state", (s) => window.states.push(Object.assign({at: performance.now()}, s)));
    gw.on("error", (e) => window.errors.push(e));
    gw.on("refresh", (r) => window.refreshes.push(r));
    for (const channel of channels || []) gw.subscribe(channel, (e) => window.events.push(e));
    return gw.url;
  };

  // Publish from the page; resolves to {ack} or {error: code}.
  window.publishFromPage = function (channel, data) {
    return window.gw.publish(channel, data).then(
      (ack) => ({ack: ack}),
      (e) => ({error: e.code || String(e)})
    );
  };
})();
