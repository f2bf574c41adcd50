// Rewards responses near a target length: 0 within `tolerance` words, down to -1.
import { reward } from "triad";

export default reward({
  name: "js-length-reward",
  description: "Penalises responses far from target_words (JavaScript example).",
  configure({ target_words = 50, tolerance = 10 }) {
    if (!(target_words > 0)) throw new Error(`target_words must be positive, got ${target_words}`);
    return { target_words, tolerance };
  },
  score({ response }, { target_words, tolerance }) {
    const words = response.split(/\s+/).filter(Boolean).length;
    return -Math.min(1, Math.max(0, Math.abs(words - target_words) - tolerance) / target_words);
  },
});
