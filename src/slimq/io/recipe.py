"""YAML recipes, read only at the CLI edge and turned into frozen dataclasses at once."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import yaml

from slimq.core.config import StaticConfig
from slimq.core.errors import ConfigError, did_you_mean
from slimq.io.images import PreprocessSpec

RECIPE_SECTIONS = ("static", "preprocess")


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Recipe file not found: {path}.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"Recipe {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Recipe {path} must be a mapping of sections ({', '.join(RECIPE_SECTIONS)}).")
    return data


def _check_sections(data: dict, allowed: tuple[str, ...], path: str | Path) -> None:
    for k in data:
        if k not in allowed:
            raise ConfigError(f'Recipe {path}: unknown section "{k}".{did_you_mean(k, allowed)} '
                              f"Sections: {', '.join(allowed)}.")


def preprocess_from_dict(d: dict) -> PreprocessSpec:
    valid = {f.name for f in fields(PreprocessSpec)}
    for k in d:
        if k not in valid:
            raise ConfigError(f'Unknown preprocess key "{k}".{did_you_mean(k, valid)} Valid: {", ".join(sorted(valid))}.')
    d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return PreprocessSpec(**d)


def load_static_recipe(path: str | Path) -> tuple[dict, dict]:
    """The `static` and `preprocess` sections of a recipe (validated later against the dataclasses)."""
    data = read_yaml(path)
    _check_sections(data, RECIPE_SECTIONS, path)
    static = data.get("static") or {}
    StaticConfig.from_dict(static)  # validate keys and values now, with the recipe's name in context
    return static, data.get("preprocess") or {}
