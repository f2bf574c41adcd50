// The shared lexicon reward, in JavaScript: (positive - negative words) / max(words, 1).
import { reward } from "triad";

const POSITIVE = new Set(
  "good great excellent wonderful best love loved beautiful fun brilliant superb enjoyable moving delightful perfect amazing".split(" "),
);
const NEGATIVE = new Set(
  "bad worst boring awful dull hate hated poor mess terrible waste stupid horrible weak annoying disappointing".split(" "),
);

export default reward({
  name: "lexicon-js",
  description: "Lexicon sentiment reward (JavaScript port of the shared benchmark reward).",
  score({ response }) {
    const words = response.toLowerCase().match(/[\p{L}\p{N}']+/gu) ?? [];
    let score = 0;
    for (const w of words) score += POSITIVE.has(w) - NEGATIVE.has(w);
    return score / Math.max(words.length, 1);
  },
});
