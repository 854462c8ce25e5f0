"""What the SDK check scripts share: the mock upstream's record of what it
received, and checks that report one line each and a closing count."""

import json
import sys
import urllib.request


class Checks:
    """Named checks against a router whose upstream is the mock at `mock`."""

    def __init__(self, mock: str):
        self.mock = mock
        self.passed = 0
        self.failed = 0

    def requests(self):
        """What the mock upstream received, oldest first."""
        with urllib.request.urlopen(f"{self.mock}/mock/requests") as r:
            return json.load(r)

    def clear(self):
        """Forgets what the mock upstream received."""
        urllib.request.urlopen(urllib.request.Request(f"{self.mock}/mock/requests", method="DELETE")).read()

    def last_request(self):
        """The last request the mock upstream received."""
        received = self.requests()
        assert received, "the mock received nothing"
        return received[-1]

    def check(self, name):
        """Runs the decorated function at once (after clearing the mock's
        record) and reports it as `ok` or `FAIL`."""

        def run(fn):
            self.clear()
            try:
                fn()
                self.passed += 1
                print(f"ok   {name}")
            except Exception as e:  # noqa: BLE001 - report every failure
                self.failed += 1
                print(f"FAIL {name}: {type(e).__name__}: {e}")
            return fn

        return run

    def finish(self):
        """Prints the count and exits non-zero when a check failed."""
        print(f"{self.passed} passed, {self.failed} failed")
        sys.exit(1 if self.failed else 0)
