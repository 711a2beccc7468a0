/*
 * The shmooze dashboard: every service and module of the application, live, on shmooze.js push.
 *
 * Each service's status is read once, then again whenever the service pushes a change event (a module
 * added, ended, restarted; "figures" while someone watches; "output" naming the modules that printed;
 * "storage" when what it keeps can no longer be written, or can again: its status "problem" shows on its card;
 * "role" with etcd, when it is elected, stands by, or etcd loses or regains its quorum).
 * Nothing is polled: with no change, no request is made (uptimes advance on the page's own clock).
 * "Recent changes" lists the modules added, removed and moved since the page opened, and who did it
 * (an event's "by": a signed-in user, or anonymous with the client's address).
 */
(function () {
  "use strict";

  var base = location.pathname.replace(/_shmooze\/[^\/]*$/, "");
  var model = {services: {}, names: [], selected: null, outputNext: 0, tokenRequired: false};
  var refreshTimers = {};
  var MAX_OUTPUT_LINES = 1000;
  var MAX_CHANGES = 30;
  var CHANGE_KINDS = {added: 1, background: 1, removed: 1, moved: 1, restarting: 1, gave_up: 1};
  model.changes = [];

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "className") node.className = attrs[k];
      else node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) node.appendChild(c); });
    return node;
  }

  function duration(seconds) {
    if (typeof seconds !== "number") return "-";
    var s = Math.floor(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    return (h ? h + "h " : "") + (h || m ? m + "m " : "") + (s % 60) + "s";
  }

  function bytes(n) {
    if (typeof n !== "number") return "-";
    if (n >= 1 << 30) return (n / (1 << 30)).toFixed(2) + " GiB";
    if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MiB";
    return Math.round(n / 1024) + " KiB";
  }

  function num(v, digits, unit) { return typeof v === "number" ? v.toFixed(digits) + (unit || "") : "-"; }

  function say(text) { $("message").textContent = text || ""; }

  // -- reading ---------------------------------------------------------------------------

  function refresh(name) {
    var ep = shmooze.endpoints[name];
    ep.forceQuery({cmd: "status"}).then(function (status) {
      model.services[name] = {up: true, status: status, at: Date.now()};
      render();
    }, function (err) {
      model.services[name] = {up: false, error: String(err && err.message || err), at: Date.now()};
      render();
    });
  }

  function scheduleRefresh(name) {
    if (refreshTimers[name]) return;
    refreshTimers[name] = setTimeout(function () { refreshTimers[name] = null; refresh(name); }, 30);
  }

  /* Who caused an event, in words ("user:ann" -> "ann", "anonymous:10.0.0.7" -> "anonymous (10.0.0.7)"). */
  function caller(by) {
    if (!by) return "-";
    var at = by.indexOf(":"), kind = by.slice(0, at), who = by.slice(at + 1);
    if (kind === "user") return who;
    if (kind === "anonymous") return "anonymous (" + who + ")";
    if (kind === "local") return who + " (on the host)";
    if (kind === "key") return "service key (" + who + ")";
    return by;
  }

  function noteChanges(name, events) {
    events.forEach(function (e) {
      if (CHANGE_KINDS[e.kind]) model.changes.unshift({service: name, e: e});
    });
    if (model.changes.length > MAX_CHANGES) model.changes.length = MAX_CHANGES;
  }

  function renderChanges() {
    var body = $("changes").tBodies[0];
    body.textContent = "";
    model.changes.forEach(function (item) {
      var e = item.e;
      var uid = e.uid || (e.order ? e.order.join(", ") : "");
      body.appendChild(el("tr", {"data-kind": e.kind, "data-uid": e.uid || ""}, [
        el("td", {text: e.time ? new Date(e.time * 1000).toLocaleTimeString() : "-"}),
        el("td", {text: item.service}), el("td", {text: e.kind + (e.reason && e.kind === "removed" ? " (" + e.reason + ")" : "")}),
        el("td", {className: "reason", text: uid}), el("td", {text: e.type || ""}),
        el("td", {className: "by", "data-by": e.by || "", text: caller(e.by)})
      ]));
    });
    $("no-changes").style.display = model.changes.length ? "none" : "";
  }

  function onChange(name, event) {
    var structural = !!event.reset;
    noteChanges(name, event.events || []);
    (event.events || []).forEach(function (e) {
      if (e.kind === "output") {
        if (model.selected && model.selected.service === name && e.lines && e.lines[model.selected.uid]) readOutput();
      } else if (e.kind !== "parameters" && e.kind !== "told") {
        structural = true;
      }
    });
    if (structural) scheduleRefresh(name);
  }

  function readOutput(fresh) {
    var sel = model.selected;
    if (!sel) return;
    var after = fresh ? 0 : model.outputNext;
    shmooze.endpoints[sel.service].forceQuery({cmd: "output", args: {uid: sel.uid, after: after, lines: 300}})
      .then(function (answer) {
        if (model.selected !== sel) return;
        var pre = $("output");
        if (fresh) pre.textContent = "";
        if (answer.missed) pre.appendChild(el("div", {className: "muted", text: "[" + answer.missed + " earlier line(s) not shown]"}));
        answer.lines.forEach(function (line) {
          pre.appendChild(el("div", {className: line.stream, "data-n": String(line.n), text: line.text}));
        });
        while (pre.childNodes.length > MAX_OUTPUT_LINES) pre.removeChild(pre.firstChild);
        model.outputNext = answer.next;
        pre.scrollTop = pre.scrollHeight;
      }, function (err) { say("output: " + (err && err.message || err)); });
  }

  function select(service, uid) {
    model.selected = {service: service, uid: uid};
    model.outputNext = 0;
    $("output-uid").textContent = service + " / " + uid;
    readOutput(true);
    render();
  }

  // -- actions ---------------------------------------------------------------------------

  function removeModule(service, uid) {
    shmooze.endpoints[service].forceQuery({cmd: "rm", args: {uids: [uid]}}).then(function () {
      say("removed " + uid);
    }, function (err) { say("rm " + uid + ": " + (err && err.message || err)); askToken(err); });
  }

  function restartService(name) {
    say("restarting " + name + "...");
    var xhr = new XMLHttpRequest();
    xhr.open("POST", base + "_shmooze/restart");
    xhr.setRequestHeader("Content-Type", "application/json");
    if (shmooze.options.token) xhr.setRequestHeader("Authorization", "Bearer " + shmooze.options.token);
    xhr.onload = function () {
      var answer = {};
      try { answer = JSON.parse(xhr.responseText); } catch (e) { /* reported below */ }
      if (xhr.status === 200 && answer.success) say("restarted " + name);
      else {
        say("restart " + name + ": " + (answer.error || xhr.status));
        if (xhr.status === 401 && answer.sign_in) shmooze.askSignIn(answer.error);
        else if (xhr.status === 401) askToken();
      }
      scheduleRefresh(name);
    };
    xhr.onerror = function () { say("restart " + name + ": connection failed"); };
    xhr.send(JSON.stringify({service: name}));
  }

  function askToken(err) {
    if (!model.tokenRequired || model.signIn) return;  // with users, shmooze.js asks them to sign in
    if (err && !/token/.test(String(err.message || err))) return;
    $("token-form").hidden = false;
    $("token").focus();
  }

  // -- drawing ---------------------------------------------------------------------------

  /* An uptime cell: it keeps its start time and the page's clock advances it (tick). */
  function uptimeCell(tag, entry, seconds) {
    var cell = el(tag, {text: duration(seconds)});
    if (typeof seconds === "number") cell.setAttribute("data-since", String(entry.at - seconds * 1000));
    return cell;
  }

  function tick() {
    var cells = document.querySelectorAll("[data-since]");
    for (var i = 0; i < cells.length; i++) {
      cells[i].textContent = duration((Date.now() - Number(cells[i].getAttribute("data-since"))) / 1000);
    }
  }

  /* What status says of containment ({kind, path} or {kind, why}, and where limits go), in a few words. */
  function containment(info) {
    if (!info) return "-";
    var how = info.kind === "cgroup" ? "cgroup per module" : "process group + sweep" + (info.why ? " (" + info.why + ")" : "");
    var held = Object.keys(info.limits || {}).filter(function (c) { return c !== "why"; });
    return how + " · limits: " + (held.length ? held.join(", ") + " in " + info.limits[held[0]] : "rlimits");
  }

  /* "LEADER" or "STANDBY (leader: URL on HOST)", from a status with etcd. */
  function role(st) {
    if (st.role === "LEADER" || !st.leader) return st.role + (st.fenced ? " (fenced: " + st.fenced + ")" : "");
    return st.role + " (leader: " + st.leader.url + " on " + st.leader.host + ")";
  }

  function renderServices() {
    var box = $("services");
    box.textContent = "";
    model.names.forEach(function (name) {
      var entry = model.services[name];
      var st = entry && entry.status || {};
      var up = entry && entry.up;
      var rows = [["worker pid", st.pid], ["uptime", up ? st.uptime : null],  // (the gunicorn master's: shmooze status)
                  ["version", st.version], ["CPU", num(st.cpu_seconds, 1, " s") + " · " + num(st.cpu_percent, 0, " %")],
                  ["memory", bytes(st.rss_bytes)],
                  ["modules", st.modules ? String(st.modules.length) : "-"],
                  ["containment", containment(st.containment)]];
      if (st.role) rows.unshift(["role", role(st)]);  // with etcd: LEADER or STANDBY among its candidates
      if (st.held && st.held.length) rows.push(["kept stopped", st.held.map(function (m) { return m.uid + " (" + m.reason + ")"; }).join("; ")]);
      if (!up && entry) rows = [["error", entry.error]];
      // what keeps it from working as it should (a full disk; no quorum in etcd: changes refused)
      var problem = up && (st.problem || (st.role && st.quorum === false ? "no quorum: " + st.etcd_problem : null));
      var restart = el("button", {className: "danger", "data-restart": name, text: "restart"});
      restart.addEventListener("click", function () { restartService(name); });
      box.appendChild(el("div", {className: "card", "data-service": name}, [
        el("h3", {}, [el("span", {}, [el("span", {className: "dot " + (problem ? "problem" : up ? "up" : "down")}),
                                      document.createTextNode(name)]),
                      el("span", {className: "muted", text: entry ? (problem ? "problem" : up ? "up" : "down") : "…"})]),
        problem ? el("p", {className: "problem", text: problem}) : null,
        el("dl", {}, [].concat.apply([], rows.map(function (r) {
          if (r[0] === "uptime") return [el("dt", {text: r[0]}), uptimeCell("dd", entry, r[1])];
          return [el("dt", {text: r[0]}), el("dd", {text: r[1] === undefined || r[1] === null ? "-" : String(r[1])})];
        }))),
        restart
      ]));
    });
  }

  function moduleRow(name, entry, m) {
    var state = m.state, cls = "state-running";
    if (m.next_try !== undefined) { state = "restart in " + m.next_try.toFixed(1) + " s"; cls = "state-waiting"; }
    if (m.given_up) { state = "given up"; cls = "state-given"; }
    var rm = el("button", {className: "danger", "data-rm": m.uid, text: "rm"});
    rm.addEventListener("click", function (ev) { ev.stopPropagation(); removeModule(name, m.uid); });
    var tr = el("tr", {"data-uid": m.uid, "data-service": name}, [
      el("td", {text: name}), el("td", {text: m.uid}), el("td", {text: m.type}),
      el("td", {className: cls, text: state}), el("td", {text: String(m.pid || "-")}),
      uptimeCell("td", entry, m.uptime),
      el("td", {className: "num", text: num(m.cpu_seconds, 1, " s")}),
      el("td", {className: "num", text: num(m.cpu_percent, 0, " %")}),
      el("td", {className: "num", text: bytes(m.rss_bytes)}),
      el("td", {className: "num", text: String(m.restarts || 0) + (m.policy && m.policy !== "never" ? " · " + m.policy : "")}),
      el("td", {}, [rm])
    ]);
    if (model.selected && model.selected.uid === m.uid) tr.className = "selected";
    tr.addEventListener("click", function () { select(name, m.uid); });
    return tr;
  }

  function renderModules() {
    var body = $("modules").tBodies[0];
    body.textContent = "";
    var count = 0;
    model.names.forEach(function (name) {
      var entry = model.services[name];
      var st = entry && entry.up && entry.status;
      if (!st || !st.modules) return;
      st.modules.concat(st.restarting || []).forEach(function (m) { body.appendChild(moduleRow(name, entry, m)); count++; });
    });
    $("module-count").textContent = "(" + count + ")";
    $("no-modules").style.display = count ? "none" : "";
  }

  function renderEnded() {
    var all = [];
    model.names.forEach(function (name) {
      var st = model.services[name] && model.services[name].status;
      ((st && st.ended) || []).forEach(function (m) { all.push({service: name, m: m}); });
      ((st && st.given_up) || []).forEach(function (m) {
        all.push({service: name, m: {uid: m.uid, type: m.type, ended_by: "given up", reason: m.last_end, stopped_at: m.at}});
      });
    });
    all.sort(function (a, b) { return (b.m.stopped_at || 0) - (a.m.stopped_at || 0); });
    var body = $("ended").tBodies[0];
    body.textContent = "";
    all.slice(0, 15).forEach(function (item) {
      var m = item.m, rung = String(m.ended_by || "-");
      var shown = rung + (typeof m.returncode === "number" && m.returncode !== 0 ? " · status " + m.returncode : "");
      var tr = el("tr", {"data-uid": m.uid}, [
        el("td", {text: m.stopped_at ? new Date(m.stopped_at * 1000).toLocaleTimeString() : "-"}),
        el("td", {text: item.service}), el("td", {text: m.uid}), el("td", {text: m.type}),
        el("td", {className: "rung-" + rung.split(":")[0], text: shown}),
        el("td", {className: "reason", text: m.reason || ""})
      ]);
      tr.addEventListener("click", function () { select(item.service, m.uid); });
      body.appendChild(tr);
    });
  }

  function render() { renderServices(); renderModules(); renderEnded(); renderChanges(); }

  // -- who is signed in (when the gateway has users) -------------------------------------------

  function showWho() {
    function draw(who) {
      var signedIn = who && who.user;
      $("who").textContent = signedIn ? who.user + " (" + who.role + ")" : "not signed in";
      $("sign-out").hidden = !signedIn;
      $("sign-in").hidden = !!signedIn;
    }
    $("who-box").hidden = false;
    $("sign-out").addEventListener("click", function () { shmooze.signOut().then(function () { draw(null); }); });
    $("sign-in").addEventListener("click", function () { shmooze.askSignIn("sign in as an operator"); });
    shmooze.on("signed_in", draw);
    shmooze.whoami().then(draw, function () {});
  }

  // -- start -----------------------------------------------------------------------------

  function start(info) {
    model.names = info.services;
    model.tokenRequired = info.token_required;
    if (info.app_name) { $("app-name").textContent = info.app_name; document.title = info.app_name + " · dashboard"; }
    var token = sessionStorage.getItem("shmooze-token");
    model.signIn = !!info.sign_in;
    if (model.tokenRequired && !token && !model.signIn) $("token-form").hidden = false;
    $("token-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      shmooze.options.token = $("token").value;
      sessionStorage.setItem("shmooze-token", $("token").value);
      $("token-form").hidden = true;
      say("token set");
    });
    shmooze.on("connect", function () {
      $("mode").textContent = shmooze.mode === "polling" ? "updates by long polling" : "updates by push";
      model.names.forEach(refresh);
    });
    shmooze.connect({base: base, token: token || null}).then(function () {
      if (model.signIn) showWho();
      model.names.forEach(function (name) {
        if (!shmooze.endpoints[name]) shmooze.endpoints[name] = new shmooze.Endpoint(name, base + name);
        shmooze.endpoints[name].on("change", function (event) { onChange(name, event); });
        refresh(name);
      });
      setInterval(tick, 1000); // the page's clock: no request
      // A service whose host is lost pushes nothing, so every service is asked again now and then.
      setInterval(function () { model.names.forEach(refresh); }, 5000);
      window.dashboardReady = true;
    }, function (err) { say("cannot load the settings: " + (err && err.message || err)); });
  }

  var xhr = new XMLHttpRequest();
  xhr.open("GET", base + "_shmooze/services.json");
  xhr.onload = function () { start(JSON.parse(xhr.responseText)); };
  xhr.onerror = function () { say("cannot reach the gateway"); };
  xhr.send();
})();
