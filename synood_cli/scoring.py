"""Score image folders and evaluate ID against OOD sets: the library behind `score` and `evaluate`.

The CLI is a thin layer over `prepare_scoring`, `iter_scores`, `score_image_set` and `evaluate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from synood_cli.data.folders import ImageSet
from synood_cli.errors import UsageError
from synood_cli.metrics import accuracy, average_metrics, ood_metrics
from synood_cli.models.clip import ClipModel, clip_source, load_clip
from synood_cli.negatives import ID_TEMPLATE, Negatives, mine_negatives, text_features
from synood_cli.profiles import load_profile
from synood_cli.reporting import NullReporter, Reporter
from synood_cli.runtime import resolve_device, resolve_dtype
from synood_cli.scores import SCORES, ScoreInputs, Scorer
from synood_cli.store import Store


@dataclass
class ScoringConfig:
    """Every knob of zero-shot scoring; None means "take it from the profile"."""

    home: Path
    profile: str = "default"
    method: str = "neglabel"
    model: str | None = None
    pretrained: str | None = None
    lexicon: str | None = None
    groups: int | None = None
    neg_ratio: float | None = None
    percentile: float | None = None
    tau: float = 0.01
    temperature: float = 1.0
    seed: int = 0
    batch_size: int | None = None
    num_workers: int = 0
    device: str = "auto"
    precision: str = "auto"

    def resolved(self) -> "ScoringConfig":
        """A copy with profile defaults filled in and cheap validation done (exit 2 before work)."""
        prof = load_profile(self.profile)
        SCORES.get(self.method)
        neg = prof.get("neglabel", {})
        out = ScoringConfig(**{**self.__dict__})
        out.lexicon = self.lexicon or prof.get("lexicon", "wordnet")
        out.groups = self.groups if self.groups is not None else int(neg.get("groups", 100))
        out.neg_ratio = self.neg_ratio if self.neg_ratio is not None else float(neg.get("neg_ratio", 0.15))
        out.percentile = self.percentile if self.percentile is not None else float(neg.get("percentile", 0.95))
        out.batch_size = self.batch_size or int(prof.get("batch_size", 64))
        if out.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {out.batch_size}")
        if out.num_workers < 0:
            raise UsageError(f"--num-workers must be 0 or more, got {out.num_workers}")
        if self.tau <= 0 or self.temperature <= 0:
            raise UsageError("--tau and --temperature must be positive")
        from synood_cli.models.clip import validate_clip_source

        validate_clip_source(clip_source(prof, out.model, out.pretrained))
        resolve_device(out.device)  # CUDA asked for but absent: exit 3 before any data is read
        return out


@dataclass
class ScoreSetup:
    """A loaded model and a score method bound to one ID class list."""

    config: ScoringConfig
    clip: ClipModel
    scorer: Scorer
    class_names: list[str]
    negatives: Negatives | None


def prepare_scoring(config: ScoringConfig, class_names: list[str], reporter: Reporter = NullReporter()) -> ScoreSetup:
    """Load CLIP, embed the ID class names and (for NegLabel) mine or reuse the negatives."""
    cfg = config.resolved()
    prof = load_profile(cfg.profile)
    source = clip_source(prof, cfg.model, cfg.pretrained)
    method = SCORES.get(cfg.method)
    lexicon = None
    if method.needs_negatives:
        from synood_cli.lexicons import load_lexicon

        lexicon = load_lexicon(cfg.lexicon)  # a missing WordNet is a usage error: before the model loads
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.precision, device)
    store = Store(cfg.home)
    reporter.info(f"loading CLIP {source.describe()} on {device}")
    clip = load_clip(source, store, device, dtype)
    id_feats = text_features(clip, store, list(class_names), ID_TEMPLATE, reporter)
    negatives = None
    if method.needs_negatives:
        negatives = mine_negatives(clip, class_names, lexicon, store, cfg.neg_ratio, cfg.percentile, reporter=reporter)
        reporter.info(f"{len(negatives.labels)} negative labels from lexicon {lexicon.name} ({negatives.artifact.id})")
    inputs = ScoreInputs(
        id_text=id_feats,
        neg_text=negatives.features if negatives else None,
        tau=cfg.tau,
        groups=cfg.groups,
        seed=cfg.seed,
        temperature=cfg.temperature,
    )
    return ScoreSetup(cfg, clip, Scorer(cfg.method, inputs), list(class_names), negatives)


@dataclass
class ScoredBatch:
    paths: list[Path]
    indices: np.ndarray
    scores: np.ndarray
    preds: np.ndarray
    failures: list[tuple[Path, str]]


def iter_scores(
    setup: ScoreSetup, files: list[Path], reporter: Reporter = NullReporter(), description: str = "scoring"
) -> Iterator[ScoredBatch]:
    """Score files batch by batch, in order; unreadable files come back in `failures`, never raised."""
    from synood_cli.data.loading import iterate_batches

    cfg = setup.config
    pin = setup.clip.device.type == "cuda"
    with reporter.task(description, total=len(files)) as task:
        for images, indices, errors in iterate_batches(
            files, setup.clip.preprocess, cfg.batch_size, num_workers=cfg.num_workers, pin_memory=pin
        ):
            idx = indices.numpy()
            bad = [i for i, e in enumerate(errors) if e]
            good = [i for i, e in enumerate(errors) if not e]
            failures = [(files[idx[i]], errors[i]) for i in bad]
            for path, err in failures:
                reporter.warn(f"skipped {path}: {err}")
            if good:
                feats = setup.clip.encode_images(images[good] if bad else images)
                scores, preds = setup.scorer(feats)
                scores_np, preds_np = scores.cpu().numpy().astype(np.float64), preds.cpu().numpy()
            else:
                scores_np, preds_np = np.empty(0), np.empty(0, dtype=np.int64)
            task.advance(len(idx))
            yield ScoredBatch([files[idx[i]] for i in good], idx[good], scores_np, preds_np, failures)


@dataclass
class ImageScores:
    """Per-image results for one set; `indices` point into the set's file list."""

    name: str
    paths: list[Path]
    indices: np.ndarray
    scores: np.ndarray
    preds: np.ndarray
    labels: np.ndarray | None
    failures: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def accuracy(self) -> float | None:
        if self.labels is None or len(self.scores) == 0:
            return None
        return accuracy(self.preds, self.labels)


def score_image_set(setup: ScoreSetup, image_set: ImageSet, reporter: Reporter = NullReporter()) -> ImageScores:
    paths, idx, scores, preds, failures = [], [], [], [], []
    for batch in iter_scores(setup, image_set.files, reporter, description=f"scoring {image_set.name}"):
        paths += batch.paths
        idx.append(batch.indices)
        scores.append(batch.scores)
        preds.append(batch.preds)
        failures += batch.failures
    indices = np.concatenate(idx) if idx else np.empty(0, dtype=np.int64)
    labels = np.asarray(image_set.labels)[indices] if image_set.labels is not None else None
    if not paths:
        raise UsageError(
            f"no readable image in {image_set.name} ({image_set.root}): {len(failures)} failed to decode",
            hint="check the files; corrupt images are skipped, but a set needs at least one good image",
        )
    return ImageScores(
        image_set.name,
        paths,
        indices,
        np.concatenate(scores),
        np.concatenate(preds),
        labels,
        failures,
        list(image_set.skipped),
    )


@dataclass
class Evaluation:
    """Metrics per OOD set (fractions), their plain mean, and the per-image scores behind them."""

    method: str
    id: ImageScores
    ood: dict[str, ImageScores]
    metrics: dict[str, dict[str, float]]
    average: dict[str, float]

    @property
    def id_accuracy(self) -> float | None:
        return self.id.accuracy

    def as_dict(self) -> dict:
        return {
            "method": self.method,
            "id": {"name": self.id.name, "images": len(self.id.scores), "failed": len(self.id.failures), "accuracy": self.id_accuracy},
            "ood": {k: {**v, "failed": len(self.ood[k].failures)} for k, v in self.metrics.items()},
            "average": self.average,
        }


def metrics_from_scores(id_scores: np.ndarray, ood_scores: dict[str, np.ndarray]) -> tuple[dict, dict]:
    per_set = {name: ood_metrics(id_scores, s) for name, s in ood_scores.items()}
    return per_set, average_metrics(per_set)


def evaluate(
    setup: ScoreSetup, id_set: ImageSet, ood_sets: list[ImageSet], reporter: Reporter = NullReporter()
) -> Evaluation:
    """Score the ID set and every OOD set, then compute the metrics of DESIGN.md 1.8."""
    id_scores = score_image_set(setup, id_set, reporter)
    ood = {s.name: score_image_set(setup, s, reporter) for s in ood_sets}
    per_set, avg = metrics_from_scores(id_scores.scores, {k: v.scores for k, v in ood.items()})
    return Evaluation(setup.config.method, id_scores, ood, per_set, avg)


def features_device_check(features: torch.Tensor) -> None:  # pragma: no cover - debugging aid
    assert torch.isfinite(features).all()
