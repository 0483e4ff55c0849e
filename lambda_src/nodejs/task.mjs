// What both Node.js handlers share (as lambda_src/task.py for Python): parse the event, run the
// task's body, then commit its status record; on failure write the failed attempt's record, whose
// kind says whether a retry can help, and fail the invocation.

import { randomBytes } from "node:crypto";
import * as fs from "node:fs";

import { EncodeError } from "./codec.mjs";
import { EventError, FAILURE_OF_KIND, RETRYABLE, TaskSpec } from "./contract.mjs";
import { BadRecord, JobCodeError } from "./job.mjs";
import * as st from "./storage.mjs";

export class InputError extends Error {}
InputError.prototype.name = "InputError";

export class CombinerKeyError extends Error {}
CombinerKeyError.prototype.name = "CombinerKeyError";

/** A failure whose kind the handler decided (a wrapped error keeps its cause's kind). */
export class TaskFailure extends Error {
  constructor(kind, message, cause) {
    super(message, { cause });
    this.kind = kind;
    this.name = cause?.name ?? "TaskError";
  }
}

const INPUT_ERRORS = [EventError, InputError, BadRecord, st.NotFound];
const JOB_ERRORS = [JobCodeError, EncodeError, CombinerKeyError];

/** How a task that threw err fails: the input's fault, the job's, or maybe transient. */
export function kindOf(err) {
  if (err instanceof TaskFailure) return err.kind;
  if (JOB_ERRORS.some((cls) => err instanceof cls)) return "job";
  if (INPUT_ERRORS.some((cls) => err instanceof cls)) return "input";
  return "task";
}

/** The start of a record, for a message. */
export function sample(raw) {
  const text = Buffer.isBuffer(raw) ? raw.toString("utf8") : typeof raw === "string" ? raw : String(raw);
  return text.length > 120 ? text.slice(0, 120) + "..." : text;
}

function peakMemoryMb() {
  try {
    const m = /^VmHWM:\s+(\d+)/m.exec(fs.readFileSync("/proc/self/status", "utf8"));
    if (m) return Math.round((Number(m[1]) / 1024) * 10) / 10;
  } catch {
    // not Linux
  }
  return Math.round((process.resourceUsage().maxRSS / 1024) * 10) / 10;
}

const writeJson = (uri, record) => st.forUri(uri).writeBytes(uri, Buffer.from(JSON.stringify(sortKeys(record)), "utf8"));

function sortKeys(v) {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v !== null && typeof v === "object") {
    return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys(v[k])]));
  }
  return v;
}

/** Run one task: the record written last (the commit, or the failed attempt's) is returned or thrown. */
export async function run(event, context, phase, body) {
  const started = Date.now() / 1000;
  try {
    fs.writeFileSync("/proc/self/clear_refs", "5");
  } catch {
    // not Linux: the peak then covers the process's life
  }
  const before = st.s3Requests();
  const spec = TaskSpec.parse(event, phase);
  const token = `a${spec.attempt}-${randomBytes(5).toString("hex")}`;
  const where = spec.describe();
  const base = {
    job_id: spec.jobId, task: spec.taskDict(), attempt: spec.attempt, attempt_token: token,
    request_id: context?.awsRequestId ?? null,
  };
  let result;
  try {
    result = await body(spec, token);
  } catch (err) {
    const kind = kindOf(err);
    const type = err?.name ?? "Error";
    const message = err?.message ?? String(err);
    const failure = FAILURE_OF_KIND[kind];
    const record = {
      ...base, state: "failed", where, duration_ms: Math.round((Date.now() / 1000 - started) * 1e4) / 10,
      started_at: Math.round(started * 1000) / 1000,
      error: { type, message, traceback: String(err?.stack ?? ""), failure, kind, retryable: RETRYABLE[kind] },
    };
    try {
      await writeJson(spec.failedAttemptUri(token), record);
    } catch (writeErr) {
      console.error(`could not write the failure record of ${where}: ${writeErr.message}`);
    }
    const out = new Error(`${where} failed: ${type}: ${message}`);
    out.name = failure;
    throw out;
  }
  const stats = (result.stats ??= {});
  stats.duration_ms = Math.round((Date.now() / 1000 - started) * 1e4) / 10;
  stats.peak_memory_mb = peakMemoryMb();
  const after = st.s3Requests();
  const statusUri = spec.statusUri();
  stats.s3_requests = Object.fromEntries(
    Object.keys(after).map((k) => [k, after[k] - before[k] + (k === "put" && st.isS3(statusUri) ? 1 : 0)]),
  );
  const record = { ...base, state: "succeeded", ...result, started_at: Math.round(started * 1000) / 1000 };
  await writeJson(statusUri, record);
  return record;
}
