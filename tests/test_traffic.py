"""Tests of the traffic generator (tools/traffic): plans, PKI, labels, options and short runs over loopback.

Two runs start the real server and client as subprocesses on 127.0.0.1 with
ports chosen by the kernel, at time scale 20. Both use the same seed and the
same fixed number of sessions. The first has two client workers and two
server processes, the second a single process on each side. Each run's
labels file is checked against the plans and against the connections the
server saw, the server's counts against what the plans ask for, and the two
runs against each other.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tools.traffic import client as client_module
from tools.traffic import runner as runner_module
from tools.traffic.client import ClientConfig, describe_error, parse_mix, run_clients
from tools.traffic.connections import check_test_address
from tools.traffic.labels import LABEL_COLUMNS, LabelRow, LabelWriter, read_labels
from tools.traffic.protocol import TICKER_PATH
from tools.traffic.scenarios import (
    DEFAULT_MIX,
    FAMILIES,
    SCENARIOS,
    Choice,
    IntRange,
    LogNormal,
    Param,
    Scenario,
    SessionPlan,
    Uniform,
    plan_session,
    register_scenario,
)
from tools.traffic.scripts import chat_counts, ticker_updates, voice_session_counts
from tools.traffic.server import ServerConfig
from tools.traffic.sessions import RUNNERS, SessionError, session_runner
from tools.traffic.tlsca import CA_COMMON_NAME, write_test_pki

REPO = Path(__file__).resolve().parents[1]
SEED = 7
OTHER_SEED = 8
TIME_SCALE = 20.0
# Every entry of the default mix once; with SEED, every planned counter is above 0.
SESSIONS = len(DEFAULT_MIX)
CONCURRENCY = 40
PROGRESS_INTERVAL = 2.0
# Guards against a hung subprocess, far above what a healthy run takes.
SERVER_READY_TIMEOUT = 60.0
CLIENT_TIMEOUT = 180.0
SERVER_STOP_TIMEOUT = 40.0
PROXY = "http://127.0.0.1:9"

AI_SCENARIOS = {"llm_chat", "llm_batched", "voice_assistant", "mcp_tools", "llm_chunked"}


# Plans


def test_plan_same_seed_same_params():
    for index in range(32):
        assert plan_session(SEED, index) == plan_session(SEED, index)


def test_plan_other_seed_other_params():
    for index in range(32):
        first = plan_session(SEED, index)
        other = plan_session(OTHER_SEED, index)
        assert first.scenario == other.scenario
        assert (first.params, first.steps) != (other.params, other.steps)


def test_plan_independent_of_earlier_sessions():
    alone = plan_session(SEED, 41)
    for index in range(41):
        plan_session(SEED, index)
    assert plan_session(SEED, 41) == alone


def test_plan_values_within_table():
    for index in range(400):
        plan = plan_session(SEED, index)
        table = SCENARIOS[plan.scenario].params
        values = [(name, value) for name, value in plan.params.items()]
        for step in plan.steps:
            for name, value in step.items():
                values += [(name, item) for item in value] if table[name].count else [(name, value)]
        for name, value in values:
            distribution = table[name].distribution
            if isinstance(distribution, Choice):
                assert value in distribution.options, (plan.scenario, name, value)
            else:
                assert distribution.low <= value <= distribution.high, (plan.scenario, name, value)
        assert len(plan.steps) == plan.params[SCENARIOS[plan.scenario].steps]


def test_plan_counted_param_has_count_items():
    plans = [plan_session(SEED, index) for index in range(64)]
    pages = [page for plan in plans if plan.scenario == "https_web" for page in plan.steps]
    assert pages
    for page in pages:
        assert len(page["asset_bytes"]) == page["assets"]


def test_plan_label_and_encryption():
    for index in range(len(DEFAULT_MIX)):
        plan = plan_session(SEED, index)
        assert plan.label == (1 if plan.scenario in AI_SCENARIOS else 0)
        assert plan.encrypted == FAMILIES[plan.family].encrypted


def test_parse_mix_interleaves_weights():
    assert parse_mix("llm_chat/ws:2,iot_sensor/wss") == (
        ("llm_chat", "ws"), ("iot_sensor", "wss"), ("llm_chat", "ws"),
    )


def test_parse_mix_rejects_bad_weight():
    with pytest.raises(ValueError, match="invalid weight 'x' in mix entry 'llm_chat/ws:x'"):
        parse_mix("llm_chat/ws:x")


def test_plan_rejects_unknown_scenario():
    with pytest.raises(ValueError, match="mix entry \\('voice', 'ws'\\): unknown scenario"):
        plan_session(SEED, 0, mix=[("voice", "ws")])


def test_plan_rejects_family_of_other_scenario():
    with pytest.raises(ValueError, match="scenario 'mcp_tools' runs over \\('mcp',\\) only"):
        plan_session(SEED, 0, mix=[("mcp_tools", "ws")])


def test_register_scenario_rejects_unknown_family():
    scenario = Scenario(
        name="test_unknown_family",
        label=0,
        families=("udp",),
        steps="count",
        max_seconds=10.0,
        params={"count": Param(IntRange(1, 2), "steps", "test")},
    )
    with pytest.raises(ValueError, match="families \\('udp',\\); each must be one of"):
        register_scenario(scenario)
    assert "test_unknown_family" not in SCENARIOS


def test_register_scenario_rejects_count_after_use():
    scenario = Scenario(
        name="test_count_order",
        label=0,
        families=("ws",),
        steps="count",
        max_seconds=10.0,
        params={
            "count": Param(IntRange(1, 2), "steps", "test"),
            "sizes": Param(Uniform(1.0, 2.0), "bytes", "test", per="step", count="items"),
            "items": Param(IntRange(1, 3), "items", "test", per="step"),
        },
    )
    with pytest.raises(ValueError, match="parameter 'items' must come before 'sizes'"):
        register_scenario(scenario)


def test_lognormal_clips_to_bounds():
    import random

    distribution = LogNormal(median=10.0, sigma=3.0, low=5.0, high=20.0, integer=True)
    rng = random.Random(SEED)
    draws = [distribution.draw(rng) for _ in range(1000)]
    assert min(draws) == 5
    assert max(draws) == 20
    assert all(isinstance(draw, int) for draw in draws)


# PKI


def test_pki_certificates(tmp_path):
    files = write_test_pki(tmp_path, ip_addresses=["127.0.0.1"], dns_names=["localhost"])
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    server = x509.load_pem_x509_certificate(files.certificate.read_bytes())

    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == CA_COMMON_NAME
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server.verify_directly_issued_by(ca)
    alt_names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(address) for address in alt_names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert alt_names.get_values_for_type(x509.DNSName) == ["localhost"]
    now = datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(hours=23) < server.not_valid_after_utc - now <= datetime.timedelta(days=1)
    assert server.not_valid_before_utc <= now
    assert files.key.stat().st_mode & 0o777 == 0o600


def test_pki_rejects_invalid_ip(tmp_path):
    with pytest.raises(ValueError, match="invalid IP address 'localhost'"):
        write_test_pki(tmp_path, ip_addresses=["localhost"])


def test_pki_needs_a_name(tmp_path):
    with pytest.raises(ValueError, match="at least one IP address or DNS name"):
        write_test_pki(tmp_path)


# Labels and options


def test_label_writer_round_trip(tmp_path):
    row = LabelRow(
        src_ip="127.0.0.1", src_port=40000, dst_ip="127.0.0.1", dst_port=8443, family="mcp",
        scenario="mcp_tools", label=1, encrypted=True, session=3, start=1000.25, end=1001.5,
    )
    with LabelWriter(tmp_path / "labels.csv") as writer:
        writer.write(row)
    assert (tmp_path / "labels.csv").read_text().splitlines()[0] == ",".join(LABEL_COLUMNS)
    assert read_labels(tmp_path / "labels.csv") == [row]


def test_label_writer_rejects_existing_file(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("earlier capture\n")
    with pytest.raises(FileExistsError, match="already exists; remove it or choose another --labels path"):
        LabelWriter(path)
    assert path.read_text() == "earlier capture\n"


def test_read_labels_rejects_other_header(tmp_path):
    path = tmp_path / "flows.csv"
    path.write_text("flow_id,src_ip\n1,127.0.0.1\n")
    with pytest.raises(ValueError, match="is not the labels header"):
        read_labels(path)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.5.6.7", "198.18.0.2", "198.19.0.2"])
def test_test_address_accepts_test_networks(address):
    assert check_test_address(address, "--server") == address


def test_test_address_rejects_wildcard():
    with pytest.raises(ValueError, match="--server 0.0.0.0 is outside 127.0.0.0/8 or 198.18.0.0/15"):
        check_test_address("0.0.0.0", "--server")


def test_test_address_rejects_host_name():
    with pytest.raises(ValueError, match="--host 'localhost' is not an IP address"):
        check_test_address("localhost", "--host")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"time_scale": 0.0}, "--time-scale 0.0 must be a factor greater than 0"),
        ({"duration": -1.0}, "--duration -1.0 must be seconds greater than 0"),
        ({"concurrency": 0}, "--concurrency 0 must be an integer in \\[1, 4000\\]"),
        ({"workers": 0}, "--workers 0 must be an integer in \\[1, 16\\]"),
        ({"max_sessions": 0}, "--max-sessions 0 must be an integer >= 1"),
        ({"duration": None}, "neither --duration nor --max-sessions is set"),
        ({"https_port": 70000}, "--https-port 70000 is not a TCP port"),
        ({"mix": [("llm_chat", "mcp")]}, "scenario 'llm_chat' runs over \\('ws', 'wss'\\) only"),
    ],
)
def test_client_config_rejects_invalid_option(tmp_path, change, message):
    ca = tmp_path / "ca.pem"
    ca.write_text("placeholder")
    options = {"ca": ca, "labels": tmp_path / "labels.csv", "duration": 1.0, "concurrency": 1, "seed": SEED}
    with pytest.raises(ValueError, match=message):
        ClientConfig(**{**options, **change}).validate()


def test_client_config_rejects_missing_ca(tmp_path):
    config = ClientConfig(ca=tmp_path / "ca.pem", labels=tmp_path / "labels.csv", duration=1.0, concurrency=1,
                          seed=SEED)
    with pytest.raises(ValueError, match="--ca .* not found; pass the ca.pem the server wrote"):
        config.validate()


def test_client_config_rejects_concurrency_over_file_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(client_module.resource, "getrlimit", lambda resource: (1024, 1024))
    ca = tmp_path / "ca.pem"
    ca.write_text("placeholder")
    config = ClientConfig(ca=ca, labels=tmp_path / "labels.csv", duration=1.0, concurrency=300, seed=SEED)
    with pytest.raises(ValueError, match="--concurrency 300 with --workers 1 needs about 1264 open files per "
                                         "process, but the hard limit \\(ulimit -Hn\\) is 1024"):
        config.validate()
    assert ClientConfig(ca=ca, labels=tmp_path / "labels.csv", duration=1.0, concurrency=300, seed=SEED,
                        workers=2).validate() is None


def test_server_config_rejects_processes():
    with pytest.raises(ValueError, match="--processes 0 must be an integer in \\[1, 16\\]"):
        ServerConfig(processes=0).validate()


def test_describe_error_unwraps_groups():
    error = ExceptionGroup("task group", [ExceptionGroup("inner", [SessionError("bad frame")])])
    assert describe_error(error) == "SessionError: bad frame"


@pytest.fixture
def stub_scenarios():
    """Register two network-free scenarios for a test and remove them afterwards."""

    async def fail(ctx):
        ctx.events["attempts"] += 1
        raise SessionError(f"session {ctx.plan.index} failed on purpose")

    async def stall(ctx):
        await asyncio.sleep(3600)

    names = []
    for name, runner in (("test_fail", fail), ("test_stall", stall)):
        register_scenario(Scenario(
            name=name,
            label=0,
            families=("ws",),
            steps="count",
            max_seconds=1.0,
            params={"count": Param(IntRange(1, 1), "steps", "test")},
        ))
        session_runner(name)(runner)
        names.append(name)
    yield names
    for name in names:
        del SCENARIOS[name]
        del RUNNERS[name]


def test_run_clients_counts_failed_sessions(tmp_path, stub_scenarios, monkeypatch, caplog):
    monkeypatch.setattr(runner_module, "SESSION_SLACK_SECONDS", 0.0)
    tls = write_test_pki(tmp_path / "tls", ip_addresses=["127.0.0.1"])
    config = ClientConfig(
        ca=tls.ca, labels=tmp_path / "labels.csv", duration=0.5, concurrency=2, seed=SEED, time_scale=10.0,
        mix=[("test_fail", "ws"), ("test_stall", "ws")],
    )

    report = asyncio.run(run_clients(config))

    assert report.started["test_fail"] >= 1
    assert report.started["test_stall"] >= 1
    assert report.failed == report.started
    assert sum(report.finished.values()) == 0
    assert report.events["test_fail"]["attempts"] == report.started["test_fail"]
    assert report.failed_fraction == 1.0
    assert read_labels(config.labels) == []
    assert "(test_fail over ws) failed: SessionError: session 0 failed on purpose" in caplog.text
    assert "(test_stall over ws) timed out after 0.1 s, its bound" in caplog.text


def test_run_clients_survives_worker_crash(tmp_path, stub_scenarios, caplog):
    # The stub scenarios exist in this process only, so each worker process
    # rejects the first session index it gets and exits with status 1.
    tls = write_test_pki(tmp_path / "tls", ip_addresses=["127.0.0.1"])
    config = ClientConfig(
        ca=tls.ca, labels=tmp_path / "labels.csv", max_sessions=4, concurrency=4, workers=2, seed=SEED,
        time_scale=10.0, mix=[("test_fail", "ws")],
    )

    report = asyncio.run(run_clients(config))

    assert report.started["test_fail"] >= 1
    assert report.failed["test_fail"] == report.started["test_fail"]
    assert sum(report.finished.values()) == 0
    assert read_labels(config.labels) == []
    assert "exited with status 1 while" in caplog.text
    assert "counting them as failed" in caplog.text


# Short runs over loopback


@dataclass
class TrafficRun:
    rows: list[LabelRow]
    ready: dict
    stats: dict
    client: subprocess.CompletedProcess
    server_returncode: int
    server_log: str
    plans: list[SessionPlan]


def _start_server(work: Path, processes: int) -> tuple[subprocess.Popen, dict]:
    ready_file = work / "ready.json"
    with open(work / "server.log", "w") as log:
        server = subprocess.Popen(
            [
                sys.executable, "-m", "tools.traffic.server", "--host", "127.0.0.1",
                "--ws-port", "0", "--wss-port", "0", "--https-port", "0", "--tls-dir", str(work / "tls"),
                "--ready-file", str(ready_file), "--stats-file", str(work / "stats.json"),
                "--processes", str(processes), "--progress-interval", str(PROGRESS_INTERVAL),
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + SERVER_READY_TIMEOUT
    while not ready_file.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            server.wait()
            pytest.fail(f"traffic server did not get ready (exit status {server.poll()}):\n"
                        f"{(work / 'server.log').read_text()}")
        time.sleep(0.1)
    return server, json.loads(ready_file.read_text())


def _traffic_run(work: Path, workers: int, processes: int) -> TrafficRun:
    server, ready = _start_server(work, processes)
    try:
        client = subprocess.run(
            [
                sys.executable, "-m", "tools.traffic.client", "--server", "127.0.0.1", "--ca", ready["ca"],
                "--labels", str(work / "labels.csv"), "--max-sessions", str(SESSIONS),
                "--concurrency", str(CONCURRENCY), "--workers", str(workers), "--seed", str(SEED),
                "--time-scale", str(TIME_SCALE), "--progress-interval", str(PROGRESS_INTERVAL),
                "--ws-port", str(ready["ws_port"]), "--wss-port", str(ready["wss_port"]),
                "--https-port", str(ready["https_port"]),
            ],
            cwd=REPO,
            # A proxy from the environment must not divert the traffic: nothing listens on port 9.
            env={**os.environ, "HTTP_PROXY": PROXY, "HTTPS_PROXY": PROXY, "ALL_PROXY": PROXY, "NO_PROXY": ""},
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT,
        )
        # A scripted route without its plan headers is turned away; the stats show it.
        ready["rejected"] = asyncio.run(_open_without_plan(ready["ws_port"]))
        server.send_signal(signal.SIGTERM)
        server_returncode = server.wait(timeout=SERVER_STOP_TIMEOUT)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()

    return TrafficRun(
        rows=read_labels(work / "labels.csv"),
        ready=ready,
        stats=json.loads((work / "stats.json").read_text()),
        client=client,
        server_returncode=server_returncode,
        server_log=(work / "server.log").read_text(),
        plans=[plan_session(SEED, index) for index in range(SESSIONS)],
    )


async def _open_without_plan(ws_port: int) -> dict:
    """Open the ticker route without plan headers; return the client port and the server's response."""
    sock = socket.create_connection(("127.0.0.1", ws_port))
    port = sock.getsockname()[1]
    try:
        async with connect(f"ws://127.0.0.1:{ws_port}{TICKER_PATH}", sock=sock):
            return {"port": port, "response": "opened"}
    except InvalidStatus as exc:
        return {"port": port, "response": f"{exc.response.status_code} {exc.response.body.decode().strip()}"}


@pytest.fixture(scope="module")
def traffic_run(tmp_path_factory) -> TrafficRun:
    """Two client workers and two server processes."""
    return _traffic_run(tmp_path_factory.mktemp("traffic"), workers=2, processes=2)


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory) -> TrafficRun:
    """The same sessions with one client process and one server process."""
    return _traffic_run(tmp_path_factory.mktemp("traffic-single"), workers=1, processes=1)


@pytest.fixture(params=["traffic_run", "single_process_run"])
def any_run(request) -> TrafficRun:
    return request.getfixturevalue(request.param)


def test_run_exits_cleanly(any_run):
    assert any_run.client.returncode == 0, any_run.client.stderr
    assert f" 0 of {SESSIONS} sessions failed" in any_run.client.stderr
    assert any_run.server_returncode == 0, any_run.server_log


def test_run_logs_progress(traffic_run):
    log = traffic_run.client.stderr
    assert "sessions running " in log
    assert "flows recorded " in log
    assert ": ws " in log
    assert "new sessions until" in log
    assert "at the latest" in log
    assert "load: client CPU" in log
    assert "worker 0 CPU" in log
    assert "worker 1 CPU" in log


def test_run_server_logs_load(traffic_run):
    assert "WebSockets open, " in traffic_run.server_log
    assert "[process 1]: " in traffic_run.server_log
    assert "loop lag mean" in traffic_run.server_log


def test_run_labels_every_scenario_and_family(any_run):
    assert {(row.scenario, row.family) for row in any_run.rows} == set(DEFAULT_MIX)


def test_run_rows_follow_plans(any_run):
    for row in any_run.rows:
        plan = any_run.plans[row.session]
        assert (row.scenario, row.family) == (plan.scenario, plan.family), row
        assert row.label == plan.label, row


def test_run_labels_match_class(any_run):
    for row in any_run.rows:
        assert row.label == (1 if row.scenario in AI_SCENARIOS else 0), row


def test_run_encrypted_matches_family(any_run):
    for row in any_run.rows:
        assert row.encrypted == FAMILIES[row.family].encrypted, row
        assert row.proto == 6


def test_run_rows_name_real_ports(traffic_run):
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    listener = {"ws": traffic_run.ready["ws_port"], "wss": traffic_run.ready["wss_port"],
                "mcp": traffic_run.ready["https_port"]}
    for row in traffic_run.rows:
        assert low <= row.src_port <= high, row
        assert row.dst_port == listener[row.family], row
        assert row.src_ip == row.dst_ip == "127.0.0.1", row


def test_run_never_reuses_client_port(any_run):
    # Client ports are handed out in turn, so a short run uses each at most once.
    ports = Counter(row.src_port for row in any_run.rows)
    assert ports.most_common(1)[0][1] == 1


def test_run_rows_match_server_connections(any_run):
    labeled = {(row.src_ip, row.src_port, row.dst_port) for row in any_run.rows}
    seen = {(item["src_ip"], item["src_port"], item["dst_port"]) for item in any_run.stats["connections"]}
    probe = ("127.0.0.1", any_run.ready["rejected"]["port"], any_run.ready["ws_port"])
    assert probe in seen
    assert labeled == seen - {probe}


def test_run_start_not_after_end(any_run):
    for row in any_run.rows:
        assert row.start <= row.end, row


def test_run_sessions_follow_plans(any_run):
    assert sorted({row.session for row in any_run.rows}) == list(range(SESSIONS))


def test_run_ws_session_uses_one_connection(any_run):
    per_session = Counter(row.session for row in any_run.rows if row.family in ("ws", "wss"))
    assert set(per_session.values()) == {1}


def test_run_mcp_connection_per_call(any_run):
    per_session = Counter(row.session for row in any_run.rows if row.scenario == "mcp_tools")
    for session, connections in per_session.items():
        calls = any_run.plans[session].params["calls"]
        # The SDK closes an SSE response as soon as its JSON-RPC response
        # arrives, which drops the connection: one connection per tools/call at least.
        assert connections >= calls, (session, connections)


def _steps(plans: list[SessionPlan], scenario: str) -> list:
    return [step for plan in plans if plan.scenario == scenario for step in plan.steps]


def _sessions(plans: list[SessionPlan], scenario: str) -> list[SessionPlan]:
    return [plan for plan in plans if plan.scenario == scenario]


def planned_server_events(plans: list[SessionPlan]) -> dict[str, int]:
    """Return what the server must count for `plans`: every counter that depends on the plans alone."""
    llm = _steps(plans, "llm_chat") + _steps(plans, "llm_batched")
    batched_frames = sum(math.ceil(step["answer_tokens"] / plan.params["tokens_per_frame"])
                         for plan in _sessions(plans, "llm_batched") for step in plan.steps)
    voice = [voice_session_counts(plan) for plan in _sessions(plans, "voice_assistant")]
    camera = _steps(plans, "iot_camera")
    chats = [chat_counts(plan) for plan in _sessions(plans, "chat_messaging")]
    tickers = _sessions(plans, "ticker_push")
    completions = [(step, plan.params["tokens_per_chunk"]) for plan in _sessions(plans, "llm_chunked")
                   for step in plan.steps]
    polls = [(number == 0 or step["changed"]) for plan in _sessions(plans, "rest_polling")
             for number, step in enumerate(plan.steps)]
    checks = _steps(plans, "update_check")
    return {
        "llm_answers": len(llm),
        "llm_tokens": sum(step["answer_tokens"] for step in llm),
        "llm_frames": sum(step["answer_tokens"] for step in _steps(plans, "llm_chat")) + batched_frames,
        "voice_sessions": len(voice),
        "voice_exchanges": len(_steps(plans, "voice_assistant")),
        "voice_microphone_frames": sum(counts["microphone_frames"] for counts in voice),
        "voice_answer_frames": sum(counts["answer_frames"] for counts in voice),
        "voice_tool_calls": sum(counts["tool_calls"] for counts in voice),
        "iot_readings": len(_steps(plans, "iot_telemetry")),
        "sensor_readings": len(_steps(plans, "iot_sensor")),
        "meter_readings": len(_steps(plans, "iot_meter")),
        "camera_statuses": len(camera),
        "camera_snapshots": sum(1 for step in camera if step["snapshot"]),
        "camera_snapshot_bytes": sum(step["snapshot_bytes"] for step in camera if step["snapshot"]),
        "chat_from_client": sum(counts["sent"] for counts in chats),
        "chat_typing": sum(counts["sent"] for counts in chats),
        "chat_to_client": sum(counts["received"] for counts in chats),
        "chat_reads": sum(counts["received"] for counts in chats),
        "ticker_updates": sum(ticker_updates(plan, step) for plan in tickers for step in plan.steps),
        "ticker_unsubscribes": len(tickers),
        "dashboard_snapshots": len(_sessions(plans, "dashboard")),
        "dashboard_updates": sum(step["burst_updates"] for step in _steps(plans, "dashboard")),
        "mcp_tool_calls": len(_steps(plans, "mcp_tools")),
        "mcp_progress_sent": sum(step["progress_steps"] for step in _steps(plans, "mcp_tools")),
        "completion_answers": len(completions),
        "completion_tokens": sum(step["answer_tokens"] for step, _ in completions),
        "completion_chunks": sum(math.ceil(step["answer_tokens"] / per_chunk) for step, per_chunk in completions),
        "web_pages": len(_steps(plans, "https_web")),
        "web_assets": sum(step["assets"] for step in _steps(plans, "https_web")),
        "rest_posts": len(_steps(plans, "https_rest")),
        "poll_changed": sum(polls),
        "poll_not_modified": len(polls) - sum(polls),
        "downloads": len(_steps(plans, "file_download")),
        "download_bytes": sum(step["file_bytes"] for step in _steps(plans, "file_download")),
        "sse_streams": len(_sessions(plans, "sse_notifications")),
        "sse_notifications": len(_steps(plans, "sse_notifications")),
        "update_checks": len(checks),
        "updates_offered": sum(1 for step in checks if step["update_available"]),
    }


@pytest.mark.parametrize("counter", sorted(planned_server_events([])))
def test_run_served_planned_work(any_run, counter):
    expected = planned_server_events(any_run.plans)[counter]
    assert expected > 0, f"the plans exercise no {counter}; raise SESSIONS"
    assert any_run.stats["events"].get(counter, 0) == expected


def test_run_iot_commands_answered(any_run):
    events = any_run.stats["events"]
    assert events.get("iot_commands", 0) == events.get("iot_command_results", 0)


def test_run_server_rejects_only_probe(any_run):
    events = any_run.stats["events"]
    for counter in ("websocket_rejected", "websocket_aborted", "websocket_closed_early", "https_rejected",
                    "llm_rejected", "iot_rejected"):
        assert events.get(counter, 0) == (1 if counter == "websocket_rejected" else 0), counter


def test_run_rejects_scripted_route_without_plan(any_run):
    response = any_run.ready["rejected"]["response"]
    assert response == "400 header 'aiflowd-plan' is missing; a ticker_push session must name its plan"


def test_runs_independent_of_process_count(traffic_run, single_process_run):
    sessions = {(row.session, row.scenario, row.family, row.label) for row in traffic_run.rows}
    single = {(row.session, row.scenario, row.family, row.label) for row in single_process_run.rows}
    assert sessions == single
    planned = planned_server_events(traffic_run.plans)
    for counter in planned:
        assert traffic_run.stats["events"].get(counter) == single_process_run.stats["events"].get(counter), counter
