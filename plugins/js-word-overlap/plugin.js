// Unigram F1 of a prediction against its best-matching reference, averaged over the corpus.
import { metric } from "triad";

const words = (text) => text.toLowerCase().split(/\s+/).filter(Boolean);

function f1(prediction, reference) {
  const counts = new Map();
  for (const w of reference) counts.set(w, (counts.get(w) ?? 0) + 1);
  let overlap = 0;
  for (const w of prediction) {
    if (counts.get(w) > 0) {
      overlap++;
      counts.set(w, counts.get(w) - 1);
    }
  }
  if (overlap === 0) return 0;
  const precision = overlap / prediction.length;
  const recall = overlap / reference.length;
  return (2 * precision * recall) / (precision + recall);
}

export default metric({
  name: "js-word-overlap",
  description: "Unigram F1 against the best reference (JavaScript example).",
  // Sufficient statistics: [sum of best F1, number of records].
  statistics({ prediction, references }) {
    const p = words(prediction);
    return [Math.max(0, ...references.map((r) => f1(p, words(r)))), 1];
  },
  finish: ([sum, count]) => ({ word_f1: count > 0 ? sum / count : 0 }),
});
