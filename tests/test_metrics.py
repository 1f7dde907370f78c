"""The worker's own metrics: WORKER_METRICS_PORT serves the SDK's metrics for Prometheus (setup.md, Metrics).

A real dev server, the real worker script with metrics on, one release, then a scrape of
http://127.0.0.1:PORT/metrics as Prometheus would. Bad ports: one line, exit 2, nothing started.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import urllib.request
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from orchestrator import worker_settings
from orchestrator.settings import Settings
from tests.conftest import CATALOG, REPO, target_of
from tests.support import WorkerProcess, run_python, run_script, script_env, task_queue

KEY = "RELEASE-NOV-23-INITIAL"
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of one metric in Prometheus's text format: labels and value of each."""
    found = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and match["name"] == name:
            found.append((dict(LABEL.findall(match["labels"] or "")), float(match["value"])))
    return found


def steps_of(key: str) -> dict[str, int]:
    """How many builds, deploys and tests a release runs: it builds in its first environment only."""
    release = next(r for r in json.loads(CATALOG.read_text())["releases"] if r["release_key"] == key)
    containers, environments = len(release["versions"]), len(release["environments"])
    return {"build": containers, "deploy": containers * environments, "test": containers * environments}


async def run_worker_script(env: dict[str, str]) -> tuple[int, str, str]:
    return await run_python([str(REPO / "run_worker.py")], env, 60, merge=False)


@pytest.mark.slow(10)
async def test_a_worker_with_a_metrics_port_counts_each_step_of_a_release(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    port, tq = free_port(), task_queue()
    env = script_env(target_of(dev_server), tmp_path, tq, WORKER_METRICS_PORT=str(port))
    log = tmp_path / "worker.log"
    worker = WorkerProcess(env, log).start()
    try:
        assert f", metrics http://127.0.0.1:{port}/metrics. Ctrl+C stops it." in log.read_text()
        code, out = await run_script(["--release-key", KEY], env)
        assert code == 0, out
        text = await asyncio.to_thread(scrape, port)
    finally:
        stopped = worker.stop_quietly()  # an assert here would hide the failure that brought us here
    assert stopped == 0, log.read_text()
    assert "Traceback" not in log.read_text()

    # Each step is one activity execution: FAILURE_RATE=never retries none.
    executions = samples(text, "temporal_activity_execution_latency_count")
    counts = {labels["activity_type"]: value for labels, value in executions if labels["task_queue"] == tq}
    assert {verb: counts.get(verb) for verb in ("build", "deploy", "test")} == steps_of(KEY), text
    step_labels = next(labels for labels, _ in executions if labels["activity_type"] == "deploy")
    assert step_labels.keys() == {"activity_type", "namespace", "service_name", "task_queue", "workflow_type"}
    assert (step_labels["namespace"], step_labels["service_name"]) == ("default", "temporal-core-sdk")
    # Durations are in milliseconds (the SDK's default), as setup.md says: the last bucket is one minute.
    buckets = {labels["le"] for labels, _ in samples(text, "temporal_activity_execution_latency_bucket")}
    assert {"1000", "60000", "+Inf"} <= buckets, text
    completed = samples(text, "temporal_workflow_completed")
    releases = [value for labels, value in completed if labels["workflow_type"] == "ReleaseWorkflow"]
    assert releases == [1], text
    # The other histograms setup.md names have the release in them.
    for name in (
        "temporal_workflow_endtoend_latency",
        "temporal_activity_schedule_to_start_latency",
        "temporal_workflow_task_schedule_to_start_latency",
    ):
        assert sum(value for _, value in samples(text, f"{name}_count")) > 0, name


async def test_a_bad_metrics_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    # Settings are checked before the worker connects: no server needed.
    base = script_env("127.0.0.1:1", tmp_path, task_queue())
    cases = ["nine", "0", "65536", "-1", "80.5"]
    results = await asyncio.gather(*(run_worker_script(base | {"WORKER_METRICS_PORT": bad}) for bad in cases))
    for bad, (code, out, err) in zip(cases, results, strict=True):
        message = f"error: WORKER_METRICS_PORT={bad!r} is not a port number from 1 to 65535\n"
        assert (code, out, err) == (2, "", message), (bad, code, out, err)


async def test_a_metrics_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = script_env("127.0.0.1:1", tmp_path, task_queue(), WORKER_METRICS_PORT=str(port))
        code, out, err = await run_worker_script(env)
    assert (code, out) == (2, ""), err
    assert err.startswith(f"error: WORKER_METRICS_PORT={port}: cannot serve metrics on 127.0.0.1:{port}: "), err
    assert err.endswith("; choose another port, or unset it for no metrics\n"), err
    assert err.count("\n") == 1 and "in use" in err, err


def test_the_metrics_port_is_off_unless_set_and_make_worker_compares_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for unset in (None, "", "  "):
        if unset is None:
            monkeypatch.delenv("WORKER_METRICS_PORT", raising=False)
        else:
            monkeypatch.setenv("WORKER_METRICS_PORT", unset)
        assert Settings.from_env().metrics_port is None
    plain = Settings.from_env()
    monkeypatch.setenv("WORKER_METRICS_PORT", " 9464 ")
    metered = Settings.from_env()
    assert metered.metrics_port == 9464
    target = {"target_host": "localhost:7233", "namespace": "default"}
    # In the settings line only when set, so an ordinary worker's line reads as before.
    assert "WORKER_METRICS_PORT" not in worker_settings.settings_line(worker_settings.settings_of(plain, target, "b1"))
    line = worker_settings.settings_line(worker_settings.settings_of(metered, target, "b1"))
    assert line.endswith(" WORKER_METRICS_PORT=9464")
    (tmp_path / "worker.settings").write_text(line)
    (tmp_path / "worker.pid").write_text(str(os.getpid()))
    assert worker_settings.check_running(str(tmp_path), worker_settings.settings_of(plain, target, "b1")) == 1
    assert "with WORKER_METRICS_PORT=9464, not WORKER_METRICS_PORT='' as asked" in capsys.readouterr().out
    assert worker_settings.check_running(str(tmp_path), worker_settings.settings_of(metered, target, "b1")) == 0
