// Word count in JavaScript (the built-in job wordcount-js): the same result as
// lambda_src/jobs/wordcount.py. Words are runs of letters, digits, "_" and "'", lower-cased.
// In-mapper combining: each map task counts into one Map and emits every word once.

const WORD = /[\p{L}\p{N}_']+/gu;

export function mapperInit() {
  this.counts = new Map();
}

export function* mapper(key, line) {
  for (const word of line.toLowerCase().match(WORD) ?? []) {
    this.counts.set(word, (this.counts.get(word) ?? 0) + 1);
  }
}

export function* mapperFinal() {
  yield* this.counts;
}

export function* combiner(key, values) {
  let total = 0;
  for (const v of values) total += v;
  yield [key, total];
}

export const reducer = combiner;
