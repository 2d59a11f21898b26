"""Two known 1-D densities, p (the data's) and q (a fixed generator's), sampled in pairs: the toy
on which a discriminator's optimum can be measured against its closed form (``task=divergence``).

Each density is a spec of four keys, ``{kind, loc, scale, weights}``, built as a scipy
distribution (``scipy.stats``: ``Normal``, ``Uniform`` and ``Mixture``, which give pdf, cdf,
quantiles and seeded sampling alike), ``kind`` read through the :data:`DENSITY` table:

- ``{kind: normal, loc: μ, scale: σ}``: N(μ, σ²);
- ``{kind: uniform, loc: a, scale: w}``: U[a, a + w] (scipy's parametrisation);
- lists in ``loc`` and ``scale`` (a scalar is shared): the mixture Σ_i w_i · kind(loc_i, scale_i),
  weights ``weights`` (null: equal) — a multimodal p.

Every spec has the same keys, so one of them is changed on its own from the command line
(``data.p.loc=[-2,2] data.p.scale=0.5`` makes p bimodal). A batch is ``(x_p, x_q)``, B samples of
each as (B, 1) floats: x_p ~ p and x_q ~ q drawn independently. ``seed`` draws the samples (the
test split first, then validation, then training, from one generator: the held-out sets do not
change with ``n_train``), ``order_seed`` the training order. :meth:`DensityPair.integrate`
integrates a function of x over where p and q have their mass (``scipy.integrate.quad`` with the
densities' kinks and peaks as breakpoints): the divergences a discriminator's optimum attains are
such integrals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import integrate, stats
from torch import Tensor
from torch.utils.data import Dataset

from ablab.data.module import InMemory, SplitDataModule
from ablab.errors import ConfigError
from ablab.registry import Registry

SPLIT_ORDER = ("test", "val", "train")
#: The keys of a density spec.
SPEC_KEYS = ("kind", "loc", "scale", "weights")
#: Mass left out in each tail of the integration range (and of the plotted grid): a normal's
#: range is μ ± 6.4σ, and a bound computed over it is off by about 1e-9.
TAIL = 1e-10


@dataclass(frozen=True)
class Density:
    """A 1-D scipy distribution and the points where its pdf has a kink, a jump or a peak (a
    uniform's edges, a normal's mean): where numerical integration must look."""

    dist: Any
    points: tuple[float, ...]


#: density kind -> (loc, scale) -> one component
DENSITY: Registry[Callable[[float, float], Density]] = Registry("density kind")


@DENSITY.register("normal")
def normal(loc: float, scale: float) -> Density:
    """N(loc, scale²)."""
    return Density(stats.Normal(mu=loc, sigma=scale), (loc,))


@DENSITY.register("uniform")
def uniform(loc: float, scale: float) -> Density:
    """U[loc, loc + scale]."""
    return Density(stats.Uniform(a=loc, b=loc + scale), (loc, loc + scale))


def density(spec: Mapping[str, Any], where: str) -> Density:
    """The density a spec describes: one component, or the weighted mixture of one per entry
    of ``loc`` and ``scale``; a bad spec is one line naming ``where`` it is and what is valid."""
    if not isinstance(spec, Mapping) or set(spec) - set(SPEC_KEYS) or "kind" not in spec:
        raise ConfigError(
            f"{where}={dict(spec) if isinstance(spec, Mapping) else spec!r} is not a density: "
            f"it takes {', '.join(SPEC_KEYS)} (kind one of {', '.join(DENSITY)})"
        )
    try:
        build = DENSITY[str(spec["kind"])]
    except ConfigError as err:
        raise ConfigError(f"{where}.kind: {err}") from None
    locs, scales = (as_floats(spec.get(key, 0.0 if key == "loc" else 1.0), f"{where}.{key}")
                    for key in ("loc", "scale"))  # fmt: skip
    n = max(len(locs), len(scales))
    if {len(locs), len(scales)} - {1, n}:
        raise ConfigError(
            f"{where}: loc has {len(locs)} entries and scale {len(scales)}; a mixture gives "
            "each component one of each (or one shared)"
        )
    locs, scales = locs * (n // len(locs)), scales * (n // len(scales))
    if min(scales) <= 0:
        raise ConfigError(f"{where}.scale={scales} must be positive")
    weights = spec.get("weights")
    weights = [1.0 / n] * n if weights is None else as_floats(weights, f"{where}.weights")
    if len(weights) != n or min(weights) <= 0 or not np.isclose(sum(weights), 1.0):
        raise ConfigError(
            f"{where}.weights={weights} must be {n} positive numbers summing to 1, one per "
            "component (or null: equal)"
        )
    parts = [build(loc, scale) for loc, scale in zip(locs, scales, strict=True)]
    if n == 1:
        return parts[0]
    dist = stats.Mixture([part.dist for part in parts], weights=weights)
    return Density(dist, tuple(sorted({x for part in parts for x in part.points})))


def as_floats(value: Any, where: str) -> list[float]:
    """A number or a list of numbers as a non-empty list of floats."""
    # a YAML list arrives as a ListConfig (a Sequence); a string is not a list of numbers
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        floats = []
    if not floats or any(isinstance(v, bool) for v in values):
        raise ConfigError(f"{where}={value!r} must be a number or a list of numbers")
    return floats


class DensityPair(SplitDataModule):
    """``n_<split>`` pairs (x_p, x_q), x_p ~ p and x_q ~ q, (1,) each, drawn with ``seed``;
    p and q are density specs (see the module's docstring)."""

    name = "densities"

    def __init__(
        self,
        *,
        p: Mapping[str, Any],
        q: Mapping[str, Any],
        n_train: int = 10000,
        n_val: int = 20000,
        n_test: int = 20000,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        for key, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            if n < 1:
                raise ConfigError(f"data.{key} must be a positive number of samples, got {n}")
        self.p, self.q = density(p, "data.p"), density(q, "data.q")
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}

    def build_splits(self) -> dict[str, Dataset]:
        rng = np.random.default_rng(self.seed)
        splits = {}
        for split in SPLIT_ORDER:
            n = self.sizes[split]
            # (n,) -> (n, 1): one feature per sample, as the discriminator reads it
            x_p, x_q = (as_column(d.dist.sample(n, rng=rng)) for d in (self.p, self.q))
            splits[split] = InMemory(x_p, x_q)
        return splits

    def example_input(self) -> Tensor:
        return torch.zeros(2, 1)

    def span(self) -> tuple[float, float]:
        """[lo, hi] holding all but :data:`TAIL` of p's and of q's mass in each tail."""
        dists = (self.p.dist, self.q.dist)
        return (min(float(d.icdf(TAIL)) for d in dists), max(float(d.iccdf(TAIL)) for d in dists))

    def grid(self, points: int) -> np.ndarray:
        """``points`` evenly spaced x over :meth:`span`."""
        return np.linspace(*self.span(), points)

    def integrate(self, fn: Callable[[float], float]) -> float:
        """∫ fn(x) dx over :meth:`span` by adaptive quadrature (``scipy.integrate.quad``),
        told where p and q have kinks, jumps and peaks."""
        lo, hi = self.span()
        points = sorted({x for x in (*self.p.points, *self.q.points) if lo < x < hi})
        value, _ = integrate.quad(fn, lo, hi, points=points or None, limit=500, epsabs=1e-11)
        return float(value)


def as_column(x: np.ndarray) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1)
