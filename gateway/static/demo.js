// The demo chat: nothing but gateway.js (docs/protocol.md section 9).
// ?transports=poll (a comma list) forces transports; ?room=NAME picks the room.
(function () {
  "use strict";
  var params = new URLSearchParams(location.search);
  var room = "demo:" + (params.get("room") || "lobby");
  var transports = (params.get("transports") || "").split(",").filter(Boolean);
  // The gateway is the directory above this page (/demo/ -> /), wherever it is mounted.
  var gw = new Gateway(new URL("../", location.href).href, transports.length ? {transports: transports} : {});
  window.gw = gw;

  var $ = function (id) {
    return document.getElementById(id);
  };
  $("room").textContent = room;
  var nameInput = $("name");
  nameInput.value = localStorage.getItem("gateway-demo-name") || "";

  function line(children, className) {
    var li = document.createElement("li");
    if (className) li.className = className;
    children.forEach(function (c) {
      li.appendChild(c);
    });
    var list = $("messages");
    list.appendChild(li);
    list.scrollTop = list.scrollHeight;
  }

  function span(text, className) {
    var s = document.createElement("span");
    s.textContent = text;
    if (className) s.className = className;
    return s;
  }

  gw.subscribe(room, function (event) {
    if (event.type === "reset") {
      line([span("(some earlier messages are no longer available)")], "notice");
      return;
    }
    var data = event.data || {};
    var time = new Date(event.ts || Date.now()).toLocaleTimeString();
    line([span(String(data.name || "someone") + ":", "who"), span(String(data.text || "")), span(time + " · #" + event.seq, "meta")], "message");
  });

  var presenceStarted = false;
  gw.on("state", function (s) {
    if (s.state === "connected" && !presenceStarted) {
      // Ask once this page is subscribed, so that it counts itself.
      presenceStarted = true;
      showPresence();
    }
    $("state").textContent = s.state;
    $("transport").textContent = s.transport;
    $("delay").textContent = s.state === "reconnecting" ? "(next try in " + (s.delay / 1000).toFixed(1) + " s)" : "";
    $("dot").className = "dot " + s.state;
  });

  $("form").addEventListener("submit", function (e) {
    e.preventDefault();
    var name = nameInput.value.trim();
    var text = $("text").value.trim();
    if (!name || !text) return;
    localStorage.setItem("gateway-demo-name", name);
    $("text").value = "";
    $("form-error").textContent = "";
    gw.publish(room, {name: name, text: text}).catch(function (err) {
      $("form-error").textContent = "Not sent (" + (err.code || err) + "): " + text;
    });
    $("text").focus();
  });

  // Who is online: asked every 5 s; hidden when the gateway has no presence.
  function showPresence() {
    gw.presence(room).then(
      function (answer) {
        var list = $("online");
        list.textContent = "";
        answer.members.forEach(function (m) {
          var li = document.createElement("li");
          li.textContent = m.sub + (m.connections > 1 ? " (" + m.connections + ")" : "");
          list.appendChild(li);
        });
        if (!answer.members.length) {
          var li = document.createElement("li");
          li.className = "muted";
          li.textContent = "no signed-in users";
          list.appendChild(li);
        }
        $("anonymous").textContent = answer.anonymous + " anonymous connection" + (answer.anonymous === 1 ? "" : "s");
        setTimeout(showPresence, 5000);
      },
      function (err) {
        if (err.code === "not_found" || err.code === "bad_request") {
          $("online").innerHTML = '<li class="muted">presence is not available on this gateway</li>';
        } else {
          $("online").innerHTML = '<li class="muted">could not ask (' + (err.code || "error") + ")</li>";
          setTimeout(showPresence, 5000);
        }
      }
    );
  }
})();
