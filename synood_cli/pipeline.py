"""`synood run`: prompt -> synthesize -> finetune -> evaluate in one resumable call.

Each stage is an artifact whose id is a hash of its config and inputs, so a rerun after a crash
finds the finished stages and continues the unfinished one where it stopped (prompt rows per
batch, synthesis per class shard, features per group).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from synood_cli.reporting import NullReporter, Reporter
from synood_cli.store import Artifact, Store


@dataclass
class PipelineConfig:
    train: Path
    id_val: str  # any input spec (folder, image list, hf:NAME:SPLIT, Parquet)
    ood: list[tuple[str | None, str]]
    home: Path
    profile: str = "tiny"
    classes: str | None = None
    per_class: int | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    name: str | None = None
    data_root: Path | None = None  # image lists' paths resolve under it
    prompt_overrides: dict = field(default_factory=dict)
    synth_overrides: dict = field(default_factory=dict)
    methods: str = "neglabel,synood"  # evaluated side by side in stage 4 (the demo on the world adds mcm)
    lexicon: str | None = None  # negative-label candidates for finetune and evaluate (None: the profile's)


@dataclass
class PipelineResult:
    prompts: Artifact
    synth: Artifact
    checkpoint: Artifact
    evaluation: object


def run_pipeline(cfg: PipelineConfig, reporter: Reporter = NullReporter()) -> PipelineResult:
    from synood_cli.data.sources import InputOptions, open_image_set
    from synood_cli.finetuning import FinetuneConfig, profile_train_config, run_finetune
    from synood_cli.models.mllm import mllm_spec
    from synood_cli.profiles import load_profile
    from synood_cli.prompting import PromptConfig, plan_prompts, run_prompts
    from synood_cli.scoring import ScoringConfig, evaluate, prepare_scoring
    from synood_cli.synthesis import SynthConfig, plan_synthesis, run_synthesis

    prof = load_profile(cfg.profile)
    store = Store(cfg.home)
    # validate every input before any model loads
    opts = InputOptions(data_root=cfg.data_root)
    id_set = open_image_set(str(cfg.id_val), name="id", options=opts)
    ood_sets = [open_image_set(str(path), name=name, options=opts) for name, path in cfg.ood]
    if cfg.lexicon:  # a bad --lexicon is refused now, not after prompting and synthesis
        from synood_cli.lexicons import load_lexicon

        load_lexicon(cfg.lexicon)
    if cfg.synth_overrides.get("iterations", 1) < 1:
        from synood_cli.errors import UsageError

        raise UsageError(f"--iterations must be at least 1, got {cfg.synth_overrides['iterations']}")
    p = prof.get("prompt", {})
    prompt_cfg = PromptConfig(
        folder=cfg.train, mllm=mllm_spec(p.get("mllm", "tiny"), seed=cfg.seed), classes=cfg.classes,
        per_class=cfg.per_class or p.get("per_class", 50), seed=cfg.seed, max_new_tokens=p.get("max_new_tokens", 64),
        batch_size=p.get("batch_size", 8), device=cfg.device, precision=cfg.precision, data_root=cfg.data_root,
        **cfg.prompt_overrides,
    )
    plan = plan_prompts(prompt_cfg, reporter)
    suffix = f"-{cfg.name}" if cfg.name else ""
    reporter.info("stage 1/4: prompts")
    prompts = run_prompts(plan, store, name=f"prompts{suffix}" if cfg.name else None, reporter=reporter)

    reporter.info("stage 2/4: synthesis")
    s = {**prof.get("synthesize", {}), **cfg.synth_overrides}
    s.pop("precision", None)  # plan_synthesis gives --precision auto the profile's synthesis precision
    synth_cfg = SynthConfig(prompts=prompts.id, seed=cfg.seed, device=cfg.device, precision=cfg.precision, profile=cfg.profile, **s)
    synth = run_synthesis(plan_synthesis(synth_cfg, store), store, name=f"synth{suffix}" if cfg.name else None, reporter=reporter)
    from synood_cli import distributed

    # torchrun/srun: synthesis needs no process group (each rank writes its classes' shards, the last
    # one completes the artifact), but finetune needs all of them: wait for the other ranks' classes
    distributed.barrier("synthesizing (waiting for the other ranks' classes)", long=True)

    reporter.info("stage 3/4: finetune")
    ft = FinetuneConfig(prompts=prompts.id, synth=synth.id, home=cfg.home, id_folder=cfg.train, profile=cfg.profile, lexicon=cfg.lexicon,
                        train=profile_train_config(cfg.profile, cfg.seed), device=cfg.device, precision=cfg.precision)
    checkpoint, _ = run_finetune(ft, name=f"checkpoint{suffix}" if cfg.name else None, reporter=reporter)

    reporter.info("stage 4/4: evaluate")
    sc = ScoringConfig(home=cfg.home, profile=cfg.profile, method=cfg.methods, checkpoint=checkpoint.id, seed=cfg.seed, lexicon=cfg.lexicon,
                       device=cfg.device, precision=cfg.precision)
    from synood_cli.training import checkpoint_classes

    setup = prepare_scoring(sc, checkpoint_classes(store, checkpoint.id), reporter)
    result = evaluate(setup, id_set, ood_sets, reporter)
    return PipelineResult(prompts, synth, checkpoint, result)
