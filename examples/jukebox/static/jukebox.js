/* The jukebox page: the queue, its background, lights and volume, updated by push. */
(function () {
  "use strict";

  var QUEUE_PARAMS = {
    text: ["text", "spoken", "progress", "state"],
    countdown: ["label", "seconds", "remaining", "state"],
    shout: ["text", "state"],
    banner: ["text", "shown", "state"]
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

  /* What a queue row says: the text, or the countdown's label (when it has its own) and time left. */
  function describe(item) {
    var p = item.parameters || {};
    if (item.type === "text") return p.spoken ? p.spoken + (p.state === "done" ? "" : "\u2026") : (p.text || "");
    if (item.type === "countdown") return ownLabel(p.label, item.type) + fmtSeconds(p.remaining);
    if (item.type === "shout") return p.text || "(text shown once it plays)";  // set on play
    if (item.type === "banner") return p.state === "showing" ? "[" + p.shown + "]" : (p.text || "");
    return "";
  }

  /* "tea \u00b7 " for a label of its own; nothing when it only repeats the type (shown by the tag). */
  function ownLabel(label, type) {
    return label && label !== type ? label + " \u00b7 " : "";
  }

  function fmtSeconds(s) {
    if (typeof s !== "number") return "";
    var m = Math.floor(s / 60), r = s - m * 60;
    return m ? m + ":" + (r < 10 ? "0" : "") + r.toFixed(1) : r.toFixed(1) + " s";
  }

  /* Change a node's text only when it differs, so an update touches no more of the page than it must. */
  function setText(node, text) {
    text = text === undefined || text === null ? "" : String(text);
    if (node.textContent !== text) node.textContent = text;
  }

  // -- rendering ---------------------------------------------------------------------------
  //
  // Every list is keyed by uid: a row is made once, when its module appears, updated in place
  // while the module lives, and removed with it. Its buttons live as long as the row, so a click
  // lands even while parameter events update the row ten times a second.

  function KeyedList(list, make, update) {
    this.list = list;
    this.make = make;      // item -> row {node, ...}
    this.update = update;  // (row, item, index) -> nothing
    this.rows = {};        // uid -> row
  }

  KeyedList.prototype.render = function (items) {
    var self = this, wanted = {};
    items.forEach(function (item) { wanted[item.uid] = true; });
    Object.keys(this.rows).forEach(function (uid) {
      if (!wanted[uid]) { self.rows[uid].node.remove(); delete self.rows[uid]; }
    });
    items.forEach(function (item, i) {
      var row = self.rows[item.uid];
      if (!row) {
        row = self.rows[item.uid] = self.make(item);
        row.node.dataset.uid = item.uid;
      }
      self.update(row, item, i);
      var here = self.list.children[i];
      if (here !== row.node) self.list.insertBefore(row.node, here || null);
    });
  };

  /* The buttons that act on one module of the queue, by its type. */
  function moduleButtons(item) {
    var uid = item.uid, out = [];
    if (item.type === "countdown") out.push(button("+10 s", "add ten seconds", function () {
      tell(uid, "add_time", {seconds: 10});
    }));
    if (item.type === "text") out.push(button("faster", "speak faster", function () {
      tell(uid, "rate", {rate: 8});
    }));
    if (item.type === "shout") out.push(button("shout", "shout it", function () {
      tell(uid, "shout", {});
    }));
    return out;
  }

  function removeButton(endpoint, uid) {
    return button("\u2715", "remove", function () {
      endpoints[endpoint].forceQuery({cmd: "rm", args: {uids: [uid]}}, null, notifyError);
    }, "small ghost rm");
  }

  var now = null;  // {uid, node parts} of the module shown as playing

  function renderNow() {
    var body = $("now-body");
    var top = model.queue[0];
    if (!top) {
      if (now || !body.classList.contains("empty")) {
        now = null;
        body.textContent = "Nothing queued.";
        body.className = "empty";
        delete body.dataset.uid;
      }
      return;
    }
    if (!now || now.uid !== top.uid) now = makeNow(body, top);
    var p = top.parameters || {};
    if (top.type === "countdown") {
      setText(now.title, p.label && p.label !== top.type ? p.label : fmtSeconds(p.seconds) + " to go");
      setText(now.remaining, fmtSeconds(p.remaining));
    } else if (top.type === "text") {
      setText(now.title, p.text || "");
      setText(now.spoken, p.spoken ? "\u201c" + p.spoken + "\u201d" : "");
      var width = Math.round((p.progress || 0) * 100) + "%";
      if (now.fill.style.width !== width) now.fill.style.width = width;
    } else if (top.type === "banner") {
      setText(now.title, describe(top));
    } else {
      setText(now.title, p.text || top.type);
    }
    setText(now.state, p.state || "");
  }

  /* The "Now playing" card for a module that just came on top: made once, then updated in place. */
  function makeNow(body, top) {
    var made = {uid: top.uid};
    body.textContent = "";
    body.className = "";
    body.dataset.uid = top.uid;
    body.appendChild(el("span", "tag", top.type));
    made.title = body.appendChild(el("div", "title"));
    if (top.type === "countdown") {
      made.remaining = body.appendChild(el("div", "big"));
      made.remaining.id = "now-remaining";
    } else if (top.type === "text") {
      made.spoken = body.appendChild(el("div", "state"));
      made.spoken.id = "now-spoken";
      var bar = body.appendChild(el("div", "progress"));
      made.fill = bar.appendChild(el("div"));
    }
    made.state = body.appendChild(el("div", "state"));
    var actions = body.appendChild(el("div", "actions"));
    moduleButtons(top).forEach(function (b) { actions.appendChild(b); });
    actions.appendChild(removeButton("queue", top.uid));
    return made;
  }

  var upNext = null;  // KeyedList of the queue after the module playing

  function makeQueueRow(item) {
    var li = el("li");
    var row = {node: li};
    li.appendChild(el("span", "tag", item.type));
    row.label = li.appendChild(el("span", "label"));
    row.state = li.appendChild(el("span", "state"));
    moduleButtons(item).forEach(function (b) { li.appendChild(b); });
    row.next = li.appendChild(button("\u25b2", "play next", function () {
      var top = model.queue[0];
      var uids = top && top.uid !== item.uid ? [top.uid, item.uid] : [item.uid];
      endpoints.queue.forceQuery({cmd: "mv", args: {uids: uids}}, null, notifyError);
    }));
    li.appendChild(removeButton("queue", item.uid));
    return row;
  }

  function updateQueueRow(row, item, i) {
    setText(row.label, describe(item));
    setText(row.state, (item.parameters || {}).state || "");
    row.next.hidden = i === 0;  // the first one up next is next already
  }

  function renderQueue() {
    upNext = upNext || new KeyedList($("queue"), makeQueueRow, updateQueueRow);
    var next = model.queue.slice(1);  // the first one is in "Now playing"
    upNext.render(next);
    $("queue-empty").hidden = next.length > 0;
    setText($("queue-count"), next.length ? String(next.length) : "");
  }

  function renderBg() {
    var box = $("bg");
    if (!model.bg) {
      if (box.dataset.uid || !box.firstChild) {
        delete box.dataset.uid;
        box.textContent = "";
        box.appendChild(el("span", "empty", "No background."));
      }
      return;
    }
    if (box.dataset.uid !== model.bg.uid) {
      box.textContent = "";
      box.dataset.uid = model.bg.uid;
      box.appendChild(el("span")).id = "clock";
      box.appendChild(el("div", "state"));
    }
    var p = model.bg.parameters || {};
    setText($("clock"), p.time || "--:--:--");
    setText(box.lastChild, p.state === "showing" ? "showing while the queue is empty" : "hidden");
  }

  var lights = null;  // KeyedList of the pool's lights

  function makeLightRow(item) {
    var li = el("li");
    var row = {node: li};
    row.dot = li.appendChild(el("span", "dot"));
    row.label = li.appendChild(el("span", "label"));
    li.appendChild(removeButton("pool", item.uid));
    return row;
  }

  function updateLightRow(row, item) {
    var p = item.parameters || {};
    var cls = "dot" + (p.lit ? " lit" : "");
    if (row.dot.className !== cls) row.dot.className = cls;
    if (row.dot.style.color !== (p.color || "gray")) row.dot.style.color = p.color || "gray";
    setText(row.label, (p.color || "light") + " \u00b7 " + (p.blinks || 0) + (p.blinks === 1 ? " blink" : " blinks"));
  }

  function renderLights() {
    lights = lights || new KeyedList($("lights"), makeLightRow, updateLightRow);
    lights.render(model.lights);
    $("lights-empty").hidden = model.lights.length > 0;
  }

  /* What a history row says besides its type: the text, or the countdown's own label and length. */
  function historyLabel(h) {
    var a = h.args || {};
    if (h.type === "countdown") return ownLabel(a.label, h.type) + fmtSeconds(Number(a.seconds) || 10);
    return a.text || a.label || "";
  }

  function renderHistory() {
    var list = $("history");
    list.textContent = "";
    model.history.forEach(function (h) {
      var li = el("li");
      li.appendChild(el("span", "tag", h.type));
      li.appendChild(el("span", "label", historyLabel(h)));
      li.appendChild(el("span", "when", new Date(h.time * 1000).toLocaleTimeString()));
      list.appendChild(li);
    });
    if (!model.history.length) list.appendChild(el("li", "empty", "Nothing yet."));
  }

  function renderQueueAll() { renderNow(); renderQueue(); renderBg(); renderHistory(); }

  // -- loading -----------------------------------------------------------------------------

  /* Pushes can overtake a reload's answer: a parameter event that comes while a reload is on its way
     may be newer than the lists the answer brings (a module that sets its state as it starts, right
     after its "added" event asked for the reload). Each reload keeps the parameter events that come
     meanwhile, and applies them again, in order, to each list its answer brings. */
  var kept = {queue: null, pool: null};

  function keepWhileLoading(name, answers) {
    var events = kept[name] = [];
    return function (items) {
      events.forEach(function (e) { setParameters(items, e); });
      if (--answers === 0 && kept[name] === events) kept[name] = null;
    };
  }

  function loadQueue() {
    var q = endpoints.queue, caughtUp = keepWhileLoading("queue", 2);
    q.deferQuery({cmd: "queue", args: {parameters: QUEUE_PARAMS}}, function (r) {
      caughtUp(r); model.queue = r; renderNow(); renderQueue();
    });
    q.deferQuery({cmd: "bg", args: {parameters: BG_PARAMS}}, function (r) {
      caughtUp(r ? [r] : []); model.bg = r; renderBg();
    });
    q.deferQuery({cmd: "history", args: {limit: 8}}, function (r) { model.history = r; renderHistory(); },
                 function () { model.history = []; renderHistory(); });
  }

  function loadLights() {
    if (!endpoints.pool) return;
    var caughtUp = keepWhileLoading("pool", 1);
    endpoints.pool.deferQuery({cmd: "pool", args: {parameters: LIGHT_PARAMS}}, function (r) {
      caughtUp(r); model.lights = r; renderLights();
    });
  }

  /* Reads of the volume may be answered out of order (messages run concurrently): an answer to an
     older read never replaces a newer one's. */
  var volumeAsked = 0, volumeShown = 0;
  function loadVolume() {
    if (!endpoints.volume) return;
    var asked = ++volumeAsked;
    endpoints.volume.deferQuery({cmd: "get_volume"}, function (v) {
      if (asked < volumeShown) return;
      volumeShown = asked;
      showVolume(v);
    });
  }

  function showVolume(v) {
    $("volume").value = v.level;
    $("volume-level").textContent = v.muted ? "muted" : v.level + "%";
  }

  function setParameters(items, e) {
    items.forEach(function (item) {
      if (item.uid !== e.uid) return;
      item.parameters = item.parameters || {};
      Object.keys(e.set || {}).forEach(function (k) { item.parameters[k] = e.set[k]; });
      (e.unset || []).forEach(function (k) { delete item.parameters[k]; });
    });
  }

  /* Apply parameter events in place; anything else means reloading that service's lists. The
     parameter events are kept for a reload on its way, and for the one this batch asks for. */
  function applyEvents(name, items, event, reload) {
    if (event.reset) { reload(); return; }
    var structural = false, updates = [];
    event.events.forEach(function (e) {
      if (e.kind === "parameters") {
        setParameters(items(), e);
        updates.push(e);
      } else if (e.kind !== "told" && e.kind !== "stopped" && e.kind !== "output" && e.kind !== "figures") {
        structural = true;
      }
    });
    if (kept[name]) kept[name].push.apply(kept[name], updates);
    if (structural) {
      reload();
      if (kept[name]) kept[name].push.apply(kept[name], updates);
    }
    return !structural;
  }

  function tell(uid, cmd, args) {
    endpoints.queue.forceQuery({cmd: "tell_module", args: {uid: uid, cmd: cmd, args: args}}, function (result) {
      if (cmd === "shout") notify(String(result));
    }, notifyError);
  }

  /* A message that goes away after a few seconds: news in #notice, failures in the red #add-error. */
  var hideTimers = {};
  function show(id, message) {
    var box = $(id);
    box.textContent = String(message);
    box.hidden = false;
    clearTimeout(hideTimers[id]);
    hideTimers[id] = setTimeout(function () { box.hidden = true; }, 4000);
  }
  function notify(message) { show("notice", message); }
  function notifyError(message) { show("add-error", message); }

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
      var sent = $("add-text").value;
      var args = type.value === "countdown"
        ? {seconds: Number($("add-seconds").value) || 10}
        : {text: sent || "hello"};
      $("add-button").disabled = true;
      endpoints.queue.forceQuery({cmd: "add", args: {type: type.value, args: args}}, function () {
        // Clear what was sent, not what the user typed while the add was on its way.
        if ($("add-text").value === sent) $("add-text").value = "";
        $("add-button").disabled = false;
      }, function (err) {
        $("add-button").disabled = false;
        notifyError(err);
      });
    });
  }

  function setupControls() {
    $("light-add").addEventListener("click", function () {
      endpoints.pool.forceQuery({cmd: "add", args: {type: "blinker", args: {color: $("light-color").value}}},
                                null, notifyError);
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
      if (applyEvents("queue", function () { return model.queue.concat(model.bg ? [model.bg] : []); }, event, loadQueue)) {
        renderNow(); renderQueue(); renderBg();
      }
    });
    if (endpoints.pool) endpoints.pool.on("change", function (event) {
      if (applyEvents("pool", function () { return model.lights; }, event, loadLights)) renderLights();
    });
    if (endpoints.volume) endpoints.volume.on("change", function () { loadVolume(); });
    window.jukeboxReady = true;
  });

  window.jukebox = {model: model, render: renderQueueAll};
})();
