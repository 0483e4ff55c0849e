// Amplab query 2a in JavaScript (the built-in job amplab-2a-js), as lambda_src/jobs/amplab.py's
// Query2a: SELECT SUBSTR(sourceIP, 1, 8), SUM(adRevenue) FROM uservisits GROUP BY 1.
// uservisits is comma-separated text: sourceIP, destURL, visitDate, adRevenue, userAgent,
// countryCode, languageCode, searchWord, duration. Revenues are floats (so sums print as 12.0).

const COLUMNS = 9;
const NUMBER = /^\s*[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?\s*$/i;

export const params = { prefix_length: "8" };

export function* mapper(key, line) {
  if (!line) return;
  const cols = line.split(",");
  if (cols.length !== COLUMNS) throw new this.BadRecord(`expected ${COLUMNS} comma-separated columns, found ${cols.length}`);
  if (!NUMBER.test(cols[3])) throw new this.BadRecord(`column adRevenue is not a number: ${JSON.stringify(cols[3])}`);
  yield [cols[0].slice(0, Number(this.params.prefix_length)), this.float(Number(cols[3]))];
}

export function* combiner(key, values) {
  let total = 0;
  for (const v of values) total += v;
  yield [key, this.float(total)];
}

export const reducer = combiner;
