"""EqNetwork: layers of neurons joined by synapses, the primitive function Phi and one step of
the rate dynamics (Laborieux et al. 2021, Eqs. 7-8 and 16-19).

Layers: s_0 = x (clamped input), s_1 .. s_N (neurons). The interactions (`synapses`) are the terms of
Phi, each joining two layers, any pair (`edges`: (pre, post) per interaction): the chain's interaction k
joins s_k to s_{k+1}; a skip connection joins non-adjacent layers. Layer k's drive gathers the forward
drive of every interaction into it and the feedback of every interaction out of it.

* Squared error (Eq. 16): s_N is the output layer, inside the dynamics; the nudge adds
  beta * (y - s_N) to its drive, i.e. Phi^beta = Phi - beta * 1/2 ||y - s_N||^2.
* Cross-entropy (Eqs. 17-19): s_N is the last hidden layer; a softmax readout
  y_hat = softmax(w_out s_N) sits outside the dynamics, Phi^beta = Phi - beta * CE(w_out s_N, y),
  and the nudge adds beta * w_out^T (y - y_hat) to the drive of s_N.

The step is explicit: s_{t+1} = sigma(dPhi/ds(x, s_t)) (Eq. 8), composed of the interactions' layer
updates by core.relaxer (`step` is its eager synchronous case). There is no autograd graph and no
requires_grad on states while relaxing; `phi` and `drives` are the reference definitions, for checks
and for the autograd baseline. The network holds what the energy is; how it relaxes (schedule,
precision, kernels) is a Relaxer's, passed to whoever relaxes.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError, ModelConfig
from .interactions import Conv, Dense, Grads, Interaction, SoftmaxReadout, UniConv, UniDense
from .activations import get_activation
from .relaxer import EAGER

Tensor = torch.Tensor
State = tuple[Tensor, ...]


class Inputs(NamedTuple):
    """What stays constant while a batch relaxes; computed once per batch by EqNetwork.prepare."""
    x: Tensor
    drive: Tensor  # forward drive of the first layer, P(w_1 * x + b_1): x never changes
    target: Optional[Tensor]  # one-hot y (float), None when no label is given
    y: Optional[Tensor]  # integer labels
    mask: Optional[Tensor] = None  # dropout mask (0 or 1/(1-p)) of layer EqNetwork.dropout_layer, per batch


class EqNetwork(nn.Module):
    """A convergent recurrent network with static input, trained by EP or BPTT."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.input_shape = tuple(cfg.input_shape)
        self.n_classes = cfg.n_classes
        self.loss_name = cfg.loss
        self.activation = get_activation(cfg.activation)
        n_layers = len(cfg.channels) + len(cfg.hidden) + 1
        scales = cfg.init_scale if isinstance(cfg.init_scale, list) else [cfg.init_scale] * n_layers

        synapses: list[nn.Module] = []
        shape: tuple[int, ...] = self.input_shape
        # unidirectional networks: separate feedback weights for every synapse but the first (its
        # input is clamped, nothing is fed back to it)
        conv_kind = lambda i: UniConv if cfg.unidirectional and i > 0 else Conv  # noqa: E731
        dense_kind = lambda i: UniDense if cfg.unidirectional and i > 0 else Dense  # noqa: E731
        for i, ch in enumerate(cfg.channels):
            if len(shape) != 3:
                raise ValueError(f"conv layer {i} needs a (channels, height, width) input, got {shape}")
            conv = conv_kind(i)(shape, ch, cfg.kernels[i], cfg.strides[i], cfg.paddings[i], cfg.pools[i],
                                scales[i])
            synapses.append(conv)
            shape = conv.post_shape
        for j, n in enumerate(cfg.hidden):
            synapses.append(dense_kind(len(synapses))(shape, n, scales[len(cfg.channels) + j]))
            shape = (n,)
        if cfg.loss == "mse":  # the output layer is a layer of the dynamics (Eq. 16)
            synapses.append(dense_kind(len(synapses))(shape, cfg.n_classes, scales[-1]))
            readout = None
        else:  # w_out: softmax readout outside the dynamics (Eq. 17)
            readout = SoftmaxReadout(shape, cfg.n_classes, scales[-1])
        self.layer_shapes = [s.post_shape for s in synapses]
        self.edges = [(k, k + 1) for k in range(len(synapses))]  # (pre, post) layer of each interaction
        self.lr_index = list(range(len(synapses)))  # which train.lrs entry each interaction learns with
        for a, b in cfg.skips:  # skip connections: more terms of Phi, after the chain's
            synapses.append(self._skip(a, b, cfg))
            self.edges.append((a, b))
            self.lr_index.append(b - 1)  # the target layer's chain synapse's rate
        # registration order fixes parameters(): synapses first (the chain's, then the skips'), readout last
        self.synapses = nn.ModuleList(synapses)
        self.readout = readout
        self._index_edges()
        self.memory_format = torch.contiguous_format
        self.check_labels = True  # prepare() checks label ranges (one device sync); off once a data set is checked
        # dropout (the paper's supplementary 4.5): the neurons of one layer, the last conv layer (the
        # first hidden layer without convolutions), are seen by the interactions above them through a
        # mask drawn once per batch, the same in every phase and unrolled step; off in evaluation
        self.dropout = cfg.dropout
        self.dropout_layer = (len(cfg.channels) - 1 if cfg.channels else 0) if cfg.dropout > 0 else None
        if self.dropout_layer is not None and self.dropout_layer == len(synapses) - 1 and self.readout is None:
            raise ValueError("model.dropout needs a layer whose neurons feed another layer or a readout")

    def draw_mask(self, batch: int, generator: Optional[torch.Generator] = None) -> Optional[Tensor]:
        """A dropout mask for a batch: 0 with probability p, else 1/(1-p) (None without dropout)."""
        if self.dropout_layer is None:
            return None
        p = self.synapses[0].weight
        gdev = generator.device if generator is not None else p.device
        u = torch.rand(batch, *self.layer_shapes[self.dropout_layer], generator=generator, device=gdev)
        return self.mask_from_uniform(u)

    def mask_from_uniform(self, u: Tensor) -> Optional[Tensor]:
        """The dropout mask of uniform numbers u (batch, *dropout layer shape), e.g. keyed per sample."""
        if self.dropout_layer is None:
            return None
        p = self.synapses[0].weight
        keep = u.reshape(u.shape[0], *self.layer_shapes[self.dropout_layer]) >= self.dropout
        return self._layout(keep.to(device=p.device, dtype=p.dtype).div_(1 - self.dropout))

    def _skip(self, a: int, b: int, cfg: ModelConfig) -> Interaction:
        """The interaction of model.skips [a, b] (see ModelConfig): dense into a dense layer, else a conv
        whose pooling (and stride) halve the size as many times as layer b is smaller than layer a."""
        pre, post = self.layer_shapes[a - 1], self.layer_shapes[b - 1]
        uni = cfg.unidirectional
        if len(post) == 1:
            return (UniDense if uni else Dense)(pre, post[0], cfg.skip_scale)
        r, k = pre[1] // post[1], cfg.skip_kernel
        if r not in (1, 2, 4) or pre[1] != r * post[1] or pre[2] != r * post[2]:
            raise ConfigError(f"model.skips [{a}, {b}]: layer {a} is {tuple(pre)}, layer {b} {tuple(post)}: a conv "
                              f"skip halves the size at most twice (sizes 1, 2 or 4 times the target's)")
        return (UniConv if uni else Conv)(pre, post[0], k, 2 if r == 4 else 1, k // 2,
                                          "i" if r == 1 else cfg.skip_pool, cfg.skip_scale)

    def _index_edges(self) -> None:
        """into[k] / out_of[k]: the interactions whose post / pre layer is k (in interaction order)."""
        n = len(self.layer_shapes)
        for j, (a, b) in enumerate(self.edges):
            if not (0 <= a <= n and 1 <= b <= n and a != b):
                raise ValueError(f"interaction {j} joins layers {a} and {b}; layers are 0 (input) .. {n}")
            if a == 0 and (b != 1 or j != 0):
                raise ValueError(f"interaction {j} starts at the input: only the first interaction, into "
                                 f"layer 1, may (the input's drive is computed once per batch)")
            if tuple(self.synapses[j].post_shape) != tuple(self.layer_shapes[b - 1]):
                raise ValueError(f"interaction {j} ({a} -> {b}) gives shape {tuple(self.synapses[j].post_shape)}, "
                                 f"layer {b} has {tuple(self.layer_shapes[b - 1])}")
        self.into = [[j for j, (_, b) in enumerate(self.edges) if b == k] for k in range(n + 1)]
        self.out_of = [[j for j, (a, _) in enumerate(self.edges) if a == k] for k in range(n + 1)]

    @property
    def is_chain(self) -> bool:
        """Whether every interaction joins neighbouring layers (no skip connection)."""
        return all(b == a + 1 for a, b in self.edges)

    def seen_by_interactions(self, layers: tuple, mask: Optional[Tensor]) -> tuple:
        """The layers (input first) as the interactions whose pre layer they are see them: the dropout
        layer masked."""
        return self._as_seen_above(layers, mask, offset=1)

    def _as_seen_above(self, layers: tuple, mask: Optional[Tensor], offset: int = 0) -> tuple:
        """The layers as the interactions above them see them: the dropout layer masked (`offset` 1
        when layers[0] is the input)."""
        if mask is None:
            return layers
        k = self.dropout_layer + offset
        return layers[:k] + (layers[k] * mask,) + layers[k + 1:]

    def use_channels_last(self, enable: bool = True) -> "EqNetwork":
        """Keep conv weights, inputs and conv-layer states in NHWC order. Same math; on CPU the
        oneDNN convolutions run without layout reorders (see analysis/bench_relax.py)."""
        self.memory_format = torch.channels_last if enable else torch.contiguous_format
        for syn in self.synapses:
            syn.to_memory_format(self.memory_format)
        return self

    def _layout(self, t: Tensor) -> Tensor:
        return t.contiguous(memory_format=self.memory_format) if t.dim() == 4 else t

    # -- bookkeeping ------------------------------------------------------------------------------
    @property
    def layers(self) -> list[Interaction]:
        """Every interaction with parameters, readout last: one learning rate each."""
        return list(self.synapses) + ([self.readout] if self.readout is not None else [])

    def lr_slots(self) -> list[int]:
        """For each of `layers`, which train.lrs entry it learns with (one per chain layer, readout last)."""
        chain = sum(b == a + 1 for a, b in self.edges)  # the readout's entry follows the chain's
        return list(self.lr_index) + ([chain] if self.readout is not None else [])

    def layer_names(self) -> list[str]:
        names = [f"{s.kind}{k}" if b == a + 1 else f"{s.kind}_skip{a}to{b}"
                 for k, (s, (a, b)) in enumerate(zip(self.synapses, self.edges))]
        return names + (["readout"] if self.readout is not None else [])

    def layer_prefixes(self) -> list[str]:
        """The state-dict prefix of each layer's parameters ('synapses.0.', ..., 'readout.')."""
        return [f"synapses.{k}." for k in range(len(self.synapses))] + (["readout."] if self.readout is not None else [])

    def layer_parameters(self) -> dict[str, list[str]]:
        """Layer name -> the full names of its parameters (weight and bias, as in named_parameters)."""
        return {name: [pre + p for p in layer.param_names]
                for name, pre, layer in zip(self.layer_names(), self.layer_prefixes(), self.layers)}

    def init_state(self, batch: int) -> State:
        p = self.synapses[0].weight
        return tuple(self._layout(torch.zeros(batch, *s, dtype=p.dtype, device=p.device)) for s in self.layer_shapes)

    def prepare(self, x: Tensor, y: Optional[Tensor] = None) -> Inputs:
        """Check the batch and compute what stays constant while it relaxes."""
        p = self.synapses[0].weight
        if not torch.is_tensor(x) or x.dim() < 2:
            raise ValueError(f"input must be a batch tensor of shape (B, {', '.join(map(str, self.input_shape))}), "
                             f"got {type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
        first = self.synapses[0]
        ok = (math.prod(x.shape[1:]) == math.prod(self.input_shape) if first.flattens_input
              else tuple(x.shape[1:]) == self.input_shape)
        if not ok:
            raise ValueError(f"input has shape {tuple(x.shape)}, the network expects (B, "
                             f"{', '.join(map(str, self.input_shape))})")
        x = self._layout(x.to(device=p.device, dtype=p.dtype))
        target = None
        if y is not None:
            if y.shape != (x.shape[0],):
                raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
            y = y.to(p.device)
            if y.numel() and self.check_labels:
                lo, hi = (int(v) for v in torch.aminmax(y))  # one device sync per batch
                if lo < 0 or hi >= self.n_classes:
                    raise ValueError(f"labels must lie in [0, {self.n_classes}), got {lo}..{hi}")
            target = F.one_hot(y, self.n_classes).to(p.dtype)
        drive, _ = first.forward_drive(x)
        return Inputs(x, drive, target, y)

    # -- Phi and the loss (reference definitions, differentiable) --------------------------------
    def logits(self, state: State, mask: Optional[Tensor] = None) -> Tensor:
        """Network output: s_N for squared error, the readout's logits w_out s_N for cross-entropy."""
        if self.readout is None:
            return state[-1]
        return self.readout.forward_drive(self._as_seen_above(tuple(state), mask)[-1])[0]

    def loss(self, state: State, y: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Per-sample loss: 1/2 ||s_N - y||^2 (Eq. 16) or CE(w_out s_N, y) (Eq. 18)."""
        if self.readout is None:
            t = F.one_hot(y, self.n_classes).to(state[-1].dtype)
            return 0.5 * ((state[-1] - t) ** 2).sum(1)
        return F.cross_entropy(self.logits(state, mask), y, reduction="none")

    def phi(self, x: Tensor, state: State, beta: float = 0.0, y: Optional[Tensor] = None,
            mask: Optional[Tensor] = None) -> Tensor:
        """Per-sample Phi^beta(x, s) = sum_k s_k . P(w_k * s_{k-1}) - beta L(s, y) (Eqs. 7, 16, 18)."""
        layers = (x,) + tuple(state)
        seen = self.seen_by_interactions(layers, mask)
        phi = sum(syn.phi(seen[a], layers[b]) for syn, (a, b) in zip(self.synapses, self.edges))
        if beta != 0.0:
            phi = phi - beta * self.loss(state, y, mask)
        return phi

    # -- explicit dynamics --------------------------------------------------------------------------
    def nudge(self, s_last: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """-dL/ds_N, the direction the nudge pushes the last layer (times beta in the drive). `mask`:
        the dropout mask when the last layer is the dropout layer (the readout sees it masked)."""
        if self.readout is None:
            return target - s_last  # Eq. 16
        p = torch.softmax(self.readout.forward_drive(s_last if mask is None else s_last * mask)[0], dim=1)
        g = self.readout.feedback_drive(target - p)  # Eq. 19: w_out^T (y - softmax)
        return g if mask is None else g * mask

    def total_drives(self, fwd: list[Tensor], fb: list[Tensor], s_last: Optional[Tensor],
                     target: Optional[Tensor], beta: float = 0.0, nudge_mask: Optional[Tensor] = None) -> list[Tensor]:
        """dPhi^beta/ds_k = forward drive fwd[k] + feedback drive fb[k] (k < N) + beta * nudge (k = N).

        Shared by the rate and the spiking networks (which pass drives built from synaptic currents
        and the spike trace of the last layer as s_last). fwd[0] may be the batch's constant input
        drive and is never written into; the other forward drives are fresh and are summed in place.
        """
        n = len(fwd)
        out = [fwd[0] + fb[0] if n > 1 else fwd[0].clone()]
        out += [fwd[k].add_(fb[k]) for k in range(1, n - 1)]
        if n > 1:
            out.append(fwd[-1])
        if beta != 0.0:
            out[-1] = out[-1].add_(self.nudge(s_last, target, nudge_mask), alpha=beta)
        return out

    def drives(self, inp: Inputs, state: State, beta: float = 0.0) -> list[Tensor]:
        """dPhi^beta/ds for every layer by the interactions' reference definitions (forward_drive,
        feedback_drive): each layer's forward drives, then its feedback drives, in interaction order.

        The max-pool indices an interaction finds in its forward pass (on this step's state) route its
        feedback, exactly as autograd would differentiate Phi."""
        mask, n = inp.mask, len(self.layer_shapes)
        layers = (inp.x,) + tuple(state)
        seen = self.seen_by_interactions(layers, mask)
        fwd: list = [[] for _ in range(n + 1)]
        fb: list = [[] for _ in range(n + 1)]
        for j, (syn, (a, b)) in enumerate(zip(self.synapses, self.edges)):
            d, idx = (inp.drive, None) if a == 0 else syn.forward_drive(seen[a])
            fwd[b].append(d)
            if a > 0:
                fb[a].append(syn.feedback_drive(layers[b], idx))
        total = lambda parts: None if not parts else sum(parts[1:], parts[0])  # noqa: E731 (in order)
        out = []
        for k in range(1, n + 1):
            f = total(fb[k])
            if f is not None and mask is not None and k == self.dropout_layer + 1:
                f = f * mask  # the feedback reaches dropped neurons masked
            out.append(total(fwd[k]) if f is None else total(fwd[k]) + f)
        if beta != 0.0:
            last_mask = mask if mask is not None and self.dropout_layer == n - 1 else None
            out[-1] = out[-1] + beta * self.nudge(state[-1], inp.target, last_mask)
        return out

    def step(self, inp: Inputs, state: State, beta: float = 0.0) -> State:
        """One synchronous step s_{t+1} = sigma(dPhi^beta/ds(x, s_t)) (Eq. 8): the eager case of
        core.relaxer (a pure function of parameters, inputs, state and beta)."""
        return EAGER.step(self, inp, state, beta)

    # -- local updates ----------------------------------------------------------------------------
    @torch.no_grad()
    def dphi_dtheta(self, inp: Inputs, state: State, beta: float = 0.0) -> Grads:
        """Batch-mean dPhi^beta/dtheta for every parameter, by its name in named_parameters().

        Each interaction's share depends only on the states of its own two layers; the readout's is
        -beta dL/dw_out (Eq. 18), which depends on s_N and the label.
        """
        layers = (inp.x,) + tuple(state)
        seen = self.seen_by_interactions(layers, inp.mask)  # pre as the interactions above see it
        grads: Grads = {}
        for k, (syn, (a, b)) in enumerate(zip(self.synapses, self.edges)):
            grads.update({f"synapses.{k}.{n}": g for n, g in syn.local_update(seen[a], layers[b]).items()})
        if self.readout is not None:
            upd = self.readout.cost_update(seen[-1], inp.target, beta)
            grads.update({f"readout.{n}": g for n, g in upd.items()})
        return grads

    @torch.no_grad()
    def dphi_dtheta_delta(self, inp_a: Inputs, state_a: State, beta_a: float, inp_b: Inputs, state_b: State,
                          beta_b: float) -> Grads:
        """dPhi^beta_a/dtheta(s_a) - dPhi^beta_b/dtheta(s_b) by parameter name, each interaction
        differencing the two phases' states before correlating them (no cancellation of nearly equal
        terms). inp_a.x is inp_b.x for a clamped input; spiking phases bring their own input rates."""
        layers_a, layers_b = (inp_a.x,) + tuple(state_a), (inp_b.x,) + tuple(state_b)
        seen_a = self.seen_by_interactions(layers_a, inp_a.mask)
        seen_b = self.seen_by_interactions(layers_b, inp_b.mask)
        grads: Grads = {}
        for k, (syn, (a, b)) in enumerate(zip(self.synapses, self.edges)):
            d = syn.local_update_delta(seen_a[a], layers_a[b], seen_b[a], layers_b[b])
            grads.update({f"synapses.{k}.{n}": g for n, g in d.items()})
        if self.readout is not None:  # -beta dCE/dw_out: of opposite signs in the two phases, no cancellation
            ua = self.readout.cost_update(seen_a[-1], inp_a.target, beta_a)
            ub = self.readout.cost_update(seen_b[-1], inp_b.target, beta_b)
            grads.update({f"readout.{n}": ua[n] - ub[n] for n in ua})
        return grads

    def forward(self, x: Tensor, state: State, beta: float = 0.0, y: Optional[Tensor] = None) -> State:
        """One step from scratch: prepare (x, y) and run `step` (used with torch.func.functional_call)."""
        return self.step(self.prepare(x, y), state, beta)

    def extra_repr(self) -> str:
        return f"input={self.input_shape}, activation={self.activation.name}, loss={self.loss_name}"
