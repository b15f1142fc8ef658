"""poleng: political-engagement scoring with drift-monitored batches and a self-healing model."""

from poleng.tracking import quiet_mlflow as _quiet_mlflow

# Before anything imports MLflow: silence its import-time warnings and progress bars (cheap: no import).
_quiet_mlflow()
