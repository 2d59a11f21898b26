"""The Hydra entry point: ``python -m ablab.train [overrides]``, also ``ablab-train``.

The command line is composed and checked first (Hydra and OmegaConf only, about a second), so a
wrong option or key exits with one line before torch is imported or an MLflow run is created; the
run's life is :mod:`ablab.training.lifecycle`.
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra._internal.utils import get_args_parser
from omegaconf import DictConfig

from ablab.config import CONFIG_DIR, CONFIG_NAME, check_overrides, null_groups
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
    from ablab.training.lifecycle import (
        run_job,
    )  # heavy imports only once the command line is valid

    try:
        return run_job(cfg)
    except ConfigError as err:
        fail(err)


def main() -> None:
    sys.argv[1:] = null_groups(sys.argv[1:])  # logger=null: Hydra's ~logger
    args = get_args_parser().parse_args(sys.argv[1:])
    if not (args.help or args.hydra_help or args.info or args.shell_completion):
        try:
            check_overrides(args.overrides, multirun=args.multirun)
        except ConfigError as err:
            fail(err)
    hydra_main()


if __name__ == "__main__":
    main()
