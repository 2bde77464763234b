"""Settings for `dk train` from files: a `--config FILE` or the nearest `pyproject.toml`'s
`[tool.distkeras_plus]` table. The command line wins over `DK_*` variables, which win over files."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from distkeras_plus.errors import ConfigError


def find_pyproject(start: Path) -> Path | None:
    """The nearest `pyproject.toml` at or above `start` that has a `[tool.distkeras_plus]` table."""
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            try:
                table = tomllib.loads(candidate.read_text()).get("tool", {}).get("distkeras_plus")
            except tomllib.TOMLDecodeError:
                return None  # not ours to judge; only an explicit --config must parse
            return candidate if table is not None else None
    return None


def read_settings(path: Path, known: Iterable[str]) -> dict[str, Any]:
    """The settings in `path` as Click default values, keyed by parameter name.

    A `pyproject.toml` (or any file with a `[tool.distkeras_plus]` table) gives that table; any
    other file is read whole. Keys may use dashes or underscores; `opt` may be a table."""
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read the settings file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    table = doc.get("tool", {}).get("distkeras_plus", doc)
    if not isinstance(table, dict):
        raise ConfigError(f"[tool.distkeras_plus] in {path} must be a table")
    names = set(known)
    settings: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name in ("opt", "options"):  # the setting is `options`; its flag is --opt
            name = "opts"
        if name not in names:
            allowed = ", ".join(sorted(n.replace("_", "-") for n in names))
            raise ConfigError(f"unknown setting {key!r} in {path}; settings are: {allowed}")
        if name == "opts":
            value = _opts(value, path)
        settings[name] = value
    return settings


def _opts(value: Any, path: Path) -> list[str]:
    if isinstance(value, dict):
        return [f"{k}={_text(v)}" for k, v in value.items()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f'opt in {path} must be a table (window = 12) or a list of "key=value" strings')


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
