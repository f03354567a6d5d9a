"""A small Python API for notebooks and services: load a model once, score many images, get numbers back.

    from synood_cli.api import Detector
    det = Detector(["cat", "dog"], profile="tiny")            # loads CLIP and mines negatives once
    det.score([Image.open("a.jpg"), Image.open("b.jpg")]).scores  # numpy array, higher = more ID
    det.score_folder("photos/").scores
    det.is_ood(images, threshold=0.4)                           # or the checkpoint's stored threshold

Errors are `synood_cli.errors` classes that are also `ValueError` (bad input) or `OSError`
(a resource missing), so ordinary `except` clauses work. Nothing is printed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from synood_cli.errors import UsageError

__all__ = ["Detector", "Scores"]


@dataclass
class Scores:
    """Per-image results, in input order (unreadable files are left out and listed in `failures`)."""

    scores: np.ndarray  # float64, higher = more in-distribution
    preds: np.ndarray  # predicted ID class index
    pred_names: list[str]
    paths: list[str] | None = None  # for files and folders
    failures: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scores)


class Detector:
    """A scoring model held in memory: CLIP, the ID class texts, the negatives (and the SynOOD checkpoint).

    Args:
        classnames: ID class names (a list), a class-names file, or a class-folder tree; default the
            checkpoint's classes, else ImageNet-1k's 1000 names.
        profile: tiny, default or paper (models and negative settings).
        method: neglabel, mcm, msp, energy or synood (default: synood with a checkpoint, else neglabel).
        checkpoint: a `synood finetune` checkpoint (store name, id or folder).
        home: the artifact store (default: SYNOOD_HOME, else ~/.cache/synood).
        Other keywords are the CLI flags of `synood score` with the same names.
    """

    def __init__(self, classnames: Sequence[str] | str | Path | None = None, *, profile: str = "default", method: str | None = None,
                 checkpoint: str | None = None, model: str | None = None, pretrained: str | None = None, lexicon: str | None = None,
                 groups: int | None = None, neg_ratio: float | None = None, seed: int = 0, device: str = "auto",
                 precision: str = "auto", batch_size: int | None = None, home: str | Path | None = None):
        from synood_cli.runtime import normalize_precision, resolve_home, validate_device
        from synood_cli.scoring import ScoringConfig, prepare_scoring, scoring_identity

        if method is not None and "," in method:
            raise UsageError("a Detector scores with one method", hint="make one Detector per method")
        cfg = ScoringConfig(
            home=resolve_home(home), profile=profile, method=method or ("synood" if checkpoint else "neglabel"), model=model,
            pretrained=pretrained, lexicon=lexicon, groups=groups, neg_ratio=neg_ratio, seed=seed, batch_size=batch_size,
            num_workers=0, device=validate_device(device), precision=normalize_precision(precision), checkpoint=checkpoint,
        ).resolved()
        self.identity = scoring_identity(cfg)
        self.setup = prepare_scoring(cfg, _class_names(classnames, cfg))
        self.method = cfg.method

    @property
    def class_names(self) -> list[str]:
        return self.setup.class_names

    @property
    def preprocess(self):
        """CLIP's preprocessing: PIL image -> tensor [3, H, W], for callers that pass tensors."""
        return self.setup.clip.preprocess

    @property
    def threshold(self) -> float | None:
        """The checkpoint's threshold at 95% ID TPR (stored by `synood finetune`), or None."""
        cfg = self.setup.config
        if not cfg.checkpoint or self.method != "synood":
            return None
        from synood_cli.thresholds import THRESHOLD_FILE, checkpoint_folder_and_id, from_checkpoint

        folder, _ = checkpoint_folder_and_id(cfg.home, cfg.checkpoint)
        if not (folder / THRESHOLD_FILE).is_file():
            return None
        return from_checkpoint(folder, cfg.checkpoint, self.method, self.identity, 0.95).value

    def score(self, images) -> Scores:
        """Score PIL images, a tensor batch [N, 3, H, W] (or one [3, H, W]) made by `preprocess`, or image paths."""
        import torch

        if isinstance(images, (str, Path)):
            return self.score_folder(images)
        if isinstance(images, torch.Tensor):
            batch = images.unsqueeze(0) if images.dim() == 3 else images
            if batch.dim() != 4 or batch.shape[1] != 3:
                raise UsageError(f"a tensor batch must be [N, 3, H, W] (or [3, H, W]), got {tuple(images.shape)}", hint="make it with Detector.preprocess(pil_image)")
            return self._score_tensor(batch)
        items = [images] if hasattr(images, "convert") else list(images)
        if items and all(isinstance(x, (str, Path)) for x in items):
            return self.score_folder(*items)
        if not all(hasattr(x, "convert") for x in items):
            raise UsageError("score() takes PIL images, a tensor from Detector.preprocess, or image paths")
        if not items:
            return self._result(np.empty(0), np.empty(0, dtype=np.int64))
        return self._score_tensor(torch.stack([self.preprocess(x.convert("RGB")) for x in items]))

    def score_folder(self, *paths) -> Scores:
        """Score folders, image files, image lists or datasets (whatever `synood score` takes); unreadable files are skipped."""
        from synood_cli.data.sources import InputOptions, open_inputs
        from synood_cli.scoring import iter_scores

        sets, skipped = open_inputs([str(p) for p in paths], InputOptions())
        out_paths, scores, preds, failures = [], [], [], [(str(p), r) for p, r in skipped]
        for s in sets:
            failures += [(str(p), r) for p, r in s.skipped]
            for batch in iter_scores(self.setup, s.files, reader=s.reader):
                out_paths += [str(p) for p in batch.paths]
                scores.append(batch.scores[self.method])
                preds.append(batch.preds)
                failures += [(str(p), r) for p, r in batch.failures]
        s_arr = np.concatenate(scores) if scores else np.empty(0)
        p_arr = np.concatenate(preds).astype(np.int64) if preds else np.empty(0, dtype=np.int64)
        return self._result(s_arr, p_arr, out_paths, failures)

    def is_ood(self, images, threshold: float | None = None) -> np.ndarray:
        """True where an image scores below `threshold` (default: the checkpoint's 95%-TPR threshold)."""
        t = threshold if threshold is not None else self.threshold
        if t is None:
            raise UsageError("no threshold: pass threshold=VALUE", hint="get one from `synood evaluate ... --format json` (thresholds) or a finetune checkpoint")
        return self.score(images).scores < t

    def _score_tensor(self, batch) -> Scores:
        from synood_cli.scoring import score_pixels

        bs = self.setup.config.batch_size
        scores, preds = [], []
        for start in range(0, len(batch), bs):
            s, p = score_pixels(self.setup, batch[start : start + bs])  # the one method this Detector holds
            scores.append(s[self.method])
            preds.append(p)
        return self._result(np.concatenate(scores), np.concatenate(preds).astype(np.int64))

    def _result(self, scores, preds, paths=None, failures=None) -> Scores:
        return Scores(scores, preds, [self.class_names[i] for i in preds.tolist()], paths, failures or [])


def _class_names(classnames, cfg) -> list[str]:
    from synood_cli.data.folders import imagenet_classnames, read_classnames, scan_folder

    if classnames is None:
        if cfg.checkpoint:
            from synood_cli.scoring import checkpoint_class_names

            return checkpoint_class_names(cfg)
        return imagenet_classnames()
    if isinstance(classnames, (str, Path)):
        p = Path(classnames).expanduser()
        if p.is_dir():
            names = scan_folder(p).class_names
            if not names:
                raise UsageError(f"{p} has no class subfolders", hint="pass a list of class names or a names file")
            return names
        return read_classnames(p)
    names = [str(c) for c in classnames]
    if not names:
        raise UsageError("no ID class names given")
    return names
