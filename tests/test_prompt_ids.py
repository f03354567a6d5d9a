"""The prompts id hashes the selected images' names below the folder and their contents, not the folder's path (issue 22).

So ids reproduce on another machine, a moved folder finds its own earlier work (and the artifact
then reads the images from where they are now), and an edited image makes a new artifact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import make_image
from test_image_guard import in_process

ARGS = ["--profile", "tiny", "--per-class", "2"]


def _tree(root: Path) -> Path:
    for c in ("owl", "elk"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            make_image(f"moved-{c}", i).save(root / c / f"{i}.png")
    return root


def _plan_id(folder: Path, store) -> str:
    from synood_cli.models.mllm import mllm_spec
    from synood_cli.prompting import PromptConfig, plan_prompts, prompts_artifact

    # select all (in name order): an edited image cannot change the id through the selection's order alone
    return prompts_artifact(store, plan_prompts(PromptConfig(folder, mllm_spec("tiny"), per_class=None, select="all"))).id


def test_id_follows_content_not_location(tmp_path):
    from synood_cli.store import Store

    store = Store(tmp_path / "home")
    a = _tree(tmp_path / "a")
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    assert _plan_id(a, store) == _plan_id(b, store)
    make_image("edited", 0).save(b / "owl" / "1.png")  # same name, other pixels
    assert _plan_id(b, store) != _plan_id(a, store)
    (b / "owl" / "1.png").rename(b / "owl" / "9.png")  # same content as a's, another name
    make_image("moved-owl", 1).save(b / "owl" / "9.png")
    assert _plan_id(b, store) != _plan_id(a, store)


def _rows(home: Path, ref: str) -> tuple[dict, list[dict]]:
    from synood_cli.store import Store

    art = Store(home).find(ref)
    return art.manifest, [json.loads(line) for line in art.file("prompts.jsonl").read_text().splitlines()]


def test_a_moved_folder_finds_its_prompts_and_they_follow_it(tmp_path, shared_home):
    a = _tree(tmp_path / "a")
    r = in_process(shared_home, "prompt", str(a), *ARGS, "--name", "moving")
    assert r.returncode == 0, r.stderr
    manifest, rows = _rows(shared_home, "moving")
    b = tmp_path / "b"
    a.rename(b)
    r = in_process(shared_home, "prompt", str(b), *ARGS)
    assert r.returncode == 0 and "nothing to do" in r.stderr and f"it now reads them from {b}" in r.stderr, r.stderr
    moved, moved_rows = _rows(shared_home, "moving")
    assert moved["id"] == manifest["id"] and moved["config"]["folder"] == str(b) and moved["status"] == "complete"
    assert [row["context"] for row in moved_rows] == [row["context"] for row in rows]  # answers kept, not asked again
    assert all(row["image_path"].startswith(str(b) + "/") and Path(row["image_path"]).is_file() for row in moved_rows)
    from synood_cli.store import Store

    assert Store(shared_home).find("moving").problems(hashes=True) == []  # file hashes recorded again

    # a partial artifact resumed from a new folder: the rows done are kept, only the rest is asked
    art = Store(shared_home).find("moving")
    done = art.file("prompts.jsonl").read_text().splitlines(keepends=True)
    art.file("prompts.jsonl").write_text("".join(done[:1]))
    m = json.loads(art.file("manifest.json").read_text())
    m.update(status="partial", files={})
    art.file("manifest.json").write_text(json.dumps(m))
    c = tmp_path / "c"
    b.rename(c)
    r = in_process(shared_home, "prompt", str(c), *ARGS)
    assert r.returncode == 0 and "1 rows done, 3 images to go" in r.stderr, r.stderr
    _, resumed = _rows(shared_home, "moving")
    assert sorted(row["image_path"] for row in resumed) == sorted(row["image_path"].replace(str(b), str(c)) for row in moved_rows)
