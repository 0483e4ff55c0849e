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

/**
 * Writes lines (strings or Buffers) to one object, which appears whole at close(); abort()
 * (after close(), a no-op) drops what was written.
 */
export class Sink {
  constructor(uri) {
    this.uri = uri;
    this.writer = st.forUri(uri).openWrite(uri);
    this.text = "";
    this.parts = [];
    this.pendingLength = 0;
    this.records = 0;
    this.bytes = 0;
    this.closed = false;
  }

  add(line) {
    if (typeof line === "string") {
      this.text += line;
    } else {
      this.#textToParts();
      this.parts.push(line);
    }
    this.pendingLength += line.length;
    this.records++;
    if (this.pendingLength >= 1 << 20) this.#drain();
  }

  #textToParts() {
    if (this.text) this.parts.push(Buffer.from(this.text, "utf8"));
    this.text = "";
  }

  #drain() {
    this.#textToParts();
    if (!this.parts.length) return;
    const buf = Buffer.concat(this.parts);
    this.writer.write(buf);
    this.bytes += buf.length;
    this.parts = [];
    this.pendingLength = 0;
  }

  async close() {
    this.#drain();
    this.closed = true;
    await this.writer.close();
    return { records: this.records, bytes: this.bytes };
  }

  abort() {
    if (!this.closed) this.writer.abort();
  }
}
