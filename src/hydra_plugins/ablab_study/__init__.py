"""ablab's study sweeper (:mod:`ablab.study`). Hydra instantiates sweepers only from
the ``hydra_plugins`` namespace, and finds the class by the module it is defined in: hence here.

``hydra/sweeper=study hydra.sweeper.study=<name> hydra.sweeper.size=quick`` (conf/hydra/sweeper).
"""

from __future__ import annotations

import json
from typing import Any

from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig


class StudySweeper(Sweeper):
    """A Hydra sweeper that runs one study (:mod:`ablab.study`): every variant at every
    seed of ``size``, as one batch of jobs for whichever launcher is configured.

    The command line's own overrides apply to every job, after the study's (so
    ``trainer.max_epochs=1`` shortens a whole study); sweeping them (``a=1,2``) is refused: the
    study file is the sweep.
    """

    def __init__(
        self,
        study: str,
        size: str = "quick",
        folder: str | None = None,
        extra_seeds: int = 0,
        sequential: dict[str, Any] | None = None,
        tuned: str | None = None,
    ) -> None:
        # folder: the sweep folder's name (conf/hydra/sweeper/study.yaml), used by hydra.sweep.dir
        self.study, self.size = study, size
        self.config: DictConfig | None = None
        self.hydra_context: Any = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    @staticmethod
    def plan(config: DictConfig, arguments: list[str]) -> dict[str, Any]:
        """The sweep before it starts (:func:`ablab.tracking.sweep.plan_sweep` asks for it, so the
        parent run is tagged with the study and its factors): ``factors``, ``tags`` for the parent
        and every job's overrides. Raises ConfigError for an unknown study or size, or a swept
        command-line override."""
        # Imported here: Hydra imports every hydra_plugins module at start-up, and ablab.tracking
        # pulls in Lightning and torch (seconds, and Lightning's own log handler) for every command.
        from ablab.errors import ConfigError
        from ablab.study import Tune, load_study
        from ablab.tracking.sweep import swept_keys

        if swept := swept_keys(arguments):
            raise ConfigError(
                f"a study sweeps its own variants and seeds; drop the sweep over {swept}"
            )
        study = load_study(config.study)
        extra = int(config.get("extra_seeds") or 0)
        if extra < 0:
            raise ConfigError(f"hydra.sweeper.extra_seeds={extra}: a number of seeds, >= 0")
        # A study that tunes runs in two stages under one parent: its tuning jobs first, then,
        # once each variant's best grid point is known (``tuned``, JSON), the comparison's jobs
        # appended after them (the tuning jobs keep their numbers and folders).
        tuned = json.loads(config.get("tuned") or "null")
        if study.tune is None:
            planned = study.jobs(config.size, extra)
        elif tuned is None:
            planned = study.tune_jobs(config.size)
        else:
            planned = [*study.tune_jobs(config.size), *study.jobs(config.size, extra, tuned)]
        jobs = [[*job.overrides, *arguments] for job in planned]
        seeds = study.seeds_for(config.size, extra)
        tags = {"study": study.name, "study_size": str(config.size),
                "study_file": str(study.folder / "study.yaml"),
                "study_seeds": ",".join(map(str, seeds))}  # fmt: skip
        if arguments:  # what the command changed in every job: the report's scale says so
            tags["study_overrides"] = " ".join(arguments)
        for variant, point in (tuned or {}).items():
            tags[f"tuned.{variant}"] = Tune.label(point)
        # A sequential study (ablab study --until-decided): its design, which the report reads.
        for key, value in (config.get("sequential") or {}).items():
            listed = not isinstance(value, str | int | float)
            tags[f"sequential.{key}"] = ",".join(map(str, value)) if listed else str(value)
        return {"factors": study.factors(), "tags": tags, "jobs": jobs}

    def sweep(self, arguments: list[str]) -> Any:
        batch = self.plan(self.config.hydra.sweeper, arguments)["jobs"]
        self.validate_batch_is_legal(batch)
        return [self.launcher.launch(batch, initial_job_idx=0)]


__all__ = ["StudySweeper"]
