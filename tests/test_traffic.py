"""Tests of the traffic generator (tools/traffic): plans, PKI, labels and a short run over loopback.

The run starts the real server and client as subprocesses on 127.0.0.1 with
ports chosen by the kernel, at time scale 20, and checks the labels file
against the plans and against the connections the server saw.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tools.traffic import client as client_module
from tools.traffic.client import ClientConfig, describe_error, run_clients
from tools.traffic.connections import check_test_address
from tools.traffic.labels import LABEL_COLUMNS, LabelRow, LabelWriter, read_labels
from tools.traffic.scenarios import (
    DEFAULT_MIX,
    FAMILIES,
    SCENARIOS,
    Choice,
    IntRange,
    LogNormal,
    Param,
    Scenario,
    Uniform,
    plan_session,
    register_scenario,
)
from tools.traffic.sessions import RUNNERS, SessionError, session_runner
from tools.traffic.tlsca import CA_COMMON_NAME, write_test_pki

REPO = Path(__file__).resolve().parents[1]
SEED = 7
OTHER_SEED = 8
TIME_SCALE = 20.0
RUN_SECONDS = 4.0
CONCURRENCY = 8
# Guards against a hung subprocess, far above what a healthy run takes.
SERVER_READY_TIMEOUT = 30.0
CLIENT_TIMEOUT = 120.0
SERVER_STOP_TIMEOUT = 20.0
PROXY = "http://127.0.0.1:9"

AI_SCENARIOS = {"llm_chat", "mcp_tools"}


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


def test_mix_balances_labels_per_family():
    labels = Counter((family, SCENARIOS[scenario].label) for scenario, family in DEFAULT_MIX)
    for family in FAMILIES:
        assert labels[(family, 1)] == labels[(family, 0)] > 0, family


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
        ({"concurrency": 0}, "--concurrency 0 must be an integer in \\[1, 200\\]"),
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
    monkeypatch.setattr(client_module, "SESSION_SLACK_SECONDS", 0.0)
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


# A short run over loopback


@dataclass
class TrafficRun:
    rows: list[LabelRow]
    ready: dict
    stats: dict
    client: subprocess.CompletedProcess
    server_returncode: int
    server_log: str


@pytest.fixture(scope="module")
def traffic_run(tmp_path_factory) -> TrafficRun:
    work = tmp_path_factory.mktemp("traffic")
    ready_file = work / "ready.json"
    stats_file = work / "stats.json"
    server_log = work / "server.log"
    with open(server_log, "w") as log:
        server = subprocess.Popen(
            [
                sys.executable, "-m", "tools.traffic.server", "--host", "127.0.0.1",
                "--ws-port", "0", "--wss-port", "0", "--https-port", "0", "--tls-dir", str(work / "tls"),
                "--ready-file", str(ready_file), "--stats-file", str(stats_file),
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + SERVER_READY_TIMEOUT
        while not ready_file.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"traffic server did not get ready (exit status {server.poll()}):\n{server_log.read_text()}"
                )
            time.sleep(0.1)
        ready = json.loads(ready_file.read_text())

        client = subprocess.run(
            [
                sys.executable, "-m", "tools.traffic.client", "--server", "127.0.0.1", "--ca", ready["ca"],
                "--labels", str(work / "labels.csv"), "--duration", str(RUN_SECONDS),
                "--concurrency", str(CONCURRENCY), "--seed", str(SEED), "--time-scale", str(TIME_SCALE),
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
        server.send_signal(signal.SIGTERM)
        server_returncode = server.wait(timeout=SERVER_STOP_TIMEOUT)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()

    return TrafficRun(
        rows=read_labels(work / "labels.csv"),
        ready=ready,
        stats=json.loads(stats_file.read_text()),
        client=client,
        server_returncode=server_returncode,
        server_log=server_log.read_text(),
    )


def test_run_exits_cleanly(traffic_run):
    assert traffic_run.client.returncode == 0, traffic_run.client.stderr
    assert " 0 of " in traffic_run.client.stderr
    assert traffic_run.server_returncode == 0, traffic_run.server_log


def test_run_labels_every_scenario_and_family(traffic_run):
    assert {(row.scenario, row.family) for row in traffic_run.rows} == set(DEFAULT_MIX)


def test_run_labels_match_class(traffic_run):
    for row in traffic_run.rows:
        assert row.label == (1 if row.scenario in AI_SCENARIOS else 0), row


def test_run_encrypted_matches_family(traffic_run):
    for row in traffic_run.rows:
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


def test_run_port_pairs_unique_while_open(traffic_run):
    # The kernel may hand out a client port again once its connection has
    # closed, so a pair is unique among connections open at the same time.
    rows = sorted(traffic_run.rows, key=lambda row: (row.src_port, row.dst_port, row.start))
    for earlier, later in zip(rows, rows[1:]):
        if (earlier.src_port, earlier.dst_port) == (later.src_port, later.dst_port):
            assert earlier.end <= later.start, (earlier, later)


def test_run_rows_match_server_connections(traffic_run):
    labeled = {(row.src_ip, row.src_port, row.dst_port) for row in traffic_run.rows}
    seen = {(item["src_ip"], item["src_port"], item["dst_port"]) for item in traffic_run.stats["connections"]}
    assert labeled == seen


def test_run_start_not_after_end(traffic_run):
    for row in traffic_run.rows:
        assert row.start <= row.end, row


def test_run_sessions_follow_plans(traffic_run):
    sessions = {row.session: (row.scenario, row.family) for row in traffic_run.rows}
    count = max(sessions) + 1
    assert sorted(sessions) == list(range(count))
    plans = [plan_session(SEED, index) for index in range(count)]
    for plan in plans:
        assert sessions[plan.index] == (plan.scenario, plan.family)


def test_run_served_planned_work(traffic_run):
    count = max(row.session for row in traffic_run.rows) + 1
    plans = [plan_session(SEED, index) for index in range(count)]
    steps = {name: [step for plan in plans if plan.scenario == name for step in plan.steps] for name in SCENARIOS}
    events = traffic_run.stats["events"]

    assert events["mcp_tool_calls"] == len(steps["mcp_tools"]) > 0
    assert events["mcp_progress_sent"] == sum(step["progress_steps"] for step in steps["mcp_tools"])
    assert events["llm_answers"] == len(steps["llm_chat"])
    assert events["llm_tokens"] == sum(step["answer_tokens"] for step in steps["llm_chat"])
    assert events["iot_readings"] == len(steps["iot_telemetry"])
    assert events["web_pages"] == len(steps["https_web"])
    assert events["web_assets"] == sum(step["assets"] for step in steps["https_web"])
    assert events["rest_posts"] == len(steps["https_rest"])
    assert events.get("iot_commands", 0) == events.get("iot_command_results", 0)


def test_run_mcp_connection_per_call(traffic_run):
    per_session = Counter(row.session for row in traffic_run.rows if row.scenario == "mcp_tools")
    for session, connections in per_session.items():
        calls = plan_session(SEED, session).params["calls"]
        # The SDK closes an SSE response as soon as its JSON-RPC response
        # arrives, which drops the connection: one connection per tools/call at least.
        assert connections >= calls, (session, connections)


def test_run_ws_session_uses_one_connection(traffic_run):
    per_session = Counter(row.session for row in traffic_run.rows if row.family in ("ws", "wss"))
    assert set(per_session.values()) == {1}
