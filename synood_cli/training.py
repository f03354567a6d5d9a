"""`synood finetune` (docs/method.md, "Fine-tune"): assign negative labels, train the adapter and the negatives.

CLIP stays frozen; two small parts are trained on cached features, in fp32:
- the image adapter f' = normalize(g + ReLU(LayerNorm(W g + b))) on the raw CLIP image output g
  (as the research code: the LayerNorm output has norm about sqrt(d), so feeding the unit-norm f
  would let an untrained adapter drown the CLIP feature), cross-entropy over [ID class text
  features + assigned negative label text features] (frozen), logits 100 f'.T; ID source images
  carry their class, synthesized images their assigned negative label; Adam lr 1e-3, weight decay
  1e-5, cosine to 1e-5, 3 epochs, batch 128;
- the negative label features: free vectors initialised from the text features of the assigned
  negatives (finetuning passes them at the text encoder's raw scale, as the research code), cross-entropy of the frozen normalised features f of the synthesized images against
  these vectors (`negatives_logits="negatives"`, the research code's) or against [ID text
  features (frozen) + these vectors] ("all"); SGD lr 2e-2, momentum 0.9, weight decay 1e-5,
  cosine, 5 epochs, batch 128.
The cosine is stepped per batch ("step") or per epoch ("epoch", the research code's); the research
code used all the data (`val_fraction=0`). The research code trains the two parts separately (our
default); `joint` trains both on one objective over all images, as the paper describes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from synood_cli.errors import UsageError, first_line
from synood_cli.reporting import NullReporter, Reporter
from synood_cli.store import Store

LOGIT_SCALE = 100.0
NEGATIVES_LOGITS = ("all", "negatives")  # the negatives stage's softmax: ID + negatives, or negatives only (research code)
SCHEDULES = ("step", "epoch")  # cosine stepped per batch, or per epoch (research code)


class Adapter(torch.nn.Module):
    """Residual feature adapter on the raw CLIP image output g: f' = normalize(g + ReLU(LayerNorm(W g + b)))."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = torch.nn.Linear(dim, dim)
        self.norm = torch.nn.LayerNorm(dim)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return F.normalize(g + F.relu(self.norm(self.linear(g))), dim=-1)


@dataclass
class TrainConfig:
    adapter_epochs: int = 3
    adapter_lr: float = 1e-3
    adapter_min_lr: float = 1e-5
    adapter_weight_decay: float = 1e-5
    negatives_epochs: int = 5
    negatives_lr: float = 2e-2
    negatives_momentum: float = 0.9
    negatives_weight_decay: float = 1e-5
    batch_size: int = 128
    val_fraction: float = 0.05
    negatives_logits: str = "all"
    schedule: str = "step"
    joint: bool = False
    seed: int = 0

    def validate(self) -> None:
        if self.negatives_logits not in NEGATIVES_LOGITS:
            raise UsageError(f"--negatives-logits must be one of {', '.join(NEGATIVES_LOGITS)}, got {self.negatives_logits!r}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 <= self.val_fraction < 1:
            raise UsageError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.batch_size < 1 or self.adapter_epochs < 0 or self.negatives_epochs < 0:
            raise UsageError("--batch-size must be at least 1 and epochs 0 or more")
        if min(self.adapter_lr, self.negatives_lr) <= 0:
            raise UsageError("learning rates must be positive")


@dataclass
class TrainResult:
    adapter: Adapter
    negative_features: torch.Tensor
    history: dict = field(default_factory=dict)
    held_out_id: torch.Tensor | None = None  # rows of id_features the first stage never trained on


def assign_negatives(synth_features: torch.Tensor, neg_features: torch.Tensor) -> torch.Tensor:
    """Top-1 negative label per synthesized image by cosine similarity (docs/method.md, "Assign")."""
    # normalise here: with unnormalised inputs a raw dot product lets a long vector win by its length
    return (F.normalize(synth_features.float(), dim=-1) @ F.normalize(neg_features.float(), dim=-1).T).argmax(dim=1)


def _split(n: int, val_fraction: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    n_val = int(round(n * val_fraction))
    return perm[n_val:], perm[:n_val]


def _cosine(optimizer, total_steps: int, min_lr: float):
    base = [g["lr"] for g in optimizer.param_groups]

    def set_step(step: int) -> None:
        t = min(step / max(total_steps, 1), 1.0)
        for g, lr0 in zip(optimizer.param_groups, base):
            g["lr"] = min_lr + 0.5 * (lr0 - min_lr) * (1 + math.cos(math.pi * t))

    return set_step


def _evaluate(logits_fn, feats, labels) -> dict:
    if len(labels) == 0:
        return {}
    with torch.no_grad():
        logits = logits_fn(feats)
        return {"val_loss": float(F.cross_entropy(logits, labels)), "val_acc": float((logits.argmax(1) == labels).float().mean())}


def _run_stage(name, optimizers, logits_fn, feats, labels, epochs, batch_size, min_lr, gen, reporter, history, per_epoch=False) -> None:
    """A seeded-order training loop with a cosine schedule; loss per epoch goes to `history`.

    `per_epoch`: the learning rate changes once per epoch, lr_e = min + (lr0 - min)(1 + cos(pi e / E)) / 2
    for e = 0..E-1, as torch's CosineAnnealingLR(T_max=E) stepped after each epoch (research code).
    """
    train_idx, val_idx = _split(len(labels), history["val_fraction"], gen)
    history.setdefault("_val_index", val_idx)  # the first stage's split: finetune's threshold uses its ID rows
    steps_per_epoch = max(1, math.ceil(len(train_idx) / batch_size))
    schedules = [_cosine(o, epochs if per_epoch else epochs * steps_per_epoch, min_lr) for o in optimizers]
    step = 0
    with reporter.task(f"{name}: epoch 0/{epochs}", total=epochs * steps_per_epoch, unit="step") as task:
        for epoch in range(epochs):
            order = train_idx[torch.randperm(len(train_idx), generator=gen)]
            total, count = 0.0, 0
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                for s in schedules:
                    s(epoch if per_epoch else step)
                loss = F.cross_entropy(logits_fn(feats[idx]), labels[idx])
                for o in optimizers:
                    o.zero_grad(set_to_none=True)
                loss.backward()
                for o in optimizers:
                    o.step()
                total += loss.item() * len(idx)
                count += len(idx)
                step += 1
                task.advance(1)
            entry = {"epoch": epoch + 1, "lr": optimizers[0].param_groups[0]["lr"], "train_loss": total / max(count, 1), **_evaluate(logits_fn, feats[val_idx], labels[val_idx])}
            history.setdefault(name, []).append(entry)
            task.update(description=f"{name}: epoch {epoch + 1}/{epochs} loss {entry['train_loss']:.4f}")
    if len(train_idx):
        with torch.no_grad():
            logits = logits_fn(feats[train_idx])
            history.setdefault(f"{name}_final", {}).update(
                train_loss=float(F.cross_entropy(logits, labels[train_idx])), train_acc=float((logits.argmax(1) == labels[train_idx]).float().mean())
            )
    history.setdefault(f"{name}_final", {}).update(_evaluate(logits_fn, feats[val_idx], labels[val_idx]))


def train(
    id_features: torch.Tensor,
    id_labels: torch.Tensor,
    synth_features: torch.Tensor,
    synth_targets: torch.Tensor,
    id_text: torch.Tensor,
    neg_init: torch.Tensor,
    cfg: TrainConfig,
    reporter: Reporter = NullReporter(),
) -> TrainResult:
    """Train adapter and negative features; `synth_targets` index rows of `neg_init`.

    `id_features` and `synth_features` are raw CLIP image outputs g: the adapter takes g, the
    negatives stage the normalised f = g / |g|.
    """
    cfg.validate()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    k = id_text.shape[0]
    id_text = id_text.float().cpu()
    adapter = Adapter(id_text.shape[1])
    negatives = torch.nn.Parameter(neg_init.float().cpu().clone())
    history: dict = {"val_fraction": cfg.val_fraction}
    all_feats = torch.cat([id_features.float().cpu(), synth_features.float().cpu()])
    all_labels = torch.cat([id_labels.long().cpu(), synth_targets.long().cpu() + k])
    frozen_neg = F.normalize(neg_init.float().cpu(), dim=-1)
    per_epoch = cfg.schedule == "epoch"

    def adapter_logits(g):
        return LOGIT_SCALE * adapter(g) @ torch.cat([id_text, frozen_neg]).T

    def negative_logits(f):
        tuned = F.normalize(negatives, dim=-1)
        if cfg.negatives_logits == "negatives":
            return LOGIT_SCALE * f @ tuned.T
        return LOGIT_SCALE * f @ torch.cat([id_text, tuned]).T

    def joint_logits(g):
        return LOGIT_SCALE * adapter(g) @ torch.cat([id_text, F.normalize(negatives, dim=-1)]).T

    adam = torch.optim.Adam(adapter.parameters(), lr=cfg.adapter_lr, weight_decay=cfg.adapter_weight_decay)
    sgd = torch.optim.SGD([negatives], lr=cfg.negatives_lr, momentum=cfg.negatives_momentum, weight_decay=cfg.negatives_weight_decay)
    if cfg.joint:
        epochs = max(cfg.adapter_epochs, cfg.negatives_epochs)
        _run_stage("joint", [adam, sgd], joint_logits, all_feats, all_labels, epochs, cfg.batch_size, cfg.adapter_min_lr, gen, reporter, history, per_epoch)
    else:
        _run_stage("adapter", [adam], adapter_logits, all_feats, all_labels, cfg.adapter_epochs, cfg.batch_size, cfg.adapter_min_lr, gen, reporter, history, per_epoch)
        synth_f = F.normalize(synth_features.float().cpu(), dim=-1)
        offset = 0 if cfg.negatives_logits == "negatives" else k
        _run_stage("negatives", [sgd], negative_logits, synth_f, synth_targets.long().cpu() + offset, cfg.negatives_epochs, cfg.batch_size, 0.0, gen, reporter, history, per_epoch)
    history.pop("val_fraction")
    val = history.pop("_val_index")
    held_out = val[val < len(id_features)].sort().values
    return TrainResult(adapter.eval().requires_grad_(False), F.normalize(negatives.detach(), dim=-1), history, held_out)


# -- checkpoints ---------------------------------------------------------------------------------


def _refuse_file(path: Path, ref: str) -> None:
    """A file (a `.pt`/`.ckpt` pickle, most likely) is refused before anything reads it."""
    if path.is_file():
        raise UsageError(
            f"--checkpoint {ref} is a file; a synood checkpoint is a store artifact or a folder of safetensors, and synood never unpickles",
            hint="pass the name given to `synood finetune --name`, or the checkpoint folder",
        )


CHECKPOINT_SCHEMA = 2  # 2: adapter on the raw feature g; the whole negative set with kinds and a tuned mask


@dataclass
class Checkpoint:
    """A loaded checkpoint: the adapter and the full negative set the SynOOD score uses.

    `negative_features` holds every mined negative in mined order (nouns, then adjectives), the
    fine-tuned rows replaced by their trained vectors; `tuned[i]` says which; `kinds[i]` is noun/adj.
    """

    adapter: Adapter
    negative_features: torch.Tensor
    labels: list[str]
    kinds: list[str]
    tuned: list[bool]
    manifest: dict

    @property
    def base_model(self) -> str:
        return self.manifest["config"]["base_model"]


def save_checkpoint(folder: Path, result: TrainResult, labels: list[str], kinds: list[str], features: torch.Tensor, tuned: list[bool]) -> None:
    """`features`: all negatives, the tuned rows already replaced (see `Checkpoint`)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in result.adapter.state_dict().items()}, str(folder / "adapter.safetensors"))
    save_file({"features": features.float().contiguous(), "tuned": torch.tensor(tuned, dtype=torch.uint8)}, str(folder / "negatives.safetensors"))
    (folder / "labels.json").write_text(json.dumps({"labels": labels, "kinds": kinds, "tuned": tuned}, indent=0))


def resolve_checkpoint(store: Store, ref: str) -> tuple[Path, dict, str]:
    """(folder, manifest, what) for --checkpoint: the store first, a folder only if the store has no such ref.

    A bare NAME is a store alias even when a folder ./NAME exists; write ./NAME (or any path with a
    slash) for a folder. `what` names the checkpoint in messages.
    """
    from synood_cli.errors import DamagedArtifact

    path = Path(ref).expanduser()
    _refuse_file(path, ref)
    looks_like_path = ref.startswith((".", "/", "~")) or (path.is_dir() and "/" in ref.rstrip("/"))
    if not looks_like_path:
        try:
            art = store.find(ref, kind="checkpoint").check(complete=True)  # a partial checkpoint is never used
            return art.path, art.manifest, f"checkpoint {art.ref}" + (f" ({ref})" if ref != art.ref else "")
        except UsageError:
            if not path.is_dir():
                raise
    if not path.is_dir():
        raise UsageError(f"--checkpoint {ref}: no such folder", hint="pass a checkpoint name from `synood store ls`, or an existing folder")
    manifest = {}
    if (path / "manifest.json").exists():
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise DamagedArtifact(f"checkpoint folder {ref} is damaged: manifest.json is not valid JSON ({first_line(e, 120)})", hint="copy it again, or rerun `synood finetune`") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("config", {}), dict):
            raise DamagedArtifact(f"checkpoint folder {ref} is damaged: manifest.json is not an object with a config object", hint="copy it again, or rerun `synood finetune`")
    return path, manifest, f"checkpoint folder {ref}"


def _read_json_list(folder: Path, name: str, what: str, hint: str) -> list:
    from synood_cli.errors import DamagedArtifact

    try:
        value = json.loads((folder / name).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise DamagedArtifact(f"{what} is damaged: {name} is not valid JSON ({first_line(e, 120)})", hint=hint) from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DamagedArtifact(f"{what} is damaged: {name} is not a list of strings", hint=hint)
    return value


def _repair_hint(what: str) -> str:
    if what.startswith("checkpoint folder"):
        return "copy the folder again from where it was made, or rerun `synood finetune`"
    ref = what.split()[1]
    return f"rerun the `synood finetune` command that made it, or remove it with: synood store rm {ref}"


def load_checkpoint(store: Store, ref: str, expected_model: str | None = None) -> Checkpoint:
    """Load from a store ref or a checkpoint folder; refuse pickles and checkpoints of another model.

    A damaged checkpoint (unreadable safetensors, wrong tensor shapes, invalid JSON) is one exit-3
    line naming it, with the command that repairs it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from synood_cli.errors import DamagedArtifact

    folder, manifest, what = resolve_checkpoint(store, ref)
    for f in ("adapter.safetensors", "negatives.safetensors", "labels.json"):
        if not (folder / f).is_file():
            raise UsageError(f"{what} has no {f}", hint="checkpoints are made by `synood finetune`")
    base = manifest.get("config", {}).get("base_model")
    if expected_model is not None and base != expected_model:
        raise UsageError(
            f"{what} was trained on {base}, but the model in use is {expected_model}",
            hint="use the same --model/--pretrained (or --profile) as the finetune run",
        )
    hint = _repair_hint(what)
    try:
        meta = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DamagedArtifact(f"{what} is damaged: labels.json is not valid JSON ({e})", hint=hint) from None
    if not isinstance(meta, dict) or manifest.get("config", {}).get("schema") != CHECKPOINT_SCHEMA:
        raise UsageError(
            f"{what} was made by an older synood (its adapter took the normalised CLIP feature)",
            hint="rerun the `synood finetune` command that made it: image features are cached, so only training reruns",
        )
    labels, kinds, tuned = meta.get("labels", []), meta.get("kinds", []), meta.get("tuned", [])
    try:
        state = load_file(str(folder / "adapter.safetensors"))
        negatives = load_file(str(folder / "negatives.safetensors"))["features"]
        if negatives.ndim != 2 or not (len(labels) == len(kinds) == len(tuned) == negatives.shape[0]):
            raise ValueError(f"negatives.safetensors holds {tuple(negatives.shape)} features for {len(labels)} labels")
        adapter = Adapter(negatives.shape[1])
        adapter.load_state_dict(state)
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as e:
        first = first_line(e)
        raise DamagedArtifact(f"{what} is damaged: {first}", hint=hint) from None
    return Checkpoint(adapter.eval().requires_grad_(False), negatives, labels, kinds, [bool(t) for t in tuned], manifest)


def checkpoint_config(store: Store, ref: str) -> dict:
    """The config a checkpoint was made with (lexicon, neg_ratio, percentile, ...), read without loading weights."""
    return resolve_checkpoint(store, ref)[1].get("config", {})


def config_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)


def checkpoint_classes(store: Store, ref: str) -> list[str]:
    """The ID class names a checkpoint was trained with."""
    folder, _, what = resolve_checkpoint(store, ref)  # score/evaluate call this first: the same refusals as load_checkpoint
    if not (folder / "classes.json").is_file():
        raise UsageError(f"{what} has no classes.json", hint="checkpoints are made by `synood finetune`")
    return _read_json_list(folder, "classes.json", what, _repair_hint(what))
