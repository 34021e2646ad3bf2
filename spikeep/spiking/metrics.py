"""What a spiking network costs: spikes and synaptic events (SynOps = spikes x fan-out) per layer,
neuron updates (neurons x steps), the input's spikes and their events (simulated, or the expected ones of
a rate code for a constant current) and the bias writes of a constant current held in the first layer."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..core.interactions import Interaction
from ..core.network import EqNetwork

Tensor = torch.Tensor


class ChipEvents(NamedTuple):
    """The events a chip pays for, summed over samples (divide by their number for per-inference counts)."""
    synops: float = 0.0  # synaptic events of the network's own spikes (forward, feedback, readout)
    spikes: float = 0.0  # spikes of the network's neurons
    neuron_updates: float = 0.0  # neurons x steps
    input_spikes: float = 0.0  # input spikes: simulated, or for a constant current the expected ones of a rate code
    input_synops: float = 0.0  # their synaptic events (input spike x fan-out)
    bias_writes: float = 0.0  # constant current held as a bias: first-layer neurons x phases (0 for spiking input)

    def __add__(self, other: "ChipEvents") -> "ChipEvents":
        return ChipEvents(*(a + b for a, b in zip(self, other)))

    def scaled(self, f: float) -> "ChipEvents":
        return ChipEvents(*(a * f for a in self))


class Counts(NamedTuple):
    spikes: Tensor  # per layer: spikes summed over batch and steps
    synops: Tensor  # per layer: synaptic events its spikes caused (spikes x fan-out)
    input_spikes: float  # simulated input spikes (Poisson or a given spike train; 0 for constant-current input)
    input_synops: float  # synaptic events the input spikes caused
    neuron_updates: float = 0.0  # neurons x steps (every neuron is updated every step), over the batch
    # constant-current input (0 for spiking input), over the batch: the expected input spikes and
    # synaptic events if the chip took the input as a rate code with p = x per step (sum of x, sum of x x
    # fan-out, per step: their mean is the simulated current), and the writes of the first layer's drive
    # held as a bias (one per first-layer neuron per phase)
    coded_input_spikes: float = 0.0
    coded_input_synops: float = 0.0
    bias_writes: float = 0.0

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(*(a + b for a, b in zip(self, other)))

    def totals(self) -> tuple[float, float]:
        """(spikes, synaptic events) of all layers, the simulated input spikes' events included."""
        return float(self.spikes.sum()), float(self.synops.sum()) + self.input_synops

    def events(self) -> ChipEvents:
        """The events a chip pays for (spikeep.hardware.energy prices them)."""
        return ChipEvents(float(self.synops.sum()), float(self.spikes.sum()), self.neuron_updates,
                          self.input_spikes + self.coded_input_spikes, self.input_synops + self.coded_input_synops,
                          self.bias_writes)


def fan_out(net: EqNetwork) -> tuple[Tensor, list[Tensor]]:
    """(input fan-out, fan-out of every layer): the synapses a neuron's spike reaches (forward,
    feedback and, for the last layer, the softmax readout). SynOps = spikes x fan-out."""
    p = net.synapses[0].weight
    syn, n = net.synapses, len(net.synapses)
    out = []
    for k in range(n):
        f = torch.zeros(net.layer_shapes[k], dtype=p.dtype, device=p.device)
        if k + 1 < n:
            f += syn[k + 1].forward_fan_out(p.dtype, p.device)
        if k > 0:  # the input layer takes no feedback
            f += syn[k].feedback_fan_out(p.dtype, p.device)
        if k == n - 1 and net.readout is not None:
            f += net.n_classes
        out.append(f)
    return syn[0].forward_fan_out(p.dtype, p.device), out
