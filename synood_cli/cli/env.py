"""`synood env`: versions, devices, paths and offline state, for bug reports."""

from __future__ import annotations

import json
import os
import platform
import sys

import typer

from synood_cli.cli.flags import TEXT_FORMATS, check_text_format, choices
from synood_cli.cli.render import error_boundary

HELP = "Print versions, devices, paths and offline state (paste it into bug reports)."
EPILOG = "[bold]Example[/bold]\n\n  synood env --format json"


@error_boundary
def env(
    ctx: typer.Context,
    fmt: str = typer.Option("table", "--format", "-f", help="table (key: value lines) or json.", **choices(TEXT_FORMATS)),
    old_json: bool = typer.Option(False, "--json", hidden=True, help="Deprecated spelling of --format json."),
) -> None:
    as_json = check_text_format(fmt, old_json) == "json"
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
