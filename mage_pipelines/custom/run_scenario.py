"""Run the scenario named by the runtime variable `scenario` (poleng.scenarios.simulate)."""

from typing import Any

if "custom" not in globals():
    from mage_ai.data_preparation.decorators import custom


@custom
def run_scenario(*args: Any, **kwargs: Any) -> dict[str, Any]:
    from poleng import jobs, scenarios

    settings = jobs.settings_from_runtime(kwargs)
    return jobs.scenario_summary(scenarios.simulate(str(kwargs["scenario"]), settings), settings)
