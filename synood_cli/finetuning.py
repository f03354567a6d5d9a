"""The `synood finetune` pipeline: features (cached), assignment, training, checkpoint artifact."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from synood_cli.errors import UsageError
from synood_cli.features import EncodeStats, cached_features, file_loader
from synood_cli.reporting import NullReporter, Reporter
from synood_cli.store import Artifact, Store
from synood_cli.training import TrainConfig, assign_negatives, config_dict, save_checkpoint, train


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
    train: TrainConfig = field(default_factory=TrainConfig)
    device: str = "auto"
    precision: str = "auto"
    encode_batch_size: int = 64
    exact_preprocess: bool = False  # open_clip's PIL transform for the feature cache (data/pixels.py)


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
    from synood_cli.data.shards import read_shard
    from synood_cli.lexicons import load_lexicon
    from synood_cli.models.clip import clip_source, load_clip
    from synood_cli.negatives import ID_TEMPLATE, mine_negatives, text_features
    from synood_cli.profiles import load_profile
    from synood_cli.prompting import read_prompts
    from synood_cli.runtime import resolve_device, resolve_dtype

    cfg.train.validate()
    store = Store(cfg.home)
    prompts = store.find(cfg.prompts, kind="prompts")
    synth = store.find(cfg.synth, kind="synth")
    for art, what in ((prompts, "prompt"), (synth, "synthesize")):
        if not art.complete:
            raise UsageError(f"{art.ref} is incomplete", hint=f"rerun the `synood {what}` command that made it; it resumes")
    if synth.manifest["config"].get("prompts") != prompts.id:
        raise UsageError(f"{synth.ref} was synthesized from other prompts than {prompts.ref}", hint="pass the --prompts the synthesis used")
    from synood_cli.data.refs import use_prompts_image_column

    use_prompts_image_column(prompts.manifest["config"])
    class_names = _class_names(cfg, prompts)
    prof = load_profile(cfg.profile)
    lexicon = load_lexicon(cfg.lexicon or prof.get("lexicon", "wordnet"))
    neg_ratio = cfg.neg_ratio if cfg.neg_ratio is not None else prof.get("neglabel", {}).get("neg_ratio", 0.15)
    device = resolve_device(cfg.device)
    clip = load_clip(clip_source(prof, cfg.model, cfg.pretrained), store, device, resolve_dtype(cfg.precision, device))
    clip.exact_preprocess = cfg.exact_preprocess
    negatives = mine_negatives(clip, class_names, lexicon, store, neg_ratio, reporter=reporter)
    id_text = text_features(clip, store, class_names, ID_TEMPLATE, reporter)
    config = {
        "base_model": clip.fingerprint,
        "base": clip.source.describe(),
        "prompts": prompts.id,
        "synth": synth.id,
        "negatives": negatives.artifact.id,
        "classes": len(class_names),
        "train": config_dict(cfg.train),
    }
    if clip.preprocess_id:  # trained on features from the batched torch preprocessing (data/pixels.py)
        config["preprocess"] = clip.preprocess_id
    inputs = {"prompts": prompts.ref, "synth": synth.ref, "negatives": negatives.artifact.ref}
    stats = EncodeStats()
    done = store.artifact("checkpoint", config, inputs)
    if done.complete:
        reporter.info(f"{done.ref} is complete; nothing to do")
        if name:
            store.set_name(name, done)
        return done, stats

    rows = read_prompts(prompts)
    by_class: dict[int, list[dict]] = {}
    for r in rows:
        by_class.setdefault(int(r["class_index"]), []).append(r)
    id_feats, id_labels = [], []
    for c, group in sorted(by_class.items()):
        if c >= len(class_names):
            raise UsageError(f"prompts have class index {c} but only {len(class_names)} class names are known", hint="pass --id or --classnames")
        id_feats.append(cached_features(clip, store, [file_loader(r["image_path"]) for r in group], stats, reporter, cfg.encode_batch_size, f"ID features, class {c}"))
        id_labels += [c] * len(group)
    synth_feats = []
    for shard in sorted(synth.path.glob("shards/*.parquet")):
        blobs = [img["bytes"] for img in read_shard(shard).cast_column("image", _raw_image()).to_dict()["image"]]
        synth_feats.append(cached_features(clip, store, [(lambda b=b: b) for b in blobs], stats, reporter, cfg.encode_batch_size, f"synthesized features, {shard.stem}"))
    if not synth_feats:
        raise UsageError(f"{synth.ref} holds no images")
    reporter.info(f"features: {stats.encoded} images encoded, {stats.cached} from the cache")
    id_f, synth_f = torch.cat(id_feats), torch.cat(synth_feats)
    assigned = assign_negatives(synth_f, negatives.features.cpu())
    unique = sorted(set(assigned.tolist()))
    remap = {j: i for i, j in enumerate(unique)}
    targets = torch.tensor([remap[j] for j in assigned.tolist()])
    labels = [negatives.labels[j] for j in unique]
    histogram = Counter(negatives.labels[j] for j in assigned.tolist())

    result = train(id_f, torch.tensor(id_labels), synth_f, targets, id_text.cpu(), negatives.features.cpu()[unique], cfg.train, reporter)

    def build(folder: Path) -> dict:
        save_checkpoint(folder, result, labels)
        (folder / "classes.json").write_text(json.dumps(class_names))
        (folder / "label_histogram.json").write_text(json.dumps(dict(histogram.most_common()), indent=0))
        return {
            "id_images": len(id_labels),
            "synth_images": len(targets),
            "assigned_labels": len(labels),
            "top_assigned": dict(histogram.most_common(10)),
            "final": {k: v for k, v in result.history.items() if k.endswith("_final")},
            "history": {k: v for k, v in result.history.items() if not k.endswith("_final")},
            "encoded": stats.encoded,
        }

    art = store.build("checkpoint", config, build, inputs=inputs, name=name)
    return art, stats


def _raw_image():
    import datasets

    return datasets.Image(decode=False)
