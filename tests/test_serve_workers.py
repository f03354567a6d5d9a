"""`synood serve --devices cpu,cpu`: two worker processes behind one address, started for real on loopback.

One server is shared by the module (two workers cost two torch imports); the SIGTERM test ends it,
so it runs last. --max-wait-ms 1000 with --max-batch-size 16 keeps requests in flight long enough
to be seen there (a batch is never full in these tests: it waits the whole second).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import subprocess_env
from test_serve import TINY, TOKEN, _cli, _multipart, _png, _request


class Workers:
    def __init__(self, proc, url, log, home, classes, early):
        self.proc, self.url, self.log, self.home, self.classes, self.early = proc, url, log, home, classes, early

    def score(self, files):
        body, headers = _multipart(files)
        return _request(self.url + "/score", body, headers)

    def metrics(self) -> dict:
        status, body = _request(self.url + "/metrics")
        assert status == 200
        return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in body.decode().splitlines() if line and not line.startswith("#"))}


def _start(home: Path, classes: Path, *extra: str, log: Path):
    args = [sys.executable, "-m", "synood_cli", "serve", *TINY, "--classnames", str(classes), "--port", "0", *extra]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=subprocess_env(home))


def _url(proc, log: Path, deadline: float) -> str:
    while time.monotonic() < deadline and proc.poll() is None:
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())
        if m:
            return m.group(1)
        time.sleep(0.02)
    raise AssertionError(log.read_text())


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-workers")
    classes = root / "classes.txt"
    classes.write_text("cat\ndog\nfish\n")
    token = root / "token.txt"
    token.write_text(TOKEN + "\n")
    home, log = root / "home", root / "serve.log"
    proc = _start(home, classes, "--devices", "cpu,cpu", "--token-file", str(token), "--max-batch-size", "16", "--max-wait-ms", "1000", log=log)
    try:
        deadline = time.monotonic() + 120
        url = _url(proc, log, deadline)
        early = _request(url + "/readyz", token=None)
        while _request(url + "/readyz", token=None)[0] != 200:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield Workers(proc, url, log, home, classes, early)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_readyz_names_every_worker(workers):
    status, body = workers.early
    assert status == 503
    early = json.loads(body)
    assert early["ready"] is False and [w["device"] for w in early["workers"]] == ["cpu", "cpu"]
    status, body = _request(workers.url + "/readyz", token=None)
    assert status == 200 and json.loads(body)["workers"] == [{"worker": 0, "device": "cpu", "ready": True}, {"worker": 1, "device": "cpu", "ready": True}]


def _concurrent(workers, files) -> list[tuple[int, bytes]]:
    """One request per file, each from its own thread on its own connection (the kernel spreads connections over the workers)."""
    out = [None] * len(files)

    def send(i):
        out[i] = workers.score([files[i]])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(files))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_both_workers_score_the_same_scores_as_synood_score(workers, tmp_path):
    """16 connections: both workers answer (2^-15 odds that one takes all), each image's score is `synood score`'s."""
    before = workers.metrics()
    names = [f"p{i % 4}.png" for i in range(16)]
    for i in range(4):
        (tmp_path / f"p{i}.png").write_bytes(_png("workers", i))
    answers = _concurrent(workers, [(n, (tmp_path / n).read_bytes()) for n in names])
    assert all(status == 200 for status, _ in answers), answers
    served = [json.loads(body) for _, body in answers]
    assert {s["worker"]["index"] for s in served} == {0, 1} and {s["worker"]["device"] for s in served} == {"cpu"}
    r = _cli(workers.home, "score", *(str(tmp_path / f"p{i}.png") for i in range(4)), *TINY, "--classnames", str(workers.classes), "--format", "jsonl")
    assert r.exit_code == 0, r.stderr
    expected = {Path(row["path"]).name: row["score"] for row in map(json.loads, r.stdout.splitlines())}
    # merged batches of other sizes than score's one batch of 4: CPU matrix products round differently per
    # batch size, and exp(cos / 0.01) turns a 1e-8 change in a cosine into 1e-6 of the score
    for name, s in zip(names, served):
        assert s["results"][0]["score"] == pytest.approx(expected[name], rel=2e-5, abs=1e-9), (name, s["worker"])
    # the totals are the service's: the sum over both workers, whichever worker answered /metrics
    after = workers.metrics()
    per_worker = [after[f'synood_worker_images_scored_total{{worker="{i}",device="cpu"}}']
                  - before[f'synood_worker_images_scored_total{{worker="{i}",device="cpu"}}'] for i in (0, 1)]
    assert min(per_worker) > 0 and sum(per_worker) == 16
    assert after["synood_images_scored_total"] - before["synood_images_scored_total"] == 16
    assert after["synood_batch_size_sum"] - before["synood_batch_size_sum"] == 16
    assert after["synood_ready"] == 1


def test_shared_metrics_sum_the_workers_and_readiness_waits_for_all():
    """The rows two workers write into the shared array, read back as /metrics and /readyz read them (in-process)."""
    import multiprocessing

    from synood_cli.serve.metrics import WIDTH, Metrics

    shared = multiprocessing.get_context("spawn").Array("d", 2 * WIDTH)
    a, b = (Metrics(shared=shared, index=i, devices=("cuda:0", "cuda:1")) for i in (0, 1))
    a.set_ready()
    a.images_done(2, 1, [True, False])
    b.images_done(3, 0, [True, True, None])
    b.request_started()
    a.request_started()
    a.request_done(0.02, 413)
    assert not a.all_ready() and not b.all_ready()
    text = b.render()
    assert "synood_ready 0\n" in text and 'synood_worker_ready{worker="0",device="cuda:0"} 1\n' in text
    assert "synood_images_scored_total 5\n" in text and "synood_image_errors_total 1\n" in text
    assert 'synood_request_errors_total{status="413"} 1\n' in text and "synood_requests_in_flight 1\n" in text
    assert "synood_ood_rate 0.75\n" in text and "synood_ood_window 4\n" in text  # 3 OOD of 4 with a verdict
    b.set_ready()
    assert a.all_ready() and "synood_ready 1\n" in a.render()


@pytest.mark.parametrize("spec", ["cpu,cuda", "cpu,,cpu", "cpu,gpu"])
def test_each_device_must_be_named(spec, tmp_path):
    r = _cli(tmp_path, "serve", *TINY, "--port", "0", "--devices", spec)
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_devices_all_without_cuda_is_exit_3(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA devices")
    r = _cli(tmp_path, "serve", *TINY, "--port", "0", "--devices", "all")
    assert r.exit_code == 3 and r.stderr.startswith("error: --devices all: CUDA is not available on this machine")


def test_a_taken_port_is_not_joined():
    """A fixed port held by another service's SO_REUSEPORT group is refused, not shared with it."""
    from synood_cli.errors import ResourceMissing
    from synood_cli.serve.workers import listen

    first = listen("127.0.0.1", 0, 2)
    try:
        port = first[0].getsockname()[1]
        assert all(s.getsockname()[1] == port for s in first)
        with pytest.raises(ResourceMissing, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
            listen("127.0.0.1", port, 2)
    finally:
        for s in first:
            s.close()


def test_a_worker_that_fails_to_load_ends_the_service(tmp_path):
    """Worker 1's device does not exist: the command exits 3 with its error, after stopping worker 0 (no hang, nothing left listening)."""
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    log = tmp_path / "serve.log"
    proc = _start(tmp_path / "home", classes, "--devices", "cpu,cuda:99", log=log)
    try:
        url = _url(proc, log, time.monotonic() + 60)
        assert proc.wait(90) == 3, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    errors = [line for line in log.read_text().splitlines() if line.startswith(("error:", "internal error:"))]
    assert len(errors) == 1 and errors[0].startswith("error: worker 1 (cuda:99): --device cuda:99"), log.read_text()
    assert "Traceback" not in log.read_text()
    host, port = url.rsplit("/", 1)[-1].split(":")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=5).close()


def test_sigterm_drains_both_workers_and_exits_0(workers):
    """Runs last: it ends the module's server. SIGTERM while both workers hold requests: every request is answered."""
    files = [(f"t{i}.png", _png("term", i)) for i in range(12)]
    answers: list = []
    sender = threading.Thread(target=lambda: answers.extend(_concurrent(workers, files)))
    sender.start()
    deadline = time.monotonic() + 20
    while True:  # all 12 requests received, on both workers (each waits up to 1 s for its batch to fill)
        m = workers.metrics()
        per_worker = [m[f'synood_worker_requests_in_flight{{worker="{i}",device="cpu"}}'] for i in (0, 1)]
        if sum(per_worker) == 12 and min(per_worker) >= 1:
            break
        assert time.monotonic() < deadline and sender.is_alive(), m
        time.sleep(0.01)
    workers.proc.send_signal(signal.SIGTERM)
    sender.join(60)
    assert workers.proc.wait(60) == 0, workers.log.read_text()
    assert len(answers) == 12 and all(status == 200 for status, _ in answers), answers
    assert {json.loads(body)["worker"]["index"] for _, body in answers} == {0, 1}
    assert workers.log.read_text().rstrip().endswith("stopped: in-flight requests finished")
