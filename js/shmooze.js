/*
 * shmooze.js: the browser side of shmooze, with no third-party dependency.
 *
 *   <script src="/static/shmooze.js"></script>
 *   <script>
 *     shmooze.connect().then(function () {
 *       endpoints.queue.deferQuery({cmd: "queue"}, function (result) { ... });
 *       endpoints.queue.on("change", function (event) { ... });
 *     });
 *   </script>
 *
 * or, as an ES module: import shmooze from "/static/shmooze.mjs".
 *
 * - settings_data: the gateway's public settings (settings.json);
 * - endpoints: one Endpoint per service; deferQuery() collects commands and sends them together
 *   as one batch, forceQuery() sends one now; both also return a Promise;
 * - endpoint.on("change", fn): the service's change events, pushed over a WebSocket that
 *   reconnects with backoff; where no WebSocket can be had, long polling of the service's
 *   "changes" command takes its place;
 * - elements with class "disconnect-hide" are hidden and "disconnect-show" shown while the
 *   connection is lost, and the reverse when it comes back;
 * - a command the gateway refuses for want of a sign-in (401, "sign_in": true) shows a sign-in
 *   form (shmooze.askSignIn; options.signInForm false: none) and tells shmooze.on("sign_in", fn);
 *   shmooze.signIn(user, password), signOut() and whoami() use the gateway's session cookie.
 */
(function (global) {
  "use strict";

  var shmooze = {
    settings_data: null,
    endpoints: {},
    connected: null,
    mode: null, // "websocket" or "polling"
    options: {
      base: null,              // URL of the gateway's prefix; default: the page's folder
      websocket: true,         // false: always poll
      pollTimeout: 20,         // seconds a long poll may wait at the service
      backoffMin: 250,         // ms
      backoffMax: 5000,        // ms
      wsFailuresBeforePolling: 3,
      requestTimeout: 15000,   // ms
      signInForm: true         // false: no built-in form when a command needs a sign-in (listen to "sign_in")
    },
    user: null,                // {user, role} once signed in here
    stats: {httpRequests: 0, wsMessagesSent: 0, wsMessagesReceived: 0, reconnects: 0}
  };

  var listeners = {connect: [], disconnect: [], change: [], sign_in: [], signed_in: [], signed_out: []};
  var ws = null;
  var wsOpen = false;
  var wsFailures = 0;
  var backoff = 0;
  var pending = {};    // id -> {resolve, reject}
  var nextId = 1;
  var reconnectTimer = null;
  var pollers = {};    // service -> true while a long poll loop runs

  function emit(kind, value) {
    (listeners[kind] || []).slice().forEach(function (fn) {
      try { fn(value); } catch (e) { if (global.console) console.error(e); }
    });
  }

  shmooze.on = function (kind, fn) {
    (listeners[kind] = listeners[kind] || []).push(fn);
    return shmooze;
  };

  function setConnected(up) {
    if (shmooze.connected === up) return;
    shmooze.connected = up;
    if (typeof document !== "undefined") {
      var hide = document.querySelectorAll(".disconnect-hide");
      var show = document.querySelectorAll(".disconnect-show");
      for (var i = 0; i < hide.length; i++) hide[i].style.display = up ? "" : "none";
      for (var j = 0; j < show.length; j++) show[j].style.display = up ? "none" : "";
    }
    emit(up ? "connect" : "disconnect", shmooze);
  }

  function baseUrl() {
    if (shmooze.options.base) return shmooze.options.base.replace(/\/?$/, "/");
    var prefix = shmooze.settings_data && shmooze.settings_data.wsgi_prefix;
    if (prefix) return location.protocol + "//" + location.host + prefix;
    return location.href.replace(/[?#].*$/, "").replace(/[^\/]*$/, "");
  }

  // -- HTTP -------------------------------------------------------------------------------

  function httpJson(method, url, body) {
    shmooze.stats.httpRequests++;
    return new Promise(function (resolve, reject) {
      var xhr = new XMLHttpRequest();
      xhr.open(method, url, true);
      xhr.timeout = shmooze.options.requestTimeout + (body && body.args && body.args.timeout ? body.args.timeout * 1000 : 0);
      if (body !== undefined) xhr.setRequestHeader("Content-Type", "application/json");
      var token = shmooze.options.token;
      if (token) xhr.setRequestHeader("Authorization", "Bearer " + token);
      xhr.onload = function () {
        var data;
        try { data = JSON.parse(xhr.responseText); } catch (e) {
          reject(new Error("HTTP " + xhr.status + ": answer is not JSON"));
          return;
        }
        if (xhr.status !== 200) {
          reject(refusal(data, "HTTP " + xhr.status));
          return;
        }
        resolve(data);
      };
      xhr.onerror = function () { reject(new Error("connection failed")); };
      xhr.ontimeout = function () { reject(new Error("timed out")); };
      xhr.send(body === undefined ? null : JSON.stringify(body));
    });
  }

  /* The Error of a refused command; one the gateway refused for want of a sign-in says so
   * (err.signIn, err.needs: "user" or "operator"). */
  function refusal(data, fallback) {
    var err = new Error((data && data.error) || fallback || "failed");
    if (data && data.sign_in) { err.signIn = true; err.needs = data.needs; }
    return err;
  }

  // -- the WebSocket ----------------------------------------------------------------------

  function wsUrl() {
    return baseUrl().replace(/^http/, "ws") + "ws";
  }

  function wsSend(message) {
    return new Promise(function (resolve, reject) {
      var id = nextId++;
      message.id = id;
      if (shmooze.options.token) message.token = shmooze.options.token;
      pending[id] = {resolve: resolve, reject: reject};
      shmooze.stats.wsMessagesSent++;
      ws.send(JSON.stringify(message));
    });
  }

  function subscribedServices() {
    var out = {};
    Object.keys(shmooze.endpoints).forEach(function (name) {
      var ep = shmooze.endpoints[name];
      if (ep.listeners.change.length) out[name] = ep.version;
    });
    return out;
  }

  function resubscribe() {
    var services = subscribedServices();
    if (!wsOpen || !Object.keys(services).length) return;
    wsSend({subscribe: services}).then(function (result) {
      Object.keys(result || {}).forEach(function (name) {
        var ep = shmooze.endpoints[name];
        if (ep && ep.version === null) ep.version = result[name].version;
      });
    }, function () {});
  }

  function openWebSocket() {
    reconnectTimer = null;
    if (typeof WebSocket === "undefined" || !shmooze.options.websocket) {
      startPolling();
      return;
    }
    var sock;
    try { sock = new WebSocket(wsUrl()); } catch (e) { wsClosed(); return; }
    ws = sock;
    sock.onopen = function () {
      wsOpen = true;
      wsFailures = 0;
      backoff = 0;
      shmooze.mode = "websocket";
      stopPolling();
      setConnected(true);
      resubscribe();
    };
    sock.onmessage = function (msg) {
      shmooze.stats.wsMessagesReceived++;
      var data;
      try { data = JSON.parse(msg.data); } catch (e) { return; }
      if (data.event === "change") {
        var ep = shmooze.endpoints[data.service];
        if (ep) ep._deliver(data);
        return;
      }
      var waiter = pending[data.id];
      if (!waiter) return;
      delete pending[data.id];
      if (data.answers) waiter.resolve(data.answers);
      else if (data.success) waiter.resolve(data.result);
      else waiter.reject(refusal(data));
    };
    sock.onclose = function () {
      if (ws !== sock) return;
      ws = null;
      var wasOpen = wsOpen;
      wsOpen = false;
      Object.keys(pending).forEach(function (id) { pending[id].reject(new Error("connection lost")); });
      pending = {};
      if (!wasOpen) wsFailures++;
      wsClosed();
    };
  }

  function wsClosed() {
    // While the polling fallback runs, it alone says whether the connection is up: a failed
    // retry of the WebSocket must not show the page as disconnected.
    if (!Object.keys(pollers).length) setConnected(false);
    shmooze.stats.reconnects++;
    if (wsFailures >= shmooze.options.wsFailuresBeforePolling) {
      // No WebSocket to be had: poll, and try the WebSocket again now and then.
      startPolling();
      scheduleReconnect(30000);
      return;
    }
    backoff = Math.min(shmooze.options.backoffMax, backoff ? backoff * 2 : shmooze.options.backoffMin);
    scheduleReconnect(backoff * (0.75 + Math.random() * 0.5));
  }

  function scheduleReconnect(delay) {
    if (reconnectTimer) clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(openWebSocket, delay);
  }

  // -- the polling fallback ---------------------------------------------------------------

  function startPolling() {
    shmooze.mode = "polling";
    Object.keys(subscribedServices()).forEach(pollLoop);
  }

  function stopPolling() {
    pollers = {};
  }

  function pollLoop(name) {
    if (pollers[name] || wsOpen) return;
    pollers[name] = true;
    var ep = shmooze.endpoints[name];
    var delay = 0;
    function once() {
      if (!pollers[name] || wsOpen) { delete pollers[name]; return; }
      var timeout = ep.version === null ? 0 : shmooze.options.pollTimeout;
      httpJson("POST", ep.url, {cmd: "changes", args: {since: ep.version || 0, timeout: timeout}}).then(function (answer) {
        delay = 0;
        setConnected(true);
        if (answer.success) {
          var r = answer.result;
          if (ep.version === null) ep.version = r.version;
          else if (r.events.length || r.reset) ep._deliver({event: "change", service: name, version: r.version,
                                                            events: r.events, reset: !!r.reset});
          else ep.version = r.version;
        }
        setTimeout(once, 0);
      }, function () {
        setConnected(false);
        delay = Math.min(shmooze.options.backoffMax, delay ? delay * 2 : shmooze.options.backoffMin);
        setTimeout(once, delay);
      });
    }
    once();
  }

  // -- endpoints --------------------------------------------------------------------------

  function Endpoint(name, url) {
    this.name = name;
    this.url = url;
    this.version = null;
    this.queue = [];
    this.flushScheduled = false;
    this.alive = null;  // whether the last batch reached the service
    this.listeners = {change: [], alive: [], dead: []};
  }

  function settle(item, answer) {
    if (answer && answer.success) {
      if (item.onResult) item.onResult(answer.result);
      item.resolve(answer.result);
    } else {
      var message = (answer && answer.error) || "failed";
      if (item.onError) item.onError(message);
      item.reject(new Error(message));
    }
  }

  function failAll(items, err) {  // each item's promise rejects with err itself (err.signIn...)
    var message = err.message || String(err);
    items.forEach(function (item) {
      if (item.onError) item.onError(message);
      item.reject(err instanceof Error ? err : new Error(message));
    });
  }

  Endpoint.prototype._send = function (items) {
    var self = this;
    var commands = items.map(function (item) { return item.data; });
    var sent;
    if (wsOpen) {
      sent = wsSend({service: self.name, batch: commands});
    } else {
      sent = httpJson("POST", self.url, commands);
    }
    // Resolves true once the answers are in, false when the batch did not reach the service.
    return sent.then(function (answers) {
      self._reached(true);
      items.forEach(function (item, i) { settle(item, answers[i]); });
      return true;
    }, function (err) {
      self._reached(!!err.signIn);  // refused for want of a sign-in: the service itself is fine
      failAll(items, err);
      if (err.signIn) needSignIn(err);
      return false;
    });
  };

  Endpoint.prototype._reached = function (up) {
    this.alive = up;
    this.listeners[up ? "alive" : "dead"].slice().forEach(function (fn) {
      try { fn(); } catch (e) { if (global.console) console.error(e); }
    });
  };

  /* A random client key: a command that starts a module carries one, so that a retry never starts two. */
  function clientKey() {
    var bytes = new Uint8Array(12);
    if (global.crypto && global.crypto.getRandomValues) global.crypto.getRandomValues(bytes);
    else for (var i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
    return Array.prototype.map.call(bytes, function (b) { return (b + 256).toString(16).slice(1); }).join("");
  }

  function withKey(data) {
    var args = data && data.args;
    if (!data || (data.cmd !== "add" && data.cmd !== "set_bg") || !args || typeof args.type !== "string" ||
        args.key !== undefined) return data;
    var copy = {};
    Object.keys(args).forEach(function (k) { copy[k] = args[k]; });
    copy.key = clientKey();
    return {cmd: data.cmd, args: copy};
  }

  Endpoint.prototype._enqueue = function (data, onResult, onError) {
    var item = {data: withKey(data), onResult: onResult, onError: onError};
    var promise = new Promise(function (resolve, reject) { item.resolve = resolve; item.reject = reject; });
    promise.catch(function () {}); // callers may use callbacks only
    return {item: item, promise: promise};
  };

  /* Queue a command; every command deferred in the same turn goes out as one batch. */
  Endpoint.prototype.deferQuery = function (data, onResult, onError) {
    var self = this;
    var entry = this._enqueue(data, onResult, onError);
    this.queue.push(entry.item);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setTimeout(function () { self.flush(); }, 0);
    }
    return entry.promise;
  };

  /* Send one command now, on its own. */
  Endpoint.prototype.forceQuery = function (data, onResult, onError) {
    var entry = this._enqueue(data, onResult, onError);
    this._send([entry.item]);
    return entry.promise;
  };

  /* Send the deferred commands now. Resolves true when they reached the service, false when
     not, null when there was nothing to send. */
  Endpoint.prototype.flush = function () {
    this.flushScheduled = false;
    var items = this.queue;
    this.queue = [];
    return items.length ? this._send(items) : Promise.resolve(null);
  };

  /* Listen to the service's change events: fn({service, version, events, reset}); "alive" and
     "dead": fn() after each batch that did or did not reach the service. */
  Endpoint.prototype.on = function (kind, fn) {
    (this.listeners[kind] = this.listeners[kind] || []).push(fn);
    if (kind === "change") {
      if (wsOpen) resubscribe();
      else if (shmooze.mode === "polling") pollLoop(this.name);
    }
    return this;
  };

  Endpoint.prototype._deliver = function (event) {
    var seen = this.version;
    if (seen !== null && !event.reset && event.events) {
      // A reconnecting client may be sent a change twice (catch-up, then the live feed).
      event.events = event.events.filter(function (e) { return e.version > seen; });
      if (!event.events.length) return;
    }
    if (typeof event.version === "number") this.version = event.version;
    this.listeners.change.slice().forEach(function (fn) {
      try { fn(event); } catch (e) { if (global.console) console.error(e); }
    });
    emit("change", event);
  };

  // -- signing in --------------------------------------------------------------------------
  // A command that needs a signed-in user or operator is refused (401, "sign_in": true): the
  // "sign_in" listeners hear it, and the built-in form shows (options.signInForm). Once signed in
  // (a session cookie the gateway sets), the WebSocket is opened again with it and the command
  // may be sent again.

  function needSignIn(err) {
    emit("sign_in", {needs: err.needs, error: err.message});
    if (shmooze.options.signInForm) shmooze.askSignIn(err.message);
  }

  function reopenWebSocket() {
    if (!ws) return;  // polling, or not yet open: the next WebSocket sends the cookie anyway
    var old = ws;
    ws = null;
    wsOpen = false;
    Object.keys(pending).forEach(function (id) { pending[id].reject(new Error("connection lost")); });
    pending = {};
    old.close();
    openWebSocket();
  }

  /* Sign in as user with password; resolves with {user, role}. */
  shmooze.signIn = function (user, password) {
    return httpJson("POST", baseUrl() + "_session", {user: user, password: password}).then(function (answer) {
      shmooze.user = answer.result;
      reopenWebSocket();
      emit("signed_in", answer.result);
      return answer.result;
    });
  };

  /* Sign out (the gateway refuses the session's cookie from then on). */
  shmooze.signOut = function () {
    return httpJson("DELETE", baseUrl() + "_session").then(function () {
      shmooze.user = null;
      reopenWebSocket();
      emit("signed_out", null);
    });
  };

  /* Who the gateway takes this page for: resolves with {user, role, sign_in} (user null: anonymous). */
  shmooze.whoami = function () {
    return httpJson("GET", baseUrl() + "_session").then(function (answer) {
      shmooze.user = answer.result.user ? answer.result : null;
      return answer.result;
    });
  };

  /* Show the built-in sign-in form (a form#shmooze-sign-in, made once), saying why. */
  shmooze.askSignIn = function (why) {
    if (typeof document === "undefined") return;
    var form = document.getElementById("shmooze-sign-in");
    if (!form) {
      form = document.createElement("form");
      form.id = "shmooze-sign-in";
      form.setAttribute("style", "position:fixed;top:1em;right:1em;z-index:1000;background:#fff;color:#000;" +
                        "border:1px solid #888;border-radius:6px;padding:.75em;font:14px sans-serif;" +
                        "box-shadow:0 2px 8px rgba(0,0,0,.3)");
      form.innerHTML = '<p class="shmooze-sign-in-why" style="margin:0 0 .5em"></p>' +
        '<input name="user" autocomplete="username" placeholder="user" required> ' +
        '<input name="password" type="password" autocomplete="current-password" placeholder="password" required> ' +
        '<button type="submit">sign in</button> <button type="button" name="cancel">cancel</button>' +
        '<p class="shmooze-sign-in-error" style="margin:.5em 0 0;color:#b00"></p>';
      form.addEventListener("submit", function (ev) {
        ev.preventDefault();
        shmooze.signIn(form.elements.user.value, form.elements.password.value).then(function () {
          form.elements.password.value = "";
          form.hidden = true;
        }, function (err) {
          form.querySelector(".shmooze-sign-in-error").textContent = err.message;
        });
      });
      form.elements.cancel.addEventListener("click", function () { form.hidden = true; });
      document.body.appendChild(form);
    }
    form.querySelector(".shmooze-sign-in-why").textContent = why || "";
    form.querySelector(".shmooze-sign-in-error").textContent = "";
    form.hidden = false;
    form.elements.user.focus();
  };

  // -- start ------------------------------------------------------------------------------

  /* Load settings.json, create the endpoints, open the connection. Resolves with shmooze. */
  shmooze.connect = function (options) {
    Object.keys(options || {}).forEach(function (k) { shmooze.options[k] = options[k]; });
    return httpJson("GET", baseUrl() + "settings.json").then(function (data) {
      shmooze.settings_data = data;
      global.settings_data = data;
      var ports = data.ports || {};
      Object.keys(ports).forEach(function (name) {
        if (name === "wsgi" || shmooze.endpoints[name]) return;
        shmooze.endpoints[name] = new Endpoint(name, baseUrl() + name);
      });
      openWebSocket();
      return shmooze;
    }, function (err) {
      setConnected(false);
      throw err;
    });
  };

  shmooze.Endpoint = Endpoint;
  global.shmooze = shmooze;
  global.Endpoint = Endpoint;
  global.endpoints = shmooze.endpoints;
  global.settings_data = null;
})(typeof globalThis !== "undefined" ? globalThis : window);
