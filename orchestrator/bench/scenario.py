"""What the benchmark sends, as data: the kinds of run (language, code, the value ``main()``
must return) and the sustained scenarios (a mix of kinds by weight).

A new scenario is a new row in ``SCENARIOS``; a new kind of run a new entry in ``KINDS``.
Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Kind:
    """One kind of run: a ``/run`` request and the ``result.value`` a correct answer carries."""

    name: str
    language: str  # the request's "language": "python" | "nodejs"
    code: str
    expected: object  # result.value of a correct answer (never checked for LOOP: it cannot succeed)


HELLO = Kind("hello", "python", "def main():\n    return 'hi'\n", "hi")
PANDAS = Kind("pandas", "python",
              'import pandas as pd\n\n\ndef main():\n    return int(pd.DataFrame({"a": [1, 2, 3]}).a.sum())\n', 6)
NODE = Kind("node", "nodejs", "function main() {\n  return 'hi';\n}\n", "hi")
LOOP = Kind("loop", "python", "def main():\n    while True:\n        pass\n", None)

KINDS = MappingProxyType({kind.name: kind for kind in (HELLO, PANDAS, NODE)})


@dataclass(frozen=True)
class Scenario:
    """A closed-loop workload: every client sends the next kind of ``order()`` as soon as its
    last run answers."""

    name: str
    label: str
    mix: tuple[tuple[str, int], ...]  # (kind name, weight), weights >= 1

    def __post_init__(self) -> None:
        if not self.mix:
            raise ValueError(f"scenario {self.name}: empty mix")
        for kind, weight in self.mix:
            if kind not in KINDS:
                raise ValueError(f"scenario {self.name}: unknown kind {kind!r}")
            if weight < 1:
                raise ValueError(f"scenario {self.name}: weight of {kind} must be at least 1, not {weight}")

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(kind for kind, _ in self.mix)

    def order(self) -> tuple[Kind, ...]:
        """One cycle of the mix, ``sum(weights)`` long, the kinds spread evenly through it
        (smooth weighted round robin: 5:3:2 gives h p n h h p h n p h), so any stretch of the
        run sees the mix's proportions, not 5 hellos, then 3 pandas, then 2 nodes."""
        total = sum(weight for _, weight in self.mix)
        credit = dict.fromkeys(self.kinds, 0)
        cycle = []
        for _ in range(total):
            for kind, weight in self.mix:
                credit[kind] += weight
            chosen = max(self.kinds, key=lambda kind: credit[kind])  # ties: the first in the mix
            credit[chosen] -= total
            cycle.append(KINDS[chosen])
        return tuple(cycle)


SCENARIOS = MappingProxyType({scenario.name: scenario for scenario in (
    Scenario("hello", "hello only", (("hello", 1),)),
    Scenario("pandas", "pandas only", (("pandas", 1),)),
    Scenario("mix", "mix hello 5 : pandas 3 : node 2", (("hello", 5), ("pandas", 3), ("node", 2))),
)})
