"""`synood prompt`: select ID source images and ask an MLLM for their context (docs/method.md, sections 1-2).

The answer ("bamboo, tourists, railings" for a panda photo) is cleaned of the class's own names
and becomes the diffusion prompt "A photo only remain {context}.", cut at whole words to fit the
77 tokens of the diffusion text tokenizer (the research code cut at 73 characters).

The output is a `prompts` artifact: `prompts.jsonl` (one row per image: image_path, class_index,
class_name, context, prompt, backend, model), appended and fsynced per finished batch, plus
`failures.jsonl` (unreadable images, empty answers). A rerun of the same command resumes: done
images are skipped, a torn last line is cut off, a killed run loses at most the batch in flight.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from synood_cli.data.folders import ImageSet
from synood_cli.data.ranges import format_class_spec, parse_class_spec
from synood_cli.data.selection import Selection, select_images
from synood_cli.errors import UsageError
from synood_cli.models.mllm import Answerer, MllmSpec, load_answerer, validate_mllm
from synood_cli.reporting import NullReporter, Reporter
from synood_cli.store import Artifact, Store, append_jsonl, read_jsonl

DEFAULT_QUESTION = "List the objects and scenery in this image other than the {class_name}, as a short comma-separated list."
PROMPT_TEMPLATE = "A photo only remain {context}."
MAX_TOKENS = 77  # CLIP text encoders of Stable Diffusion: 75 tokens plus start and end
ROWS = "prompts.jsonl"
FAILURES = "failures.jsonl"
SCHEMA = 2  # 2: the id hashes the images' names below the folder and contents, not the folder's path

_LEAD_INS = re.compile(
    r"^\s*(the image (shows|contains|features|depicts)|in (this|the) image,?( there (is|are))?|there (is|are)|"
    r"this image (shows|contains)|i see|the (objects|elements) (are|include)|objects:|scenery:)\s*:?\s*",
    re.IGNORECASE,
)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")


def _plural_forms(name: str) -> list[str]:
    forms = [name]
    if name.endswith(("s", "x", "ch", "sh")):
        forms.append(name + "es")
    elif name.endswith("y") and len(name) > 1 and name[-2] not in "aeiou":
        forms.append(name[:-1] + "ies")
    else:
        forms.append(name + "s")
    return forms


def subject_names(class_name: str, synonyms: set[str] | None = None) -> list[str]:
    """The class name, its WordNet first-sense synonyms, and their plurals, longest first."""
    names = {class_name.lower().strip()} | {s.lower() for s in (synonyms or set())}
    forms = {f for n in names if n for f in _plural_forms(n)}
    return sorted(forms, key=len, reverse=True)


def clean_answer(answer: str, subject: list[str]) -> str:
    """Drop lead-ins, bullets and the subject's names; keep a de-duplicated comma list ('' if nothing is left)."""
    text = re.sub(r"\s+", " ", answer.replace("\n", ", ")).strip()
    text = _LEAD_INS.sub("", text)
    items = []
    for raw in re.split(r"[,;]|\band\b", text):
        item = _BULLET.sub("", raw).strip(" .:!\"'")
        for name in subject:
            item = re.sub(rf"\b(?:a|an|the)?\s*{re.escape(name)}\b", " ", item, flags=re.IGNORECASE)
        item = re.sub(r"\s+", " ", item).strip(" .:-")
        if item and item.lower() not in (i.lower() for i in items) and item.lower() not in ("a", "an", "the"):
            items.append(item)
    return ", ".join(items)


def clip_token_counter() -> Callable[[str], int]:
    """Tokens of the Stable Diffusion text tokenizer (OpenAI CLIP BPE, which open_clip ships) incl. start/end."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    return lambda text: len(tok.encode(text)) + 2


def fit_prompt(context: str, count_tokens: Callable[[str], int], max_tokens: int = MAX_TOKENS) -> str:
    """`PROMPT_TEMPLATE` with the context cut at the last whole word (and comma) that fits."""
    words = context.split()
    prompt = PROMPT_TEMPLATE.format(context=context)
    if count_tokens(prompt) <= max_tokens:
        return prompt
    lo, hi = 0, len(words)  # binary search on the number of words kept
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(PROMPT_TEMPLATE.format(context=" ".join(words[:mid]).rstrip(","))) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return PROMPT_TEMPLATE.format(context=" ".join(words[:lo]).rstrip(","))


@dataclass
class PromptConfig:
    """Everything that defines a prompts artifact (batch size and concurrency do not change results)."""

    folder: Path
    mllm: MllmSpec
    classes: str | None = None
    per_class: int | None = 50
    select: str = "bytes-per-pixel"
    seed: int = 0
    question: str = DEFAULT_QUESTION
    max_new_tokens: int = 64
    classnames: Path | None = None
    data_root: Path | None = None  # for an image list: the folder its paths are relative to
    image_column: str | None = None  # for a table (hf:, save_to_disk, Parquet) with several image columns
    label_column: str | None = None
    batch_size: int = 8
    auto_batch: bool = False  # --batch-size auto: on CUDA measured once the MLLM is loaded; batch_size is the CPU value
    device: str = "auto"
    precision: str = "auto"


@dataclass
class PromptPlan:
    """What will be asked, decided before any model loads.

    `settings` and `location` (where the images are: `folder`, `image_list`) make up the manifest's
    config; the artifact id hashes `settings` and the selected images' names below the folder and
    contents instead of the location (`identity`), so the same images give the same id wherever
    they lie (examples.md's ids reproduce), and an edited image gives another.
    """

    config: PromptConfig
    image_set: ImageSet
    classes: list[int]
    selection: Selection
    settings: dict = field(default_factory=dict)
    location: dict = field(default_factory=dict)
    _identity: dict | None = field(default=None, repr=False)

    @property
    def identity(self) -> dict:
        """What the artifact id hashes (computed once: it reads every selected image)."""
        if self._identity is None:
            self._identity = {**self.settings, "images": images_digest(self)}
        return self._identity

    @property
    def artifact_config(self) -> dict:
        """The manifest's config: the identity plus where the images are (which later stages read them from)."""
        return {**self.identity, **self.location}


def images_digest(plan: PromptPlan) -> str:
    """sha256 over each selected image's key below the root, class, name and content sha256 (or why it is unreadable)."""
    from synood_cli.data.refs import image_key, read_image_bytes

    root = str(plan.image_set.root)
    names = plan.image_set.class_names
    h = hashlib.sha256()
    for p, c in plan.selection.items:
        try:
            content = hashlib.sha256(read_image_bytes(str(p))).hexdigest()
        except OSError as e:  # read again (and reported) when it is asked about
            content = f"unreadable: {e.strerror or type(e).__name__}"
        h.update(f"{image_key(str(p), root)}\t{c}\t{names[c] if c < len(names) else ''}\t{content}\n".encode())
    for p, _ in plan.selection.unreadable:
        h.update(f"{image_key(str(p), root)}\tunreadable at selection\n".encode())
    return h.hexdigest()[:16]


def plan_prompts(cfg: PromptConfig, reporter: Reporter = NullReporter()) -> PromptPlan:
    """Validate inputs and select the images (exit 2 on bad input, before any model loads)."""
    if "{class_name}" not in cfg.question:
        raise UsageError("--question must contain {class_name}", hint=f"e.g. {DEFAULT_QUESTION!r}")
    if cfg.batch_size < 1 or cfg.max_new_tokens < 1:
        raise UsageError("--batch-size and --max-new-tokens must be at least 1")
    from synood_cli.data.sources import InputOptions, open_image_set

    image_set = open_image_set(str(cfg.folder), options=InputOptions(data_root=cfg.data_root, classnames=cfg.classnames,
                                                                      image_column=cfg.image_column, label_column=cfg.label_column))
    if image_set.reader is not None:
        from synood_cli.data.refs import set_image_column

        set_image_column(str(image_set.root), cfg.image_column)  # rows are named ROOT#ROW
    if not image_set.classes:
        what = "a flat folder" if image_set.layout == "flat" else "a set without class labels"
        raise UsageError(f"{image_set.root} is {what}; prompt needs one subfolder per class (or a labelled image list)",
                         hint="arrange the images as FOLDER/<class>/*.jpg")
    classes = parse_class_spec(cfg.classes, len(image_set.classes))
    validate_mllm(cfg.mllm)
    from dataclasses import replace

    from synood_cli.models.mllm import resolve_image_fit

    image_fit = resolve_image_fit(cfg.mllm)
    if image_fit is not None:  # decided once here, from the model's config: the identity and the answerer agree
        cfg.mllm = replace(cfg.mllm, image_fit=image_fit)
    selection = select_images(image_set, classes, cfg.per_class, cfg.select, cfg.seed, reporter)
    art_cfg = {
        "schema": SCHEMA,
        "classes": format_class_spec(classes),
        "per_class": cfg.per_class,
        "select": cfg.select,
        "seed": cfg.seed if cfg.select == "random" else None,
        "backend": cfg.mllm.backend,
        "model": cfg.mllm.model,
        "question": cfg.question,
        "max_new_tokens": cfg.max_new_tokens,
        "template": PROMPT_TEMPLATE,
        "max_tokens": MAX_TOKENS,
    }
    if image_fit == "pad":  # recorded only when images are padded: other prompts keep their ids
        art_cfg["image_fit"] = "pad"
    location = {"folder": str(image_set.root)}
    if image_set.source:  # an image list: finetune reads the class list from it (folder = its data root)
        location["image_list"] = str(Path(image_set.source).resolve())
    for key in ("image_column", "label_column"):  # only when given
        if getattr(cfg, key):
            art_cfg[key] = getattr(cfg, key)
    return PromptPlan(cfg, image_set, classes, selection, art_cfg, location)


def prompts_artifact(store: Store, plan: PromptPlan) -> Artifact:
    """The artifact for these settings and images, wherever the images lie (see `PromptPlan`)."""
    return store.artifact("prompts", plan.identity)


def _load_image(path: Path):
    from synood_cli.data.refs import open_image

    return open_image(str(path)).convert("RGB")


def run_prompts(plan: PromptPlan, store: Store, name: str | None = None, reporter: Reporter = NullReporter()) -> Artifact:
    """Ask the MLLM about every selected image not yet done; resumable, one fsynced append per batch.

    Under torchrun/srun the images still to do are dealt out by batch (batch b to rank
    b % world, so each batch is the one a single process would ask), every rank appends to its
    own `prompts.rankR.jsonl`, and rank 0 merges the parts in selection order: the artifact is
    the same for any number of ranks, and a rerun with another number of ranks keeps every part.
    """
    from synood_cli import distributed

    r = distributed.ranks()
    art = prompts_artifact(store, plan)
    if r.leader and art.exists and art.manifest.get("config", {}).get("folder") != plan.location["folder"]:
        with art.lock():
            _relocate(plan, art, reporter)
    if r.active:
        distributed.barrier("moving the prompts to the images' new folder")
    if name and r.leader:
        store.set_name(name, art)
    if art.complete:  # (rank 0 cannot complete it before every rank has passed the barriers below)
        damaged = art.problems()
        if not damaged:
            reporter.info(f"{art.ref} is complete ({art.manifest['summary'].get('rows')} rows); nothing to do")
            return art
        reporter.warn(f"{art.ref} is damaged ({damaged[0]}); redoing what is missing")
    # one process: the artifact's exclusive lock; ranks: the artifact shared plus each rank's own part
    with art.lock(shared=r.active), (art.lock(part=f"rank{r.rank}") if r.active else contextlib.nullcontext()):
        todo_at = None
        if r.leader:
            todo_at = _prepare_resume(plan, art, reporter)
        todo_at = distributed.broadcast(todo_at, "planning the prompts")
        todo = [plan.selection.items[i] for i in todo_at]
        mine = distributed.batch_items(distributed.my_batches(len(todo), plan.config.batch_size, r), len(todo), plan.config.batch_size)
        rows_file, fails_file = (art.file(_part(ROWS, r.rank)), art.file(_part(FAILURES, r.rank))) if r.active else (art.file(ROWS), art.file(FAILURES))
        if mine:
            _ask(plan, store, [todo[i] for i in mine], rows_file, fails_file, reporter)
        distributed.barrier("prompting (waiting for the other ranks to finish their images)")
        if r.leader:
            rows, fails = _merge_parts(plan, art)
            art.finish(prompt_summary(plan, rows, fails))
        distributed.barrier("merging the prompt parts")
    return art


def _relocate(plan: PromptPlan, art: Artifact, reporter: Reporter) -> None:
    """Point an artifact made from the same images in another folder (moved or copied) at this folder.

    Its rows name images by path (synthesize and finetune read them there), so the paths, the
    manifest's folder and, for a complete artifact, its file hashes are rewritten; the answers are kept.
    """
    from synood_cli.store import atomic_write_bytes, atomic_write_json

    manifest = art.manifest
    old, new = str(manifest.get("config", {}).get("folder")), plan.location["folder"]
    if old == new:
        return  # another process moved it meanwhile

    def moved(path: str) -> str:
        if path == old or path.startswith(old + "/") or path.startswith(old + "#"):
            return new + path[len(old):]
        return path

    kept = {}
    for f in [art.file(ROWS), art.file(FAILURES), *_parts(art, ROWS), *_parts(art, FAILURES)]:
        if f.exists():
            rows = read_jsonl(f, repair=True)
            for row in rows:
                row["image_path"] = moved(row["image_path"])
            atomic_write_bytes(f, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode())
            kept[f.name] = rows
    complete = manifest.get("status") == "complete"
    manifest.update(config=plan.artifact_config, status="partial", files={})
    atomic_write_json(art.path / "manifest.json", manifest)
    if complete:
        art.finish(prompt_summary(plan, kept.get(ROWS, []), kept.get(FAILURES, [])))
    reporter.info(f"{art.ref} was made from the same images in {old}; it now reads them from {new}")


def _part(name: str, rank: int) -> str:
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.rank{rank}.{ext}"


def _parts(art: Artifact, name: str) -> list[Path]:
    """Every rank's part of `name`, from this launch or an earlier one with another number of ranks."""
    stem, ext = name.rsplit(".", 1)
    return sorted(art.path.glob(f"{stem}.rank*.{ext}"))


def _prepare_resume(plan: PromptPlan, art: Artifact, reporter: Reporter) -> list[int]:
    """Open the artifact for writing, cut torn lines, record unreadable images; the selection positions still to do."""
    art.reopen(remove_damaged=False)  # a torn rows.jsonl is cut at its last whole line below
    art.begin(plan.artifact_config, summary={"selected": len(plan.selection.items)})
    rows = read_jsonl(art.file(ROWS), repair=True) + [row for p in _parts(art, ROWS) for row in read_jsonl(p, repair=True)]
    fails = read_jsonl(art.file(FAILURES), repair=True) + [f for p in _parts(art, FAILURES) for f in read_jsonl(p, repair=True)]
    done = {r["image_path"] for r in rows} | {f["image_path"] for f in fails}
    append_jsonl(art.file(FAILURES), [{"image_path": str(p), "reason": f"unreadable: {r}"} for p, r in plan.selection.unreadable if str(p) not in done])
    todo_at = [i for i, (p, _) in enumerate(plan.selection.items) if str(p) not in done]
    if done:
        reporter.info(f"resuming {art.ref}: {len(rows)} rows done, {len(todo_at)} images to go")
    return todo_at


def _ask(plan: PromptPlan, store: Store, todo: list, rows_file: Path, fails_file: Path, reporter: Reporter) -> None:
    """Ask the MLLM about `todo` batch by batch, appending each finished batch to the two files."""
    from synood_cli.lexicons import wordnet_synonyms
    from synood_cli.runtime import resolve_device, resolve_dtype

    cfg = plan.config
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.precision, device)
    reporter.info(f"loading MLLM {cfg.mllm.label()}" + ("" if cfg.mllm.backend == "openai" else f" on {device}"))
    answerer = load_answerer(cfg.mllm, store, device, dtype, cfg.max_new_tokens)
    count_tokens = clip_token_counter()
    names = plan.image_set.class_names
    subjects = {c: subject_names(names[c], wordnet_synonyms(names[c])) for c in plan.classes}
    batch_size = auto_prompt_batch(answerer, cfg, device, len(todo), reporter) if cfg.auto_batch else cfg.batch_size
    with reporter.task("prompting", total=len(todo)) as task:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            images, ok, new_fails = [], [], []
            for p, c in batch:
                try:
                    images.append(_load_image(p))
                    ok.append((p, c))
                except Exception as e:  # noqa: BLE001 - reported and recorded, never fatal
                    reporter.warn(f"skipped {p}: unreadable image ({type(e).__name__}: {e})")
                    new_fails.append({"image_path": str(p), "reason": f"unreadable: {type(e).__name__}: {e}"})
            answers = answer_with_backoff(answerer, images, [cfg.question.format(class_name=names[c]) for _, c in ok], reporter) if ok else []
            new_rows = []
            for (p, c), answer in zip(ok, answers):
                context = clean_answer(answer, subjects[c])
                if not context:
                    new_fails.append({"image_path": str(p), "reason": "empty answer", "answer": answer})
                    continue
                new_rows.append({
                    "image_path": str(p),
                    "class_index": c,
                    "class_name": names[c],
                    "context": context,
                    "prompt": fit_prompt(context, count_tokens),
                    "backend": cfg.mllm.backend,
                    "model": cfg.mllm.model,
                })
            append_jsonl(rows_file, new_rows)
            append_jsonl(fails_file, new_fails)
            task.advance(len(batch))


def answer_with_backoff(answerer: Answerer, images: list, questions: list[str], reporter: Reporter = NullReporter()) -> list[str]:
    """`answerer.answer`, the batch halved on CUDA out-of-memory until its parts fit (batching.split_on_oom): same answers, in order."""
    from synood_cli.batching import split_on_oom

    def split(b: int, half: int) -> None:
        reporter.warn(f"CUDA out of memory at {b} images; asking {half} at a time")

    return split_on_oom(lambda lo, hi: answerer.answer(images[lo:hi], questions[lo:hi]), len(images), lambda a, b: a + b, split,
                        hint="lower --max-new-tokens, or use --precision bf16")


def auto_prompt_batch(answerer: Answerer, cfg: PromptConfig, device, n: int, reporter: Reporter) -> int:
    """--batch-size auto: from free GPU memory and a probe of 1 and 2 blank images asked the real question.

    An endpoint (--mllm openai) holds no local memory: its batch is the profile's. A probe's answer
    may stop before --max-new-tokens; the margin (80% of the free memory) and the back-off cover that.
    """
    from synood_cli.batching import choose_batch_size

    where = getattr(answerer, "device", None) or device
    if cfg.mllm.backend == "openai":
        where = "an endpoint"
    return choose_batch_size(where, prompt_probe(answerer, cfg), n, cfg.batch_size, "prompt", reporter)


def prompt_probe(answerer: Answerer, cfg: PromptConfig):
    """`probe(k)`: the real question about k blank 336 px images (LLaVA-1.5's input size)."""
    from PIL import Image

    def probe(k: int) -> None:
        blank = Image.new("RGB", (336, 336), (128, 128, 128))
        answerer.answer([blank] * k, [cfg.question.format(class_name="object")] * k)

    return probe


def _merge_parts(plan: PromptPlan, art: Artifact) -> tuple[list[dict], list[dict]]:
    """Fold every rank part into prompts.jsonl / failures.jsonl, in selection order, once per image.

    The order does not depend on how many ranks asked or in which runs; each file is replaced
    atomically before its parts are removed, so a kill in between only leaves duplicates that
    the next merge drops.
    """
    order = {str(p): i for i, (p, _) in enumerate(plan.selection.items)}
    out = []
    for name in (ROWS, FAILURES):
        parts = _parts(art, name)
        rows = read_jsonl(art.file(name)) + [row for p in parts for row in read_jsonl(p)]
        seen: set[str] = set()
        unique = [row for row in rows if not (row["image_path"] in seen or seen.add(row["image_path"]))]  # first one wins
        merged = sorted(unique, key=lambda row: order.get(row["image_path"], -1))  # stable: unreadable-at-selection first
        if parts or merged != rows:
            from synood_cli.store import atomic_write_bytes

            atomic_write_bytes(art.file(name), "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in merged).encode())
            for p in parts:
                p.unlink()
        out.append(merged)
    return out[0], out[1]


def prompt_summary(plan: PromptPlan, rows: list[dict], fails: list[dict]) -> dict:
    covered = sorted({r["class_index"] for r in rows})
    return {
        "selected": len(plan.selection.items),
        "rows": len(rows),
        "classes": format_class_spec(plan.classes),
        "classes_covered": len(covered),
        "empty_answers": sum(1 for f in fails if f["reason"] == "empty answer"),
        "unreadable": sum(1 for f in fails if f["reason"] != "empty answer"),
        "failures": [f"{f['image_path']}: {f['reason']}" for f in fails[:50]],
    }


def read_prompts(art: Artifact) -> list[dict]:
    return read_jsonl(art.file(ROWS))
