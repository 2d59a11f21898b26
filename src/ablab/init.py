"""Weight-initialisation schemes by name, applied once the network is fully built.

Every scheme sets the weights of convolutions and linear layers, zeroes their biases, and resets
normalisation layers to γ = 1, β = 0. In recurrent layers (ablab's cells, ``nn.RNN``/``LSTM``/
``GRU``) it sets each gate's block of ``hidden_size`` rows of the input and recurrent matrices
(``weight_ih*``, ``weight_hh*``) as the weight of a linear layer of its own, so fans are a gate's
(H × F, H × H), not the stacked matrix's, and zeroes their biases. Other parameters (class
tokens, position embeddings, PReLU slopes, peephole weights) keep the model's own
initialisation. ``default`` keeps PyTorch's (and the model's) own.

For a layer with fan_in inputs per output unit and fan_out outputs per input unit, the variances:
- ``normal``: std² (small std vanishes, large std explodes the signal with depth);
- ``uniform`` on [−a, a]: a²/3;
- ``xavier_*`` (Glorot & Bengio 2010): gain² · 2 / (fan_in + fan_out), keeps the variance of
  activations and gradients for linear/tanh units;
- ``kaiming_*`` (He et al. 2015): gain² / fan_mode with gain² = 2 for ReLU, keeps the variance
  through ReLU layers (fan_in: forward signal, fan_out: backward signal);
- ``lecun_normal`` (LeCun et al. 1998): 1 / fan_in (Kaiming with a linear gain; SELU nets);
- ``orthogonal`` (Saxe et al. 2014): a (scaled) orthogonal matrix over the flattened weight;
- ``irnn`` (Le et al. 2015): recurrent matrices gain · I, every other weight std²;
- ``zeros`` / ``constant``: every unit of a layer identical — symmetry never breaks.
Architecture-dependent init is the model's and comes last, so no scheme undoes it: after the
scheme, every module's ``special_init()`` runs (a ResNet built with ``zero_init_last`` sets γ = 0
in the last norm of every residual block, Goyal et al. 2017, which does nothing in a plain net: no
shortcut to fall back on). ``init.zero_init_last`` asks the same of every block of any model,
those without the constructor switch included (timm's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ablab.errors import ConfigError
from ablab.registry import INIT

#: Layers whose weight the schemes set (the "units" of the notes' claims).
WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)
#: Normalisation layers reset to γ = 1, β = 0.
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)

#: Parameter names of a recurrent layer's gate matrices and their biases (torch's, and ablab's
#: cells', which use the same names): gates stacked in blocks of ``hidden_size`` rows.
RECURRENT_WEIGHTS = ("weight_ih", "weight_hh")
RECURRENT_BIASES = ("bias_ih", "bias_hh")

MODES = ("fan_in", "fan_out")


def _apply(
    net: nn.Module,
    set_weight: Callable[[Tensor], Any],
    set_recurrent: Callable[[Tensor], Any] | None = None,
) -> None:
    """``set_weight`` on every weight (and gate block of a recurrent layer's input and recurrent
    matrices); ``set_recurrent``, when given, on the recurrent matrices' blocks instead."""
    for module in net.modules():
        if isinstance(module, WEIGHTED):
            set_weight(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, NORMS) and getattr(module, "weight", None) is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        for name, param in module.named_parameters(recurse=False):
            if name.startswith(RECURRENT_WEIGHTS):  # one gate's rows at a time
                recurrent = name.startswith("weight_hh") and set_recurrent is not None
                for block in param.data.split(module.hidden_size):
                    (set_recurrent if recurrent else set_weight)(block)
            elif name.startswith(RECURRENT_BIASES):
                nn.init.zeros_(param)


def _check_nonlinearity(nonlinearity: str) -> None:
    try:
        nn.init.calculate_gain(nonlinearity, 0.0 if nonlinearity == "leaky_relu" else None)
    except ValueError:
        valid = "linear, conv2d, sigmoid, tanh, relu, leaky_relu, selu"
        raise ConfigError(f"unknown init nonlinearity '{nonlinearity}'; valid: {valid}") from None


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"unknown init mode '{mode}'; valid: {', '.join(MODES)}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"init.{name} must be > 0, got {value}")


@INIT.register("default")
def keep_default(net: nn.Module) -> None:
    """Leave PyTorch's initialisation (Kaiming-uniform with a=√5 for conv/linear) untouched."""


@INIT.register("zeros")
def zeros(net: nn.Module) -> None:
    """W = 0: every unit in a layer computes the same function and gets the same gradient."""
    _apply(net, nn.init.zeros_)


@INIT.register("constant")
def constant(net: nn.Module, value: float = 0.01) -> None:
    """W = value everywhere: like zeros, the units of a layer stay identical."""
    _apply(net, lambda w: nn.init.constant_(w, value))


@INIT.register("normal")
def normal(net: nn.Module, std: float = 0.01, mean: float = 0.0) -> None:
    """W ~ N(mean, std²), independent of the layer's fan."""
    _check_positive("std", std)
    _apply(net, lambda w: nn.init.normal_(w, mean, std))


@INIT.register("uniform")
def uniform(net: nn.Module, a: float = 0.05) -> None:
    """W ~ U(−a, a): variance a²/3."""
    _check_positive("a", a)
    _apply(net, lambda w: nn.init.uniform_(w, -a, a))


@INIT.register("xavier_uniform")
def xavier_uniform(net: nn.Module, gain: float = 1.0) -> None:
    """W ~ U(−b, b), b = gain·√(6 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""
    _check_positive("gain", gain)
    _apply(net, lambda w: nn.init.xavier_uniform_(w, gain))


@INIT.register("xavier_normal")
def xavier_normal(net: nn.Module, gain: float = 1.0) -> None:
    """W ~ N(0, gain² · 2 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""
    _check_positive("gain", gain)
    _apply(net, lambda w: nn.init.xavier_normal_(w, gain))


@INIT.register("kaiming_uniform")
def kaiming_uniform(
    net: nn.Module, mode: str = "fan_in", nonlinearity: str = "relu", a: float = 0.0
) -> None:
    """W ~ U(−b, b), b = gain·√(3 / fan_mode), gain = √2 for ReLU (He et al. 2015)."""
    _check_mode(mode)
    _check_nonlinearity(nonlinearity)
    _apply(net, lambda w: nn.init.kaiming_uniform_(w, a, mode, nonlinearity))


@INIT.register("kaiming_normal")
def kaiming_normal(
    net: nn.Module, mode: str = "fan_in", nonlinearity: str = "relu", a: float = 0.0
) -> None:
    """W ~ N(0, gain² / fan_mode), gain = √2 for ReLU (He et al. 2015)."""
    _check_mode(mode)
    _check_nonlinearity(nonlinearity)
    _apply(net, lambda w: nn.init.kaiming_normal_(w, a, mode, nonlinearity))


@INIT.register("lecun_normal")
def lecun_normal(net: nn.Module) -> None:
    """W ~ N(0, 1 / fan_in) (LeCun et al. 1998): Kaiming-normal with a linear gain."""
    _apply(net, lambda w: nn.init.kaiming_normal_(w, 0.0, "fan_in", "linear"))


@INIT.register("orthogonal")
def orthogonal(net: nn.Module, gain: float = 1.0) -> None:
    """W (flattened to out x in·k·k) = gain · a random orthogonal matrix (Saxe et al. 2014)."""
    _check_positive("gain", gain)
    _apply(net, lambda w: nn.init.orthogonal_(w, gain))


@INIT.register("irnn")
def irnn(net: nn.Module, gain: float = 1.0, std: float = 0.001) -> None:
    """Le et al. 2015, "A simple way to initialize recurrent networks of rectified linear units"
    (the IRNN): every recurrent matrix W_hh (each gate's H x H block) = gain · I, so at the start
    a ReLU RNN copies its state forward and adds the input; every other weight ~ N(0, std²)."""
    _check_positive("gain", gain)
    _check_positive("std", std)
    _apply(
        net,
        lambda w: nn.init.normal_(w, 0.0, std),
        lambda w: nn.init.eye_(w).mul_(gain),
    )


def initialize(
    net: nn.Module, scheme: str = "default", zero_init_last: bool = False, **options: Any
) -> nn.Module:
    """Apply the init ``scheme`` (with its ``options``) to every layer of ``net``, then every
    module's own ``special_init()``; return ``net``.

    The scheme resets every norm to γ = 1, so an architecture's init (``model.zero_init_last``)
    must come after it to hold. ``zero_init_last`` then calls every block's ``zero_init_last()``
    (residual blocks zero their last norm's γ; blocks without a shortcut leave themselves alone).
    """
    make = INIT[scheme]
    try:
        make(net, **options)
    except TypeError as err:  # an option the scheme does not take
        raise ConfigError(f"init '{scheme}' rejected its options {options}: {err}") from err
    for module in net.modules():
        if callable(special_init := getattr(module, "special_init", None)):
            special_init()
    if zero_init_last:
        for module in net.modules():
            if callable(getattr(module, "zero_init_last", None)):
                module.zero_init_last()
    return net
