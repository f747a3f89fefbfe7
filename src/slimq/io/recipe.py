"""YAML recipes, read only at the CLI edge and turned into frozen dataclasses at once.

`read_yaml_document` is the one reader of recipe files (static and QAT): a missing file, a directory,
an unreadable or non-UTF-8 file, invalid YAML and Python-object tags are all a ConfigError (exit 2).
The values are then checked by the dataclasses' own typed validation (`slimq.core.fields`).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from slimq.core.config import StaticConfig
from slimq.core.errors import ConfigError, did_you_mean
from slimq.core.fields import check_keys, require_mapping
from slimq.io.images import PreprocessSpec

RECIPE_SECTIONS = ("static", "preprocess")


def read_yaml_document(path: str | Path, what: str = "Recipe") -> Any:
    """The YAML document in `path` (an empty file gives {}); every way of failing is a ConfigError."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} file not found: {path}.")
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; pass the YAML file inside it.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path} is not UTF-8 text (cannot decode byte {e.object[e.start]:#04x} at "
                          f"position {e.start}). Save it with UTF-8 encoding.") from None
    except OSError as e:
        raise ConfigError(f"Cannot read {what.lower()} {path}: {e.strerror or e}.") from None
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as e:
        # PyYAML's constructors raise ValueError for impossible escapes ("\U00110000") and dates (2001-13-01)
        raise ConfigError(f"{what} {path} is not valid YAML: {e}") from None
    return {} if data is None else data


def read_yaml(path: str | Path) -> dict:
    """A static recipe: a mapping of sections."""
    data = read_yaml_document(path)
    if not isinstance(data, dict):
        raise ConfigError(f"Recipe {path} must be a mapping of sections ({', '.join(RECIPE_SECTIONS)}).")
    return data


def _check_sections(data: dict, allowed: tuple[str, ...], path: str | Path) -> None:
    for k in data:
        if k not in allowed:
            raise ConfigError(f'Recipe {path}: unknown section "{k}".{did_you_mean(str(k), allowed)} '
                              f"Sections: {', '.join(allowed)}.")


def preprocess_from_dict(d: Any) -> PreprocessSpec:
    """A PreprocessSpec from a recipe's `preprocess` mapping (values checked by PreprocessSpec)."""
    d = check_keys("preprocess", d, {f.name for f in fields(PreprocessSpec)})
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return PreprocessSpec(**values)


def _section(data: dict, name: str, path: str | Path) -> dict:
    value = data.get(name)
    if value is None:
        return {}
    try:
        return dict(require_mapping(f'section "{name}"', value))
    except ConfigError as e:
        raise ConfigError(f"Recipe {path}: {e}") from None


def load_static_recipe(path: str | Path) -> tuple[dict, dict]:
    """The `static` and `preprocess` sections of a recipe, both validated now (with the recipe's name in
    the message): a bad value fails before the model is even loaded."""
    data = read_yaml(path)
    _check_sections(data, RECIPE_SECTIONS, path)
    static, pre = _section(data, "static", path), _section(data, "preprocess", path)
    try:
        StaticConfig.from_dict(static)
        if pre:
            preprocess_from_dict(pre)
    except ConfigError as e:
        raise ConfigError(f"Recipe {path}: {e}") from None
    return static, pre
