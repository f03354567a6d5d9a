"""Train the world's inpainting model on CPU, resumably; export it as a diffusers folder.

    python -m synood_cli.world.train_inpaint RUN --vae-steps 1000 --unet-steps 1500 [--max-minutes M]
    python -m synood_cli.world.train_inpaint RUN --export synood_cli/world/weights/inpaint

Not part of CI or of the `synood` CLI: the project runs it once and ships the result. Two phases,
as Stable Diffusion was made: first the VAE (L1 + MSE reconstruction and a small KL, on random
32 px crops: the VAE is convolutional, and crops cost a quarter), then the UNet and the text encoder
together with the inpainting objective (epsilon prediction on the 9-channel input) while the VAE
stays frozen. Joint training of the text encoder: a random one would hand the UNet token mixtures
it must untangle in its few cross-attention layers; trained, it costs 3% of a step.

Data: world images of every kind (ID, near- and far-OOD kinds: real SD knows more than ImageNet),
empty contexts and full-frame patterns, from the CLIP-training stream at labels no CLIP batch uses,
never from the validation or OOD streams. Masks: the full mask SynOOD uses (masked image all zero,
i.e. gray), a box over the object, or a random box. Captions: the image's caption, a context-only
prompt as synood's prompt stage writes it ("A photo only remain brick wall."), or "" (for
classifier-free guidance). Everything a step sees is a pure function of (seed, step), so a resumed
run sees what an uninterrupted one would.

Checkpoints (`vae.safetensors` / `unet.safetensors` with the AdamW moments, and `state.json`) are
written atomically every --every steps and at the end of a time-limited chunk; a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from synood_cli.world import inpaint_model as im
from synood_cli.world import spec

LABEL_BASE = 1_000_000  # CLIP batches draw clip_train images at label = step; these labels are never used there
P_CAPTION = {"caption": 0.6, "context": 0.25, "empty": 0.15}
P_MASK = {"full": 0.4, "object_box": 0.35, "random_box": 0.25}


def _make_attrs(r):
    u = r.random()
    if u < 0.06:
        return spec.pattern_attrs(r)
    if u < 0.16:
        return spec.empty_attrs(r)
    return spec.object_attrs(r, spec.KIND_NAMES[int(r.integers(len(spec.KIND_NAMES)))])


def world_batch(seed: int, label: int, n: int):
    """(uint8 images [n, 64, 64, 3], bool object masks [n, 64, 64], attrs) drawn at clip_train label `label`.

    Labels: LABEL_BASE + step for UNet steps, 2 * LABEL_BASE + step for VAE steps, 3 * LABEL_BASE for
    the latent scale; CLIP batches draw at label = step, far below.
    """
    out = [spec.draw(seed, "clip_train", label, i, _make_attrs) for i in range(n)]
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out]), [o[2] for o in out]


def context_prompt(attrs: dict, rng) -> str:
    phrases = im.context_phrases()[attrs["context"]]
    return im.CONTEXT_TEMPLATE.format(context=phrases[int(rng.integers(len(phrases)))])


def masks_and_captions(seed: int, step: int, obj_masks: np.ndarray, attrs: list):
    """(float pixel masks [n, 1, 64, 64], 1 = to inpaint; captions; mask kinds) of step `step`."""
    rng = np.random.default_rng([int(seed), 2000, int(step)])
    n, size = obj_masks.shape[0], obj_masks.shape[1]
    masks = np.zeros((n, 1, size, size), np.float32)
    captions, kinds = [], []
    for i, a in enumerate(attrs):
        kind = rng.choice(list(P_MASK), p=list(P_MASK.values()))
        if kind == "object_box" and not obj_masks[i].any():
            kind = "random_box"
        if kind == "full":
            masks[i] = 1
        elif kind == "object_box":
            ys, xs = np.nonzero(obj_masks[i])
            pad = int(rng.integers(1, 7))
            masks[i, 0, max(0, ys.min() - pad): ys.max() + 1 + pad, max(0, xs.min() - pad): xs.max() + 1 + pad] = 1
        else:
            h, w = (int(v) for v in rng.integers(12, 49, size=2))
            y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            masks[i, 0, y: y + h, x: x + w] = 1
        c = rng.choice(list(P_CAPTION), p=list(P_CAPTION.values()))
        if c == "context" and a["type"] == "pattern":
            c = "caption"
        captions.append("" if c == "empty" else context_prompt(a, rng) if c == "context" else spec.caption(a))
        kinds.append(str(kind))
    return masks, captions, kinds


def to_pm1(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def _lr(step: int, total: int, peak: float, warmup: int) -> float:
    """Warm-up, constant, linear decay over the last fifth (only the last fifth depends on `total`)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    decay_from = int(total * 0.8)
    return peak if step < decay_from else peak * (1.0 - 0.95 * (step - decay_from) / max(1, total - decay_from))


def _atomic_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _save(path: Path, modules: dict, opt) -> None:
    from safetensors.torch import save_file

    tensors, names = {}, {}
    for prefix, m in modules.items():
        tensors.update({f"{prefix}.{k}": v.detach().contiguous().clone() for k, v in m.state_dict().items()})
        names.update({id(p): f"{prefix}.{n}" for n, p in m.named_parameters()})
    for group in opt.param_groups:
        for p in group["params"]:
            for k, v in opt.state.get(p, {}).items():
                tensors[f"opt.{names[id(p)]}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous().clone()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def _load(path: Path, modules: dict, opt=None) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    params = {}
    for prefix, m in modules.items():
        m.load_state_dict({k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}, strict=True)
        params.update({f"{prefix}.{n}": p for n, p in m.named_parameters()})
    if opt is not None:
        for key, v in tensors.items():
            if key.startswith("opt."):
                name, slot = key[4:].rsplit(".", 1)
                opt.state[params[name]][slot] = v


def _generator(seed: int, phase: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.default_rng([seed, phase, step]).integers(2**62)))


def vae_loss(vae, x: torch.Tensor, kl_weight: float, gen: torch.Generator):
    post = vae.encode(x).latent_dist
    rec = vae.decode(post.sample(generator=gen)).sample
    l1, mse, kl = (rec - x).abs().mean(), (rec - x).pow(2).mean(), post.kl().mean()
    return l1 + mse + kl_weight * kl, {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}


def random_crops(x: torch.Tensor, size: int, rng) -> torch.Tensor:
    n, _, h, w = x.shape
    ys, xs = rng.integers(0, h - size + 1, n), rng.integers(0, w - size + 1, n)
    return torch.stack([x[i, :, ys[i]: ys[i] + size, xs[i]: xs[i] + size] for i in range(n)])


@torch.no_grad()
def latent_scale(vae, seed: int, n: int = 256) -> float:
    """1 / std of the VAE's latents over world images (SD's scaling_factor, measured as SD did)."""
    images, _, _ = world_batch(seed, 3 * LABEL_BASE, n)
    z = torch.cat([vae.encode(to_pm1(images[i: i + 64])).latent_dist.mode() for i in range(0, n, 64)])
    return float(1.0 / z.std())


def unet_loss(unet, vae, text, tokenizer, noise_sched, scale: float, seed: int, step: int, batch: int):
    """The inpainting objective: predict the noise from (noisy latent, mask, masked-image latent, caption)."""
    images, obj_masks, attrs = world_batch(seed, LABEL_BASE + step, batch)
    masks, captions, _ = masks_and_captions(seed, step, obj_masks, attrs)
    gen = _generator(seed, 2, step)
    x = to_pm1(images)
    m = torch.from_numpy(masks)
    with torch.no_grad():
        z = vae.encode(x).latent_dist.sample(generator=gen) * scale
        masked = vae.encode(x * (m < 0.5)).latent_dist.mode() * scale  # as the SD inpainting pipeline masks
        m_lat = torch.nn.functional.interpolate(m, size=z.shape[-2:])
    eps = torch.randn(z.shape, generator=gen)
    t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,), generator=gen)
    noisy = noise_sched.add_noise(z, eps, t)
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    emb = text(ids)[0]
    pred = unet(torch.cat([noisy, m_lat, masked], 1), t, encoder_hidden_states=emb).sample
    return torch.nn.functional.mse_loss(pred, eps)


def train(run: Path, vae_steps: int, unet_steps: int, seed: int = 0, batch: int = 32, vae_lr: float = 1e-3,
          unet_lr: float = 5e-4, kl_weight: float = 1e-6, every: int = 50, max_minutes: float = 1e9, threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    run.mkdir(parents=True, exist_ok=True)
    unet, vae, text, tokenizer, noise_sched = im.build_components(seed, run / "tokenizer")
    recipe = {"seed": seed, "batch": batch, "vae_lr": vae_lr, "unet_lr": unet_lr, "kl_weight": kl_weight, "warmup": 50,
              "vae_crop": 32, "p_caption": P_CAPTION, "p_mask": P_MASK, "vae": im.VAE, "unet": im.UNET, "text": im.TEXT}
    state = {"vae_step": 0, "unet_step": 0, "vae_steps": vae_steps, "unet_steps": unet_steps, "recipe": recipe,
             "wall_s": {"vae": 0.0, "unet": 0.0}, "latent_scale": None, "log": [], "threads": threads}
    if (run / "state.json").exists():
        state = json.loads((run / "state.json").read_text())
        if state["recipe"] != json.loads(json.dumps(recipe)):
            raise SystemExit(f"{run} was started with another recipe: {state['recipe']}")
        for phase, n in (("vae", vae_steps), ("unet", unet_steps)):
            done, old = state[f"{phase}_step"], state[f"{phase}_steps"]
            if n != old and done > int(0.8 * min(n, old)):
                raise SystemExit(f"{run}: the {phase} phase is already decaying towards {old} steps")
            state[f"{phase}_steps"] = n
        print(f"resuming at vae step {state['vae_step']}, unet step {state['unet_step']}", file=sys.stderr)
    started = time.time()
    deadline = started + max_minutes * 60

    # ---- phase 1: the VAE ----
    vae_opt = torch.optim.AdamW(vae.parameters(), lr=vae_lr, weight_decay=0.0)
    if (run / "vae.safetensors").exists():
        _load(run / "vae.safetensors", {"vae": vae}, vae_opt)
    vae.train()
    hist: dict[str, list] = {}
    t_phase = time.time()
    wall0 = state["wall_s"]["vae"]
    while state["vae_step"] < state["vae_steps"]:
        step = state["vae_step"]
        images, _, _ = world_batch(seed, 2 * LABEL_BASE + step, batch)
        x = random_crops(to_pm1(images), 32, np.random.default_rng([seed, 3000, step]))
        for g in vae_opt.param_groups:
            g["lr"] = _lr(step, state["vae_steps"], vae_lr, 50)
        loss, parts = vae_loss(vae, x, kl_weight, _generator(seed, 1, step))
        vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        vae_opt.step()
        for k, v in parts.items():
            hist.setdefault(k, []).append(v)
        state["vae_step"] = done = step + 1
        state["wall_s"]["vae"] = wall0 + time.time() - t_phase
        out_of_time = time.time() > deadline
        if done % every == 0 or done == state["vae_steps"] or out_of_time:
            entry = {"phase": "vae", "step": done, "wall_s": round(state["wall_s"]["vae"], 1),
                     **{k: round(float(np.mean(v[-every:])), 5) for k, v in hist.items()}}
            state["log"].append(entry)
            print(json.dumps(entry), file=sys.stderr, flush=True)
            _save(run / "vae.safetensors", {"vae": vae}, vae_opt)
            _atomic_json(run / "state.json", state)
        if out_of_time and done < state["vae_steps"]:
            print(f"chunk ends at vae step {done}; run again to resume", file=sys.stderr)
            return state
    vae.eval().requires_grad_(False)
    if state["latent_scale"] is None:
        state["latent_scale"] = latent_scale(vae, seed)
        _atomic_json(run / "state.json", state)
    scale = state["latent_scale"]

    # ---- phase 2: UNet + text encoder ----
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=unet_lr, weight_decay=0.01)
    if (run / "unet.safetensors").exists():
        _load(run / "unet.safetensors", {"unet": unet, "text": text}, opt)
    unet.train()
    text.train()
    losses = []
    t_phase = time.time()
    wall0 = state["wall_s"]["unet"]
    while state["unet_step"] < state["unet_steps"]:
        step = state["unet_step"]
        for g in opt.param_groups:
            g["lr"] = _lr(step, state["unet_steps"], unet_lr, 50)
        loss = unet_loss(unet, vae, text, tokenizer, noise_sched, scale, seed, step, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        state["unet_step"] = done = step + 1
        state["wall_s"]["unet"] = wall0 + time.time() - t_phase
        out_of_time = time.time() > deadline
        if done % 10 == 0:
            print(f"unet step {done} loss {np.mean(losses[-10:]):.4f}", file=sys.stderr, flush=True)
        if done % every == 0 or done == state["unet_steps"] or out_of_time:
            entry = {"phase": "unet", "step": done, "wall_s": round(state["wall_s"]["unet"], 1),
                     "loss": round(float(np.mean(losses[-every:])), 5)}
            state["log"].append(entry)
            print(json.dumps(entry), file=sys.stderr, flush=True)
            _save(run / "unet.safetensors", {"unet": unet, "text": text}, opt)
            _atomic_json(run / "state.json", state)
        if out_of_time and done < state["unet_steps"]:
            print(f"chunk ends at unet step {done}; run again to resume", file=sys.stderr)
            return state
    return state


def export(run: Path, out: Path) -> dict:
    """Write the diffusers folder (fp16 storage) and, next to it, synood-world-inpaint.json (hashes, training record)."""
    state = json.loads((run / "state.json").read_text())
    if state["unet_step"] < state["unet_steps"] or not (run / "unet.safetensors").exists():
        raise SystemExit(f"{run} has not finished training (unet step {state['unet_step']} of {state['unet_steps']})")
    unet, vae, text, tokenizer, sched = im.build_components(state["recipe"]["seed"], run / "tokenizer")
    _load(run / "vae.safetensors", {"vae": vae})
    _load(run / "unet.safetensors", {"unet": unet, "text": text})
    vae.register_to_config(scaling_factor=state["latent_scale"])
    files = im.save_pipeline(out, unet, vae, text, tokenizer, sched)
    last = {p: next((e for e in reversed(state["log"]) if e["phase"] == p), None) for p in ("vae", "unet")}
    record = {
        "name": im.NAME, "files": files, "format": "diffusers StableDiffusionInpaintPipeline folder, safetensors, fp16 storage",
        "parameters": {k: sum(p.numel() for p in m.parameters()) for k, m in (("unet", unet), ("vae", vae), ("text_encoder", text))},
        "training": {"recipe": state["recipe"], "vae_steps": state["vae_step"], "unet_steps": state["unet_step"],
                     "wall_s": state["wall_s"], "threads": state.get("threads"), "latent_scale": state["latent_scale"],
                     "final": last, "machine": "2-core shared CPU, no GPU, nice 19"},
    }
    _atomic_json(out.parent / f"{im.NAME}.json", record)
    return record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--vae-steps", type=int, default=1000)
    ap.add_argument("--unet-steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--every", type=int, default=50, help="checkpoint every N steps")
    ap.add_argument("--max-minutes", type=float, default=1e9, help="end this chunk after this long (resumable)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--export", type=Path, help="write the diffusers folder here (and its hash record next to it)")
    a = ap.parse_args(argv)
    if a.export:
        rec = export(a.run, a.export)
        print(json.dumps(rec["files"], indent=1))
        return 0
    train(a.run, a.vae_steps, a.unet_steps, a.seed, a.batch, every=a.every, max_minutes=a.max_minutes, threads=a.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
