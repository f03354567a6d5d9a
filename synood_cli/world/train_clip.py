"""Train the world's small CLIP on CPU, resumably; export its weights for the package.

    python -m synood_cli.world.train_clip RUN_DIR --steps 2400          # start or resume
    python -m synood_cli.world.train_clip RUN_DIR --export OUT.safetensors  # fp16 weights + sha256

Not part of CI or of the `synood` CLI: the project runs it once and ships the result
(synood_cli/world/weights/). The model is built by the same open_clip `create_model` call, from the
same config JSON (profiles/models/synood-world-clip.json), that loads the shipped weights. The
recipe follows /work/shared/WORLD-NOTES.md: a ModifiedResNet vision tower, batches whose captions
differ only in the object (world/batches.py), symmetric contrastive loss, AdamW with warm-up and
cosine decay, prompt-ensembled zero-shot kind accuracy logged while training.

A checkpoint (every --every steps and at the end of a chunk) is `checkpoint.safetensors` (model
and AdamW moments) plus `state.json` (step, recipe, wall time, log), each written atomically.
The token embedding is trained without weight decay, so the rows of tokens no caption uses (the
lexicon's words that name nothing in the world) keep their seeded initial values. For the first
`--plain-steps` steps, groups are more often solid and upright (world/batches.py, `p_plain`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ARCH = "synood-world-clip"


def build_model(seed: int):
    """The world CLIP's architecture, random weights from `seed`, through open_clip."""
    from synood_cli.models.clip import _quiet_root_logger, _register_tiny_configs

    import open_clip

    _register_tiny_configs()
    torch.manual_seed(seed)
    with _quiet_root_logger():
        model = open_clip.create_model(ARCH, pretrained=None)
    return model, open_clip.get_tokenizer(ARCH)


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, 64, 64, 3] -> the normalised tensor open_clip's eval transform makes at 64 px."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def kind_text_features(model, tokenizer, kinds) -> torch.Tensor:
    """One prompt-ensembled, normalised text feature per kind."""
    from synood_cli.world.batches import ensemble_prompts

    feats = []
    for kind in kinds:
        t = torch.nn.functional.normalize(model.encode_text(tokenizer(ensemble_prompts(kind))), dim=-1).mean(0)
        feats.append(torch.nn.functional.normalize(t, dim=0))
    return torch.stack(feats)


@torch.no_grad()
def zero_shot(model, tokenizer, images: np.ndarray, labels: np.ndarray) -> dict:
    """Zero-shot kind accuracy: over all kinds, and over ID kinds on ID images."""
    from synood_cli.world import spec

    model.eval()
    text = kind_text_features(model, tokenizer, spec.KIND_NAMES)
    img = torch.cat([model.encode_image(to_pixels(images[i : i + 256])) for i in range(0, len(images), 256)])
    sim = torch.nn.functional.normalize(img, dim=-1) @ text.T
    lab = torch.from_numpy(labels)
    all_acc = (sim.argmax(1) == lab).float().mean().item()
    n_id = len(spec.ID_NAMES)
    is_id = lab < n_id  # KIND_NAMES lists the ID kinds first
    id_acc = (sim[is_id][:, :n_id].argmax(1) == lab[is_id]).float().mean().item()
    model.train()
    return {"zero_shot_all_kinds": round(all_acc, 4), "zero_shot_id": round(id_acc, 4)}


def _lr(step: int, total: int, peak: float, warmup: int) -> float:
    """Warm-up, then constant, then a linear decay over the last fifth to 2% of the peak.

    Only the last fifth depends on `total`, so a run can be lengthened or shortened while it is
    still in the constant phase (the CPU time this machine gives is not known in advance).
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    decay_from = int(total * 0.8)
    if step < decay_from:
        return peak
    return peak * (1.0 - 0.98 * (step - decay_from) / max(1, total - decay_from))


def p_plain(step: int, plain_steps: int) -> float:
    """Share of plain (solid, upright) groups: 1 at the start, down to 0.25 at `plain_steps`."""
    if plain_steps <= 0:
        return 0.0
    return max(0.25, 1.0 - 0.75 * step / plain_steps)


def _atomic_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _save(run: Path, model, opt, state: dict) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            for k, v in opt.state.get(p, {}).items():
                tensors[f"opt.{names[id(p)]}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous().clone()
    tmp = run / "checkpoint.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, run / "checkpoint.safetensors")
    _atomic_json(run / "state.json", state)


def _load(run: Path, model, opt) -> dict:
    from safetensors.torch import load_file

    tensors = load_file(str(run / "checkpoint.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    params = dict(model.named_parameters())
    for key, v in tensors.items():
        if key.startswith("opt."):
            name, slot = key[4:].rsplit(".", 1)
            opt.state[params[name]][slot] = v
    return json.loads((run / "state.json").read_text())


def make_optimizer(model, lr: float, wd: float):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "positional" not in n and "token_embedding" not in n else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def train(run: Path, steps: int, seed: int, lr: float, every: int, eval_every: int, max_minutes: float, threads: int,
          plain_steps: int = 1000) -> dict:
    from synood_cli.world.batches import eval_set, train_batch

    torch.set_num_threads(threads)
    run.mkdir(parents=True, exist_ok=True)
    model, tokenizer = build_model(seed)
    opt = make_optimizer(model, lr, 0.1)
    recipe = {"arch": ARCH, "seed": seed, "lr": lr, "weight_decay": 0.1, "warmup": 100, "batch": 128,
              "groups": 8, "plain_steps": plain_steps, "threads": threads}
    state = {"step": 0, "steps": steps, "recipe": recipe, "wall_s": 0.0, "log": []}
    if (run / "state.json").exists():
        state = _load(run, model, opt)
        if state["recipe"] != recipe:
            raise SystemExit(f"{run} was started with another recipe: {state['recipe']}")
        if state["steps"] != steps:
            if state["step"] > int(0.8 * min(steps, state["steps"])):
                raise SystemExit(f"{run} is already decaying towards {state['steps']} steps; it cannot be changed to {steps}")
            print(f"length changed from {state['steps']} to {steps} steps (still in the constant phase)", file=sys.stderr)
            state["steps"] = steps
        print(f"resuming at step {state['step']}", file=sys.stderr)
    ev_images, ev_labels = eval_set(seed + 1)
    model.train()
    started = time.time()
    chunk_start = state["wall_s"]
    losses = []
    while state["step"] < steps:
        step = state["step"]
        t0 = time.time()
        images, captions = train_batch(seed, step, p_plain=p_plain(step, plain_steps))
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, lr, recipe["warmup"])
        img_f, txt_f, scale = model(to_pixels(images), tokenizer(captions))
        logits = scale * img_f @ txt_f.T
        target = torch.arange(len(captions))
        loss = (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        state["step"] = step + 1
        state["wall_s"] = chunk_start + (time.time() - started)
        done = state["step"]
        if done % eval_every == 0 or done == steps:
            entry = {"step": done, "loss": round(float(np.mean(losses[-eval_every:])), 4), "wall_s": round(state["wall_s"], 1),
                     **zero_shot(model, tokenizer, ev_images, ev_labels)}
            state["log"].append(entry)
            print(json.dumps(entry), file=sys.stderr, flush=True)
        if done % every == 0 or done == steps or (time.time() - started) > max_minutes * 60:
            _save(run, model, opt, state)
            if (time.time() - started) > max_minutes * 60 and done < steps:
                print(f"chunk ends at step {done}; run again to resume", file=sys.stderr)
                break
        if done % 10 == 0:
            print(f"step {done} loss {np.mean(losses[-10:]):.3f} {time.time() - t0:.2f}s/step", file=sys.stderr, flush=True)
    return state


def export(run: Path, out: Path) -> str:
    """fp16 weights of the run's model (open_clip state dict names), written atomically; returns sha256."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(run / "checkpoint.safetensors"))
    model = {k[6:]: v.to(torch.float16).contiguous() for k, v in tensors.items() if k.startswith("model.")}
    tmp = out.with_suffix(".tmp")
    save_file(model, str(tmp), metadata={"arch": ARCH, "format": "open_clip state dict, fp16 storage"})
    os.replace(tmp, out)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--every", type=int, default=50, help="checkpoint every N steps")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--max-minutes", type=float, default=1e9, help="end this chunk after this long (resumable)")
    ap.add_argument("--plain-steps", type=int, default=1000, help="curriculum: plain groups fade to 25%% by this step")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is faster on a shared 2-core machine)")
    ap.add_argument("--export", type=Path, help="write the fp16 weights here and print their sha256")
    a = ap.parse_args(argv)
    if a.export:
        print(export(a.run, a.export))
        return 0
    train(a.run, a.steps, a.seed, a.lr, a.every, a.eval_every, a.max_minutes, a.threads, a.plain_steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
