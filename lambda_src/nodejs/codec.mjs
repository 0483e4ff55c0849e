// The shuffle's encoding (docs/contract.md, "The shuffle"), byte for byte as lambda_src/shuffle.py
// writes it: a record is a line, the key's canonical JSON, a tab, the value's, a newline.
//
// Canonical JSON is Python's json with sort_keys, compact separators and ensure_ascii=False,
// so JavaScript values map onto Python's JSON types explicitly:
//
// - a number that is a safe integer (|x| < 2^53) is an integer: 1 -> "1"; any other number is a
//   float, written as Python's repr writes it: 0.5 -> "0.5", 1e16 -> "1e+16", 2**60 ->
//   "1.152921504606847e+18", NaN -> "NaN", Infinity -> "Infinity";
// - a BigInt is an integer of any size: 2n**64n -> "18446744073709551616";
// - a Float (float(x) below) is a float even when its value is integral: float(1) -> "1.0",
//   float(-0) -> "-0.0";
// - strings are JSON strings (non-ASCII as themselves; a lone surrogate cannot be UTF-8: refused);
//   arrays, plain objects (members sorted by code point), true, false and null as in JSON.
//
// Decoding keeps what the text says: an integer beyond 2^53 comes back as a BigInt, a float whose
// value is integral (1.0, -0.0, 1e16) as a Float, so every value encodes to the bytes it came from
// ("1.0" stays a key apart from "1"). A Float is a Number object: arithmetic on it gives plain
// numbers.

export class Float extends Number {}

/**
 * A float, even when integral: float(1) encodes as 1.0 (a plain 1 is the integer 1). A number
 * that is no safe integer encodes as a float already, and stays a plain number.
 */
export function float(x) {
  const n = Number(x);
  return Number.isSafeInteger(n) ? new Float(n) : n;
}

export class EncodeError extends TypeError {}
EncodeError.prototype.name = "EncodeError";

/** Python's repr of a float (shortest round-trip digits; exponent outside 1e-4 <= |x| < 1e16). */
export function floatRepr(x) {
  if (Number.isNaN(x)) return "NaN";
  if (x === Infinity) return "Infinity";
  if (x === -Infinity) return "-Infinity";
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const abs = Math.abs(x);
  if (abs >= 1e-4 && abs < 1e16) {
    // Both languages write the shortest round-trip digits without an exponent here.
    const text = String(x);
    return Number.isInteger(x) ? text + ".0" : text;
  }
  const sign = x < 0 ? "-" : "";
  const [mant, expText] = Math.abs(x).toExponential().split("e");
  const digits = mant.replace(".", "");
  const exp = Number(expText);
  if (exp < -4 || exp >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    const e = Math.abs(exp);
    return `${sign}${m}e${exp < 0 ? "-" : "+"}${e < 10 ? "0" : ""}${e}`;
  }
  if (exp < 0) return `${sign}0.${"0".repeat(-exp - 1)}${digits}`;
  if (digits.length <= exp + 1) return `${sign}${digits}${"0".repeat(exp + 1 - digits.length)}.0`;
  return `${sign}${digits.slice(0, exp + 1)}.${digits.slice(exp + 1)}`;
}

function encodeString(s, what) {
  if (!s.isWellFormed()) {
    throw new EncodeError(`a ${what} string holds a lone surrogate, which UTF-8 cannot encode: ${JSON.stringify(s).slice(0, 80)}`);
  }
  return JSON.stringify(s);
}

function byCodePoint(a, b) {
  // Python sorts str by code point; JavaScript's default order is by UTF-16 code unit.
  if (a === b) return 0;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.codePointAt(i);
    const y = b.codePointAt(i);
    if (x !== y) return x < y ? -1 : 1;
    if (x > 0xffff) i++;
  }
  return a.length < b.length ? -1 : 1;
}

function typeName(v) {
  if (v === undefined) return "undefined";
  if (typeof v === "object") return v.constructor?.name ?? "Object";
  return typeof v;
}

function enc(v, what, depth, sorted = true) {
  switch (typeof v) {
    case "string":
      return encodeString(v, what);
    case "number":
      return Number.isSafeInteger(v) ? String(v) : floatRepr(v);
    case "bigint":
      return v.toString();
    case "boolean":
      return v ? "true" : "false";
    case "object": {
      if (v === null) return "null";
      if (depth > 1000) throw new RangeError("too deep");
      if (v instanceof Float) return floatRepr(v.valueOf());
      if (v instanceof Number) return enc(v.valueOf(), what, depth, sorted);
      if (v instanceof String) return encodeString(v.valueOf(), what);
      if (Array.isArray(v)) {
        let out = "[";
        for (let i = 0; i < v.length; i++) out += (i ? "," : "") + enc(v[i], what, depth + 1, sorted);
        return out + "]";
      }
      const proto = Object.getPrototypeOf(v);
      if (proto === Object.prototype || proto === null) {
        const names = sorted ? Object.keys(v).sort(byCodePoint) : Object.keys(v);
        let out = "{";
        for (let i = 0; i < names.length; i++) {
          out += (i ? "," : "") + encodeString(names[i], what) + ":" + enc(v[names[i]], what, depth + 1, sorted);
        }
        return out + "}";
      }
    }
  }
  throw new EncodeError(
    `a ${what} of type ${typeName(v)} cannot be encoded: keys and values must be JSON values ` +
      `(string, number, BigInt, Float, boolean, null, array, plain object)`,
  );
}

function encode(v, what, sorted = true) {
  try {
    return enc(v, what, 0, sorted);
  } catch (err) {
    if (err instanceof RangeError) {
      throw new EncodeError(`a ${what} of type ${typeName(v)} cannot be encoded: it is nested too deeply or contains itself`);
    }
    throw err;
  }
}

export const encodeKey = (key) => encode(key, "key");
export const encodeValue = (value) => encode(value, "value");
/** JSON of a result value as a CSV field shows it: Python's json.dumps (members in their order). */
export const jsonText = (value) => encode(value, "result value", false);

// -- decoding ---------------------------------------------------------------------------------
const PLAIN_INT = /^-?(0|[1-9][0-9]{0,14})$/;
const PLAIN_NUMBER = /^-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$/;
const NUMBER = /-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;
const WS = /[ \t\n\r]*/y;

class Parser {
  constructor(text) {
    this.text = text;
    this.pos = 0;
  }

  fail(what) {
    throw new SyntaxError(`${what} at character ${this.pos} of ${JSON.stringify(this.text.slice(0, 80))}`);
  }

  ws() {
    WS.lastIndex = this.pos;
    WS.test(this.text);
    this.pos = WS.lastIndex;
  }

  value(depth) {
    this.ws();
    const t = this.text;
    const c = t[this.pos];
    if (c === '"') return this.string();
    if (c === "{") {
      if (depth > 1000) this.fail("nested too deeply");
      this.pos++;
      const obj = {};
      this.ws();
      if (t[this.pos] === "}") {
        this.pos++;
        return obj;
      }
      for (;;) {
        this.ws();
        if (t[this.pos] !== '"') this.fail("expecting a property name");
        const name = this.string();
        this.ws();
        if (t[this.pos] !== ":") this.fail("expecting ':'");
        this.pos++;
        // defineProperty: a member named __proto__ is data, as in JSON.parse
        Object.defineProperty(obj, name, { value: this.value(depth + 1), enumerable: true, writable: true, configurable: true });
        this.ws();
        if (t[this.pos] === ",") {
          this.pos++;
          continue;
        }
        if (t[this.pos] === "}") {
          this.pos++;
          return obj;
        }
        this.fail("expecting ',' or '}'");
      }
    }
    if (c === "[") {
      if (depth > 1000) this.fail("nested too deeply");
      this.pos++;
      const arr = [];
      this.ws();
      if (t[this.pos] === "]") {
        this.pos++;
        return arr;
      }
      for (;;) {
        arr.push(this.value(depth + 1));
        this.ws();
        if (t[this.pos] === ",") {
          this.pos++;
          continue;
        }
        if (t[this.pos] === "]") {
          this.pos++;
          return arr;
        }
        this.fail("expecting ',' or ']'");
      }
    }
    for (const [word, val] of WORDS) {
      if (t.startsWith(word, this.pos)) {
        this.pos += word.length;
        return val;
      }
    }
    NUMBER.lastIndex = this.pos;
    const m = NUMBER.exec(t);
    if (!m) this.fail("expecting a value");
    this.pos = NUMBER.lastIndex;
    return numberOf(m[0], m[2] !== undefined || m[3] !== undefined);
  }

  string() {
    const t = this.text;
    let end = this.pos + 1;
    for (;;) {
      const q = t.indexOf('"', end);
      if (q < 0) this.fail("unterminated string");
      let backslashes = 0;
      for (let i = q - 1; t[i] === "\\"; i--) backslashes++;
      end = q + 1;
      if (backslashes % 2 === 0) break;
    }
    const raw = t.slice(this.pos, end);
    this.pos = end;
    try {
      return JSON.parse(raw);
    } catch (err) {
      this.pos -= raw.length;
      return this.fail(`invalid string (${err.message})`);
    }
  }
}

const WORDS = [
  ["null", null], ["true", true], ["false", false],
  ["NaN", NaN], ["Infinity", Infinity], ["-Infinity", -Infinity],
];

function numberOf(token, isFloat) {
  if (!isFloat) {
    const n = Number(token);
    return Number.isSafeInteger(n) ? n : BigInt(token);
  }
  const x = Number(token);
  return Number.isSafeInteger(x) ? new Float(x) : x;
}

/** One JSON value (Python's json dialect: NaN and Infinity too), optionally followed by whitespace. */
export function decode(text) {
  if (text.charCodeAt(0) === 34 && text.indexOf("\\") < 0 && text.indexOf('"', 1) === text.length - 1) {
    return text.slice(1, -1);
  }
  if (PLAIN_INT.test(text)) return Number(text);
  const number = PLAIN_NUMBER.exec(text);
  if (number) return numberOf(text, number[1] !== undefined || number[2] !== undefined);
  const p = new Parser(text);
  const v = p.value(0);
  p.ws();
  if (p.pos !== text.length) p.fail("extra data");
  return v;
}

// -- partitions and lines -----------------------------------------------------------------------
const CRC_TABLE = (() => {
  const table = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c;
  }
  return table;
})();

/** zlib's CRC-32 of a byte buffer, as an unsigned integer. */
export function crc32(bytes) {
  let c = -1;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}

/** The partition of an encoded key (a string): crc32(UTF-8 bytes) % partitions. */
export function partitionOf(keyText, partitions) {
  if (partitions === 1) return 0;
  return crc32(Buffer.from(keyText, "utf8")) % partitions;
}

const SURROGATE = /[\uD800-\uDFFF]/;

/** Sort lines (strings) bytewise over their UTF-8 encoding, i.e. by code point. */
export function sortLines(lines) {
  if (lines.some((line) => SURROGATE.test(line))) return lines.sort(byCodePoint);
  return lines.sort(); // UTF-16 order is code point order without surrogates
}

/** The decoded value of a line (a Buffer, ending in its newline). */
export function valueOf(line) {
  const end = line[line.length - 1] === 10 ? line.length - 1 : line.length;
  return decode(line.toString("utf8", line.indexOf(9) + 1, end));
}
