// The Node.js job API: a module exporting generator functions, mirroring lambda_src/job.py.
//
//   export function* mapper(key, line) { for (const w of line.split(/\s+/)) if (w) yield [w, 1]; }
//   export function* combiner(key, values) { let n = 0; for (const v of values) n += v; yield [key, n]; }
//   export const reducer = combiner;
//
// mapper(key, line) gets one line without its ending (key: the input's name, or null); each
// function yields [key, value] pairs of JSON values (see codec.mjs for how numbers map onto
// the contract's integers and floats). combiner (optional) must emit the key it is given.
// reducer runs once per key in the final round; a module without one is map-only.
// Optional exports: mapperInit() / mapperFinal() (once per map task, around the mapper; the
// final one may yield pairs), params (defaults of the job's parameters: {name: "value"}),
// inputNames (the named inputs it reads), and steps() returning a list of
// {mapper, combiner, reducer, mapperInit, mapperFinal, partitions} for a multi-step job.
// Every function is called with `this` bound to the job: this.params (the defaults overlaid
// with the job's --param values), this.param(name, default), this.float(x) (a float even when
// integral), this.parseJson(text) (JSON as the contract reads it) and this.BadRecord (throw one
// for a record the mapper cannot parse).

import * as path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

import { decode, float } from "./codec.mjs";

/** Where the package's files are: this module lies at <root>/lambda_src/nodejs/job.mjs. */
export const CODE_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const REF_RE = /^job\/([A-Za-z0-9_.@-]+\/)*[A-Za-z0-9_.@-]+\.(mjs|cjs|js)$/;

/** Raised by a mapper for an input record it cannot parse (skipped up to --max-bad-records). */
export class BadRecord extends Error {}
BadRecord.prototype.name = "BadRecord";

export class JobCodeError extends Error {}
JobCodeError.prototype.name = "JobCodeError";

const modules = new Map();

/** The job module a ref (its path in the package: job/<name>.mjs) names, imported once. */
export async function loadModule(ref) {
  if (modules.has(ref)) return modules.get(ref);
  if (typeof ref !== "string" || !REF_RE.test(ref) || ref.split("/").includes("..")) {
    throw new JobCodeError(`invalid Node.js job reference ${JSON.stringify(ref)}: expected the module's path in the package, job/<name>.mjs`);
  }
  let mod;
  try {
    mod = await import(pathToFileURL(path.join(CODE_ROOT, ref)).href);
  } catch (err) {
    throw new JobCodeError(`cannot import job module ${ref}: ${err.message} (is it in the deployed zip?)`);
  }
  modules.set(ref, mod);
  return mod;
}

function fn(mod, name) {
  const f = mod[name];
  if (f === undefined || f === null) return null;
  if (typeof f !== "function") throw new JobCodeError(`the job module's export ${name} is not a function`);
  return f;
}

/** A job: its parameters, and its steps with their functions bound to it. */
export class Job {
  constructor(mod, params, where) {
    this.where = where;
    const defaults = mod.params ?? {};
    if (typeof defaults !== "object" || Array.isArray(defaults)) throw new JobCodeError(`${where}: export params must be an object of defaults`);
    this.params = { ...defaults, ...params };
    this.inputNames = mod.inputNames ?? null;
    if (this.inputNames !== null && !(Array.isArray(this.inputNames) && this.inputNames.every((n) => typeof n === "string"))) {
      throw new JobCodeError(`${where}: export inputNames must be a list of input names`);
    }
    const stepsFn = fn(mod, "steps");
    const raw = stepsFn
      ? stepsFn.call(this)
      : [{ mapper: fn(mod, "mapper"), combiner: fn(mod, "combiner"), reducer: fn(mod, "reducer"),
           mapperInit: fn(mod, "mapperInit"), mapperFinal: fn(mod, "mapperFinal") }];
    if (!Array.isArray(raw) || !raw.length) throw new JobCodeError(`${where}: steps() must return a non-empty list of steps`);
    this.steps = raw.map((step, n) => this.#checkStep(step, n, raw.length));
  }

  #checkStep(step, n, count) {
    const label = `${this.where}: step ${n + 1} of ${count}`;
    if (step === null || typeof step !== "object") throw new JobCodeError(`${label} is not an object`);
    const out = {};
    for (const name of ["mapper", "combiner", "reducer", "mapperInit", "mapperFinal"]) {
      const f = step[name] ?? null;
      if (f !== null && typeof f !== "function") throw new JobCodeError(`${label}: ${name} is not a function`);
      out[name] = f === null ? null : f.bind(this);
    }
    if (out.reducer === null && count > 1) throw new JobCodeError(`${label} has no reducer; every step of a multi-step job needs one`);
    const partitions = step.partitions ?? null;
    if (partitions !== null && !(Number.isInteger(partitions) && partitions >= 1 && partitions <= 100000)) {
      throw new JobCodeError(`${label}: partitions must be between 1 and 100000, got ${partitions}`);
    }
    out.partitions = partitions;
    return out;
  }

  /** A float even when integral (see codec.mjs): this.float(2) is written 2.0. */
  float(x) {
    return float(x);
  }

  /** JSON parsed as the contract reads it (Python's dialect): 1.0 stays a Float, 2**64 a BigInt. */
  parseJson(text) {
    return decode(text);
  }

  get BadRecord() {
    return BadRecord;
  }

  param(name, dflt = undefined) {
    if (name in this.params) return this.params[name];
    if (dflt === undefined) throw new Error(`job ${this.where} needs parameter ${JSON.stringify(name)} (pass --param ${name}=...)`);
    return dflt;
  }

  /** What the driver needs to plan the job (engine/jobcode.py reads it). */
  shape() {
    return {
      input_names: this.inputNames,
      steps: this.steps.map((s) => ({ partitions: s.partitions, reducer: s.reducer !== null, combiner: s.combiner !== null })),
    };
  }
}

export async function loadJob(ref, params) {
  return new Job(await loadModule(ref), params, ref);
}
