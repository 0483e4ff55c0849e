// Task outputs: runs of lines and the final CSV part files, formatted exactly as
// lambda_src/output.py formats them (Python's csv module, QUOTE_MINIMAL, "\n" line ends).

import { Float, floatRepr, jsonText } from "./codec.mjs";

/** Python's repr of a float (a CSV field): as in JSON, but nan, inf and -inf. */
const reprOf = (x) => (Number.isFinite(x) ? floatRepr(x) : Number.isNaN(x) ? "nan" : x > 0 ? "inf" : "-inf");
import * as st from "./storage.mjs";

function field(v) {
  if (v === null || v === undefined) return "";
  if (v === true) return "true";
  if (v === false) return "false";
  if (typeof v === "string") return v;
  if (v instanceof String) return v.valueOf();
  if (typeof v === "bigint") return v.toString();
  if (v instanceof Float) return reprOf(v.valueOf());
  if (typeof v === "number" || v instanceof Number) {
    const x = v.valueOf();
    return Number.isSafeInteger(x) ? String(x) : reprOf(x);
  }
  return jsonText(v);
}

const NEEDS_QUOTES = /[,"\n]/;

/** A CSV row of a result pair: the key, then the value; an array becomes several columns. */
export function csvRow(key, value) {
  const fields = [];
  for (const part of [key, value]) {
    if (Array.isArray(part)) for (const v of part) fields.push(field(v));
    else fields.push(field(part));
  }
  if (fields.length === 1 && fields[0] === "") return '""\n';
  return fields.map((f) => (NEEDS_QUOTES.test(f) ? `"${f.replaceAll('"', '""')}"` : f)).join(",") + "\n";
}

/** Collects text and writes it as one object (atomically) at the end. */
export class Sink {
  constructor(uri) {
    this.uri = uri;
    this.parts = [];
    this.pending = [];
    this.pendingChars = 0;
    this.records = 0;
    this.bytes = 0;
  }

  add(text) {
    this.pending.push(text);
    this.pendingChars += text.length;
    this.records++;
    if (this.pendingChars >= 1 << 20) this.#drain();
  }

  #drain() {
    if (!this.pending.length) return;
    const buf = Buffer.from(this.pending.join(""), "utf8");
    this.parts.push(buf);
    this.bytes += buf.length;
    this.pending = [];
    this.pendingChars = 0;
  }

  async close() {
    this.#drain();
    await st.forUri(this.uri).writeBytes(this.uri, Buffer.concat(this.parts));
    return { records: this.records, bytes: this.bytes };
  }
}

/** Write lines (Buffers with their newlines); return [records, bytes]. */
export async function writeLines(uri, lines) {
  const data = Buffer.concat(lines);
  await st.forUri(uri).writeBytes(uri, data);
  return [lines.length, data.length];
}
