"""Scenarios of the traffic generator: their classes, families and parameter table.

A scenario is one kind of user session (an LLM chat, an IoT device reporting,
an MCP agent calling tools, ...). Its parameters are drawn from the
distributions in `BUILTIN_SCENARIOS`, the one table that sets how long, how
big and how fast each session is. Session k of a run with seed s draws from
`random.Random` seeded by (s, k) alone, so a plan never depends on timing or
on which sessions ran before it.

Units: "s" parameters are seconds of real time. The client divides them by
`--time-scale` before it sleeps or sends a wait time to the server, and
multiplies rates ("tokens/s") by it, so a scaled run keeps the same plans.

    plan = plan_session(seed=7, index=0)
    plan.scenario, plan.family, plan.label   # ('llm_chat', 'ws', 1)
    plan.steps[0]["answer_tokens"]
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tools.traffic.protocol import MCP_HANDSHAKE_REVISION, MCP_STATELESS_REVISION, MCP_TOOLS

AI = 1
NOT_AI = 0


@dataclass(frozen=True)
class Family:
    """Protocol setting a flow belongs to; the detector is trained per family."""

    name: str
    encrypted: bool


# Family "mcp" is the HTTPS setting: MCP sessions and ordinary HTTPS are its two classes.
FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (Family("ws", encrypted=False), Family("wss", encrypted=True), Family("mcp", encrypted=True))
}


@dataclass(frozen=True)
class Uniform:
    """Continuous uniform distribution on [low, high]."""

    low: float
    high: float

    def draw(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True)
class IntRange:
    """Discrete uniform distribution on the integers low..high, both included."""

    low: int
    high: int

    def draw(self, rng: random.Random) -> int:
        return rng.randint(self.low, self.high)


@dataclass(frozen=True)
class LogNormal:
    """Log-normal distribution given by its median and sigma, clipped to [low, high].

    Sizes and waiting times of human and network activity are right-skewed,
    which a log-normal reproduces; the clip keeps sessions within their bound.
    """

    median: float
    sigma: float
    low: float
    high: float
    integer: bool = False

    def draw(self, rng: random.Random) -> float | int:
        value = min(max(rng.lognormvariate(math.log(self.median), self.sigma), self.low), self.high)
        return round(value) if self.integer else value


@dataclass(frozen=True)
class Choice:
    """Weighted choice among options."""

    options: tuple[Any, ...]
    weights: tuple[float, ...] | None = None

    def draw(self, rng: random.Random) -> Any:
        return rng.choices(self.options, weights=self.weights)[0]


Distribution = Uniform | IntRange | LogNormal | Choice


@dataclass(frozen=True)
class Param:
    """One row of the parameter table: distribution, unit and why the values are realistic.

    `per` is "session" for a value drawn once a session, or "step" for a value
    drawn again for every step (turn, reading, call, page, post). `count`
    names an integer step parameter: the row is then drawn that many times
    and its value is a tuple.
    """

    distribution: Distribution
    unit: str
    rationale: str
    per: str = "session"
    count: str | None = None


@dataclass(frozen=True)
class Scenario:
    """A kind of session: its class, the families it runs over and its parameter table.

    `steps` names the session parameter that gives the number of steps.
    `max_seconds` bounds one session in real time. It is set above the
    longest session the clipped distributions allow (largest counts, waits
    and delays added up), so only a stalled session reaches it.
    """

    name: str
    label: int
    families: tuple[str, ...]
    steps: str
    max_seconds: float
    params: Mapping[str, Param]
    description: str = ""


BUILTIN_SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="llm_chat",
        label=AI,
        families=("ws", "wss"),
        steps="turns",
        max_seconds=720.0,
        description="chat client streaming LLM answers token by token over one WebSocket",
        params={
            "turns": Param(
                IntRange(2, 6), "turns", "several prompt-answer exchanges before the user leaves (estimate)"
            ),
            "think_time": Param(
                LogNormal(8.0, 0.6, 2.0, 45.0), "s",
                "typing a prompt or reading the last answer; the socket stays open meanwhile (estimate)",
                per="step",
            ),
            "prompt_bytes": Param(
                LogNormal(350, 0.5, 150, 1500, integer=True), "bytes",
                "a JSON text frame with the prompt and request options: a few hundred bytes",
                per="step",
            ),
            "answer_tokens": Param(
                LogNormal(220, 0.7, 20, 1000, integer=True), "tokens",
                "chat answers run from one sentence to a page; about 4 characters a token",
                per="step",
            ),
            "first_token_delay": Param(
                LogNormal(0.7, 0.5, 0.2, 3.0), "s",
                "queueing and prompt processing before the first token: sub-second to a few seconds (estimate)",
                per="step",
            ),
            "token_rate": Param(
                Uniform(20.0, 80.0), "tokens/s",
                "hosted models stream tens of tokens a second to one user (estimate)",
                per="step",
            ),
        },
    ),
    Scenario(
        name="iot_telemetry",
        label=NOT_AI,
        families=("ws", "wss"),
        steps="readings",
        max_seconds=300.0,
        description="device pushing sensor readings over a WebSocket; the server now and then sends a command",
        params={
            "readings": Param(IntRange(5, 20), "readings", "with the period below, a session lasts tens of seconds"),
            "period": Param(
                Uniform(2.0, 8.0), "s", "dashboards of live sensors refresh every few seconds (estimate)"
            ),
            "command_probability": Param(
                Uniform(0.03, 0.15), "probability",
                "chance the server answers a reading with a command: a few commands a session at most",
            ),
            "jitter": Param(
                Uniform(0.9, 1.1), "factor",
                "device timers drift and wake late, so the gap before each reading is period times this",
                per="step",
            ),
            "reading_bytes": Param(
                LogNormal(120, 0.3, 60, 300, integer=True), "bytes",
                "a JSON reading of a few sensor values with a timestamp",
                per="step",
            ),
        },
    ),
    Scenario(
        name="mcp_tools",
        label=AI,
        families=("mcp",),
        steps="calls",
        max_seconds=480.0,
        description="MCP client (official SDK) calling tools over Streamable HTTP with TLS",
        params={
            "calls": Param(IntRange(2, 6), "calls", "an agent task takes a handful of tool calls (estimate)"),
            "protocol": Param(
                Choice((MCP_HANDSHAKE_REVISION, MCP_STATELESS_REVISION)), "revision",
                "the SDK speaks both: the 2025-11-25 handshake (initialize, session id, GET stream) and the "
                "stateless 2026-07-28 revision (server/discover); clients of both kinds are in use",
            ),
            "think_time": Param(
                LogNormal(5.0, 0.6, 1.0, 30.0), "s",
                "the model deciding on the next call between results: seconds of LLM inference (estimate)",
                per="step",
            ),
            "tool": Param(
                Choice(tuple(MCP_TOOLS)), "name",
                "three tools with different argument and result shapes",
                per="step",
            ),
            "argument_bytes": Param(
                LogNormal(150, 0.5, 40, 800, integer=True), "bytes",
                "tool arguments are a query, a path or a short SQL statement",
                per="step",
            ),
            "progress_steps": Param(
                IntRange(2, 10), "notifications",
                "progress notifications streamed over SSE before the result",
                per="step",
            ),
            "step_seconds": Param(
                LogNormal(0.4, 0.6, 0.05, 3.0), "s",
                "work between progress notifications: a search shard, a query batch (estimate)",
                per="step",
            ),
            "result_bytes": Param(
                LogNormal(3000, 0.8, 200, 30000, integer=True), "bytes",
                "tool results are snippets, rows or summaries: hundreds of bytes to tens of KB",
                per="step",
            ),
        },
    ),
    Scenario(
        name="https_web",
        label=NOT_AI,
        families=("mcp",),
        steps="pages",
        max_seconds=480.0,
        description="browser-like page visits: HTML, then its assets over a keep-alive connection",
        params={
            "pages": Param(IntRange(1, 4), "pages", "a short visit to a site"),
            "read_time": Param(
                LogNormal(15.0, 0.7, 3.0, 90.0), "s",
                "reading a page before following a link; not used before the first page (estimate)",
                per="step",
            ),
            "html_bytes": Param(
                LogNormal(30000, 0.6, 4000, 150000, integer=True), "bytes",
                "HTML documents are tens of KB",
                per="step",
            ),
            "assets": Param(IntRange(3, 10), "assets", "stylesheets, scripts and images fetched after the HTML",
                            per="step"),
            "asset_bytes": Param(
                LogNormal(15000, 1.0, 500, 200000, integer=True), "bytes",
                "from small icons to large scripts and images",
                per="step", count="assets",
            ),
        },
    ),
    Scenario(
        name="https_rest",
        label=NOT_AI,
        families=("mcp",),
        steps="posts",
        max_seconds=600.0,
        description="device posting telemetry to a REST endpoint at a fixed period",
        params={
            "posts": Param(IntRange(4, 15), "posts", "one reporting session of a device"),
            "period": Param(
                LogNormal(8.0, 0.5, 2.0, 30.0), "s",
                "REST reporters post every few seconds to tens of seconds (estimate)",
            ),
            "jitter": Param(Uniform(0.9, 1.1), "factor", "timer drift: the gap before a post is period times this",
                            per="step"),
            "body_bytes": Param(
                LogNormal(400, 0.5, 100, 3000, integer=True), "bytes",
                "a JSON body with a batch of readings and device metadata",
                per="step",
            ),
        },
    ),
)

SCENARIOS: dict[str, Scenario] = {}


def register_scenario(scenario: Scenario) -> Scenario:
    """Add `scenario` to `SCENARIOS` after checking its table is consistent.

    Raises:
        ValueError: on a duplicate name, an unknown family, a label other than
            0 or 1, or a `steps`/`count`/`per` entry that does not fit the table.
    """
    where = f"scenario {scenario.name!r}"
    if scenario.name in SCENARIOS:
        raise ValueError(f"{where} is already registered; pick another name")
    if scenario.label not in (AI, NOT_AI):
        raise ValueError(f"{where} has label {scenario.label!r}; use 1 (AI) or 0 (not AI)")
    unknown = [family for family in scenario.families if family not in FAMILIES]
    if not scenario.families or unknown:
        raise ValueError(f"{where} has families {scenario.families!r}; each must be one of {sorted(FAMILIES)}")
    if scenario.max_seconds <= 0:
        raise ValueError(f"{where} has max_seconds {scenario.max_seconds!r}; it must be greater than 0")
    steps = scenario.params.get(scenario.steps)
    if steps is None or steps.per != "session" or not isinstance(steps.distribution, IntRange):
        raise ValueError(f"{where}: steps={scenario.steps!r} must name a per-session IntRange parameter")
    if steps.distribution.low < 1:
        raise ValueError(f"{where}: parameter {scenario.steps!r} must draw at least 1 step")
    for name, param in scenario.params.items():
        if param.per not in ("session", "step"):
            raise ValueError(f"{where}: parameter {name!r} has per={param.per!r}; use 'session' or 'step'")
        if param.count is not None:
            counter = scenario.params.get(param.count)
            if counter is None or counter.per != "step" or not isinstance(counter.distribution, IntRange):
                raise ValueError(
                    f"{where}: parameter {name!r} has count={param.count!r}, "
                    "which must name a per-step IntRange parameter defined before it"
                )
            if list(scenario.params).index(param.count) > list(scenario.params).index(name):
                raise ValueError(f"{where}: parameter {param.count!r} must come before {name!r}, which counts on it")
    SCENARIOS[scenario.name] = scenario
    return scenario


for _scenario in BUILTIN_SCENARIOS:
    register_scenario(_scenario)

MixEntry = tuple[str, str]

# Session k runs DEFAULT_MIX[k % len(DEFAULT_MIX)]. Each family gets AI and
# not-AI sessions in equal numbers: ws and wss one llm_chat and one
# iot_telemetry, mcp two mcp_tools against one https_web and one https_rest.
# Families alternate so that any 8 consecutive sessions cover every entry.
DEFAULT_MIX: tuple[MixEntry, ...] = (
    ("llm_chat", "ws"),
    ("iot_telemetry", "ws"),
    ("mcp_tools", "mcp"),
    ("llm_chat", "wss"),
    ("iot_telemetry", "wss"),
    ("https_web", "mcp"),
    ("mcp_tools", "mcp"),
    ("https_rest", "mcp"),
)


@dataclass(frozen=True)
class SessionPlan:
    """Everything one session will do, drawn before it starts.

    `params` contains the per-session values and `steps` one mapping of
    per-step values for each step, in order.
    """

    seed: int
    index: int
    scenario: str
    family: str
    label: int
    encrypted: bool
    params: Mapping[str, Any]
    steps: tuple[Mapping[str, Any], ...] = field(default=())


def check_mix(mix: Sequence[MixEntry]) -> None:
    """Check that every (scenario, family) entry of `mix` is registered and allowed.

    Raises:
        ValueError: naming the first entry that is not.
    """
    if not mix:
        raise ValueError("the scenario mix is empty; pass at least one (scenario, family) entry")
    for scenario_name, family in mix:
        scenario = SCENARIOS.get(scenario_name)
        if scenario is None:
            raise ValueError(
                f"mix entry ({scenario_name!r}, {family!r}): unknown scenario; "
                f"registered scenarios are {sorted(SCENARIOS)}"
            )
        if family not in scenario.families:
            raise ValueError(
                f"mix entry ({scenario_name!r}, {family!r}): scenario {scenario_name!r} "
                f"runs over {scenario.families!r} only"
            )


def plan_session(seed: int, index: int, mix: Sequence[MixEntry] = DEFAULT_MIX) -> SessionPlan:
    """Draw the plan of session `index` of a run with `seed`.

    The result depends only on (seed, index, mix): the generator is seeded
    with a string, which `random.Random` hashes with SHA-512, so plans are the
    same on every run and every Python version since 3.2.
    """
    check_mix(mix)
    scenario_name, family = mix[index % len(mix)]
    scenario = SCENARIOS[scenario_name]
    rng = random.Random(f"aiflowd-traffic/{seed}/{index}")

    params = {name: param.distribution.draw(rng) for name, param in scenario.params.items() if param.per == "session"}
    steps = []
    for _ in range(params[scenario.steps]):
        step: dict[str, Any] = {}
        for name, param in scenario.params.items():
            if param.per != "step":
                continue
            if param.count is None:
                step[name] = param.distribution.draw(rng)
            else:
                step[name] = tuple(param.distribution.draw(rng) for _ in range(step[param.count]))
        steps.append(step)

    return SessionPlan(
        seed=seed,
        index=index,
        scenario=scenario_name,
        family=family,
        label=scenario.label,
        encrypted=FAMILIES[family].encrypted,
        params=params,
        steps=tuple(steps),
    )
