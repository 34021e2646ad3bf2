"""Neuromorphic chip profiles: named presets for weight storage, neurons, the input and energy per event.

A profile fills [plasticity] (weight bits, scale rule, rounding, device model) and, for spiking
networks, [spiking] neuron constants and `chip_input` (how the chip takes the input; "spikes" whatever
the profile for encoding = "poisson"); keys written in
the config file win over the profile's. With energy figures a run reports an ESTIMATE of the energy of
inference (one free phase) and of learning (the three phases of a training sample, plus the weight
updates of an iteration x E_update, shared over its samples), part by part (spikeep.hardware.energy):

  input      chip_input = "spikes": rate-coded input spikes, each spike x E_spike and each of its
             synaptic events (spike x fan-out) x E_synop; with encoding = "poisson" the simulated input
             spikes, with encoding = "current" the expected spikes of a rate code with p = x per step
             (sum of x per step) whose mean is the simulated current. chip_input = "bias": the first
             layer's drive W x + b computed once per image off the chip and held in the neurons' bias:
             one write per first-layer neuron per phase x E_input (a nudged phase keeps the input, so a
             chip could keep the bias: an upper bound); computing W x + b on the host is not priced.
  synaptic   the network's own spikes x their fan-out (forward, feedback, readout) x E_synop
  neuron     neuron updates (neurons x steps: every neuron, every step) x E_neuron_update
  spikes     spikes of the network's neurons x E_spike

Figures not published for a chip stay None, and the estimate names what it leaves out instead of
inventing one.

Profiles and the sources of their figures:

ideal         float32 weights, integrate-and-fire neurons; no energy figures.
loihi2        8-bit signed weights with one shared power-of-two exponent per layer (Intel Loihi /
              Loihi 2: weight mantissa and per-synapse-group exponent; Davies et al. 2018, IEEE Micro
              38(1):82-99; Orchard et al. 2021, "Efficient neuromorphic signal processing with Loihi
              2", IEEE SiPS), stochastic rounding of updates (Loihi's learning engine rounds
              stochastically). Input: "bias" by default (Loihi's compartments have a bias current of
              their own). Energy: Loihi (14 nm) figures of Davies et al. 2018, Table 2:
              23.6 pJ per synaptic spike operation, 1.7 pJ within-tile spike energy, 120 pJ per
              synaptic update, 81 pJ per neuron update of an active neuron (52 pJ inactive; spikeep
              charges the active figure to every neuron every step: an upper bound). Table 2 gives no
              figure for writing a neuron's bias: a bias write is charged as one synaptic spike
              operation (a graded spike through one synapse; our modelling choice). They are pre-silicon
              estimates (SPICE-level simulation of the circuits at 0.75 V), not measurements of a chip.
              Loihi 2 has no per-operation table of its own in print; these are Loihi's.
brainscales2  signed 6-bit weights (magnitude 0..63, the sign from an excitatory or inhibitory synapse
              row: codes -63..63, spikeep's 7-bit grid); Pehle et al. 2022, "The BrainScaleS-2
              accelerated neuromorphic system with hybrid plasticity", Front. Neurosci. 16:795876.
              Analog LIF neurons always leak: modelled with leak = 0.01 per step (a modelling choice,
              not a chip constant). Updates are computed by the embedded SIMD processors (stochastic
              rounding in software). Input: spikes. No per-event energy figure (none we could verify):
              its estimate reports nothing and says so.
spinnaker     16-bit fixed-point weights (power-of-two scale: a fixed binary point), round to nearest
              (integer arithmetic on ARM cores). Input: spikes (spike sources). Energy: ~8 nJ per
              synaptic event, attributed to the SpiNNaker power model of Stromatias et al. 2013, "Power
              analysis of large-scale, real-time neural networks on SpiNNaker", IJCNN (48-chip board).
              UNVERIFIED: a review (issue 14) could not find this figure in that paper; it is kept,
              flagged, so that runs stay comparable, and every report that uses it says so. No
              per-spike, per-neuron-update, per-update or per-bias-write figure.
memristor     analog conductances with 32 levels, nonlinear asymmetric potentiation / depression
              (nu_p = 3, nu_d = 3) and 1 % cycle-to-cycle noise, in the range of the reported RRAM
              devices (tens of levels, nonlinear updates: e.g. Yao et al. 2020, Nature 577:641-646).
              Input: spikes (read pulses on the crossbar rows). Energy: 11,014 GOP/s/W attributed to
              the memristor CNN of Yao et al. 2020, i.e. 0.091 pJ per operation, 0.18 pJ per synaptic
              event (one multiply-accumulate = 2 operations). UNVERIFIED where it stands: the paper's
              abstract does not give it (it says "more than two orders of magnitude" better than GPUs);
              it is attributed to the paper's benchmark against a GPU, not checked here. No spike,
              neuron (peripheral circuit), programming (update) or bias-write figure.

These figures are literature values for orders of magnitude, not measurements of spikeep's
networks on those chips: a chip's real cost also depends on mapping, routing and static power.
Each figure carries its provenance (`Source`: citation, where in it, what kind of number, whether it
was found there); `provenance()` lists them and the README table shows them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

PJ = 1e-12
NJ = 1e-9


FIGURES = ("synop", "spike", "update", "neuron_update", "input")  # the per-event figures of Energy
CHIP_INPUTS = ("spikes", "bias")  # how a chip takes the input (see the module docstring)
KINDS = ("measurement", "derived from a measurement", "pre-silicon estimate", "model estimate")


@dataclass(frozen=True)
class Source:
    """Where an energy figure comes from."""
    figure: str  # which figure of Energy: one of FIGURES
    citation: str  # authors, year, title, venue
    where: str  # table, figure or section of the citation
    kind: str  # one of KINDS, with detail after a colon (e.g. "pre-silicon estimate: SPICE, 0.75 V")
    verified: bool  # the figure was found at `where` in the citation
    note: str = ""

    def __post_init__(self):
        if self.figure not in FIGURES:
            raise ValueError(f"an energy source names one of the figures {', '.join(FIGURES)}, got {self.figure!r}")
        if self.kind.split(":")[0] not in KINDS:
            raise ValueError(f"energy source kind must start with one of {KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class Energy:
    synop: Optional[float] = None  # joules per synaptic event (a spike reaching one synapse)
    spike: Optional[float] = None  # joules per spike emitted (generation and routing)
    update: Optional[float] = None  # joules per synaptic weight update (one synapse changed)
    neuron_update: Optional[float] = None  # joules per neuron per simulation step
    input: Optional[float] = None  # joules per bias write (chip_input = "bias": one first-layer neuron's bias set once)
    sources: tuple[Source, ...] = ()  # one per figure given

    @property
    def verified(self) -> Optional[bool]:
        """Every figure was found in its source; None for a profile without figures (nothing to find)."""
        return all(s.verified for s in self.sources) if self.sources else None

    def has_figures(self) -> bool:
        return any(getattr(self, k) is not None for k in FIGURES)


@dataclass(frozen=True)
class ChipProfile:
    name: str
    synapse: dict[str, Any]  # [plasticity] keys: bits, scale, rounding, device, levels, ...
    neuron: dict[str, Any] = field(default_factory=dict)  # [spiking] keys: theta, leak, refractory, v_min, reset
    energy: Energy = Energy()
    summary: str = ""
    chip_input: str = "spikes"  # the default of [spiking] chip_input: one of CHIP_INPUTS

    def __post_init__(self):
        bits = self.synapse.get("bits", 0)
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("a chip profile needs a name")
        if bits != 0 and (not isinstance(bits, int) or bits < 1):
            raise ValueError(f"chip profile {self.name!r}: weight bits must be >= 1 (or 0 for float), got {bits!r}")
        scale = self.synapse.get("scale", "init")
        if isinstance(scale, (int, float)) and not scale > 0:
            raise ValueError(f"chip profile {self.name!r}: a fixed weight scale must be > 0, got {scale!r}")
        if self.chip_input not in CHIP_INPUTS:
            raise ValueError(f"chip profile {self.name!r}: chip_input must be one of {', '.join(CHIP_INPUTS)}, "
                             f"got {self.chip_input!r}")
        e = self.energy
        for k in FIGURES:
            v = getattr(e, k)
            if v is not None and not v > 0:
                raise ValueError(f"chip profile {self.name!r}: energy per {k} must be > 0 joules or None, got {v!r}")
            n_src = sum(s.figure == k for s in e.sources)
            if (v is None and n_src) or (v is not None and n_src != 1):
                raise ValueError(f"chip profile {self.name!r}: energy per {k} needs exactly one Source "
                                 f"(its provenance), and none without a figure; got {n_src}")
        known_syn = {"bits", "scale", "rounding", "threshold", "device", "levels", "nu_p", "nu_d", "noise", "headroom"}
        known_neu = {"theta", "leak", "refractory", "v_min", "reset"}
        for keys, known, what in ((self.synapse, known_syn, "synapse"), (self.neuron, known_neu, "neuron")):
            bad = set(keys) - known
            if bad:
                raise ValueError(f"chip profile {self.name!r}: unknown {what} keys {sorted(bad)}")


PROFILES: dict[str, ChipProfile] = {}


def register_profile(p: ChipProfile) -> ChipProfile:
    """Add a profile (validated when constructed); names are unique."""
    if p.name in PROFILES:
        raise ValueError(f"a chip profile called {p.name!r} exists already")
    PROFILES[p.name] = p
    return p


def get_profile(name: str) -> ChipProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown chip profile {name!r}; known profiles: {', '.join(PROFILES)}") from None


register_profile(ChipProfile("ideal", {"bits": 0}, {"leak": 0.0}, Energy(), "float32 weights, IF neurons"))
DAVIES_2018 = ("Davies et al. 2018, Loihi: a neuromorphic manycore processor with on-chip learning, "
               "IEEE Micro 38(1):82-99")
STROMATIAS_2013 = ("Stromatias, Galluppi, Patterson and Furber 2013, Power analysis of large-scale, real-time neural "
                   "networks on SpiNNaker, International Joint Conference on Neural Networks (IJCNN 2013)")
YAO_2020 = "Yao et al. 2020, Fully hardware-implemented memristor convolutional neural network, Nature 577:641-646"
_LOIHI = "pre-silicon estimate: SPICE-level simulation of Loihi's 14 nm circuits at 0.75 V"
register_profile(ChipProfile(
    "loihi2", {"bits": 8, "scale": "pow2", "rounding": "stochastic", "device": "linear", "headroom": 8.0},
    {"leak": 0.0}, Energy(synop=23.6 * PJ, spike=1.7 * PJ, update=120 * PJ, neuron_update=81 * PJ, input=23.6 * PJ,
                          sources=(
        Source("synop", DAVIES_2018, "Table 2, synaptic spike operation", _LOIHI, True, "Loihi (not Loihi 2)"),
        Source("spike", DAVIES_2018, "Table 2, within-tile spike energy", _LOIHI, True, "Loihi (not Loihi 2)"),
        Source("update", DAVIES_2018, "Table 2, synaptic update", _LOIHI, True, "Loihi (not Loihi 2)"),
        Source("neuron_update", DAVIES_2018, "Table 2, energy per neuron update (active / inactive: 81 / 52 pJ)",
               _LOIHI, True, "the active figure, charged to every neuron every step: an upper bound"),
        Source("input", DAVIES_2018, "Table 2, synaptic spike operation, charged to each bias write (our modelling "
               "choice: Table 2 has no bias-write figure)", _LOIHI, True,
               "charged to each bias write (one first-layer neuron's bias set once per phase, as one graded "
               "spike through one synapse): our modelling choice; Table 2 has no bias-write figure"))),
    "8-bit weights, shared power-of-two exponent, stochastic rounding; Loihi energy figures", chip_input="bias"))
register_profile(ChipProfile(
    "brainscales2", {"bits": 7, "scale": "init", "rounding": "stochastic", "device": "linear", "headroom": 4.0},
    {"leak": 0.01}, Energy(), "signed 6-bit weights (+-63), leaky analog neurons"))
register_profile(ChipProfile(
    "spinnaker", {"bits": 16, "scale": "pow2", "rounding": "nearest", "device": "linear", "headroom": 16.0},
    {"leak": 0.0}, Energy(synop=8 * NJ, sources=(Source(
        "synop", STROMATIAS_2013, "not found in the paper (attributed to its power model)",
        "model estimate: board-level power model",
        False, "could not be found in the cited source; kept for comparability, flagged as unverified"),)),
    "16-bit fixed-point weights; SpiNNaker power model (unverified energy figure)"))
register_profile(ChipProfile(
    "memristor", {"bits": 8, "scale": "init", "rounding": "stochastic", "device": "memristor", "levels": 32,
                  "nu_p": 3.0, "nu_d": 3.0, "noise": 0.01, "headroom": 4.0},
    {}, Energy(synop=0.18 * PJ, sources=(Source(
        "synop", YAO_2020, "not in the abstract (which says only: more than two orders of magnitude more "
        "energy-efficient than GPUs); 11,014 GOP/s/W attributed to its benchmark against a GPU, page not checked",
        "derived from a measurement: 1 / 11,014 GOP/s/W = 0.091 pJ per operation, x 2 operations per "
        "multiply-accumulate (our conversion)", False,
        "the 11,014 GOP/s/W figure was not found where it was first cited (the abstract); flagged as unverified"),)),
    "32-level nonlinear noisy conductances"))


def provenance(name: Optional[str] = None) -> list[dict[str, Any]]:
    """The energy figures of one profile (or of all) with their sources, for tables and reports."""
    rows = []
    for p in ([get_profile(name)] if name else PROFILES.values()):
        for s in p.energy.sources:
            rows.append({"profile": p.name, "figure": s.figure, "joules": getattr(p.energy, s.figure),
                         "citation": s.citation, "where": s.where, "kind": s.kind, "verified": s.verified,
                         "note": s.note})
    return rows


def chip_input_for(p: ChipProfile, chip_input: str = "", encoding: str = "current") -> str:
    """How the chip takes the input: `chip_input` if given, else the profile's default where the
    simulated input allows it (a network driven by Poisson spikes takes spikes)."""
    return chip_input or ("spikes" if encoding == "poisson" else p.chip_input)


def apply_profile(data: dict[str, Any]) -> dict[str, Any]:
    """Fill a config dict's [plasticity] and [spiking] from plasticity.profile; explicit keys win."""
    plast = data.get("plasticity")
    if not isinstance(plast, dict) or not plast.get("profile"):
        return data
    p = get_profile(plast["profile"])
    data["plasticity"] = {**p.synapse, **plast}
    spk = data.get("spiking") if isinstance(data.get("spiking"), dict) else {}
    data["spiking"] = {**p.neuron, "chip_input": chip_input_for(p, "", spk.get("encoding", "current")), **spk}
    return data


