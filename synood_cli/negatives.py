"""NegLabel negative-label mining (docs/method.md, "Negative labels") and the text-feature cache it rests on.

Every candidate word is embedded with NegLabel's code templates, exactly and with no final period
(a period changes every embedding): nouns and ID class names "the nice {}", adjectives "This is a
{} photo". Its affinity to the ID set is the 95th
percentile of its cosine similarities to the ID label embeddings; the `neg_ratio` share with the
lowest affinity, taken separately among nouns and adjectives, become the negative labels.
Text features are cached in the store per (model fingerprint, template, label list), so a
lexicon of 80,000 words is embedded once per model, whatever the ID classes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from synood_cli.errors import UsageError
from synood_cli.lexicons import Lexicon
from synood_cli.models.clip import ClipModel, source_label
from synood_cli.reporting import NullReporter, Reporter
from synood_cli.store import Artifact, Store, check_rows

ID_TEMPLATE = "the nice {}"
NOUN_TEMPLATE = "the nice {}"
ADJ_TEMPLATE = "This is a {} photo"
# the research adapter's ID template (`synood finetune --id-template`): not the default
RESEARCH_ADAPTER_ID_TEMPLATE = "a nice {}"


def labels_digest(labels: list[str]) -> str:
    return hashlib.sha256("\n".join(labels).encode()).hexdigest()[:16]


def text_features(
    clip: ClipModel, store: Store, labels: list[str], template: str, reporter: Reporter = NullReporter(), raw: bool = False
) -> torch.Tensor:
    """Text features [len(labels), d] of `template.format(label)`, cached in the store.

    `raw`: the unnormalised text-encoder outputs (fp32), which CSP averages over templates.
    """
    from safetensors.torch import load_file, save_file

    config = {"model": clip.fingerprint, "template": template, "labels": labels_digest(labels), "count": len(labels)}
    if raw:
        config["raw"] = True  # only when set: the ids of normalised caches stay as they were

    def build(folder: Path) -> dict:
        with reporter.task(f"embedding {len(labels)} labels", total=len(labels), unit="label") as task:
            texts = [template.format(x) for x in labels]
            feats = _encode_raw(clip, texts, task) if raw else clip.encode_texts(texts, task=task)
        save_file({"features": feats.cpu().contiguous()}, str(folder / "features.safetensors"))
        (folder / "labels.json").write_text(json.dumps(labels))
        return {"count": len(labels), "dim": int(feats.shape[1])}

    def load(a: Artifact) -> torch.Tensor:  # rows = labels, width = the model's: a cut cache is rebuilt, never used
        return check_rows(load_file(str(a.file("features.safetensors")))["features"], len(labels), clip.embed_dim, f"{a.ref}/features.safetensors")

    _, feats = store.build_and_load("text-features", config, build, load)
    return feats.to(clip.device)


@torch.no_grad()
def _encode_raw(clip: ClipModel, texts: list[str], task=None, batch_size: int = 512) -> torch.Tensor:
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = clip.tokenizer(texts[start : start + batch_size]).to(clip.device)
        with clip._autocast():
            out.append(clip.model.encode_text(tokens).float())
        if task is not None:
            task.advance(len(tokens))
    return torch.cat(out) if out else torch.empty(0, clip.embed_dim or 0, device=clip.device)


def ensemble_features(
    clip: ClipModel, store: Store, labels: list[str], templates, reporter: Reporter = NullReporter()
) -> torch.Tensor:
    """CSP's template ensemble: the normalised mean of the raw outputs over `templates` (each cached)."""
    from synood_cli.pools import ensemble

    return ensemble([text_features(clip, store, labels, t, reporter, raw=True) for t in templates])


def id_text_features(clip: ClipModel, store: Store, class_names: list[str], pool: str = "neglabel", reporter: Reporter = NullReporter()) -> torch.Tensor:
    """The ID class text features a pool mines against and scores with: `the nice {}`, or CSP's 8-template ensemble."""
    if pool == "csp":
        from synood_cli.pools import CSP_NOUN_TEMPLATES

        return ensemble_features(clip, store, list(class_names), CSP_NOUN_TEMPLATES, reporter)
    return text_features(clip, store, list(class_names), ID_TEMPLATE, reporter)


@torch.no_grad()
def raw_text_norms(clip: ClipModel, texts: list[str], batch_size: int = 512) -> torch.Tensor:
    """|E_txt(text)| of the unnormalised text-encoder outputs (fp32, on the CPU).

    The research code trains the negative label vectors at this scale (docs/method.md, "Fine-tune"):
    SGD turns a vector of norm r by about 1/r^2 as much as a unit vector for the same step.
    """
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = clip.tokenizer(texts[start : start + batch_size]).to(clip.device)
        with clip._autocast():
            out.append(clip.model.encode_text(tokens).float().norm(dim=-1).cpu())
    return torch.cat(out) if out else torch.empty(0)


def kind_template(kind: str) -> str:
    """The embedding template of a negative label of this kind (noun or adj)."""
    return ADJ_TEMPLATE if kind == "adj" else NOUN_TEMPLATE


def affinity(candidates: torch.Tensor, id_features: torch.Tensor, percentile: float, chunk: int = 4096) -> torch.Tensor:
    """The `percentile` quantile (linear interpolation, as torch.quantile) of each row's similarities.

    Computed by sorting chunk by chunk: torch.quantile refuses inputs over 16M elements, and
    80,000 words x 1,000 classes is 80M.
    """
    k = id_features.shape[0]
    pos = percentile * (k - 1)
    lo, frac = int(pos), pos - int(pos)
    hi = min(lo + 1, k - 1)
    out = []
    for start in range(0, candidates.shape[0], chunk):
        sims = (candidates[start : start + chunk] @ id_features.T).sort(dim=1).values
        out.append(sims[:, lo] + frac * (sims[:, hi] - sims[:, lo]))
    return torch.cat(out) if out else torch.empty(0, device=candidates.device)


@dataclass
class Negatives:
    """Mined negative labels with their text features (rows aligned with `labels`)."""

    labels: list[str]
    kinds: list[str]
    features: torch.Tensor
    artifact: Artifact | None = None


def mine_negatives(
    clip: ClipModel,
    class_names: list[str],
    lexicon: Lexicon,
    store: Store,
    neg_ratio: float = 0.15,
    percentile: float = 0.95,
    name: str | None = None,
    reporter: Reporter = NullReporter(),
    pool: str = "neglabel",
    pool_seed: int = 0,
    negative_filter: str = "none",
) -> Negatives:
    """Mine (or find in the store) the negatives for these ID classes under this model and lexicon.

    `pool="csp"`: CSP's conjugated pool (synood_cli/pools.py): adjectives become seeded
    "ADJ SUPERCLASS" phrases, texts are template ensembles, near-duplicates of an ID class are capped.
    `negative_filter="wordnet"`: mined nouns under an ID class in WordNet, and proper nouns, are
    dropped afterwards (synood_cli/negative_filter.py; ours, not NegRefine's LLM).
    """
    from synood_cli.negative_filter import FILTERS
    from synood_cli.pools import CSP_ADJ_TEMPLATES, CSP_NOUN_TEMPLATES, POOLS, cap_near_duplicates, conjugate, pool_record

    if pool not in POOLS:
        raise UsageError(f"unknown --pool {pool!r}", hint=f"one of: {', '.join(POOLS)}")
    if negative_filter not in FILTERS:
        raise UsageError(f"unknown --negative-filter {negative_filter!r}", hint=f"one of: {', '.join(FILTERS)}")
    if not 0 < neg_ratio <= 1:
        raise UsageError(f"--neg-ratio must be in (0, 1], got {neg_ratio}")
    if not 0 <= percentile <= 1:
        raise UsageError(f"--percentile must be in [0, 1], got {percentile}")
    if not class_names:
        raise UsageError("no ID class names given", hint="pass --classnames FILE or an ID folder with class subfolders")
    config = {
        "model": clip.fingerprint,
        "classes": labels_digest(class_names),
        "num_classes": len(class_names),
        "lexicon": lexicon.fingerprint(),
        "lexicon_name": lexicon.name,
        "neg_ratio": neg_ratio,
        "percentile": percentile,
        "templates": {"id": ID_TEMPLATE, "noun": NOUN_TEMPLATE, "adj": ADJ_TEMPLATE},
    }
    if pool != "neglabel":  # only then: the ids of NegLabel-pool artifacts stay as they were
        record = pool_record(pool, pool_seed)
        config["pool"] = {k: v for k, v in record.items() if k != "templates"}
        config["templates"] = record["templates"]
    hierarchy = None
    if negative_filter != "none":  # only then, as the pool: unfiltered ids stay as they were
        from synood_cli.negative_filter import FILTER_RECORD, load_noun_hierarchy

        hierarchy, _ = load_noun_hierarchy()  # a missing WordNet: exit 2 before any embedding
        config["filter"] = dict(FILTER_RECORD)
    art = store.artifact("negatives", config)
    if not art.usable():
        id_names = {c.lower() for c in class_names}
        id_feats = id_text_features(clip, store, list(class_names), pool, reporter)
        picked_labels: list[str] = []
        picked_kinds: list[str] = []
        picked_feats, picked_aff = [], []
        candidates = {}
        if pool == "csp":
            # every adjective is conjugated, whatever the ID classes: the draw never depends on them
            parts = (("noun", lexicon.nouns, list(lexicon.nouns), CSP_NOUN_TEMPLATES),
                     ("adj", lexicon.adjectives, conjugate(lexicon.adjectives, pool_seed), CSP_ADJ_TEMPLATES))
        else:
            parts = (("noun", lexicon.nouns, list(lexicon.nouns), (NOUN_TEMPLATE,)), ("adj", lexicon.adjectives, list(lexicon.adjectives), (ADJ_TEMPLATE,)))
        for kind, words, texts, templates in parts:
            # drop ID names by index: the whole lexicon is embedded (and cached) once per model,
            # whatever the ID classes
            allowed = [i for i, w in enumerate(words) if w.lower() not in id_names]
            candidates[kind] = len(allowed)
            if not allowed:
                continue
            if pool == "csp":
                feats = ensemble_features(clip, store, texts, templates, reporter)
            else:
                feats = text_features(clip, store, texts, templates[0], reporter)
            allowed_t = torch.tensor(allowed, device=feats.device)
            aff = affinity(feats[allowed_t], id_feats, percentile)
            if pool == "csp":
                aff = cap_near_duplicates(aff, feats[allowed_t], id_feats)
            keep = int(len(allowed) * neg_ratio)
            order = torch.argsort(aff, stable=True)[:keep]
            rows = allowed_t[order]
            picked_labels += [texts[i] for i in rows.tolist()]
            picked_kinds += [kind] * keep
            picked_feats.append(feats[rows])
            picked_aff.append(aff[order])
        if not picked_labels:
            raise UsageError(
                f"the lexicon {lexicon.name!r} left no negative labels ({candidates.get('noun', 0)} nouns, "
                f"{candidates.get('adj', 0)} adjectives after dropping ID names, ratio {neg_ratio})",
                hint="use a larger --lexicon or a higher --neg-ratio",
            )
        features = torch.cat(picked_feats).cpu().contiguous()
        affinities = torch.cat(picked_aff).cpu().contiguous()
        filtered = None
        if hierarchy is not None:
            from synood_cli.negative_filter import wordnet_filter

            filtered = wordnet_filter(picked_labels, picked_kinds, list(class_names), hierarchy)
            rows = torch.tensor([i for i, k in enumerate(filtered.keep) if k], dtype=torch.long)
            picked_labels = [w for w, k in zip(picked_labels, filtered.keep) if k]
            picked_kinds = [w for w, k in zip(picked_kinds, filtered.keep) if k]
            features, affinities = features[rows].contiguous(), affinities[rows].contiguous()
            if not picked_labels:
                raise UsageError("the WordNet filter dropped every mined negative", hint="use a larger --lexicon or --negative-filter none")

        def build(folder: Path) -> dict:
            from safetensors.torch import save_file

            save_file({"features": features, "affinity": affinities}, str(folder / "negatives.safetensors"))
            (folder / "labels.json").write_text(json.dumps({"labels": picked_labels, "kinds": picked_kinds}, indent=0))
            extra = {}
            if filtered is not None:
                dropped = {"hyponyms": [list(x) for x in filtered.hyponyms], "proper": filtered.proper}
                (folder / "filtered.json").write_text(json.dumps(dropped, indent=0))
                extra = {"filter": {"name": negative_filter, "dropped_hyponyms": len(filtered.hyponyms), "dropped_proper": len(filtered.proper)}}
            return {
                **extra,
                "negatives": len(picked_labels),
                "nouns": picked_kinds.count("noun"),
                "adjectives": picked_kinds.count("adj"),
                "candidates": {"nouns": candidates.get("noun", 0), "adjectives": candidates.get("adj", 0)},
                "lexicon_source": lexicon.source,
                "model": source_label(clip.source),
                "pool": pool,
            }

        art = store.build("negatives", config, build)
    if name:
        store.set_name(name, art)
    return load_negatives(art, clip.device)


def load_negatives(art: Artifact, device="cpu") -> Negatives:
    from safetensors.torch import load_file

    meta = json.loads(art.file("labels.json").read_text())
    feats = load_file(str(art.file("negatives.safetensors")))["features"].to(device)
    return Negatives(meta["labels"], meta["kinds"], feats, art)
