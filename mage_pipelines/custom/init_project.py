"""First training: prepare the data and promote the first champion (poleng.lifecycle.init_project)."""

from typing import Any

if "custom" not in globals():
    from mage_ai.data_preparation.decorators import custom


@custom
def init_project(*args: Any, **kwargs: Any) -> dict[str, Any]:
    from poleng import jobs, lifecycle

    settings = jobs.settings_from_runtime(kwargs)
    return jobs.outcome_summary(lifecycle.init_project(settings, progress=False))
