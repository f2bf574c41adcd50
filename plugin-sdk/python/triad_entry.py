"""The module componentize-py builds a Python plugin from: it exports the plugin's world.

Importing `plugin` (the user's plugin.py) runs its decorator, which registers the plugin with the
SDK; this class then forwards each export to it. The class carries the methods of every world,
so one entry module serves whichever world the host builds for (componentize-py ignores the
methods a world does not export).
"""

import plugin  # noqa: F401  (imported for its decorator's side effect)
import triad
import wit_world
from wit_world.imports import types

# Fail the build, not the first call, when plugin.py registers nothing.
triad._registered()


class WitWorld(wit_world.WitWorld):
    def info(self) -> types.PluginInfo:
        return triad._registered().info

    def configure(self, config: str) -> None:
        triad._configure(config)

    def score(self, episodes: list[types.Episode]) -> list[float]:
        return triad._score(episodes)

    def filter(self, samples: list[types.Sample]) -> list[types.Decision]:
        return triad._filter(samples)

    def statistics(self, records: list[types.MetricRecord]) -> list[float]:
        return triad._statistics(records)

    def finish(self, totals: list[float]) -> list[types.NamedValue]:
        return triad._finish(totals)
