"""The ``ablab`` command: ``ablab train|eval|study|report|summary|zoo|show-batch|ui [options]
[overrides]``.

Sub-commands take the same Hydra overrides as training, composed from the same ``conf/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import TYPE_CHECKING, Any

from ablab.errors import ConfigError

if TYPE_CHECKING:
    from ablab.analysis.results import StudyReport
    from ablab.complexity import Complexity
    from ablab.study import Study


def show_batch(argv: list[str]) -> None:
    """Save one training batch of the configured data as a labelled PNG grid."""
    parser = argparse.ArgumentParser(
        prog="ablab show-batch", description="Save one training batch as a labelled image grid."
    )
    parser.add_argument("--out", default="batch.png", help="PNG file to write (default: batch.png)")
    parser.add_argument("--max-images", type=int, default=64)
    parser.add_argument(
        "--augmented", action="store_true", help="apply the configured augmentation first"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=cifar10")
    args = parser.parse_intermixed_args(argv)

    from hydra.utils import instantiate

    from ablab.config import composed
    from ablab.data.base import ImageDataModule
    from ablab.data.preview import save_batch_grid
    from ablab.training.run import as_config_error, component_class

    with composed(args.overrides) as cfg:
        # labelled images only: sequences have no picture, and masks are drawn by the
        # segmentation task itself (an overlay per epoch, segmentation/epoch_NNN.png)
        try:
            component_class(cfg, "data", ImageDataModule)
        except ConfigError:
            raise ConfigError(
                f"ablab show-batch draws labelled images; data._target_={cfg.data._target_} "
                "yields none (sequences, or masks: task=segmentation logs its own overlays)"
            ) from None
        try:
            datamodule = instantiate(cfg.data, augmentation=instantiate(cfg.augmentation))
            datamodule.prepare_data()
            datamodule.setup("fit")
        except Exception as err:
            raise as_config_error(err) from err
    x, y = next(iter(datamodule.train_dataloader()))
    if args.augmented:
        x, y = datamodule.augmentation.draw(x, y, index=0)
        y = y.argmax(1) if y.dim() == 2 else y  # mixed targets: the dominant class
    path = save_batch_grid(x, y, datamodule.class_names, args.out, args.max_images)
    print(f"saved {min(len(x), args.max_images)} images of {datamodule.name} to {path}")


def measure_configured(overrides: list[str]) -> tuple[str, Complexity]:
    """(model config name, Complexity) of the one network these overrides configure (see
    :func:`measure_networks`)."""
    return measure_networks(overrides)[0]


def measure_networks(overrides: list[str]) -> list[tuple[str, Complexity]]:
    """(config name, Complexity) of each network the configured task takes (the model; a GAN's
    generator and discriminator), each on the example input a training run traces it on (an
    image of the data's channels and size, a sequence of its length, a GAN generator's noise);
    no data is loaded."""
    from hydra.utils import instantiate

    from ablab.complexity import measure
    from ablab.config import composed
    from ablab.data.module import DataModule
    from ablab.tasks.base import Task
    from ablab.training.run import as_config_error, component_class, components

    with composed(overrides) as cfg:
        try:
            task_class = component_class(cfg, "task", Task)
            data = component_class(cfg, "data", DataModule)
            datamodule = instantiate(cfg.data, **components(cfg, data.components))
            groups = task_class.networks
            networks = {argument: instantiate(cfg[group]) for argument, group in groups.items()}
            if list(groups) == ["net"]:  # the data's own example: no task to build
                examples = {"net": datamodule.example_input()}
            else:  # only the task knows what each of its networks takes
                task = instantiate(
                    cfg.task,
                    **networks,
                    **components(cfg, task_class.components),
                    optimizer=instantiate(cfg.get("optimizer")),  # None: a task without one
                    scheduler=None,
                )
                examples = task.example_inputs(datamodule)
            choices = cfg.hydra.runtime.choices
            # the model is named by its config; other networks by group too (two "dcgan"s)
            names = {
                group: str(choices.get(group))
                if group == "model"
                else f"{group}={choices.get(group)}"
                for group in groups.values()
            }
            return [
                (names[group], measure(networks[argument], examples[argument]))
                for argument, group in groups.items()
            ]
        except Exception as err:
            raise as_config_error(err) from err


def summary(argv: list[str]) -> None:
    """Per-layer output shape, params, MACs and receptive field of the configured model."""
    parser = argparse.ArgumentParser(
        prog="ablab summary",
        description="Complexity of the model a training run would build, measured by tracing.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--depth", type=int, default=None, help="sum layers up to this many name parts (stages.0)"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=resnet20")
    args = parser.parse_intermixed_args(argv)

    import json

    measured = measure_networks(args.overrides)
    for _, stats in measured:
        if args.depth is not None:
            stats.layers = stats.grouped(args.depth)
    if args.json:  # one network: its measures; several: a measure per network's config name
        dicts = {name: stats.to_dict() for name, stats in measured}
        print(json.dumps(measured[0][1].to_dict() if len(measured) == 1 else dicts))
        return
    for model_name, stats in measured:
        print_complexity(model_name, stats)


def print_complexity(model_name: str, stats: Complexity) -> None:
    """One network's per-layer table and totals, as ``ablab summary`` prints them."""
    from rich.console import Console
    from rich.table import Table

    from ablab.complexity import human

    shape = stats.input_shape
    table = Table(title=f"{model_name} on {shape} (MACs: multiply-adds, batch of one)")
    for column in ("layer", "type", "output", "params", "MACs", "RF", "jump"):
        table.add_column(column, justify="left" if column in ("layer", "type") else "right")
    for s in stats.layers:
        rf = {None: "?", -1: "all"}.get(s.receptive_field, str(s.receptive_field))
        table.add_row(
            s.name, s.kind, "x".join(map(str, s.output_shape)), f"{s.params:,}", f"{s.macs:,}",
            rf, "?" if s.jump is None else str(s.jump),
        )  # fmt: skip
    table.add_section()
    table.add_row("total", "", "", f"{stats.params:,}", f"{stats.macs:,}", "", "")
    console = Console()
    console.print(table)
    console.print(f"{model_name}: {human(stats.params)} params, {human(stats.macs)} MACs")


def zoo(argv: list[str]) -> None:
    """Params and MACs of every image model config (conf/model) at small and ImageNet sizes."""
    parser = argparse.ArgumentParser(
        prog="ablab zoo",
        description="Params and MACs of every model config, measured by tracing (as `summary`).",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224], metavar="PX")
    parser.add_argument("--models", nargs="+", default=None, help="config names (default: all)")
    parser.add_argument("--save", default=None, metavar="FILE", help="also write the JSON here")
    args = parser.parse_intermixed_args(argv)

    import json
    import re

    from ablab.complexity import human
    from ablab.config import CONFIG_DIR

    folder = CONFIG_DIR / "model"

    def form_of(name: str) -> str:
        found = re.search(r"^# form: (\w+)$", (folder / f"{name}.yaml").read_text(), re.MULTILINE)
        return found.group(1) if found else "?"

    # The image classifiers (forms imagenet and small): a sequence model has no image size to be
    # measured at, and an autoencoder or a U-Net no class count to be measured with.
    names = args.models or sorted(p.stem for p in folder.glob("*.yaml"))
    skipped = [name for name in names if form_of(name) not in ("imagenet", "small")]
    if skipped:
        print(f"skipped (not image classifiers): {', '.join(skipped)}", file=sys.stderr)
    names = [name for name in names if name not in skipped]
    table: dict[str, dict] = {}
    for name in names:
        row: dict = {"form": form_of(name)}
        for size in args.sizes:
            classes = 1000 if size >= 160 else 10  # ImageNet heads at ImageNet sizes
            overrides = [f"model={name}", "data.in_channels=3", f"data.image_size={size}"]
            _, stats = measure_configured([*overrides, f"data.num_classes={classes}"])
            row[str(size)] = {"classes": classes, "params": stats.params, "macs": stats.macs}
        table[name] = row
        if not args.json:
            if len(table) == 1:
                head = [f"params @{s} px | MACs @{s} px" for s in args.sizes]
                print("| model | form | " + " | ".join(head) + " |")
                print("|---|---|" + "---:|---:|" * len(args.sizes))
            cells = [
                f"{row[str(s)]['params']:,} | {human(row[str(s)]['macs'])}" for s in args.sizes
            ]
            print(f"| {name} | {row['form']} | " + " | ".join(cells) + " |", flush=True)
    if args.json:
        print(json.dumps(table, indent=1))
    if args.save:
        with open(args.save, "w") as f:
            json.dump(table, f, indent=1)
            f.write("\n")


def report_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ablab report",
        description="Read a study's runs back from MLflow, compare every variant with the "
        "baseline seed by seed, and write RESULTS.md / RESULTS.html (with plots) into the study "
        "folder; also logged on the study's parent run.",
    )
    parser.add_argument(
        "study", nargs="?", help="a study name (experiments/<name>) or a parent run id"
    )
    parser.add_argument(
        "--all", action="store_true",
        help="instead: write experiments/README.md (+ .html), every claim of the notes with the "
        "verdicts of the studies' RESULTS.json",
    )  # fmt: skip
    parser.add_argument("--size", help="the latest parent of this size (default: of any)")
    parser.add_argument("--out", help="folder to write into (default: the study's folder)")
    parser.add_argument("--stem", default="RESULTS", help="file name stem (default: RESULTS)")
    parser.add_argument("--no-log", action="store_true", help="do not log to the parent run")
    parser.add_argument("overrides", nargs="*", help="e.g. logger.tracking_uri=http://host:5000")
    return parser


def report(argv: list[str]) -> StudyReport | None:
    """Compare a study's variants from its MLflow runs: verdicts, tables, plots (MD + HTML)."""
    parser = report_parser()
    args = parser.parse_intermixed_args(argv)  # overrides before or after options
    # a report downloads a small artifact per run (layer profiles, the sweep's command): MLflow's
    # progress bar for each would bury the verdicts
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.all:
        from pathlib import Path

        from ablab.analysis.claims import write_claims_page
        from ablab.study import STUDIES_DIR

        if args.study:
            parser.error("--all takes no study")
        paths = write_claims_page(Path(args.out) if args.out else STUDIES_DIR)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
        return None
    if not args.study:
        parser.error("name a study (experiments/<name>) or a parent run id, or give --all")

    from pathlib import Path

    from mlflow import MlflowClient

    from ablab.analysis.collect import collect, find_study_runs, publish, record_rounds
    from ablab.analysis.render import left_out_line, write_report
    from ablab.config import composed
    from ablab.tracking.store import ensure_store

    with composed(args.overrides) as cfg:
        uri = str(cfg.logger.tracking_uri)
    ensure_store(uri)  # a new local store is created once, under its lock
    client = MlflowClient(uri)
    runs = find_study_runs(client, args.study, args.size)
    result = collect(client, runs)
    paths = write_report(result, Path(args.out) if args.out else runs.study.folder, args.stem)
    if not args.no_log:
        publish(client, result, paths)
        record_rounds(client, result)
    for verdict in result.verdicts:
        print(f"{verdict.variant}: {verdict.quantity} {verdict.expected}? {verdict.outcome} "
              f"({verdict.reason})")  # fmt: skip
    if (line := left_out_line(result)) is not None:
        print(line)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return result


def study_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ablab study",
        description="Run experiments/<name>/study.yaml as one Hydra multirun (any launcher: "
        "add hydra/launcher=local_parallel or slurm), then `ablab report` it.",
    )
    parser.add_argument("name", help="the study: experiments/<name>/study.yaml")
    parser.add_argument("--size", default="quick", help="a size the study defines (quick, full)")
    parser.add_argument("--no-report", action="store_true", help="only run the sweep")
    parser.add_argument(
        "--until-decided", action="store_true",
        help="add seeds to the same parent run, in rounds, until every claim is decided or "
        "--max-seeds is reached (a group-sequential design: the report names it)",
    )  # fmt: skip
    parser.add_argument("--max-seeds", type=int, help="with --until-decided: the most seeds")
    parser.add_argument(
        "--seeds-per-round", type=int,
        help="with --until-decided: seeds added per round (default: the size's seed count)",
    )  # fmt: skip
    parser.add_argument(
        "--spending", default=None,
        help="with --until-decided: the alpha-spending function, pocock (default) or "
        "obrien_fleming",
    )  # fmt: skip
    parser.add_argument(
        "--alpha", type=float, default=None,
        help="with --until-decided: the overall significance level the looks share (0.05)",
    )  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="applied to every job, after the study's")
    return parser


def sequential_looks(args: argparse.Namespace, first: int, claims: int = 1) -> list[int] | None:
    """The seed counts a ``--until-decided`` study looks at, or None without it; exits with
    one line on an inconsistent option, and warns when the last look could not decide a claim
    whose differences are not normal (see :func:`warn_permutation_floor`)."""
    parser = study_parser()
    if not args.until_decided:
        given = [o for o, v in (("--max-seeds", args.max_seeds),
                                ("--seeds-per-round", args.seeds_per_round),
                                ("--spending", args.spending),
                                ("--alpha", args.alpha)) if v is not None]  # fmt: skip
        if given:
            parser.error(f"{', '.join(given)} needs --until-decided")
        return None
    # defaults that only a sequential design reads
    args.spending = "pocock" if args.spending is None else args.spending
    args.alpha = 0.05 if args.alpha is None else args.alpha
    from ablab.analysis import stats

    if args.no_report:
        parser.error("--until-decided reads each round's report: drop --no-report")
    if args.max_seeds is None:
        parser.error("--until-decided needs --max-seeds N (the most seeds to run)")
    if args.max_seeds < first:
        parser.error(f"--max-seeds {args.max_seeds} is below the size's {first} seeds")
    if args.spending not in stats.SPENDING:
        parser.error(f"--spending {args.spending}; valid: {', '.join(stats.SPENDING)}")
    if not 0 < args.alpha < 1:
        parser.error(f"--alpha {args.alpha}: a level between 0 and 1")
    if args.seeds_per_round is not None and args.seeds_per_round < 1:
        parser.error(f"--seeds-per-round {args.seeds_per_round}: at least 1")
    looks = stats.plan_looks(first, args.max_seeds, args.seeds_per_round)
    warn_permutation_floor(looks, stats.look_levels(looks, args.alpha, args.spending), claims)
    return looks


def warn_permutation_floor(looks: list[int], levels: list[float], claims: int) -> None:
    """From ``ROBUST_MIN_SEEDS`` seeds on, a claim whose paired differences Shapiro–Wilk finds
    non-normal is tested by the exact sign-flip permutation test, whose smallest p is 2/2**n
    (times Holm's factor, up to the number of claims). When that cannot reach the last look's
    level, such a claim can never be decided: say so before anything runs, with the cap that
    would let it (plain_vs_residual at 6 seeds and 2 claims: 0.0625 against 0.019)."""
    from ablab.analysis import stats

    n, level = looks[-1], levels[-1]
    if n < stats.ROBUST_MIN_SEEDS or 2 / 2**n * claims < level:
        return
    print(
        f"ablab: warning: at the last look ({n} seeds, α {level:.3g}) a claim with non-normal "
        f"differences goes to the sign-flip permutation test, whose smallest p, 2/2^{n} = "
        f"{2 / 2**n:.3g} (x{claims} after Holm), cannot reach it; such a claim cannot be decided. "
        f"it needs {stats.permutation_seeds(level, claims)} seeds at this α (a larger "
        f"--max-seeds spreads α over more looks: check its warning too)",
        file=sys.stderr,
    )


def study(argv: list[str]) -> None:
    """Run a study (every variant x seed of one size) as one sweep, then write its report."""
    # Intermixed: `ablab study NAME --size quick OVERRIDES...` (the Makefile's order) collects the
    # overrides after an option, which plain parse_args leaves unrecognized.
    args = study_parser().parse_intermixed_args(argv)

    import subprocess

    from ablab.config import check_overrides
    from ablab.study import STUDIES_DIR, load_study

    spec = load_study(args.name)
    looks = sequential_looks(args, len(spec.seeds_for(args.size)), claims=len(spec.expect))
    task = [o for o in args.overrides if not o.startswith(("hydra.", "hydra/"))]
    # every job composes, before any run or parent exists
    for job in [*spec.tune_jobs(args.size), *spec.jobs(args.size)]:
        check_overrides([*job.overrides, *task])
    # A study of experiments/ by name, so the command the parent run records works in any checkout.
    ref = spec.name if spec.folder == STUDIES_DIR / spec.name else spec.folder
    command = [sys.executable, "-m", "ablab.train", "-m", "hydra/sweeper=study",
               f"hydra.sweeper.study={ref}", f"hydra.sweeper.size={args.size}",
               *args.overrides]  # fmt: skip
    from ablab.study import Tune
    from ablab.tracking.sweep import USER_COMMAND_ENV, hydra_value

    options = []
    if looks is not None:
        options = ["--until-decided", "--max-seeds", str(args.max_seeds), "--spending",
                   args.spending, "--alpha", f"{args.alpha:g}"]  # fmt: skip
        options += ["--seeds-per-round", str(args.seeds_per_round)] if args.seeds_per_round else []
    typed = shlex.join(["ablab", "study", args.name, "--size", args.size, *options,
                        *args.overrides])  # fmt: skip
    env = {**os.environ, USER_COMMAND_ENV: typed}
    design = []
    if looks is not None:  # fixed before the first run: every stage and round records it
        design = [f"hydra.sweeper.sequential={{looks:[{','.join(map(str, looks))}],"
                  f"alpha:{args.alpha:g},spending:{args.spending}}}"]  # fmt: skip
    if spec.tune is not None:
        # Stage 1: every variant at every grid point on the tuning seeds; then the comparison
        # runs each variant at its best point (the same sweep: one parent, jobs appended).
        print(f"ablab: tuning {', '.join(spec.tune.grid)} per variant", file=sys.stderr)
        code = subprocess.call([*command, *design], env=env)
        if code not in (0, 1):
            raise SystemExit(code)
        tuned = tuned_points(spec, args.size, task)
        for variant, point in tuned.items():
            print(f"ablab: {variant} tuned to {Tune.label(point)}", file=sys.stderr)
        command = [*command, f"hydra.sweeper.tuned={hydra_value(json.dumps(tuned))}"]
    if looks is None:
        code = subprocess.call(command, env=env)
        if code not in (0, 1):  # 1: some jobs failed, which the report shows
            raise SystemExit(code)
        timed = time_stage(spec, args.size, task, env)
        if args.no_report:
            raise SystemExit(code or int(not timed))
        result = study_report(spec, args.size, task)
    else:
        # Every round is the same sweep (hydra.* overrides leave its folder and parent run
        # alone) with more seeds: finished jobs are reported, not trained again.
        first = looks[0]
        for k, n in enumerate(looks, 1):
            print(f"ablab: round {k} of {len(looks)}: {n} seeds", file=sys.stderr)
            rounds = [f"hydra.sweeper.extra_seeds={n - first}", *design]
            code = subprocess.call([*command, *rounds], env=env)
            if code not in (0, 1):
                raise SystemExit(code)
            if k == 1:
                timed = time_stage(spec, args.size, task, env)
            result = study_report(spec, args.size, task)
            done = sum(v.outcome != "inconclusive" for v in result.verdicts)
            print(f"ablab: round {k} of {len(looks)} ({n} seeds): {done} of "
                  f"{len(result.verdicts)} claims decided", file=sys.stderr)  # fmt: skip
            if done == len(result.verdicts):
                break
    # The study fails only when runs gave no value: a run that diverged, as the study
    # expects and counts (its diverged_value, its "diverged" quantity), is a result.
    missing = [e for e in result.left_out if not e.used_instead]
    if code == 1 and not missing:
        print("ablab: every run produced its quantities (a run stopped by the non-finite "
              "loss guard is one of the study's results): nothing to rerun")  # fmt: skip
    raise SystemExit(1 if missing or not timed else 0)


def time_stage(spec: Study, size: str, task: list[str], env: dict[str, str]) -> bool:
    """A study that declares ``timing``: every variant's network timed interleaved in one fresh
    process (:mod:`ablab.training.timing`), once the comparison's runs are done (the machine
    idle); a finished timing run of the parent is kept, not timed again."""
    if spec.timing is None:
        return True
    import subprocess

    timing = [sys.executable, "-m", "ablab.training.timing", str(spec.folder), "--size", size]
    if (code := subprocess.call([*timing, *task], env=env)) != 0:
        # the report is still written (its speed claims inconclusive, saying there is no
        # timing run); the study's command then ends with an error
        print(f"ablab: the timing stage failed (exit {code}); the report follows without it",
              file=sys.stderr)  # fmt: skip
        return False
    return True


def time_study(argv: list[str]) -> None:
    """Time a study's variants interleaved in one process, as a child run of its parent."""
    from ablab.training.timing import main as run_timing

    run_timing(argv)


def tuned_points(spec: Study, size: str, task: list[str]) -> dict[str, dict[str, Any]]:
    """Each variant's best grid point from the study's tuning runs in the store its overrides
    name (:func:`ablab.analysis.collect.choose_points`); the comparison's sweep records it on
    the parent run (``tuned.<variant>``)."""
    from mlflow import MlflowClient

    from ablab.analysis.collect import choose_points, find_study_runs, tuning_scores
    from ablab.config import composed
    from ablab.study import Tune

    with composed([o for o in task if o.startswith(("logger.", "paths."))]) as cfg:
        uri = str(cfg.logger.tracking_uri)
    client = MlflowClient(uri)
    runs = find_study_runs(client, str(spec.folder), size)
    tags = runs.parent.data.tags
    if all(f"tuned.{v}" in tags for v in spec.tuned_variants):
        # Chosen once: the comparison's runs were made at these points (a rerun that finished
        # a tuning job the first choice lacked must not move them).
        points = {Tune.label(p): p for p in spec.tune.points()}
        return {v: points[tags[f"tuned.{v}"]] for v in spec.tuned_variants}
    return choose_points(spec, tuning_scores(client, spec, runs.children))


def study_report(spec: Study, size: str, task: list[str]) -> StudyReport:
    """``ablab report`` of the study just run (its size's latest parent), in the store its
    overrides name."""
    stored = [o for o in task if o.startswith(("logger.", "paths."))]
    result = report([str(spec.folder), "--size", size, *stored])
    assert result is not None  # a study's report, not --all
    return result


def evaluate(argv: list[str]) -> None:
    """Test a checkpoint with its run's config: ckpt_path=<file or run id> [new_run=true] [k=v]"""
    if argv and argv[0] in ("-h", "--help"):
        from ablab.training import evaluate as module

        print(module.__doc__)
        return
    from ablab.training.evaluate import evaluate as run_eval

    run_eval(argv)


def train(argv: list[str]) -> None:
    """Train and track one run (or a ``-m`` sweep): the Hydra entry point with these arguments."""
    from ablab import train as entry

    sys.argv = [f"{sys.argv[0]} train", *argv]
    entry.main()


def ui(argv: list[str]) -> None:
    """MLflow's UI on the local store; prints the URL of the newest experiment's runs view."""
    parser = argparse.ArgumentParser(
        prog="ablab ui",
        description="Print the URL of the model-training runs view of the experiment that ran "
        "last (its sweep's saved view: a column per factor), then run `mlflow ui` on the store.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--workers", type=int, help="server processes (default: MLflow's, 4)")
    parser.add_argument(
        "--backend-store-uri",
        help="default: sqlite:///<ABLAB_ROOT or the working directory>/mlflow.db",
    )
    args = parser.parse_args(argv)
    from pathlib import Path

    from mlflow import MlflowClient

    from ablab.tracking.dashboard import newest_view, runs_url
    from ablab.tracking.store import ensure_store

    root = Path(os.environ.get("ABLAB_ROOT", ".")).resolve()
    uri = args.backend_store_uri or f"sqlite:///{root}/mlflow.db"
    ensure_store(uri)  # a new store is created and migrated once, under its lock
    base = f"http://{args.host}:{args.port}"
    newest = newest_view(MlflowClient(uri))
    if newest is None:
        print(f"ablab: no runs in {uri} yet; the UI is at {base}", flush=True)
    else:
        print(f"ablab: the newest experiment's runs: {runs_url(base, *newest)}", flush=True)
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow) if mlflow.exists() else "mlflow", "ui", "--backend-store-uri", uri,
               "--host", args.host, "--port", str(args.port)]  # fmt: skip
    if args.workers:
        command += ["--workers", str(args.workers)]
    # Its GenAI job runner starts worker processes that training runs never use.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execvp(command[0], command)  # the UI becomes this process: Ctrl-C and kill reach it


COMMANDS = {
    "train": train,
    "eval": evaluate,
    "study": study,
    "time-study": time_study,
    "report": report,
    "summary": summary,
    "zoo": zoo,
    "show-batch": show_batch,
    "ui": ui,
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        lines = [f"  {name:<11} {fn.__doc__.splitlines()[0]}" for name, fn in COMMANDS.items()]
        names = ",".join(COMMANDS)
        print(f"usage: ablab {{{names}}} [options] [hydra overrides]", file=sys.stderr)
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    try:
        COMMANDS[argv[0]](argv[1:])
    except ConfigError as err:
        print(f"ablab: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
