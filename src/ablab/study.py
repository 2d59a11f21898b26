"""A study: one claim from the notes, a baseline, named variants, seeds, and what to compare.

Declared in ``experiments/<study>/study.yaml``::

    claim: "1. BatchNorm speeds convergence and tolerates larger learning rates."
    question: Does a plain CNN with BN reach 90% validation accuracy in fewer steps?
    common: {model: plain20}                 # overrides every job gets
    baseline: {name: bn, overrides: {model.norm: bn}}
    variants:                                # one factor at a time ...
      no_bn: {model.norm: none}
    factorial: {}                            # ... or a full factorial: {key: [values]}
    seeds: [0, 1, 2, 3, 4]
    sizes:                                   # overrides per size; seeds may be set per size
      quick: {overrides: {trainer.max_epochs: 5}, seeds: [0, 1, 2]}
      full: {overrides: {data: cifar10, trainer: gpu}}
    quantities:                              # numbers per run that variants are compared on
      - {metric: val/acc, stat: final}       # final | best | steps_to (with threshold)
      - {metric: val/acc, stat: steps_to, threshold: 0.9}
      - {metric: train/loss, stat: diverged}   # 1 if the run hit a NaN/inf loss, else 0
    expect:                                  # the claim, per variant and quantity
      - {variant: no_bn, quantity: steps to val/acc >= 0.9, direction: higher}
    curves: [val/acc, train/loss]            # learning curves to plot
    profiles: [act_std@init, grad_norm]      # per-layer diagnostics (callbacks=diagnostics),
                                             # at the end of training or @init (step 0)
    pilots:                                  # pilot runs that shaped the design (optional)
      - "sigmoid LeNet, 8 epochs, lr 0.05/0.5/2.0: chance at every rate (no plain baseline)"
    tune:                                    # per-arm tuning before the comparison (optional)
      grid: {optimizer.lr: [0.001, 0.01, 0.1]}   # what each arm may tune (every combination)
      metric: val/acc                        # the selection metric: validation only
      stat: best                             # best | final value of it per run
      seeds: [100]                           # tuning seeds, apart from the comparison's
      variants: [bn, no_bn]                  # the arms that tune (default: all)
    timing:                                  # interleaved speed timing (optional): see below
      {batch_size: 64, rounds: 10, min_run_time: 20, mode: inference}

With ``tune``, ``ablab study`` first runs every variant at every grid point on the tuning seeds,
picks each variant's best point by the mean of the selection metric, then runs the comparison
seeds of each variant at its own best point: all children of one parent run, the choice recorded
on it (``tuned.<variant>``) and shown in the report.

With ``timing``, ``ablab study`` then times every variant's network (built from the variant's
composed config, at its tuned point; never trained) in one process, alternating in rounds
(:mod:`ablab.training.timing`), as one more child run of the parent; a quantity
``{metric: timing/images_per_s, stat: interleaved}`` compares the variants round by round.

A study runs as one Hydra multirun through :class:`hydra_plugins.ablab_study.StudySweeper`
(``make study name=<study> size=quick``), so any launcher (basic, joblib, SLURM) runs it
unchanged; each job is ``study=<name> variant=<variant> seed=<seed>`` plus its overrides.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ablab.errors import ConfigError

#: ``experiments/`` at the top of the checkout (src layout).
STUDIES_DIR = Path(__file__).resolve().parents[2] / "experiments"
#: The data and model every run gets unless overridden (``conf/train.yaml``'s defaults list and
#: its trainer's epochs), for a study's :meth:`Study.scale`.
_CONF = Path(__file__).resolve().parents[2] / "conf"


def _trainer_epochs(name: str) -> Any:
    """``max_epochs`` of ``conf/trainer/<name>.yaml`` (following its own defaults list), or
    None."""
    path = _CONF / "trainer" / f"{name}.yaml"
    if not path.is_file():
        return None
    spec = yaml.safe_load(path.read_text()) or {}
    if "max_epochs" in spec:
        return spec["max_epochs"]
    parents = [e for e in spec.get("defaults", []) if isinstance(e, str) and e != "_self_"]
    return _trainer_epochs(parents[0]) if parents else None


def _conf_defaults() -> dict[str, Any]:
    """The data, model and trainer ``conf/train.yaml`` picks, with the trainer's epochs."""
    defaults: dict[str, Any] = {}
    for entry in yaml.safe_load((_CONF / "train.yaml").read_text()).get("defaults", []):
        if isinstance(entry, dict):
            defaults.update({k: v for k, v in entry.items() if k in ("data", "model", "trainer")})
    defaults["trainer.max_epochs"] = _trainer_epochs(str(defaults.get("trainer", "default")))
    return defaults


_DEFAULTS = _conf_defaults()
STUDY_FILE = "study.yaml"
STATS = ("final", "first", "best", "steps_to", "diverged", "param", "tuning_width", "interleaved")
DIRECTIONS = ("higher", "lower", "same")


@dataclass(frozen=True)
class Quantity:
    """A number per run: the ``final``, ``first`` (e.g. a diagnostic at step 0, the
    initialisation) or ``best`` value of ``metric``, the first step at which
    it reaches ``threshold`` (``steps_to``), 1/0 for whether training diverged (``diverged``:
    stopped by the non-finite loss guard), a numeric run parameter (``param``, e.g.
    ``complexity.params``, measured by tracing when the run was built), or, read off the
    study's tuning grid (``tuning_width``, ``metric`` a key of ``tune.grid``), the width in
    decades (log10 max − log10 min) of the contiguous range of the key's grid values around the
    variant's best whose tuning scores are within ``within`` of it: how tolerant the arm is of
    that setting, or, from the study's timing run (``interleaved``, ``metric``
    ``timing/images_per_s`` or ``timing/ms_per_batch``), the variant's speed in each round of
    the interleaved timing: one value per round, paired with the other variants' by round.
    ``mode`` says which way is better."""

    metric: str
    stat: Literal[
        "final", "first", "best", "steps_to", "diverged", "param", "tuning_width", "interleaved"
    ]
    threshold: float | None = None
    mode: Literal["max", "min"] = "max"
    #: "log" compares log10 of the values: for quantities that differ by orders of magnitude
    #: (activation or gradient scales), where a difference of means says little.
    scale: Literal["linear", "log"] = "linear"
    #: another metric whose value (same stat) is subtracted: a gap, e.g. train/acc - val/acc
    minus: str | None = None
    #: another metric whose value (same stat) divides it: a ratio, e.g. the activation std of
    #: the last layer over the first's (with ``scale: log``, log10 of the ratio)
    over: str | None = None
    #: with a glob ``metric`` (``diag/dead/*``, ``test/recall/[5-9]``): how the matching
    #: metrics' values combine into one number per run
    reduce: Literal["mean", "max", "min"] = "mean"
    #: what a ``final`` value is for a run the non-finite loss guard stopped: by default NaN
    #: (the comparison is then undefined and says so: a last value logged before the blow-up
    #: is not where the run ended); a number states the study's reading explicitly, e.g. 0.1
    #: for the accuracy of a 10-class net whose weights are NaN (it predicts one class).
    diverged_value: float | None = None
    #: a quantity that is the same on every seed by construction (a parameter count, MACs, a
    #: ratio at initialisation), whose difference is stated, not tested, when each side is
    #: indeed constant; None: true for ``stat: param`` (measured by tracing), else false. Never
    #: guessed from the values: accuracies at their ceiling are constant too, and are measured.
    deterministic: bool | None = None
    #: ``tuning_width``: how far below the best tuning score a grid value may be and count
    within: float | None = None

    @property
    def stated_not_tested(self) -> bool:
        return self.stat == "param" if self.deterministic is None else self.deterministic

    @property
    def from_tuning(self) -> bool:
        """Read off the tuning grid (on the tuning seeds), not off the comparison's runs."""
        return self.stat == "tuning_width"

    @property
    def from_timing(self) -> bool:
        """Read off the study's timing run (one value per round), not off the comparison's runs."""
        return self.stat == "interleaved"

    @property
    def pattern(self) -> bool:
        return any(ch in self.metric for ch in "*?[")

    @property
    def name(self) -> str:
        base = self._name() + (f" - {self.minus}" if self.minus else "")
        base += f" / {self.over}" if self.over else ""
        return f"log10 {base}" if self.scale == "log" else base

    def _name(self) -> str:
        if self.stat == "steps_to":
            sign = ">=" if self.mode == "max" else "<="
            return f"steps to {self.metric} {sign} {self.threshold:g}"
        if self.stat == "diverged":
            return "diverged"
        if self.stat == "param":
            return self.metric
        if self.stat == "tuning_width":
            return f"width of {self.metric} within {self.within:g} of best"
        if self.stat == "interleaved":
            return f"interleaved {self.metric}"
        if self.pattern:
            return f"{self.stat} {self.reduce} {self.metric}"
        return f"{self.stat} {self.metric}"


@dataclass(frozen=True)
class Expectation:
    """The claim for one variant: ``quantity`` is ``direction`` than the baseline's (or than
    variant ``against``'s, e.g. resnet56 against resnet20; ``against: 0`` tests the variant's
    own values against zero, for a difference measured inside each run, e.g. fused − unfused
    latency). ``direction: same`` is an equivalence claim: it holds when the whole confidence
    interval of the difference lies within ±``margin`` (which it then requires)."""

    variant: str
    quantity: str
    direction: Literal["higher", "lower", "same"]
    margin: float | None = None
    against: str | None = None

    @property
    def against_zero(self) -> bool:
        return self.against == ZERO


#: ``against: 0`` in an expectation: compare the variant's values with zero (one-sample).
ZERO = "0"


@dataclass(frozen=True)
class Check:
    """One of the notes' worked numbers, re-measured: the parameters and MACs of ``module`` (a
    Hydra ``_target_`` config) on a ``input`` shape (C, H, W), traced the way ``ablab summary``
    traces a model, against the notes' ``params`` / ``macs``; or, with ``ratio: [a, b]``, the
    ratio of check a's numbers to check b's against the notes' ratio."""

    name: str
    formula: str = ""
    module: dict[str, Any] | None = None
    input: tuple[int, ...] = ()
    ratio: tuple[str, str] | None = None
    notes: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Tune:
    """Per-arm tuning (the study's ``tune``): every combination of ``grid`` is a point; each
    variant runs every point on ``seeds`` and keeps the point whose mean ``stat`` of ``metric``
    (a validation metric: a test metric is refused) is best by ``mode``. ``variants``, when
    given, are the arms that tune; the others run as declared (an arm that fixes the very
    setting the others tune, e.g. BN and no BN both at lr 0.5)."""

    grid: dict[str, list[Any]]
    metric: str = "val/acc"
    stat: Literal["best", "final"] = "best"
    mode: Literal["max", "min"] = "max"
    seeds: tuple[int, ...] = (100,)
    variants: tuple[str, ...] = ()

    def points(self) -> list[dict[str, Any]]:
        keys = list(self.grid)
        return [dict(zip(keys, values, strict=True))
                for values in itertools.product(*(self.grid[k] for k in keys))]  # fmt: skip

    @staticmethod
    def label(point: dict[str, Any]) -> str:
        """A point as overrides, e.g. ``optimizer.lr=0.01``: the ``tuning`` value of its runs."""
        return ",".join(f"{k}={_value(v)}" for k, v in point.items())


@dataclass(frozen=True)
class Timing:
    """Interleaved speed timing (the study's ``timing``): every variant's network, built from its
    composed config, timed in one process on one batch of ``batch_size`` inputs, in ``rounds``
    rounds of alternating blocks (the order reversed every round), ``min_run_time`` seconds per
    network in all; ``mode`` ``inference`` (eval mode, inference mode) or ``train_step``
    (train mode, forward and backward, no optimizer step); ``threads`` torch threads (None: the
    config's ``trainer.threads``, else 1)."""

    batch_size: int = 64
    rounds: int = 10
    min_run_time: float = 20.0
    mode: Literal["inference", "train_step"] = "inference"
    threads: int | None = None


#: What a ``timing`` run logs per variant and round (``stat: interleaved`` reads one).
TIMING_METRICS = ("timing/images_per_s", "timing/ms_per_batch")


@dataclass(frozen=True)
class Job:
    """One run of a study: a variant at a seed, as Hydra overrides."""

    variant: str
    seed: int
    overrides: tuple[str, ...]


@dataclass
class Study:
    """A parsed ``study.yaml`` (see the module docstring)."""

    name: str
    folder: Path
    claim: str
    question: str
    baseline: str
    variants: dict[str, dict[str, Any]]
    seeds: list[int]
    sizes: dict[str, dict[str, Any]]
    quantities: list[Quantity]
    expect: list[Expectation]
    curves: list[str]
    common: dict[str, Any] = field(default_factory=dict)
    #: diagnostics families plotted layer by layer at the end of training (needs
    #: callbacks=diagnostics): act_mean, act_std, dead, grad_norm, update_ratio, ...
    profiles: list[str] = field(default_factory=list)
    #: the notes' worked numbers (params, MACs) re-measured by tracing, for the report's tables
    checks: list[Check] = field(default_factory=list)
    #: per-arm tuning before the comparison, or None
    tune: Tune | None = None
    #: the pilot runs that shaped the design, with their numbers (shown in the report)
    pilots: list[str] = field(default_factory=list)
    #: interleaved speed timing after the comparison, or None
    timing: Timing | None = None

    def scale(self, size: str) -> str:
        """What the study's verdicts were measured at, for every verdict row: the size's
        ``scale`` text when it gives one, else its data, model and epochs from the overrides
        (the config's defaults where a study sets none)."""
        spec = self._size(size)
        if spec.get("scale"):
            return str(spec["scale"])
        declared = {**self.common, **(spec.get("overrides") or {})}
        merged = {**_DEFAULTS, **declared}
        if "trainer" in declared and "trainer.max_epochs" not in declared:
            merged["trainer.max_epochs"] = _trainer_epochs(str(declared["trainer"]))
        parts = []
        for key in ("data", "model"):
            # a key the variants change (the model, in plain vs residual) names every value
            values = dict.fromkeys(
                _value(v.get(key, merged.get(key))) for v in self.variants.values()
            )
            values.pop("None", None)
            if values:
                parts.append(f"{key}={'/'.join(values)}")
        if merged.get("trainer.max_epochs") is not None:
            parts.append(f"{_value(merged['trainer.max_epochs'])} epochs")
        return ", ".join(parts)

    def timing_fingerprint(
        self, size: str, tuned: dict[str, dict[str, Any]] | None, extra: str = ""
    ) -> str:
        """What a timing run measured: the study's ``timing`` and each variant's first job
        (its overrides at its tuned point) plus the command's ``extra`` overrides, hashed; a
        timing run made under another design is not this design's measurement."""
        first: dict[str, tuple[str, ...]] = {}
        for job in self.jobs(size, tuned=tuned):
            first.setdefault(
                job.variant, tuple(o for o in job.overrides if not o.startswith("seed="))
            )
        text = repr((self.timing, sorted(first.items()), extra))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def tuned_variants(self) -> list[str]:
        """The variants that tune (every one unless ``tune.variants`` names some), in order."""
        if self.tune is None:
            return []
        return [v for v in self.variants if not self.tune.variants or v in self.tune.variants]

    def seeds_for(self, size: str, extra: int = 0) -> list[int]:
        """The seeds of ``size``, then ``extra`` more: the next integers not among them (seeds
        a sequential study adds in rounds)."""
        seeds = list(self._size(size).get("seeds") or self.seeds)
        tuning = set(self.tune.seeds) if self.tune else set()
        more = (s for s in itertools.count(max(seeds, default=-1) + 1) if s not in tuning)
        return seeds + [s for s, _ in zip(more, range(extra), strict=False)]

    def tune_jobs(self, size: str) -> list[Job]:
        """The tuning stage: every variant at every grid point on the tuning seeds, each job
        with ``tuning=<point>`` (so its run is kept apart from the comparison's)."""
        if self.tune is None:
            return []
        size_overrides = self._size(size).get("overrides") or {}
        jobs = []
        for variant in self.tuned_variants:
            overrides = self.variants[variant]
            for point in self.tune.points():
                for seed in self.tune.seeds:
                    merged = {**self.common, **size_overrides, **overrides, **point}
                    items = [f"{k}={_value(v)}" for k, v in merged.items()]
                    items += [f"study={self.name}", f"variant={variant}", f"seed={seed}",
                              f"tuning='{Tune.label(point)}'"]  # fmt: skip
                    jobs.append(Job(variant, seed, tuple(items)))
        return jobs

    def jobs(
        self,
        size: str,
        extra_seeds: int = 0,
        tuned: dict[str, dict[str, Any]] | None = None,
    ) -> list[Job]:
        """Every (variant, seed) of ``size`` with its overrides: common, size, variant, then
        ``study``, ``variant`` and ``seed`` (so each run says what it is).

        The size's own seeds come variant by variant; ``extra_seeds`` more (:meth:`seeds_for`)
        follow seed by seed, so adding seeds only appends jobs: a job's number, and so its
        folder in the sweep, stays the same from one round of seeds to the next. ``tuned``
        gives each variant the grid point its tuning chose (``{variant: {key: value}}``).
        """
        size_overrides = self._size(size).get("overrides") or {}
        own = self.seeds_for(size)
        added = self.seeds_for(size, extra_seeds)[len(own) :]
        order = [(v, s) for v in self.variants for s in own]
        order += [(v, s) for s in added for v in self.variants]
        jobs = []
        for variant, seed in order:
            chosen = (tuned or {}).get(variant, {})
            merged = {**self.common, **size_overrides, **self.variants[variant], **chosen}
            items = [f"{k}={_value(v)}" for k, v in merged.items()]
            items += [f"study={self.name}", f"variant={variant}", f"seed={seed}"]
            jobs.append(Job(variant, seed, tuple(items)))
        return jobs

    def factors(self) -> list[str]:
        """The keys that vary across the study's jobs (MLflow ``factor.<key>`` tags)."""
        keys = {k for overrides in self.variants.values() for k in overrides}
        if self.tune is not None:
            keys |= {"tuning", *self.tune.grid}
        return ["variant", "seed", *sorted(keys)]

    def _size(self, size: str) -> dict[str, Any]:
        if size not in self.sizes:
            raise ConfigError(
                f"study {self.name} has no size '{size}'; valid: {', '.join(self.sizes)}"
            )
        return self.sizes[size] or {}


def _value(value: Any) -> str:
    """A YAML value as a Hydra override value (lists and dicts in Hydra's own syntax)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(_value(v) for v in value) + "]"
    return str(value)


def _vary(path: Path, name: str, base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """The baseline's overrides with ``change`` applied.

    One factor at a time: the baseline must state the value of every key a variant changes. A
    variant that picks another option of a config group (``optimizer: adam``) drops the
    baseline's keys inside that group (``optimizer.momentum``) and may set that option's own.
    """
    switched = {k for k, v in change.items() if "." not in k and base.get(k) != v}
    inside = {k for k in change if k.split(".", 1)[0] in switched and "." in k}
    missing = set(change) - set(base) - inside
    if missing:
        raise ConfigError(
            f"{path}: variant '{name}' changes {sorted(missing)}, which the baseline does not "
            "set; give the baseline's value in baseline.overrides"
        )
    kept = {k: v for k, v in base.items() if k.split(".", 1)[0] not in switched or "." not in k}
    return {**kept, **change}


def available() -> list[str]:
    """Names of the studies in ``experiments/``."""
    return sorted(p.parent.name for p in STUDIES_DIR.glob(f"*/{STUDY_FILE}"))


def load_study(name_or_path: str | Path) -> Study:
    """Read and check ``experiments/<name>/study.yaml`` (or a path to a study.yaml or folder).

    Raises ConfigError naming the problem and, for an unknown name, the valid studies.
    """
    path = Path(name_or_path)
    if path.is_dir():
        path = path / STUDY_FILE
    elif not path.suffix:
        path = STUDIES_DIR / str(name_or_path) / STUDY_FILE
    if not path.is_file():
        raise ConfigError(
            f"unknown study '{name_or_path}'; valid: {', '.join(available()) or '(none)'}"
        )
    spec = yaml.safe_load(path.read_text()) or {}
    name = path.parent.name
    known = {"claim", "question", "common", "baseline", "variants", "factorial", "seeds", "sizes",
             "quantities", "expect", "curves", "profiles", "checks", "tune", "pilots",
             "timing"}  # fmt: skip
    if unknown := set(spec) - known:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; valid: {sorted(known)}")
    baseline = spec.get("baseline") or {}
    base_name = baseline.get("name", "baseline")
    base_overrides = dict(baseline.get("overrides") or {})
    variants = {base_name: base_overrides}
    for variant, overrides in (spec.get("variants") or {}).items():
        variants[str(variant)] = _vary(path, str(variant), base_overrides, overrides or {})
    factorial = spec.get("factorial") or {}
    if factorial:
        keys = list(factorial)
        for values in itertools.product(*(factorial[k] for k in keys)):
            overrides = dict(zip(keys, values, strict=True))
            label = ",".join(f"{k}={_value(v)}" for k, v in overrides.items())
            variants[label] = _vary(path, label, base_overrides, overrides)
    quantities = [Quantity(**q) for q in spec.get("quantities") or []]
    tune = _tune(path, spec["tune"]) if spec.get("tune") else None
    if tune is not None and (stray := [v for v in tune.variants if v not in variants]):
        raise ConfigError(f"{path}: tune.variants names {stray}; valid: {', '.join(variants)}")
    if tune is not None and tune.variants:
        # an arm left out of the tuning runs at what it declares itself: every tuned key, or
        # it would silently inherit the baseline's value of it
        raw = spec.get("variants") or {}
        for variant in (v for v in variants if v not in tune.variants):
            own = base_overrides if variant == base_name else (raw.get(variant) or {})
            if missing := [k for k in tune.grid if k not in own]:
                raise ConfigError(
                    f"{path}: variant '{variant}' does not tune {missing} and does not set it; "
                    f"add it to tune.variants or give its value in the variant's overrides"
                )
    timing = _timing(path, spec["timing"]) if spec.get("timing") is not None else None
    for q in quantities:
        if q.from_tuning:
            _check_width(path, q, tune)
        if q.from_timing:
            _check_timed(path, q, timing)
        if q.from_tuning or q.from_timing:
            # read off the grid or the timing run, not through a run's metric history
            stray = [k for k, v in (("threshold", q.threshold), ("minus", q.minus),
                                    ("over", q.over), ("diverged_value", q.diverged_value),
                                    ("deterministic", q.deterministic)) if v is not None]  # fmt: skip
            stray += ["scale: log"] * (q.scale == "log") + ["a metric pattern"] * q.pattern
            if stray:
                raise ConfigError(f"{path}: stat {q.stat} ({q.metric}) takes none of {stray}")
        if q.stat not in STATS:
            raise ConfigError(f"{path}: quantity stat '{q.stat}'; valid: {', '.join(STATS)}")
        for key in ("minus", "over"):
            if getattr(q, key) is not None and q.stat not in ("final", "first", "best"):
                raise ConfigError(f"{path}: '{key}' needs stat final, first or best, not {q.stat}")
        if q.minus is not None and q.over is not None:
            raise ConfigError(f"{path}: a quantity takes 'minus' or 'over', not both")
        if q.reduce not in ("mean", "max", "min"):
            raise ConfigError(f"{path}: quantity reduce '{q.reduce}'; valid: mean, max, min")
        if q.pattern and q.stat in ("steps_to", "diverged", "param"):
            raise ConfigError(
                f"{path}: a metric pattern ({q.metric}) needs stat final, first or best"
            )
        if q.scale not in ("linear", "log"):
            raise ConfigError(f"{path}: quantity scale '{q.scale}'; valid: linear, log")
        if q.within is not None and not q.from_tuning:
            raise ConfigError(f"{path}: 'within' belongs to stat tuning_width, not {q.stat}")
        if q.stat == "steps_to" and q.threshold is None:
            raise ConfigError(f"{path}: quantity steps_to {q.metric} needs a threshold")
    names = {q.name for q in quantities}
    expect = [
        Expectation(**{**e, "against": None if e.get("against") is None else str(e["against"])})
        for e in spec.get("expect") or []
    ]
    for e in expect:
        if e.direction not in DIRECTIONS:
            raise ConfigError(
                f"{path}: expect direction '{e.direction}'; valid: {', '.join(DIRECTIONS)}"
            )
        if e.direction == "same" and not e.margin:
            raise ConfigError(f"{path}: expect direction 'same' for {e.variant} needs a margin")
        if e.variant not in variants:
            raise ConfigError(
                f"{path}: expect names variant '{e.variant}'; valid: {', '.join(variants)}"
            )
        if e.against is not None and e.against != ZERO and e.against not in variants:
            raise ConfigError(
                f"{path}: expect compares against '{e.against}'; valid: 0, {', '.join(variants)}"
            )
        if e.quantity not in names:
            raise ConfigError(
                f"{path}: expect names quantity '{e.quantity}'; valid: {', '.join(sorted(names))}"
            )
    widths = {q.name for q in quantities if q.from_tuning}
    tuned = [v for v in variants if tune is not None and (not tune.variants or v in tune.variants)]
    for e in expect:
        arms = [e.variant, e.against or base_name]
        if e.quantity in widths and (untuned := [v for v in arms if v not in tuned]):
            raise ConfigError(f"{path}: '{e.quantity}' is read off the tuning grid, which "
                              f"{untuned} do not run; valid arms: {', '.join(tuned)}")  # fmt: skip
    checks = _checks(path, spec.get("checks") or [])
    if tune is not None:
        # a comparison run at a tuning seed would replay the run that chose its point
        compared = {int(s) for size in (spec.get("sizes") or {}).values()
                    for s in (size or {}).get("seeds") or []} | set(spec.get("seeds") or [0, 1, 2])  # fmt: skip
        if shared := sorted(compared & set(tune.seeds)):
            raise ConfigError(f"{path}: tune.seeds {shared} are also comparison seeds; "
                              "give the tuning seeds of their own (e.g. [100, 101])")  # fmt: skip
    sizes = spec.get("sizes") or {"quick": {}}
    seeds = [int(s) for s in spec.get("seeds") or [0, 1, 2]]
    return Study(
        name=name,
        folder=path.parent,
        claim=str(spec.get("claim", "")),
        question=str(spec.get("question", "")),
        baseline=base_name,
        variants=variants,
        seeds=seeds,
        sizes=sizes,
        quantities=quantities,
        expect=expect,
        curves=list(spec.get("curves") or [q.metric for q in quantities]),
        common=dict(spec.get("common") or {}),
        profiles=[str(p) for p in spec.get("profiles") or []],
        checks=checks,
        tune=tune,
        pilots=[str(p) for p in spec.get("pilots") or []],
        timing=timing,
    )


def _check_width(path: Path, q: Quantity, tune: Tune | None) -> None:
    """A ``tuning_width`` quantity reads a key of the study's grid, on a log scale: it needs
    ``tune``, a grid key of positive numbers and a ``within`` > 0."""
    if tune is None:
        raise ConfigError(f"{path}: quantity tuning_width {q.metric} reads the tuning grid; "
                          "the study declares no tune")  # fmt: skip
    if q.metric not in tune.grid:
        raise ConfigError(f"{path}: quantity tuning_width {q.metric} is not a tune.grid key; "
                          f"valid: {', '.join(tune.grid)}")  # fmt: skip
    values = tune.grid[q.metric]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in values):
        raise ConfigError(f"{path}: tuning_width reads tune.grid.{q.metric} in decades: its "
                          f"values must be positive numbers, got {values}")  # fmt: skip
    if q.within is None or not q.within > 0:
        raise ConfigError(f"{path}: quantity tuning_width {q.metric} needs within > 0 (how "
                          f"far below the best score still counts), got {q.within}")  # fmt: skip


def _check_timed(path: Path, q: Quantity, timing: Timing | None) -> None:
    """An ``interleaved`` quantity reads the study's timing run: it needs ``timing`` and one of
    the metrics that run logs."""
    if timing is None:
        raise ConfigError(f"{path}: quantity interleaved {q.metric} reads the timing run; "
                          "the study declares no timing")  # fmt: skip
    if q.metric not in TIMING_METRICS:
        raise ConfigError(f"{path}: quantity interleaved {q.metric}: the timing run logs "
                          f"{', '.join(TIMING_METRICS)}")  # fmt: skip


def _timing(path: Path, spec: Any) -> Timing:
    """The study's ``timing``, checked: positive counts and seconds, a known mode."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: timing needs {{batch_size: 64, rounds: 10, min_run_time: 20, "
                          f"mode: inference}}, got {spec!r}")  # fmt: skip
    known = {"batch_size", "rounds", "min_run_time", "mode", "threads"}
    if unknown := set(spec) - known:
        raise ConfigError(
            f"{path}: unknown timing key(s) {sorted(unknown)}; valid: {sorted(known)}"
        )

    def count(key: str, least: int) -> None:
        value = spec.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError(f"{path}: timing.{key} must be an integer >= {least}, got {value!r}")

    # rounds: the replicates compared (a paired verdict needs 3)
    for key, least in (("batch_size", 1), ("rounds", 3)):
        if key in spec:
            count(key, least)
    if spec.get("threads") is not None:
        count("threads", 1)
    seconds = spec.get("min_run_time", Timing.min_run_time)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ConfigError(f"{path}: timing.min_run_time must be a positive number of seconds "
                          f"per network, got {seconds!r}")  # fmt: skip
    mode = spec.get("mode", "inference")
    if mode not in ("inference", "train_step"):
        raise ConfigError(f"{path}: timing.mode '{mode}'; valid: inference, train_step")
    return Timing(
        batch_size=spec.get("batch_size", Timing.batch_size),
        rounds=spec.get("rounds", Timing.rounds),
        min_run_time=float(seconds),
        mode=mode,
        threads=spec.get("threads"),
    )


def _tune(path: Path, spec: dict[str, Any]) -> Tune:
    """The study's ``tune``, checked: a grid of lists, a validation metric, a known stat."""
    known = {"grid", "metric", "stat", "mode", "seeds", "variants"}
    if unknown := set(spec) - known:
        raise ConfigError(f"{path}: unknown tune key(s) {sorted(unknown)}; valid: {sorted(known)}")
    grid = spec.get("grid") or {}
    if not grid or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{path}: tune.grid needs {{key: [values, ...]}}, e.g. "
                          "{optimizer.lr: [0.001, 0.01, 0.1]}")  # fmt: skip
    tune = Tune(
        grid={str(k): list(v) for k, v in grid.items()},
        metric=str(spec.get("metric", "val/acc")),
        stat=spec.get("stat", "best"),
        mode=spec.get("mode", "max"),
        seeds=tuple(int(s) for s in spec.get("seeds") or (100,)),
        variants=tuple(str(v) for v in spec.get("variants") or ()),
    )
    # The choice is made on validation data only: a test metric would leak the test set into
    # the design that the test set then judges.
    if not tune.metric.startswith("val"):
        raise ConfigError(
            f"{path}: tune.metric {tune.metric} is not a validation metric; tuning reads "
            "validation data only (val/...)"
        )
    if tune.stat not in ("best", "final"):
        raise ConfigError(f"{path}: tune.stat '{tune.stat}'; valid: best, final")
    if tune.mode not in ("max", "min"):
        raise ConfigError(f"{path}: tune.mode '{tune.mode}'; valid: max, min")
    return tune


def _checks(path: Path, specs: list[dict[str, Any]]) -> list[Check]:
    checks = []
    for spec in specs:
        check = Check(
            name=str(spec["name"]),
            formula=str(spec.get("formula", "")),
            module=spec.get("module"),
            input=tuple(spec.get("input") or ()),
            ratio=tuple(spec["ratio"]) if spec.get("ratio") else None,
            notes=dict(spec.get("notes") or {}),
        )
        if (check.module is None) == (check.ratio is None):
            raise ConfigError(f"{path}: check '{check.name}' needs either a module or a ratio")
        if check.module is not None and len(check.input) != 3:
            raise ConfigError(f"{path}: check '{check.name}' needs an input shape [C, H, W]")
        names = [c.name for c in checks]
        if check.ratio and any(r not in names for r in check.ratio):
            raise ConfigError(
                f"{path}: check '{check.name}' divides {list(check.ratio)}; valid: {names}"
            )
        if unknown := set(check.notes) - {"params", "macs"}:
            raise ConfigError(
                f"{path}: check '{check.name}' notes {sorted(unknown)}; valid: params, macs"
            )
        checks.append(check)
    return checks
