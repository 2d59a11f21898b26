"""Named variants in conf/model inherit from their base instead of copying it.

A variant is ``defaults: [<base>]`` plus the keys it changes, so a fix to the base reaches every
variant and the file shows what the variant is. Read straight from the YAML (no Hydra compose),
so the whole folder is checked in milliseconds.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest
from omegaconf import OmegaConf

from conftest import CONF

FOLDER = CONF / "model"
MODELS = sorted(p.stem for p in FOLDER.glob("*.yaml"))
#: A config written out in full must differ from every config of its class (its own variants
#: aside) in more keys than this; nearer, it should be that config plus the difference.
MAX_COPY_DIFF = 3


@cache
def own(name: str) -> tuple[list[str], dict[str, Any]]:
    """The bases named in the file's defaults list and the keys the file sets itself."""
    raw = OmegaConf.to_container(OmegaConf.load(FOLDER / f"{name}.yaml"), resolve=False)
    bases = raw.pop("defaults", [])
    assert all(isinstance(b, str) for b in bases), f"{name}: defaults must name model configs"
    return [b for b in bases if b != "_self_"], raw


@cache
def composed(name: str) -> dict[str, Any]:
    """The config as Hydra composes it: the bases merged in order, then the file's own keys
    (``_self_`` last, Hydra's default; interpolations left as written)."""
    bases, keys = own(name)
    merged = OmegaConf.merge(*(composed(b) for b in bases), keys)
    return OmegaConf.to_container(merged, resolve=False)


def ancestors(name: str) -> set[str]:
    bases = own(name)[0]
    return set(bases).union(*(ancestors(b) for b in bases))


def differing_keys(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k, ...) != b.get(k, ...)}


@pytest.mark.parametrize("name", MODELS)
def test_a_variant_sets_only_what_it_changes(name: str) -> None:
    bases, keys = own(name)
    for base in bases:
        assert base in MODELS, f"{name}: base '{base}' is not a conf/model config"
    if bases:
        base = OmegaConf.to_container(OmegaConf.merge(*(composed(b) for b in bases)))
        same = sorted(k for k in keys if k in base and base[k] == keys[k])
        assert not same, f"{name} restates {same} with its base's values: leave them out"


@pytest.mark.parametrize("name", [m for m in MODELS if not own(m)[0]])
def test_a_config_written_out_is_no_near_copy(name: str) -> None:
    config = composed(name)
    for other in MODELS:
        if other == name or name in ancestors(other):
            continue  # itself and its own variants
        if composed(other).get("_target_") != config.get("_target_"):
            continue
        diff = differing_keys(config, composed(other))
        assert len(diff) > MAX_COPY_DIFF, (
            f"{name} is a copy of {other} apart from {sorted(diff)}: make it "
            f"'defaults: [{other}]' plus those keys"
        )


@pytest.mark.parametrize("name", MODELS)
def test_a_config_says_what_it_is(name: str) -> None:
    first = (FOLDER / f"{name}.yaml").read_text().splitlines()[0]
    assert first.startswith("# ") and not first.startswith("# form:"), (
        f"conf/model/{name}.yaml opens without a comment saying what the model is"
    )
