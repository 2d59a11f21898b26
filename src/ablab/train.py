"""The Hydra entry point: ``python -m ablab.train [overrides]``, also ``ablab-train``.

The command line is composed and checked first (Hydra and OmegaConf only, about a second), so a
wrong option or key exits with one line before torch is imported or an MLflow run is created.
"""

from __future__ import annotations

import os
import signal
import sys

import hydra
from hydra._internal.utils import get_args_parser
from omegaconf import DictConfig

from ablab.config import CONFIG_DIR, CONFIG_NAME, check_overrides
from ablab.errors import ConfigError


def fail(err: ConfigError) -> None:
    """Exit with status 2 and the error on one line (a traceback too when ABLAB_DEBUG is set)."""
    if os.environ.get("ABLAB_DEBUG"):
        import traceback

        traceback.print_exception(err)
    print(f"ablab: error: {err}", file=sys.stderr)
    raise SystemExit(2)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=CONFIG_NAME)
def hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from ablab.tracking.status import Preempted
    from ablab.tracking.sweep import record_job
    from ablab.training.run import train  # heavy imports only once the command line is valid

    # In a sweep one job's failure must not stop the others: it is recorded (and its MLflow run
    # is already FAILED), the sweep goes on, and the sweep's end reports it and exits non-zero.
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        metrics = train(cfg)
    except ConfigError as err:
        if not in_sweep:
            fail(err)
        record_job("ERROR", error=str(err))
        print(f"ablab: job {HydraConfig.get().job.num} error: {err}", file=sys.stderr)
        return None
    except Preempted as err:  # a checkpoint was saved; the job's next attempt continues it
        if in_sweep:
            record_job("KILLED", error=str(err))
        print(f"ablab: preempted by {err}", file=sys.stderr)
        raise SystemExit(128 + signal.Signals[err.signal_name].value) from err
    except KeyboardInterrupt:
        if in_sweep:
            record_job("KILLED")
        raise
    except Exception as err:
        if not in_sweep:
            raise
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        record_job("FAILED", error=first)
        print(f"ablab: job {HydraConfig.get().job.num} failed: {first}", file=sys.stderr)
        return None
    if in_sweep:
        record_job("FINISHED")
    optimized = cfg.get("optimized_metric")
    if optimized and optimized not in metrics:  # a sweeper would fail on None, trial by trial
        fail(ConfigError(f"optimized_metric={optimized} is not a metric of this run; it has: "
                         f"{', '.join(sorted(metrics))}"))  # fmt: skip
    return metrics.get(optimized) if optimized else None


def main() -> None:
    args = get_args_parser().parse_args(sys.argv[1:])
    if not (args.help or args.hydra_help or args.info or args.shell_completion):
        try:
            check_overrides(args.overrides, multirun=args.multirun)
        except ConfigError as err:
            fail(err)
    hydra_main()


if __name__ == "__main__":
    main()
