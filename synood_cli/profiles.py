"""Named presets (tiny, default, paper) read from JSON files shipped in `synood_cli/profiles/`.

A profile only supplies defaults: every explicit flag wins over it.
"""

from __future__ import annotations

import json
from importlib import resources

from synood_cli.errors import UsageError
from synood_cli.registry import Registry

PROFILE_NAMES = ("tiny", "default", "paper")
_registry: Registry[str] = Registry("profile", option="--profile")
for _name in PROFILE_NAMES:
    _registry.add(_name, _name)


def profile_dir():
    return resources.files("synood_cli") / "profiles"


def load_profile(name: str) -> dict:
    _registry.get(name)  # unknown names raise with a did-you-mean hint
    data = json.loads((profile_dir() / f"{name}.json").read_text())
    data["name"] = name
    return data


def list_profiles() -> list[dict]:
    return [load_profile(n) for n in PROFILE_NAMES]


def tiny_model_config_path(arch: str):
    """Path of a tiny architecture JSON (open_clip model-config format)."""
    path = profile_dir() / "models" / f"{arch}.json"
    if not path.is_file():
        raise UsageError(f"no tiny model config {arch!r}")
    return path
