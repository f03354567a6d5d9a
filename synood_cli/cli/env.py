"""`synood env`: versions, devices, paths and offline state, for bug reports."""

from __future__ import annotations

import json
import os
import platform
import sys

from typing import Optional

import typer

from synood_cli.cli.flags import PROFILES, TEXT_FORMATS, check_text_format, choices
from synood_cli.cli.render import error_boundary

HELP = (
    "Print versions, devices, paths and offline state (paste it into bug reports). With --profile NAME: which weights "
    "that profile's stages load, where each is looked for, whether it is present, missing or partial, and what is left "
    "to download; exit 3 when anything is missing, partial or damaged."
)
EPILOG = "[bold]Examples[/bold]\n\n  synood env --format json\n\n  synood env --profile paper\n\n  synood env --profile default --format json"


@error_boundary
def env(
    ctx: typer.Context,
    fmt: str = typer.Option("table", "--format", "-f", help="table (key: value lines) or json.", **choices(TEXT_FORMATS)),
    old_json: bool = typer.Option(False, "--json", hidden=True, help="Deprecated spelling of --format json."),
    profile: Optional[str] = typer.Option(
        None, "--profile", "-p", help="List the weights this profile's stages load and whether the local caches hold them; "
        "exit 3 if any is missing, partial or damaged (0: all present, or built on first use as the tiny profile's are).", **choices(PROFILES, "<profile>"),
    ),
) -> None:
    as_json = check_text_format(fmt, old_json) == "json"
    if profile is not None:  # no SYNOOD_PROFILE here: plain `synood env` stays the bug report it was
        _weights_report(ctx, profile, as_json)
        return
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from synood_cli import __version__
    from synood_cli.runtime import hf_cache_dir, is_offline

    state = ctx.obj
    info = {"synood": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("torch", "torchvision", "open_clip_torch", "diffusers", "transformers", "datasets", "safetensors", "typer", "rich"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = "not installed"
    info["cuda_available"] = torch.cuda.is_available()
    info["cuda_version"] = torch.version.cuda
    info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info["home"] = str(state.home)
    info["hf_cache"] = str(hf_cache_dir())
    info["offline"] = is_offline()
    from synood_cli.errors import UsageError
    from synood_cli.lexicons import find_wordnet, wordnet_howto, wordnet_search_locations

    try:
        source, looked = find_wordnet()
        info["wordnet"] = source or "not found"
    except UsageError as e:  # SYNOOD_WORDNET points nowhere: env still reports everything else
        source, looked = None, wordnet_search_locations()
        info["wordnet"] = f"not found: {e.message}"
    if source is None:  # the step after the demo (--profile default) needs it: say exactly how to get it
        info["wordnet_looked_in"] = [str(p) for p in looked]
        info["wordnet_howto"] = wordnet_howto()
    info["env"] = {k: v for k, v in os.environ.items() if k.startswith(("SYNOOD_", "HF_", "CUDA_VISIBLE"))}
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k}: {v}")


def _weights_report(ctx: typer.Context, profile: str, as_json: bool) -> None:
    """The profile's weights as a table (or JSON) on stdout; a summary on stderr; exit 3 if anything is not there."""
    from synood_cli.doctor import human_bytes, missing_bytes, profile_weights
    from synood_cli.profiles import load_profile
    from synood_cli.runtime import hf_cache_dir
    from synood_cli.store import Store

    load_profile(profile)  # an unknown name: exit 2 with did-you-mean
    rows = profile_weights(profile, Store(ctx.obj.home))
    bad = [r for r in rows if not r.ok]
    left = missing_bytes(rows)
    if as_json:
        print(json.dumps({"profile": profile, "hf_cache": str(hf_cache_dir()), "all_present": not bad,
                          "missing_download_bytes": left, "weights": [r.to_dict() for r in rows]}, indent=2))
    else:
        from rich.table import Table

        from synood_cli.cli.render import esc
        from synood_cli.cli.tables import wide_console

        t = Table(title=f"weights of the {esc(profile)} profile (HF cache {esc(hf_cache_dir())})")
        for col in ("what", "stages", "status", "to download", "looked for in", "missing files"):
            t.add_column(col, no_wrap=col in ("status", "to download"))
        colour = {"present": "green", "built on first use": "green", "partial": "yellow"}
        for r in rows:
            c = colour.get(r.status, "red")
            t.add_row(esc(r.what), esc(", ".join(r.stages)), f"[{c}]{esc(r.status)}[/{c}]", human_bytes(r.download_bytes) if not r.ok else "-",
                      esc(r.where), esc(", ".join(r.missing[:4]) + (f" (+{len(r.missing) - 4})" if len(r.missing) > 4 else "")))
        wide_console().print(t)
    from synood_cli.cli.render import err_console, esc

    for note in dict.fromkeys(n for r in bad for n in (r.detail, f"sizes: {r.size_source}" if r.size_source else "") if n):
        err_console.print(esc(note), soft_wrap=True)
    if not bad:
        err_console.print(f"all {len(rows)} sets of files of the {esc(profile)} profile are here")
        return
    err_console.print(
        f"[red]{len(bad)} of {len(rows)}[/red] sets of files of the {esc(profile)} profile are missing, partial or damaged; "
        f"{human_bytes(left)} to download", soft_wrap=True,
    )
    err_console.print("hint: run the stage once with network access (it fetches only the files it loads), or fill the HF cache "
                      "on a machine with network and point HF_HOME or HF_HUB_CACHE at it", soft_wrap=True)
    raise typer.Exit(3)
