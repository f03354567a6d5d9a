"""A small Python API for notebooks and services: load a model once, score many images, get numbers back.

    from synood_cli.api import Detector
    det = Detector(["cat", "dog"], profile="tiny")            # loads CLIP and mines negatives once
    det.score([Image.open("a.jpg"), Image.open("b.jpg")]).scores  # numpy array, higher = more ID
    det.score_folder("photos/").scores
    det.load_threshold("result.json")    # an evaluate --format json result, or a threshold.json; refused if made for other scores
    det.calibrate(id_images, tpr=0.95)   # or: the score keeping 95% of these ID images
    det.score(images).is_ood            # True where score < threshold (with the checkpoint's own by default)

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
    # score < threshold, when the Detector holds one; a NaN score counts as OOD here (nothing vouches for it)
    is_ood: np.ndarray | None = None
    threshold: object | None = None  # the thresholds.Threshold used: value, source (provenance), tpr

    def __len__(self) -> int:
        return len(self.scores)


class Detector:
    """A scoring model held in memory: CLIP, the ID class texts, the negatives (and the SynOOD checkpoint).

    Args:
        classnames: ID class names (a list), a class-names file, or a class-folder tree; default the
            checkpoint's classes, else ImageNet-1k's 1000 names.
        profile: tiny, default or paper (models and negative settings); default the checkpoint's, else default.
        method: neglabel, mcm, msp, energy or synood (default: synood with a checkpoint, else neglabel).
        checkpoint: a `synood finetune` checkpoint (store name, id or folder).
        home: the artifact store (default: SYNOOD_HOME, else ~/.cache/synood).
        Other keywords are the CLI flags of `synood score` with the same names.
    """

    def __init__(self, classnames: Sequence[str] | str | Path | None = None, *, profile: str | None = None, method: str | None = None,
                 checkpoint: str | None = None, model: str | None = None, pretrained: str | None = None, lexicon: str | None = None,
                 groups: int | None = None, neg_ratio: float | None = None, seed: int = 0, device: str = "auto",
                 precision: str = "auto", batch_size: int | None = None, home: str | Path | None = None):
        from synood_cli.runtime import normalize_precision, resolve_home, validate_device
        from synood_cli.scoring import ScoringConfig, prepare_scoring, score_identity

        if method is not None and "," in method:
            raise UsageError("a Detector scores with one method", hint="make one Detector per method")
        cfg = ScoringConfig(
            home=resolve_home(home), profile=profile, method=method or ("synood" if checkpoint else "neglabel"), model=model,
            pretrained=pretrained, lexicon=lexicon, groups=groups, neg_ratio=neg_ratio, seed=seed, batch_size=batch_size,
            num_workers=0, device=validate_device(device), precision=normalize_precision(precision), checkpoint=checkpoint,
        ).resolved()
        names = _class_names(classnames, cfg)
        if cfg.checkpoint and classnames is not None:
            from synood_cli.scoring import checkpoint_class_names

            trained = checkpoint_class_names(cfg)
            if names != trained:
                from synood_cli.scoring import refuse_other_classes

                refuse_other_classes("classnames", names, cfg.checkpoint, trained)
        self.setup = prepare_scoring(cfg, names)
        self.method = cfg.method
        self.identity = score_identity(self.setup, self.method)  # what a threshold must have been made for
        self._threshold = None

    @property
    def class_names(self) -> list[str]:
        return self.setup.class_names

    @property
    def preprocess(self):
        """CLIP's preprocessing: PIL image -> tensor [3, H, W], for callers that pass tensors."""
        return self.setup.clip.preprocess

    @property
    def threshold(self) -> float | None:
        """The threshold in use: one loaded or calibrated, else the checkpoint's at 95% ID TPR, else None."""
        t = self.threshold_info
        return t.value if t is not None else None

    @property
    def threshold_info(self):
        """The `thresholds.Threshold` in use, with its provenance (`source`) and TPR; None when there is none."""
        if self._threshold is not None:
            return self._threshold
        cfg = self.setup.config
        if not cfg.checkpoint or self.method != "synood":
            return None
        from synood_cli.thresholds import THRESHOLD_FILE, checkpoint_folder_and_id, from_checkpoint

        folder, _ = checkpoint_folder_and_id(cfg.home, cfg.checkpoint)
        if not (folder / THRESHOLD_FILE).is_file():
            return None
        t = from_checkpoint(folder, cfg.checkpoint, self.method, 0.95)
        t.check(self.identity)
        self._threshold = t
        return t

    def load_threshold(self, path, tpr: float = 0.95):
        """Use the threshold at `tpr` from an evaluate result (`--format json`) or a threshold.json (or a checkpoint folder).

        Refused (UsageError, a ValueError) when it was made for other scores than this Detector's:
        the message names every setting that differs.
        """
        from synood_cli.thresholds import from_file

        t = from_file(path, self.method, tpr)
        t.check(self.identity)
        self._threshold = t
        return t

    def calibrate(self, images, tpr: float = 0.95):
        """Use the score that keeps `tpr` of these ID images (PIL images, a tensor batch, paths or folders) as the threshold."""
        from synood_cli.metrics import threshold_at_tpr
        from synood_cli.thresholds import Threshold

        if not 0 < tpr <= 1:
            raise UsageError(f"tpr {tpr} is not a fraction in (0, 1]", hint="e.g. tpr=0.95 keeps 95% of the ID images")
        s = self.score(images).scores
        finite = s[np.isfinite(s)]
        if len(finite) == 0:
            raise UsageError("calibrate() needs at least one ID image with a finite score")
        value = threshold_at_tpr(finite, tpr)
        self._threshold = Threshold(value, f"calibrate() on {len(finite)} ID images ({100 * tpr:g}% kept)", self.method, tpr, dict(self.identity), "calibrate()")
        return self._threshold

    def score(self, images) -> Scores:
        """Score PIL images, a tensor batch [N, 3, H, W] (or one [3, H, W]) made by `preprocess`, or image paths."""
        import torch

        if isinstance(images, (str, Path)):
            return self.score_folder(images)
        if isinstance(images, torch.Tensor):
            batch = images.unsqueeze(0) if images.dim() == 3 else images
            self._check_tensor(batch)
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
        """True where an image scores below `threshold` (default: the threshold in use, see `threshold_info`)."""
        t = threshold if threshold is not None else self.threshold
        if t is None:
            raise UsageError("no threshold: pass threshold=VALUE, or call load_threshold(FILE) or calibrate(ID_IMAGES) first",
                             hint="get one from `synood evaluate ... --format json` or a finetune checkpoint")
        s = self.score(images).scores
        return ~(s >= t)  # NaN counts as OOD

    def expected_tensor(self) -> dict:
        """What `preprocess` produces: shape [3, S, S], dtype, per-channel mean/std of the normalisation."""
        from torchvision import transforms as T

        size, mean, std = None, None, None
        for step in getattr(self.preprocess, "transforms", []):
            if isinstance(step, T.CenterCrop):
                size = tuple(int(x) for x in step.size)
            elif isinstance(step, T.Resize) and isinstance(step.size, (list, tuple)) and len(step.size) == 2 and size is None:
                size = tuple(int(x) for x in step.size)
            elif isinstance(step, T.Normalize):
                mean, std = tuple(float(x) for x in step.mean), tuple(float(x) for x in step.std)
        return {"size": size, "mean": mean, "std": std}

    def _check_tensor(self, batch) -> None:
        """A tensor must be what `Detector.preprocess` makes, else ValueError naming that form (never a torch error, never scored)."""
        import torch

        form = self.expected_tensor()
        size = form["size"]
        want = f"[N, 3, {size[0]}, {size[1]}]" if size else "[N, 3, H, W]"
        how = f"float32 {want} (or one [3, H, W]), CLIP-normalised pixels (x / 255 - mean) / std with mean {form['mean']} and std {form['std']}"
        hint = "make each image with Detector.preprocess(pil_image) and stack them"
        if batch.dim() != 4 or batch.shape[1] != 3 or (size and tuple(batch.shape[2:]) != size):
            raise UsageError(f"a tensor batch must be {how}; got shape {tuple(batch.shape)}", hint=hint)
        if batch.dtype != torch.float32:
            raise UsageError(f"a tensor batch must be {how}; got dtype {str(batch.dtype).replace('torch.', '')}", hint=hint)
        if batch.numel() == 0 or form["mean"] is None:
            return
        x = batch.detach().cpu().double()
        if not torch.isfinite(x).all():
            raise UsageError(f"a tensor batch must be {how}; it holds NaN or inf values", hint=hint)
        mean = torch.tensor(form["mean"], dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor(form["std"], dtype=torch.float64).view(1, 3, 1, 1)
        pixels = (x * std + mean) * 255  # back to the 0..255 values preprocess started from
        lo, hi = float(pixels.min()), float(pixels.max())
        if lo < -0.5 or hi > 255.5:
            raise UsageError(f"a tensor batch must be {how}; its values map to pixels {lo:.1f}..{hi:.1f}, outside 0..255", hint=hint)
        # preprocess normalises whole 8-bit values: other values mean another (or no) normalisation
        off = (pixels - pixels.round()).abs().median().item()
        if off > 0.05:
            raise UsageError(f"a tensor batch must be {how}; its values are not normalised 8-bit pixels (unnormalised [0, 1] values, or another mean/std?)", hint=hint)

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
        t = self._threshold
        if t is None and self.setup.config.checkpoint:
            try:
                t = self.threshold_info
            except UsageError:
                t = None  # a stored threshold that does not fit: no is_ood (asking `threshold` says why)
        is_ood = ~(scores >= t.value) if t is not None else None  # NaN counts as OOD
        return Scores(scores, preds, [self.class_names[i] for i in preds.tolist()], paths, failures or [], is_ood, t)


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
