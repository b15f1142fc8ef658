"""Apply the retention periods of metadata.yaml: old block outputs and run logs are deleted.

Mage 0.9.80 does not do this by itself (only `mage clean-cached-variables` / `mage clean-old-logs`
do); this block calls the same two functions.
"""

from typing import Any

if "custom" not in globals():
    from mage_ai.data_preparation.decorators import custom


@custom
def clean_mage_data(*args: Any, **kwargs: Any) -> dict[str, Any]:
    from mage_ai.data_preparation.logging.logger_manager_factory import LoggerManagerFactory
    from mage_ai.data_preparation.repo_manager import get_repo_config
    from mage_ai.data_preparation.variable_manager import clean_variables

    config = get_repo_config()
    clean_variables()
    LoggerManagerFactory.get_logger_manager(repo_config=config).delete_old_logs()
    return {
        "variables_dir": config.variables_dir,
        "variables_retention_period": config.variables_retention_period,
        "logs_retention_period": (config.logging_config or {}).get("retention_period"),
    }
