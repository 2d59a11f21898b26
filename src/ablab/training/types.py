"""Check the config's values against the type hints of the constructors they are passed to.

``conf/<group>/*.yaml`` mirrors constructor signatures through ``_target_``, so the expected type
of ``trainer.max_epochs`` is the annotation of ``pytorch_lightning.Trainer``'s ``max_epochs``.
A wrong type fails here in one line naming the key, before anything is built or tracked, instead
of deep inside a constructor (or, worse, after the MLflow run exists). A constructor states a
valid range in its hint (``patience: Annotated[int, Ge(1)]``): a value outside it fails here too,
with the range (``expected int >= 1``).
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from typing import Annotated, Any, Literal, Union

import annotated_types
from hydra._internal.utils import _locate
from omegaconf import DictConfig, OmegaConf
from pydantic import ConfigDict, TypeAdapter, ValidationError

from ablab.config import check_top_level_types, resolved
from ablab.errors import ConfigError

_ARBITRARY = ConfigDict(arbitrary_types_allowed=True)


def check_types(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first value whose type its target does not accept.

    Every node with a ``_target_`` in the resolved job config is checked key by key against the
    target's type hints (strictly: ``"abc"`` is no int, ``2.5`` no int, an int is a float);
    keys without a usable hint are left to the constructor. Values the user wrote are checked
    before values interpolated from them (``trainer.max_epochs`` before the scheduler's copy), so
    the message names the key to fix. Top-level keys without a target (``seed``, ``seeds.*``,
    ``resume``) must keep the type of their default.
    """
    config = resolved(cfg)
    check_top_level_types(config)
    nodes = list(_targets(config))
    for interpolated in (False, True):
        for path, node in nodes:
            raw = OmegaConf.select(cfg, path) if path else cfg
            keys = [
                k
                for k in node
                if isinstance(raw, DictConfig)
                and k in raw
                and OmegaConf.is_interpolation(raw, k) == interpolated
            ]
            check_node(node, path, keys, raw if interpolated else None)


def check_node(
    node: dict[str, Any],
    path: str,
    keys: Iterable[str] | None = None,
    raw: DictConfig | None = None,
) -> None:
    """Check ``keys`` (default: all) of one resolved ``_target_`` node; ``path`` is its key in
    the config and ``raw`` the unresolved node, for messages."""
    try:
        target = _locate(str(node["_target_"]))
    except Exception:
        return  # an unknown target is reported by instantiate, with its own message
    hints = _hints(target)
    for key in node if keys is None else keys:
        value = node[key]
        if key.startswith("_") or key not in hints or _has_target(value):
            continue  # nested targets become objects: they are checked as nodes of their own
        adapter = _adapter(hints[key])
        if adapter is not None and not _accepts(adapter, value):
            key_path = f"{path}.{key}" if path else key
            source = f" (from {OmegaConf.to_container(raw)[key]})" if raw is not None else ""
            raise ConfigError(
                f"{key_path}={_shown(value)}{source}: expected {type_name(hints[key])} "
                f"({node['_target_']} {key})"
            )


def type_name(annotation: Any) -> str:
    """``int | None``, ``'a' | 'b'``, ``list[int]``: an annotation as a user would write it."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:  # a type with bounds: "float >= 0", "int >= 1 and <= 10"
        base, *metadata = args
        bounds = [bound for m in metadata for bound in _bounds(m)]
        return " and ".join(
            [f"{type_name(base)} {bounds[0]}", *bounds[1:]] if bounds else [type_name(base)]
        )
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not args:
        module = annotation.__module__
        return (
            annotation.__qualname__ if module == "builtins" else f"{module}.{annotation.__name__}"
        )
    return str(annotation).replace("typing.", "").replace("collections.abc.", "")


def _bounds(metadata: Any) -> list[str]:
    """``[">= 0"]`` for ``annotated_types.Ge(0)``; an Interval gives each of its bounds."""
    if isinstance(metadata, annotated_types.GroupedMetadata):
        return [bound for single in metadata for bound in _bounds(single)]
    if not isinstance(metadata, annotated_types.BaseMetadata):
        return []
    signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return [f"{sign} {getattr(metadata, key)}" for key, sign in signs.items()
            if getattr(metadata, key, None) is not None]  # fmt: skip


def _targets(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ``_target_`` node below ``node`` (itself included), with its key path."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for key, value in node.items():
            yield from _targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _targets(value, f"{path}.{i}")


def _has_target(value: Any) -> bool:
    return any(True for _ in _targets(value))


def _hints(target: Callable[..., Any]) -> dict[str, Any]:
    """Parameter annotations of ``target`` (a class: its ``__init__``, and those of its bases
    while an ``__init__`` passes ``**kwargs`` on); hints that do not resolve are left out."""
    functions = [target]
    if isinstance(target, type):
        functions = [c.__init__ for c in target.__mro__ if "__init__" in vars(c)]
    hints: dict[str, Any] = {}
    for fn in functions:
        for key, value in _resolved_hints(fn).items():
            hints.setdefault(key, value)
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            break
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    hints.pop("return", None)
    return hints


def _resolved_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=True)  # extras: Annotated bounds
    except Exception:  # one unresolvable hint (a TYPE_CHECKING import): resolve them one by one
        pass
    hints = {}
    namespace = getattr(fn, "__globals__", {})
    for key, annotation in getattr(fn, "__annotations__", {}).items():
        try:  # what get_type_hints does, one annotation at a time
            hints[key] = eval(annotation, namespace) if isinstance(annotation, str) else annotation
        except Exception:
            continue
    return hints


def _adapter(annotation: Any) -> TypeAdapter | None:
    try:
        return _cached_adapter(annotation)
    except TypeError:  # an unhashable annotation
        return _new_adapter(annotation)


def _new_adapter(annotation: Any) -> TypeAdapter | None:
    try:
        return TypeAdapter(annotation, config=_ARBITRARY)
    except Exception:  # pydantic cannot build a validator for it: leave it to the constructor
        return None


_cached_adapter = cache(_new_adapter)


def _accepts(adapter: TypeAdapter, value: Any) -> bool:
    """Strict validation of scalars. YAML has lists only: a list may stand for a tuple
    (``betas: [0.9, 0.999]``), or for lists of tuples, which only lax validation matches."""
    tries = [(value, True)]
    if isinstance(value, list | dict):
        tries += [(_tuples(value), True), (value, False)]
    for candidate, strict in tries:
        try:
            adapter.validate_python(candidate, strict=strict)
            return True
        except ValidationError:
            continue
        except Exception:  # a validator that cannot judge this value: do not refuse it
            return True
    return False


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _shown(value: Any) -> str:
    """A value as it would be written on the command line."""
    try:
        text = value if isinstance(value, str) else json.dumps(value)
    except (TypeError, ValueError):
        text = str(value)
    return text if len(text) <= 80 else f"{text[:77]}..."
