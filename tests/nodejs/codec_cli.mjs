// A test driver of the Node.js codec (tests/unit/test_nodejs_codec.py): one JSON request a line
// on stdin, one JSON reply a line on stdout. Requests carry data only; nothing is evaluated.
//   {"op": "roundtrip", "text": T, "partitions": [P...]} -> {"text": encode(decode(T)), "partitions": [...]}
//   {"op": "sort", "lines": [...]}                       -> {"lines": sorted bytewise}
//   {"op": "named"}                                      -> {"encodings": {name: canonical key text}}
//   {"op": "csv", "text": T}                             -> {"row": the CSV row of [decode(T), null]}
import * as readline from "node:readline";

import { decode, encodeKey, float, partitionOf, sortLines } from "../../lambda_src/nodejs/codec.mjs";
import { csvRow } from "../../lambda_src/nodejs/output.mjs";

// Values a JavaScript job may emit, by name, and what the contract makes of them.
const NAMED = {
  int: 1, float_one: float(1), float_half: 0.5, big: 2n ** 64n, unsafe_number: 2 ** 53 + 2,
  negative_zero: -0, float_negative_zero: float(-0), nan: NaN, infinity: -Infinity, small: 1e-5,
  large: 1e16, astral: "😀", bmp_high: "\uffff", control: "a\tb\n\u0001", object: { b: 1, a: [true, null] },
  astral_vs_bmp_keys: { "\uffff": 1, "😀": 2 }, string_object: new String("s"),
};

const reply = (obj) => process.stdout.write(JSON.stringify(obj, (_, v) => (typeof v === "bigint" ? String(v) : v)) + "\n");

for await (const line of readline.createInterface({ input: process.stdin })) {
  const req = JSON.parse(line);
  try {
    if (req.op === "roundtrip") {
      const text = encodeKey(decode(req.text));
      reply({ text, partitions: req.partitions.map((p) => partitionOf(text, p)) });
    } else if (req.op === "sort") {
      reply({ lines: sortLines(req.lines) });
    } else if (req.op === "named") {
      reply({ encodings: Object.fromEntries(Object.entries(NAMED).map(([k, v]) => [k, encodeKey(v)])) });
    } else if (req.op === "csv") {
      reply({ row: csvRow(decode(req.text), null) });
    } else if (req.op === "encode_error") {
      const values = { lone_surrogate: "\ud800", map: new Map(), undefined_value: undefined, cycle: (() => { const a = []; a.push(a); return a; })() };
      reply({ errors: Object.fromEntries(Object.entries(values).map(([k, v]) => {
        try {
          return [k, `no error: ${encodeKey(v)}`];
        } catch (err) {
          return [k, `${err.name}: ${err.message}`];
        }
      })) });
    }
  } catch (err) {
    reply({ error: `${err.name}: ${err.message}` });
  }
}
