"""Energy estimates from a chip profile's literature figures: counted events x joules per event, part by
part (input, synaptic events, neuron updates, spikes, and weight updates in learning), with the figures'
sources quoted whole and the counted events the profile has no figure for (see chips.py for the figures,
their sources and the two ways a chip can take the input)."""
from __future__ import annotations

import math
from typing import Any, Optional

from ..spiking.metrics import ChipEvents
from .chips import CHIP_INPUTS, ChipProfile, chip_input_for, get_profile


PARTS = ("input", "synaptic", "neuron", "spikes", "updates")  # the parts of an estimate, in this order


def priced_events(ev: ChipEvents, chip_input: str, updates: float = 0.0) -> list[tuple[str, str, float, str]]:
    """(part, event name, count, figure) of every counted event an estimate prices: the input as the chip
    takes it (chip_input "spikes": input spikes and their synaptic events; "bias": bias writes), the
    network's synaptic events, neuron updates, spikes, and weight updates."""
    if chip_input not in CHIP_INPUTS:
        raise ValueError(f"chip_input must be one of {', '.join(CHIP_INPUTS)}, got {chip_input!r}")
    if chip_input == "spikes":
        inp = [("input", "input spikes", ev.input_spikes, "spike"),
               ("input", "input synaptic events", ev.input_synops, "synop")]
    else:
        if ev.input_spikes and not ev.bias_writes:  # a constant current counts bias writes, input spikes don't
            raise ValueError("chip_input = 'bias' prices a held input current, but the network was driven by "
                             f"{ev.input_spikes:g} input spikes (Poisson encoding or a given spike train)")
        inp = [("input", "input bias writes", ev.bias_writes, "input")]
    return inp + [("synaptic", "synaptic events", ev.synops, "synop"),
                  ("neuron", "neuron updates", ev.neuron_updates, "neuron_update"),
                  ("spikes", "spikes", ev.spikes, "spike"),
                  ("updates", "weight updates", updates, "update")]


def energy_estimate(p: ChipProfile, ev: ChipEvents, chip_input: Optional[str] = None,
                    updates: float = 0.0) -> dict[str, Any]:
    """Joules per part for the counted events `ev` (and `updates` weight updates): each part sums its
    events' counts x the profile's figures; a part is None where it counted events and the profile has
    a figure for none of them, and `leaves_out` names every counted event without a figure. `total` is
    the sum of the parts that have figures (None for a profile without any figure). `found_in_source`:
    whether every figure used was found in its source (None where no figure was used); `source` quotes
    the sources of the figures used, whole."""
    mode = chip_input or p.chip_input
    e = p.energy
    parts: dict[str, Optional[float]] = {k: 0.0 for k in PARTS}
    unpriced: dict[str, bool] = {k: False for k in PARTS}
    leaves_out, used = [], []
    for part, name, count, fig in priced_events(ev, mode, updates):
        joules = getattr(e, fig)
        if not count:
            continue
        if joules is None or math.isnan(count):
            leaves_out.append(name + (" (not countable)" if joules is not None else ""))
            unpriced[part] = True
            continue
        parts[part] += count * joules
        if fig not in used:
            used.append(fig)
    for k in PARTS:  # a part that counted events and priced none of them is unknown, not zero
        if unpriced[k] and parts[k] == 0.0:
            parts[k] = None
    sources = [s for s in e.sources if s.figure in used]
    return {**parts, "total": sum(v for v in parts.values() if v is not None) if e.has_figures() else None,
            "chip_input": mode, "complete": not leaves_out, "leaves_out": leaves_out,
            "found_in_source": all(s.verified for s in sources) if sources else None,
            "figures": used, "source": source_line(p, used)}


def source_line(p: ChipProfile, figures: Optional[list[str]] = None) -> str:
    """Where a profile's energy figures (those of `figures`, default all) come from, quoted whole: per
    citation, the place of each figure in it and the kind of number."""
    by_cite: dict[str, list[str]] = {}
    for s in p.energy.sources:
        if figures is not None and s.figure not in figures:
            continue
        item = f"{s.where} [{s.kind.split(':')[0]}{'' if s.verified else ', NOT found in the source'}]"
        if item not in by_cite.setdefault(s.citation, []):
            by_cite[s.citation].append(item)
    return " | ".join(f"{c}: {'; '.join(items)}" for c, items in by_cite.items()) or "no energy figures"


def energy_columns(cfg, ev, stats) -> dict:
    """The metrics.csv columns of the energy estimates from cfg's chip profile (if any): per inference
    (one free phase of the evaluation `ev`) part by part and in total, and per training sample (its three
    phases plus its share of the iteration's weight updates); with the input mode, the sources of the
    figures used, what the estimate leaves out and whether the figures were found in their sources. A
    profile without figures gives no joules and says so (energy_figures_found_in_source left out)."""
    if not cfg.plasticity.profile:
        return {}
    prof = get_profile(cfg.plasticity.profile)
    mode = chip_input_for(prof, cfg.spiking.chip_input, getattr(cfg.spiking, "encoding", "current"))
    if not prof.energy.has_figures():
        return {"energy_input_mode": mode, "energy_estimate_source": f"{prof.name}: no energy figures",
                "energy_estimate_leaves_out": "everything (the profile has no energy figures)"}
    seen = max(stats.seen, 1)
    inf = energy_estimate(prof, ev.events, mode)
    learn = energy_estimate(prof, ChipEvents(**stats.events).scaled(1 / seen), mode, float(stats.updates) / seen)
    row = {"energy_input_J": inf["input"], "energy_synaptic_J": inf["synaptic"], "energy_neuron_J": inf["neuron"],
           "energy_spikes_J": inf["spikes"], "energy_estimate_inference_J": inf["total"],
           "energy_estimate_learning_J": learn["total"], "energy_input_mode": mode,
           "energy_estimate_source": f"{prof.name}: {source_line(prof, inf['figures'] + learn['figures'])}",
           "energy_estimate_leaves_out": "; ".join(dict.fromkeys(inf["leaves_out"] + learn["leaves_out"]))}
    found = [f for f in (inf["found_in_source"], learn["found_in_source"]) if f is not None]
    if found:
        row["energy_figures_found_in_source"] = all(found)
    return row

