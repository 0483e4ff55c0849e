// The local runtime's Node.js worker (engine/runtimes/local.py starts it, through _bootstrap.py's
// --exec, which makes it die with the driver): one persistent process, like a warm Lambda container.
// Usage: node bootstrap.mjs FD HANDLER... where HANDLER is lambda_src/nodejs/mapper.handler.
// Messages are length-prefixed JSON over the socket FD, as multiprocessing.connection frames them
// (a 4-byte big-endian length; -1 and an 8-byte length above 2 GiB).

import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { pathToFileURL } from "node:url";

import { CODE_ROOT } from "./job.mjs";

const TIMEOUT_EXIT = 124;
const ORPHAN_EXIT = 125;

const parentPid = Number(process.env.LAMBDAMR_PARENT_PID || process.ppid);
const started = performance.now();
const fd = Number(process.argv[2]);
const handlerNames = process.argv.slice(3);
let deadlineMs = null;

// The driver's kill covers a busy handler; this covers a driver that is gone or stuck while the
// handler waits on I/O.
setInterval(() => {
  if (process.ppid !== parentPid) process.exit(ORPHAN_EXIT);
  if (deadlineMs !== null && Date.now() >= deadlineMs) {
    process.stderr.write(`lambdamr worker: invocation passed its deadline; exiting with status ${TIMEOUT_EXIT}\n`);
    process.exit(TIMEOUT_EXIT);
  }
}, 200).unref();

const socket = new net.Socket({ fd, readable: true, writable: true });

function send(message) {
  const body = Buffer.from(JSON.stringify(message), "utf8");
  let header;
  if (body.length > 0x7fffffff) {
    header = Buffer.alloc(12);
    header.writeInt32BE(-1, 0);
    header.writeBigUInt64BE(BigInt(body.length), 4);
  } else {
    header = Buffer.alloc(4);
    header.writeInt32BE(body.length, 0);
  }
  socket.write(Buffer.concat([header, body]));
}

function errorOf(err, type) {
  return {
    errorType: type ?? err?.name ?? "Error",
    errorMessage: err?.message ?? String(err),
    stackTrace: String(err?.stack ?? "").split("\n").slice(0, 20),
  };
}

function peakRssMb() {
  try {
    const m = /^VmHWM:\s+(\d+)/m.exec(fs.readFileSync("/proc/self/status", "utf8"));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}

const handlers = {};
let initError = null;
for (const name of handlerNames) {
  const dot = name.lastIndexOf(".");
  try {
    const mod = await import(pathToFileURL(path.join(CODE_ROOT, name.slice(0, dot) + ".mjs")).href);
    handlers[name] = mod[name.slice(dot + 1)];
  } catch (err) {
    initError = errorOf(err, "Runtime.ImportModuleError");
    break;
  }
}
const initMs = performance.now() - started;
send({ type: "ready", init_ms: initMs, pid: process.pid });

let cold = true;
const queue = [];
let busy = false;

async function serve(request) {
  const t0 = performance.now();
  try {
    fs.writeFileSync("/proc/self/clear_refs", "5");
  } catch {
    // not Linux
  }
  const reply = { type: "result", request_id: request.request_id, cold_start: cold };
  if (cold) reply.init_ms = initMs;
  cold = false;
  if (initError !== null) {
    Object.assign(reply, { ok: false, error: initError });
  } else {
    deadlineMs = request.deadline_ms;
    const context = {
      awsRequestId: request.request_id,
      functionName: request.function_name,
      functionVersion: request.function_version ?? "$LATEST",
      memoryLimitInMB: String(request.memory_mb),
      getRemainingTimeInMillis: () => Math.max(0, Math.floor(request.deadline_ms - Date.now())),
    };
    try {
      Object.assign(reply, { ok: true, payload: await handlers[request.handler](request.event, context) });
    } catch (err) {
      Object.assign(reply, { ok: false, error: errorOf(err) });
    } finally {
      deadlineMs = null;
    }
  }
  reply.duration_ms = performance.now() - t0;
  reply.max_memory_mb = peakRssMb();
  send(reply);
}

async function drain() {
  if (busy) return;
  busy = true;
  while (queue.length) await serve(queue.shift());
  busy = false;
}

let pending = Buffer.alloc(0);
socket.on("data", (chunk) => {
  pending = Buffer.concat([pending, chunk]);
  for (;;) {
    if (pending.length < 4) return;
    let length = pending.readInt32BE(0);
    let offset = 4;
    if (length === -1) {
      if (pending.length < 12) return;
      length = Number(pending.readBigUInt64BE(4));
      offset = 12;
    }
    if (pending.length < offset + length) return;
    queue.push(JSON.parse(pending.toString("utf8", offset, offset + length)));
    pending = pending.subarray(offset + length);
    drain();
  }
});
socket.on("end", () => process.exit(0));
socket.on("error", () => process.exit(0));
