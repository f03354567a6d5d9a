"""`synood finetune` (DESIGN.md 1.5-1.6): assign negative labels, train the adapter and the negatives.

CLIP stays frozen; two small parts are trained on cached features, in fp32:
- the image adapter f' = normalize(f + ReLU(LayerNorm(W f + b))), cross-entropy over
  [ID class text features + assigned negative label text features] (frozen), logits 100 f'.T;
  ID source images carry their class, synthesized images their assigned negative label;
  Adam lr 1e-3, weight decay 1e-5, cosine to 1e-5, 3 epochs, batch 128;
- the negative label features: free vectors initialised from the text features of the assigned
  negatives, cross-entropy of the frozen features of the synthesized images against
  [ID text features (frozen) + these vectors]; SGD lr 2e-2, momentum 0.9, weight decay 1e-5,
  cosine, 5 epochs, batch 128.
The research code trains the two parts separately (our default); `joint` trains both on one
objective over all images, as the paper describes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from synood_cli.errors import UsageError
from synood_cli.reporting import NullReporter, Reporter
from synood_cli.store import Artifact, Store

LOGIT_SCALE = 100.0


class Adapter(torch.nn.Module):
    """Residual feature adapter: f' = normalize(f + ReLU(LayerNorm(W f + b)))."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = torch.nn.Linear(dim, dim)
        self.norm = torch.nn.LayerNorm(dim)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(f + F.relu(self.norm(self.linear(f))), dim=-1)


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
    joint: bool = False
    seed: int = 0

    def validate(self) -> None:
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
    """Top-1 negative label per synthesized image by cosine similarity (DESIGN.md 1.5)."""
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


def _run_stage(name, optimizers, logits_fn, feats, labels, epochs, batch_size, min_lr, gen, reporter, history) -> None:
    """A seeded-order training loop with a cosine schedule; loss per epoch goes to `history`."""
    train_idx, val_idx = _split(len(labels), history["val_fraction"], gen)
    history.setdefault("_val_index", val_idx)  # the first stage's split: finetune's threshold uses its ID rows
    steps_per_epoch = max(1, math.ceil(len(train_idx) / batch_size))
    schedules = [_cosine(o, epochs * steps_per_epoch, min_lr) for o in optimizers]
    step = 0
    with reporter.task(f"{name}: epoch 0/{epochs}", total=epochs * steps_per_epoch, unit="step") as task:
        for epoch in range(epochs):
            order = train_idx[torch.randperm(len(train_idx), generator=gen)]
            total, count = 0.0, 0
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                for s in schedules:
                    s(step)
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
            entry = {"epoch": epoch + 1, "train_loss": total / max(count, 1), **_evaluate(logits_fn, feats[val_idx], labels[val_idx])}
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
    """Train adapter and negative features; `synth_targets` index rows of `neg_init`."""
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

    def adapter_logits(f):
        return LOGIT_SCALE * adapter(f) @ torch.cat([id_text, frozen_neg]).T

    def negative_logits(f):
        return LOGIT_SCALE * f @ torch.cat([id_text, F.normalize(negatives, dim=-1)]).T

    def joint_logits(f):
        return LOGIT_SCALE * adapter(f) @ torch.cat([id_text, F.normalize(negatives, dim=-1)]).T

    adam = torch.optim.Adam(adapter.parameters(), lr=cfg.adapter_lr, weight_decay=cfg.adapter_weight_decay)
    sgd = torch.optim.SGD([negatives], lr=cfg.negatives_lr, momentum=cfg.negatives_momentum, weight_decay=cfg.negatives_weight_decay)
    if cfg.joint:
        epochs = max(cfg.adapter_epochs, cfg.negatives_epochs)
        _run_stage("joint", [adam, sgd], joint_logits, all_feats, all_labels, epochs, cfg.batch_size, cfg.adapter_min_lr, gen, reporter, history)
    else:
        _run_stage("adapter", [adam], adapter_logits, all_feats, all_labels, cfg.adapter_epochs, cfg.batch_size, cfg.adapter_min_lr, gen, reporter, history)
        synth_feats = synth_features.float().cpu()
        _run_stage("negatives", [sgd], negative_logits, synth_feats, synth_targets.long().cpu() + k, cfg.negatives_epochs, cfg.batch_size, 0.0, gen, reporter, history)
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


@dataclass
class Checkpoint:
    """A loaded checkpoint: the adapter, the fine-tuned negatives and the model they belong to."""

    adapter: Adapter
    negative_features: torch.Tensor
    labels: list[str]
    manifest: dict

    @property
    def base_model(self) -> str:
        return self.manifest["config"]["base_model"]


def save_checkpoint(folder: Path, result: TrainResult, labels: list[str]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in result.adapter.state_dict().items()}, str(folder / "adapter.safetensors"))
    save_file({"features": result.negative_features.contiguous()}, str(folder / "negatives.safetensors"))
    (folder / "labels.json").write_text(json.dumps(labels, indent=0))


def load_checkpoint(store: Store, ref: str, expected_model: str | None = None) -> Checkpoint:
    """Load from a store ref or a checkpoint folder; refuse pickles and checkpoints of another model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(ref).expanduser()
    _refuse_file(path, ref)
    if path.is_dir():
        folder = path
        manifest = json.loads((folder / "manifest.json").read_text()) if (folder / "manifest.json").exists() else {}
    else:
        art = store.find(ref, kind="checkpoint")
        folder, manifest = art.path, art.manifest
    for f in ("adapter.safetensors", "negatives.safetensors", "labels.json"):
        if not (folder / f).is_file():
            raise UsageError(f"checkpoint {ref} has no {f}", hint="checkpoints are made by `synood finetune`")
    base = manifest.get("config", {}).get("base_model")
    if expected_model is not None and base != expected_model:
        raise UsageError(
            f"checkpoint {ref} was trained on {base}, but the model in use is {expected_model}",
            hint="use the same --model/--pretrained (or --profile) as the finetune run",
        )
    try:
        state = load_file(str(folder / "adapter.safetensors"))
        negatives = load_file(str(folder / "negatives.safetensors"))["features"]
    except (SafetensorError, OSError, KeyError) as e:
        raise UsageError(f"checkpoint {ref} is damaged: {e}", hint="rerun `synood finetune`") from None
    adapter = Adapter(negatives.shape[1])
    adapter.load_state_dict(state)
    return Checkpoint(adapter.eval().requires_grad_(False), negatives, json.loads((folder / "labels.json").read_text()), manifest)


def config_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)


def checkpoint_classes(store: Store, ref: str) -> list[str]:
    """The ID class names a checkpoint was trained with."""
    path = Path(ref).expanduser()
    _refuse_file(path, ref)  # score/evaluate call this first: give the same refusal as load_checkpoint
    folder = path if path.is_dir() else store.find(ref, kind="checkpoint").path
    f = folder / "classes.json"
    if not f.is_file():
        raise UsageError(f"checkpoint {ref} has no classes.json", hint="checkpoints are made by `synood finetune`")
    return json.loads(f.read_text())
