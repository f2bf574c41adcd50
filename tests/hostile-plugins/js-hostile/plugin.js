// A reward plugin that misbehaves on purpose, to prove the sandbox contains JavaScript plugins.
// The response names the misdeed: `loop` spins forever, `grow-memory` allocates toward 1 GiB,
// `recurse` recurses without bound, `huge` logs a 100 MB line, `throw` throws a TypeError;
// config {"fail_configure": true} throws in configure. Anything else scores its length.
import { reward, log } from "triad";

const hoard = [];

function recurse(depth) {
  return recurse(depth + 1) + 1;
}

export default reward({
  name: "js-hostile",
  description: "Misbehaves on purpose (sandbox tests).",
  configure(config) {
    if (config.fail_configure) throw new Error("hostile plugin fails configure on purpose");
  },
  score({ response }) {
    switch (response) {
      case "loop":
        for (let spins = 0; ; spins++);
      case "grow-memory":
        for (let i = 0; i < 1024; i++) hoard.push(new Uint8Array(1 << 20).fill(1));
        return hoard.length;
      case "recurse":
        return recurse(0);
      case "huge":
        log.info("x".repeat(100 << 20));
        return 0;
      case "throw":
        return null.length;
      default:
        return response.length;
    }
  },
});
