"""`synood serve`: the real server process on the loopback address, talked to over HTTP (urllib).

One server (tiny profile, a calibration threshold, a bearer token, small limits) is shared by the
module; the SIGTERM test ends it, so it runs last. Its --max-wait-ms is long (200 ms) so that
concurrent requests are merged into one batch on a loaded 2-core machine too.
"""

from __future__ import annotations

import base64
import io
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import make_image, subprocess_env, truncated_jpeg_bytes, write_flat, write_tree

TOKEN = "s3cret-token"
TINY = ["--profile", "tiny", "--method", "neglabel"]
MAX_PIXELS = 10_000  # the global cap: a 48x48 test image passes, a 200x200 one is refused


def _request(url: str, data: bytes | None = None, headers: dict | None = None, token: str | None = TOKEN, method: str | None = None):
    """(status, body bytes): errors are answers too."""
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=h, method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, data in files:
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                  "Content-Type: application/octet-stream\r\n\r\n".encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _png(kind: str, seed: int, size: int = 48) -> bytes:
    buf = io.BytesIO()
    make_image(kind, seed, size).save(buf, format="PNG")
    return buf.getvalue()


class Server:
    def __init__(self, proc, url, log, home, calibration, classes, images, early):
        self.proc, self.url, self.log, self.home = proc, url, log, home
        self.calibration, self.classes, self.images, self.early = calibration, classes, images, early

    def score(self, files, token=TOKEN):
        body, headers = _multipart(files)
        return _request(self.url + "/score", body, headers, token)

    def metrics(self) -> dict:
        status, body = _request(self.url + "/metrics")
        assert status == 200
        values = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                values[key] = float(value)
        return values


def _cli(home: Path, *args: str):
    from typer.testing import CliRunner

    from synood_cli.cli.app import app

    r = CliRunner().invoke(app, list(args), env={"SYNOOD_HOME": str(home), "COLUMNS": "200"}, catch_exceptions=False)
    return r


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    classes = root / "classes.txt"
    classes.write_text("cat\ndog\nfish\n")
    write_tree(root / "id", {"cat": 3, "dog": 3, "fish": 3}, corrupt=False, junk=False)
    write_flat(root / "ood", 4)
    # the threshold: a real evaluate result, made in-process in its own store
    calib_home = root / "calib-home"
    r = _cli(calib_home, "evaluate", "--id", str(root / "id"), "--ood", str(root / "ood"), *TINY, "--classnames", str(classes), "--format", "json")
    assert r.exit_code == 0, r.stderr
    calibration = root / "result.json"
    calibration.write_text(r.stdout)
    token = root / "token.txt"
    token.write_text(TOKEN + "\n")
    images = root / "new"
    images.mkdir()
    for i in range(4):
        (images / f"n{i}.png").write_bytes(_png("new", i))
    # the server gets a fresh store: its load (weights, text features, negatives) takes long enough to be seen
    home, log = root / "serve-home", root / "serve.log"
    args = [sys.executable, "-m", "synood_cli", "--max-pixels", str(MAX_PIXELS), "serve", *TINY, "--classnames", str(classes),
            "--calibration", str(calibration), "--port", "0", "--token-file", str(token), "--max-batch-size", "8",
            "--max-wait-ms", "200", "--max-images", "4", "--max-request-bytes", "200000"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=subprocess_env(home))
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())
            url = m.group(1) if m else time.sleep(0.02)
        assert url, log.read_text()
        # before the models are loaded: alive, not ready, refuses to score
        early = {"healthz": _request(url + "/healthz", token=None), "readyz": _request(url + "/readyz", token=None),
                 "score": _request(url + "/score", *_multipart([("a.png", _png("new", 0))]))}
        while _request(url + "/readyz", token=None)[0] != 200:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield Server(proc, url, log, home, calibration, classes, images, early)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_app_does_not_import_the_serve_stack():
    """`synood --help` stays fast: fastapi and uvicorn are imported inside the command."""
    code = "import sys, synood_cli.cli.app; print(any(m in sys.modules for m in ('fastapi', 'uvicorn', 'starlette')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_alive_but_not_ready_before_the_models_load(server):
    status, body = server.early["healthz"]
    assert status == 200
    status, body = server.early["readyz"]
    assert status == 503 and json.loads(body) == {"ready": False, "status": "loading"}
    status, body = server.early["score"]
    assert status == 503 and json.loads(body)["error"] == "not ready: the models are still loading"


def test_scores_equal_synood_score_with_the_same_threshold_and_identity(server):
    files = sorted(server.images.iterdir())
    status, body = server.score([(p.name, p.read_bytes()) for p in files])
    assert status == 200, body
    served = json.loads(body)
    assert served["scored"] == 4 and served["failed"] == 0
    r = _cli(server.home, "score", *map(str, files), *TINY, "--classnames", str(server.classes), "--threshold", "fpr95",
             "--calibration", str(server.calibration), "--format", "jsonl")
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    first = rows[0]  # JSON Lines: the first row carries the identity and the threshold
    assert [Path(row["path"]).name for row in rows] == [item["name"] for item in served["results"]]
    for row, item in zip(rows, served["results"]):
        assert item["score"] == pytest.approx(row["score"], rel=1e-6, abs=1e-9)
        assert item["is_ood"] == row["is_ood"]
        assert item["top"][0]["name"] == row["pred_name"] and item["top"][0]["class"] == row["pred_class"]
        assert [t["name"] for t in item["top"]] != [] and len(item["top"]) == 3  # top-k capped at the 3 classes
        assert item["direction"] == "higher = in-distribution"
        assert item["identity"] == first["identities"]["neglabel"]  # the identity score records for these scores
    # the threshold and its provenance: the file's value at 95% TPR, from the file, as score reports it
    stored = json.loads(server.calibration.read_text())["thresholds"]["0.95"]
    said = re.search(r"threshold (\S+) \(score < T is OOD\) from (.+)", r.stderr)
    for item in served["results"]:
        assert item["threshold"] == {"value": stored, "source": said.group(2).strip(), "method": "neglabel", "tpr": 0.95}
        assert float(said.group(1)) == stored
    assert served["results"][0]["threshold"]["source"].startswith(f"{server.calibration} (neglabel, 95% of 9 ID images kept)")


def test_a_bad_image_is_an_error_in_its_own_entry(server):
    good = (server.images / "n1.png").read_bytes()
    body = json.dumps({"images": [
        {"name": "good.png", "data": base64.b64encode(good).decode()},
        {"name": "broken.jpg", "data": base64.b64encode(truncated_jpeg_bytes()).decode()},
        {"name": "huge.png", "data": base64.b64encode(_png("big", 0, 200)).decode()},
        {"name": "nob64", "data": "%%%not base64%%%"},
    ]}).encode()
    status, raw = _request(server.url + "/score", body, {"Content-Type": "application/json"})
    assert status == 200, raw
    out = json.loads(raw)
    assert (out["scored"], out["failed"]) == (1, 3)
    good_item, broken, huge, nob64 = out["results"]
    _, multi = server.score([("n1.png", good)])
    assert good_item["score"] == json.loads(multi)["results"][0]["score"]  # JSON/base64 and multipart read the same bytes
    assert broken["name"] == "broken.jpg" and "score" not in broken and broken["error"]
    assert huge["error"].startswith("image too large: 200x200 = 40,000 pixels, over the limit of 10,000")  # the CLI's pixel cap
    assert nob64["error"].startswith("not valid base64")


def _chunked(url: str, body: bytes, headers: dict) -> tuple[int, bytes]:
    """A body without Content-Length (Transfer-Encoding: chunked): the limit must hold while it is read."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request("POST", "/score", body=iter([body[i : i + 65536] for i in range(0, len(body), 65536)]),
                     headers={**headers, "Authorization": f"Bearer {TOKEN}"}, encode_chunked=True)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.mark.parametrize("case", ["too-many", "too-large", "too-large-chunked", "content-type", "bad-json", "no-images"])
def test_bad_requests_are_4xx_with_one_line(server, case):
    small = _png("new", 0)
    if case == "too-many":
        status, raw = server.score([(f"{i}.png", small) for i in range(5)])
        want = (413, "5 images in one request, over the limit of 4 (--max-images)")
    elif case == "too-large":
        status, raw = server.score([("big.bin", b"\0" * 250_000)])
        want = (413, "the request body is over the limit of 200,000 bytes")
    elif case == "too-large-chunked":
        status, raw = _chunked(server.url, *_multipart([("big.bin", b"\0" * 250_000)]))
        want = (413, "the request body is over the limit of 200,000 bytes")
    elif case == "content-type":
        status, raw = _request(server.url + "/score", b"hello", {"Content-Type": "text/plain"})
        want = (415, "POST /score takes multipart/form-data files or application/json, not text/plain")
    elif case == "bad-json":
        status, raw = _request(server.url + "/score", b"{nope", {"Content-Type": "application/json"})
        want = (400, "the request body is not valid JSON: ")
    else:
        status, raw = _request(server.url + "/score", b'{"images": []}', {"Content-Type": "application/json"})
        want = (400, "no images in the request")
    body = json.loads(raw)
    assert status == want[0]
    assert body["error"].startswith(want[1]) and "\n" not in body["error"] and body["hint"]


def test_the_bearer_token_is_required(server):
    one = [("a.png", _png("new", 0))]
    assert server.score(one, token=None)[0] == 401
    status, raw = server.score(one, token="wrong")
    assert status == 401 and json.loads(raw)["error"] == "missing or wrong bearer token"
    assert _request(server.url + "/metrics", token=None)[0] == 401
    assert _request(server.url + "/healthz", token=None)[0] == 200  # probes need no token
    assert server.score(one)[0] == 200


def test_concurrent_requests_are_merged_into_batches(server):
    before = server.metrics()
    files = [(f"c{i}.png", _png("conc", i)) for i in range(8)]
    results = [None] * 8

    def send(i):
        results[i] = server.score([files[i]])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(s == 200 for s, _ in results)
    after = server.metrics()
    batches = after["synood_batch_size_count"] - before["synood_batch_size_count"]
    images = after["synood_batch_size_sum"] - before["synood_batch_size_sum"]
    assert images == 8 and batches < 8, (batches, images)  # at least two requests shared a forward pass
    assert after["synood_images_scored_total"] - before["synood_images_scored_total"] == 8
    # merged or not, each image's score is its own: the same as scored alone
    _, alone = server.score([files[5]])
    assert json.loads(results[5][1])["results"][0]["score"] == pytest.approx(json.loads(alone)["results"][0]["score"], rel=1e-6)


def test_a_lone_image_waits_for_others_to_join_its_batch(server):
    """--max-wait-ms 200: a request sent 50 ms after another shares its forward pass (the first forward takes ~10 ms)."""
    before = server.metrics()
    first = threading.Thread(target=server.score, args=([("w0.png", _png("wait", 0))],))
    first.start()
    time.sleep(0.05)
    assert server.score([("w1.png", _png("wait", 1))])[0] == 200
    first.join()
    after = server.metrics()
    assert after["synood_batch_size_sum"] - before["synood_batch_size_sum"] == 2
    assert after["synood_batch_size_count"] - before["synood_batch_size_count"] == 1


def test_metrics_count_errors_and_the_ood_rate(server):
    before = server.metrics()
    server.score([(f"{i}.png", b"x") for i in range(5)])  # 413: too many
    server.score([("ok.png", _png("new", 2)), ("bad.png", b"not an image")])
    after = server.metrics()
    assert after['synood_request_errors_total{status="413"}'] - before.get('synood_request_errors_total{status="413"}', 0) == 1
    assert after["synood_image_errors_total"] - before["synood_image_errors_total"] == 1
    assert after["synood_request_seconds_count"] - before["synood_request_seconds_count"] == 2
    assert after["synood_ood_window"] == after["synood_images_scored_total"] - 0  # every scored image had a finite score
    assert 0 <= after["synood_ood_rate"] <= 1
    assert after["synood_ready"] == 1


def test_a_test_time_adaptive_method_is_not_served(tmp_path):
    """AdaNeg's score depends on the images before it: in a service one client's images would move another's scores."""
    r = _cli(tmp_path, "serve", *TINY, "--method", "adaneg", "--port", "0")
    assert r.exit_code == 2
    assert r.stderr.startswith("error: score method 'adaneg' is test-time adaptive") and "Traceback" not in r.stderr


def test_a_threshold_made_for_other_scores_is_refused_as_score_refuses_it(server, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("cat\ndog\n")
    common = [*TINY, "--classnames", str(other), "--calibration", str(server.calibration)]
    served = _cli(server.home, "serve", *common, "--port", "0")
    scored = _cli(server.home, "score", str(server.images), *common, "--threshold", "fpr95")
    assert served.exit_code == scored.exit_code == 2
    line = served.stderr.splitlines()[0]
    assert line.startswith("error: --calibration") and "classes: 3 classes (cat, dog, fish) there" in line
    assert line == scored.stderr.splitlines()[0]


def test_a_threshold_for_other_weights_is_refused_once_the_model_is_loaded(server, tmp_path):
    """The weights are known only after loading: the service ends with score's refusal (exit 2), never serving.

    In-process (no second torch import); an alarm guards against a server that would keep running.
    """
    doc = json.loads(server.calibration.read_text())
    doc["identities"]["neglabel"]["weights"] = "synood-tiny-clip@weights/0000000000000000"
    other = tmp_path / "other-weights.json"
    other.write_text(json.dumps(doc))
    common = [*TINY, "--classnames", str(server.classes), "--calibration", str(other)]

    def timeout(*_):
        raise TimeoutError("serve kept running with a threshold made for other weights")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(60)
    try:
        served = _cli(server.home, "serve", *common, "--port", "0")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    scored = _cli(server.home, "score", str(server.images), *common, "--threshold", "fpr95")
    assert served.exit_code == scored.exit_code == 2
    refusal = [line for line in served.stderr.splitlines() if line.startswith("error:")]
    assert refusal == [line for line in scored.stderr.splitlines() if line.startswith("error:")]
    assert "weights: 'synood-tiny-clip@weights/0000000000000000' there" in refusal[0]
    assert "ready: models loaded" not in served.stderr


def test_sigterm_finishes_the_request_in_flight_and_exits_0(server):
    """Runs last: it ends the module's server."""
    answer = {}
    t = threading.Thread(target=lambda: answer.setdefault("r", server.score([("last.png", _png("new", 3))])))
    t.start()
    time.sleep(0.05)  # the request is in: its image waits up to 200 ms for others to join it
    server.proc.send_signal(signal.SIGTERM)
    t.join(30)
    assert server.proc.wait(30) == 0, server.log.read_text()
    status, raw = answer["r"]
    assert status == 200 and json.loads(raw)["scored"] == 1
    assert server.log.read_text().rstrip().endswith("stopped: in-flight requests finished")
