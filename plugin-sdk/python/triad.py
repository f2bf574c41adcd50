"""triad: write triad plugins (rewards, data filters, metrics) in plain Python.

A Python plugin is a folder holding `plugin.py`, which decorates exactly one function or class:

    import triad

    @triad.reward
    def score(episode: triad.Episode, config: dict) -> float:
        '''Rewards short answers.'''
        return -len(episode.response.split()) / 100

`@triad.reward` takes `score(episode, config) -> float`, `@triad.data_filter` takes
`filter(sample, config)` returning `triad.KEEP` / `True`, `False` / `triad.drop(reason)` or
`triad.rewrite(text)`, and `@triad.metric` takes a class with `statistics(self, record)` (a list
of numbers per record; the SDK sums them over the batch) and `finish(self, totals)` (a dict of
named values); the class is constructed with the config. A function may also leave out its
`config` parameter. The decorators take optional keywords: `name`, `version`, `description`,
`config` (a dataclass the JSON config block is parsed into; unknown or missing keys are errors)
and `stateful`.

The host builds the folder with componentize-py into a WebAssembly component and runs it in a
sandbox (no files, sockets, clock or randomness; a memory cap and a deadline per call). An
exception raised by plugin code reaches the host as a plugin error naming its type, message,
line and the index of the record that raised it. `triad.log.info(...)` writes to the host's log,
and so does print() once the plugin runs (the sandbox has no stdout).
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import math
import re
import sys
import typing
from typing import Any, Callable, Optional

from componentize_py_types import Err
from wit_world.imports import host, types

# The records the host passes, as componentize-py generates them from the WIT (dataclasses).
Episode = types.Episode
"""One generated answer to score: `prompt`, `response`, `reference` (str or None)."""
Sample = types.Sample
"""One text record: `text` and `fields`, a list of (name, value) pairs of its other columns."""
MetricRecord = types.MetricRecord
"""One prediction and its references: `prediction`, `references` (a list of str)."""

KEEP = types.Decision_Keep()
"""A data filter's answer that keeps the sample unchanged (`True` means the same)."""


def drop(reason: str) -> types.Decision_Drop:
    """A data filter's answer that drops the sample; the host counts drops by reason."""
    return types.Decision_Drop(str(reason))


@dataclasses.dataclass
class _Rewrite:
    text: str
    fields: Optional[list[tuple[str, str]]]


def rewrite(text: str, fields: Optional[dict[str, str] | list[tuple[str, str]]] = None) -> _Rewrite:
    """A data filter's answer that keeps a changed sample; `fields=None` keeps the old fields."""
    if isinstance(fields, dict):
        fields = list(fields.items())
    return _Rewrite(text, fields)


class log:
    """The host's log; each line is tagged with the plugin's name. The host shows error lines
    only beside the failure they explain; use warn for a line that must always show."""

    @staticmethod
    def debug(message: object) -> None:
        host.log(host.Level.DEBUG, str(message))

    @staticmethod
    def info(message: object) -> None:
        host.log(host.Level.INFO, str(message))

    @staticmethod
    def warn(message: object) -> None:
        host.log(host.Level.WARN, str(message))

    @staticmethod
    def error(message: object) -> None:
        host.log(host.Level.ERROR, str(message))


class _LogStream(io.TextIOBase):
    """Sends print() output to the host's log, a line at a time: in the sandbox, writing to the
    real stdout traps."""

    def __init__(self, level: host.Level) -> None:
        self.level, self.pending = level, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            host.log(self.level, line)
        return len(text)


class _Failure(Exception):
    """A plugin error the SDK itself reports (bad config, a bad return value)."""


@dataclasses.dataclass
class _Plugin:
    kind: types.PluginKind
    target: Callable[..., Any]  # the decorated function, or the metric class
    info: types.PluginInfo
    schema: Optional[type]  # the config dataclass, or None to pass the dict
    config: Any = None
    instance: Any = None  # a metric's object, built by configure
    configured: bool = False


_plugin: Optional[_Plugin] = None


def _register(kind: types.PluginKind, target: Any, name: Optional[str], version: str,
              description: Optional[str], config: Optional[type], stateful: bool) -> Any:
    global _plugin
    if _plugin is not None:
        raise TypeError(f"a plugin registers exactly one function or class; {_plugin.target.__name__} "
                        f"is already registered, so {target.__name__} cannot be")
    if config is not None and not dataclasses.is_dataclass(config):
        raise TypeError(f"config= must be a dataclass type, got {config!r}")
    if name is None:
        try:  # the plugin folder's name, which triad's build writes into this module
            from triad_build import NAME as name
        except ImportError:  # built by hand: CamelCase and snake_case names become kebab-case
            name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", target.__name__).replace("_", "-").lower()
    if description is None:
        doc = target.__doc__ or getattr(sys.modules.get(target.__module__), "__doc__", None) or ""
        description = doc.strip().split("\n")[0]
    _plugin = _Plugin(kind, target, types.PluginInfo(name, version, kind, description, stateful), config)
    return target  # undecorated: plain Python can call and test it


def _decorator(kind: types.PluginKind, target: Any, options: dict[str, Any]) -> Any:
    if target is None:  # used with keywords: @triad.reward(name="x")
        return lambda t: _register(kind, t, **options)
    return _register(kind, target, **options)


def reward(fn: Optional[Callable[..., float]] = None, *, name: Optional[str] = None, version: str = "0.1.0",
           description: Optional[str] = None, config: Optional[type] = None, stateful: bool = False) -> Any:
    """Registers `fn(episode, config) -> float` as the plugin's reward, called once per episode."""
    return _decorator(types.PluginKind.REWARD, fn, dict(name=name, version=version, description=description,
                                                        config=config, stateful=stateful))


def data_filter(fn: Optional[Callable[..., Any]] = None, *, name: Optional[str] = None, version: str = "0.1.0",
                description: Optional[str] = None, config: Optional[type] = None, stateful: bool = False) -> Any:
    """Registers `fn(sample, config)` as the plugin's filter, called once per sample. It returns
    `KEEP` or `True` (keep), `False` or `drop(reason)` (drop), or `rewrite(text)`."""
    return _decorator(types.PluginKind.DATA_FILTER, fn, dict(name=name, version=version, description=description,
                                                             config=config, stateful=stateful))


def metric(cls: Optional[type] = None, *, name: Optional[str] = None, version: str = "0.1.0",
           description: Optional[str] = None, config: Optional[type] = None, stateful: bool = False) -> Any:
    """Registers a class as the plugin's metric: `cls(config)` (or `cls()`), then
    `statistics(self, record) -> list[float]` per record, summed by the SDK within a batch and by
    the host across batches, and `finish(self, totals) -> dict[str, float]`."""
    return _decorator(types.PluginKind.METRIC, cls, dict(name=name, version=version, description=description,
                                                        config=config, stateful=stateful))


# What the entry module (triad_entry.py) calls. Everything below turns Python into WIT results.

def _error(message: str, record: Optional[int] = None) -> Err:
    return Err(types.PluginError(message, record))


def _describe(exc: BaseException) -> str:
    """`Type: message (file.py:line)`, the line being the innermost frame outside this SDK."""
    # Walks the frames by hand: the traceback module reads source files, and file access traps
    # in the sandbox (WASI is stubbed out).
    where, tb = "", exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename.rsplit("/", 1)[-1]
        if name != "triad.py":
            where = f" ({name}:{tb.tb_lineno})"
        tb = tb.tb_next
    return f"{type(exc).__name__}: {exc}{where}"


def _takes_config(fn: Callable[..., Any]) -> bool:
    return len(inspect.signature(fn).parameters) >= (1 if isinstance(fn, type) else 2)


def _check_type(key: str, value: Any, hint: Any) -> None:
    # Only the plain JSON types are checked; anything richer is the dataclass's business.
    expected = {float: (int, float), int: (int,), str: (str,), bool: (bool,)}.get(hint)
    if expected and (not isinstance(value, expected) or (hint is not bool and isinstance(value, bool))):
        raise _Failure(f"config key {key!r} must be {hint.__name__}, got {json.dumps(value)}")


def _parse_config(text: str, schema: Optional[type]) -> Any:
    text = text.strip()
    try:
        data = {} if text in ("", "null") else json.loads(text)
    except ValueError as e:
        raise _Failure(f"config is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise _Failure(f"config must be a JSON object, got {text}")
    if schema is None:
        return data
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise _Failure(f"unknown config key(s) {', '.join(unknown)} (known: {', '.join(fields) or 'none'})")
    missing = [n for n, f in fields.items() if n not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise _Failure(f"missing config key(s) {', '.join(missing)}")
    hints = typing.get_type_hints(schema)
    for key, value in data.items():
        _check_type(key, value, hints.get(key))
    return schema(**data)  # its __post_init__ may validate further


def _registered() -> _Plugin:
    if _plugin is None:
        raise TypeError("plugin.py registers no plugin: decorate one function with @triad.reward or "
                        "@triad.data_filter, or one class with @triad.metric")
    return _plugin


def _configure(text: str) -> None:
    p = _registered()
    # Only now, in the sandbox: while componentize-py builds the plugin, print still works.
    # stderr goes to warn, since the host shows error lines only beside a trap.
    if not isinstance(sys.stdout, _LogStream):
        sys.stdout, sys.stderr = _LogStream(host.Level.INFO), _LogStream(host.Level.WARN)
    try:
        p.config = _parse_config(text, p.schema)
        if p.kind == types.PluginKind.METRIC:
            p.instance = p.target(p.config) if _takes_config(p.target) else p.target()
    except _Failure as e:
        raise _error(f"invalid config: {e}") from None
    except Exception as e:
        raise _error(f"invalid config: {_describe(e)}") from None
    p.configured = True


def _ready() -> _Plugin:
    p = _registered()
    if not p.configured:
        raise _error("called before configure: the host must configure a plugin first")
    return p


def _each(records: list[Any], call: Callable[[Any], Any]) -> list[Any]:
    """`call` on every record, an exception becoming a plugin error that names the record."""
    out = []
    for i, record in enumerate(records):
        try:
            out.append(call(record))
        except Err:
            raise
        except _Failure as e:
            raise _error(str(e), i) from None
        except Exception as e:
            raise _error(_describe(e), i) from None
    return out


def _call(p: _Plugin) -> Callable[[Any], Any]:
    fn = p.target
    return (lambda record: fn(record, p.config)) if _takes_config(fn) else fn


def _score(episodes: list[types.Episode]) -> list[float]:
    p = _ready()
    fn = _call(p)

    def one(episode: types.Episode) -> float:
        value = fn(episode)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Failure(f"{p.target.__name__} returned {value!r}; a reward is a number")
        if not math.isfinite(value):
            raise _Failure(f"{p.target.__name__} returned {value}; a reward must be finite")
        return float(value)

    return _each(episodes, one)


def _filter(samples: list[types.Sample]) -> list[types.Decision]:
    p = _ready()
    fn = _call(p)

    def one(sample: types.Sample) -> types.Decision:
        d = fn(sample)
        if d is True:
            return KEEP
        if d is False:
            return drop(p.info.name)
        if isinstance(d, _Rewrite):
            return types.Decision_Rewrite(types.Sample(str(d.text), sample.fields if d.fields is None else d.fields))
        if isinstance(d, (types.Decision_Keep, types.Decision_Drop, types.Decision_Rewrite)):
            return d
        raise _Failure(f"{p.target.__name__} returned {d!r}; return triad.KEEP, triad.drop(reason), "
                       f"triad.rewrite(text), True or False")

    return _each(samples, one)


def _statistics(records: list[types.MetricRecord]) -> list[float]:
    p = _ready()
    totals: list[float] = []
    for i, stats in enumerate(_each(records, lambda r: [float(x) for x in p.instance.statistics(r)])):
        if i == 0:
            totals = stats
        elif len(stats) != len(totals):
            raise _error(f"statistics has {len(stats)} entries, earlier records had {len(totals)}", i)
        else:
            totals = [t + s for t, s in zip(totals, stats)]
    return totals


def _finish(totals: list[float]) -> list[types.NamedValue]:
    p = _ready()
    try:
        values = p.instance.finish(list(totals))
        items = values.items() if isinstance(values, dict) else values
        return [types.NamedValue(str(name), float(value)) for name, value in items]
    except Exception as e:
        raise _error(_describe(e)) from None
