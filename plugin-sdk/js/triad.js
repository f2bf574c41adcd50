// The triad plugin SDK for JavaScript.
//
// A JavaScript plugin is a folder holding `plugin.js`, an ES module whose default export is one
// call to `reward`, `dataFilter` or `metric` from this module, on a line of its own:
//
//     import { reward } from "triad";
//     export default reward({ name: "my-reward", score: (episode) => episode.response.length });
//
// The host reads the kind from that line (the regex `^export default (reward|dataFilter|metric)\(`)
// to pick the WIT world, then builds the folder with `build.mjs` (componentize-js) into a
// component whose only import is `triad:plugin/host`. Inside it there are no files, sockets,
// clocks or randomness: `Math.random()` is deterministic and `Date.now()` is not available.
//
// The SDK turns per-record functions into the batched WIT exports. Whatever user code throws
// becomes the WIT `plugin-error` (message "Name: message", `record` = the index of the record
// that threw), never a trap. Throw `new PluginError(message)` for a message without the name.

import { log as hostLog } from "triad:plugin/host@0.1.0";

// The module's top level runs at build time (componentize-js snapshots it), when the host's log
// does not exist: lines logged before the host's first call are dropped.
let running = false;
// The plugin folder's name, set by the build's entry module: the name when `name` is left out.
let defaultName = "plugin";
/** @param {string} name */
export function setDefaultName(name) {
  defaultName = name;
}
const write = (level, message) => running && hostLog(level, String(message));

/** Write a line to the host's log, tagged with the plugin's name. */
export const log = {
  /** @param {unknown} message */
  debug: (message) => write("debug", message),
  /** @param {unknown} message */
  info: (message) => write("info", message),
  /** @param {unknown} message */
  warn: (message) => write("warn", message),
  /** @param {unknown} message */
  error: (message) => write("error", message),
};

// The engine's own console writes nowhere (its stdio is disabled): send it to the host's log.
function show(v) {
  if (typeof v === "string") return v;
  if (v instanceof Error) return `${v.name}: ${v.message}`;
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}
for (const [method, level] of [["log", "info"], ["info", "info"], ["debug", "debug"], ["warn", "warn"], ["error", "error"]]) {
  globalThis.console[method] = (...args) => write(level, args.map(show).join(" "));
}

/** A failure reported on purpose: its message reaches the host as is, without the "Error: " prefix. */
export class PluginError extends Error {
  /**
   * @param {string} message
   * @param {number} [record] index of the record to blame; defaults to the record being processed
   */
  constructor(message, record) {
    super(message);
    this.name = "PluginError";
    this.record = record;
  }
}

/**
 * @typedef {{ prompt: string, response: string, reference?: string }} Episode
 * @typedef {{ text: string, fields: Record<string, string> }} Sample
 * @typedef {{ prediction: string, references: string[] }} MetricRecord
 * @typedef {true | false | { drop: string } | { rewrite: { text: string, fields?: Record<string, string> | [string, string][] } }} Decision
 * @typedef {{ name?: string, version?: string, description?: string, stateful?: boolean,
 *             configure?: (config: any) => any }} Common
 *   `configure` receives the parsed JSON config ({} when absent) and returns the value passed to
 *   the other functions as `config` (returning undefined keeps the parsed config). Throw to
 *   reject the config.
 */

/** @param {unknown} e @param {number} [record] */
function toPluginError(e, record) {
  if (e instanceof PluginError) {
    return { message: String(e.message), record: e.record ?? record };
  }
  let message;
  try {
    message = e instanceof Error ? `${e.name}: ${e.message}` : `thrown ${typeof e}: ${String(e)}`;
  } catch {
    message = "thrown value that cannot be printed";
  }
  return { message, record };
}

const err = (e, record) => ({ tag: "err", val: toPluginError(e, record) });
const ok = (val) => ({ tag: "ok", val });

/**
 * Shared by every kind: info, configure and a guard for calls before configure.
 * @param {"data-filter" | "reward" | "metric"} kind
 * @param {Common} spec
 */
function base(kind, spec) {
  if (spec?.name !== undefined && (typeof spec.name !== "string" || spec.name === "")) {
    throw new TypeError(`${kind} plugin: \`name\` must be a non-empty string`);
  }
  const plugin = {
    kind,
    configured: false,
    config: undefined,
    info: () => ((running = true), {
      name: spec.name ?? defaultName,
      version: String(spec.version ?? "0.1.0"),
      kind,
      description: String(spec.description ?? ""),
      stateful: Boolean(spec.stateful),
    }),
    /** @param {string} text */
    configure(text) {
      running = true;
      const trimmed = text.trim();
      let config = {};
      if (trimmed !== "" && trimmed !== "null") {
        try {
          config = JSON.parse(trimmed);
        } catch (e) {
          return err(new PluginError(`invalid config ${trimmed}: ${e.message}`));
        }
      }
      try {
        const state = spec.configure ? spec.configure(config) : undefined;
        plugin.config = state === undefined ? config : state;
        plugin.configured = true;
        return ok(undefined);
      } catch (e) {
        const { message } = toPluginError(e);
        return err(new PluginError(`invalid config: ${message}`));
      }
    },
    /** Runs `body` on every item, blaming the index that throws. */
    each(items, body) {
      running = true;
      if (!plugin.configured) {
        return err(new PluginError("called before configure: the host must configure a plugin first"));
      }
      const out = [];
      for (let i = 0; i < items.length; i++) {
        try {
          out.push(body(items[i], i));
        } catch (e) {
          return err(e, i);
        }
      }
      return ok(out);
    },
  };
  return plugin;
}

/** @param {unknown} value @param {string} what */
function number(value, what) {
  if (typeof value !== "number") {
    throw new PluginError(`${what} must be a number, got ${typeof value}`);
  }
  return value;
}

/**
 * A reward: scores one episode; the SDK loops over the batch.
 * @param {Common & { score: (episode: Episode, config: any) => number }} spec
 */
export function reward(spec) {
  const p = base("reward", spec);
  return {
    kind: p.kind,
    info: p.info,
    configure: p.configure,
    /** @param {Episode[]} episodes */
    score: (episodes) => p.each(episodes, (episode) => number(spec.score(episode, p.config), "score")),
  };
}

/** @param {Decision} decision @param {Sample} sample */
function toDecision(decision, sample) {
  if (decision === true) return { tag: "keep" };
  if (decision === false) return { tag: "drop", val: "dropped" };
  if (decision && typeof decision.drop === "string") return { tag: "drop", val: decision.drop };
  if (decision && decision.rewrite && typeof decision.rewrite.text === "string") {
    const fields = decision.rewrite.fields ?? sample.fields;
    const pairs = Array.isArray(fields) ? fields : Object.entries(fields);
    return { tag: "rewrite", val: { text: decision.rewrite.text, fields: pairs.map(([k, v]) => [String(k), String(v)]) } };
  }
  throw new PluginError("filter must return true, false, {drop: reason} or {rewrite: {text, fields?}}");
}

/**
 * A data filter: keeps (true), drops (false or {drop: reason}) or rewrites one sample.
 * @param {Common & { filter: (sample: Sample, config: any) => Decision }} spec
 */
export function dataFilter(spec) {
  const p = base("data-filter", spec);
  return {
    kind: p.kind,
    info: p.info,
    configure: p.configure,
    /** @param {{ text: string, fields: [string, string][] }[]} samples */
    filter: (samples) =>
      p.each(samples, (raw) => {
        const sample = { text: raw.text, fields: Object.fromEntries(raw.fields) };
        return toDecision(spec.filter(sample, p.config), sample);
      }),
  };
}

/**
 * A metric from additive sufficient statistics: `statistics` gives one vector per record (the
 * SDK sums the batch, the host sums the batches), `finish` turns the totals into named values.
 * @param {Common & { statistics: (record: MetricRecord, config: any) => number[],
 *                    finish: (totals: number[], config: any) => Record<string, number> }} spec
 */
export function metric(spec) {
  const p = base("metric", spec);
  return {
    kind: p.kind,
    info: p.info,
    configure: p.configure,
    /** @param {MetricRecord[]} records */
    statistics(records) {
      const result = p.each(records, (record) => {
        const stats = spec.statistics(record, p.config);
        if (!Array.isArray(stats)) throw new PluginError("statistics must return an array of numbers");
        return stats.map((s) => number(s, "every statistic"));
      });
      if (result.tag === "err") return result;
      const totals = result.val[0] ?? [];
      for (let i = 1; i < result.val.length; i++) {
        const stats = result.val[i];
        if (stats.length !== totals.length) {
          return err(new PluginError(`statistics has ${stats.length} entries, earlier records had ${totals.length}`), i);
        }
        for (let j = 0; j < stats.length; j++) totals[j] += stats[j];
      }
      return ok(totals);
    },
    /** @param {number[]} totals */
    finish(totals) {
      const values = p.each([totals], (t) => spec.finish(Array.from(t), p.config));
      if (values.tag === "err") return err(new PluginError(values.val.message));
      const named = values.val[0];
      if (named === null || typeof named !== "object") {
        return err(new PluginError("finish must return an object of {name: number}"));
      }
      try {
        return ok(Object.entries(named).map(([name, value]) => ({ name, value: number(value, `value of ${name}`) })));
      } catch (e) {
        return err(e);
      }
    },
  };
}
