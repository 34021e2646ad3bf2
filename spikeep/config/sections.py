"""The sections of a config: one dataclass each, with the checks it can make by itself."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Union


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and the file."""


# Magnitudes past these overflow float32 arithmetic somewhere in a step (beta x nudge, lr x gradient,
# scale x weights) long before they could mean anything; refused with the key's name.
LIMITS = {"estimator.beta": 1e4, "estimator.kp_leak": 1e4, "train.lrs": 1e4, "train.weight_decay": 1e4,
          "train.momentum": 1e3, "train.eta_min": 1e4, "model.init_scale": 1e3, "model.skip_scale": 1e3, "data.mean": 1e6,
          "dynamics.tol": 1e6}


def check_magnitude(key: str, value) -> None:
    """Every number of `value` (a number or a list) within +-LIMITS[key]."""
    lim = LIMITS[key]
    for v in value if isinstance(value, list) else [value]:
        if not abs(v) <= lim:
            raise ConfigError(f"{key} = {v!r} is out of range: |{key}| must be <= {lim:g} (larger values "
                              f"overflow float32 arithmetic)")


@dataclass
class ModelConfig:
    """Network architecture (Laborieux et al. 2021, Sec. 4): conv layers, then dense layers.

    Each conv layer i has channels[i], kernels[i], strides[i], paddings[i] and a pooling letter
    pools[i] ('m' max, 'a' avg, 'i' none). `hidden` lists dense hidden layers after the convs; the
    last layer has n_classes units: an output layer in the dynamics for loss = "mse", a softmax
    readout outside it for loss = "cross_entropy".
    """
    input_shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    channels: list[int] = field(default_factory=list)
    kernels: list[int] = field(default_factory=list)
    strides: list[int] = field(default_factory=list)
    paddings: list[int] = field(default_factory=list)
    pools: str = ""
    hidden: list[int] = field(default_factory=lambda: [512])
    n_classes: int = 10
    activation: str = "my_hard_sig"
    loss: str = "mse"  # "mse" or "cross_entropy"
    init_scale: Union[float, list[float]] = 1.0  # one for all layers or one per layer
    neurons: str = "rate"  # "rate" (Eq. 8 dynamics) or "spiking" (IF / LIF-box twin, see [spiking])
    unidirectional: bool = False  # separate feedback weights w_b for every synapse but the first (Sec. 2.4)
    dropout: float = 0.0  # probability, on the last conv layer's neurons (first hidden layer without convs)
    # skip connections: [from, to] pairs of layers of neurons (1 = the first, N = the last in the dynamics),
    # to >= from + 2; each is one more term of Phi: a dense interaction into a dense layer (a conv layer
    # below flattened), or between conv layers a conv interaction (kernel skip_kernel, stride 1, 'same'
    # padding; a 2x2 skip_pool per halving of the size, stride 2 for a second); it learns with its target
    # layer's train.lrs entry. Rate networks (the spiking simulator runs chains).
    skips: list[list[int]] = field(default_factory=list)
    skip_kernel: int = 3
    skip_pool: str = "a"
    skip_scale: float = 1.0  # the skip interactions' init scale (PyTorch's default init times it)

    def validate(self) -> None:
        n = len(self.channels)
        for name in ("kernels", "strides", "paddings"):
            if len(getattr(self, name)) != n:
                raise ConfigError(f"model.{name} has {len(getattr(self, name))} entries, "
                                  f"model.channels has {n}: give one per conv layer")
        if len(self.pools) != n:
            raise ConfigError(f"model.pools {self.pools!r} has {len(self.pools)} letters for {n} conv layers")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must lie in [0, 1), got {self.dropout}")
        if self.dropout > 0 and self.neurons == "spiking":
            raise ConfigError("model.dropout is for rate networks (model.neurons = 'rate')")
        if self.neurons not in ("rate", "spiking"):
            raise ConfigError(f"model.neurons must be 'rate' or 'spiking', got {self.neurons!r}")
        if self.loss not in ("mse", "cross_entropy"):
            raise ConfigError(f"model.loss must be 'mse' or 'cross_entropy', got {self.loss!r}")
        if not self.input_shape or any(d < 1 for d in self.input_shape):
            raise ConfigError(f"model.input_shape must be positive sizes, got {self.input_shape}")
        if any(c < 1 for c in self.channels + self.hidden) or self.n_classes < 2:
            raise ConfigError("model.channels and model.hidden must be >= 1 and n_classes >= 2")
        n_layers = n + len(self.hidden) + 1
        if isinstance(self.init_scale, list) and len(self.init_scale) != n_layers:
            raise ConfigError(f"model.init_scale has {len(self.init_scale)} entries for {n_layers} layers")
        check_magnitude("model.init_scale", self.init_scale)
        self._validate_skips(n_layers - (self.loss != "mse"))

    def _validate_skips(self, n_layers: int) -> None:
        for pair in self.skips:
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, int) for v in pair)):
                raise ConfigError(f"model.skips entries are [from, to] pairs of layer numbers, got {pair!r}")
            a, b = pair
            if not (1 <= a and a + 2 <= b <= n_layers):
                raise ConfigError(f"model.skips {pair}: layers are 1..{n_layers} and a skip joins non-adjacent "
                                  f"ones, from < to - 1")
            if a > len(self.channels) >= 0 and b <= len(self.channels):
                raise ConfigError(f"model.skips {pair}: from a dense layer into a conv layer is not supported")
        if len({tuple(p) for p in self.skips}) != len(self.skips):
            raise ConfigError(f"model.skips has a pair twice: {self.skips}")
        if self.skips and self.neurons == "spiking":
            raise ConfigError("model.skips: the spiking simulator runs chains of layers; use model.neurons = 'rate'")
        if self.skip_pool not in ("m", "a") or self.skip_kernel < 1 or self.skip_kernel % 2 == 0:
            raise ConfigError(f"model.skip_pool must be 'm' or 'a' and model.skip_kernel an odd number >= 1, got "
                              f"{self.skip_pool!r}, {self.skip_kernel}")
        check_magnitude("model.skip_scale", self.skip_scale)


@dataclass
class DynamicsConfig:
    """Relaxation: T1 free steps, T2 steps per nudged phase, optional early stop at tol."""
    T1: int = 20
    T2: int = 4
    tol: float = 0.0  # a phase ends early once max |s_{t+1} - s_t| < tol (0: run all steps)
    tol_every: int = 1  # steps between convergence checks (each reads one number from the device)
    # how a phase ends early: "max_change" (the largest single change below tol), or "relative" (every
    # layer's change over tol_every steps below rtol times the phases' difference |s^beta - s*|, at
    # `patience` checks in a row; core.dynamics.Settling; rate EP only)
    stop: str = "max_change"
    rtol: float = 0.05
    free_rtol: float = 0.0  # the free phase's rtol under "relative" (0: rtol)
    patience: int = 2
    dtype: str = "float32"  # or "float64" for checks
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", ... or "auto"
    channels_last: bool = True  # NHWC conv layers (same math, faster oneDNN/cuDNN convolutions)
    # how drives are computed: "strict" (in dtype; TF32 off on CUDA), "tf32" (CUDA matmuls and
    # convolutions in TF32), "bf16" (drives in bfloat16, states and estimates in float32),
    # "bf16_incremental" (float32 drives updated by bfloat16 convolutions of each step's change, an exact
    # float32 recomputation every recompute_every steps: float32-accurate equilibria, core.relaxer)
    precision: str = "strict"
    # how steps run (core.relaxer, one layer update for all): "eager" (the reference: PyTorch kernels,
    # nudged phases one after the other), "fused" (PyTorch kernels, the +-beta phases as one batch, CUDA
    # graphs), "triton" (the same with Triton kernels; CUDA), "auto" (eager on the CPU, triton on CUDA
    # where Triton imports, else fused)
    engine: str = "auto"
    schedule: str = "sync"  # "sync" (Eq. 8) or "async" (red-black: even layers, then odd; fused engines)
    recompute_every: int = 20  # bf16_incremental: steps between exact float32 recomputations of the drives
    graphs: bool = True  # fused engines on CUDA: each block of steps captured and replayed as a CUDA graph
    # where the free phase starts: "none" (zeros), "previous_batch" (the last batch's free equilibrium),
    # "per_sample" (each training sample's last free equilibrium, kept on the device in bfloat16 and saved
    # in checkpoints)
    warm_start: str = "none"

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"dynamics.precision must be one of {', '.join(map(repr, PRECISIONS))}, "
                              f"got {self.precision!r}")
        if self.engine not in ("auto", "eager", "fused", "triton"):
            raise ConfigError(f"dynamics.engine must be 'auto', 'eager', 'fused' or 'triton', got {self.engine!r}")
        if self.schedule not in ("sync", "async"):
            raise ConfigError(f"dynamics.schedule must be 'sync' or 'async', got {self.schedule!r}")
        if self.warm_start not in ("none", "previous_batch", "per_sample"):
            raise ConfigError(f"dynamics.warm_start must be 'none', 'previous_batch' or 'per_sample', "
                              f"got {self.warm_start!r}")
        if self.recompute_every < 1:
            raise ConfigError(f"dynamics.recompute_every must be >= 1 step, got {self.recompute_every}")
        if self.engine == "eager" and (self.schedule != "sync" or self.precision == "bf16_incremental"):
            raise ConfigError("dynamics.engine = 'eager' runs only schedule = 'sync' with a precision that "
                              "recomputes its drives; use engine = 'fused' or 'triton' (or 'auto')")
        if self.precision == "bf16_incremental" and self.schedule != "sync":
            raise ConfigError("dynamics.precision = 'bf16_incremental' needs dynamics.schedule = 'sync'")
        if self.dtype == "float64" and self.precision != "strict":
            raise ConfigError(f"dynamics.precision = {self.precision!r} needs dynamics.dtype = 'float32'")
        if self.T1 <= 0 or self.T2 <= 0:
            raise ConfigError(f"dynamics.T1 and dynamics.T2 must be > 0, got T1={self.T1}, T2={self.T2}")
        if self.tol < 0 or not math.isfinite(self.tol):
            raise ConfigError(f"dynamics.tol must be a finite number >= 0, got {self.tol}")
        check_magnitude("dynamics.tol", self.tol)
        if self.tol_every < 1:
            raise ConfigError(f"dynamics.tol_every must be >= 1 step, got {self.tol_every}")
        if self.stop not in ("max_change", "relative"):
            raise ConfigError(f"dynamics.stop must be 'max_change' or 'relative', got {self.stop!r}")
        if not (0 < self.rtol < 1e6):
            raise ConfigError(f"dynamics.rtol must be a number > 0, got {self.rtol}")
        if not (0 <= self.free_rtol < 1e6):
            raise ConfigError(f"dynamics.free_rtol must be >= 0 (0: dynamics.rtol), got {self.free_rtol}")
        if self.patience < 1:
            raise ConfigError(f"dynamics.patience must be >= 1 check, got {self.patience}")
        if self.stop == "relative" and self.tol:
            raise ConfigError("dynamics.stop = 'relative' ends phases by dynamics.rtol: set dynamics.tol = 0 "
                              f"(got {self.tol})")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"dynamics.dtype must be 'float32' or 'float64', got {self.dtype!r}")


PRECISIONS = ("strict", "tf32", "bf16", "bf16_incremental")
ESTIMATORS = ("one_sided", "random_sign", "symmetric", "sym_vf", "sym_kp_vf", "bptt")


@dataclass
class EstimatorConfig:
    """Which gradient: EP one-sided (Eq. 4), random-sign, symmetric (Eq. 12); for unidirectional
    networks symVF (Eq. 20) or symKP-VF (Eq. 21, with leakage kp_leak); or BPTT."""
    name: str = "symmetric"
    beta: float = 0.5
    truncate: int = 0  # BPTT only: backpropagate through the last `truncate` steps (0: all T1)
    kp_leak: float = 0.0  # sym_kp_vf: leakage lambda shared by w_f and w_b (Eq. 21)

    def validate(self) -> None:
        if self.name not in ESTIMATORS:
            raise ConfigError(f"estimator.name must be one of {', '.join(ESTIMATORS)}, got {self.name!r}")
        if self.name != "bptt" and (self.beta == 0 or not math.isfinite(self.beta)):
            raise ConfigError(f"estimator.beta must be a nonzero finite number for EP, got {self.beta}")
        if self.truncate < 0:
            raise ConfigError(f"estimator.truncate must be >= 0, got {self.truncate}")
        if self.kp_leak < 0:
            raise ConfigError(f"estimator.kp_leak must be >= 0, got {self.kp_leak}")
        check_magnitude("estimator.beta", self.beta)
        check_magnitude("estimator.kp_leak", self.kp_leak)


@dataclass
class TrainConfig:
    epochs: int = 1
    batch_size: int = 64
    lrs: list[float] = field(default_factory=lambda: [0.05, 0.025])  # one per layer, readout last
    momentum: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0
    eval_batch_size: int = 1000
    # "constant", or "cosine": torch's CosineAnnealingLR(T_max, eta_min) stepped once per epoch
    scheduler: str = "constant"
    T_max: int = 0  # cosine period in epochs (0: the number of epochs)
    eta_min: float = 0.0
    checkpoint_every: int = 0  # also checkpoint every N iterations within an epoch (0: epoch ends only)
    # and whenever this many minutes have passed since the last checkpoint (0: off), so that a killed
    # long run always has something recent to resume (checked where the run reads the device: sync_every)
    checkpoint_minutes: float = 10.0
    # CPU threads for torch: 0 = auto (OMP_NUM_THREADS if set; else 1 without conv layers, where more
    # were measured no faster and much slower on a busy machine; for ConvNets the cores not busy by
    # the 1-minute load average); N > 0: exactly N (see analysis/results/threads/)
    threads: int = 0
    # data parallel (torchrun): batch_size is per process, the global batch batch_size x processes; the
    # learning rates are scaled by "none" (1), "linear" (x processes) or "sqrt" (x sqrt(processes))
    lr_scaling: str = "none"
    # iterations between reads from the device: finite checks (which still name layer and iteration)
    # and the progress bar's metrics; also done before every checkpoint and at every epoch end
    sync_every: int = 1
    # deterministic kernels (torch.use_deterministic_algorithms, cuDNN deterministic): what bitwise
    # resume needs on CUDA, at some cost in speed; the CPU is deterministic either way
    deterministic: bool = False
    # keep the weights after every epoch as weights/epoch_NNN.pt (best.pt's format), for analyses of
    # the network at several stages of training (steps to equilibrium, estimate quality, spiking twins)
    keep_epoch_weights: bool = False
    # a wall-clock budget for this invocation's training, evaluations included (0: none): the epochs and
    # the cosine's T_max are fitted to it from timed iterations (plan.json), and a run that would overrun
    # stops at a batch boundary, checkpoints and evaluates (spikeep.time_budget)
    minutes: float = 0.0
    budget_margin: float = 1.1  # the plan fills minutes / budget_margin
    # also write weights_fp16.pt at the end (and at a cut): the weights in float16, a small file to keep
    half_weights: bool = False

    def validate(self) -> None:
        if self.sync_every < 1:
            raise ConfigError(f"train.sync_every must be >= 1 iteration, got {self.sync_every}")
        if self.checkpoint_every < 0 or self.T_max < 0 or self.weight_decay < 0 or self.momentum < 0:
            raise ConfigError("train.checkpoint_every, T_max, weight_decay and momentum must be >= 0")
        if not 0 <= self.minutes < 1e6:
            raise ConfigError(f"train.minutes must be >= 0 (0: no time budget), got {self.minutes}")
        if not 1 <= self.budget_margin < 100:
            raise ConfigError(f"train.budget_margin must be >= 1, got {self.budget_margin}")
        if not 0 <= self.checkpoint_minutes < 1e6:
            raise ConfigError(f"train.checkpoint_minutes must be >= 0 (0: off), got {self.checkpoint_minutes}")
        if self.lr_scaling not in ("none", "linear", "sqrt"):
            raise ConfigError(f"train.lr_scaling must be 'none', 'linear' or 'sqrt', got {self.lr_scaling!r}")
        if not 0 <= self.threads <= 4096:
            raise ConfigError(f"train.threads must be 0 (auto) or a number of CPU threads, got {self.threads}")
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("train.epochs, train.batch_size and train.eval_batch_size must be >= 1")
        if self.scheduler not in ("constant", "cosine"):
            raise ConfigError(f"train.scheduler must be 'constant' or 'cosine', got {self.scheduler!r}")
        if any(lr < 0 for lr in self.lrs):
            raise ConfigError(f"train.lrs must be >= 0, got {self.lrs}")
        for key in ("lrs", "weight_decay", "momentum", "eta_min"):
            check_magnitude(f"train.{key}", getattr(self, key))


@dataclass
class DataConfig:
    name: str = "mnist"  # "mnist", "mnist-quickstart" (shipped inside spikeep), "cifar10"
    root: str = ""  # data folder; empty: $SPIKEEP_DATA, else ~/.cache/spikeep/data
    npz: str = ""  # CIFAR-10 as an npz file (default ROOT/cifar10/cifar10.npz)
    subset: int = 0  # keep N training samples drawn at random (0: all)
    subset_seed: int = 0
    test_subset: int = 0  # evaluate on N test samples drawn at random (fixed by subset_seed; 0: all)
    download: bool = False  # let torchvision download missing files (needs internet)
    mean: list[float] = field(default_factory=list)  # per-channel normalisation (empty: none)
    std: list[float] = field(default_factory=list)
    crop_padding: int = 0  # random crop of the original size after padding by this much (0: off)
    padding_mode: str = "edge"  # "constant", "edge", "reflect", "symmetric"
    hflip: bool = False  # random horizontal flip

    def validate(self) -> None:
        if self.subset < 0 or self.crop_padding < 0 or self.test_subset < 0:
            raise ConfigError("data.subset, data.test_subset and data.crop_padding must be >= 0")
        if len(self.mean) != len(self.std):
            raise ConfigError(f"data.mean and data.std must have the same length, got {self.mean} and {self.std}")
        if any(not v >= 1e-6 for v in self.std):
            raise ConfigError(f"data.std must be >= 1e-6 (it divides the pixels), got {self.std}")
        check_magnitude("data.mean", self.mean)
        if self.padding_mode not in ("constant", "edge", "reflect", "symmetric"):
            raise ConfigError(f"data.padding_mode must be constant, edge, reflect or symmetric, "
                              f"got {self.padding_mode!r}")


@dataclass
class GDUConfig:
    """Step-wise EP vs BPTT check (Ernoult et al. 2019 Eq. 6; Laborieux et al. Fig. 2)."""
    K: int = 20  # nudged steps compared
    beta: float = 1e-3
    batch_size: int = 8
    seed: int = 0


@dataclass
class TraceConfig:
    """Weight traces written to RUN_DIR/traces.h5 during training (see spikeep/traces.py)."""
    enabled: bool = False
    sample: int = 1000  # synapses per layer, drawn at random once, recorded every iteration
    full_every: int = 0  # full weight tensors every N iterations (0: off)
    full_each_epoch: bool = True  # and at every epoch end
    probe: int = 0  # equilibrium states of this many test samples at each full snapshot (0: off)
    compression: str = "gzip"  # "gzip" (deflate + shuffle: every HDF5 tool reads it), "none", or "lzf" (h5py only)
    gzip_level: int = 4  # 1..4
    flush_every: int = 10  # iterations between flushes (what a crash can lose at most)
    chunk: int = 64  # rows per chunk along time (at most flush_every: a flush then writes whole chunks)
    seed: int = 0

    def validate(self) -> None:
        if self.sample < 1:
            raise ConfigError(f"traces.sample must be >= 1 synapse per layer, got {self.sample} (to record no "
                              f"traces, set traces.enabled = false)")
        if self.full_every < 0 or self.probe < 0:
            raise ConfigError("traces.full_every and traces.probe must be >= 0")
        if self.flush_every < 1 or self.chunk < 1:
            raise ConfigError("traces.flush_every and traces.chunk must be >= 1")
        if self.sample > 2**24 or self.chunk > 2**16 or self.sample * self.chunk * 4 >= 2**32:
            raise ConfigError(f"traces.sample ({self.sample}) x traces.chunk ({self.chunk}) x 4 bytes must stay "
                              f"under HDF5's 4 GiB chunk limit (sample <= 16777216, chunk <= 65536)")
        if self.compression not in ("none", "lzf", "gzip"):
            raise ConfigError(f"traces.compression must be 'none', 'lzf' or 'gzip', got {self.compression!r}")
        if not 1 <= self.gzip_level <= 4:
            raise ConfigError(f"traces.gzip_level must be 1..4, got {self.gzip_level}")


@dataclass
class PlasticityConfig:
    """Chip-like synapses (see spikeep/learning/plasticity.py): bits = 0 keeps float weights. `profile`
    names a chip preset (spikeep/hardware/chips.py: ideal, loihi2, brainscales2, spinnaker, memristor)
    that fills the keys of this table and the neuron constants of [spiking]; keys given explicitly win."""
    profile: str = ""
    bits: int = 0
    scale: Union[str, float] = "init"  # "init", "pow2" or a fixed grid spacing > 0
    rounding: str = "nearest"  # "nearest", "stochastic" or "residual"
    threshold: float = 0.0  # ignore moves below this many grid spacings
    device: str = "linear"  # "linear" or "memristor"
    levels: int = 32
    nu_p: float = 0.0
    nu_d: float = 0.0
    noise: float = 0.0
    headroom: float = 1.0  # weight range = headroom x the initial max |w| of the layer
    seed: int = 0


@dataclass
class SpikingConfig:
    """Spiking neurons (model.neurons = "spiking", see spikeep/spiking/). An IF neuron with
    threshold theta fires at clip(I / theta, 0, 1): theta = 2 is the twin of my_hard_sig,
    theta = 1 of hard_sigmoid. Step budgets T1 / T2 replace dynamics.T1 / T2; phases run whole windows."""
    T1: int = 200  # free-phase step budget
    T2: int = 100  # step budget of each nudged phase
    window: int = 50  # steps per rate window (rates = spike counts of the last window / window)
    rate_tol: float = 0.0  # end a phase once the settle statistic of two successive windows is <= this (0: off)
    settle_statistic: str = "excess"  # per sample and layer: "excess" (mean of (|dr| - 1/window)+), "mean" or "max" |dr|
    settle_quantile: float = 1.0  # fraction of the batch's samples that must have settled (1: all)
    theta: float = 2.0
    leak: float = 0.0  # dt / tau_mem (0: integrate-and-fire; > 0: Norse's LIF box)
    refractory: int = 0  # steps
    v_min: Union[float, str] = -2.0  # lower bound of the membrane potential, or "none" (no bound)
    reset: str = "subtract"  # after a spike: "subtract" (v <- v - theta) or "zero" (v <- 0; with v_min = "none" NIR's IF)
    syn_alpha: float = 1.0  # synaptic current filter (1: none)
    pool_alpha: float = 1.0  # max-pools route by the maxima of a trace of the current with this filter (1: the step's own)
    trace_tau: float = 10.0  # steps: output spike trace that feeds the nudge
    encoding: str = "current"  # "current" or "poisson"
    chip_input: str = ""  # energy estimates: how the chip takes the input, "spikes" or "bias" ("": the profile's)
    backend: str = "auto"  # "auto", "dense" or "event"
    crossover: float = -1.0  # activity below which "auto" uses events (< 0: spikeep's measured default)
    conv_crossover: float = -1.0  # the same for layers that drive conv synapses (< 0: measured default)

    def validate(self) -> None:
        if self.T1 <= 0 or self.T2 <= 0:
            raise ConfigError(f"spiking.T1 and spiking.T2 must be > 0 steps, got T1={self.T1}, T2={self.T2}")
        if self.chip_input not in ("", "spikes", "bias"):
            raise ConfigError(f"spiking.chip_input must be 'spikes' (rate-coded input spikes) or 'bias' (the first "
                              f"layer's drive held as a bias, set once per phase), got {self.chip_input!r}")
        if self.chip_input == "bias" and self.encoding == "poisson":
            raise ConfigError("spiking.chip_input = 'bias' prices the input as a held current, but encoding = "
                              "'poisson' drives the network with input spikes; use chip_input = 'spikes'")
        if self.reset not in ("subtract", "zero"):
            raise ConfigError(f"spiking.reset must be 'subtract' (v <- v - theta after a spike) or 'zero' (v <- 0, "
                              f"the neuron of NIR's IF node), got {self.reset!r}")
        if isinstance(self.v_min, str) and self.v_min != "none":
            raise ConfigError(f"spiking.v_min must be a number <= 0 or 'none' (no lower bound), got {self.v_min!r}")
        if self.window > min(self.T1, self.T2):
            raise ConfigError(f"spiking.window ({self.window}) must not exceed spiking.T1 and spiking.T2 "
                              f"({self.T1}, {self.T2})")


@dataclass
class Config:
    name: str = "spikeep"
    run_id: str = ""  # written by spikeep train into config.json and every checkpoint of the run
    model: ModelConfig = field(default_factory=ModelConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    gdu: GDUConfig = field(default_factory=GDUConfig)
    traces: TraceConfig = field(default_factory=TraceConfig)
    plasticity: PlasticityConfig = field(default_factory=PlasticityConfig)
    spiking: SpikingConfig = field(default_factory=SpikingConfig)

    def validate(self) -> "Config":
        """The checks plain data allows (spikeep.build.check_config adds those that need the package)."""
        self.model.validate()
        self.dynamics.validate()
        self.estimator.validate()
        self.train.validate()
        self.data.validate()
        self.traces.validate()
        self.spiking.validate()
        if self.model.unidirectional and self.plasticity.bits:
            raise ConfigError("plasticity.bits with model.unidirectional: chip-like synapses quantize forward "
                              "weights only so far; feedback weights would stay in float")
        if self.estimator.name in ("sym_vf", "sym_kp_vf") and not self.model.unidirectional:
            raise ConfigError(f"estimator.name = {self.estimator.name!r} is for networks with separate feedback "
                              f"weights: set model.unidirectional = true")
        if self.model.neurons == "spiking" and self.estimator.name == "bptt":
            raise ConfigError("estimator.name = 'bptt' needs model.neurons = 'rate' (spikes have no gradient "
                              "here); spiking networks learn with one_sided, random_sign or symmetric EP")
        n_layers = len(self.model.channels) + len(self.model.hidden) + 1
        if len(self.train.lrs) != n_layers:
            raise ConfigError(f"train.lrs has {len(self.train.lrs)} entries for {n_layers} layers "
                              f"(one per layer, readout last)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


