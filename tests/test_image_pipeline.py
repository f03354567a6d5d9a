"""The input pipeline (data/decoding.py, data/preprocess.py, data/pixels.py): decode-only workers,
batched preprocessing on the encoder's device, and its agreement with open_clip's PIL path."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synood_cli.store import Store

from conftest import make_image, switched, truncated_jpeg_bytes

# torchvision 0.29 warns on every decode call (its image I/O is deprecated for TorchCodec)
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")


def _content(rng: random.Random, w: int, h: int) -> Image.Image:
    """A photo-like image: smooth colour gradients, a few shapes, some noise (features vary with it)."""
    from PIL import ImageDraw

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    chans = []
    for _ in range(3):
        a, b, c = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0, 255)
        f = rng.uniform(0.5, 6) * np.pi
        chans.append(c + 80 * np.sin(f * (a * xx / max(w, 1) + b * yy / max(h, 1))))
    arr = np.stack(chans, -1) + np.random.default_rng(rng.randrange(1 << 30)).normal(0, rng.uniform(0, 12), (h, w, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(rng.randrange(0, 5)):
        x0, y0 = rng.randrange(max(w, 1)), rng.randrange(max(h, 1))
        d.ellipse([x0, y0, x0 + rng.randrange(1, w + 2), y0 + rng.randrange(1, h + 2)], fill=tuple(rng.randrange(256) for _ in range(3)))
    return img


def _varied_image(i: int) -> tuple[str, bytes]:
    """Image i of the equivalence set: many sizes, modes and formats (file suffix, bytes)."""
    rng = random.Random(i)
    kind = i % 12
    if kind == 0:  # tiny
        w, h = rng.randrange(1, 24), rng.randrange(1, 24)
    elif kind == 1 and i % 48 == 1:  # huge (a few)
        w, h = rng.randrange(2400, 3200), rng.randrange(1800, 2600)
    else:
        w, h = rng.randrange(80, 640), rng.randrange(80, 640)
    img = _content(rng, w, h)
    buf = io.BytesIO()
    if kind in (0, 1, 2, 3, 4):  # plain RGB JPEG, the common case
        img.save(buf, "JPEG", quality=rng.randrange(60, 98), subsampling=rng.choice([0, 1, 2]))
        return ".jpg", buf.getvalue()
    if kind == 5:
        img.convert("L").save(buf, "JPEG", quality=90)
        return ".jpg", buf.getvalue()
    if kind == 6:
        img.convert("CMYK").save(buf, "JPEG", quality=90)
        return ".jpg", buf.getvalue()
    if kind == 7:  # EXIF orientation 6: neither path applies it (open_clip's does not)
        exif = Image.Exif()
        exif[0x0112] = 6
        img.save(buf, "JPEG", quality=88, exif=exif.tobytes())
        return ".jpg", buf.getvalue()
    if kind == 8:
        rgba = img.convert("RGBA")
        alpha = Image.linear_gradient("L").resize(img.size)
        rgba.putalpha(alpha)
        rgba.save(buf, "PNG")
        return ".png", buf.getvalue()
    if kind == 9:
        img.convert("P", palette=Image.Palette.ADAPTIVE, colors=rng.randrange(4, 256)).save(buf, "PNG")
        return ".png", buf.getvalue()
    if kind == 10:
        img.convert("L").save(buf, "PNG")
        return ".png", buf.getvalue()
    img.save(buf, rng.choice(["WEBP", "BMP"]))
    return ".webp" if buf.getvalue()[:4] == b"RIFF" else ".bmp", buf.getvalue()


def _write_varied(root: Path, n: int) -> list[Path]:
    files = []
    for i in range(n):
        suffix, data = _varied_image(i)
        p = root / f"im{i:03d}{suffix}"
        if not p.exists():
            p.write_bytes(data)
        files.append(p)
    return files


@pytest.fixture(scope="module")
def varied_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("varied")


@pytest.fixture(scope="module")
def varied_files(varied_root) -> list[Path]:
    """The first 48 images of the set (every kind, no huge one): for the fast tests."""
    return _write_varied(varied_root, 48)


@pytest.fixture(scope="module")
def varied_all(varied_root) -> list[Path]:
    """A few hundred images: grayscale, CMYK, RGBA, palette, PNG/WEBP/BMP, EXIF-rotated, tiny, huge."""
    return _write_varied(varied_root, 200)


def _clip_224(home: Path):
    """A small random CLIP at ViT-B/16's input size (224 px, bicubic, CLIP mean/std): the real
    preprocessing geometry at a cost of milliseconds per batch."""
    import open_clip

    from synood_cli.models.clip import ClipModel, ClipSource

    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=64,
        vision_cfg={"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
    ).eval()
    preprocess = open_clip.image_transform(224, is_train=False)
    return ClipModel(model, preprocess, open_clip.get_tokenizer("ViT-B-16"), ClipSource("test-224"), "test-224", torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def clip224(tmp_path_factory):
    return _clip_224(tmp_path_factory.mktemp("c224"))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from synood_cli.models.clip import ClipSource, load_clip

    return load_clip(ClipSource("synood-tiny-clip", "tiny", 0), Store(tmp_path_factory.mktemp("tiny")), torch.device("cpu"), torch.float32)


def _features(clip, files, exact: bool, workers: int = 0, batch_size: int = 32):
    from synood_cli.data.pixels import iterate_pixels

    out, errs = [], []
    with switched(clip, exact_preprocess=exact):
        for pixels, idx, errors in iterate_pixels(clip, files, batch_size, workers):
            errs += errors
            if pixels is not None:
                out.append(clip.encode_images(pixels))
    return torch.cat(out), errs


def _reference(clip, files):
    """open_clip's reference: PIL open, convert("RGB"), its eval transform, one image at a time."""
    feats = []
    for f in files:
        with Image.open(f) as im:
            feats.append(clip.encode_images(clip.preprocess(im.convert("RGB"))[None]))
    return torch.cat(feats)


def _scores(feats: torch.Tensor, seed: int = 0) -> np.ndarray:
    """NegLabel scores against fixed random ID/negative text features."""
    from synood_cli.scores import ScoreInputs, Scorer

    g = torch.Generator().manual_seed(seed)
    d = feats.shape[1]
    id_t = torch.nn.functional.normalize(torch.randn(10, d, generator=g), dim=1)
    neg_t = torch.nn.functional.normalize(torch.randn(200, d, generator=g), dim=1)
    s, _ = Scorer("neglabel", ScoreInputs(id_text=id_t, neg_text=neg_t, tau=0.01, groups=10, seed=0))(feats)
    return s.numpy()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["clip224", "tiny_clip"])
def test_scores_agree_with_open_clip_reference_on_varied_images(which, varied_all, request, capsys):
    varied_files = varied_all
    from scipy.stats import spearmanr

    clip = request.getfixturevalue(which)
    ref = _reference(clip, varied_files)
    fast, errors = _features(clip, varied_files, exact=False)
    assert errors == [None] * len(varied_files)
    assert fast.shape == ref.shape
    diff = (fast - ref).abs().max().item()
    cos = torch.nn.functional.cosine_similarity(fast, ref).min().item()
    rho = spearmanr(_scores(fast), _scores(ref)).statistic
    # the features differ (resampling in torch vs PIL) but not the ranking
    with capsys.disabled():
        print(f"\n[{which}] {len(varied_files)} images: spearman {rho:.6f}, max |feature diff| {diff:.2e}, min cosine {cos:.6f}")
    assert rho >= 0.999
    # measured: max diff 1.1e-4 at 224 px, 8.5e-4 on the tiny model's 64 px; bilinear instead of
    # bicubic gave 5e-3 at 224 px (and still rho 0.9999), a wrong crop or normalisation far more
    assert cos > 0.9999
    assert diff < 2e-3


def test_exact_path_is_bit_identical_to_open_clip(tiny_clip, varied_files):
    files = varied_files[:16]
    exact, errors = _features(tiny_clip, files, exact=True, batch_size=1)  # the reference encodes one by one
    assert errors == [None] * len(files)
    assert torch.equal(exact, _reference(tiny_clip, files))


def test_jpeg_decode_matches_pil_pixels_and_routes_other_modes_to_pil(varied_files):
    from synood_cli.data.decoding import decode_rgb, jpeg_fast_path

    routed = {"fast": 0, "pil": 0}
    for f in varied_files:
        data = f.read_bytes()
        with Image.open(f) as im:
            ref = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
            mode, fmt = im.mode, im.format
        fast = jpeg_fast_path(data)
        routed["fast" if fast else "pil"] += 1
        assert fast == (fmt == "JPEG" and mode in ("RGB", "L")), f.name
        got = decode_rgb(data)
        assert got.dtype == torch.uint8 and got.shape == ref.shape, f.name
        # libjpeg-turbo in both; allow a rounding step in the colour conversion
        assert (got.int() - ref.int()).abs().max() <= 1, f.name
    assert routed["fast"] > 0 and routed["pil"] > 0


def test_truncated_jpeg_is_not_decoded_by_the_fast_path():
    """Cut inside the entropy-coded data: the header parses, the end-of-image marker is missing,
    so PIL decodes it and raises as the reference path does."""
    from synood_cli.data.decoding import decode_rgb, jpeg_fast_path

    buf = io.BytesIO()
    _content(random.Random(1), 400, 300).save(buf, "JPEG", quality=90)
    data = buf.getvalue()[: int(len(buf.getvalue()) * 0.8)]
    assert not jpeg_fast_path(data)
    with pytest.raises(OSError):
        decode_rgb(data)
    assert jpeg_fast_path(buf.getvalue())


@pytest.fixture
def mixed_folder(tmp_path) -> list[Path]:
    root = tmp_path / "mixed"
    root.mkdir()
    files = []
    for i in range(7):
        p = root / f"g{i}.{'jpg' if i % 2 else 'png'}"
        make_image("mix", i, size=40 + 13 * i).save(p, "JPEG" if i % 2 else "PNG")
        files.append(p)
    (root / "trunc.jpg").write_bytes(truncated_jpeg_bytes(1))
    (root / "empty.png").write_bytes(b"")
    (root / "notes.jpg").write_text("not an image")
    bad = [root / "trunc.jpg", root / "empty.png", root / "notes.jpg", root / "gone.jpg"]
    order = files[:3] + bad[:2] + files[3:] + bad[2:]
    return order


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_reported_like_the_exact_path(tiny_clip, mixed_folder, workers):
    fast, fast_err = _features(tiny_clip, mixed_folder, exact=False, workers=workers, batch_size=4)
    exact, exact_err = _features(tiny_clip, mixed_folder, exact=True, workers=0, batch_size=4)
    assert fast_err == exact_err  # same files, same one-line reasons
    names = [p.name for p, e in zip(mixed_folder, fast_err) if e]
    assert names == ["trunc.jpg", "empty.png", "notes.jpg", "gone.jpg"]
    reasons = dict(zip(names, [e for e in fast_err if e]))
    assert "truncated or corrupt" in reasons["trunc.jpg"]
    assert "empty file" in reasons["empty.png"]
    assert "not a decodable image" in reasons["notes.jpg"] and "notes.jpg" in reasons["notes.jpg"]
    assert "file not found" in reasons["gone.jpg"]
    assert fast.shape == exact.shape == (7, tiny_clip.embed_dim)
    assert torch.nn.functional.cosine_similarity(fast, exact).min() > 0.999


def test_workers_and_batch_size_do_not_change_features(tiny_clip, varied_files):
    files = varied_files[:40]
    a, _ = _features(tiny_clip, files, exact=False, workers=0, batch_size=40)
    b, _ = _features(tiny_clip, files, exact=False, workers=2, batch_size=7)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_unknown_transform_falls_back_to_the_pil_path(tiny_clip, varied_files):
    """A 'squash' resize cannot be reproduced batched: the pipeline must use the model's own transform."""
    import copy

    from open_clip import image_transform

    from synood_cli.data.preprocess import TensorPreprocess

    squash = image_transform(64, is_train=False, resize_mode="squash")
    assert TensorPreprocess.from_transform(squash) is None
    # a hand-made Compose with a fixed (h, w) resize, in the five-step shape open_clip uses
    from torchvision import transforms as T

    steps = list(tiny_clip.preprocess.transforms)
    fixed = T.Compose([T.Resize((64, 80), interpolation=T.InterpolationMode.BICUBIC)] + steps[1:])
    assert TensorPreprocess.from_transform(fixed) is None
    assert TensorPreprocess.from_transform(tiny_clip.preprocess) is not None
    clip = copy.copy(tiny_clip)
    clip.preprocess, clip._tensor_preprocess = squash, None
    assert clip.preprocess_id is None  # caches keyed like the PIL path
    files = varied_files[:12]
    got, _ = _features(clip, files, exact=False, batch_size=1)
    assert torch.equal(got, _reference(clip, files))


def test_preprocess_reads_open_clip_parameters():
    from open_clip import image_transform

    from synood_cli.data.preprocess import TensorPreprocess

    p = TensorPreprocess.from_transform(image_transform(224, is_train=False, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bilinear"))
    assert p == TensorPreprocess(224, (224, 224), "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    # a grey image normalises to (128/255 - 0.5) / 0.25 everywhere
    out = p([torch.full((3, 50, 80), 128, dtype=torch.uint8)], torch.device("cpu"))
    assert out.shape == (1, 3, 224, 224)
    torch.testing.assert_close(out, torch.full_like(out, (128 / 255 - 0.5) / 0.25))


def test_default_workers_follow_the_cores_uncapped(monkeypatch):
    from synood_cli.data import loading

    monkeypatch.setattr(loading, "available_cpus", lambda: 64)
    assert loading.default_num_workers() == 64
    monkeypatch.setattr(loading, "available_cpus", lambda: 1)
    assert loading.default_num_workers() == 0
    # one batch never starts a worker (time to first result of `synood score one.jpg`)
    assert loading.loader_workers(8, 1, 32) == 0
    assert loading.loader_workers(8, 65, 32) == 3


def test_main_process_threads_shrink_while_workers_decode(tiny_clip, varied_files, monkeypatch):
    from synood_cli.data import pixels

    monkeypatch.setattr(pixels, "available_cpus", lambda: 3)
    session_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        before = torch.get_num_threads()
        seen = []
        for _ in pixels.iterate_pixels(tiny_clip, varied_files[:20], 5, num_workers=2):
            seen.append(torch.get_num_threads())
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == before
    finally:
        # the session runs on 1 thread: left at 2, later in-process runs (the test_finetune_cli reference
        # store) summed in another order than their 1-thread subprocess twins and differed in the last bits
        torch.set_num_threads(session_threads)


def test_feature_cache_keys_on_the_preprocessing(tiny_clip, synood_home):
    from synood_cli.features import EncodeStats, cached_features

    store = Store(synood_home)
    buf = io.BytesIO()
    _content(random.Random(5), 300, 200).save(buf, "JPEG", quality=85)
    blobs = [buf.getvalue()] + [_png(i) for i in range(4)]
    loaders = [(lambda b=b: b) for b in blobs]
    stats = EncodeStats()
    fast = cached_features(tiny_clip, store, loaders, stats, batch_size=1)
    with switched(tiny_clip, exact_preprocess=True):
        exact = cached_features(tiny_clip, store, loaders, stats, batch_size=1)
    assert (stats.encoded, stats.cached) == (10, 0)  # the exact run did not reuse the fast features
    direct = torch.cat([tiny_clip.encode_raw(tiny_clip.preprocess(Image.open(io.BytesIO(b)).convert("RGB"))[None]) for b in blobs])
    assert torch.equal(exact, direct)
    assert torch.nn.functional.cosine_similarity(fast, exact).min() > 0.999


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    make_image("cache", seed, size=70).save(buf, "PNG")
    return buf.getvalue()


def test_score_cli_fast_and_exact_agree(invoke, tmp_path):
    from conftest import rows_of

    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(12):
        _content(random.Random(100 + i), 120 + 20 * i, 90 + 10 * i).save(root / f"p{i:02d}.jpg", quality=90)
    (root / "trunc.jpg").write_bytes(truncated_jpeg_bytes(2))
    common = ["score", str(root), "--profile", "tiny", "--format", "csv", "-b", "5"]
    fast = invoke(*common)
    exact = invoke(*common, "--exact-preprocess")
    assert fast.returncode == exact.returncode == 0, fast.stderr + exact.stderr
    a, b = rows_of(fast.stdout, "csv"), rows_of(exact.stdout, "csv")
    assert [r["path"] for r in a] == [r["path"] for r in b] and len(a) == 12
    assert "skipped" in fast.stderr and "trunc.jpg" in fast.stderr and "1 unreadable" in fast.stderr
    sa, sb = np.array([float(r["score"]) for r in a]), np.array([float(r["score"]) for r in b])
    assert np.abs(sa - sb).max() < 1e-3
    assert not np.array_equal(sa, sb)  # the flag really switches the path


def test_decode_device_cuda_refused_without_cuda(invoke, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    p = tmp_path / "a.jpg"
    make_image("d", 0).save(p, "JPEG")
    r = invoke("score", str(p), "--profile", "tiny", "--decode-device", "cuda")
    assert r.returncode == 3 and "CUDA" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.cuda
def test_gpu_jpeg_decode_matches_cpu_path(tmp_path_factory, varied_files):
    """nvJPEG on CUDA: same files, same reports, features close to the CPU-decoded ones."""
    from synood_cli.models.clip import ClipSource, load_clip

    clip = load_clip(ClipSource("synood-tiny-clip", "tiny", 0), Store(tmp_path_factory.mktemp("g")), torch.device("cuda"), torch.float32)
    bad = tmp_path_factory.mktemp("bad") / "trunc.jpg"
    bad.write_bytes(truncated_jpeg_bytes(4))
    files = varied_files[:60] + [bad]
    cpu_feats, cpu_err = _features(clip, files, exact=False, workers=2)
    clip.decode_device = "cuda"
    gpu_feats, gpu_err = _features(clip, files, exact=False, workers=2)
    assert gpu_err == cpu_err and gpu_err[-1] is not None
    assert torch.nn.functional.cosine_similarity(gpu_feats, cpu_feats).min() > 0.999


def test_open_clip_imported_without_transformers_for_the_tiny_model(tmp_path):
    """Time to first result: transformers and timm stay unimported for a model that needs neither."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from synood_cli.models.clip import ClipSource, load_clip\n"
        "from synood_cli.store import Store\n"
        f"clip = load_clip(ClipSource('synood-tiny-clip', 'tiny', 0), Store(Path({str(tmp_path)!r})), torch.device('cpu'), torch.float32)\n"
        "print(sorted(m for m in ('transformers', 'timm') if m in sys.modules))\n"
        "import open_clip\n"
        "from synood_cli.models.clip import _open_clip\n"
        "oc = _open_clip(ClipSource('hf:org/repo'))  # a model that may need them: open_clip is repaired\n"
        "print(oc.hf_model.transformers is not None, oc.model.HFTextEncoder is oc.hf_model.HFTextEncoder)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "[]"
    assert lines[1] == "True True"


def test_batched_jpeg_decode_falls_back_per_file():
    """The GPU-decode bookkeeping, run with torchvision's CPU decoder (same API, no GPU here):
    one corrupt file fails the batched call; the others still decode, the bad one is reported."""
    from synood_cli.data.decoding import decode_rgb, jpeg_tensor
    from synood_cli.data.pixels import _gpu_decode

    blobs = []
    for i in range(3):
        buf = io.BytesIO()
        _content(random.Random(40 + i), 120, 90).save(buf, "JPEG", quality=90)
        blobs.append(buf.getvalue())
    bad = blobs[1][: len(blobs[1]) // 2]
    images = [jpeg_tensor(blobs[0]), jpeg_tensor(bad), jpeg_tensor(blobs[2]), None]
    errors = [None, None, None, "missing"]
    _gpu_decode(images, errors, torch.device("cpu"))
    assert errors[0] is None and errors[2] is None and errors[3] == "missing"
    assert errors[1] and "truncated or corrupt" in errors[1] and images[1] is None
    assert torch.equal(images[0], decode_rgb(blobs[0])) and torch.equal(images[2], decode_rgb(blobs[2]))
