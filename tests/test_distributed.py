"""More than one rank: torchrun (and srun's variables) on CPU with gloo give what one process gives.

The real launcher runs the real CLI (`python -m torch.distributed.run --standalone
--nproc-per-node 2`); every comparison is against a one-process run of the same command on a
store of its own, byte for byte where one process is deterministic.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PAUSING, Result, rows_of, seed_home, subprocess_env, write_flat, write_tree

TINY = ["--profile", "tiny"]


def torchrun(*args: str, home: Path, ranks: int = 2, env: dict | None = None, script: list[str] | None = None, timeout: int = 300,
             input: str | None = None) -> Result:
    """`torchrun --standalone --nproc-per-node RANKS -m synood_cli ARGS` (or a script), offline, one thread per rank."""
    target = script if script is not None else ["-m", "synood_cli"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *target, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**subprocess_env(home), **(env or {})}, timeout=timeout, input=input)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def payload(art: Path) -> dict[str, bytes]:
    """Every file of an artifact but its manifest (which records times)."""
    return {p.relative_to(art).as_posix(): p.read_bytes() for p in sorted(art.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def artifacts(home: Path, kind: str) -> dict[str, dict[str, bytes]]:
    return {p.name: payload(p) for p in sorted((home / "artifacts" / kind).glob("*")) if p.is_dir() and not p.name.startswith(".")}


# -- splitting, without a launcher ----------------------------------------------------------------


@pytest.mark.parametrize("n,batch,world", [(0, 4, 2), (1, 4, 2), (15, 4, 2), (16, 4, 3), (100, 7, 8), (5, 1, 4)])
def test_ranks_take_whole_single_process_batches_and_together_every_item_once(n, batch, world):
    from synood_cli.distributed import Ranks, batch_items, my_batches

    taken = []
    for rank in range(world):
        batches = my_batches(n, batch, Ranks(rank, world, rank))
        # dealt, not in blocks: batch b goes to rank b % world (`rounds` streams round k = batches k*world..)
        assert batches == [b for b in range(-(-n // batch)) if b % world == rank]
        items = batch_items(batches, n, batch)
        taken += items
        for b in batches:  # a rank's batch is exactly the one-process batch b, so encoders see the same tensors
            assert [i for i in items if i // batch == b] == list(range(b * batch, min((b + 1) * batch, n)))
    assert sorted(taken) == list(range(n))


def test_batches_are_dealt_round_robin():
    from synood_cli.distributed import Ranks, batch_items, my_batches

    # 10 items in batches of 3: batches 0..3 of 3, 3, 3 and 1 items, over 3 ranks
    assert [my_batches(10, 3, Ranks(r, 3, r)) for r in range(3)] == [[0, 3], [1], [2]]
    assert batch_items([0, 3], 10, 3) == [0, 1, 2, 9]
    assert [my_batches(9, 1, Ranks(r, 4, r)) for r in range(4)] == [[0, 4, 8], [1, 5], [2, 6], [3, 7]]


def test_srun_ranks_come_from_the_step_not_from_the_job(monkeypatch):
    from synood_cli.runtime import rank_info

    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    # a batch script (or an salloc shell) of a 4-task job is one process: it must not wait for 3 more
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert rank_info() == (0, 1, 0)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")  # srun -n 4 sets it for each of its tasks
    monkeypatch.setenv("SLURM_PROCID", "2")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    assert rank_info() == (2, 4, 0)


def test_srun_finds_its_rendezvous_or_says_what_to_export(monkeypatch):
    from synood_cli.distributed import Ranks, _rendezvous_env
    from synood_cli.errors import UsageError

    for key in ("MASTER_ADDR", "MASTER_PORT", "SLURM_LAUNCH_NODE_IPADDR", "SLURM_JOB_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.setenv(key, "")  # recorded, so what _rendezvous_env writes is undone after the test
        monkeypatch.delenv(key)
    with pytest.raises(UsageError, match="MASTER_ADDR and MASTER_PORT not set"):
        _rendezvous_env(Ranks(1, 2, 1))
    monkeypatch.setenv("SLURM_LAUNCH_NODE_IPADDR", "10.1.2.3")
    monkeypatch.setenv("SLURM_JOB_ID", "123457")
    _rendezvous_env(Ranks(1, 2, 1))
    assert os.environ["MASTER_ADDR"] == "10.1.2.3"
    assert os.environ["MASTER_PORT"] == str(20000 + 123457 % 20000)  # the same on every task of the job
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("1", "2", "1")


def test_ranks_of_one_node_share_its_cores_for_decoding(monkeypatch):
    from synood_cli.data.loading import available_cpus

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    alone = available_cpus()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    if alone >= (os.cpu_count() or alone):  # unrestricted affinity: torchrun's ranks split the node
        assert available_cpus() == max(1, alone // 2)
    else:  # already bound (srun --cpus-per-task, taskset): the affinity is this rank's share
        assert available_cpus() == alone


def test_prompt_parts_merge_in_selection_order_once_per_image(tmp_path, synood_home):
    """Parts of killed runs with other rank counts (and a row also merged already) fold into one ordered file."""
    from synood_cli.models.mllm import mllm_spec
    from synood_cli.prompting import FAILURES, ROWS, PromptConfig, _merge_parts, plan_prompts, prompts_artifact
    from synood_cli.store import Store, append_jsonl, read_jsonl

    data = write_tree(tmp_path / "train", {"cat": 3, "dog": 3}, corrupt=False, junk=False)
    plan = plan_prompts(PromptConfig(folder=data.root, mllm=mllm_spec("tiny"), per_class=3))
    art = prompts_artifact(Store(synood_home), plan)
    art.begin(plan.artifact_config)
    paths = [str(p) for p, _ in plan.selection.items]
    row = lambda i: {"image_path": paths[i], "n": i}  # noqa: E731
    append_jsonl(art.file(ROWS), [row(0), row(4)])  # merged by an earlier run
    append_jsonl(art.file("prompts.rank0.jsonl"), [row(5), row(2)])  # a 2-rank run...
    append_jsonl(art.file("prompts.rank1.jsonl"), [row(3), row(4)])  # ...that redid image 4 (killed before the parts were removed)
    append_jsonl(art.file("prompts.rank2.jsonl"), [row(1)])  # a 3-rank run before that
    append_jsonl(art.file("failures.rank1.jsonl"), [{"image_path": "/elsewhere/unreadable.jpg", "reason": "unreadable"}])
    rows, fails = _merge_parts(plan, art)
    assert [r["n"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert read_jsonl(art.file(ROWS)) == rows and read_jsonl(art.file(FAILURES)) == fails == [{"image_path": "/elsewhere/unreadable.jpg", "reason": "unreadable"}]
    assert sorted(p.name for p in art.path.iterdir()) == ["failures.jsonl", "manifest.json", "prompts.jsonl"]  # the parts are gone


# -- the real launcher -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rank-data")
    write_tree(root / "train", {"cat": 4, "dog": 4, "fish": 3}, corrupt=True, junk=False)
    write_tree(root / "val", {"cat": 3, "dog": 3, "fish": 3}, corrupt=False, junk=False)
    write_flat(root / "ood", 7)
    (root / "ood" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    import datasets

    from conftest import make_image

    table = datasets.Dataset.from_dict({"img": [make_image(f"t{i % 2}", i) for i in range(7)]}, features=datasets.Features({"img": datasets.Image()}))
    table.to_parquet(str(root / "table.parquet"))  # rows are read by index: each rank reads its own
    return root


@pytest.mark.slow
def test_run_on_two_ranks_makes_what_one_process_makes(tmp_path, tiny_weights, data, invoke):
    """prompt, synthesize, finetune (feature cache) and evaluate: every artifact byte-identical, same metrics."""
    args = ["run", str(data / "train"), "--id-val", str(data / "val"), "--ood", str(data / "ood"), *TINY, "--per-class", "3", "--format", "json"]
    one = invoke(*args, home=seed_home(tiny_weights, tmp_path / "one"))  # in process: one torch thread, as each rank
    two = torchrun(*args, home=seed_home(tiny_weights, tmp_path / "two"))
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert json.loads(two.stdout) == json.loads(one.stdout)  # printed once, by rank 0
    for kind in ("prompts", "synth", "features", "checkpoint"):
        made = artifacts(tmp_path / "two", kind)
        assert made, kind
        assert made == artifacts(tmp_path / "one", kind), kind
    assert two.stderr.count("artifacts: prompts/") == 1  # result lines once, not once per rank
    assert "rank 1/2" not in two.stderr  # the follower's warnings would repeat rank 0's: it keeps quiet


@pytest.mark.slow
def test_score_on_two_ranks_streams_each_row_once_in_input_order(tmp_path, tiny_weights, data, invoke):
    home = seed_home(tiny_weights, tmp_path / "home")
    files = sorted(p for p in (data / "train").rglob("*") if p.is_file()) + sorted((data / "ood").iterdir())
    table = data / "table.parquet"
    args = ["score", *map(str, files), str(table), *TINY, "--classnames", str(_classnames(tmp_path)), "--batch-size", "4", "--format", "csv"]
    one = invoke(*args, home=home)
    two = torchrun(*args, "-o", str(tmp_path / "two.csv"), home=home)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert (tmp_path / "two.csv").read_text() == one.stdout  # rank 0 wrote the file, in input order
    expected = [str(p) for p in files if p.name != "broken.jpg"] + [f"{table}#{i}" for i in range(7)]
    assert [r["path"] for r in rows_of(one.stdout, "csv")] == expected
    assert two.stderr.count("broken.jpg") == 2  # each unreadable file reported once (one per set: train and ood)
    # torchrun hands stdin to rank 0 only: the paths reach every rank all the same
    piped = torchrun("score", "-", *args[len(files) + 1:], home=home, input="".join(f"{p}\n" for p in files))
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == one.stdout


def _classnames(tmp_path: Path) -> Path:
    p = tmp_path / "classes.txt"
    p.write_text("cat\ndog\nfish\n")
    return p


@pytest.mark.slow
def test_score_under_srun_variables_gives_one_output(tmp_path, tiny_weights, data, invoke):
    """srun starts the tasks itself (no torchrun): SLURM_PROCID, SLURM_STEP_NUM_TASKS and the launch node's address."""
    home = seed_home(tiny_weights, tmp_path / "home")
    args = ["score", str(data / "ood"), *TINY, "--classnames", str(_classnames(tmp_path)), "--batch-size", "2", "--format", "jsonl"]
    one = invoke(*args, home=home)
    job = str(random.randrange(10**6))  # the port comes from the job id: one per test run
    procs = []
    for rank in range(2):
        env = {**subprocess_env(home), "SLURM_PROCID": str(rank), "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": str(rank),
               "SLURM_JOB_ID": job, "SLURM_LAUNCH_NODE_IPADDR": "127.0.0.1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "synood_cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == one.stdout  # rank 0 prints every row
    assert outs[1][0] == ""  # rank 1 prints none


@pytest.mark.slow
def test_prompts_of_a_killed_two_rank_run_are_finished_by_one_process(tmp_path, tiny_weights, data, invoke):
    args = ["prompt", str(data / "train"), *TINY, "--per-class", "4", "--batch-size", "2"]
    reference = invoke(*args, home=seed_home(tiny_weights, tmp_path / "one"))
    assert reference.returncode == 0, reference.stderr
    home = seed_home(tiny_weights, tmp_path / "two")
    marker, log = tmp_path / "paused", tmp_path / "torchrun.log"
    # rank 0 stops at its second append (its first batch's rows and failures are written) and is killed there
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(PAUSING),
           "synood_cli.prompting:append_jsonl", "3", str(marker), *args]
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, env={**subprocess_env(home), "PAUSE_RANK": "0"}, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    _kill_rank_when(proc, marker, log)
    (art,) = [p for p in (home / "artifacts" / "prompts").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert json.loads((art / "manifest.json").read_text())["status"] == "partial"
    assert (art / "prompts.rank0.jsonl").read_text().count("\n") == 2  # the batch rank 0 finished is kept
    again = invoke(*args, home=home)  # one process now
    assert again.returncode == 0, again.stderr
    assert "rows done" in again.stderr
    assert artifacts(home, "prompts") == artifacts(tmp_path / "one", "prompts")


def _kill_rank_when(proc: subprocess.Popen, marker: Path, log: Path, guard_s: float = 300.0) -> None:
    """SIGKILL the paused rank (its pid is in the marker) once it is there; torchrun then ends the others and exits."""
    deadline = time.monotonic() + guard_s
    try:
        while not marker.exists():
            assert proc.poll() is None, f"the job ended (rc {proc.returncode}) before its pause point:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the job did not reach its pause point:\n{log.read_text()}"
            time.sleep(0.05)
        os.kill(int(marker.read_text()), signal.SIGKILL)
        assert proc.wait(timeout=guard_s) != 0  # torchrun saw a rank die and stopped the job
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_a_rank_that_hangs_ends_the_job_with_an_error_naming_it(tmp_path, tiny_weights, data):
    """Rank 1 hangs before asking anything: rank 0 finishes its share, waits at most SYNOOD_DIST_TIMEOUT, and says who is missing."""
    home = seed_home(tiny_weights, tmp_path / "home")
    # 6 images in batches of 2: rank 1 has a batch, so it loads the MLLM, and hangs there
    r = torchrun("synood_cli.prompting:load_answerer", "1", str(tmp_path / "paused"), "prompt", str(data / "train"), *TINY, "--per-class", "2",
                 "--batch-size", "2", home=home, env={"PAUSE_RANK": "1", "SYNOOD_DIST_TIMEOUT": "4"}, script=[str(PAUSING)], timeout=240)
    assert (tmp_path / "paused").exists()
    assert r.returncode != 0
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("error: rank 0/2:"))
    assert "rank 1 did not answer while prompting" in line, r.stderr
    assert "SYNOOD_DIST_TIMEOUT" in r.stderr


def _build_tiny_models_on_rank_1(rank: int, home: str, init_file: str) -> None:
    import torch.distributed as dist

    from synood_cli.models.diffusion import ensure_tiny_diffusion
    from synood_cli.models.mllm import ensure_tiny_mllm
    from synood_cli.store import Store

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    if rank == 1:  # the store's lock can give any rank the build
        ensure_tiny_mllm(Store(home), 0)
        ensure_tiny_diffusion(Store(home), 0)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_a_rank_other_than_0_builds_complete_tiny_models(tmp_path):
    """transformers' save_pretrained writes weights on rank 0 only: a rank-1 build held folders without them."""
    import torch
    import torch.multiprocessing as mp

    from synood_cli.models.diffusion import TINY_DIFFUSION, load_inpainter
    from synood_cli.models.mllm import load_answerer, mllm_spec
    from synood_cli.store import Store

    home = tmp_path / "home"
    mp.spawn(_build_tiny_models_on_rank_1, args=(str(home), str(tmp_path / "rendezvous")), nprocs=2, join=True)
    store = Store(home)
    answerer = load_answerer(mllm_spec("tiny"), store, torch.device("cpu"), torch.float32, 4)
    assert len(answerer.answer([__import__("PIL.Image").Image.new("RGB", (32, 32))], ["what is there?"])) == 1
    load_inpainter(TINY_DIFFUSION, store, torch.device("cpu"), torch.float32)


@pytest.mark.cuda
def test_each_rank_takes_its_own_gpu(monkeypatch):
    """`--device auto` and `--device cuda` mean cuda:$LOCAL_RANK (wrapping round the GPUs there are), not cuda:0 on every rank."""
    import torch

    from synood_cli.runtime import resolve_device

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    n = torch.cuda.device_count()
    monkeypatch.setenv("WORLD_SIZE", "4")
    for local in range(4):
        monkeypatch.setenv("RANK", str(local))
        monkeypatch.setenv("LOCAL_RANK", str(local))
        assert resolve_device("cuda") == resolve_device("auto") == torch.device("cuda", local % n)


@pytest.mark.slow
def test_ranks_wait_for_rank_0_training_longer_than_the_collective_timeout(tmp_path, tiny_weights, data, invoke):
    """Rank 0 trains alone while the others wait: that wait is not bounded by SYNOOD_DIST_TIMEOUT (a dead rank still ends it)."""
    home = seed_home(tiny_weights, tmp_path / "home")
    for args in (["prompt", str(data / "train"), *TINY, "--per-class", "2", "--name", "ctx"], ["synthesize", "--prompts", "ctx", *TINY, "--name", "near"]):
        r = invoke(*args, home=home)
        assert r.returncode == 0, r.stderr
    # rank 0's training takes 2.5x the collective timeout (4 s: the feature gathers before it must not time out on a loaded machine)
    r = torchrun("synood_cli.finetuning:train", "1", str(tmp_path / "slow"), "finetune", "--prompts", "ctx", "--synth", "near", *TINY,
                 "--name", "ck", home=home, env={"PAUSE_RANK": "0", "PAUSE_SECONDS": "10", "SYNOOD_DIST_TIMEOUT": "4"}, script=[str(PAUSING)])
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "slow").exists()  # the pause really happened
    assert json.loads((home / "names" / "ck").read_text())["kind"] == "checkpoint"
