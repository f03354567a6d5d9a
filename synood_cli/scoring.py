"""Score image folders and evaluate ID against OOD sets: the library behind `score` and `evaluate`.

The CLI is a thin layer over `prepare_scoring`, `iter_scores`, `score_image_set` and `evaluate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from synood_cli.data.folders import ImageSet
from synood_cli.errors import UsageError
from synood_cli.metrics import accuracy, average_metrics, ood_metrics
from synood_cli.models.clip import ClipModel, clip_source, load_clip, source_label
from synood_cli.negatives import ID_TEMPLATE, Negatives, id_text_features, mine_negatives, text_features
from synood_cli.profiles import load_profile
from synood_cli.reporting import NullReporter, Reporter
from synood_cli.runtime import resolve_decode_device, resolve_device, resolve_dtype
from synood_cli.scores import SCORES, ScoreInputs, Scorer
from synood_cli.store import Store


@dataclass
class ScoringConfig:
    """Every knob of scoring; None means "take it from the profile".

    `method` may list several methods separated by commas (`neglabel,synood`): images are encoded
    once and every method scores the same features.
    """

    home: Path
    profile: str | None = None  # None: the checkpoint's profile, else "default"
    method: str = "neglabel"
    model: str | None = None
    pretrained: str | None = None
    lexicon: str | None = None
    groups: int | None = None
    neg_ratio: float | None = None
    percentile: float | None = None
    pool: str | None = None  # negatives' candidate pool: neglabel or csp (synood_cli/pools.py)
    negative_filter: str | None = None  # none or wordnet (synood_cli/negative_filter.py)
    tau: float = 0.01
    temperature: float = 1.0
    seed: int = 0
    batch_size: int | str | None = None  # "auto": chosen from free GPU memory once the model is loaded (batching.py)
    num_workers: int = 0
    device: str = "auto"
    precision: str = "auto"
    checkpoint: str | None = None
    exact_preprocess: bool = False
    decode_device: str | None = None
    auto_batch: bool = False  # set by `resolved()` from batch_size "auto" (which becomes the profile's, the CPU value)
    # set on the copy `resolved()` returns: resolving it again (prepare_scoring, scoring_identity) is a no-op
    is_resolved: bool = field(default=False, repr=False, compare=False)

    @property
    def methods(self) -> list[str]:
        return [m.strip() for m in self.method.split(",") if m.strip()]

    def resolved(self) -> "ScoringConfig":
        """A copy with profile defaults filled in and cheap validation done (exit 2 before work)."""
        if self.is_resolved:
            return self
        ck = _checkpoint_settings(self) if self.checkpoint else {}
        profile = self.profile or ck.get("profile") or "default"
        prof = load_profile(profile)
        if not self.methods:
            raise UsageError("--method is empty")
        for m in self.methods:
            SCORES.get(m)
        if "synood" in self.methods and not self.checkpoint:
            raise UsageError("score method 'synood' needs a fine-tuned checkpoint", hint="pass --checkpoint NAME (made by `synood finetune`)")
        neg = {**prof.get("neglabel", {}), "lexicon": prof.get("lexicon", "neglabel")}
        if self.checkpoint:
            neg.update(_checkpoint_negatives(self))  # the checkpoint's negatives, not the profile's
        out = ScoringConfig(**{**self.__dict__})
        out.profile = profile
        if self.model is None and self.pretrained is None and isinstance(ck.get("clip"), dict):
            out.model, out.pretrained = ck["clip"].get("model"), ck["clip"].get("pretrained")
        if ck.get("base") and source_label(clip_source(prof, out.model, out.pretrained)) != ck["base"]:
            given = " ".join(f"--{k} {v}" for k, v in (("model", self.model), ("pretrained", self.pretrained)) if v)
            given = given or (f"--profile {profile}" if self.profile else f"the {profile} profile (the checkpoint records none: pass its --profile)")
            raise UsageError(
                f"{given} means model {source_label(clip_source(prof, out.model, out.pretrained))}, but checkpoint {self.checkpoint} was trained on {ck['base']}",
                hint="drop the flag: a checkpoint brings its own model",
            )
        out.lexicon = self.lexicon or neg["lexicon"]
        from synood_cli.pools import POOLS

        out.pool = self.pool or neg.get("pool", "neglabel")
        if out.pool not in POOLS:
            raise UsageError(f"unknown --pool {out.pool!r}", hint=f"one of: {', '.join(POOLS)}")
        from synood_cli.negative_filter import FILTERS

        out.negative_filter = self.negative_filter or neg.get("negative_filter", "none")
        if out.negative_filter not in FILTERS:
            raise UsageError(f"unknown --negative-filter {out.negative_filter!r}", hint=f"one of: {', '.join(FILTERS)}")
        if out.negative_filter != "none":
            from synood_cli.lexicons import _find_wordnet

            _find_wordnet(None)  # a missing WordNet: exit 2 before the model loads
        adaptive = [m for m in self.methods if SCORES.get(m).transductive]
        if adaptive:
            from synood_cli import distributed

            if distributed.ranks().active:
                raise UsageError(
                    f"score method {adaptive[0]!r} is transductive (a score depends on the images scored before it) and "
                    f"{distributed.ranks().world} ranks would each adapt their own memory to their own slice",
                    hint="run it in one process (no torchrun/srun), or use a method whose scores do not depend on the order",
                )
        if "csp" in self.methods and self.pool not in (None, "csp"):
            raise UsageError(f"score method 'csp' mines CSP's pool, not --pool {self.pool}", hint="drop --pool, or use --method neglabel --pool ...")
        ck_groups = ck.get("groups") if isinstance(ck.get("groups"), int) else None
        out.groups = self.groups if self.groups is not None else int(ck_groups or neg.get("groups", 100))
        out.neg_ratio = self.neg_ratio if self.neg_ratio is not None else float(neg.get("neg_ratio", 0.15))
        out.percentile = self.percentile if self.percentile is not None else float(neg.get("percentile", 0.95))
        out.auto_batch = self.auto_batch or self.batch_size == "auto"
        out.batch_size = int(prof.get("batch_size", 64)) if self.batch_size in (None, "auto") else self.batch_size  # 0 is refused, not replaced
        if out.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {out.batch_size}")
        if out.num_workers < 0:
            raise UsageError(f"--num-workers must be 0 or more, got {out.num_workers}")
        if self.tau <= 0 or self.temperature <= 0:
            raise UsageError("--tau and --temperature must be positive")
        from synood_cli.models.clip import validate_clip_source

        validate_clip_source(clip_source(prof, out.model, out.pretrained))
        resolve_device(out.device)  # CUDA asked for but absent: exit 3 before any data is read
        if out.decode_device is not None:
            out.decode_device = resolve_decode_device(out.decode_device, out.device)
        out.is_resolved = True
        return out


def _checkpoint_settings(config: ScoringConfig) -> dict:
    """The profile, model and scoring settings a checkpoint records; exit 2 on a flag that contradicts one.

    A checkpoint brings its own: `score --checkpoint X` needs no --profile, and `--profile default`
    or `--groups 5` against a tiny checkpoint made with 10 groups is refused naming both values.
    """
    from synood_cli.training import checkpoint_config

    ck = checkpoint_config(Store(config.home), config.checkpoint)
    if not isinstance(ck, dict):
        return {}
    hint = "drop the flag: a checkpoint brings its own profile, model and scoring settings"
    if not isinstance(ck.get("profile"), (str, type(None))) or not isinstance(ck.get("groups"), (int, type(None))):
        from synood_cli.errors import DamagedArtifact

        raise DamagedArtifact(f"checkpoint {config.checkpoint} is damaged: its manifest records a profile or groups of the wrong type",
                              hint="rerun the `synood finetune` command that made it")
    if config.profile is not None and ck.get("profile") is not None and config.profile != ck["profile"]:
        raise UsageError(f"--profile {config.profile} contradicts checkpoint {config.checkpoint}, made with --profile {ck['profile']}", hint=hint)
    if config.groups is not None and ck.get("groups") is not None and int(config.groups) != int(ck["groups"]):
        raise UsageError(f"--groups {config.groups} contradicts checkpoint {config.checkpoint}, whose threshold and scores use --groups {ck['groups']}", hint=hint)
    return ck


def _checkpoint_negatives(config: ScoringConfig) -> dict:
    """Lexicon, neg_ratio and percentile a checkpoint's negatives were mined with; exit 2 on a contradicting flag.

    The SynOOD score uses the negative set recorded in the checkpoint (docs/method.md, "Score"), so
    another --lexicon or --neg-ratio could only make the NegLabel comparison disagree with it.
    """
    from synood_cli.training import checkpoint_config

    ck = checkpoint_config(Store(config.home), config.checkpoint)
    if "lexicon" not in ck:
        return {}  # an old checkpoint: load_checkpoint refuses it with its own message
    # checkpoints from before `finetune --pool` mined NegLabel's pool
    recorded = {"lexicon": ck["lexicon_name"], "neg_ratio": ck["neg_ratio"], "percentile": ck["percentile"], "pool": ck.get("pool", "neglabel")}
    hint = f"drop the flag, or finetune again with it (the checkpoint used --lexicon {ck['lexicon_name']} --neg-ratio {ck['neg_ratio']} --pool {recorded['pool']})"
    if config.pool is not None and config.pool != recorded["pool"]:
        raise UsageError(f"--pool {config.pool} differs from the checkpoint's {recorded['pool']}: its negatives were mined from that pool", hint=hint)
    if config.neg_ratio is not None and float(config.neg_ratio) != float(ck["neg_ratio"]):
        raise UsageError(f"--neg-ratio {config.neg_ratio} differs from the checkpoint's {ck['neg_ratio']}", hint=hint)
    if config.percentile is not None and float(config.percentile) != float(ck["percentile"]):
        raise UsageError(f"--percentile {config.percentile} differs from the checkpoint's {ck['percentile']}", hint=hint)
    if config.lexicon is not None and config.lexicon != ck["lexicon_name"]:
        from synood_cli.lexicons import load_lexicon

        if load_lexicon(config.lexicon).fingerprint() != ck["lexicon"]:
            raise UsageError(f"--lexicon {config.lexicon} is not the lexicon the checkpoint's negatives came from ({ck['lexicon_name']})", hint=hint)
    return recorded


@dataclass
class ScoreSetup:
    """A loaded model and score methods bound to one ID class list."""

    config: ScoringConfig
    clip: ClipModel
    scorers: dict[str, Scorer]
    class_names: list[str]
    negatives: Negatives | None
    mined: dict = field(default_factory=dict)  # pool -> Negatives (a `--compare neglabel,csp` mines both)
    auto_batch: int | None = None  # --batch-size auto: the batch measured for this model, before a set's size caps it


def method_pool(config: ScoringConfig, method: str) -> str:
    """The candidate pool a method's negatives come from: `csp` always CSP's, the others --pool."""
    return "csp" if method == "csp" else (config.pool or "neglabel")


def checkpoint_class_names(config: ScoringConfig) -> list[str] | None:
    """The ID class names a checkpoint was trained with (so `score --checkpoint` needs no --classnames)."""
    if not config.checkpoint:
        return None
    from synood_cli.training import checkpoint_classes

    return checkpoint_classes(Store(config.home), config.checkpoint)


def prepare_scoring(config: ScoringConfig, class_names: list[str], reporter: Reporter = NullReporter()) -> ScoreSetup:
    """Load CLIP, embed the ID class names and (for NegLabel/SynOOD) mine or reuse the negatives."""
    cfg = config.resolved()
    prof = load_profile(cfg.profile)
    source = clip_source(prof, cfg.model, cfg.pretrained)
    # with a checkpoint the SynOOD score's negatives come from it: only the others need mining
    needs_negatives = any(SCORES.get(m).needs_negatives and not (m == "synood" and cfg.checkpoint) for m in cfg.methods)
    pools = sorted({method_pool(cfg, m) for m in cfg.methods if SCORES.get(m).needs_negatives and not (m == "synood" and cfg.checkpoint)})
    lexicon = None
    if needs_negatives:
        from synood_cli.lexicons import load_lexicon

        lexicon = load_lexicon(cfg.lexicon)  # a missing WordNet is a usage error: before the model loads
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.precision, device)
    store = Store(cfg.home)
    reporter.info(f"loading CLIP {source.describe()} on {device}")
    clip = load_clip(source, store, device, dtype)
    clip.exact_preprocess, clip.decode_device = cfg.exact_preprocess, cfg.decode_device
    checkpoint = None
    if cfg.checkpoint:
        from synood_cli.training import load_checkpoint

        checkpoint = load_checkpoint(store, cfg.checkpoint, expected_model=clip.fingerprint)
    id_feats = text_features(clip, store, list(class_names), ID_TEMPLATE, reporter)
    mined: dict[str, Negatives] = {}
    for pool in pools:
        mined[pool] = mine_negatives(clip, class_names, lexicon, store, cfg.neg_ratio, cfg.percentile, reporter=reporter, pool=pool, pool_seed=cfg.seed,
                                     negative_filter=cfg.negative_filter)
        reporter.info(f"{len(mined[pool].labels)} negative labels from lexicon {lexicon.name}, {pool} pool ({mined[pool].artifact.id})")
    scorers = {}
    for m in cfg.methods:
        negatives = mined.get(method_pool(cfg, m))
        neg_text = negatives.features if negatives else None
        adapter = None
        id_text = id_feats
        if negatives is not None and method_pool(cfg, m) != "neglabel" and m != "synood":
            # CSP scores against the ID texts it mined with: its 8-template ensemble (docs/method.md)
            id_text = id_text_features(clip, store, list(class_names), method_pool(cfg, m), reporter)
        if m == "synood" and checkpoint is not None:
            # the checkpoint's negative set: the fine-tuned ones and the mined ones that were not, in mined order
            neg_text = checkpoint.negative_features.to(clip.device)
            adapter = checkpoint.adapter.to(clip.device)
            # and the ID prompts it was trained with (finetune --id-template; docs/method.md, "Score")
            template = checkpoint.manifest.get("config", {}).get("id_template", ID_TEMPLATE)
            if template != ID_TEMPLATE:
                id_text = text_features(clip, store, list(class_names), template, reporter)
        inputs = ScoreInputs(
            id_text=id_text, neg_text=neg_text, tau=cfg.tau, groups=cfg.groups, seed=cfg.seed, temperature=cfg.temperature, adapter=adapter
        )
        scorers[m] = Scorer(m, inputs)
    return ScoreSetup(cfg, clip, scorers, list(class_names), mined.get(cfg.pool) or next(iter(mined.values()), None), mined)


def checkpoint_identity(config: ScoringConfig) -> tuple[str | None, dict]:
    """(the id scores record for the checkpoint, its config): its artifact id, which a copied folder keeps."""
    if not config.checkpoint:
        return None, {}
    from synood_cli.training import resolve_checkpoint

    folder, manifest, _ = resolve_checkpoint(Store(config.home), config.checkpoint)
    ck_id = manifest.get("id") if isinstance(manifest, dict) else None
    config_ = manifest.get("config") if isinstance(manifest, dict) else None
    return (ck_id if isinstance(ck_id, str) and ck_id else str(folder.resolve())), (config_ if isinstance(config_, dict) else {})


def refuse_other_classes(what: str, names: list[str], checkpoint: str, trained: list[str]) -> None:
    """Exit 2: a checkpoint scores only the ID classes it was trained on; the message names both lists."""
    from synood_cli.identity import classes_entry, describe

    raise UsageError(
        f"{what} names {describe('classes', classes_entry(names))}, but checkpoint {checkpoint} was trained on {describe('classes', classes_entry(trained))}",
        hint="drop --classnames (the checkpoint brings its classes), or finetune a checkpoint on these classes",
    )


def planned_identity(config: ScoringConfig, method: str, class_names: list[str], protocol: str = "stream") -> dict:
    """The identity of `method`'s scores as far as it is known before the model loads (no weights, negatives, preprocessing).

    Compared first so that a threshold made for other scores is refused before any work. `protocol`:
    how a transductive method's stream was made (ADAPTIVE_PROTOCOLS; `score` always streams).
    """
    from synood_cli.identity import IDENTITY_VERSION, classes_entry
    from synood_cli.negatives import ADJ_TEMPLATE, NOUN_TEMPLATE
    from synood_cli.scores.adaneg import PUBLISHED as PUBLISHED_ADANEG

    cfg = config.resolved()
    needs_negatives = SCORES.get(method).needs_negatives
    synood = method == "synood"
    ck_id, ck = checkpoint_identity(cfg) if synood else (None, {})
    id_template = ck.get("id_template", ID_TEMPLATE) if synood else ID_TEMPLATE
    templates = {"id": id_template, **({"noun": NOUN_TEMPLATE, "adj": ADJ_TEMPLATE} if needs_negatives else {})}
    pool = None
    if needs_negatives:
        from synood_cli.pools import pool_record

        # a checkpoint's negatives were mined with the pool its config records (NegLabel's before pools existed)
        record = pool_record(ck.get("pool", "neglabel"), ck.get("pool_seed", cfg.seed)) if synood else pool_record(method_pool(cfg, method), cfg.seed)
        pool = {k: v for k, v in record.items() if k != "templates"}
        from synood_cli.negative_filter import FILTER_RECORD

        # the filter acts on mined negatives; a checkpoint's were mined unfiltered (finetune has no filter)
        pool["filter"] = dict(FILTER_RECORD) if cfg.negative_filter == "wordnet" and not synood else None
        if "templates" in record:
            templates = dict(record["templates"], id=id_template if synood else record["templates"]["id"])
    return dict(
        version=IDENTITY_VERSION,
        method=method,
        model=source_label(clip_source(load_profile(cfg.profile), cfg.model, cfg.pretrained)),
        checkpoint=ck_id,
        classes=classes_entry(list(class_names)),
        neg_ratio=cfg.neg_ratio if needs_negatives else None,
        percentile=cfg.percentile if needs_negatives else None,
        groups=(PUBLISHED_ADANEG.groups if method == "adaneg" else cfg.groups) if needs_negatives else None,
        seed=cfg.seed if needs_negatives else None,
        tau=cfg.tau if method != "mcm" else None,
        temperature=cfg.temperature if method in ("energy", "mcm") else None,
        templates=templates,
        pool=pool,
        adaptive=adaptive_identity(cfg, protocol) if method == "adaneg" else None,
    )


# how `evaluate` feeds a transductive score (docs/method.md, "Score", AdaNeg); `score` always streams
ADAPTIVE_PROTOCOLS = ("published", "stream")
PUBLISHED_BATCH = 256  # OpenOOD-VLM's `--dataset.test.batch_size 256` for its AdaNeg runs


def adaptive_identity(cfg: ScoringConfig, protocol: str = "stream") -> dict:
    """What AdaNeg's scores depend on besides the texts: its settings, the protocol and stream order, the batch, the seed."""
    from synood_cli.scores.adaneg import PUBLISHED

    if protocol == "published":
        return {
            **PUBLISHED.record(),
            "protocol": "published",
            "order": "OpenOOD-VLM's: per OOD set a fresh memory, that set and the ID set shuffled together (seeded); "
                     "the ID row: the ID set alone, a fresh memory, in input order",
            "batch_size": PUBLISHED_BATCH,
            "seed": cfg.seed,
        }
    return {
        **PUBLISHED.record(),
        "protocol": "stream",
        "order": "input order (score: as listed; evaluate: the ID set, then each OOD set as given), one memory per run",
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
    }


def score_identity(setup: ScoreSetup, method: str, protocol: str = "stream") -> dict:
    """Everything `method`'s scores from `setup` depend on (identity.KEYS): recorded with them, compared where they meet."""
    from synood_cli.identity import make

    planned = planned_identity(setup.config, method, setup.class_names, protocol)
    negatives = None
    if SCORES.get(method).needs_negatives:
        if method == "synood":
            # the checkpoint's negative set was tuned from these mined negatives (its id covers the tuning)
            negatives = checkpoint_identity(setup.config)[1].get("negatives")
        elif setup.mined.get(method_pool(setup.config, method)) is not None:
            negatives = setup.mined[method_pool(setup.config, method)].artifact.id
    return make(**planned, weights=setup.clip.fingerprint, preprocess=setup.clip.preprocess_id or "open_clip-pil", negatives=negatives)


def scoring_identity(config: ScoringConfig) -> dict:
    """The settings shown with results (model, checkpoint, groups, ...); `score_identity` is what is compared."""
    cfg = config.resolved()
    return {
        "model": source_label(clip_source(load_profile(cfg.profile), cfg.model, cfg.pretrained)),
        "checkpoint": checkpoint_identity(cfg)[0],
        "groups": cfg.groups,
        "lexicon": cfg.lexicon,
        "neg_ratio": cfg.neg_ratio,
        "pool": cfg.pool,
        "negative_filter": cfg.negative_filter,
        "seed": cfg.seed,
        "tau": cfg.tau,
    }


@dataclass
class ScoredBatch:
    paths: list[Path]
    indices: np.ndarray
    scores: dict[str, np.ndarray]
    preds: np.ndarray
    failures: list[tuple[Path, str]]


def iter_scores(
    setup: ScoreSetup, files: list[Path], reporter: Reporter = NullReporter(), description: str = "scoring", reader=None
) -> Iterator[ScoredBatch]:
    """Score files batch by batch, in order; unreadable files come back in `failures`, never raised.

    `reader` (an `ImageSet.reader`) reads table rows by index; `files` then only name them.
    Under torchrun/srun each rank encodes batches b % world == rank and every rank yields every
    batch, in input order (`distributed.rounds`): callers on all ranks see what one process would.
    """
    from synood_cli import distributed

    cfg = setup.config
    r = distributed.ranks()
    with reporter.task(description, total=len(files)) as task:
        if not r.active:
            size = _auto_batch(setup, len(files), reporter) if cfg.auto_batch else cfg.batch_size
            for batch in _score_batches(setup, files, list(range(len(files))), reader, size, reporter):
                _report_failures(batch, reporter)
                task.advance(len(batch.indices) + len(batch.failures))
                yield batch
            return
        if cfg.auto_batch and setup.auto_batch is None:  # the ranks deal batches by one size: the profile's, on every rank
            setup.auto_batch = cfg.batch_size
            reporter.info(f"--batch-size auto under {r.world} ranks is the profile's batch size, {cfg.batch_size}")
        mine = distributed.batch_items(distributed.my_batches(len(files), cfg.batch_size, r), len(files), cfg.batch_size)
        sub_reader = _RowsOf(reader, mine) if reader is not None else None
        batches = _score_batches(setup, [files[i] for i in mine], mine, sub_reader, cfg.batch_size, reporter)
        for round_batches in distributed.rounds(batches, len(files), cfg.batch_size, description):
            for batch in round_batches:
                if r.leader:  # every rank holds every batch: one rank reports
                    _report_failures(batch, reporter)
                task.advance(len(batch.indices) + len(batch.failures))
                yield batch


class _RowsOf:
    """A table reader restricted to some rows: item i is the parent's row `rows[i]` (picklable for workers)."""

    def __init__(self, reader, rows: list[int]):
        self.reader, self.rows = reader, rows

    def read(self, i: int) -> bytes:
        return self.reader.read(self.rows[i])


def _auto_batch(setup: ScoreSetup, n: int, reporter: Reporter) -> int:
    """--batch-size auto: measured once per loaded model on CUDA (a probe of 1 and 2 blank images), capped by this set's size.

    A transductive method (adaneg) keeps the profile's batch size: its scores depend on the batch.
    """
    from synood_cli.batching import choose_batch_size

    if setup.auto_batch is None:
        cfg = setup.config
        adaptive = [m for m in cfg.methods if SCORES.get(m).transductive]
        if adaptive:
            setup.auto_batch = cfg.batch_size
            reporter.info(f"--batch-size auto: {adaptive[0]}'s scores depend on the batch, so it keeps the profile's batch size, {cfg.batch_size}")
        else:
            setup.auto_batch = choose_batch_size(setup.clip.device, score_probe(setup), None, cfg.batch_size, "score", reporter)
    return max(1, min(setup.auto_batch, n))


def score_probe(setup: ScoreSetup):
    """`probe(k)`: encode and score k blank images at the model's input size (what `--batch-size auto` measures)."""
    import torch

    side = getattr(setup.clip.model.visual, "image_size", 224)
    h, w = (side, side) if isinstance(side, int) else tuple(side)

    def probe(k: int) -> None:
        score_pixels(setup, torch.zeros(k, 3, h, w, device=setup.clip.device))

    return probe


def _report_failures(batch: "ScoredBatch", reporter: Reporter) -> None:
    for path, err in batch.failures:
        reporter.warn(f"skipped {path}: {err}")


def score_pixels(setup: ScoreSetup, pixels) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every method's scores (float64 numpy) and the predicted ID class of a preprocessed batch."""
    feats = setup.clip.encode_raw(pixels)  # g: scorers normalise (the synood score's adapter takes g)
    scores, preds_np = {}, np.empty(0, dtype=np.int64)
    for m, scorer in setup.scorers.items():
        s, preds = scorer(feats)
        scores[m] = s.cpu().numpy().astype(np.float64)
        preds_np = preds.cpu().numpy()
    return scores, preds_np


def score_pixels_split(setup: ScoreSetup, pixels, reporter: Reporter = NullReporter()) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`score_pixels`, the batch halved on CUDA out-of-memory until its parts fit (batching.split_on_oom); same rows, same order.

    A transductive method (adaneg) is not split, its scores depend on the batch: out of memory is exit 3.
    """
    from synood_cli.batching import is_cuda_oom, split_on_oom

    adaptive = [m for m in setup.scorers if SCORES.get(m).transductive]
    if adaptive:
        try:
            return score_pixels(setup, pixels)
        except Exception as e:  # noqa: BLE001 - only out-of-memory is turned into exit 3
            if not is_cuda_oom(e):
                raise
        from synood_cli.errors import ResourceMissing

        raise ResourceMissing(f"a batch of {len(pixels)} images ran out of GPU memory, and {adaptive[0]}'s scores depend on the batch, "
                              "so it is not split", hint="rerun with a smaller --batch-size")

    def join(a, b):
        return {m: np.concatenate([a[0][m], b[0][m]]) for m in a[0]}, np.concatenate([a[1], b[1]])

    def split(b: int, half: int) -> None:
        reporter.warn(f"CUDA out of memory at {b} images; scoring them {half} at a time")

    return split_on_oom(lambda lo, hi: score_pixels(setup, pixels[lo:hi]), len(pixels), join, split,
                        hint="use --precision bf16, or a smaller CLIP")


def _score_batches(setup: ScoreSetup, files: list[Path], positions: list[int], reader, batch_size: int,
                   reporter: Reporter = NullReporter()) -> Iterator[ScoredBatch]:
    """Encode and score `files` (which are `positions` of the caller's list) batch by batch."""
    from synood_cli.data.pixels import iterate_pixels

    cfg = setup.config
    where = np.asarray(positions, dtype=np.int64)
    for pixels, idx, errors in iterate_pixels(setup.clip, files, batch_size, cfg.num_workers, reader):
        bad = [i for i, e in enumerate(errors) if e]
        good = [i for i, e in enumerate(errors) if not e]
        failures = [(files[idx[i]], errors[i]) for i in bad]
        scores: dict[str, np.ndarray] = {m: np.empty(0) for m in setup.scorers}
        preds_np = np.empty(0, dtype=np.int64)
        if good:
            scores, preds_np = score_pixels_split(setup, pixels, reporter)
        yield ScoredBatch([files[idx[i]] for i in good], where[idx[good]], scores, preds_np, failures)


@dataclass
class ImageScores:
    """Per-image results for one set; `indices` point into the set's file list."""

    name: str
    paths: list[Path]
    indices: np.ndarray
    scores: dict[str, np.ndarray]
    preds: np.ndarray
    labels: np.ndarray | None
    failures: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def accuracy(self) -> float | None:
        if self.labels is None or len(self.preds) == 0:
            return None
        return accuracy(self.preds, self.labels)


def score_image_set(setup: ScoreSetup, image_set: ImageSet, reporter: Reporter = NullReporter()) -> ImageScores:
    paths, idx, preds, failures = [], [], [], []
    scores: dict[str, list] = {m: [] for m in setup.scorers}
    for batch in iter_scores(setup, image_set.files, reporter, description=f"scoring {image_set.name}", reader=image_set.reader):
        paths += batch.paths
        idx.append(batch.indices)
        for m in scores:
            scores[m].append(batch.scores[m])
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
        {m: np.concatenate(v) for m, v in scores.items()},
        np.concatenate(preds),
        labels,
        failures,
        list(image_set.skipped),
    )


@dataclass
class Evaluation:
    """Per method: metrics per OOD set (fractions) and their plain mean; plus the per-image scores.

    `paired[m][ood]`: for a transductive method under the published protocol, the ID scores made
    together with OOD set `ood` (its metrics use them); `id.scores[m]` is then the ID set adapted
    alone (the thresholds). `id_scores_for` picks the right ones.
    """

    methods: list[str]
    id: ImageScores
    ood: dict[str, ImageScores]
    metrics: dict[str, dict[str, dict[str, float]]]
    average: dict[str, dict[str, float]]
    paired: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    protocol: str = "published"

    @property
    def id_accuracy(self) -> float | None:
        return self.id.accuracy

    def id_scores_for(self, method: str, ood_name: str) -> np.ndarray:
        """The ID scores `method`'s metrics on `ood_name` were computed with."""
        return self.paired.get(method, {}).get(ood_name, self.id.scores[method])


def metrics_from_scores(id_scores: np.ndarray, ood_scores: dict[str, np.ndarray]) -> tuple[dict, dict]:
    per_set = {name: ood_metrics(id_scores, s) for name, s in ood_scores.items()}
    return per_set, average_metrics(per_set)


class _FeatureTap:
    """Stands in for a transductive scorer while the sets are encoded: keeps the features (on their device), scores later.

    Its predictions are the scorer's zero-shot ones (`Scorer.__call__`); its scores are NaN
    placeholders that `evaluate` replaces once every set is encoded.
    """

    def __init__(self, scorer: Scorer):
        self.scorer, self.chunks = scorer, []

    def __call__(self, g):
        import torch

        g = g.float()
        self.chunks.append(g)
        f = torch.nn.functional.normalize(g, dim=-1)
        return torch.full((g.shape[0],), float("nan")), (f @ self.scorer.inputs.id_text.T).argmax(dim=1)

    def take(self):
        import torch

        out = torch.cat(self.chunks) if self.chunks else torch.empty(0)
        self.chunks = []
        return out


def _adapt(scorer: Scorer, feats, batch: int) -> np.ndarray:
    """`scorer`'s scores of `feats` in this order, `batch` at a time (one memory: the caller resets it)."""
    import torch

    if len(feats) == 0:
        return np.empty(0)
    return torch.cat([scorer(feats[i : i + batch])[0] for i in range(0, len(feats), batch)]).cpu().numpy().astype(np.float64)


def adapt_published(scorer: Scorer, id_feats, ood_feats: dict, seed: int, batch: int = PUBLISHED_BATCH):
    """OpenOOD-VLM's AdaNeg protocol over encoded features (docs/method.md, "Score"): (ID alone, {OOD set: (ID, OOD)}).

    Per OOD set the memory starts empty and the OOD set and the ID set, concatenated in that order
    (its `ConcatDataset([ood, id])`), are scored in one seeded shuffle, `batch` at a time: a set's
    scores do not depend on which sets come before it. The ID set alone, a fresh memory, in input
    order, is its accuracy pass (`eval_acc`): synood's thresholds come from it.
    """
    import torch

    scorer.reset()
    id_alone = _adapt(scorer, id_feats, batch)
    paired = {}
    for name, ood in ood_feats.items():
        scorer.reset()
        both = torch.cat([ood, id_feats.to(ood.device)])
        # seeded per set, not per position: the same set gets the same shuffle wherever it is listed
        perm = torch.randperm(len(both), generator=torch.Generator().manual_seed(seed))
        out = np.empty(len(both))
        out[perm.numpy()] = _adapt(scorer, both[perm.to(both.device)], batch)
        paired[name] = (out[len(ood):], out[: len(ood)])
    scorer.reset()
    return id_alone, paired


def evaluate(
    setup: ScoreSetup, id_set: ImageSet, ood_sets: list[ImageSet], reporter: Reporter = NullReporter(), protocol: str = "published"
) -> Evaluation:
    """Score the ID set and every OOD set once, then compute the metrics (docs/method.md, "Metrics") per method.

    A transductive method (AdaNeg) under `protocol="published"` is scored after every set is
    encoded, by `adapt_published`; under `"stream"` it adapts over the ID set, then each OOD set as
    given, with one memory (what `synood score` does with those files in that order).
    """
    from dataclasses import replace

    if protocol not in ADAPTIVE_PROTOCOLS:
        raise UsageError(f"unknown adaptive protocol {protocol!r}", hint=f"one of: {', '.join(ADAPTIVE_PROTOCOLS)}")
    taps = {m: _FeatureTap(s) for m, s in setup.scorers.items() if protocol == "published" and s.method.transductive}
    run = replace(setup, scorers={m: taps.get(m, s) for m, s in setup.scorers.items()}) if taps else setup
    id_scores = score_image_set(run, id_set, reporter)
    id_feats = {m: t.take() for m, t in taps.items()}
    ood = {}
    ood_feats: dict[str, dict] = {m: {} for m in taps}
    for s in ood_sets:
        ood[s.name] = score_image_set(run, s, reporter)
        for m, t in taps.items():
            ood_feats[m][s.name] = t.take()
    paired: dict[str, dict[str, np.ndarray]] = {}
    for m in taps:
        id_scores.scores[m], pairs = adapt_published(setup.scorers[m], id_feats[m], ood_feats[m], setup.config.seed)
        paired[m] = {}
        for name, (id_s, ood_s) in pairs.items():
            paired[m][name], ood[name].scores[m] = id_s, ood_s
    metrics, averages = {}, {}
    for m in setup.scorers:
        per_set = {k: ood_metrics(paired[m][k] if m in paired else id_scores.scores[m], v.scores[m]) for k, v in ood.items()}
        metrics[m], averages[m] = per_set, average_metrics(per_set)
    return Evaluation(list(setup.scorers), id_scores, ood, metrics, averages, paired, protocol)
