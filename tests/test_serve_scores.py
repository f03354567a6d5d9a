"""The service's forward is `synood score`'s, to the bit, on a convolutional encoder too (in-process, no server).

The world profile's CLIP is a ResNet: its convolutions round differently on an NCHW batch than on
the channels-last batch `synood score` encodes, which moved served scores by up to 1e-5 (relative)
from score's while the tiny ViT agreed to 1e-7.
"""

from __future__ import annotations

import io

import numpy as np

from conftest import make_image


def test_served_scores_are_score_pixels_on_the_same_batch(tmp_path):
    from synood_cli.api import Detector
    from synood_cli.data.pixels import iterate_pixels
    from synood_cli.scoring import score_pixels
    from synood_cli.serve.service import Limits, Loaded, ScoringService

    det = Detector(["star", "heart", "circle", "bell", "cup"], profile="world", home=tmp_path)
    service = ScoringService(lambda: Loaded(det.setup, det.method, det.identity, None), Limits())
    service.loaded = service._load()
    blobs = []
    for i in range(5):
        buf = io.BytesIO()
        make_image("serve-world", i, 72).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    rows, errors = service.decode(blobs)
    assert errors == [None] * 5
    served = np.array([score for score, _ in service.forward(rows)])

    paths = []
    for i, b in enumerate(blobs):
        (tmp_path / f"{i}.png").write_bytes(b)
        paths.append(tmp_path / f"{i}.png")
    (pixels, _, _), = list(iterate_pixels(det.setup.clip, paths, 5, 0))
    expected = score_pixels(det.setup, pixels)[0][det.method]
    np.testing.assert_array_equal(served, expected)
