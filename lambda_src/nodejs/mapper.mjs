// The map task's entry point (Lambda handler lambda_src/nodejs/mapper.handler), as
// lambda_src/mapper.py: read the splits (or a later step's runs), run the job's mapper and
// combiner, write one sorted run per non-empty partition, then commit the status record.

import { decode } from "./codec.mjs";
import { loadJob, BadRecord } from "./job.mjs";
import { Sink, csvRow } from "./output.mjs";
import { LineReader, checkUnchanged, iterBlocks, segment } from "./reader.mjs";
import { MapOutputBuffer, checkPair, combineMerged } from "./shuffle.mjs";
import * as st from "./storage.mjs";
import { EventError } from "./contract.mjs";
import { InputError, TaskFailure, kindOf, run, sample } from "./task.mjs";

export const handler = (event, context) => run(event, context, "map", body);

/** Errors of a record the mapper cannot parse (rather than a bug in the job). */
const isRecordError = (err) => err instanceof BadRecord || err instanceof SyntaxError || err instanceof RangeError;

class BadRecords {
  constructor(allowed, where) {
    this.allowed = allowed;
    this.where = where;
    this.count = 0;
    this.samples = [];
  }

  add(uri, offset, raw, reason) {
    this.count++;
    const line = sample(raw);
    if (this.count > this.allowed) {
      const allowed = this.allowed === 0 ? "no bad records are allowed" : `more than the ${this.allowed} allowed by max_bad_records`;
      throw new InputError(`bad record in ${uri} at byte ${offset}: ${reason} (line: ${JSON.stringify(line)}); ${allowed} ` +
        `(raise --max-bad-records to skip such records)`);
    }
    if (this.samples.length < 5) this.samples.push({ uri, offset, reason, line });
  }
}

async function stepOf(spec) {
  const job = await loadJob(spec.job.ref, spec.job.params);
  if (spec.step >= job.steps.length) {
    throw new EventError(`the event names step ${spec.step + 1}, but ${spec.job.ref} has ${job.steps.length} step(s)`);
  }
  const step = job.steps[spec.step];
  return { job, step, partitions: step.partitions ?? spec.job.partitions };
}

async function body(spec, token) {
  const { step, partitions } = await stepOf(spec);
  const items = await spec.loadList();
  if (spec.step > 0) return laterStep(spec, step, partitions, items, token);
  const splits = items.map(segment);
  await checkUnchanged(splits);
  const bad = new BadRecords(spec.job.max_bad_records, spec.describe());
  if (step.reducer === null) return mapOnly(spec, step, splits, bad);
  const buffer = newBuffer(partitions, step.combiner);
  try {
    const stats = await mapRecords(step, splits, (pairs) => buffer.add(pairs), spec.job, bad);
    return await writeRuns(spec, buffer, token, { ...stats, ...badStats(bad), mode: "record" });
  } finally {
    buffer.close();
  }
}

const badStats = (bad) => (bad.samples.length ? { bad_records: bad.count, bad_samples: bad.samples } : { bad_records: bad.count });

/** Tuning (and tests): LAMBDAMR_MAP_FLUSH_VALUES, LAMBDAMR_MAP_SPILL_CHARS override the buffer's defaults. */
const newBuffer = (partitions, combiner) => new MapOutputBuffer(partitions, combiner, {
  ...(process.env.LAMBDAMR_MAP_FLUSH_VALUES && { flushValues: Number(process.env.LAMBDAMR_MAP_FLUSH_VALUES) }),
  ...(process.env.LAMBDAMR_MAP_SPILL_CHARS && { spillChars: Number(process.env.LAMBDAMR_MAP_SPILL_CHARS) }),
});

const asList = (pairs) => (Array.isArray(pairs) ? pairs : [...pairs]);

async function mapRecords(step, splits, add, cfg, bad) {
  const mapper = step.mapper ?? ((key, line) => [[key, line]]);
  let records = 0;
  let inputBytes = 0;
  if (step.mapperInit) step.mapperInit();
  for (const seg of splits) {
    const onBad = (offset, raw) => bad.add(seg.uri, offset, raw, `invalid UTF-8 at byte ${offset}`);
    for await (const block of iterBlocks(seg, onBad, cfg.max_line_bytes)) {
      const lines = block.lines;
      records += lines.length;
      inputBytes += block.size;
      for (let i = 0; i < lines.length; i++) {
        let pairs;
        try {
          pairs = asList(mapper(seg.input, lines[i])); // whole before adding: a failing record adds nothing
        } catch (err) {
          if (isRecordError(err)) {
            bad.add(seg.uri, block.offset(i), lines[i], `${err.name}: ${err.message}`);
            continue;
          }
          throw new TaskFailure(kindOf(err), `the mapper raised ${err?.name}: ${err?.message} on the line at byte ` +
            `${block.offset(i)} of ${seg.uri} (line: ${JSON.stringify(sample(lines[i]))})`, err);
        }
        if (pairs.length) add(pairs);
      }
    }
  }
  if (step.mapperFinal) add(asList(step.mapperFinal() ?? []));
  return { input_records: records, input_bytes: inputBytes };
}

async function writeRuns(spec, buffer, token, stats) {
  const outputs = [];
  const parts = buffer.finish();
  for (let p = 0; p < parts.length; p++) {
    if (parts[p] === null) continue;
    const uri = spec.mapRunUri(token, p);
    let records;
    let bytes;
    if (Array.isArray(parts[p])) {
      const data = Buffer.from(parts[p].join(""), "utf8");
      await st.forUri(uri).writeBytes(uri, data);
      [records, bytes] = [parts[p].length, data.length];
    } else {
      ({ records, bytes } = await writeMerged(uri, parts[p].merge, parts[p].combine && buffer.combiner, p));
    }
    outputs.push({ partition: p, uri, records, bytes });
  }
  Object.assign(stats, {
    output_records: outputs.reduce((n, o) => n + o.records, 0),
    output_bytes: outputs.reduce((n, o) => n + o.bytes, 0),
    spills: buffer.spills,
    mapper_records: buffer.recordsIn,
  });
  return { outputs, stats };
}

/** A partition's spilled runs, merged (and combined, when several runs hold its keys). */
async function writeMerged(uri, merge, combiner, partition) {
  const sink = new Sink(uri);
  try {
    if (combiner) {
      await combineMerged(merge, combiner, `map output partition ${partition}`, (line) => sink.add(line));
    } else {
      for (let batch = await merge.nextBatch(); batch.length; batch = await merge.nextBatch()) {
        for (const line of batch) sink.add(line);
      }
    }
    return await sink.close();
  } finally {
    sink.abort();
  }
}

/** A later step maps the (key, value) pairs of the previous step's final reducers. */
async function laterStep(spec, step, partitions, items, token) {
  const runs = items.map((uri) => spec.insideJobDir(uri, "an input run"));
  const buffer = newBuffer(partitions, step.combiner);
  const mapper = step.mapper ?? ((key, value) => [[key, value]]);
  let records = 0;
  let inputBytes = 0;
  try {
    if (step.mapperInit) step.mapperInit();
    for (const uri of runs) {
      const reader = new LineReader(st.forUri(uri).iterRange(uri));
      while (await reader.fill()) {
        for (; reader.pos < reader.lines.length; reader.pos++) {
          const line = reader.lines[reader.pos];
          const tab = line.indexOf(9);
          let key;
          let value;
          try {
            if (tab < 0) throw new SyntaxError("no tab");
            key = decode(line.toString("utf8", 0, tab));
            value = decode(line.toString("utf8", tab + 1, line.length - 1));
          } catch (err) {
            throw new InputError(`record ${records + 1} of ${uri} is not an intermediate (key, value) line: ${err.message} ` +
              `(line: ${JSON.stringify(sample(line))})`);
          }
          records++;
          inputBytes += line.length;
          let pairs;
          try {
            pairs = asList(mapper(key, value));
          } catch (err) {
            throw new TaskFailure(kindOf(err), `the step ${spec.step + 1} mapper raised ${err?.name}: ${err?.message} on the pair ` +
              `with key ${JSON.stringify(sample(line.subarray(0, tab)))} from ${uri}`, err);
          }
          if (pairs.length) buffer.add(pairs);
        }
      }
    }
    if (step.mapperFinal) buffer.add(asList(step.mapperFinal() ?? []));
    return await writeRuns(spec, buffer, token, { input_records: records, input_bytes: inputBytes, mode: "record" });
  } finally {
    buffer.close();
  }
}

/** A job without a reducer: the mapper's pairs, in input order, are the result. */
async function mapOnly(spec, step, splits, bad) {
  if (spec.output === null) throw new EventError("a map-only task needs the event field 'output'");
  const uri = spec.mapOnlyPartUri(spec.output);
  const sink = new Sink(uri);
  let stats;
  let records;
  let bytes;
  try {
    stats = await mapRecords(step, splits, (pairs) => {
      for (const pair of pairs) checkPair(pair);
      for (const [key, value] of pairs) sink.add(csvRow(key, value));
    }, spec.job, bad);
    ({ records, bytes } = await sink.close());
  } finally {
    sink.abort();
  }
  Object.assign(stats, badStats(bad), { mode: "record", output_records: records, output_bytes: bytes });
  return { outputs: [{ partition: null, uri, records, bytes }], stats };
}
