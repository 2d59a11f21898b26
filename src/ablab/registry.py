"""Name -> constructor tables, so an ablation switch is a string in a config file.

One small ``Registry`` class and the tables the rest of the package fills in: ``NORM``
(normalisation layers), ``ACT`` (activations), ``SHORTCUT`` (residual shortcuts), ``BLOCK``
(network blocks sharing one signature), ``STEM`` (the first layers of an image classifier),
``CELL`` (recurrent cells, one time step each), ``INIT`` (weight-init schemes) and ``GAN_LOSS``
(adversarial objectives: a discriminator and a generator loss each).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from ablab.errors import unknown_choice

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of constructors; unknown names raise a one-line error listing valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._table: dict[str, T] = {}

    def register(self, *names: str) -> Callable[[T], T]:
        """Decorator: file ``obj`` under each of ``names``."""

        def add(obj: T) -> T:
            for name in names:
                if name in self._table:
                    raise KeyError(f"{self.kind} '{name}' is registered twice")
                self._table[name] = obj
            return obj

        return add

    def __getitem__(self, name: str) -> T:
        try:
            return self._table[name]
        except KeyError:
            raise unknown_choice(self.kind, name, self._table) from None

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._table))

    def names(self) -> list[str]:
        return sorted(self._table)


NORM: Registry[Callable[..., object]] = Registry("norm")
ACT: Registry[Callable[..., object]] = Registry("activation")
SHORTCUT: Registry[Callable[..., object]] = Registry("shortcut")
BLOCK: Registry[Callable[..., object]] = Registry("block")
STEM: Registry[Callable[..., object]] = Registry("stem")
CELL: Registry[Callable[..., object]] = Registry("cell")
INIT: Registry[Callable[..., None]] = Registry("init scheme")
GAN_LOSS: Registry[object] = Registry("gan loss")
