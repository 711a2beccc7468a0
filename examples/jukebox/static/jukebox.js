/* The jukebox page: the queue, its background, lights and volume, updated by push. */
(function () {
  "use strict";

  var QUEUE_PARAMS = {
    text: ["text", "spoken", "progress", "state"],
    countdown: ["label", "seconds", "remaining", "state"],
    shout: ["text", "state"]
  };
  var BG_PARAMS = {clock: ["time", "state"]};
  var LIGHT_PARAMS = {blinker: ["color", "lit", "blinks"]};

  var model = {queue: [], bg: null, lights: [], history: [], types: []};

  function $(id) { return document.getElementById(id); }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function button(text, title, onClick, cls) {
    var b = el("button", cls || "small ghost", text);
    b.type = "button";
    b.title = title;
    b.addEventListener("click", onClick);
    return b;
  }

  function describe(item) {
    var p = item.parameters || {};
    if (item.type === "text") return p.spoken ? p.spoken + (p.state === "done" ? "" : "\u2026") : (p.text || "");
    if (item.type === "countdown") return (p.label || "countdown") + " \u00b7 " + fmtSeconds(p.remaining);
    if (item.type === "shout") return p.text || "(text shown once it plays)";  // set on play
    return item.type;
  }

  function fmtSeconds(s) {
    if (typeof s !== "number") return "";
    var m = Math.floor(s / 60), r = s - m * 60;
    return m ? m + ":" + (r < 10 ? "0" : "") + r.toFixed(1) : r.toFixed(1) + " s";
  }

  // -- rendering ---------------------------------------------------------------------------

  function renderNow() {
    var body = $("now-body");
    body.textContent = "";
    var top = model.queue[0];
    if (!top) {
      body.className = "empty";
      body.textContent = "Nothing queued.";
      return;
    }
    body.className = "";
    var p = top.parameters || {};
    body.dataset.uid = top.uid;
    body.appendChild(el("span", "tag", top.type));
    if (top.type === "countdown") {
      body.appendChild(el("div", "title", p.label || "Countdown"));
      body.appendChild(el("div", "big", fmtSeconds(p.remaining))).id = "now-remaining";
    } else if (top.type === "text") {
      body.appendChild(el("div", "title", p.text || ""));
      body.appendChild(el("div", "state", p.spoken ? "\u201c" + p.spoken + "\u201d" : "")).id = "now-spoken";
      var bar = el("div", "progress");
      var fill = el("div");
      fill.style.width = Math.round((p.progress || 0) * 100) + "%";
      bar.appendChild(fill);
      body.appendChild(bar);
    } else {
      body.appendChild(el("div", "title", p.text || top.type));
    }
    body.appendChild(el("div", "state", p.state || ""));
  }

  function renderQueue() {
    var list = $("queue");
    list.textContent = "";
    model.queue.forEach(function (item, i) {
      var li = el("li");
      li.dataset.uid = item.uid;
      li.appendChild(el("span", "tag", item.type));
      li.appendChild(el("span", "label", describe(item)));
      li.appendChild(el("span", "state", (item.parameters || {}).state || ""));
      if (item.type === "countdown") li.appendChild(button("+10 s", "add ten seconds", function () {
        tell(item.uid, "add_time", {seconds: 10});
      }));
      if (item.type === "text") li.appendChild(button("faster", "speak faster", function () {
        tell(item.uid, "rate", {rate: 8});
      }));
      if (item.type === "shout") li.appendChild(button("shout", "shout it", function () {
        tell(item.uid, "shout", {});
      }));
      if (i > 0) li.appendChild(button("\u25b2", "play next", function () {
        endpoints.queue.forceQuery({cmd: "mv", args: {uids: [item.uid]}});
      }));
      li.appendChild(button("\u2715", "remove", function () {
        endpoints.queue.forceQuery({cmd: "rm", args: {uids: [item.uid]}});
      }, "small ghost rm"));
      list.appendChild(li);
    });
    $("queue-empty").hidden = model.queue.length > 0;
    $("queue-count").textContent = model.queue.length ? String(model.queue.length) : "";
  }

  function renderBg() {
    var box = $("bg");
    box.textContent = "";
    if (!model.bg) {
      box.appendChild(el("span", "empty", "No background."));
      return;
    }
    var p = model.bg.parameters || {};
    box.dataset.uid = model.bg.uid;
    box.appendChild(el("span", "", p.time || "--:--:--")).id = "clock";
    box.appendChild(el("div", "state", p.state === "showing" ? "showing while the queue is empty" : "hidden"));
  }

  function renderLights() {
    var list = $("lights");
    list.textContent = "";
    model.lights.forEach(function (item) {
      var p = item.parameters || {};
      var li = el("li");
      li.dataset.uid = item.uid;
      var dot = el("span", "dot" + (p.lit ? " lit" : ""));
      dot.style.color = p.color || "gray";
      li.appendChild(dot);
      li.appendChild(el("span", "label", (p.color || "light") + " \u00b7 " + (p.blinks || 0) + (p.blinks === 1 ? " blink" : " blinks")));
      li.appendChild(button("\u2715", "remove", function () {
        endpoints.pool.forceQuery({cmd: "rm", args: {uids: [item.uid]}});
      }, "small ghost rm"));
      list.appendChild(li);
    });
    if (!model.lights.length) list.appendChild(el("li", "empty", "No lights."));
  }

  function renderHistory() {
    var list = $("history");
    list.textContent = "";
    model.history.forEach(function (h) {
      var li = el("li");
      li.appendChild(el("span", "tag", h.type));
      var a = h.args || {};
      li.appendChild(el("span", "label", a.text || a.label || (a.seconds ? a.seconds + " s" : h.type)));
      li.appendChild(el("span", "when", new Date(h.time * 1000).toLocaleTimeString()));
      list.appendChild(li);
    });
    if (!model.history.length) list.appendChild(el("li", "empty", "Nothing yet."));
  }

  function renderQueueAll() { renderNow(); renderQueue(); renderBg(); renderHistory(); }

  // -- loading -----------------------------------------------------------------------------

  function loadQueue() {
    var q = endpoints.queue;
    q.deferQuery({cmd: "queue", args: {parameters: QUEUE_PARAMS}}, function (r) { model.queue = r; renderNow(); renderQueue(); });
    q.deferQuery({cmd: "bg", args: {parameters: BG_PARAMS}}, function (r) { model.bg = r; renderBg(); });
    q.deferQuery({cmd: "history", args: {limit: 8}}, function (r) { model.history = r; renderHistory(); },
                 function () { model.history = []; renderHistory(); });
  }

  function loadLights() {
    if (!endpoints.pool) return;
    endpoints.pool.deferQuery({cmd: "pool", args: {parameters: LIGHT_PARAMS}}, function (r) { model.lights = r; renderLights(); });
  }

  function loadVolume() {
    if (!endpoints.volume) return;
    endpoints.volume.deferQuery({cmd: "get_volume"}, showVolume);
  }

  function showVolume(v) {
    $("volume").value = v.level;
    $("volume-level").textContent = v.muted ? "muted" : v.level + "%";
  }

  /* Apply parameter events in place; anything else means reloading that service's lists. */
  function applyEvents(items, event, reload) {
    if (event.reset) { reload(); return; }
    var structural = false;
    event.events.forEach(function (e) {
      if (e.kind === "parameters") {
        items().forEach(function (item) {
          if (item.uid !== e.uid) return;
          item.parameters = item.parameters || {};
          Object.keys(e.set || {}).forEach(function (k) { item.parameters[k] = e.set[k]; });
          (e.unset || []).forEach(function (k) { delete item.parameters[k]; });
        });
      } else if (e.kind !== "told" && e.kind !== "stopped" && e.kind !== "output" && e.kind !== "figures") {
        structural = true;
      }
    });
    if (structural) reload();
    return !structural;
  }

  function tell(uid, cmd, args) {
    endpoints.queue.forceQuery({cmd: "tell_module", args: {uid: uid, cmd: cmd, args: args}}, function (result) {
      if (cmd === "shout") toast(String(result));
    }, toast);
  }

  function toast(message) {
    var box = $("add-error");
    box.textContent = message;
    box.hidden = false;
    setTimeout(function () { box.hidden = true; }, 4000);
  }

  // -- the add form ------------------------------------------------------------------------

  function setupForm() {
    var type = $("add-type");
    model.types.forEach(function (t) { type.appendChild(el("option", "", t)); });
    function sync() {
      var isCountdown = type.value === "countdown";
      $("add-seconds").hidden = !isCountdown;
      $("add-text").hidden = isCountdown;
      $("add-text").placeholder = type.value === "shout" ? "Something to shout" : "Something to say";
    }
    type.addEventListener("change", sync);
    if (model.types.indexOf("text") >= 0) type.value = "text";
    sync();
    $("add-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var args = type.value === "countdown"
        ? {seconds: Number($("add-seconds").value) || 10, label: "countdown"}
        : {text: $("add-text").value || "hello"};
      $("add-button").disabled = true;
      endpoints.queue.forceQuery({cmd: "add", args: {type: type.value, args: args}}, function () {
        $("add-text").value = "";
        $("add-button").disabled = false;
      }, function (err) {
        $("add-button").disabled = false;
        toast(err);
      });
    });
  }

  function setupControls() {
    $("light-add").addEventListener("click", function () {
      endpoints.pool.forceQuery({cmd: "add", args: {type: "blinker", args: {color: $("light-color").value}}});
    });
    $("volume").addEventListener("change", function () {
      endpoints.volume.forceQuery({cmd: "set_volume", args: {level: Number($("volume").value)}}, showVolume);
    });
  }

  // -- start -------------------------------------------------------------------------------

  shmooze.on("connect", function () {
    $("mode").textContent = "updates by " + (shmooze.mode === "polling" ? "polling" : "push");
    loadQueue(); loadLights(); loadVolume();
  });

  shmooze.connect({base: location.pathname.replace(/[^\/]*$/, "")}).then(function () {
    if (settings_data.app_name) { $("app-name").textContent = settings_data.app_name; document.title = settings_data.app_name; }
    endpoints.queue.deferQuery({cmd: "modules_available"}, function (types) { model.types = types; setupForm(); });
    loadQueue(); loadLights(); loadVolume();
    setupControls();
    endpoints.queue.on("change", function (event) {
      if (applyEvents(function () { return model.queue.concat(model.bg ? [model.bg] : []); }, event, loadQueue)) {
        renderNow(); renderQueue(); renderBg();
      }
    });
    if (endpoints.pool) endpoints.pool.on("change", function (event) {
      if (applyEvents(function () { return model.lights; }, event, loadLights)) renderLights();
    });
    if (endpoints.volume) endpoints.volume.on("change", function () { loadVolume(); });
    window.jukeboxReady = true;
  });

  window.jukebox = {model: model, render: renderQueueAll};
})();
