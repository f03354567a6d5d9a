"""`--batch-size auto` and the out-of-memory back-off (synood_cli/batching.py).

The rule is checked on given memory figures, with the expected batch worked out by hand in each
comment. There is no GPU here, and no way to run a CPU out of CUDA memory: the back-off tests
wrap the real tiny models (CLIP, LLaVA, the inpainting pipeline) in a wrapper that raises
`torch.cuda.OutOfMemoryError` for batches above a size, as the CUDA allocator would, and compare
what comes out with the real model's answers for the same images.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import seed_home, write_tree
from synood_cli.batching import auto_batch_size, choose_batch_size, costs_from_peaks, parse_batch_size, split_on_oom
from synood_cli.errors import ResourceMissing, UsageError

GiB, MiB = 2**30, 2**20


class Recorder:
    """A reporter that keeps what it was told."""

    def __init__(self):
        self.infos, self.warns = [], []

    def info(self, message):
        self.infos.append(message)

    def warn(self, message):
        self.warns.append(message)


class OomAbove:
    """Calls `fn(items, ...)`, raising CUDA out-of-memory as the allocator would when more than `limit` items come at once."""

    def __init__(self, fn, limit: int):
        self.fn, self.limit, self.sizes = fn, limit, []

    def __call__(self, items, *rest):
        self.sizes.append(len(items))
        if len(items) > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(items)} images")
        return self.fn(items, *rest)


# -- the rule --------------------------------------------------------------------------------------


def test_auto_batch_size_fits_the_measured_cost_in_80_percent_of_free_memory():
    # 0.8 x 10 GiB = 8 GiB, minus 1 GiB fixed = 7 GiB, / 512 MiB per image = 14
    assert auto_batch_size(10 * GiB, 1 * GiB, 512 * MiB, 0.8, cap=1000) == 14
    # SD2 inpainting at 512 px on an 80 GB card, say 70 GiB free: 0.8 x 70 = 56, - 2 fixed = 54 GiB, / 3 GiB = 18
    assert auto_batch_size(70 * GiB, 2 * GiB, 3 * GiB, 0.8, cap=50) == 18
    # 0.5 x 10 GiB = 5 GiB - 1 = 4 GiB / 512 MiB = 8: the margin is applied to the free memory, not the budget
    assert auto_batch_size(10 * GiB, 1 * GiB, 512 * MiB, 0.5, cap=1000) == 8
    # 7 GiB / 700 MiB = 10.24: rounded down
    assert auto_batch_size(10 * GiB, 1 * GiB, 700 * MiB, 0.8, cap=1000) == 10


def test_auto_batch_size_is_capped_by_the_images_and_never_below_one():
    assert auto_batch_size(10 * GiB, 1 * GiB, 512 * MiB, 0.8, cap=5) == 5  # 14 would fit, 5 images exist
    assert auto_batch_size(1 * GiB, 2 * GiB, 512 * MiB, 0.8, cap=100) == 1  # the fixed cost alone does not fit: try 1, back off
    assert auto_batch_size(10 * GiB, 0, 0, 0.8, cap=64) == 64  # no per-image cost seen: the cap
    with pytest.raises(ValueError):
        auto_batch_size(10 * GiB, 0, MiB, 1.5, cap=4)


def test_probe_peaks_split_into_a_fixed_and_a_per_image_cost():
    assert costs_from_peaks({1: 300 * MiB, 2: 500 * MiB}) == (100 * MiB, 200 * MiB)  # slope 200, 300 - 200 = 100 fixed
    assert costs_from_peaks({2: 500 * MiB, 1: 300 * MiB}) == (100 * MiB, 200 * MiB)
    assert costs_from_peaks({1: 500 * MiB, 2: 500 * MiB}) == (0, 250 * MiB)  # rounding hid the slope: all of it per image


def test_on_a_cpu_auto_is_the_profiles_batch_size_and_the_log_says_so():
    rec = Recorder()
    probed = []
    assert choose_batch_size(torch.device("cpu"), probed.append, 100, 32, "score", rec) == 32
    assert choose_batch_size(torch.device("cpu"), probed.append, 6, 32, "score", rec) == 6
    assert probed == []  # no probe on a CPU
    assert "auto on cpu is the profile's batch size, 32" in rec.infos[0]


def test_parse_batch_size():
    assert parse_batch_size("auto") == parse_batch_size("AUTO") == "auto"
    assert parse_batch_size("8") == 8 and parse_batch_size(None) is None
    with pytest.raises(UsageError, match="positive integer or auto"):
        parse_batch_size("lots")


# -- the back-off ----------------------------------------------------------------------------------


def test_split_on_oom_keeps_order_and_redoes_nothing_that_fitted():
    calls = []

    def run(lo, hi):
        calls.append((lo, hi))
        if hi - lo > 2:
            raise torch.cuda.OutOfMemoryError("out of memory")
        return list(range(lo, hi))

    splits = []
    assert split_on_oom(run, 7, lambda a, b: a + b, lambda b, h: splits.append((b, h))) == list(range(7))
    assert calls == [(0, 7), (0, 3), (0, 1), (1, 3), (3, 7), (3, 5), (5, 7)]
    assert splits == [(7, 3), (3, 1), (4, 2)]


def test_one_item_that_does_not_fit_is_exit_3_and_other_errors_pass_through():
    def never(lo, hi):
        raise torch.cuda.OutOfMemoryError("out of memory")

    with pytest.raises(ResourceMissing, match="one image does not fit") as e:
        split_on_oom(never, 4, lambda a, b: a + b, hint="lower --size")
    assert e.value.exit_code == 3 and e.value.hint == "lower --size"

    def broken(lo, hi):
        raise ValueError("a bug, not memory")

    with pytest.raises(ValueError, match="a bug"):
        split_on_oom(broken, 4, lambda a, b: a + b)


@pytest.fixture(scope="module")
def tiny_setup(tiny_weights, tmp_path_factory):
    """The tiny profile's CLIP with NegLabel and MCM bound to three classes, and a batch of six real images."""
    from synood_cli.scoring import ScoringConfig, prepare_scoring

    home = seed_home(tiny_weights, tmp_path_factory.mktemp("home"))
    setup = prepare_scoring(ScoringConfig(home=home, profile="tiny", method="neglabel,mcm", device="cpu"), ["cat", "dog", "fish"])
    data = write_tree(tmp_path_factory.mktemp("imgs"), {"a": 3, "b": 3}, corrupt=False, junk=False)
    pixels = torch.stack([setup.clip.preprocess(__import__("PIL.Image").Image.open(p).convert("RGB")) for p in data.good])
    return setup, pixels, home


def test_score_backs_off_on_out_of_memory_with_the_same_scores(tiny_setup, monkeypatch):
    from synood_cli.scoring import score_pixels, score_pixels_split

    setup, pixels, _ = tiny_setup
    whole, whole_preds = score_pixels(setup, pixels)
    oom = OomAbove(setup.clip.encode_raw, limit=2)
    monkeypatch.setattr(setup.clip, "encode_raw", oom)
    rec = Recorder()
    split, split_preds = score_pixels_split(setup, pixels, rec)
    assert oom.sizes == [6, 3, 1, 2, 3, 1, 2]  # 6 -> 3 + 3 -> (1 + 2) + (1 + 2)
    for m in whole:
        assert split[m].shape == (6,)
        assert split[m] == pytest.approx(whole[m], abs=1e-6)
    assert split_preds.tolist() == whole_preds.tolist()
    assert rec.warns[0] == "CUDA out of memory at 6 images; scoring them 3 at a time"


def test_a_transductive_score_is_not_split_but_exit_3(tiny_setup, monkeypatch):
    from synood_cli.scoring import ScoringConfig, prepare_scoring, score_pixels_split

    _, pixels, home = tiny_setup
    setup = prepare_scoring(ScoringConfig(home=home, profile="tiny", method="adaneg", device="cpu"), ["cat", "dog", "fish"])
    monkeypatch.setattr(setup.clip, "encode_raw", OomAbove(setup.clip.encode_raw, limit=2))
    with pytest.raises(ResourceMissing, match="adaneg's scores depend on the batch, so it is not split"):
        score_pixels_split(setup, pixels)


def test_prompt_backs_off_on_out_of_memory_with_each_images_own_answer(tiny_weights, tmp_path):
    import PIL.Image

    from synood_cli.models.mllm import ensure_tiny_mllm, TransformersAnswerer
    from synood_cli.prompting import answer_with_backoff
    from synood_cli.store import Store

    folder = ensure_tiny_mllm(Store(seed_home(tiny_weights, tmp_path / "home")), 0)
    real = TransformersAnswerer(str(folder), torch.device("cpu"), torch.float32, max_new_tokens=6)
    data = write_tree(tmp_path / "imgs", {"a": 3}, corrupt=False, junk=False)
    images = [PIL.Image.open(p).convert("RGB") for p in data.good]
    questions = ["List the objects other than the a."] * 3
    alone = [real.answer([im], [q])[0] for im, q in zip(images, questions)]  # what a batch of one answers
    oom = OomAbove(real.answer, limit=1)
    real.answer = oom
    rec = Recorder()
    assert answer_with_backoff(real, images, questions, rec) == alone
    assert oom.sizes == [3, 1, 2, 1, 1]
    assert "CUDA out of memory at 3 images" in rec.warns[0]


def test_synthesis_backs_off_on_out_of_memory_with_the_same_images(tiny_weights, tmp_path):
    from synood_cli.models.diffusion import TINY_DIFFUSION, load_inpainter
    from synood_cli.store import Store
    from synood_cli.synthesis import SynthConfig, Synthesizer, run_with_backoff

    inp = load_inpainter(TINY_DIFFUSION, Store(seed_home(tiny_weights, tmp_path / "home")), torch.device("cpu"), torch.float32)
    cfg = SynthConfig(prompts="p", diffusion=TINY_DIFFUSION, size=32, steps=4, iterations=1, guidance="none", profile="tiny", device="cpu")
    synth = Synthesizer(cfg, inp, None, None, torch.device("cpu"))
    sources = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    prompts, seeds = ["a photo only remain sky"] * 3, [5, 6, 7]
    whole = synth.run(sources, prompts, seeds)
    oom = OomAbove(synth.run, limit=1)
    synth.run = oom
    rec = Recorder()
    images, scores, nonfinite = run_with_backoff(synth, sources, prompts, seeds, rec)
    assert oom.sizes == [3, 1, 2, 1, 1]
    torch.testing.assert_close(images, whole[0], rtol=0, atol=1e-5)
    assert nonfinite.tolist() == [False] * 3 and rec.warns[0] == "CUDA out of memory at batch 3; going on with 1"


def test_each_stages_probe_runs_the_real_models_on_blank_images(tiny_setup, tiny_weights, tmp_path):
    """The probes `--batch-size auto` measures on CUDA, run here on a CPU: the memory readings are CUDA's, the work is not."""
    from synood_cli.guidance import GuideModel
    from synood_cli.models.diffusion import TINY_DIFFUSION, load_inpainter
    from synood_cli.models.mllm import TransformersAnswerer, ensure_tiny_mllm, mllm_spec
    from synood_cli.prompting import PromptConfig, prompt_probe
    from synood_cli.scoring import score_probe
    from synood_cli.store import Store
    from synood_cli.synthesis import SynthConfig, Synthesizer, synth_probe

    setup, _, _ = tiny_setup
    score_probe(setup)(2)
    store = Store(seed_home(tiny_weights, tmp_path / "home"))
    answerer = TransformersAnswerer(str(ensure_tiny_mllm(store, 0)), torch.device("cpu"), torch.float32, max_new_tokens=4)
    prompt_probe(answerer, PromptConfig(folder=tmp_path, mllm=mllm_spec("tiny")))(2)

    inp = load_inpainter(TINY_DIFFUSION, store, torch.device("cpu"), torch.float32)
    w = torch.randn(3, 3 * 8 * 8, generator=torch.Generator().manual_seed(0))
    guided = []

    def classify(x):  # a small differentiable 3-class classifier
        guided.append(x.requires_grad)
        return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1) @ w.T

    cfg = SynthConfig(prompts="p", diffusion=TINY_DIFFUSION, size=32, steps=20, strength=0.6, iterations=3, profile="tiny", device="cpu")
    synth = Synthesizer(cfg, inp, GuideModel(classify, "toy"), 0.0, torch.device("cpu"))
    unet_calls = []
    hook = inp.unet.register_forward_hook(lambda *_: unet_calls.append(1))
    try:
        synth_probe(synth, cfg, torch.device("cpu"))(2)
    finally:
        hook.remove()
    assert len(unet_calls) == 2  # 2 iterations x 1 denoising step (steps 2 x strength 0.6 = 1), not 3 x 12
    assert guided[0] is True  # the first iteration's guided backward pass: the memory peak is in the probe


# -- the commands ----------------------------------------------------------------------------------


def test_score_auto_on_a_cpu_logs_the_profiles_batch(invoke, synood_home, tiny_weights, tmp_path):
    seed_home(tiny_weights, synood_home)
    data = write_tree(tmp_path / "imgs", {"a": 2, "b": 2}, corrupt=False, junk=False)
    auto = invoke("score", str(data.root), "--profile", "tiny", "--device", "cpu", "--batch-size", "auto", "--format", "jsonl")
    assert auto.returncode == 0, auto.stderr
    assert "--batch-size auto on cpu is the profile's batch size, 32" in auto.stderr
    assert len([json.loads(line) for line in auto.stdout.splitlines()]) == 4
    bad = invoke("score", str(data.root), "--profile", "tiny", "--batch-size", "lots")
    assert bad.returncode == 2 and "positive integer or auto" in bad.stderr


def test_batch_size_is_not_part_of_a_prompts_artifact_id_or_a_score_identity(tmp_path, synood_home):
    from synood_cli.models.mllm import mllm_spec
    from synood_cli.prompting import PromptConfig, plan_prompts, prompts_artifact
    from synood_cli.scoring import ScoringConfig, planned_identity
    from synood_cli.store import Store

    data = write_tree(tmp_path / "imgs", {"a": 2, "b": 2}, corrupt=False, junk=False)
    ids = {prompts_artifact(Store(synood_home), plan_prompts(PromptConfig(folder=data.root, mllm=mllm_spec("tiny"), per_class=2, **kw))).id
           for kw in ({"batch_size": 1}, {"batch_size": 4, "auto_batch": True})}
    assert len(ids) == 1
    idents = [planned_identity(ScoringConfig(home=synood_home, profile="tiny", device="cpu", batch_size=b).resolved(), "neglabel", ["a", "b"])
              for b in (1, "auto")]
    assert idents[0] == idents[1]
