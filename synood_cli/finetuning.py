"""The `synood finetune` pipeline: features (cached), assignment, training, checkpoint artifact (docs/method.md)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from synood_cli.errors import UsageError, first_line
from synood_cli.features import EncodeStats, cached_features, file_loader
from synood_cli.reporting import NullReporter, Reporter
from synood_cli.store import Artifact, Store
from synood_cli.thresholds import THRESHOLD_FILE
from synood_cli.training import CHECKPOINT_SCHEMA, TrainConfig, assign_negatives, config_dict, save_checkpoint, train


@dataclass
class FinetuneConfig:
    prompts: str
    synth: str
    home: Path
    id_folder: Path | None = None
    classnames: Path | None = None
    profile: str = "default"
    model: str | None = None
    pretrained: str | None = None
    lexicon: str | None = None
    neg_ratio: float | None = None
    percentile: float | None = None
    pool: str | None = None  # negatives' candidate pool, neglabel or csp (synood_cli/pools.py) [default: the profile's]
    id_template: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    device: str = "auto"
    precision: str = "auto"
    encode_batch_size: int = 64
    exact_preprocess: bool = False  # open_clip's PIL transform for the feature cache (data/pixels.py)


def profile_train_config(profile: str, seed: int = 0, **explicit) -> TrainConfig:
    """TrainConfig from the profile's `finetune` section; explicit values (not None) win."""
    from synood_cli.profiles import load_profile

    known = set(TrainConfig.__dataclass_fields__)
    values = {k: v for k, v in load_profile(profile).get("finetune", {}).items() if k in known}
    values.update({k: v for k, v in explicit.items() if v is not None})
    return TrainConfig(**{**values, "seed": seed})


def _class_names(cfg: FinetuneConfig, prompts: Artifact) -> list[str]:
    """All ID classes (not only the prompted range): --id folder, --classnames, else the prompts' folder."""
    from synood_cli.data.folders import read_classnames
    from synood_cli.data.sources import InputOptions, open_image_set

    if cfg.classnames is not None:
        return read_classnames(cfg.classnames)
    config = prompts.manifest["config"]
    folder = cfg.id_folder or Path(config.get("image_list") or config["folder"])
    options = InputOptions(data_root=Path(config["folder"]), image_column=config.get("image_column"), label_column=config.get("label_column"))
    image_set = open_image_set(str(folder), options=options)
    if not image_set.classes:
        raise UsageError(f"{folder} has no class subfolders", hint="pass --classnames FILE")
    return image_set.class_names


def run_finetune(cfg: FinetuneConfig, name: str | None = None, reporter: Reporter = NullReporter()) -> tuple[Artifact, EncodeStats]:
    """Encode (or reuse) features, assign negatives, train, and store a checkpoint artifact."""
    from synood_cli.lexicons import load_lexicon
    from synood_cli.models.clip import clip_source, load_clip, source_label
    from synood_cli.negatives import ID_TEMPLATE, kind_template, mine_negatives, raw_text_norms, text_features
    from synood_cli.profiles import load_profile
    from synood_cli.prompting import read_prompts
    from synood_cli.runtime import resolve_device, resolve_dtype

    from synood_cli.store import validate_name

    cfg.train.validate()
    if name is not None:
        validate_name(name)  # before any work: a bad --name must not cost a training run
    store = Store(cfg.home)
    prompts = store.find(cfg.prompts, kind="prompts")
    synth = store.find(cfg.synth, kind="synth")
    for art, what in ((prompts, "prompt"), (synth, "synthesize")):
        if not art.complete:
            raise UsageError(f"{art.ref} is incomplete", hint=f"rerun the `synood {what}` command that made it; it resumes")
        art.check()  # a missing or truncated shard is exit 3, never training on part of the data
    if synth.manifest["config"].get("prompts") != prompts.id:
        raise UsageError(f"{synth.ref} was synthesized from other prompts than {prompts.ref}", hint="pass the --prompts the synthesis used")
    from synood_cli.data.refs import use_prompts_image_column

    use_prompts_image_column(prompts.manifest["config"])
    class_names = _class_names(cfg, prompts)
    prof = load_profile(cfg.profile)
    lexicon = load_lexicon(cfg.lexicon or prof.get("lexicon", "wordnet"))
    neg_ratio = cfg.neg_ratio if cfg.neg_ratio is not None else prof.get("neglabel", {}).get("neg_ratio", 0.15)
    percentile = cfg.percentile if cfg.percentile is not None else prof.get("neglabel", {}).get("percentile", 0.95)
    from synood_cli.pools import POOLS

    pool = cfg.pool or prof.get("neglabel", {}).get("pool", "neglabel")
    if pool not in POOLS:
        raise UsageError(f"unknown --pool {pool!r}", hint=f"one of: {', '.join(POOLS)}")
    id_template = cfg.id_template or ID_TEMPLATE
    if "{}" not in id_template:
        raise UsageError(f"--id-template {id_template!r} has no {{}} for the class name", hint='e.g. --id-template "a nice {}"')
    device = resolve_device(cfg.device)
    clip = load_clip(clip_source(prof, cfg.model, cfg.pretrained), store, device, resolve_dtype(cfg.precision, device))
    clip.exact_preprocess = cfg.exact_preprocess
    # the CSP pool's superclass draw takes the run's seed; the score reads it back from the checkpoint
    negatives = mine_negatives(clip, class_names, lexicon, store, neg_ratio, percentile, reporter=reporter, pool=pool, pool_seed=cfg.train.seed)
    id_text = text_features(clip, store, class_names, id_template, reporter)
    config = {
        "schema": CHECKPOINT_SCHEMA,
        # the negative set the SynOOD score uses comes from here: score refuses other --lexicon/--neg-ratio
        "lexicon": lexicon.fingerprint(),
        "lexicon_name": lexicon.name,
        "neg_ratio": neg_ratio,
        "percentile": percentile,
        "id_template": id_template,
        "base_model": clip.fingerprint,
        "base": source_label(clip.source),
        "prompts": prompts.id,
        "synth": synth.id,
        "negatives": negatives.artifact.id,
        "classes": len(class_names),
        "train": config_dict(cfg.train),
        # what `score --checkpoint` takes from here without flags: the profile, the model flags, the groups
        "profile": cfg.profile,
        "clip": {"model": cfg.model, "pretrained": cfg.pretrained},
        "groups": int(prof.get("neglabel", {}).get("groups", 100)),
    }
    if pool != "neglabel":  # the pool its negatives came from, and the seed of CSP's superclass draw (NegLabel's: no key, ids unchanged)
        config.update(pool=pool, pool_seed=cfg.train.seed)
    if clip.preprocess_id:  # trained on features from the batched torch preprocessing (data/pixels.py)
        config["preprocess"] = clip.preprocess_id
    inputs = {"prompts": prompts.ref, "synth": synth.ref, "negatives": negatives.artifact.ref}
    stats = EncodeStats()
    done = store.artifact("checkpoint", config, inputs)
    if done.complete and not done.problems():  # a damaged one is trained again and replaced
        reporter.info(f"{done.ref} is complete; nothing to do")
        if name:
            store.set_name(name, done)
        return done, stats

    rows = read_prompts(prompts)
    by_class: dict[int, list[dict]] = {}
    for r in rows:
        by_class.setdefault(int(r["class_index"]), []).append(r)
    for c in by_class:
        if c >= len(class_names):
            raise UsageError(f"prompts have class index {c} but only {len(class_names)} class names are known", hint="pass --id or --classnames")
    id_groups = [(f"class {c}", len(group), lambda group=group: [file_loader(r["image_path"]) for r in group]) for c, group in sorted(by_class.items())]
    id_labels = [c for c, group in sorted(by_class.items()) for _ in group]
    shards = sorted(synth.path.glob("shards/*.parquet"))
    synth_groups = [(shard.stem, _shard_rows(synth, shard), lambda shard=shard: [(lambda b=b: b) for b in _shard_images(synth, shard)]) for shard in shards]
    # one bar per image set, not one per class (1,000 bars for ImageNet); features stay cached per class/shard
    id_feats = _group_features(clip, store, id_groups, stats, reporter, cfg.encode_batch_size, "ID features")
    synth_feats = _group_features(clip, store, synth_groups, stats, reporter, cfg.encode_batch_size, "synthesized features")
    from synood_cli import distributed

    if not distributed.is_leader():
        # torchrun/srun: rank 0 trains on the gathered features; the others wait for its checkpoint
        distributed.barrier("waiting for rank 0 to train and store the checkpoint", long=True)
        return done.check(), stats
    if not synth_feats:
        raise UsageError(f"{synth.ref} holds no images")
    reporter.info(f"features: {stats.encoded} images encoded, {stats.cached} from the cache")
    id_f, synth_f = torch.cat(id_feats), torch.cat(synth_feats)
    assigned = assign_negatives(synth_f, negatives.features.cpu())
    unique = sorted(set(assigned.tolist()))
    remap = {j: i for i, j in enumerate(unique)}
    targets = torch.tensor([remap[j] for j in assigned.tolist()])
    histogram = Counter(negatives.labels[j] for j in assigned.tolist())

    # the negative vectors start at the text encoder's own scale, as the research code trains them
    norms = raw_text_norms(clip, [kind_template(negatives.kinds[j]).format(negatives.labels[j]) for j in unique])
    neg_init = negatives.features.cpu().float()[unique] * norms[:, None]
    result = train(id_f, torch.tensor(id_labels), synth_f, targets, id_text.cpu(), neg_init, cfg.train, reporter)
    features, tuned = checkpoint_negative_set(negatives.features, unique, result.negative_features)

    from synood_cli.identity import classes_entry, make
    from synood_cli.negatives import ADJ_TEMPLATE, NOUN_TEMPLATE
    from synood_cli.pools import pool_record

    groups = config["groups"]
    record = pool_record(pool, cfg.train.seed)
    templates = {"noun": NOUN_TEMPLATE, "adj": ADJ_TEMPLATE, **record.get("templates", {}), "id": id_template}  # the adapter's ID texts
    # the identity `synood score --checkpoint` computes for its SynOOD scores (scoring.score_identity)
    identity = make(method="synood", model=source_label(clip.source), weights=clip.fingerprint, checkpoint=done.id, classes=classes_entry(class_names),
                    neg_ratio=neg_ratio, percentile=percentile, negatives=negatives.artifact.id, groups=groups, seed=cfg.train.seed, tau=0.01,
                    temperature=None, preprocess=clip.preprocess_id or "open_clip-pil",
                    templates=templates, adaptive=None,
                    pool={**{k: v for k, v in record.items() if k != "templates"}, "filter": None})  # finetune mines unfiltered
    threshold = _held_out_threshold(result, id_f, id_text, features, groups, cfg, identity)

    def build(folder: Path) -> dict:
        save_checkpoint(folder, result, list(negatives.labels), list(negatives.kinds), features, tuned)
        (folder / THRESHOLD_FILE).write_text(json.dumps(threshold, indent=1))
        (folder / "classes.json").write_text(json.dumps(class_names))
        (folder / "label_histogram.json").write_text(json.dumps(dict(histogram.most_common()), indent=0))
        return {
            "id_images": len(id_labels),
            "synth_images": len(targets),
            "assigned_labels": len(unique),
            "negatives": len(negatives.labels),
            "top_assigned": dict(histogram.most_common(10)),
            "final": {k: v for k, v in result.history.items() if k.endswith("_final")},
            "history": {k: v for k, v in result.history.items() if not k.endswith("_final")},
            "encoded": stats.encoded,
            "threshold": threshold,
        }

    art = store.build("checkpoint", config, build, inputs=inputs, name=name)
    distributed.barrier("storing the checkpoint", long=True)
    return art, stats



def checkpoint_negative_set(mined: torch.Tensor, rows: list[int], trained: torch.Tensor) -> tuple[torch.Tensor, list[bool]]:
    """The SynOOD score's negative set (docs/method.md, "Score"): every mined negative once, in
    mined order, row rows[i] replaced by its fine-tuned vector trained[i]; and which rows were tuned."""
    features = mined.cpu().float().clone()
    features[torch.tensor(rows, dtype=torch.long)] = trained.cpu().float()
    tuned = [False] * len(features)
    for j in rows:
        tuned[j] = True
    return features, tuned


def _group_features(clip, store: Store, groups: list, stats: EncodeStats, reporter: Reporter, batch_size: int, what: str) -> list | None:
    """Cached raw features of each group (label, size, loaders()): a class's ID images or a shard's synthesized ones.

    Under torchrun/srun group g is encoded and cached by rank g % world alone, whole, so every
    group's features (and cache file) are what one process makes; rank 0 gathers them in group
    order and the other ranks get None. Rank 0's bar counts its own share.
    """
    from synood_cli import distributed

    r = distributed.ranks()
    own_groups = range(r.rank, len(groups), r.world)
    own, before = {}, (stats.encoded, stats.cached)
    with reporter.task(what, total=sum(groups[g][1] for g in own_groups)) as task:
        for g in own_groups:
            label, _, loaders = groups[g]
            own[g] = cached_features(clip, store, loaders(), stats, reporter, batch_size, f"{what}, {label}", task.advance)
    if not r.active:
        return [own[g] for g in range(len(groups))]
    counts = (stats.encoded - before[0], stats.cached - before[1])
    parts = distributed.gather_to_leader((own, counts), f"gathering the {what}")
    if parts is None:
        return None
    merged = {g: f for part, _ in parts for g, f in part.items()}
    stats.encoded, stats.cached = before[0] + sum(c[0] for _, c in parts), before[1] + sum(c[1] for _, c in parts)
    return [merged[g] for g in range(len(groups))]


def _held_out_threshold(result, id_f, id_text, neg_features, groups: int, cfg, identity: dict) -> dict:
    """The SynOOD score at 95% TPR on the ID images training held out, for `score --threshold fpr95`.

    `neg_features`: the checkpoint's negative set (every mined negative, the tuned rows replaced).
    Too few held-out ID images (tiny runs) fall back to all ID training images, and say so.
    """
    from synood_cli.metrics import threshold_at_tpr
    from synood_cli.scores import ScoreInputs, Scorer

    held = result.held_out_id
    split = "held-out"
    if held is None or len(held) == 0:
        held, split = torch.arange(len(id_f)), "training"
    inputs = ScoreInputs(id_text=id_text.float().cpu(), neg_text=neg_features, tau=identity["tau"], groups=groups, seed=identity["seed"], adapter=result.adapter)
    scores, _ = Scorer("synood", inputs)(id_f[held])
    return {
        "method": "synood",
        "tpr": 0.95,
        "threshold": threshold_at_tpr(scores.numpy(), 0.95),
        "n_id": int(len(held)),
        "split": split,
        "identity": identity,
    }


def _shard_rows(synth: Artifact, shard: Path) -> int:
    """Images in a shard, from the Parquet footer (for the progress bar; a damaged shard is reported when read)."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(shard).metadata.num_rows
    except Exception:  # noqa: BLE001 - `_shard_images` reports it with the repair
        return 0


def _shard_images(synth: Artifact, shard: Path) -> list[bytes]:
    """The PNG bytes of one shard; a shard that cannot be read is exit 3 naming it."""
    import pyarrow.parquet as pq

    from synood_cli.errors import DamagedArtifact

    try:  # pyarrow directly: `datasets` logs a traceback for an unreadable file before raising
        return [img["bytes"] for img in pq.read_table(shard, columns=["image"]).column("image").to_pylist()]
    except Exception as e:  # noqa: BLE001 - pyarrow/datasets raise many types for a damaged file
        first = first_line(e)
        raise DamagedArtifact(f"{synth.ref} is damaged: {shard.relative_to(synth.path)} cannot be read ({first})", hint=synth.repair_hint()) from None
