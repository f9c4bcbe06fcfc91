/*!
 * gateway.js: the browser client of the gateway (docs/protocol.md section 9).
 * One file, no dependencies, no build step; MIT licensed like the gateway.
 *
 *   <script src="/gateway.js"></script>
 *   const gw = new Gateway("https://host/", {token: () => fetch("/my-token").then(r => r.text())});
 *   const sub = gw.subscribe("room:1", event => console.log(event));   // message or reset events
 *   await gw.publish("room:1", {text: "hi"});                           // the ack {channel, seq, epoch}
 *   gw.on("state", s => console.log(s.state, s.transport, s.delay));
 *   gw.close();
 *
 * How it works, in short:
 * - Transports, in the order given (default websocket, sse, poll). One that cannot
 *   connect (an upgrade refused, no first server event within 10 s, a stream a proxy
 *   holds back) is skipped for this page and the next one is tried at once. Every 60 s
 *   the better ones are tried again in the background; when one works the client moves
 *   up to it.
 * - Positions: the last {epoch, seq} delivered per channel. Every connection resumes
 *   from them (WebSocket `since`, an SSE `since=` cursor, a poll `cursor`), built by the
 *   client as docs/protocol.md section 1 allows. Anything at or below a delivered position
 *   is dropped, so two connections overlapping (while moving up) or a replay after a
 *   reconnect never deliver a publication twice.
 * - Publishes carry an idempotency_key and stay pending until acknowledged: after a
 *   reconnect they are sent again, and the server publishes each key once.
 * - SSE is read with fetch() streaming rather than EventSource: EventSource hides
 *   comment lines, so it could not see `: ping` (the only sign of life of a quiet
 *   stream, and how a stream held back by a buffering proxy is told from an open one),
 *   it cannot be given a connect timeout, and it reconnects on its own schedule.
 *   The token goes as `token=` and the position as `since=` in the query, so the
 *   request stays a "simple" cross-origin request (no CORS preflight).
 *
 * Options starting with "_" are internal, for tests only (timings, clock, randomness,
 * a WebSocket class, a fetch function); they may change without notice.
 */
(function (root, factory) {
  if (typeof define === "function" && define.amd) {
    define([], factory);
  } else if (typeof module === "object" && module.exports) {
    module.exports = factory();
  } else {
    root.Gateway = factory();
  }
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";

  var TRANSPORTS = ["websocket", "sse", "poll"];

  // Milliseconds unless said otherwise; docs/protocol.md section 9.
  var TIMING = {
    connectTimeout: 10000, // no first server event by then: the transport cannot connect
    heartbeat: 20000, // the server's --heartbeat; silence for 2x this + deadSlack is a dead connection
    deadSlack: 5000,
    backoffBase: 500, // reconnect after random() * min(backoffCap, backoffBase * 2^attempt)
    backoffCap: 30000,
    stableAfter: 30000, // a connection up this long resets the backoff
    upgradeEvery: 60000, // how often better transports are tried again
    goingAwaySpread: 2000, // after a 1001 (node draining): reconnect within random() * this
    publishTimeout: 30000, // a publish without an ack by then rejects with "timeout"
    publishRetry: 1000, // a publish refused as "unavailable" or lost on the network is sent again after this
    pollTimeout: 25, // seconds a poll is held by the server
    refreshAhead: 30000, // a token function is called this long before exp...
    shortLived: 60000, // ...or halfway through the lifetime of a token that lives less than this
  };

  // -- small helpers ----------------------------------------------------------

  var hasOwn = Object.prototype.hasOwnProperty;

  function base64url(bytes) {
    var binary = "";
    for (var i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i]);
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function fromBase64url(text) {
    var b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) b64 += "=";
    var binary = atob(b64);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  /** A cursor (docs/protocol.md section 1): base64url without padding of {"channel": [epoch, seq]}. */
  function encodeCursor(positions) {
    return base64url(new TextEncoder().encode(JSON.stringify(positions)));
  }

  function decodeCursor(cursor) {
    try {
      var value = JSON.parse(new TextDecoder().decode(fromBase64url(cursor)));
      return value && typeof value === "object" ? value : null;
    } catch (e) {
      return null;
    }
  }

  /** The `exp` of a JWT (seconds since the epoch), or null when the token is not a JWT with one. */
  function jwtExp(token) {
    var parts = typeof token === "string" ? token.split(".") : [];
    if (parts.length !== 3) return null;
    try {
      var claims = JSON.parse(new TextDecoder().decode(fromBase64url(parts[1])));
      return typeof claims.exp === "number" ? claims.exp : null;
    } catch (e) {
      return null;
    }
  }

  function randomKey() {
    var bytes = new Uint8Array(16);
    if (typeof crypto !== "undefined" && crypto.getRandomValues) {
      crypto.getRandomValues(bytes);
    } else {
      for (var i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
    }
    return base64url(bytes);
  }

  /** Report an exception thrown by application code without breaking the client. */
  function report(error) {
    Promise.reject(error);
  }

  /** Whether this browser can run a transport at all. */
  function supported(transport) {
    if (transport === "websocket") return typeof WebSocket === "function";
    if (transport === "sse") {
      return typeof fetch === "function" && typeof ReadableStream === "function" && typeof TextDecoder === "function";
    }
    return typeof fetch === "function";
  }

  /** An error from the gateway (`code` is its error code, e.g. "forbidden") or from the client ("timeout", "closed"). */
  function GatewayError(code, message) {
    var error = new Error(message || code);
    error.name = "GatewayError";
    error.code = code;
    return error;
  }

  /** Named timers on an injectable clock; clearAll() leaves nothing behind. */
  function Timers(clock) {
    this.clock = clock;
    this.ids = {};
  }
  Timers.prototype.set = function (name, ms, fn) {
    this.clear(name);
    var self = this;
    this.ids[name] = this.clock.setTimeout(function () {
      delete self.ids[name];
      fn();
    }, Math.max(0, ms));
  };
  Timers.prototype.clear = function (name) {
    if (hasOwn.call(this.ids, name)) {
      this.clock.clearTimeout(this.ids[name]);
      delete this.ids[name];
    }
  };
  Timers.prototype.active = function (name) {
    return hasOwn.call(this.ids, name);
  };
  Timers.prototype.clearAll = function () {
    for (var name in this.ids) if (hasOwn.call(this.ids, name)) this.clock.clearTimeout(this.ids[name]);
    this.ids = {};
  };

  var realClock = {
    now: function () {
      return Date.now();
    },
    setTimeout: function (fn, ms) {
      return setTimeout(fn, ms);
    },
    clearTimeout: function (id) {
      clearTimeout(id);
    },
  };

  // -- connections ------------------------------------------------------------
  //
  // A connection is one attempt on one transport. It reports to the Gateway:
  // gw._opened(conn) once the server has been heard from, gw._event(event) for each
  // message or reset, and gw._failed(conn, reason) once, when it ends for any reason
  // other than close(). Reasons: "refused", "timeout", "network", "http" (transport
  // trouble), "dead" (silent too long), "ended"/"going_away" (the server let go),
  // "unauthorized", "forbidden".

  function Connection(gw, transport, token) {
    this.gw = gw;
    this.transport = transport;
    this.token = token;
    this.timers = new Timers(gw._clock);
    this.opened = false;
    this.closed = false;
    this.lastSeen = 0;
    this.lastPing = 0;
    this.aborts = [];
  }

  Connection.prototype.start = function () {
    var self = this;
    this.timers.set("connect", this.gw._timing.connectTimeout, function () {
      self.fail("timeout");
    });
    this._start();
  };

  /** Anything from the server: the connection is alive. */
  Connection.prototype.seen = function () {
    this.lastSeen = this.gw._clock.now();
  };

  /** The first server event: this transport works. */
  Connection.prototype.markOpen = function () {
    if (this.opened || this.closed) return;
    this.opened = true;
    this.timers.clear("connect");
    this.seen();
    if (this.watchesLiveness) this.watch();
    this.gw._opened(this);
  };

  /**
   * Dead-connection detection: nothing from the server for 2 x heartbeat + slack ends the
   * connection; a WebSocket sends `ping` after a heartbeat of silence (the pong, or any
   * answer, counts as life).
   */
  Connection.prototype.watch = function () {
    if (this.closed) return;
    var t = this.gw._timing;
    var now = this.gw._clock.now();
    var deadline = this.lastSeen + 2 * t.heartbeat + t.deadSlack;
    if (now >= deadline) {
      this.fail("dead");
      return;
    }
    var next = deadline;
    if (this.sendsPings) {
      var quietSince = Math.max(this.lastSeen, this.lastPing);
      if (now - quietSince >= t.heartbeat) {
        this.lastPing = now;
        this.ping();
        quietSince = now;
      }
      next = Math.min(next, quietSince + t.heartbeat);
    }
    var self = this;
    this.timers.set("watch", next - now, function () {
      self.watch();
    });
  };

  Connection.prototype.fail = function (reason, detail) {
    if (this.closed) return;
    this.close();
    this.gw._failed(this, reason, detail || {});
  };

  Connection.prototype.close = function () {
    if (this.closed) return;
    this.closed = true;
    this.timers.clearAll();
    for (var i = 0; i < this.aborts.length; i++) this.aborts[i].abort();
    this.aborts = [];
    this._stop();
  };

  /** fetch() that close() aborts; resolves to the Response (or rejects). */
  Connection.prototype.fetch = function (url, init) {
    var controller = new AbortController();
    this.aborts.push(controller);
    var self = this;
    var forget = function () {
      var i = self.aborts.indexOf(controller);
      if (i >= 0) self.aborts.splice(i, 1);
    };
    init = Object.assign({signal: controller.signal, cache: "no-store"}, init || {});
    return this.gw._fetch(url, init).then(
      function (response) {
        // Kept until the body is read: close() must abort a stream too.
        response._forget = forget;
        return response;
      },
      function (error) {
        forget();
        throw error;
      }
    );
  };

  /** The gateway's JSON error code of a failed HTTP answer, and a failure reason for it. */
  Connection.prototype.httpFailure = function (response) {
    var self = this;
    return response
      .json()
      .catch(function () {
        return null;
      })
      .then(function (body) {
        if (response._forget) response._forget();
        var code = body && body.error && body.error.code;
        if (response.status === 401) self.fail("unauthorized", {code: code || "unauthorized"});
        else if (response.status === 403 && code) self.fail("forbidden", {code: code});
        else self.fail("http", {status: response.status, code: code});
      });
  };

  // WebSocket --------------------------------------------------------------------

  function WebSocketConnection(gw, token) {
    Connection.call(this, gw, "websocket", token);
    this.watchesLiveness = true;
    this.sendsPings = true;
    this.ready = false; // open and (when a token is used) authenticated
    this.ws = null;
  }
  WebSocketConnection.prototype = Object.create(Connection.prototype);

  WebSocketConnection.prototype._start = function () {
    var self = this;
    var ws;
    try {
      ws = this.ws = new this.gw._WebSocket(this.gw._url("ws").replace(/^http/, "ws"));
    } catch (e) {
      // A bad URL, or a blocked port: the browser refuses to even try.
      this.gw._clock.setTimeout(function () {
        self.fail("refused");
      }, 0);
      return;
    }
    ws.onopen = function () {
      if (self.closed) return;
      if (self.token) {
        self.send({type: "auth", token: self.token, id: "auth"});
      } else {
        self.becomeReady();
        self.ping();
      }
    };
    ws.onmessage = function (e) {
      if (self.closed) return;
      self.seen();
      var m;
      try {
        m = JSON.parse(e.data);
      } catch (err) {
        return;
      }
      self.handle(m);
    };
    ws.onclose = function (e) {
      if (self.closed) return;
      var code = e.code;
      if (!self.opened) self.fail(code === 4001 ? "unauthorized" : code === 4003 ? "forbidden" : "refused", {code: code});
      else if (code === 1001) self.fail("going_away", {code: code});
      else if (code === 4001) self.fail("unauthorized", {code: code});
      else if (code === 4003) self.fail("forbidden", {code: code});
      else self.fail("ended", {code: code});
    };
    ws.onerror = function () {
      // A close event always follows.
    };
  };

  WebSocketConnection.prototype._stop = function () {
    var ws = this.ws;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(1000);
    } catch (e) {
      // already closed
    }
  };

  WebSocketConnection.prototype.send = function (command) {
    if (this.closed || !this.ws || this.ws.readyState !== 1) return false;
    this.ws.send(JSON.stringify(command));
    return true;
  };

  WebSocketConnection.prototype.ping = function () {
    this.send({type: "ping", id: "ping"});
  };

  WebSocketConnection.prototype.becomeReady = function () {
    if (this.ready) return;
    this.ready = true;
    var channels = this.gw._channelList();
    for (var i = 0; i < channels.length; i++) this.subscribe(channels[i]);
  };

  WebSocketConnection.prototype.subscribe = function (channel) {
    var command = {type: "subscribe", channel: channel, id: "s:" + channel};
    var position = this.gw._positions[channel];
    if (position) command.since = {epoch: position.epoch, seq: position.seq};
    this.send(command);
  };

  WebSocketConnection.prototype.unsubscribe = function (channel) {
    this.send({type: "unsubscribe", channel: channel, id: "u:" + channel});
  };

  WebSocketConnection.prototype.reauth = function (token) {
    this.token = token;
    this.send({type: "auth", token: token, id: "refresh"});
  };

  WebSocketConnection.prototype.handle = function (m) {
    var gw = this.gw;
    switch (m.type) {
      case "authenticated":
        if (m.id === "refresh") {
          gw._emit("refresh", {transport: "websocket", exp: m.exp === undefined ? null : m.exp});
        } else {
          this.becomeReady();
          this.markOpen();
        }
        break;
      case "subscribed":
        gw._subscribed(m.channel, m.epoch, m.seq);
        this.markOpen();
        break;
      case "message":
      case "reset":
        this.markOpen();
        gw._event(m);
        break;
      case "ack":
        gw._acked(String(m.id), {channel: m.channel, seq: m.seq, epoch: m.epoch});
        break;
      case "presence":
        gw._answered(String(m.id), m, null);
        break;
      case "error":
        this.markOpenUnlessAuth(m);
        gw._wsError(m);
        break;
      default:
        // pong, unsubscribed, join, leave, anything newer
        this.markOpen();
    }
  };

  WebSocketConnection.prototype.markOpenUnlessAuth = function (m) {
    // An error answering the first `auth` is not a working connection (a 4001 close follows).
    if (!(m.id === "auth" && !this.ready)) this.markOpen();
  };

  // Server-Sent Events (fetch streaming) ------------------------------------------------

  function SSEConnection(gw, token) {
    Connection.call(this, gw, "sse", token);
    this.watchesLiveness = true;
    this.sendsPings = false;
  }
  SSEConnection.prototype = Object.create(Connection.prototype);

  SSEConnection.prototype._start = function () {
    var self = this;
    var gw = this.gw;
    var channels = gw._channelList();
    if (!channels.length) {
      // Nothing to stream: nothing to lose either. Subscribing restarts the connection.
      this.markOpen();
      return;
    }
    this.fetch(gw._url("sse", {channel: channels, since: gw._cursor(channels), token: this.token}), {
      headers: {Accept: "text/event-stream"},
    }).then(
        function (response) {
          if (!response || self.closed) return;
          if (!response.ok || !response.body) return self.httpFailure(response);
          return self.read(response);
        },
        function () {
          self.fail("network");
        }
      );
  };

  SSEConnection.prototype._stop = function () {};

  /** Read the stream: every chunk is a sign of life; events are dispatched as they complete. */
  SSEConnection.prototype.read = function (response) {
    var self = this;
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    var event = {name: "", data: [], id: null};
    var pump = function () {
      return reader.read().then(function (chunk) {
        if (self.closed) return;
        if (chunk.done) {
          if (response._forget) response._forget();
          // The server ends a stream only when its node drains (errors come as events).
          self.fail(self.opened ? "going_away" : "network");
          return;
        }
        self.seen();
        self.markOpen();
        buffer += decoder.decode(chunk.value, {stream: true});
        var lines = buffer.split(/\r\n|\r|\n/);
        buffer = lines.pop();
        for (var i = 0; i < lines.length && !self.closed; i++) {
          var line = lines[i];
          if (line === "") {
            if (event.data.length) self.dispatch(event.name || "message", event.data.join("\n"));
            // The stream opens with an `id:` block without data: the positions it starts
            // from, which channels without a position yet take ("now"). After the event:
            // an event's own channel must not take its position before it is delivered.
            if (event.id !== null && !self.closed && self.gw._positionMissing()) self.gw._learnCursor(event.id);
            event = {name: "", data: [], id: null};
          } else if (line.charAt(0) !== ":") {
            var colon = line.indexOf(":");
            var field = colon < 0 ? line : line.slice(0, colon);
            var value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "event") event.name = value;
            else if (field === "data") event.data.push(value);
            else if (field === "id") event.id = value;
          }
        }
        return pump();
      });
    };
    pump().catch(function () {
      if (!self.closed) self.fail("network");
    });
  };

  SSEConnection.prototype.dispatch = function (name, data) {
    var m;
    try {
      m = JSON.parse(data);
    } catch (e) {
      return;
    }
    if (name === "message" || name === "reset") {
      this.gw._event(m);
    } else if (name === "error") {
      // Token expired or identity revoked: reconnect with a fresh token from the same position.
      this.fail(m.code === "forbidden" ? "forbidden" : "unauthorized", {code: m.code});
    }
  };

  // Long-polling ------------------------------------------------------------------------

  function PollConnection(gw, token) {
    Connection.call(this, gw, "poll", token);
    this.watchesLiveness = false; // each poll has its own deadline
  }
  PollConnection.prototype = Object.create(Connection.prototype);

  PollConnection.prototype._start = function () {
    if (!this.gw._channelList().length) {
      this.markOpen();
      return;
    }
    this.poll();
  };

  PollConnection.prototype._stop = function () {};

  PollConnection.prototype.poll = function () {
    var self = this;
    var gw = this.gw;
    var channels = gw._channelList();
    // The first poll returns at once: it proves the transport works and fixes "now".
    var timeout = this.opened ? gw._timing.pollTimeout : 0;
    var params = {channel: channels, timeout: String(timeout), token: gw._token_value()};
    var cursor = gw._cursor(channels);
    if (cursor) params.cursor = cursor;
    if (this.opened) {
      this.timers.set("deadline", timeout * 1000 + gw._timing.connectTimeout, function () {
        self.fail("dead");
      });
    }
    this.fetch(gw._url("poll", params))
      .then(function (response) {
        if (self.closed) return null;
        if (!response.ok) return self.httpFailure(response).then(function () {
          return null;
        });
        return response.json().then(function (body) {
          if (response._forget) response._forget();
          return body;
        });
      })
      .then(
        function (body) {
          if (!body || self.closed) return;
          self.timers.clear("deadline");
          self.seen();
          self.markOpen();
          var messages = body.messages || [];
          for (var i = 0; i < messages.length && !self.closed; i++) gw._event(messages[i]);
          if (self.closed) return;
          gw._learnCursor(body.cursor);
          self.poll();
        },
        function () {
          self.fail("network");
        }
      );
  };

  var CONNECTIONS = {websocket: WebSocketConnection, sse: SSEConnection, poll: PollConnection};

  // -- the client -------------------------------------------------------------------

  /**
   * @param {string} url the gateway's base URL ("https://host/" or "/realtime/"), relative to the page allowed
   * @param {object} [options] {token: string | () => string | Promise<string>, transports: ["websocket", "sse", "poll"]}
   */
  function Gateway(url, options) {
    if (!(this instanceof Gateway)) return new Gateway(url, options);
    options = options || {};
    var base = new URL(url || "/", typeof location !== "undefined" ? location.href : undefined);
    if (!/\/$/.test(base.pathname)) base.pathname += "/";
    base.search = base.hash = "";
    this.url = base.href;
    this._tokenOption = options.token == null ? null : options.token;
    this._token = typeof this._tokenOption === "string" ? this._tokenOption : null;
    this._timing = Object.assign({}, TIMING, options._timing || {});
    this._random = options._random || Math.random;
    this._clock = options._clock || realClock;
    this._WebSocket = options._WebSocket || (typeof WebSocket === "function" ? WebSocket : null);
    this._fetch =
      options._fetch ||
      function (u, init) {
        return fetch(u, init);
      };
    var wanted = options.transports || TRANSPORTS;
    this._order = [];
    for (var i = 0; i < wanted.length; i++) {
      var t = wanted[i];
      if (TRANSPORTS.indexOf(t) < 0) throw new TypeError("unknown transport " + JSON.stringify(t));
      var usable = t === "websocket" ? !!this._WebSocket : options._fetch ? true : supported(t);
      if (usable && this._order.indexOf(t) < 0) this._order.push(t);
    }
    if (!this._order.length) throw new TypeError("none of the transports " + wanted.join(", ") + " works in this browser");

    this._timers = new Timers(this._clock);
    this._subs = {}; // channel -> array of callbacks
    this._positions = {}; // channel -> {epoch, seq}: the last delivered
    this._listeners = {state: [], error: [], refresh: []};
    this._pending = {}; // idempotency key -> publish waiting for its ack
    this._queries = {}; // id -> presence query waiting for its answer
    this._aborts = []; // fetches of publish and presence
    this._skipped = {}; // transports skipped for this page
    this._attempt = 0;
    this._conn = null; // the connection in use (or being made)
    this._probe = null; // a better transport being tried in the background
    this._state = {state: "connecting", transport: this._order[0], delay: 0};
    this._closed = false;
    this._dirty = false;
    this._queryId = 0;

    var self = this;
    this._onOnline = function () {
      self._online();
    };
    if (typeof addEventListener === "function") addEventListener("online", this._onOnline);
    // Start once the current script has subscribed, so the first connection carries it all.
    Promise.resolve().then(function () {
      self._connect();
    });
  }

  Gateway.prototype = {
    constructor: Gateway,

    /** The current {state, transport, delay}. */
    get state() {
      return Object.assign({}, this._state);
    },

    /**
     * Receive the `message` and `reset` events of `channel`, each publication once and in order.
     * @returns {{unsubscribe: function(): void}}
     */
    subscribe: function (channel, callback) {
      if (typeof channel !== "string" || !channel) throw new TypeError("channel must be a non-empty string");
      if (typeof callback !== "function") throw new TypeError("callback must be a function");
      var self = this;
      var fresh = !hasOwn.call(this._subs, channel);
      if (fresh) this._subs[channel] = [];
      var entry = {callback: callback};
      this._subs[channel].push(entry);
      if (fresh) this._channelsChanged(channel, true);
      return {
        unsubscribe: function () {
          var list = self._subs[channel];
          var i = list ? list.indexOf(entry) : -1;
          if (i < 0) return;
          list.splice(i, 1);
          if (!list.length) {
            delete self._subs[channel];
            delete self._positions[channel];
            self._channelsChanged(channel, false);
          }
        },
      };
    },

    /** Publish `data` on `channel`: a Promise of the ack {channel, seq, epoch}. */
    publish: function (channel, data) {
      var self = this;
      if (this._closed) return Promise.reject(GatewayError("closed", "the client is closed"));
      var key = randomKey();
      return new Promise(function (resolve, reject) {
        var item = {key: key, channel: channel, data: data, resolve: resolve, reject: reject, sentOn: null};
        self._pending[key] = item;
        self._timers.set("publish:" + key, self._timing.publishTimeout, function () {
          self._settle(key, GatewayError("timeout", "no ack within " + self._timing.publishTimeout / 1000 + " s"));
        });
        self._sendPublish(item);
      });
    },

    /** Who is subscribed to `channel` (docs/protocol.md section 11): a Promise of {channel, members, anonymous}. */
    presence: function (channel) {
      var self = this;
      if (this._closed) return Promise.reject(GatewayError("closed", "the client is closed"));
      var conn = this._conn;
      if (conn && conn.transport === "websocket" && conn.opened && conn.ready) {
        var id = "q:" + ++this._queryId;
        return new Promise(function (resolve, reject) {
          self._queries[id] = {resolve: resolve, reject: reject};
          self._timers.set(id, self._timing.publishTimeout, function () {
            self._answered(id, null, GatewayError("timeout", "no presence answer"));
          });
          conn.send({type: "presence", channel: channel, id: id});
        });
      }
      return this._request(this._url("presence", {channel: channel, token: this._token_value()}), {}).then(function (r) {
        return r.body;
      });
    },

    /** Listen to "state" ({state, transport, delay}), "error" ({code, message, channel?}) or "refresh" events. */
    on: function (name, fn) {
      if (!hasOwn.call(this._listeners, name)) throw new TypeError("unknown event " + JSON.stringify(name));
      var list = this._listeners[name];
      list.push(fn);
      return function () {
        var i = list.indexOf(fn);
        if (i >= 0) list.splice(i, 1);
      };
    },

    /** Stop everything: connections, timers, requests. Pending publishes reject with "closed". */
    close: function () {
      if (this._closed) return;
      this._closed = true;
      this._timers.clearAll();
      if (this._conn) this._conn.close();
      if (this._probe) this._probe.close();
      this._conn = this._probe = null;
      for (var i = 0; i < this._aborts.length; i++) this._aborts[i].abort();
      this._aborts = [];
      if (typeof removeEventListener === "function") removeEventListener("online", this._onOnline);
      var closed = GatewayError("closed", "the client is closed");
      for (var key in this._pending) if (hasOwn.call(this._pending, key)) this._pending[key].reject(closed);
      for (var id in this._queries) if (hasOwn.call(this._queries, id)) this._queries[id].reject(closed);
      this._pending = {};
      this._queries = {};
      this._setState("closed", this._state.transport, 0);
    },

    // -- internals ------------------------------------------------------------------

    _url: function (path, params) {
      var u = new URL(path, this.url);
      for (var name in params || {}) {
        if (!hasOwn.call(params, name)) continue;
        var value = params[name];
        if (value == null) continue;
        var values = Array.isArray(value) ? value : [value];
        for (var i = 0; i < values.length; i++) u.searchParams.append(name, values[i]);
      }
      return u.href;
    },

    _token_value: function () {
      return this._token;
    },

    _channelList: function () {
      return Object.keys(this._subs);
    },

    /** The cursor of the known positions of `channels`, or null when none is known. */
    _cursor: function (channels) {
      var positions = {};
      var any = false;
      for (var i = 0; i < channels.length; i++) {
        var p = this._positions[channels[i]];
        if (p) {
          positions[channels[i]] = [p.epoch, p.seq];
          any = true;
        }
      }
      return any ? encodeCursor(positions) : null;
    },

    /** Take from a server cursor the positions of subscribed channels that have none yet ("now"). */
    _learnCursor: function (cursor) {
      var positions = cursor ? decodeCursor(cursor) : null;
      for (var channel in positions || {}) {
        if (!hasOwn.call(positions, channel) || !hasOwn.call(this._subs, channel) || this._positions[channel]) continue;
        var p = positions[channel];
        if (Array.isArray(p) && typeof p[0] === "string" && typeof p[1] === "number") {
          this._positions[channel] = {epoch: p[0], seq: p[1]};
        }
      }
    },

    _positionMissing: function () {
      for (var channel in this._subs) if (hasOwn.call(this._subs, channel) && !this._positions[channel]) return true;
      return false;
    },

    _subscribed: function (channel, epoch, seq) {
      if (hasOwn.call(this._subs, channel) && !this._positions[channel]) this._positions[channel] = {epoch: epoch, seq: seq};
    },

    /** A message or reset from any connection: delivered unless at or below the channel's position. */
    _event: function (m) {
      if (!m || (m.type !== "message" && m.type !== "reset")) return;
      var list = this._subs[m.channel];
      if (!list) return;
      var p = this._positions[m.channel];
      if (p && p.epoch === m.epoch && m.seq <= p.seq) return; // delivered already
      this._positions[m.channel] = {epoch: m.epoch, seq: m.seq};
      var callbacks = list.slice();
      for (var i = 0; i < callbacks.length; i++) {
        try {
          callbacks[i].callback(m);
        } catch (e) {
          report(e);
        }
      }
    },

    _emit: function (name, value) {
      var list = this._listeners[name].slice();
      for (var i = 0; i < list.length; i++) {
        try {
          list[i](value);
        } catch (e) {
          report(e);
        }
      }
    },

    _setState: function (state, transport, delay) {
      var s = this._state;
      if (s.state === state && s.transport === transport && s.delay === delay) return;
      this._state = {state: state, transport: transport, delay: delay};
      this._emit("state", Object.assign({}, this._state));
    },

    _channelsChanged: function (channel, added) {
      var conn = this._conn;
      if (!conn || this._closed) return;
      if (this._probe) {
        // Simpler to try again later than to bring a half-made connection up to date.
        this._probe.close();
        this._probe = null;
        this._scheduleUpgrade();
      }
      if (conn.transport === "websocket") {
        if (conn.ready) {
          if (added) conn.subscribe(channel);
          else conn.unsubscribe(channel);
        }
        return;
      }
      // SSE and poll name their channels in the request: start a new one (after this
      // script's other subscribe calls), resuming from the positions.
      if (this._dirty) return;
      this._dirty = true;
      var self = this;
      Promise.resolve().then(function () {
        self._dirty = false;
        if (self._conn && !self._conn.placeholder) self._restart();
      });
    },

    /** Replace the open SSE or poll connection by a new one of the same transport (new channels or token). */
    _restart: function () {
      var old = this._conn;
      if (!old || this._closed) return;
      var conn = new CONNECTIONS[old.transport](this, this._token);
      // A restart of a working connection that fails is not the transport's fault.
      conn.restarted = old.opened || old.restarted;
      this._conn = conn;
      old.close();
      this._requeue(old);
      conn.start();
    },

    /** Resolve the token option: a function is called before each connection. */
    _getToken: function () {
      var self = this;
      var option = this._tokenOption;
      if (typeof option !== "function") return Promise.resolve(this._token);
      return Promise.resolve()
        .then(function () {
          return option();
        })
        .then(function (token) {
          self._token = token == null || token === "" ? null : String(token);
          self._scheduleRefresh();
          return self._token;
        });
    },

    /** Call the token function again 30 s before exp (halfway for short-lived tokens). */
    _scheduleRefresh: function () {
      this._timers.clear("refresh");
      var exp = jwtExp(this._token);
      if (exp == null || typeof this._tokenOption !== "function") return;
      var left = exp * 1000 - this._clock.now();
      var t = this._timing;
      var wait = left < t.shortLived ? left / 2 : left - t.refreshAhead;
      var self = this;
      this._timers.set("refresh", wait, function () {
        self._refresh();
      });
    },

    _refresh: function () {
      var self = this;
      this._getToken().then(
        function (token) {
          var conn = self._conn;
          if (self._closed || !conn || !conn.opened || !token) return;
          if (conn.transport === "websocket") conn.reauth(token);
          else if (conn.transport === "sse") self._restart();
          // poll: the next request carries the new token
          if (conn.transport !== "websocket") self._emit("refresh", {transport: conn.transport, exp: jwtExp(token)});
        },
        function (error) {
          self._emit("error", {code: "token", message: String(error && error.message ? error.message : error)});
          self._timers.set("refresh", self._timing.publishRetry * 5, function () {
            self._refresh();
          });
        }
      );
    },

    /** Open a connection on the best transport not skipped. */
    _connect: function () {
      if (this._closed || this._conn) return;
      var transport = null;
      for (var i = 0; i < this._order.length; i++) {
        if (!this._skipped[this._order[i]]) {
          transport = this._order[i];
          break;
        }
      }
      if (transport === null) {
        this._skipped = {};
        transport = this._order[0];
      }
      this._setState("connecting", transport, 0);
      var self = this;
      var placeholder = {transport: transport, opened: false, close: function () {}, placeholder: true};
      this._conn = placeholder;
      this._getToken().then(
        function (token) {
          if (self._closed || self._conn !== placeholder) return;
          var conn = new CONNECTIONS[transport](self, token);
          self._conn = conn;
          conn.start();
        },
        function (error) {
          if (self._closed || self._conn !== placeholder) return;
          self._conn = null;
          self._emit("error", {code: "token", message: String(error && error.message ? error.message : error)});
          self._retry(self._backoff(), transport);
        }
      );
    },

    _backoff: function () {
      var t = this._timing;
      var ceiling = Math.min(t.backoffCap, t.backoffBase * Math.pow(2, this._attempt));
      this._attempt++;
      return Math.floor(this._random() * ceiling);
    },

    _retry: function (delay, transport) {
      var self = this;
      this._setState("reconnecting", transport, delay);
      this._timers.set("retry", delay, function () {
        self._connect();
      });
    },

    _online: function () {
      if (this._closed || !this._timers.active("retry")) return;
      this._timers.clear("retry");
      this._connect();
    },

    _opened: function (conn) {
      var self = this;
      if (conn === this._probe) {
        // A better transport works: move up to it. Positions make the overlap harmless.
        this._probe = null;
        var old = this._conn;
        this._conn = conn;
        if (old) {
          old.close();
          this._requeue(old);
        }
        var rank = this._order.indexOf(conn.transport);
        for (var i = 0; i <= rank; i++) delete this._skipped[this._order[i]];
      } else if (conn !== this._conn) {
        return;
      }
      var movedUp = this._state.transport !== conn.transport;
      this._setState("connected", conn.transport, 0);
      // A restart (new channels, new token) continues the same stretch of being
      // connected: it neither restarts the 30 s towards a backoff reset nor postpones
      // the next try of a better transport.
      if (!this._timers.active("stable")) {
        this._timers.set("stable", this._timing.stableAfter, function () {
          self._attempt = 0;
        });
      }
      if (movedUp || !this._timers.active("upgrade")) this._scheduleUpgrade();
      this._flushPublishes();
    },

    _failed: function (conn, reason, detail) {
      if (this._closed) return;
      if (detail.code && (reason === "forbidden" || reason === "unauthorized" || reason === "http")) {
        this._emit("error", {code: detail.code, message: reason + " (" + conn.transport + ")"});
      }
      if (conn === this._probe) {
        this._probe = null;
        this._tryUpgrade(this._order.indexOf(conn.transport) + 1);
        return;
      }
      if (conn !== this._conn) return;
      this._conn = null;
      this._timers.clear("stable");
      this._timers.clear("upgrade");
      if (this._probe) {
        this._probe.close();
        this._probe = null;
      }
      this._requeue(conn);
      var transport = conn.transport;
      var transportTrouble = reason === "refused" || reason === "timeout" || reason === "network" || reason === "http";
      if (!conn.opened && transportTrouble && !conn.restarted) {
        // This transport cannot connect here: skip it for this page and try the next at once.
        this._skipped[transport] = true;
        var next = null;
        for (var i = this._order.indexOf(transport) + 1; i < this._order.length; i++) {
          if (!this._skipped[this._order[i]]) {
            next = this._order[i];
            break;
          }
        }
        if (next !== null) {
          this._connect();
          return;
        }
        // Every transport failed: more likely the server or the network than the
        // transports; start again from the best one after a backoff.
        this._skipped = {};
        this._retry(this._backoff(), this._order[0]);
        return;
      }
      if (reason === "going_away") {
        this._retry(Math.floor(this._random() * this._timing.goingAwaySpread), transport);
      } else {
        this._retry(this._backoff(), transport);
      }
    },

    _scheduleUpgrade: function () {
      this._timers.clear("upgrade");
      var conn = this._conn;
      if (!conn || this._order.indexOf(conn.transport) <= 0) return;
      var self = this;
      this._timers.set("upgrade", this._timing.upgradeEvery, function () {
        self._tryUpgrade(0);
      });
    },

    /** Try transport `rank` (and the better ones after it, up to the one in use) in the background. */
    _tryUpgrade: function (rank) {
      var active = this._conn;
      if (this._closed || !active || !active.opened) return;
      if (rank >= this._order.indexOf(active.transport)) {
        this._scheduleUpgrade();
        return;
      }
      var self = this;
      var transport = this._order[rank];
      this._getToken().then(
        function (token) {
          if (self._closed || self._conn !== active || self._probe) return;
          var probe = new CONNECTIONS[transport](self, token);
          self._probe = probe;
          probe.start();
        },
        function () {
          if (self._conn === active) self._scheduleUpgrade();
        }
      );
    },

    // -- publishing ------------------------------------------------------------------

    _sendPublish: function (item) {
      var conn = this._conn;
      if (!conn || !conn.opened || item.sentOn) return;
      if (conn.transport === "websocket") {
        item.sentOn = conn; // before sending: an answer may come back before send() returns
        if (!conn.send({type: "publish", channel: item.channel, data: item.data, idempotency_key: item.key, id: "p:" + item.key})) {
          item.sentOn = null;
        }
      } else {
        this._postPublish(item);
      }
    },

    _postPublish: function (item) {
      var self = this;
      item.sentOn = "http";
      var headers = {"Content-Type": "application/json"};
      if (this._token) headers.Authorization = "Bearer " + this._token;
      var body = JSON.stringify({channel: item.channel, data: item.data, idempotency_key: item.key});
      this._request(this._url("publish"), {method: "POST", headers: headers, body: body}).then(
        function (r) {
          self._settle(item.key, null, {channel: r.body.channel, seq: r.body.seq, epoch: r.body.epoch});
        },
        function (error) {
          if (!self._pending[item.key]) return;
          if (error.code === "network" || error.code === "unavailable" || (error.code === "unauthorized" && typeof self._tokenOption === "function")) {
            self._retryLater(item);
          } else {
            self._settle(item.key, error);
          }
        }
      );
    },

    /** A JSON request whose errors reject with a GatewayError (code "network" when no answer came). */
    _request: function (url, init) {
      var controller = new AbortController();
      var aborts = this._aborts;
      aborts.push(controller);
      var forget = function () {
        var i = aborts.indexOf(controller);
        if (i >= 0) aborts.splice(i, 1);
      };
      return this._fetch(url, Object.assign({signal: controller.signal, cache: "no-store"}, init))
        .then(
          function (response) {
            return response
              .json()
              .catch(function () {
                return null;
              })
              .then(function (body) {
                forget();
                if (response.ok && body) return {status: response.status, body: body};
                var e = body && body.error ? body.error : {code: "http_" + response.status, message: "HTTP " + response.status};
                throw GatewayError(e.code, e.message);
              });
          },
          function (error) {
            forget();
            throw GatewayError("network", String(error && error.message ? error.message : error));
          }
        );
    },

    _retryLater: function (item) {
      item.sentOn = null;
      var self = this;
      this._timers.set("publish-retry", this._timing.publishRetry, function () {
        self._flushPublishes();
      });
    },

    _flushPublishes: function () {
      for (var key in this._pending) if (hasOwn.call(this._pending, key)) this._sendPublish(this._pending[key]);
    },

    /** A connection ended: its unacknowledged WebSocket publishes go out again on the next one. */
    _requeue: function (conn) {
      for (var key in this._pending) {
        if (hasOwn.call(this._pending, key) && this._pending[key].sentOn === conn) this._pending[key].sentOn = null;
      }
    },

    _acked: function (id, ack) {
      if (id.slice(0, 2) === "p:") this._settle(id.slice(2), null, ack);
    },

    _settle: function (key, error, ack) {
      var item = this._pending[key];
      if (!item) return;
      delete this._pending[key];
      this._timers.clear("publish:" + key);
      if (error) item.reject(error);
      else item.resolve(ack);
    },

    _answered: function (id, answer, error) {
      var query = this._queries[id];
      if (!query) return;
      delete this._queries[id];
      this._timers.clear(id);
      if (error) return query.reject(error);
      var result = {};
      for (var name in answer) if (hasOwn.call(answer, name) && name !== "type" && name !== "id") result[name] = answer[name];
      query.resolve(result);
    },

    _wsError: function (m) {
      var id = m.id == null ? "" : String(m.id);
      var error = GatewayError(m.code, m.message);
      if (id.slice(0, 2) === "p:") {
        var item = this._pending[id.slice(2)];
        if (item && m.code === "unavailable") this._retryLater(item);
        else this._settle(id.slice(2), error);
      } else if (id.slice(0, 2) === "q:") {
        this._answered(id, null, error);
      } else if (id.slice(0, 2) === "s:") {
        this._emit("error", {code: m.code, message: m.message, channel: id.slice(2)});
      } else if (id !== "ping") {
        // A server without ping/pong answers a ping with an error: it is alive, nothing to report.
        this._emit("error", {code: m.code, message: m.message});
      }
    },
  };

  Gateway.GatewayError = GatewayError;
  Gateway.transports = TRANSPORTS.slice();
  Gateway._internals = {encodeCursor: encodeCursor, decodeCursor: decodeCursor, jwtExp: jwtExp, TIMING: TIMING};
  return Gateway;
});
