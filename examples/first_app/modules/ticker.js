#!/usr/bin/env node
// ticker.js - a shmooze module in Node.js, written from the module protocol page alone
// (no shmooze code, no npm package: only Node's own `net`).
//
// Module type: ModuleType("ticker", ("node", "modules/ticker.js"))
//   init {"from": 0, "until": null, "every": 1.0}  count from `from`, one step every `every` seconds
//   play / suspend                                  count, or pause
//   do_reset {"to": 0}                              set the count; answers the new count
//   rm                                              answer, then exit
// Parameters: {"count": N, "state": "playing" | "suspended"}. At `until` it leaves the queue
// on its own (an rm update).
"use strict";
const net = require("net");

const [host, cmdPort, updatePort] = process.argv.slice(-3);   // always the last three arguments
let count = 0;
let until = null;
let every = 1.0;
let timer = null;

function connect(port) {
  const socket = net.connect({host, port: Number(port)});
  socket.setNoDelay(true);
  socket.setEncoding("utf8");
  return socket;
}

// Split a stream into lines; call onLine with each parsed JSON object.
function lines(socket, onLine) {
  let buffer = "";
  socket.on("data", (chunk) => {
    buffer += chunk;
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).replace(/\r$/, "");
      buffer = buffer.slice(newline + 1);
      let message;
      try {
        message = JSON.parse(line);
      } catch (err) {
        message = {unparsable: String(err)};
      }
      onLine(message);
    }
  });
}

const commands = connect(cmdPort);
const updates = connect(updatePort);

function update(cmd, args) {
  updates.write(JSON.stringify({cmd, args}) + "\n");
}

function setParameters(parameters) {
  update("set_parameters", {parameters});
}

function answer(message) {
  commands.write(JSON.stringify(message) + "\n");
}

function leave() {                // an rm update: the service takes us out; then exit
  stop();
  update("rm", {});
  updates.end(() => process.exit(0));
}

function stop() {
  if (timer !== null) {
    clearInterval(timer);
    timer = null;
  }
}

function step() {
  count += 1;
  setParameters({count});
  if (until !== null && count >= until) {
    leave();
  }
}

const handlers = {
  init(args) {
    count = Number.isInteger(args.from) ? args.from : 0;
    until = Number.isInteger(args.until) ? args.until : null;
    every = typeof args.every === "number" && args.every > 0 ? args.every : 1.0;
    setParameters({count, state: "suspended"});   // applied before `add` answers
    return null;
  },
  play() {
    if (timer === null) {
      timer = setInterval(step, every * 1000);
    }
    setParameters({state: "playing"});
    return null;
  },
  suspend() {
    stop();
    setParameters({state: "suspended"});
    return null;
  },
  do_reset(args) {
    if (!Number.isInteger(args.to)) {
      throw new Error("reset needs 'to', a whole number");
    }
    count = args.to;
    setParameters({count});
    return count;
  },
};

lines(commands, (message) => {
  if (message.unparsable || typeof message.cmd !== "string") {
    answer({success: false, error: "not a command"});
    return;
  }
  if (message.cmd === "rm") {
    stop();
    commands.end(JSON.stringify({success: true}) + "\n", () => process.exit(0));
    return;
  }
  const handler = handlers[message.cmd];
  if (handler === undefined) {
    answer({success: false, error: `unknown command: ${message.cmd}`});
    return;
  }
  try {
    const result = handler(message.args || {});
    answer(result === null ? {success: true} : {success: true, result});
  } catch (err) {
    answer({success: false, error: err.message});
  }
});
lines(updates, () => {});                     // every update is answered: read and discard
commands.on("end", () => process.exit(0));    // the service closed the stream: nothing more will come
commands.on("error", () => process.exit(0));
updates.on("error", () => process.exit(0));
