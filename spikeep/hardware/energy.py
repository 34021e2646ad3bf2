"""Energy estimates from a chip profile's literature figures: counted events x joules per event, with
the figures' source and what the estimate leaves out (see chips.py for the figures and their sources)."""
from __future__ import annotations

from typing import Any

from .chips import FIGURES, ChipProfile, get_profile


PARTS = {"synops": "synop", "spikes": "spike", "updates": "update", "neuron_updates": "neuron_update",
         "input": "input"}  # counted event -> the figure that prices it


PART_NAMES = {"synops": "synaptic events", "spikes": "spikes", "updates": "weight updates",
              "neuron_updates": "neuron updates", "input": "input-current events"}


def energy_estimate(p: ChipProfile, spikes: float, synops: float, updates: float = 0.0, neuron_updates: float = 0.0,
                    input_ops: float = 0.0) -> dict[str, Any]:
    """Joules for the given counts (an estimate from the profile's literature figures): synaptic events,
    spikes, weight updates, neuron updates and events of a constant input current; a part is None where
    its count is not zero and the chip has no figure for it, and `leaves_out` names those parts (the
    total is None only if the chip has no figure at all)."""
    e = p.energy
    counts = {"synops": synops, "spikes": spikes, "updates": updates, "neuron_updates": neuron_updates,
              "input": input_ops}
    parts = {k: (None if getattr(e, fig) is None else counts[k] * getattr(e, fig)) if counts[k] else 0.0
             for k, fig in PARTS.items()}
    no_figures = all(getattr(e, fig) is None for fig in FIGURES)
    leaves_out = [PART_NAMES[k] for k, v in parts.items() if v is None]
    return {**parts, "total": None if no_figures else sum(v for v in parts.values() if v is not None),
            "complete": not leaves_out, "leaves_out": leaves_out, "verified": e.verified,
            "source": source_line(p)}


def source_line(p: ChipProfile) -> str:
    """Where a profile's energy figures come from, in a few words: citations, places, kinds of number."""
    seen: list[str] = []
    for s in p.energy.sources:
        cite = s.citation.split(",")[0]
        where = s.where.split(",")[0]
        kind = s.kind.split(":")[0]
        line = f"{cite}, {where} ({kind}{'' if s.verified else ', NOT found in the source'})"
        if line not in seen:
            seen.append(line)
    return "; ".join(seen) or "no energy figures"


def energy_columns(cfg, ev, stats) -> dict:
    """The metrics.csv columns of the energy estimates from cfg's chip profile (if any): per inference
    (one free phase of the evaluation `ev`), and per training sample (its three phases plus its share of the
    iteration's weight updates); with the figures' source and what the estimate leaves out."""
    if not cfg.plasticity.profile:
        return {}
    prof = get_profile(cfg.plasticity.profile)
    seen = max(stats.seen, 1)
    inf = energy_estimate(prof, ev.spikes, ev.synops, 0.0, ev.neuron_updates, ev.input_ops)
    learn = energy_estimate(prof, stats.spikes / seen, stats.synops / seen, float(stats.updates) / seen,
                            stats.neuron_updates / seen, stats.input_ops / seen)
    return {"energy_estimate_inference_J": inf["total"], "energy_estimate_learning_J": learn["total"],
            "energy_estimate_source": f"{prof.name}: {inf['source']}",
            "energy_estimate_leaves_out": "; ".join(sorted(set(inf["leaves_out"]) | set(learn["leaves_out"]))),
            "energy_figures_found_in_source": inf["verified"]}
