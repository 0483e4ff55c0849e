// Reading a map task's input splits: line-oriented UTF-8 text, plain or gzip, with the contract's
// split ownership (a split owns each line whose first byte lies in [start, end)) and the rules of
// lambda_src/formats.py (TextFormat): a BOM at byte 0 is dropped, "\r\n" endings lose their "\r",
// a line longer than max_line_bytes is refused wherever it lies, invalid UTF-8 is a bad record.

import { Readable } from "node:stream";
import * as zlib from "node:zlib";

import * as st from "./storage.mjs";
import { InputError } from "./task.mjs";

const SCAN_STEP = 64 * 1024;
const BOM = Buffer.from([0xef, 0xbb, 0xbf]);
const MAGIC = [
  [[0x1f, 0x8b], "gzip (name the object .gz to have it decompressed)"],
  [Buffer.from("BZh"), "bzip2"],
  [[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], "xz"],
  [[0x28, 0xb5, 0x2f, 0xfd], "zstd"],
  [[0x04, 0x22, 0x4d, 0x18], "lz4"],
  [Buffer.from("PAR1"), "Parquet"],
  [Buffer.from("ORC"), "ORC"],
  [Buffer.from("Obj\x01"), "Avro"],
  [Buffer.from("PK\x03\x04"), "zip"],
  [[0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c], "7-Zip"],
].map(([magic, what]) => [Buffer.from(magic), what]);

/** A split, as the event describes it. */
export function segment(data) {
  const seg = {
    uri: String(data?.uri), start: Number(data?.start), end: Number(data?.end), size: Number(data?.size),
    compression: data?.compression || null, input: data?.input || null, version: String(data?.version || ""),
    format: String(data?.format || "text"),
  };
  if (data?.uri === undefined || ![seg.start, seg.end, seg.size].every(Number.isInteger)) {
    throw new InputError(`malformed split description: ${JSON.stringify(data)}`);
  }
  if (!(seg.start >= 0 && seg.start <= seg.end && seg.end <= seg.size)) {
    throw new InputError(`split range ${seg.start}-${seg.end} is outside 0-${seg.size}`);
  }
  if (seg.format !== "text") throw new InputError(`the Node.js handlers read text splits only, not format ${JSON.stringify(seg.format)}`);
  if (![null, "gzip"].includes(seg.compression)) throw new InputError(`unsupported compression ${JSON.stringify(seg.compression)} for ${seg.uri}`);
  return seg;
}

/** Refuse to read an object that changed (or vanished) since the job was planned. */
export async function checkUnchanged(segments) {
  const planned = new Map(segments.filter((s) => s.version).map((s) => [s.uri, s]));
  await Promise.all([...planned.values()].map(async (seg) => {
    let now;
    try {
      now = await st.forUri(seg.uri).stat(seg.uri);
    } catch (err) {
      if (err instanceof st.NotFound) throw new InputError(`${seg.uri} was deleted after the job was planned`);
      throw err;
    }
    if (now.size !== seg.size || now.version !== seg.version) {
      throw new InputError(`${seg.uri} changed after the job was planned (size ${seg.size}, version ${seg.version} then; ` +
        `size ${now.size}, version ${now.version} now): a job reads the data it planned or none; start a new job (another job id) to read it`);
    }
  }));
}

const tooLong = (uri, what, maxLineBytes) =>
  new InputError(`${uri}: ${what} is longer than ${maxLineBytes} bytes (raise --max-line-bytes, or check that the input is line-oriented text)`);

/** The offset of the first line that starts at or after pos. */
async function nextLineStart(store, uri, pos, size, maxLineBytes) {
  if (pos <= 0) return 0;
  if (pos >= size) return size;
  let scanned = 0;
  let cursor = pos - 1;
  while (cursor < size) {
    const chunk = await store.readBytes(uri, cursor, Math.min(cursor + SCAN_STEP, size));
    if (!chunk.length) return size;
    const idx = chunk.indexOf(10);
    if (idx >= 0 && scanned + idx <= maxLineBytes) return cursor + idx + 1;
    cursor += chunk.length;
    scanned += chunk.length;
    if (idx >= 0 || scanned > maxLineBytes) throw tooLong(uri, `the line crossing byte ${pos}`, maxLineBytes);
  }
  return size;
}

/** The byte range of the whole lines a split owns. */
export async function alignedRange(store, seg, maxLineBytes) {
  if (seg.compression) return [0, seg.size];
  const start = await nextLineStart(store, seg.uri, seg.start, seg.size, maxLineBytes);
  const end = seg.end >= seg.size ? seg.size : await nextLineStart(store, seg.uri, seg.end, seg.size, maxLineBytes);
  return [start, Math.max(start, end)];
}

function firstLongLine(data, maxLineBytes) {
  let pos = 0;
  while (data.length - pos > maxLineBytes + 1) {
    const nl = data.subarray(pos, pos + maxLineBytes + 1).lastIndexOf(10);
    if (nl < 0) return pos;
    pos += nl + 1;
  }
  return -1;
}

async function* gunzip(chunks, uri) {
  const stream = Readable.from(chunks).pipe(zlib.createGunzip());
  try {
    for await (const out of stream) yield out;
  } catch (err) {
    if (err instanceof st.StorageError) throw err;
    throw new InputError(`${uri}: corrupt gzip data: ${err.message}`);
  }
}

const strict = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** A block of consecutive lines: lines[i] is the i-th newline-separated piece of raw. */
class Block {
  constructor(base, raw, lines) {
    this.base = base;
    this.raw = raw;
    this.lines = lines;
  }

  get size() {
    return this.raw.length;
  }

  offset(index) {
    let pos = 0;
    for (let i = 0; i < index; i++) pos = this.raw.indexOf(10, pos) + 1;
    return this.base + pos;
  }
}

const stripCr = (lines) => lines.map((line) => (line.endsWith("\r") ? line.slice(0, -1) : line));

function* blocks(data, base, onBadBytes) {
  let text = null;
  try {
    text = strict.decode(data);
  } catch {
    // invalid UTF-8 somewhere: cut the block around the bad lines below
  }
  if (text !== null) {
    let lines = text.split("\n");
    if (data[data.length - 1] === 10) lines.pop();
    if (text.includes("\r")) lines = stripCr(lines);
    if (lines.length) yield new Block(base, data, lines);
    return;
  }
  let runStart = 0;
  let good = [];
  let pos = 0;
  while (pos < data.length) {
    const nl = data.indexOf(10, pos);
    const stop = nl < 0 ? data.length : nl;
    const piece = data.subarray(pos, stop);
    try {
      good.push(strict.decode(piece));
    } catch {
      if (good.length) {
        yield new Block(base + runStart, data.subarray(runStart, pos), stripCr(good));
        good = [];
      }
      onBadBytes(base + pos, piece);
      runStart = stop + 1;
    }
    pos = stop + 1;
  }
  if (good.length) yield new Block(base + runStart, data.subarray(runStart), stripCr(good));
}

/** The split's lines in blocks, line endings removed. */
export async function* iterBlocks(seg, onBadBytes, maxLineBytes) {
  const store = st.forUri(seg.uri);
  const [start, end] = await alignedRange(store, seg, maxLineBytes);
  if (start >= end && !seg.compression) return;
  let base = start;
  let carry = Buffer.alloc(0);
  let first = start === 0 && !seg.compression;
  let atBom = start === 0;
  const chunks = seg.compression === "gzip" ? gunzip(store.iterRange(seg.uri, 0, null), seg.uri) : store.iterRange(seg.uri, start, end);
  for await (const chunk of chunks) {
    if (first) {
      for (const [magic, what] of MAGIC) {
        if (chunk.subarray(0, magic.length).equals(magic)) {
          throw new InputError(`${seg.uri}: unsupported format or compression (${what}); the input must be line-oriented UTF-8 text, plain or gzip (.gz)`);
        }
      }
      first = false;
    }
    let data = carry.length ? Buffer.concat([carry, chunk]) : chunk;
    if (atBom) {
      if (data.length < BOM.length && BOM.subarray(0, data.length).equals(data)) {
        carry = data;
        continue;
      }
      atBom = false;
      if (data.subarray(0, 3).equals(BOM)) {
        data = data.subarray(3);
        base += 3;
      }
    }
    const cut = data.lastIndexOf(10);
    if (cut < 0) {
      carry = data;
    } else {
      carry = data.subarray(cut + 1);
      const whole = data.subarray(0, cut + 1);
      const longAt = firstLongLine(whole, maxLineBytes);
      if (longAt >= 0) throw tooLong(seg.uri, `the line at byte ${base + longAt}`, maxLineBytes);
      yield* blocks(whole, base, onBadBytes);
      base += cut + 1;
    }
    if (carry.length > maxLineBytes) throw tooLong(seg.uri, `the line at byte ${base}`, maxLineBytes);
  }
  if (carry.length) yield* blocks(carry, base, onBadBytes);
}

/** Lines (Buffers, each ending in its newline) of a stream of byte chunks. */
export class LineReader {
  constructor(chunks) {
    this.chunks = chunks[Symbol.asyncIterator]();
    this.lines = [];
    this.pos = 0;
    this.carry = null;
    this.done = false;
  }

  /** Refill the buffer; false at the end. */
  async fill() {
    while (this.pos >= this.lines.length && !this.done) {
      const { value, done } = await this.chunks.next();
      this.lines = [];
      this.pos = 0;
      if (done) {
        this.done = true;
        if (this.carry?.length) this.lines.push(Buffer.concat([this.carry, Buffer.from("\n")]));
        this.carry = null;
        break;
      }
      const data = this.carry?.length ? Buffer.concat([this.carry, value]) : value;
      let start = 0;
      for (let nl = data.indexOf(10); nl >= 0; nl = data.indexOf(10, start)) {
        this.lines.push(data.subarray(start, nl + 1));
        start = nl + 1;
      }
      this.carry = data.subarray(start);
    }
    return this.pos < this.lines.length;
  }
}
