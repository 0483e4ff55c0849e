// The reduce task's entry point (Lambda handler lambda_src/nodejs/reducer.handler), as
// lambda_src/reducer.py: merge up to F sorted runs of one partition; an intermediate round writes
// one merged run (combined, when the job has a combiner); the final round runs the reducer once per
// key and writes the partition's CSV part file, or, in a step before the last, the reducer's pairs
// as a run for the next step's mappers.

import { decode, encodeKey, encodeValue } from "./codec.mjs";
import { EventError } from "./contract.mjs";
import { loadJob } from "./job.mjs";
import { Sink, csvRow } from "./output.mjs";
import { LineReader } from "./reader.mjs";
import { Merge, checkPair, combineMerged, forEachGroup, valuesOf } from "./shuffle.mjs";
import * as st from "./storage.mjs";
import { run } from "./task.mjs";

export const handler = (event, context) => run(event, context, "reduce", body);

/** Read-ahead per run, bounded in total whatever the fan-in. */
const chunkSize = (inputs) => Math.max(64 << 10, Math.min(1 << 20, (64 << 20) / Math.max(1, inputs)));

async function body(spec, token) {
  const inputs = (await spec.loadList()).map((uri) => spec.insideJobDir(uri, "a reduce input"));
  const job = await loadJob(spec.job.ref, spec.job.params);
  if (spec.step >= job.steps.length) {
    throw new EventError(`the event names step ${spec.step + 1}, but ${spec.job.ref} has ${job.steps.length} step(s)`);
  }
  const step = job.steps[spec.step];
  const last = spec.step === job.steps.length - 1;
  if (inputs.some((uri) => uri.endsWith(".arrow"))) {
    throw new EventError("the Node.js handlers read runs of lines, not Arrow runs (a Python job's table shuffle)");
  }
  const sizes = await Promise.all(inputs.map((uri) => st.forUri(uri).size(uri)));
  const chunk = chunkSize(inputs.length);
  const merge = new Merge(inputs.map((uri) => new LineReader(st.forUri(uri).iterRange(uri, 0, null, chunk))));
  if (spec.final && last && spec.output === null) throw new EventError("a final reduce task needs the event field 'output'");
  const uri = !spec.final ? spec.reduceRunUri(token, "run") : last ? spec.partUri(spec.output) : spec.reduceRunUri(token, "pairs");
  const sink = new Sink(uri);
  let keys = 0;
  let records;
  let size;
  try {
    if (spec.final) {
      keys = await forEachGroup(merge, (keyBytes, lines) => {
        for (const pair of step.reducer(decode(keyBytes.toString("utf8")), valuesOf(lines))) {
          checkPair(pair, "reducer");
          sink.add(last ? csvRow(pair[0], pair[1]) : `${encodeKey(pair[0])}\t${encodeValue(pair[1])}\n`);
        }
      });
    } else if (step.combiner !== null) {
      keys = await combineMerged(merge, step.combiner, `reduce round ${spec.round}, partition ${spec.partition}`,
        (line) => sink.add(line));
    } else {
      for (let batch = await merge.nextBatch(); batch.length; batch = await merge.nextBatch()) {
        for (const line of batch) sink.add(line);
      }
    }
    ({ records, bytes: size } = await sink.close());
  } finally {
    sink.abort();
  }
  return {
    outputs: [{ partition: spec.partition, uri, records, bytes: size }],
    stats: { input_records: merge.records, keys, output_records: records, output_bytes: size, mode: "record",
             inputs: inputs.length, input_bytes: sizes.reduce((a, b) => a + b, 0) },
  };
}
