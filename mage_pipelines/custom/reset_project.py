"""Delete poleng's state (poleng.lifecycle.reset), keeping Mage's own data and the native stack."""

from typing import Any

if "custom" not in globals():
    from mage_ai.data_preparation.decorators import custom


@custom
def reset_project(*args: Any, **kwargs: Any) -> dict[str, Any]:
    from poleng import jobs, lifecycle

    settings = jobs.settings_from_runtime(kwargs)
    return jobs.reset_summary(lifecycle.reset(settings, keep=jobs.kept_on_reset(settings)), settings)
