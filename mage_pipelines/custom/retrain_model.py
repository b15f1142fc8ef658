"""Train a challenger on the current training set and apply the promotion rule."""

from typing import Any

if "custom" not in globals():
    from mage_ai.data_preparation.decorators import custom


@custom
def retrain_model(*args: Any, **kwargs: Any) -> dict[str, Any]:
    from poleng import jobs, lifecycle

    settings = jobs.settings_from_runtime(kwargs)
    return jobs.outcome_summary(lifecycle.retrain_current(settings, progress=False))
