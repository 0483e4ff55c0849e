// Runs one invocation of a deployed Node.js handler as Lambda would (tests/integration/test_nodejs_aws.py):
//   node invoke.mjs CODE_DIR HANDLER REQUEST_ID < event.json
// HANDLER is the function's Handler setting (lambda_src/nodejs/mapper.handler). Prints the result's
// JSON, or exits with status 1 naming the error.
import * as path from "node:path";
import { pathToFileURL } from "node:url";

const [codeDir, handler, requestId] = process.argv.slice(2);
const dot = handler.lastIndexOf(".");
const mod = await import(pathToFileURL(path.join(codeDir, handler.slice(0, dot) + ".mjs")).href);
let input = "";
for await (const chunk of process.stdin) input += chunk;
try {
  const result = await mod[handler.slice(dot + 1)](JSON.parse(input), { awsRequestId: requestId });
  process.stdout.write(JSON.stringify(result));
} catch (err) {
  process.stderr.write(`${err.name}: ${err.message}\n`);
  process.exit(1);
}
