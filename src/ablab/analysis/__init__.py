"""Studies and their reports: the study file, MLflow runs -> statistics -> verdicts, and the
Markdown / HTML report."""
