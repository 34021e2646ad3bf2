"""How far a unidirectional network's feedback weights are from its forward weights."""
from __future__ import annotations

import torch


def alignment_angles(net) -> dict[str, torch.Tensor]:
    """Angle in degrees between the forward and the feedback weights of every layer that has separate
    feedback weights (Laborieux et al. 2021, Fig. 5): 0 when aligned, about 90 for independent random
    weights. Computed in float64 on the device (read it when needed)."""
    out = {}
    for name, layer in zip(net.layer_names(), net.layers):
        wb = getattr(layer, "weight_b", None)
        if wb is not None:
            f, b = layer.weight.detach().double().flatten(), wb.detach().double().flatten()
            cos = (f @ b) / (f.norm() * b.norm()).clamp_min(1e-300)
            out[name] = torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))
    return out
