#!/usr/bin/env node
// Builds a JavaScript plugin folder into a WebAssembly component with componentize-js.
//
//   node build.mjs <plugin dir> <world> <wit dir> <out.wasm> [name]
//   node build.mjs --kind <plugin dir>          prints the plugin's world (reward, data-filter, metric)
//
// [name] (default: the folder's name) is the plugin's name where plugin.js gives none.
// <plugin dir> holds `plugin.js`, an ES module that imports the SDK from "triad" and declares its
// kind on one line matching (multiline) /^export default (reward|dataFilter|metric)\(/ ; exactly
// one such line. <world> must be the world that line names (the host reads the same rule).
//
// componentize-js is found at $TRIAD_JS_TOOLS/node_modules/@bytecodealliance/componentize-js, where
// TRIAD_JS_TOOLS is the npm prefix it was installed into:
//   npm install --save-exact --prefix ~/.cache/triad/plugin-tools/js @bytecodealliance/componentize-js@0.23.0 \
//     @bytecodealliance/jco@1.35.0 @bytecodealliance/preview2-shim@0.17.9
// (default when unset: $HOME/.cache/triad/plugin-tools/js). jco is pinned for its regex pass;
// preview2-shim must be named because componentize-js 0.23.0 imports it at run time but lists it
// only as a devDependency, and 0.17.x because later versions preopen no directory, so the WIT
// folder cannot be read ("reading file ...: No such file or directory"). No network is needed;
// writes go only to a temporary directory under $TMPDIR (else /tmp) and to <out.wasm>.
//
// The recipe: copy the plugin folder into a fresh directory under os.tmpdir() ($TMPDIR, else
// /tmp), put this SDK beside it as triad.js, rewrite `from "triad"` in the copied modules to a
// relative path, and componentize a generated entry module that imports the plugin's default
// export, checks its kind and re-exports the world's functions. All WASI features are disabled,
// so the component imports nothing but triad:plugin/host. The temporary directory is removed
// afterwards; nothing else is written except <out.wasm> (written beside itself, then renamed).

import { cpSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { basename, dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const COMPONENTIZE_JS = "0.23.0";
const JCO = "1.35.0"; // a dependency of componentize-js; pinned for its regex-lowering pass
const PREVIEW2_SHIM = "0.17.9";
const KIND_RULE = /^export default (reward|dataFilter|metric)\(/gm;
const WORLD_OF = { reward: "reward", dataFilter: "data-filter", metric: "metric" };
const EXPORTS = {
  reward: ["info", "configure", "score"],
  "data-filter": ["info", "configure", "filter"],
  metric: ["info", "configure", "statistics", "finish"],
};
const SDK = join(dirname(fileURLToPath(import.meta.url)), "triad.js");

function fail(message) {
  process.stderr.write(`build.mjs: ${message}\n`);
  process.exit(1);
}

/** The world a plugin folder declares, by the kind rule on plugin.js. */
function detectWorld(pluginDir) {
  let source;
  try {
    source = readFileSync(join(pluginDir, "plugin.js"), "utf8");
  } catch (e) {
    fail(`cannot read ${join(pluginDir, "plugin.js")}: ${e.message}`);
  }
  const kinds = [...source.matchAll(KIND_RULE)].map((m) => m[1]);
  if (kinds.length !== 1) {
    fail(
      `${join(pluginDir, "plugin.js")} must declare its kind on exactly one line starting with ` +
        `\`export default reward(\`, \`export default dataFilter(\` or \`export default metric(\` ` +
        `(found ${kinds.length})`,
    );
  }
  return WORLD_OF[kinds[0]];
}

/**
 * Copies the plugin folder (no node_modules, no dot files), points its "triad" imports at the SDK
 * and lowers regex literals with Unicode property escapes (\p{L}...), which the engine's
 * SpiderMonkey (built without ICU) rejects, to plain character ranges (jco's own pass).
 */
function stage(pluginDir, dir, lowerRegexes) {
  const copy = join(dir, "plugin");
  cpSync(pluginDir, copy, {
    recursive: true,
    filter: (src) => {
      const name = src.slice(src.lastIndexOf(sep) + 1);
      return src === pluginDir || (name !== "node_modules" && !name.startsWith("."));
    },
  });
  writeFileSync(join(dir, "triad.js"), readFileSync(SDK));
  const walk = (folder) => {
    for (const entry of readdirSync(folder, { withFileTypes: true })) {
      const path = join(folder, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (/\.m?js$/.test(entry.name)) {
        let target = relative(folder, join(dir, "triad.js")).split(sep).join("/");
        if (!target.startsWith(".")) target = `./${target}`;
        const text = readFileSync(path, "utf8");
        let rewritten = text.replace(/(\bfrom\s*|\bimport\s*)(["'])triad\2/g, `$1"${target}"`);
        rewritten = lowerRegexes(rewritten, entry.name) ?? rewritten;
        if (rewritten !== text) writeFileSync(path, rewritten);
      }
    }
  };
  walk(copy);
}

async function main(argv) {
  if (argv[0] === "--kind" && argv.length === 2) {
    process.stdout.write(`${detectWorld(resolve(argv[1]))}\n`);
    return;
  }
  if (argv.length !== 4 && argv.length !== 5) {
    fail("usage: node build.mjs <plugin dir> <world> <wit dir> <out.wasm> [name]  |  node build.mjs --kind <plugin dir>");
  }
  const [pluginDir, witDir, out] = [argv[0], argv[2], argv[3]].map((a) => resolve(a));
  const wanted = argv[1];
  const declared = detectWorld(pluginDir);
  if (!EXPORTS[wanted]) fail(`unknown world ${wanted}: JavaScript plugins are ${Object.keys(EXPORTS).join(", ")}`);
  if (declared !== wanted) fail(`plugin.js declares a ${declared} plugin, but the ${wanted} world was asked for`);

  const tools = process.env.TRIAD_JS_TOOLS || join(homedir(), ".cache", "triad", "plugin-tools", "js");
  const entryPoint = join(tools, "node_modules", "@bytecodealliance", "componentize-js", "src", "componentize.js");
  let componentize;
  let version;
  try {
    ({ componentize, version } = await import(pathToFileURL(entryPoint).href));
  } catch (e) {
    fail(
      `cannot load componentize-js from ${entryPoint} (${e.message}); install it with ` +
        `npm install --prefix ${tools} @bytecodealliance/componentize-js@${COMPONENTIZE_JS} @bytecodealliance/jco@${JCO} ` +
        `@bytecodealliance/preview2-shim@${PREVIEW2_SHIM} --save-exact ` +
        `and set TRIAD_JS_TOOLS to that prefix`,
    );
  }
  let lowerRegexes;
  try {
    const compat = join(tools, "node_modules", "@bytecodealliance", "jco", "dist", "engine-compat.js");
    lowerRegexes = (await import(pathToFileURL(compat).href)).rewriteUnicodePropertyEscapes;
  } catch (e) {
    process.stderr.write(`build.mjs: warning: regex literals with \\p{...} will not build (${e.message})\n`);
    lowerRegexes = () => undefined;
  }
  if (version !== COMPONENTIZE_JS) {
    process.stderr.write(`build.mjs: warning: componentize-js ${version}, tested with ${COMPONENTIZE_JS}\n`);
  }

  const dir = mkdtempSync(join(tmpdir(), "triad-js-"));
  // componentize-js makes its own work directory under os.tmpdir(): keep it inside ours.
  process.env.TMPDIR = dir;
  let failure;
  try {
    stage(pluginDir, dir, lowerRegexes);
    const names = EXPORTS[wanted];
    const entry = [
      `import { setDefaultName } from "./triad.js";`,
      `import plugin from "./plugin/plugin.js";`,
      `setDefaultName(${JSON.stringify(argv[4] ?? basename(pluginDir))});`,
      `if (!plugin || plugin.kind !== ${JSON.stringify(wanted)}) {`,
      `  throw new Error("plugin.js: the default export must be the value of ${Object.keys(WORLD_OF).find((k) => WORLD_OF[k] === wanted)}({...}) from \\"triad\\"");`,
      `}`,
      ...names.map((n) => `export function ${n}(...args) { return plugin.${n}(...args); }`),
      ``,
    ].join("\n");
    writeFileSync(join(dir, "entry.js"), entry);
    // componentize-js maps the working directory into the engine when the source lies inside it.
    process.chdir(dir);
    const { component } = await componentize({
      sourcePath: join(dir, "entry.js"),
      witPath: witDir,
      worldName: wanted,
      disableFeatures: ["stdio", "random", "clocks", "http", "fetch-event"],
    });
    const partial = `${out}.partial-${process.pid}`;
    writeFileSync(partial, component);
    renameSync(partial, out);
  } catch (e) {
    failure = String(e?.message ?? e).replaceAll(`${dir}${sep}`, "");
  } finally {
    process.chdir("/");
    rmSync(dir, { recursive: true, force: true });
  }
  if (failure !== undefined) fail(failure);
}

await main(process.argv.slice(2));
