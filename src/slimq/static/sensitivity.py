"""Sensitivity analysis: for every unit (a layer, a tensor with all its readers, or a layer with the
readers of its output), the damage of quantizing it alone and the recovery from keeping it alone float,
measured on the budget's measure (label-free by default). Results are cached on disk, keyed by the
model, the calibration data and the settings, so the accuracy search starts from them."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from slimq.io.atomic import write_text
from slimq.io.samples import SampleSet
from slimq.static.steps import Split
from slimq.static.tuner import Candidate, Clock, Setting, Tuner

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slimq" / "sensitivity"


@dataclass(frozen=True)
class UnitSensitivity:
    unit: str
    nodes: tuple[str, ...]
    mac_share: float  # share of the model's MACs in these nodes
    recovery: float  # deficit reduction when only this unit is float (> 0: it hurts when quantized)
    damage: float | None  # deficit increase when only this unit is quantized (vs everything float)

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "nodes": list(self.nodes), "mac_share": round(self.mac_share, 4),
                "recovery": round(self.recovery, 6), "damage": None if self.damage is None else round(self.damage, 6)}


def cache_key(fp32: onnx.ModelProto, samples: SampleSet, split: Split, budget: str) -> str:
    """The model, the data and the budget (the ranking serves as the search's order whatever the setting:
    every step is re-measured)."""
    h = hashlib.sha256(fp32.SerializeToString())
    for i in split.calib[:64] + split.check:
        for k, v in sorted(samples.sample(i).items()):
            h.update(k.encode())
            h.update(np.ascontiguousarray(v).tobytes())
    h.update(f"{budget}|{len(split.calib)}".encode())
    return h.hexdigest()[:32]


def load_cached(key: str) -> dict[str, float] | None:
    """{unit: recovery} from an earlier analysis of the same model, data and settings, if any."""
    path = CACHE_DIR / f"{key}.json"
    try:
        return {r["unit"]: float(r["recovery"]) for r in json.loads(path.read_text())["units"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_cached(key: str, units: list[UnitSensitivity]) -> None:
    try:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        write_text(CACHE_DIR / f"{key}.json", json.dumps({"units": [u.to_dict() for u in units]}))
    except OSError:
        pass  # a cache that cannot be written only costs time


def analyse(tuner: Tuner, setting: Setting, damage: bool = True, time_budget: float = 600.0) -> list[UnitSensitivity]:
    """Every unit's recovery (and, with `damage`, damage alone), most sensitive first."""
    clock = Clock(time_budget)
    base = Candidate(setting)
    quantized = tuner.deficit(base, "sensitivity", "all quantized")
    all_nodes = [u for u in tuner.units if u.startswith("node:")]
    floor = tuner.deficit(base.with_floats(frozenset(all_nodes)), "sensitivity", "all float") if damage else 0.0
    total = sum(tuner.macs.values()) or 1
    out = []
    for unit, nodes in tuner.units.items():
        if clock.left <= 0:
            break
        rec = quantized - tuner.deficit(base.with_floats(frozenset({unit})), "sensitivity", f"{unit} float")
        dmg = None
        if damage:
            others = frozenset(u for u in all_nodes if u.removeprefix("node:") not in nodes)
            dmg = tuner.deficit(base.with_floats(others), "sensitivity", f"only {unit} int8") - floor
        out.append(UnitSensitivity(unit, tuple(sorted(nodes)), sum(tuner.macs.get(n, 0) for n in nodes) / total,
                                   rec, dmg))
    return sorted(out, key=lambda u: -u.recovery)


def format_table(units: list[UnitSensitivity], top: int = 25) -> str:
    lines = [f"{'unit':48s} {'MACs':>6s} {'recovery':>10s} {'damage':>10s}"]
    for u in units[:top]:
        dmg = "-" if u.damage is None else f"{u.damage:10.4f}"
        lines.append(f"{u.unit[:48]:48s} {u.mac_share * 100:5.1f}% {u.recovery:10.4f} {dmg:>10s}")
    if len(units) > top:
        lines.append(f"... {len(units) - top} more (see --json)")
    return "\n".join(lines)
