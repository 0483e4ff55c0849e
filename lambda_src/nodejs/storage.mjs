// Object storage for the Node.js handlers: file:// with fs, s3:// with the AWS SDK v3 S3 client
// (which Lambda's Node.js runtimes include). URIs are the contract's (lambda_src/storage.py):
// a local location's canonical form is file:// + its absolute path, percent-encoded except the
// unreserved characters and RFC 3986's pchar delimiters. Every write is atomic (a rename, or one PUT).

import * as fsp from "node:fs/promises";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const S3_SDK = "@aws-sdk/client-s3";

/**
 * The AWS SDK's S3 client: the one Lambda's Node.js runtime includes, else one the job's package
 * holds (job/node_modules), else one on NODE_PATH (the local runtime's tests set it).
 */
async function importS3Sdk() {
  try {
    return await import(S3_SDK);
  } catch (err) {
    if (err?.code !== "ERR_MODULE_NOT_FOUND") throw err;
  }
  const jobDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "job");
  let resolved;
  try {
    resolved = createRequire(path.join(jobDir, "index.js")).resolve(S3_SDK);
  } catch {
    throw new StorageError(`s3:// storage needs the AWS SDK for JavaScript v3 (${S3_SDK}): Lambda's Node.js ` +
      `runtimes include it; locally, install it (npm install ${S3_SDK}) in the job's package or on NODE_PATH`);
  }
  return import(pathToFileURL(resolved).href);
}

export class StorageError extends Error {}
StorageError.prototype.name = "StorageError";

export class NotFound extends StorageError {}
NotFound.prototype.name = "NotFound";

export const isS3 = (uri) => uri.startsWith("s3://");

const SAFE = new Set(
  "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~/!$&'()*+,;=:@".split("").map((c) => c.charCodeAt(0)),
);

/** The canonical URI of a local path. */
export function fromPath(p) {
  if (typeof p !== "string" || !p) throw new Error("empty local path");
  if (p.includes("\0")) throw new Error(`local path ${JSON.stringify(p)} contains a NUL character`);
  const abs = "/" + path.resolve(p).replace(/^\/+/, "");
  let out = "file://";
  for (const byte of Buffer.from(abs, "utf8")) {
    out += SAFE.has(byte) ? String.fromCharCode(byte) : "%" + byte.toString(16).toUpperCase().padStart(2, "0");
  }
  return out;
}

function unquote(text) {
  const bytes = [];
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "%" && /^[0-9A-Fa-f]{2}$/.test(text.slice(i + 1, i + 3))) {
      bytes.push(parseInt(text.slice(i + 1, i + 3), 16));
      i += 2;
    } else {
      bytes.push(...Buffer.from(c, "utf8"));
    }
  }
  return Buffer.from(bytes).toString("utf8");
}

function fileUriPath(uri) {
  let rest = uri.slice("file:".length);
  if (rest.startsWith("//")) {
    const slash = rest.indexOf("/", 2);
    const host = rest.slice(2, slash < 0 ? rest.length : slash);
    if (host !== "" && host !== "localhost") throw new Error(`file URI must not name a host: ${uri}`);
    rest = slash < 0 ? "" : rest.slice(slash);
  }
  if (rest.includes("?") || rest.includes("#")) {
    throw new Error(`file URI ${uri} has a query or fragment: write '?' as %3F and '#' as %23`);
  }
  if (!rest.startsWith("/")) throw new Error(`file URI ${uri} must name an absolute path (file:///abs/path)`);
  return unquote(rest);
}

/** A canonical URI: s3://bucket/key or file:///absolute/path. */
export function normalize(uri) {
  if (typeof uri !== "string" || !uri) throw new Error("empty storage URI");
  if (isS3(uri)) {
    splitS3(uri);
    return uri;
  }
  if (uri.startsWith("file:")) return fromPath(fileUriPath(uri));
  if (/^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(uri)) throw new Error(`unsupported storage scheme in ${uri} (use s3:// or file://)`);
  return fromPath(uri);
}

export function localPath(uri) {
  const canonical = normalize(uri);
  if (isS3(canonical)) throw new Error(`not a local URI: ${uri}`);
  return unquote(canonical.slice("file://".length));
}

export function splitS3(uri) {
  const rest = uri.slice("s3://".length);
  const slash = rest.indexOf("/");
  const bucket = slash < 0 ? rest : rest.slice(0, slash);
  if (!bucket) throw new Error(`S3 URI has no bucket: ${uri}`);
  return [bucket, slash < 0 ? "" : rest.slice(slash + 1)];
}

/** Join relative names onto a base URI, refusing parts that would escape it. */
export function join(base, ...parts) {
  for (const part of parts) {
    if (typeof part !== "string" || !part) throw new Error(`empty path component joined to ${base}`);
    if (part.startsWith("/") || part.includes("\\") || part.includes("\0") ||
        part.split("/").some((s) => s === "" || s === "." || s === "..")) {
      throw new Error(`path component ${JSON.stringify(part)} would escape ${base}`);
    }
  }
  if (isS3(base)) return [base.replace(/\/+$/, ""), ...parts].join("/");
  return fromPath(path.join(localPath(base), ...parts));
}

/** The names of uri below base ("" when the same, null when not below it). */
export function relativeTo(uri, base) {
  uri = normalize(uri);
  base = normalize(base);
  if (isS3(uri) !== isS3(base)) return null;
  let key;
  let baseKey;
  if (isS3(uri)) {
    const [b1, k1] = splitS3(uri);
    const [b2, k2] = splitS3(base);
    if (b1 !== b2) return null;
    key = k1.replace(/\/+$/, "");
    baseKey = k2.replace(/\/+$/, "");
  } else {
    key = localPath(uri).replace(/^\/+/, "");
    baseKey = localPath(base).replace(/^\/+/, "");
  }
  if (!baseKey) return key;
  if (key === baseKey) return "";
  return key.startsWith(baseKey + "/") ? key.slice(baseKey.length + 1) : null;
}

const tmpName = (dir) => path.join(dir, `.tmp-${randomBytes(16).toString("hex")}`);

/** The most bytes one write system call hands the kernel (storage.py's WRITE_CHUNK, and why). */
export const WRITE_CHUNK = 1 << 20;

/** Write all of `buf` to the open file `fd`, at most WRITE_CHUNK bytes a call. */
export function writeChunked(fd, buf) {
  for (let done = 0; done < buf.length;) done += fs.writeSync(fd, buf, done, Math.min(WRITE_CHUNK, buf.length - done));
}

/**
 * Writes an object whose bytes spool to a temporary file: write() appends, close() makes the
 * object appear whole (finish(tmp, size) moves or uploads the file), abort() drops it.
 */
class SpoolWriter {
  constructor(tmp, finish) {
    this.tmp = tmp;
    this.finish = finish;
    this.fd = fs.openSync(tmp, "wx");
    this.size = 0;
  }

  write(buf) {
    writeChunked(this.fd, buf);
    this.size += buf.length;
  }

  async close() {
    fs.closeSync(this.fd);
    this.fd = null;
    try {
      await this.finish(this.tmp, this.size);
    } finally {
      fs.rmSync(this.tmp, { force: true });
    }
  }

  abort() {
    if (this.fd !== null) {
      fs.closeSync(this.fd);
      this.fd = null;
      fs.rmSync(this.tmp, { force: true });
    }
  }
}

class LocalStorage {
  async stat(uri) {
    const p = localPath(uri);
    let info;
    try {
      info = await fsp.stat(p, { bigint: true });
    } catch (err) {
      if (err.code === "ENOENT" || err.code === "ENOTDIR") throw new NotFound(`no such object: ${uri}`);
      throw err;
    }
    if (!info.isFile()) throw new NotFound(`not a file: ${uri}`);
    return { uri, size: Number(info.size), version: String(info.mtimeNs) };
  }

  async size(uri) {
    return (await this.stat(uri)).size;
  }

  /** Chunks (Buffers) of bytes [start, end) of an object. */
  async *iterRange(uri, start = 0, end = null, chunkSize = 8 << 20) {
    let fh;
    try {
      fh = await fsp.open(localPath(uri), "r");
    } catch (err) {
      if (err.code === "ENOENT") throw new NotFound(`no such object: ${uri}`);
      throw err;
    }
    try {
      let pos = start;
      while (end === null || pos < end) {
        const want = end === null ? chunkSize : Math.min(chunkSize, end - pos);
        const buf = Buffer.allocUnsafe(want);
        const { bytesRead } = await fh.read(buf, 0, want, pos);
        if (!bytesRead) return;
        pos += bytesRead;
        yield buf.subarray(0, bytesRead);
      }
    } finally {
      await fh.close();
    }
  }

  async readBytes(uri, start = 0, end = null) {
    const parts = [];
    for await (const chunk of this.iterRange(uri, start, end)) parts.push(chunk);
    return Buffer.concat(parts);
  }

  /** A writer whose object appears (by a rename) when it is closed. */
  openWrite(uri) {
    const p = localPath(uri);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    return new SpoolWriter(tmpName(path.dirname(p)), (tmp) => fsp.rename(tmp, p));
  }

  async writeBytes(uri, data) {
    const p = localPath(uri);
    const dir = path.dirname(p);
    await fsp.mkdir(dir, { recursive: true });
    const tmp = tmpName(dir);
    try {
      await fsp.writeFile(tmp, data, { flag: "wx" });
      await fsp.rename(tmp, p);
    } catch (err) {
      await fsp.rm(tmp, { force: true });
      throw err;
    }
  }
}

/** S3 through the AWS SDK v3; honours AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (path-style there). */
class S3Storage {
  constructor() {
    this.requests = { put: 0, get: 0, list: 0, head: 0 };
    this.sdk = null;
    this.client = null;
  }

  async s3() {
    if (this.client === null) {
      this.sdk = await importS3Sdk();
      const endpoint = process.env.AWS_ENDPOINT_URL_S3 || process.env.AWS_ENDPOINT_URL;
      const config = { maxAttempts: 8 };
      if (endpoint) Object.assign(config, { endpoint, forcePathStyle: true });
      if (!process.env.AWS_REGION && !process.env.AWS_DEFAULT_REGION) config.region = "us-east-1";
      else config.region = process.env.AWS_REGION || process.env.AWS_DEFAULT_REGION;
      this.client = new this.sdk.S3Client(config);
    }
    return this.client;
  }

  static notFound(err) {
    const code = String(err?.name ?? err?.Code ?? "");
    return ["NoSuchKey", "NotFound", "NoSuchBucket"].includes(code) || err?.$metadata?.httpStatusCode === 404;
  }

  async stat(uri) {
    const [Bucket, Key] = splitS3(uri);
    const client = await this.s3();
    this.requests.head++;
    try {
      const head = await client.send(new this.sdk.HeadObjectCommand({ Bucket, Key }));
      return { uri, size: Number(head.ContentLength), version: String(head.ETag ?? "") };
    } catch (err) {
      if (S3Storage.notFound(err)) throw new NotFound(`no such object: ${uri}`);
      throw new StorageError(`cannot stat ${uri}: ${err.message}`);
    }
  }

  async size(uri) {
    return (await this.stat(uri)).size;
  }

  async *iterRange(uri, start = 0, end = null) {
    if (end !== null && end <= start) return;
    const [Bucket, Key] = splitS3(uri);
    const client = await this.s3();
    const params = { Bucket, Key };
    if (start || end !== null) params.Range = `bytes=${start}-${end === null ? "" : end - 1}`;
    this.requests.get++;
    let body;
    try {
      body = (await client.send(new this.sdk.GetObjectCommand(params))).Body;
    } catch (err) {
      if (S3Storage.notFound(err)) throw new NotFound(`no such object: ${uri}`);
      if (err?.name === "InvalidRange") return;
      throw new StorageError(`cannot read ${uri}: ${err.message}`);
    }
    for await (const chunk of body) yield chunk;
  }

  async readBytes(uri, start = 0, end = null) {
    const parts = [];
    for await (const chunk of this.iterRange(uri, start, end)) parts.push(chunk);
    return Buffer.concat(parts);
  }

  async writeBytes(uri, data, length = data.length) {
    const [Bucket, Key] = splitS3(uri);
    const client = await this.s3();
    this.requests.put++;
    try {
      await client.send(new this.sdk.PutObjectCommand({ Bucket, Key, Body: data, ContentLength: length }));
    } catch (err) {
      throw new StorageError(`cannot write ${uri}: ${err.message}`);
    }
  }

  /** A writer spooling to a temporary file (LAMBDAMR_SPILL_DIR or /tmp), one PUT when closed. */
  openWrite(uri) {
    const dir = process.env.LAMBDAMR_SPILL_DIR || os.tmpdir();
    return new SpoolWriter(tmpName(dir), (tmp, size) => this.writeBytes(uri, fs.createReadStream(tmp), size));
  }
}

const local = new LocalStorage();
let s3 = null;

/** The storage that serves a URI (one per process). */
export function forUri(uri) {
  if (isS3(uri)) {
    s3 ??= new S3Storage();
    return s3;
  }
  return local;
}

/** S3 requests this process made so far, by price class. */
export function s3Requests() {
  return { ...(s3?.requests ?? { put: 0, get: 0, list: 0, head: 0 }) };
}
