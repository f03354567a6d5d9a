"""Frozen CLIP image features, computed once and cached in the store (docs/method.md, "Fine-tune").

CLIP preprocessing has no randomness, so an image's feature under a model never changes: one
safetensors file per (model fingerprint x input group) holds `features[N, d]` and the sha256 of
each image's bytes. A second `finetune` with other hyperparameters encodes nothing; the research
code re-encoded every image in every epoch. The cached feature is the raw `encode_image` output g,
not normalised: the adapter takes g (its normalised f = g / |g| is one division away).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from synood_cli.reporting import NullReporter, Reporter
from synood_cli.store import CacheMismatch, Store, check_rows

# 2: the raw (unnormalised) feature; schema-1 caches held f = g / |g| and are never read as g
SCHEMA = 2


@dataclass
class EncodeStats:
    """How many images were encoded vs found in the cache (reported, and checked by the tests)."""

    encoded: int = 0
    cached: int = 0


def cached_features(
    clip,
    store: Store,
    load_bytes: list[Callable[[], bytes]],
    stats: EncodeStats,
    reporter: Reporter = NullReporter(),
    batch_size: int = 64,
    description: str = "encoding",
    advance: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Raw CLIP features g [N, d] (fp32, not normalised) for N images given as byte loaders; cached by content.

    `advance` (a task's advance, one bar over many calls) counts encoded and cached images alike;
    without it the call shows a bar of its own.
    """
    from safetensors.torch import load_file, save_file

    blobs = [f() for f in load_bytes]
    keys = [hashlib.sha256(b).hexdigest() for b in blobs]
    config = {"schema": SCHEMA, "model": clip.fingerprint, "keys": hashlib.sha256("".join(keys).encode()).hexdigest(), "count": len(keys)}
    if clip.preprocess_id:  # features from the batched torch preprocessing differ slightly from the PIL path's
        config["preprocess"] = clip.preprocess_id
    built = []

    def build(folder: Path) -> dict:
        from synood_cli.data.pixels import encode_blobs

        built.append(True)
        if advance is not None:
            feats = encode_blobs(clip, blobs, batch_size, advance, description)
        else:
            with reporter.task(description, total=len(blobs)) as task:
                feats = encode_blobs(clip, blobs, batch_size, task.advance, description)
        key_tensor = torch.tensor([list(bytes.fromhex(k)) for k in keys], dtype=torch.uint8)
        save_file({"features": feats, "keys": key_tensor}, str(folder / "features.safetensors"))
        stats.encoded += len(blobs)
        return {"images": len(blobs), "dim": int(feats.shape[1])}

    def load(a) -> torch.Tensor:
        """Rows = images, width = the model's, and the image hashes it was built for: anything else is rebuilt."""
        what = f"{a.ref}/features.safetensors"
        data = load_file(str(a.file("features.safetensors")))
        feats = check_rows(data["features"], len(keys), clip.embed_dim, what)
        got = check_rows(data["keys"], len(keys), 32, what + " keys")
        if [bytes(row).hex() for row in got.tolist()] != keys:
            raise CacheMismatch(f"{what} holds the features of other images")
        return feats

    # a damaged or cut cache file is rebuilt with a warning (store.build_and_load), never an internal error
    _, feats = store.build_and_load("features", config, build, load)
    if not built:
        stats.cached += len(keys)
        if advance is not None:
            advance(len(keys))
    return feats


def file_loader(path: str) -> Callable[[], bytes]:
    """A loader for an image reference: a file path or a table row (`SOURCE#ROW`)."""
    from synood_cli.data.refs import read_image_bytes

    return lambda: read_image_bytes(path)
