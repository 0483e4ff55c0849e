// What the driver needs to plan a Node.js job, printed as JSON (engine/jobcode.py runs it):
//   node describe.mjs MODULE_PATH PARAMS_JSON
// -> {"input_names": [...] | null, "steps": [{"partitions": n | null, "reducer": bool, "combiner": bool}]}
// A module that cannot be loaded as a job exits with status 2 and says why on stderr.

import { pathToFileURL } from "node:url";

import { Job } from "./job.mjs";

const [modulePath, paramsJson] = process.argv.slice(2);
const out = process.stdout.write.bind(process.stdout);
console.log = console.info = console.error; // a module that prints while loading keeps stdout the shape's
try {
  const mod = await import(pathToFileURL(modulePath).href);
  const job = new Job(mod, JSON.parse(paramsJson || "{}"), modulePath);
  out(JSON.stringify(job.shape()));
} catch (err) {
  process.stderr.write(`${err?.name ?? "Error"}: ${err?.message ?? err}\n`);
  process.exit(2);
}
