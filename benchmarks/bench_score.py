"""Scoring throughput: the CLIP image encoder alone, and a JPEG folder end to end to NegLabel scores.

Baseline (measured in the same run): fp32 open_clip, torchvision ImageFolder + DataLoader, and
the NegLabel score computed on the CPU in numpy with a Python loop over groups, as a research
script does it. Ours: `synood_cli.scoring` (precision autocast, batched loader, one fused
matmul + logsumexp over all groups on the device).

    python benchmarks/bench_score.py            # ViT-B-16 architecture (random weights), 10,000 negatives
    python benchmarks/bench_score.py --tiny     # the tiny CLIP, seconds on a CPU
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import device_info, emit, make_jpeg_folder, sync, timed


def load_model(tiny: bool, device, home: Path):
    """Architecture-faithful random weights: throughput does not depend on weight values."""
    import open_clip

    from synood_cli.models.clip import ClipModel, ClipSource, load_clip
    from synood_cli.store import Store

    if tiny:
        return load_clip(ClipSource("synood-tiny-clip", "tiny", 0), Store(home), device, torch.float32)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-16", pretrained=None, device=device)
    model.eval().requires_grad_(False)
    tok = open_clip.get_tokenizer("ViT-B-16")
    return ClipModel(model, preprocess, tok, ClipSource("ViT-B-16", None), "ViT-B-16@random", device, torch.float32)


def neglabel_numpy(f: np.ndarray, id_t: np.ndarray, neg_t: np.ndarray, groups: int) -> np.ndarray:
    """The research-code way: per-group loop, numpy on the CPU."""
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(neg_t))
    m = len(neg_t) // groups
    pos = np.exp(f @ id_t.T / 0.01)
    out = np.zeros(len(f))
    for g in range(groups):
        neg = np.exp(f @ neg_t[perm[g * m : (g + 1) * m]].T / 0.01)
        out += pos.sum(1) / (pos.sum(1) + neg.sum(1))
    return out / groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--negatives", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "synood-bench-jpegs")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from synood_cli.runtime import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    n_images = args.images or (200 if args.tiny else (5000 if cuda else 400))
    n_neg = args.negatives or (1000 if args.tiny else 10000)
    bs = args.batch_size or (64 if args.tiny else (512 if cuda else 32))
    workers = args.workers if args.workers is not None else (8 if cuda else 0)
    home = Path(tempfile.mkdtemp(prefix="synood-bench-home-"))
    clip = load_model(args.tiny, device, home)
    dim = clip.embed_dim
    size = clip.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    g = torch.Generator().manual_seed(0)
    id_t = torch.nn.functional.normalize(torch.randn(1000, dim, generator=g), dim=1)
    neg_t = torch.nn.functional.normalize(torch.randn(n_neg, dim, generator=g), dim=1)

    # 1. encoder alone: fp32 baseline vs ours (autocast in the resolved precision, channels_last)
    x = torch.randn(bs, 3, size, size, device=device)
    base_s = timed(lambda: clip.model.encode_image(x), device, repeat=3)
    ours_dtype = resolve_dtype("auto", device)
    clip.dtype = ours_dtype
    if cuda:
        clip.model.to(memory_format=torch.channels_last)
    ours_s = timed(lambda: clip.encode_images(x), device, repeat=3)
    encoder = {"baseline_img_s": bs / base_s, "ours_img_s": bs / ours_s, "ratio": base_s / ours_s, "dtype": str(ours_dtype)}

    # 2. end to end from JPEGs
    folder = make_jpeg_folder(args.data, n_images)
    import torchvision

    clip.dtype = torch.float32
    ds = torchvision.datasets.ImageFolder(str(folder), transform=clip.preprocess)
    dl = torch.utils.data.DataLoader(ds, batch_size=bs, num_workers=workers)
    sync(device)
    t0 = time.perf_counter()
    base_scores = []
    with torch.no_grad():
        for images, _ in dl:
            f = torch.nn.functional.normalize(clip.model.encode_image(images.to(device)).float(), dim=1)
            base_scores.append(neglabel_numpy(f.cpu().numpy().astype(np.float64), id_t.numpy().astype(np.float64), neg_t.numpy().astype(np.float64), 100))
    base_e2e = time.perf_counter() - t0
    base_scores = np.concatenate(base_scores)

    from synood_cli.data.folders import scan_folder
    from synood_cli.scores import ScoreInputs, Scorer
    from synood_cli.scoring import ScoreSetup, ScoringConfig, iter_scores

    clip.dtype = ours_dtype
    cfg = ScoringConfig(home=home, batch_size=bs, num_workers=workers)
    scorer = Scorer("neglabel", ScoreInputs(id_text=id_t.to(device), neg_text=neg_t.to(device), groups=100, seed=0))
    setup = ScoreSetup(cfg, clip, {"neglabel": scorer}, [str(i) for i in range(1000)], None)
    files = scan_folder(folder).files
    sync(device)
    t0 = time.perf_counter()
    ours_scores = np.concatenate([b.scores["neglabel"] for b in iter_scores(setup, files)])
    sync(device)
    ours_e2e = time.perf_counter() - t0

    # 3. each negative-label method's cost: end to end from the same JPEGs, and the score math alone on a
    # CLIP-like stream (each feature at cosine ~0.3 to one ID or negative text, ~0 to the others), so that
    # AdaNeg's memory fills as it would on real data; methods interleaved, best of 5 rounds (a shared CPU)
    per_method = {}
    n_feats = max(n_images, 2048)
    anchors = torch.cat([id_t, neg_t])[torch.randint(0, len(id_t) + len(neg_t), (n_feats,), generator=g)]
    noise = torch.nn.functional.normalize(torch.randn(n_feats, dim, generator=g), dim=1)
    feats = torch.nn.functional.normalize(0.3 * anchors + 0.95 * noise, dim=1).to(device)
    methods = ("neglabel", "csp", "adaneg")  # csp is NegLabel's math over another pool: its cost is mining, once
    for m in methods:
        s_m = Scorer(m, ScoreInputs(id_text=id_t.to(device), neg_text=neg_t.to(device), groups=100, seed=0))
        setup_m = ScoreSetup(cfg, clip, {m: s_m}, [str(i) for i in range(1000)], None)
        sync(device)
        t0 = time.perf_counter()
        for _ in iter_scores(setup_m, files):
            pass
        sync(device)
        per_method[m] = {"end_to_end_img_s": round(n_images / (time.perf_counter() - t0), 2)}
    best = {m: float("inf") for m in methods}
    for _ in range(5):
        for m in methods:
            s_m = Scorer(m, ScoreInputs(id_text=id_t.to(device), neg_text=neg_t.to(device), groups=100, seed=0))  # a fresh memory
            sync(device)
            t0 = time.perf_counter()
            for i in range(0, len(feats), bs):
                s_m(feats[i : i + bs])
            sync(device)
            best[m] = min(best[m], time.perf_counter() - t0)
    for m in methods:
        per_method[m]["score_only_img_s"] = round(len(feats) / best[m], 1)
        per_method[m]["end_to_end_vs_neglabel"] = round(per_method[m]["end_to_end_img_s"] / per_method["neglabel"]["end_to_end_img_s"], 3)
        per_method[m]["score_only_vs_neglabel"] = round(best["neglabel"] / best[m], 3)

    from scipy.stats import spearmanr

    emit({
        "benchmark": "score",
        **device_info(device),
        "model": "synood-tiny-clip" if args.tiny else "ViT-B-16 (random weights)",
        "images": n_images,
        "negatives": n_neg,
        "batch_size": bs,
        "workers": workers,
        "encoder": {k: round(v, 2) if isinstance(v, float) else v for k, v in encoder.items()},
        "end_to_end": {
            "baseline_img_s": round(n_images / base_e2e, 2),
            "ours_img_s": round(n_images / ours_e2e, 2),
            "ratio": round(base_e2e / ours_e2e, 2),
        },
        # grouping permutations differ (numpy vs torch), so compare ranks, not values
        "agreement": {"spearman": round(float(spearmanr(base_scores, ours_scores).statistic), 5)},
        "methods": per_method,
    })


if __name__ == "__main__":
    main()
