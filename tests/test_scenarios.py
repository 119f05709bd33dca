"""Tests of the scenario table and what both sides derive from it (tools/traffic), without network traffic.

Plans of every registered scenario over every family it runs over: the same
seed gives the same plan, another seed another plan, every value stays in
its table row, and the server draws the same plan from a plan reference.
Also the Markdown rendering of the table, the shared audio framing and
count rules, the client port allocator and the validation of plan headers.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections import Counter

import pytest

from tools.traffic.connections import SourcePorts, _connect_from_port
from tools.traffic.distributions import Choice, IntRange, LogNormal, Uniform
from tools.traffic.pacing import MAX_TIME_SCALE, check_time_scale
from tools.traffic.protocol import PLAN_HEADER, TIME_SCALE_HEADER, VOICE_FRAME_SECONDS
from tools.traffic.routes import RequestError, scripted_session
from tools.traffic.scenarios import (
    DEFAULT_MIX,
    DEFAULT_MIX_WEIGHTS,
    FAMILIES,
    SCENARIOS,
    Param,
    Scenario,
    draw_plan,
    parameter_table_markdown,
    plan_from_reference,
    register_scenario,
    weighted_mix,
)
from tools.traffic.scripts import (
    audio_frame,
    audio_payload,
    chat_counts,
    ticker_updates,
    voice_frames,
    voice_session_counts,
)

SEED = 7
OTHER_SEED = 8
PLANS_PER_SCENARIO = 24

AI_SCENARIOS = {"llm_chat", "llm_batched", "voice_assistant", "mcp_tools", "llm_chunked"}
NEW_SCENARIOS = {
    "llm_batched", "voice_assistant", "iot_sensor", "iot_meter", "iot_camera", "chat_messaging", "ticker_push",
    "dashboard", "llm_chunked", "rest_polling", "file_download", "sse_notifications", "update_check",
}

SCENARIO_FAMILIES = [(name, family) for name, scenario in SCENARIOS.items() for family in scenario.families]


# Registry


def test_registry_contains_new_scenarios():
    assert NEW_SCENARIOS <= set(SCENARIOS)


@pytest.mark.parametrize(("name", "family"), SCENARIO_FAMILIES)
def test_scenario_label_matches_class(name, family):
    assert SCENARIOS[name].label == (1 if name in AI_SCENARIOS else 0)


def test_websocket_scenarios_run_over_ws_and_wss():
    for scenario in SCENARIOS.values():
        if "ws" in scenario.families or "wss" in scenario.families:
            assert set(scenario.families) == {"ws", "wss"}, scenario.name


def test_every_family_has_both_labels():
    labels = {(family, SCENARIOS[name].label) for name, family in SCENARIO_FAMILIES}
    for family in FAMILIES:
        assert (family, 0) in labels, family
        assert (family, 1) in labels, family


def test_register_accepts_lognormal_step_count():
    scenario = Scenario(
        name="test_lognormal_steps",
        label=0,
        families=("ws",),
        steps="count",
        max_seconds=10.0,
        params={"count": Param(LogNormal(3, 0.5, 1, 9, integer=True), "steps", "test")},
    )
    try:
        register_scenario(scenario)
        plan = draw_plan(SEED, 0, "test_lognormal_steps", "ws")
        assert 1 <= len(plan.steps) <= 9
        assert len(plan.steps) == plan.params["count"]
    finally:
        SCENARIOS.pop("test_lognormal_steps", None)


def test_register_rejects_float_step_count():
    scenario = Scenario(
        name="test_float_steps",
        label=0,
        families=("ws",),
        steps="count",
        max_seconds=10.0,
        params={"count": Param(LogNormal(3, 0.5, 1, 9), "steps", "test")},
    )
    with pytest.raises(ValueError, match="steps='count' must name a per-session integer parameter"):
        register_scenario(scenario)
    assert "test_float_steps" not in SCENARIOS


def test_register_rejects_zero_step_choice():
    scenario = Scenario(
        name="test_zero_steps",
        label=0,
        families=("ws",),
        steps="count",
        max_seconds=10.0,
        params={"count": Param(Choice((0, 1)), "steps", "test")},
    )
    with pytest.raises(ValueError, match="parameter 'count' must draw at least 1 step"):
        register_scenario(scenario)


def test_register_rejects_bad_name():
    scenario = Scenario(
        name="Bad/Name",
        label=0,
        families=("ws",),
        steps="count",
        max_seconds=10.0,
        params={"count": Param(IntRange(1, 2), "steps", "test")},
    )
    with pytest.raises(ValueError, match="a name is lower-case letters, digits and underscores"):
        register_scenario(scenario)


# Plans of every scenario


@pytest.mark.parametrize(("name", "family"), SCENARIO_FAMILIES)
def test_plan_same_seed_same_plan(name, family):
    for index in range(PLANS_PER_SCENARIO):
        assert draw_plan(SEED, index, name, family) == draw_plan(SEED, index, name, family)


@pytest.mark.parametrize(("name", "family"), SCENARIO_FAMILIES)
def test_plan_other_seed_other_plan(name, family):
    differ = 0
    for index in range(PLANS_PER_SCENARIO):
        first = draw_plan(SEED, index, name, family)
        other = draw_plan(OTHER_SEED, index, name, family)
        differ += (first.params, first.steps) != (other.params, other.steps)
    assert differ == PLANS_PER_SCENARIO


@pytest.mark.parametrize(("name", "family"), SCENARIO_FAMILIES)
def test_plan_values_within_table(name, family):
    table = SCENARIOS[name].params
    for index in range(PLANS_PER_SCENARIO):
        plan = draw_plan(SEED, index, name, family)
        values = list(plan.params.items())
        for step in plan.steps:
            for key, value in step.items():
                values += [(key, item) for item in value] if table[key].count else [(key, value)]
        for key, value in values:
            distribution = table[key].distribution
            if isinstance(distribution, Choice):
                assert value in distribution.options, (name, key, value)
            else:
                assert distribution.low <= value <= distribution.high, (name, key, value)
        assert len(plan.steps) == plan.params[SCENARIOS[name].steps]
        assert plan.label == SCENARIOS[name].label
        assert plan.encrypted == FAMILIES[family].encrypted


@pytest.mark.parametrize(("name", "family"), SCENARIO_FAMILIES)
def test_plan_reference_round_trip(name, family):
    plan = draw_plan(SEED, 11, name, family)
    assert plan.reference == f"{SEED}/11/{name}/{family}"
    assert plan_from_reference(plan.reference) == plan


def test_plan_counted_params_have_count_items():
    for index in range(PLANS_PER_SCENARIO):
        voice = draw_plan(SEED, index, "voice_assistant", "wss")
        for step in voice.steps:
            assert len(step["sentence_seconds"]) == step["sentences"]


def test_mcp_plans_include_long_sessions():
    calls = [draw_plan(SEED, index, "mcp_tools", "mcp").params["calls"] for index in range(400)]
    assert min(calls) >= 1
    assert max(calls) <= 30
    assert sum(1 for count in calls if count >= 12) >= 10


def test_plan_reference_rejects_malformed():
    with pytest.raises(ValueError, match="plan reference '7/x/ticker_push/ws' is not seed/index/scenario/family"):
        plan_from_reference("7/x/ticker_push/ws")


def test_plan_reference_rejects_unknown_scenario():
    with pytest.raises(ValueError, match="plan reference '7/1/voice/ws': mix entry \\('voice', 'ws'\\): unknown"):
        plan_from_reference("7/1/voice/ws")


def test_plan_reference_rejects_other_family():
    with pytest.raises(ValueError, match="scenario 'ticker_push' runs over \\('ws', 'wss'\\) only"):
        plan_from_reference("7/1/ticker_push/mcp")


def test_plan_reference_rejects_scenario_not_served():
    with pytest.raises(ValueError, match="scenario 'dashboard' is not served here"):
        plan_from_reference("7/1/dashboard/ws", scenarios=["ticker_push"])


def test_plan_reference_rejects_huge_index():
    with pytest.raises(ValueError, match="is not seed/index/scenario/family"):
        plan_from_reference("7/" + "9" * 40 + "/ticker_push/ws")


# Mix


def test_weighted_mix_interleaves_rounds():
    mix = weighted_mix([(("a", "ws"), 2), (("b", "ws"), 1), (("c", "ws"), 3)])
    assert mix == (("a", "ws"), ("b", "ws"), ("c", "ws"), ("a", "ws"), ("c", "ws"), ("c", "ws"))


def test_weighted_mix_rejects_zero_weight():
    with pytest.raises(ValueError, match="mix entry \\('a', 'ws'\\) has weight 0; use an integer >= 1"):
        weighted_mix([(("a", "ws"), 0)])


def test_default_mix_covers_every_scenario_and_family():
    assert set(DEFAULT_MIX) == set(SCENARIO_FAMILIES)
    assert len(DEFAULT_MIX) == sum(weight for _, weight in DEFAULT_MIX_WEIGHTS)


def test_default_mix_balances_websocket_labels():
    # A WebSocket session is one connection, so its session share is its flow share.
    sessions = Counter((family, SCENARIOS[name].label) for name, family in DEFAULT_MIX)
    for family in ("ws", "wss"):
        assert sessions[(family, 1)] == sessions[(family, 0)] > 0, family


def test_default_mix_has_both_https_labels():
    sessions = Counter(SCENARIOS[name].label for name, family in DEFAULT_MIX if family == "mcp")
    assert sessions[1] > 0
    assert sessions[0] > 0


# Markdown table


def test_markdown_table_has_every_parameter_row():
    markdown = parameter_table_markdown()
    lines = markdown.splitlines()
    assert lines[0] == "| scenario | label | families | steps | what a session does |"
    assert "| scenario | parameter | distribution | unit | drawn per | reason |" in lines
    rows = [line for line in lines if line.startswith("| `")]
    expected = len(SCENARIOS) + sum(len(scenario.params) for scenario in SCENARIOS.values())
    assert len(rows) == expected
    for line in rows:
        assert line.count(" | ") >= 4, line


def test_markdown_table_describes_distributions():
    markdown = parameter_table_markdown([SCENARIOS["voice_assistant"]])
    assert "| `voice_assistant` | 1 (AI) | ws, wss | `exchanges` |" in markdown
    assert ("| `voice_assistant` | `sentence_seconds` | log-normal, median 3, sigma 0.5, clipped to [0.8, 10] "
            "| s | step, `sentences` times |") in markdown
    assert "one of `1`, `2`, `3` with weights 0.6, 0.2, 0.2" in markdown
    assert "one of false, true with weights 0.8, 0.2" in markdown


def test_markdown_escapes_pipes():
    scenario = Scenario(
        name="test_pipe",
        label=0,
        families=("ws",),
        steps="count",
        max_seconds=1.0,
        params={"count": Param(IntRange(1, 2), "a|b", "either | or")},
        description="x | y",
    )
    markdown = parameter_table_markdown([scenario])
    assert "x \\| y" in markdown
    assert "| a\\|b |" in markdown
    assert "either \\| or" in markdown


def test_distribution_descriptions():
    assert Uniform(0.5, 2.0).describe() == "uniform on [0.5, 2]"
    assert IntRange(1, 4).describe() == "integer uniform on 1..4"
    assert LogNormal(1500, 0.9, 100, 50000, integer=True).describe() == (
        "integer log-normal, median 1500, sigma 0.9, clipped to [100, 50000]"
    )
    assert Choice(("steady", "bursty")).describe() == "one of `steady`, `bursty`, equally likely"


# Rules both sides share


def test_voice_frames_cover_seconds():
    assert voice_frames(VOICE_FRAME_SECONDS) == 1
    assert voice_frames(3.0) == 50
    assert voice_frames(0.001) == 1


def test_voice_session_counts_add_up():
    plan = draw_plan(SEED, 3, "voice_assistant", "ws")
    counts = voice_session_counts(plan)
    microphone = sum(voice_frames(step["pause_seconds"]) + voice_frames(step["speech_seconds"])
                     for step in plan.steps) + voice_frames(plan.params["linger_seconds"])
    answer = sum(voice_frames(seconds) for step in plan.steps for seconds in step["sentence_seconds"])
    assert counts["microphone_frames"] == microphone
    assert counts["answer_frames"] == answer
    assert counts["tool_calls"] == sum(1 for step in plan.steps if step["tool_call"])


def test_ticker_updates_follow_mode():
    for index in range(PLANS_PER_SCENARIO):
        plan = draw_plan(SEED, index, "ticker_push", "ws")
        for step in plan.steps:
            expected = step["burst_updates"] if plan.params["mode"] == "bursty" else 1
            assert ticker_updates(plan, step) == expected


def test_chat_counts_split_steps():
    plan = draw_plan(SEED, 5, "chat_messaging", "wss")
    counts = chat_counts(plan)
    assert counts["sent"] + counts["received"] == len(plan.steps)
    assert counts["sent"] == [step["direction"] for step in plan.steps].count("sent")


@pytest.mark.parametrize(("version", "header_bytes"), [(1, 0), (2, 16), (3, 4)])
def test_audio_frame_round_trip(version, header_bytes):
    payload = random.Random(SEED).randbytes(120)
    frame = audio_frame(version, payload, timestamp_ms=1234)
    assert len(frame) == len(payload) + header_bytes
    assert audio_payload(version, frame) == payload


def test_audio_frame_version_2_header():
    frame = audio_frame(2, b"\x01\x02\x03", timestamp_ms=0x01020304)
    assert frame[:16] == bytes.fromhex("0002 0000 00000000 01020304 00000003")


def test_audio_payload_rejects_wrong_size():
    frame = audio_frame(3, b"abcd", timestamp_ms=0) + b"extra"
    with pytest.raises(ValueError, match="invalid audio frame: its header gives a payload of 4 bytes, but 9 bytes"):
        audio_payload(3, frame)


def test_audio_payload_rejects_short_frame():
    with pytest.raises(ValueError, match="invalid audio frame: 3 bytes, shorter than the 16-byte header of protocol "
                                         "version 2"):
        audio_payload(2, b"abc")


def test_audio_frame_rejects_unknown_version():
    with pytest.raises(ValueError, match="audio protocol version 4 is unknown"):
        audio_frame(4, b"", timestamp_ms=0)


# Plan headers on the server side


def test_scripted_session_draws_named_plan():
    plan = draw_plan(SEED, 4, "ticker_push", "wss")
    session = scripted_session({PLAN_HEADER: plan.reference, TIME_SCALE_HEADER: "20.0"}, "ticker_push", "wss")
    assert session.plan == plan
    assert session.pace.time_scale == 20.0


def test_scripted_session_rejects_missing_plan():
    with pytest.raises(RequestError, match="header 'aiflowd-plan' is missing; a dashboard session must name its plan"):
        scripted_session({TIME_SCALE_HEADER: "1"}, "dashboard")


def test_scripted_session_rejects_other_listener():
    plan = draw_plan(SEED, 4, "ticker_push", "ws")
    with pytest.raises(RequestError, match="names family 'ws', but this listener serves 'wss'"):
        scripted_session({PLAN_HEADER: plan.reference, TIME_SCALE_HEADER: "1"}, "ticker_push", "wss")


def test_scripted_session_rejects_other_scenario():
    plan = draw_plan(SEED, 4, "ticker_push", "ws")
    with pytest.raises(RequestError, match="scenario 'ticker_push' is not served here"):
        scripted_session({PLAN_HEADER: plan.reference, TIME_SCALE_HEADER: "1"}, "dashboard")


@pytest.mark.parametrize("value", [None, "0", "-1", "nan", "1e9"])
def test_scripted_session_rejects_time_scale(value):
    plan = draw_plan(SEED, 4, "dashboard", "ws")
    headers = {PLAN_HEADER: plan.reference}
    if value is not None:
        headers[TIME_SCALE_HEADER] = value
    with pytest.raises(RequestError, match="header 'aiflowd-time-scale'"):
        scripted_session(headers, "dashboard")


def test_time_scale_limit():
    assert check_time_scale(MAX_TIME_SCALE, "test") == MAX_TIME_SCALE
    with pytest.raises(ValueError, match="test True is not a number"):
        check_time_scale(True, "test")


# Client ports


def test_source_ports_split_between_workers():
    first = SourcePorts(40000, 40009, worker=0, workers=2)
    second = SourcePorts(40000, 40009, worker=1, workers=2)
    assert [first.take() for _ in range(6)] == [40000, 40002, 40004, 40006, 40008, 40000]
    assert [second.take() for _ in range(6)] == [40001, 40003, 40005, 40007, 40009, 40001]


def test_source_ports_skip_port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        ports = SourcePorts(port, min(port + 3, 65535))
        with socket.socket() as sock:
            bound = ports.bind(sock)
            assert bound != port
            assert port < bound <= port + 3
            assert sock.getsockname()[1] == bound


def test_source_ports_reject_bad_range():
    with pytest.raises(ValueError, match="client port range 5000-4000 is invalid"):
        SourcePorts(5000, 4000)
    with pytest.raises(ValueError, match="worker 2 is outside 0..1"):
        SourcePorts(4000, 5000, worker=2, workers=2)


def test_client_port_connections_disable_nagle():
    # Both connect paths must send small writes at once, as real clients do.
    async def check():
        server = await asyncio.start_server(lambda reader, writer: writer.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                low = probe.getsockname()[1]
            stream = await _connect_from_port(SourcePorts(low, min(low + 50, 65535)),
                                              "127.0.0.1", port, 5.0)
            try:
                raw = stream.get_extra_info("socket")
                return raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            finally:
                await stream.aclose()
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(check()) != 0


def test_source_ports_from_system_range():
    ports = SourcePorts.from_system(worker=1, workers=3)
    assert ports.low + 1 == ports.take()
    assert ports.take() == ports.low + 4
