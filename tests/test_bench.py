"""The benchmark suite's own logic (its timings are not tested: they are what it measures)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run import take_turns  # noqa: E402


def test_contenders_take_turns_in_a_rotating_order():
    calls = []

    def contender(name):
        def run():
            calls.append(name)
            return float(len(calls))

        return run

    seconds = take_turns({"a": contender("a"), "b": contender("b"), "c": contender("c")}, rounds=4)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert seconds == {"a": [1.0, 6.0, 8.0, 10.0], "b": [2.0, 4.0, 9.0, 11.0], "c": [3.0, 5.0, 7.0, 12.0]}
