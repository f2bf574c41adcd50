// Drops samples with fewer than `min_words` words.
import { dataFilter } from "triad";

export default dataFilter({
  name: "js-short-filter",
  description: "Drops texts shorter than min_words words (JavaScript example).",
  configure: ({ min_words = 5 }) => ({ min_words }),
  filter({ text }, { min_words }) {
    const words = text.split(/\s+/).filter(Boolean).length;
    return words >= min_words || { drop: `fewer than ${min_words} words` };
  },
});
