// The shuffle's moving parts (lambda_src/shuffle.py for Python): the map-side buffer that groups,
// combines and partitions a mapper's pairs into sorted runs, and the reduce side's k-way merge of
// sorted runs and grouping by key bytes.

import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

import { EncodeError, decode, encodeKey, encodeValue, partitionOf, sortLines, valueOf } from "./codec.mjs";
import { LineReader } from "./reader.mjs";
import { writeChunked } from "./storage.mjs";
import { CombinerKeyError } from "./task.mjs";

export function checkPair(pair, who = "mapper") {
  if (!Array.isArray(pair) || pair.length !== 2) {
    let shown;
    try {
      shown = JSON.stringify(pair);
    } catch {
      shown = String(pair);
    }
    throw new EncodeError(`the ${who} emitted ${shown}, not a [key, value] pair`);
  }
}

/** Run a combiner on one key's values; its output values (it must keep the key). */
export function combineValues(combiner, keyText, values, where) {
  const out = [];
  for (const pair of combiner(decode(keyText), values[Symbol.iterator]())) {
    checkPair(pair, "combiner");
    const outKey = encodeKey(pair[0]);
    if (outKey !== keyText) {
      throw new CombinerKeyError(`the combiner changed key ${keyText} into ${outKey}${where ? ` (${where})` : ""}; ` +
        `a combiner must emit the key it is given, because it may run in any round`);
    }
    out.push(pair[1]);
  }
  return out;
}

/**
 * Collects a map task's pairs, as lambda_src/shuffle.py's MapOutputBuffer does (the same flush
 * points, so the same bytes). With a combiner, values are grouped by their key's canonical
 * encoding and combined whenever flushValues are held; when still half as many are held they
 * become sorted runs, one per partition. Without one, pairs are encoded as lines and become
 * runs every flushValues pairs. Runs stay in memory until they pass spillChars, then go to
 * temporary files, so a map task's memory stays bounded whatever its output size.
 */
export class MapOutputBuffer {
  constructor(partitions, combiner, { flushValues = 1_000_000, spillChars = 128 << 20 } = {}) {
    this.partitions = partitions;
    this.combiner = combiner;
    this.flushValues = flushValues;
    this.spillChars = spillChars;
    this.groups = new Map();
    this.pending = Array.from({ length: partitions }, () => []);
    this.held = 0;
    this.recordsIn = 0;
    // runs[p]: sorted runs of partition p, each an array of lines (strings) or a spill file's path
    this.runs = Array.from({ length: partitions }, () => []);
    this.memoryChars = 0;
    this.spills = 0;
    this.spillDir = null;
  }

  /** Add one record's pairs (checked first: a bad pair adds none of them). */
  add(pairs) {
    for (const pair of pairs) checkPair(pair);
    this.recordsIn += pairs.length;
    this.held += pairs.length;
    if (this.combiner === null) {
      for (const [key, value] of pairs) {
        const k = encodeKey(key);
        this.pending[partitionOf(k, this.partitions)].push(k + "\t" + encodeValue(value) + "\n");
      }
      if (this.held >= this.flushValues) this.#writeRuns();
      return;
    }
    const groups = this.groups;
    for (const [key, value] of pairs) {
      const k = encodeKey(key);
      const values = groups.get(k);
      if (values === undefined) groups.set(k, [value]);
      else values.push(value);
    }
    if (this.held >= this.flushValues) {
      this.#combine();
      if (this.held >= this.flushValues >> 1) this.#writeRuns();
    }
  }

  #combine() {
    let held = 0;
    for (const [k, values] of this.groups) {
      if (values.length > 1) this.groups.set(k, combineValues(this.combiner, k, values, "map output"));
      held += this.groups.get(k).length;
    }
    this.held = held;
  }

  /** What is held becomes one sorted run per non-empty partition. */
  #writeRuns() {
    for (const [k, values] of this.groups) {
      const target = this.pending[partitionOf(k, this.partitions)];
      for (const value of values) target.push(k + "\t" + encodeValue(value) + "\n");
    }
    this.groups = new Map();
    this.held = 0;
    for (let p = 0; p < this.partitions; p++) {
      const lines = this.pending[p];
      if (!lines.length) continue;
      this.runs[p].push(sortLines(lines));
      for (const line of lines) this.memoryChars += line.length;
      this.pending[p] = [];
    }
    if (this.memoryChars > this.spillChars) this.#spill();
  }

  #spill() {
    this.spillDir ??= fs.mkdtempSync(path.join(process.env.LAMBDAMR_SPILL_DIR || os.tmpdir(), "lambdamr-spill-"));
    for (const runs of this.runs) {
      for (let i = 0; i < runs.length; i++) {
        if (typeof runs[i] === "string") continue;
        const file = path.join(this.spillDir, `run-${this.spills}-${i}-${randomBytes(4).toString("hex")}`);
        const fd = fs.openSync(file, "wx");
        try {
          writeChunked(fd, Buffer.from(runs[i].join(""), "utf8"));
        } finally {
          fs.closeSync(fd);
        }
        runs[i] = file;
      }
    }
    this.memoryChars = 0;
    this.spills++;
  }

  /**
   * For each partition, null when empty, its sorted lines (strings) when they are one run in
   * memory, else a Merge of its runs and whether to combine the merged stream.
   */
  finish() {
    if (this.groups.size || this.pending.some((lines) => lines.length)) {
      if (this.combiner !== null) this.#combine();
      this.#writeRuns();
    }
    if (this.runs.some((runs) => runs.length > 1 || runs.some((r) => typeof r === "string"))) this.#spill();
    return this.runs.map((runs) => {
      if (!runs.length) return null;
      if (typeof runs[0] !== "string") return runs[0];
      const readers = runs.map((file) => new LineReader(fileChunks(file)));
      return { merge: new Merge(readers), combine: this.combiner !== null && runs.length > 1 };
    });
  }

  /** Delete the spill files. */
  close() {
    if (this.spillDir !== null) fs.rmSync(this.spillDir, { recursive: true, force: true });
  }
}

async function* fileChunks(file) {
  const fh = await fs.promises.open(file, "r");
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (!bytesRead) return;
      yield Buffer.from(buf.subarray(0, bytesRead));
    }
  } finally {
    await fh.close();
  }
}

/** Combine every key group of a merged stream (the combiner may run in any round); emit lines. */
export async function combineMerged(merge, combiner, where, emit) {
  return forEachGroup(merge, (keyBytes, lines) => {
    const keyText = keyBytes.toString("utf8");
    for (const v of combineValues(combiner, keyText, [...valuesOf(lines)], where)) emit(`${keyText}\t${encodeValue(v)}\n`);
  });
}

/** Bytewise order of two lines (Buffers). */
const compare = (a, b) => Buffer.compare(a, b);

/**
 * A k-way merge of sorted runs (LineReaders), handed out in batches: each batch holds the lines
 * available without waiting for a read; an empty batch is the end.
 */
export class Merge {
  constructor(readers) {
    this.readers = readers;
    this.heap = null;
    this.records = 0;
  }

  async #start() {
    const live = [];
    for (const r of this.readers) if (await r.fill()) live.push(r);
    this.heap = live;
    for (let i = (live.length >> 1) - 1; i >= 0; i--) this.#down(i);
  }

  #head(r) {
    return r.lines[r.pos];
  }

  #down(i) {
    const h = this.heap;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < h.length && compare(this.#head(h[l]), this.#head(h[m])) < 0) m = l;
      if (r < h.length && compare(this.#head(h[r]), this.#head(h[m])) < 0) m = r;
      if (m === i) return;
      [h[i], h[m]] = [h[m], h[i]];
      i = m;
    }
  }

  async nextBatch() {
    if (this.heap === null) await this.#start();
    const h = this.heap;
    const batch = [];
    while (h.length) {
      const top = h[0];
      batch.push(top.lines[top.pos++]);
      if (top.pos >= top.lines.length) {
        if (batch.length > 1) {
          top.pos--; // hand out what is here; refill on the next call
          batch.pop();
          break;
        }
        if (!(await top.fill())) {
          h[0] = h[h.length - 1];
          h.pop();
        }
      }
      if (h.length) this.#down(0);
    }
    this.records += batch.length;
    return batch;
  }
}

/**
 * Calls onGroup(keyBytes, lines) for each key of a merged stream (lines: that key's lines, held
 * until the key ends, since a generator reducer takes its values synchronously).
 */
export async function forEachGroup(merge, onGroup) {
  let key = null;
  let lines = [];
  let keys = 0;
  for (let batch = await merge.nextBatch(); batch.length; batch = await merge.nextBatch()) {
    for (const line of batch) {
      const tab = line.indexOf(9);
      if (tab < 0) throw new TypeError(`a shuffle line without a tab: ${line.toString("utf8", 0, 80)}`);
      const k = line.subarray(0, tab);
      if (key !== null && k.equals(key)) {
        lines.push(line);
        continue;
      }
      if (key !== null) await onGroup(key, lines);
      keys++;
      key = k;
      lines = [line];
    }
  }
  if (key !== null) await onGroup(key, lines);
  return keys;
}

/** The decoded values of one key's lines, lazily. */
export function* valuesOf(lines) {
  for (const line of lines) yield valueOf(line);
}
