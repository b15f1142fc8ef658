"""Score every batch waiting in the inbox (poleng.flow.process_inbox); returns a small summary."""

from typing import Any

if "custom" not in globals():
    from mage_ai.data_preparation.decorators import custom


@custom
def process_inbox(*args: Any, **kwargs: Any) -> dict[str, Any]:
    from poleng import flow, jobs

    settings = jobs.settings_from_runtime(kwargs)
    return jobs.results_summary(flow.process_inbox(settings, progress=False), settings)
