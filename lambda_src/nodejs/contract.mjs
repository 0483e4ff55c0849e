// The task contract (docs/contract.md, docs/schemas/), as the Node.js handlers read and write it:
// the event, the job layout's keys and the status records. lambda_src/contract.py is the Python
// side of the same contract; tests/conformance holds both to it.

import * as st from "./storage.mjs";

export const EVENT_VERSION = 1;
const JOB_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}$/;
const PARAM_NAME_RE = /^[A-Za-z_][A-Za-z0-9_.-]{0,127}$/;

export class EventError extends Error {}
EventError.prototype.name = "EventError";

const pad = (n, width) => String(n).padStart(width, "0");
const stepName = (index) => `step-${pad(index + 1, 2)}`;
const stepScoped = (index, key) => (index === 0 ? key : `${stepName(index)}/${key}`);
export const stepDir = (jobDir, index) => (index === 0 ? jobDir : st.join(jobDir, stepName(index)));

const isInt = (v) => Number.isInteger(v);

function intField(task, name, what, dflt) {
  const value = name in task ? task[name] : dflt;
  if (!isInt(value) || value < (what === "positive" ? 1 : 0)) {
    throw new EventError(`task ${name} must be a ${what} integer, got ${JSON.stringify(value)}`);
  }
  return value;
}

function jobConfig(data) {
  if (data === null || typeof data !== "object" || Array.isArray(data)) throw new EventError("event field 'job' must be an object");
  for (const name of ["ref", "partitions"]) {
    if (!(name in data)) throw new EventError(`event field 'job' lacks '${name}'`);
  }
  const params = data.params ?? {};
  if (typeof params !== "object" || Array.isArray(params)) throw new EventError(`job params must be a mapping of names to strings`);
  for (const [name, value] of Object.entries(params)) {
    if (!PARAM_NAME_RE.test(name)) throw new EventError(`invalid job parameter name ${JSON.stringify(name)}`);
    if (typeof value !== "string") throw new EventError(`job parameter ${JSON.stringify(name)} must be a string, got ${typeof value}`);
  }
  const cfg = {
    ref: String(data.ref),
    params: { ...params },
    partitions: Number(data.partitions),
    max_bad_records: Number(data.max_bad_records ?? 0),
    vectorized: Boolean(data.vectorized ?? true),
    max_line_bytes: Number(data.max_line_bytes ?? 1024 * 1024),
  };
  for (const name of ["partitions", "max_bad_records", "max_line_bytes"]) {
    if (!isInt(cfg[name])) throw new EventError(`event field 'job' is malformed: ${name} is not an integer`);
  }
  if (cfg.partitions < 1 || cfg.partitions > 100000) throw new EventError(`partitions must be between 1 and 100000, got ${cfg.partitions}`);
  if (cfg.max_bad_records < 0) throw new EventError(`max_bad_records must be >= 0, got ${cfg.max_bad_records}`);
  return cfg;
}

/** A parsed task event: the coordinates, status key and URIs of one map or reduce task. */
export class TaskSpec {
  static parse(event, phase) {
    if (event === null || typeof event !== "object" || Array.isArray(event)) throw new EventError(`event must be a JSON object`);
    if (event.version !== EVENT_VERSION) {
      throw new EventError(`event version ${JSON.stringify(event.version) ?? "None"} is not ${EVENT_VERSION}: ` +
        `the deployed handler and the driver are from different releases`);
    }
    if (typeof event.job_dir !== "string" || !event.job_dir) throw new EventError("event field 'job_dir' must be a storage URI");
    const task = event.task;
    if (task === null || typeof task !== "object" || task.phase !== phase) throw new EventError(`event field 'task' must describe a ${phase} task`);
    if (typeof event.job_id !== "string" || !JOB_ID_RE.test(event.job_id) || event.job_id.includes("..")) {
      throw new EventError(`invalid job id ${JSON.stringify(event.job_id)}: use 1-200 letters, digits and . _ = + - (starting with a letter or digit)`);
    }
    const spec = new TaskSpec();
    spec.phase = phase;
    spec.jobId = event.job_id;
    spec.jobDir = event.job_dir;
    spec.job = jobConfig(event.job);
    spec.attempt = intField(task, "attempt", "positive", 1);
    spec.step = intField(task, "step", "non-negative", 0);
    if (event.output !== undefined && event.output !== null) {
      if (typeof event.output !== "string" || !event.output) throw new EventError(`event field 'output' must be a storage URI`);
      spec.output = event.output;
    } else {
      spec.output = null;
    }
    if (phase === "map") {
      if (!isInt(task.index) || task.index < 0) throw new EventError(`map task index must be a non-negative integer, got ${JSON.stringify(task.index)}`);
      spec.index = task.index;
      spec.count = intField(task, "count", "non-negative", 0);
      spec.listName = spec.step === 0 ? "splits" : "runs";
    } else {
      for (const name of ["round", "partition", "group"]) {
        if (!isInt(task[name])) throw new EventError(`reduce task needs integer round/partition/group: ${name}`);
      }
      if (task.round < 1 || task.partition < 0 || task.group < 0) throw new EventError(`reduce task coordinates out of range: ${JSON.stringify(task)}`);
      Object.assign(spec, { round: task.round, partition: task.partition, group: task.group, final: Boolean(task.final) });
      spec.listName = "inputs";
    }
    spec.items = null;
    spec.itemsUri = null;
    if (spec.listName in event) {
      if (!Array.isArray(event[spec.listName])) throw new EventError(`event field '${spec.listName}' must be a list`);
      spec.items = event[spec.listName];
    } else if (`${spec.listName}_uri` in event) {
      if (typeof event[`${spec.listName}_uri`] !== "string") throw new EventError(`event field '${spec.listName}_uri' must be a storage URI`);
      spec.itemsUri = event[`${spec.listName}_uri`];
    }
    return spec;
  }

  /** The event's task member as the status records copy it. */
  taskDict() {
    const fields = this.phase === "map"
      ? { index: this.index, count: this.count }
      : { round: this.round, partition: this.partition, group: this.group, final: this.final };
    const task = { phase: this.phase, ...fields };
    if (this.step) task.step = this.step;
    task.attempt = this.attempt;
    return task;
  }

  get stepDir() {
    return stepDir(this.jobDir, this.step);
  }

  statusKey() {
    if (this.phase === "map") return stepScoped(this.step, `map/${pad(this.index, 5)}`);
    return stepScoped(this.step, `reduce/r${pad(this.round, 3)}/p${pad(this.partition, 5)}-g${pad(this.group, 5)}`);
  }

  statusUri() {
    return st.join(this.jobDir, "status", this.statusKey() + ".json");
  }

  failedAttemptUri(token) {
    return st.join(this.jobDir, "status", `${this.statusKey()}.failed-${token}.json`);
  }

  describe() {
    const text = this.phase === "map"
      ? `map task ${this.index}` + (this.count ? ` of ${this.count}` : "")
      : `${this.final ? "final reduce" : "reduce"} task (round ${this.round}, partition ${this.partition}, group ${this.group})`;
    return this.step ? `step ${this.step + 1} ${text}` : text;
  }

  mapRunUri(token, partition) {
    return st.join(this.stepDir, "map", pad(this.index, 5), token, `part-${pad(partition, 5)}`);
  }

  reduceRunUri(token, name) {
    return st.join(this.stepDir, "reduce", `r${pad(this.round, 3)}`, `p${pad(this.partition, 5)}-g${pad(this.group, 5)}`, token, name);
  }

  partUri(output) {
    return st.join(output, `part-${pad(this.partition, 5)}`);
  }

  mapOnlyPartUri(output) {
    return st.join(output, `part-m-${pad(this.index, 5)}`);
  }

  /** uri, checked to lie under the job directory (intermediate data lives there). */
  insideJobDir(uri, what) {
    try {
      const rel = typeof uri === "string" ? st.relativeTo(uri, this.jobDir) : null;
      if (rel) return st.join(this.jobDir, rel);
    } catch {
      // refused below
    }
    throw new EventError(`${what} must lie under the job directory, got ${JSON.stringify(uri)}`);
  }

  /** The task's list: inline, or stored under the job directory. */
  async loadList() {
    let value;
    if (this.items !== null) value = this.items;
    else if (this.itemsUri !== null) {
      const uri = this.insideJobDir(this.itemsUri, `event field '${this.listName}_uri'`);
      value = JSON.parse((await st.forUri(uri).readBytes(uri)).toString("utf8"));
    } else {
      throw new EventError(`event has neither '${this.listName}' nor '${this.listName}_uri'`);
    }
    if (!Array.isArray(value)) throw new EventError(`event field '${this.listName}' must be a list`);
    return value;
  }
}

/** Failure kinds, and whether a retry can help (the contract's table). */
export const RETRYABLE = { input: false, job: false, cancelled: false, task: true, platform: true };
/** The error type the invocation reports, by failure kind. */
export const FAILURE_OF_KIND = { input: "TaskInputError", job: "TaskJobError", task: "TaskError" };
