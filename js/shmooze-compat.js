/*
 * shmooze-compat.js: the original shmooze.js's global API, on top of the new shmooze.js
 * (no jQuery, Underscore or Backbone needed). For a page written against the original:
 *
 *   <script src="/static/shmooze.js"></script>
 *   <script src="/static/shmooze-compat.js"></script>
 *
 * - settings.json is loaded at once (from BASE_URL + "/settings.json") into settings_data, and
 *   endpoints gets one Endpoint per service, as the original did;
 * - new Endpoint(url): an endpoint for a service's URL, with deferQuery(data, cb, err),
 *   forceQuery(data, cb, err), runQueries(cb, err), alive, and the onAlive / onDead hooks
 *   (called after every batch that did / did not reach the service);
 * - lostConnection() / regainConnection(): show and hide .disconnect-show / .disconnect-hide
 *   (shmooze.js also does it by itself when the connection drops and comes back);
 * - BASE_URL: "" (the page's own server), or set window.BASE_URL before this script.
 *
 * What differs: commands go over the WebSocket when there is one (else HTTP), callbacks run
 * once per answer, and the error callback gets the error message.
 */
(function (global) {
  "use strict";

  var shmooze = global.shmooze;
  if (!shmooze || !shmooze.Endpoint) throw new Error("shmooze-compat.js needs shmooze.js, loaded before it");
  var Base = shmooze.Endpoint;
  var P = Base.prototype;

  var BASE_URL = global.BASE_URL = typeof global.BASE_URL === "string" ? global.BASE_URL : "";

  /* new Endpoint(url), as in the original: the service's name is the URL's last part. */
  function Endpoint(url) {
    var name = String(url).replace(/[?#].*$/, "").replace(/\/+$/, "").split("/").pop();
    Base.call(this, name, url);
    this.onAlive = null;
    this.onDead = null;
  }
  Endpoint.prototype = P;
  P.constructor = Endpoint;

  var reached = P._reached;
  P._reached = function (up) {
    reached.call(this, up);
    var hook = up ? this.onAlive : this.onDead;
    if (typeof hook === "function") hook.call(this);
  };

  /* Send what deferQuery collected now; cb() once the answers are in, err() if they could not be had. */
  P.runQueries = function (cb, err) {
    this.flush().then(function (reachedService) {
      if (reachedService === true && cb) cb();
      else if (reachedService === false && err) err();
    });
  };

  function display(selector, shown) {
    var nodes = document.querySelectorAll(selector);
    for (var i = 0; i < nodes.length; i++) nodes[i].style.display = shown ? "" : "none";
  }

  global.regainConnection = function () {
    display(".disconnect-hide", true);
    display(".disconnect-show", false);
  };

  global.lostConnection = function () {
    display(".disconnect-show", true);
    display(".disconnect-hide", false);
  };

  global.Endpoint = Endpoint;
  global.endpoints = shmooze.endpoints;

  var base = BASE_URL ? BASE_URL.replace(/\/?$/, "/") : location.protocol + "//" + location.host + "/";
  shmooze.connect({base: base}).catch(function (e) {
    if (global.console) console.error("shmooze-compat: could not load settings.json:", e.message);
  });
})(typeof globalThis !== "undefined" ? globalThis : window);
