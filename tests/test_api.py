"""The Python API: load once, score PIL images, tensors or folders, get numbers; errors are ValueError/OSError too."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import rows_of, write_tree
from synood_cli.errors import ResourceMissing, SynoodError, UsageError

TINY = ["--profile", "tiny"]


@pytest.fixture(scope="module")
def det_env(tmp_path_factory):

    from synood_cli.api import Detector

    root = tmp_path_factory.mktemp("api")
    tree = write_tree(root / "id", {"cat": 3, "dog": 3, "fish": 2})
    home = root / "home"
    det = Detector(["cat", "dog", "fish"], profile="tiny", method="neglabel", device="cpu", home=home)
    return det, tree, home


def test_scores_match_the_cli(det_env):
    from PIL import Image
    from test_finetune_cli import cli_in_process

    det, tree, home = det_env
    files = sorted(tree.good)
    got = det.score([Image.open(p) for p in files])
    assert isinstance(got.scores, np.ndarray) and got.scores.dtype == np.float64 and len(got) == len(files)
    r = cli_in_process(home, "score", *map(str, files), *TINY, "--method", "neglabel", "--classnames", str(tree.root), "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    want = {row["path"]: row for row in rows_of(r.stdout, "jsonl")}
    assert rows_of(r.stdout, "jsonl")[0]["identities"] == {"neglabel": det.identity}  # the API's scores are the CLI's, identity included
    for p, s, name in zip(files, got.scores, got.pred_names):
        assert s == pytest.approx(want[str(p.resolve())]["score"], abs=1e-6)
        assert name == want[str(p.resolve())]["pred_name"]


def test_tensor_and_folder_inputs_agree(det_env):
    import torch
    from PIL import Image

    det, tree, _ = det_env
    files = sorted(tree.good)
    pil = det.score([Image.open(p) for p in files]).scores
    tensor = det.score(torch.stack([det.preprocess(Image.open(p).convert("RGB")) for p in files])).scores
    np.testing.assert_allclose(tensor, pil, atol=1e-6)
    one = det.score(det.preprocess(Image.open(files[0]).convert("RGB"))).scores
    assert one.shape == (1,) and one[0] == pytest.approx(pil[0], abs=1e-6)
    folder = det.score_folder(tree.root)
    by_path = dict(zip(folder.paths, folder.scores))
    assert set(by_path) == {str(p.resolve()) for p in tree.good}
    for p, s in zip(files, pil):
        assert by_path[str(p.resolve())] == pytest.approx(s, abs=1e-6)
    failed = {f.split("/")[-1] for f, _ in folder.failures}
    assert {"broken.jpg", "notes.txt"} <= failed  # reported, not raised


def test_is_ood_and_errors_are_ordinary_exceptions(det_env):
    from PIL import Image

    from synood_cli.api import Detector

    det, tree, home = det_env
    imgs = [Image.open(p) for p in sorted(tree.good)]
    s = det.score(imgs).scores
    t = float(np.median(s))
    np.testing.assert_array_equal(det.is_ood(imgs, threshold=t), s < t)
    with pytest.raises(ValueError, match="no threshold"):
        det.is_ood(imgs)  # no checkpoint: no stored threshold
    with pytest.raises(ValueError) as info:
        det.score(np.zeros(3))
    assert isinstance(info.value, SynoodError)
    with pytest.raises(ValueError, match="unknown score method"):
        Detector(["a"], profile="tiny", method="neglabl", home=home)
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    if not has_cuda:
        with pytest.raises(OSError) as info:
            Detector(["a"], profile="tiny", device="cuda", home=home)
        assert isinstance(info.value, ResourceMissing)


def test_calibrate_and_load_threshold_with_provenance(det_env, tmp_path):
    import json

    from PIL import Image

    from synood_cli.api import Detector

    det, tree, home = det_env
    imgs = [Image.open(p) for p in sorted(tree.good)]
    det2 = Detector(["cat", "dog", "fish"], profile="tiny", method="neglabel", device="cpu", home=home)  # a fresh one: det_env is shared
    assert det2.score(imgs).is_ood is None  # no threshold yet
    t = det2.calibrate(imgs, tpr=0.9)
    s = np.sort(det2.score(imgs).scores)[::-1]
    assert t.value == s[int(np.ceil(0.9 * len(s))) - 1]  # the k-th largest ID score, k = ceil(0.9 n)
    assert t.source == f"calibrate() on {len(s)} ID images (90% kept)" and det2.threshold == t.value
    got = det2.score(imgs)
    assert got.threshold is t and got.is_ood.dtype == bool
    np.testing.assert_array_equal(got.is_ood, got.scores < t.value)
    assert (~got.is_ood).mean() >= 0.9
    # an evaluate result (or threshold.json) for these scores loads; one for other classes is refused, naming them
    body = {"method": "neglabel", "id_images": 8, "thresholds": {"0.95": 0.125}, "identities": {"neglabel": det2.identity}}
    (tmp_path / "r.json").write_text(json.dumps(body))
    loaded = det2.load_threshold(tmp_path / "r.json")
    assert loaded.value == 0.125 and str(tmp_path / "r.json") in loaded.source and det2.threshold == 0.125
    other = dict(body, identities={"neglabel": dict(det2.identity, classes={"count": 2, "sha256": "0" * 16, "names": ["a", "b"]})})
    (tmp_path / "o.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match=r"classes: 2 classes \(a, b\) there, 3 classes \(cat, dog, fish\)"):
        det2.load_threshold(tmp_path / "o.json")
    assert det2.threshold == 0.125  # the refused one was not taken


def test_tensors_must_be_what_preprocess_makes(det_env):
    import torch
    from PIL import Image

    det, tree, _ = det_env
    good = det.preprocess(Image.open(sorted(tree.good)[0]).convert("RGB"))
    size = tuple(good.shape[1:])
    det.score(good)  # the real thing scores
    unnormalised = torch.from_numpy(np.asarray(Image.open(sorted(tree.good)[0]).convert("RGB").resize(size[::-1]))).permute(2, 0, 1).float() / 255
    for bad, what in (
        (good[:, :-2], "got shape"),
        (good.unsqueeze(0).unsqueeze(0), "got shape"),
        ((good * 40 + 120).to(torch.uint8), "got dtype uint8"),
        (good.double(), "got dtype float64"),
        (unnormalised, "not normalised 8-bit pixels"),
        (good * 3, "outside 0..255"),
        (good * float("nan"), "NaN"),
    ):
        with pytest.raises(ValueError) as e:
            det.score(bad)
        msg = str(e.value)
        assert what in msg and f"float32 [N, 3, {size[0]}, {size[1]}]" in msg and "mean" in msg, msg


def test_error_classes():
    assert issubclass(UsageError, ValueError) and issubclass(UsageError, SynoodError)
    assert issubclass(ResourceMissing, OSError)
    e = ResourceMissing("weights not cached", hint="--model local:DIR")
    assert str(e) == "weights not cached" and e.hint == "--model local:DIR"


def test_class_range_errors_keep_their_message():
    from synood_cli.data.ranges import parse_class_spec

    with pytest.raises(UsageError, match="outside the folder's 3 classes"):
        parse_class_spec("5", 3)
