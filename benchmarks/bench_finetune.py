"""Fine-tuning wall time for the paper schedule (adapter 3 epochs + negatives 5 epochs).

Baseline (same run): the research code's way, re-encoding every image with CLIP in every epoch.
Ours: `synood_cli.training.train` on features encoded once (the cache makes a second run free).

    python benchmarks/bench_finetune.py            # ViT-B-16 architecture (random weights), N = 512
    python benchmarks/bench_finetune.py --tiny     # the tiny CLIP, seconds on a CPU
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench_score import load_model
from common import device_info, emit, sync


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("-n", "--images", type=int, default=None, help="N synthesized + N ID images")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from synood_cli.runtime import resolve_device, resolve_dtype
    from synood_cli.training import LOGIT_SCALE, Adapter, TrainConfig, train

    device = resolve_device(args.device)
    n = args.images or (128 if args.tiny else (4096 if device.type == "cuda" else 256))
    clip = load_model(args.tiny, device, Path(tempfile.mkdtemp(prefix="synood-bench-home-")))
    size = clip.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2 * n, 3, size, size, generator=g)  # preprocessed pixels: decoding is not what is compared
    k, m = 100, 64
    labels = torch.cat([torch.randint(0, k, (n,), generator=g), k + torch.randint(0, m, (n,), generator=g)])
    dim = clip.embed_dim
    id_text = F.normalize(torch.randn(k, dim, generator=g), dim=1)
    neg = F.normalize(torch.randn(m, dim, generator=g), dim=1)
    cfg = TrainConfig(val_fraction=0.0)
    bs = cfg.batch_size

    def encode(x):
        return F.normalize(clip.model.encode_image(x.to(device)).float(), dim=1)

    # baseline: fp32 CLIP forward for every batch of every epoch (adapter 3 + negatives 5)
    adapter = Adapter(dim).to(device)
    negatives = torch.nn.Parameter(neg.clone().to(device))
    adam = torch.optim.Adam(adapter.parameters(), lr=cfg.adapter_lr)
    sgd = torch.optim.SGD([negatives], lr=cfg.negatives_lr, momentum=0.9)
    texts = torch.cat([id_text, neg]).to(device)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(cfg.adapter_epochs):
        for s in range(0, 2 * n, bs):
            with torch.no_grad():
                f = encode(images[s : s + bs])
            loss = F.cross_entropy(LOGIT_SCALE * adapter(f) @ texts.T, labels[s : s + bs].to(device))
            adam.zero_grad()
            loss.backward()
            adam.step()
    for _ in range(cfg.negatives_epochs):
        for s in range(n, 2 * n, bs):
            with torch.no_grad():
                f = encode(images[s : s + bs])
            logits = LOGIT_SCALE * f @ torch.cat([id_text.to(device), F.normalize(negatives, dim=1)]).T
            loss = F.cross_entropy(logits, labels[s : s + bs].to(device))
            sgd.zero_grad()
            loss.backward()
            sgd.step()
    sync(device)
    baseline = time.perf_counter() - t0

    # ours: encode once (in the resolved precision), then train on the cached features
    clip.dtype = resolve_dtype("auto", device)
    sync(device)
    t0 = time.perf_counter()
    feats = torch.cat([clip.encode_images(images[s : s + 256]).cpu() for s in range(0, 2 * n, 256)])
    encode_s = time.perf_counter() - t0
    train(feats[:n], labels[:n], feats[n:], labels[n:] - k, id_text, neg, cfg)
    ours = time.perf_counter() - t0
    emit({
        "benchmark": "finetune",
        **device_info(device),
        "model": "synood-tiny-clip" if args.tiny else "ViT-B-16 (random weights)",
        "images": 2 * n,
        "schedule": "adapter 3 epochs + negatives 5 epochs, batch 128",
        "baseline_s": round(baseline, 3),
        "ours_s": round(ours, 3),
        "ours_encode_s": round(encode_s, 3),
        "ours_rerun_s": round(ours - encode_s, 3),
        "ratio": round(baseline / ours, 2),
    })


if __name__ == "__main__":
    main()
