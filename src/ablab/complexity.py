"""Parameters, MACs, output shapes and receptive fields, measured by tracing a forward pass.

Nothing here is maintained by hand: parameters are counted from the module, MACs come from
PyTorch's FLOP counter (which reports 2 × MACs for convolutions and matmuls: a MAC is one
multiply-add), output shapes from forward hooks, and receptive fields from a ``torch.fx`` trace,
propagating the recurrence R_l = R_{l−1} + (k_l − 1)·J_{l−1}, J_l = J_{l−1}·s_l (Araujo et al.
2019) through convolutions and pools, and the maximum over the inputs of additions and
concatenations.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

#: Layers that move the receptive field: (kernel, stride, dilation) read from the module.
_WINDOWED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MaxPool2d, nn.AvgPool2d)
#: Layers that upsample (a U-Net's expanding path): after them one output step is a fraction of
#: an input pixel and outputs mix maps of several jumps (the skips), which R and J do not
#: describe; their receptive fields and those of every layer they feed are left unknown.
_UPSAMPLING = (nn.ConvTranspose2d, nn.Upsample)
_UPSAMPLING_FUNCTIONS = frozenset({"interpolate", "upsample"})
#: Layers after which every output sees the whole input.
_GLOBAL = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Linear, nn.Flatten)
#: Tensor methods that reduce over the feature map in image nets (e.g. squeeze-and-excitation's
#: x.mean((2, 3))): whatever they feed sees the whole input.
_GLOBAL_METHODS = frozenset({"mean", "amax", "sum"})


@dataclass
class LayerStats:
    """One leaf module: its output shape, own parameters, MACs, receptive field and jump."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    receptive_field: int | None = None  # None: not traced; -1: global (whole input)
    jump: int | None = None


@dataclass
class Complexity:
    """Per-layer statistics and totals for one input shape."""

    input_shape: tuple[int, ...]
    params: int
    trainable_params: int
    macs: int
    layers: list[LayerStats] = field(default_factory=list)
    #: Per top-level child module (a classifier's stem, stages, head; a detector's backbone, neck,
    #: towers): (params, MACs), the MACs of every call of it in the pass (a head shared by the
    #: levels of a pyramid counts once per level).
    parts: dict[str, tuple[int, int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def grouped(self, depth: int) -> list[LayerStats]:
        """Layers summed up to ``depth`` name components (``stages.0`` at depth 2); the output
        shape, receptive field and jump are those of the group's last layer."""
        groups: dict[str, LayerStats] = {}
        for s in self.layers:
            key = ".".join(s.name.split(".")[:depth])
            g = groups.get(key)
            if g is None:
                kind = s.kind if key == s.name else "group"
                groups[key] = LayerStats(key, kind, s.output_shape, s.params, s.macs,
                                         s.receptive_field, s.jump)  # fmt: skip
            else:
                g.params, g.macs = g.params + s.params, g.macs + s.macs
                g.output_shape, g.receptive_field, g.jump = (
                    s.output_shape,
                    s.receptive_field,
                    s.jump,
                )
        return list(groups.values())


def conv_output_size(
    size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> int:
    """o = ⌊(W − K_eff + 2P) / S⌋ + 1 with K_eff = d(K − 1) + 1 (the notes omit the floor)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def receptive_field(layers: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """(R, J) after each (kernel, stride) layer of a chain, from R_0 = J_0 = 1.

    The notes' example: 3x3/1 → 3x3/2 → 2x2 pool/2 gives R = 3, 5, 7 and J = 1, 2, 4.
    """
    r, j, out = 1, 1, []
    for kernel, stride in layers:
        r, j = r + (kernel - 1) * j, j * stride
        out.append((r, j))
    return out


def _pair(value) -> int:
    return value[0] if isinstance(value, tuple) else int(value)


def _window(module: nn.Module) -> tuple[int, int]:
    """Effective kernel size (dilation included) and stride of a windowed layer."""
    kernel, stride = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
    dilation = _pair(getattr(module, "dilation", 1))
    return dilation * (kernel - 1) + 1, stride


class _LayerTracer(fx.Tracer):
    """Keeps every windowed or global layer a leaf, including subclasses outside ``torch.nn``
    (e.g. a max pool whose window adapts to the input size, which fx could not trace into)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _WINDOWED + _GLOBAL) or super().is_leaf_module(m, qualname)


def _trace_receptive_fields(net: nn.Module) -> dict[str, tuple[int, int]]:
    """module name -> (R, J) at its output, or {} when the model is not fx-traceable."""
    try:
        graph = _LayerTracer().trace(net)
    except Exception:  # dynamic control flow: shapes and MACs are still measured
        return {}
    modules = dict(net.named_modules())
    state: dict[fx.Node, tuple[int, int]] = {}
    out: dict[str, tuple[int, int]] = {}
    unknown: set[fx.Node] = set()  # fed by an upsampling layer
    for node in graph.nodes:
        if any(a in unknown for a in node.all_input_nodes) or (
            node.op == "call_module" and isinstance(modules[node.target], _UPSAMPLING)
        ) or (node.op == "call_function" and getattr(node.target, "__name__", "")
              in _UPSAMPLING_FUNCTIONS):  # fmt: skip
            unknown.add(node)
            continue
        inputs = [state[a] for a in node.all_input_nodes if a in state]
        r_in = max((r for r, _ in inputs), default=1)
        j_in = max((j for _, j in inputs), default=1)
        if any(r < 0 for r, _ in inputs):
            r_in = -1
        r, j = r_in, j_in
        if node.op == "call_module":
            module = modules[node.target]
            if isinstance(module, _GLOBAL):
                r = -1
            elif isinstance(module, _WINDOWED) and r_in >= 0:
                kernel, stride = _window(module)
                r, j = r_in + (kernel - 1) * j_in, j_in * stride
            out[node.target] = (r, j)
        elif node.op == "call_method" and node.target in _GLOBAL_METHODS:
            r = -1
        state[node] = (r, j)
    return out


@contextmanager
def unfused_rnns() -> Iterator[None]:
    """nn.LSTM's fused oneDNN (CPU) and cuDNN kernels are single ops the FLOP counter has no
    formula for (it would count an LSTM as 0 MACs); without them nn.LSTM runs as the matrix
    products it is made of, which it counts. Convolutions are counted the same either way."""
    with warnings.catch_warnings():
        # the oneDNN switch's setter warns about a TF32 option for Intel GPUs
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
        with torch.backends.mkldnn.flags(enabled=False), torch.backends.cudnn.flags(enabled=False):
            yield


def measure(
    net: nn.Module, example: torch.Tensor | Sequence[torch.Tensor] | Sequence[int]
) -> Complexity:
    """Trace one forward pass and collect per-layer statistics for one example: on ``example``,
    an input batch (or a tuple of the forward's arguments, batch first) whose MACs are divided
    by its batch size, or on zeros of shape (1, *``example``)."""
    if isinstance(example, torch.Tensor):
        args = (example,)
    elif example and all(isinstance(a, torch.Tensor) for a in example):
        args = tuple(example)
    else:
        args = (torch.zeros(1, *example),)
    input_shape, batch = tuple(args[0].shape[1:]), max(1, len(args[0]))
    shapes: dict[str, tuple[int, ...]] = {}
    leaves = {name: m for name, m in net.named_modules() if not list(m.children()) and name}

    def hook(name: str):
        def record(module, args, output) -> None:
            # A recurrent cell or nn.LSTM returns a tuple (output, state): its first tensor.
            if isinstance(output, (tuple, list)):
                output = next((o for o in output if isinstance(o, torch.Tensor)), None)
            if isinstance(output, torch.Tensor):
                shapes[name] = tuple(output.shape[1:])

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in leaves.items()]
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), unfused_rnns(), FlopCounterMode(display=False) as counter:
            net(*args)
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    flops = counter.get_flop_counts()
    root = type(net).__name__
    fields = _trace_receptive_fields(net)
    layers = []
    for name, module in leaves.items():
        if name not in shapes:
            continue  # not used in this forward pass
        r, j = fields.get(name, (None, None))
        layers.append(
            LayerStats(
                name=name,
                kind=type(module).__name__,
                output_shape=shapes[name],
                params=sum(p.numel() for p in module.parameters(recurse=False)),
                macs=sum(flops.get(f"{root}.{name}", {}).values()) // (2 * batch),
                receptive_field=r,
                jump=j,
            )
        )
    parts = {
        name: (
            sum(p.numel() for p in child.parameters()),
            sum(flops.get(f"{root}.{name}", {}).values()) // (2 * batch),
        )
        for name, child in net.named_children()
    }
    return Complexity(
        input_shape=input_shape,
        params=sum(p.numel() for p in net.parameters()),
        trainable_params=sum(p.numel() for p in net.parameters() if p.requires_grad),
        macs=counter.get_total_flops() // (2 * batch),
        layers=layers,
        parts=parts,
    )


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n)) if math.isfinite(n) else str(n)
