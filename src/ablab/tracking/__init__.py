"""MLflow tracking: the logger, run context tags, config as params and artifacts, final status."""

from ablab.tracking.context import run_context_tags
from ablab.tracking.mlflow import flatten_params, mlflow_logger
from ablab.tracking.status import end_lost_run

__all__ = ["end_lost_run", "flatten_params", "mlflow_logger", "run_context_tags"]
