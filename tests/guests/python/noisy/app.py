"""A policy that writes to stdout and stderr everywhere: in init and in every
route call. The requested model picks what else it does:
- `throw`: raises an exception (a trap, with a traceback on stderr);
- `print-trap`: prints, then raises;
- anything else: routes to the first backend with the label `fixture=noisy`.
"""

import sys

import wit_world
from wit_world.imports import types

STATE = {}


class WitWorld(wit_world.WitWorld):
    def init(self, config: str, backends) -> None:
        print("noisy-python init on stdout")
        print("noisy-python init on stderr", file=sys.stderr)
        STATE["first"] = backends[0].name
        return types.Features(0)

    def route(self, request):
        print(f"noisy-python route {request.model}")
        print(f"noisy-python route {request.model} on stderr", file=sys.stderr)
        if request.model == "throw":
            raise ValueError("noisy-python throws on purpose")
        if request.model == "print-trap":
            print("noisy-python prints before it traps")
            raise RuntimeError("noisy-python traps after printing")
        target = types.Target(STATE["first"], None)
        return types.Decision_Route(types.Route([target], [types.Tag("fixture", "noisy")]))

    def observe(self, outcome) -> None:
        pass
