"""The one typed settings object: every path, URI, threshold and mode.

Defaults plus environment variables prefixed ``POLENG_`` (and a ``.env`` file in the working
directory). ``MLFLOW_TRACKING_URI`` is honoured as well, so pointing the client at a tracking
server "just works". No other module reads the environment: they all receive a ``Settings``.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Profile = Literal["quick", "full"]

# Hyperopt trial counts per profile: `quick` for the demo and tests, `full` for real tuning.
PROFILE_TRIALS: dict[str, int] = {"quick": 6, "full": 40}


class Settings(BaseSettings):
    """Everything configurable about poleng. Construct with ``Settings()``; override by environment."""

    model_config = SettingsConfigDict(
        env_prefix="POLENG_",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        protected_namespaces=(),
    )

    # --- where state lives --------------------------------------------------------------
    home: Path = Field(default=Path("data"), description="State directory: every file poleng writes.")
    data: Path | None = Field(
        default=None, description="A real survey table (Parquet/CSV) to use instead of generated data."
    )

    # --- data generation and splits ------------------------------------------------------
    seed: int = Field(default=42, description="Seed for generation, splits and tuning.")
    rows: int = Field(default=90_000, ge=1_000, description="Rows the generator makes.")
    countries: int = Field(default=64, ge=8, le=200, description="Countries the generator makes.")
    later_country_code: int = Field(
        default=500, description="Country codes at or above this arrive later from the field."
    )
    holdout_share: float = Field(default=0.15, gt=0, lt=0.5, description="Frozen initial-study holdout.")
    field_chunks: int = Field(default=3, ge=1, description="Groups of later countries in the field data.")
    field_label_share: float = Field(
        default=0.5, gt=0, lt=1, description="Share of later-country rows that arrive labelled."
    )

    # --- training -------------------------------------------------------------------------
    profile: Profile = Field(default="quick", description="Tuning effort: quick (demo/tests) or full.")
    trials: int | None = Field(default=None, ge=1, description="Override the profile's Hyperopt trials.")
    early_stopping_rounds: int = 30
    max_boost_rounds: int = 600
    validation_share: float = Field(default=0.2, gt=0, lt=0.5)
    n_jobs: int = Field(default=2, ge=1, description="Threads XGBoost uses.")

    # --- MLflow ----------------------------------------------------------------------------
    tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("POLENG_TRACKING_URI", "MLFLOW_TRACKING_URI", "tracking_uri"),
        description="MLflow tracking URI; default sqlite:///<home>/mlflow.db.",
    )
    model_name: str = "political-engagement"
    experiment: str = "poleng-training"
    monitoring_experiment: str = "poleng-monitoring"

    # --- decision and promotion --------------------------------------------------------------
    decision_threshold: float = Field(default=0.5, gt=0, lt=1, description="Score at/above: contact.")
    contact_capacity: int | None = Field(default=None, ge=1, description="Max contacts per batch.")
    promotion_min_auc: float = Field(default=0.60, description="Challenger AUC floor.")
    promotion_min_gain: float = Field(default=0.005, description="Required AUC gain over champion.")
    promotion_brier_tolerance: float = Field(default=0.005, description="Allowed Brier worsening.")

    # --- batch flow ----------------------------------------------------------------------------
    ledger_url: str | None = Field(default=None, description="SQLAlchemy URL; default sqlite ledger.")
    max_bad_row_share: float = Field(default=0.2, ge=0, le=1, description="Above: quarantine batch.")
    claim_timeout_s: int = Field(default=900, description="A claim older than this may be taken over.")
    fault_after: Literal["validate", "drift", "contacts", "complete"] | None = Field(
        default=None, description="Testing only: SIGKILL this process after that step of a batch."
    )
    retry_backoff_s: float = Field(
        default=30.0, ge=0, description="First retry delay after a retryable failure; doubles each attempt."
    )
    retry_backoff_max_s: float = Field(default=900.0, ge=0, description="Longest retry delay.")
    max_attempts: int = Field(default=5, ge=1, description="Retryable failures before a batch is quarantined.")

    # --- drift ---------------------------------------------------------------------------------
    drift_num_threshold: float = Field(default=0.1, description="Normed Wasserstein distance limit.")
    drift_cat_threshold: float = Field(default=0.1, description="Jensen-Shannon distance limit.")
    drift_share: float = Field(default=0.3, description="Share of drifted columns = dataset drift.")
    drift_top_k: int = Field(default=5, ge=0, description="A drifted top-k important feature = drift.")
    drift_score_threshold: float = Field(default=0.1, description="Wasserstein limit on the scores.")
    drift_contact_rate_tolerance: float = Field(default=0.1, description="Allowed contact-rate move.")
    drift_min_rows: int = Field(default=2_000, description="Smaller batches: checked, flagged too small.")
    drift_reference_rows: int = Field(default=20_000, description="Reference sample size.")

    # --- retraining ------------------------------------------------------------------------------
    retrain_min_field_rows: int = Field(default=1_000, description="Labelled rows needed to retrain.")
    field_eval_share: float = Field(
        default=0.2, gt=0, lt=1, description="Share of new field rows kept out of training for evaluation."
    )
    retrain_debounce_n: int = Field(default=1, ge=1, description="Retrain when N of the last M drifted.")
    retrain_debounce_m: int = Field(default=1, ge=1)

    # --- service stack ---------------------------------------------------------------------------
    # Read by the native stack (poleng.stack); docker-compose.yml reads the same names from .env.
    # Each field accepts POLENG_<FIELD> and the .env.example name. No real secret has a default:
    # an unset password or S3 secret is generated once into <home>/stack/secrets.json (mode 0600).
    stack_bind_host: str = Field(
        default="127.0.0.1",
        validation_alias=AliasChoices("POLENG_STACK_BIND_HOST", "BIND_ADDRESS"),
        description="Address the native stack's servers listen on (compose: published-port address).",
    )
    stack_pg_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("POLENG_STACK_PG_URL"),
        description="Existing PostgreSQL server URL (any database); the native stack then starts none.",
    )
    pg_port: int = Field(default=5432, validation_alias=AliasChoices("POLENG_PG_PORT", "POSTGRES_PORT"))
    pg_user: str = Field(default="poleng", validation_alias=AliasChoices("POLENG_PG_USER", "POSTGRES_USER"))
    pg_password: str | None = Field(
        default=None,
        validation_alias=AliasChoices("POLENG_PG_PASSWORD", "POSTGRES_PASSWORD"),
        description="PostgreSQL password; unset: generated into the state dir (native stack only).",
    )
    mlflow_db: str = Field(default="mlflow", validation_alias=AliasChoices("POLENG_MLFLOW_DB", "MLFLOW_DB"))
    ledger_db: str = Field(default="poleng", validation_alias=AliasChoices("POLENG_LEDGER_DB", "LEDGER_DB"))
    s3_port: int = Field(default=8333, validation_alias=AliasChoices("POLENG_S3_PORT", "S3_PORT"))
    s3_bucket: str = Field(
        default="mlflow", validation_alias=AliasChoices("POLENG_S3_BUCKET", "MLFLOW_BUCKET")
    )
    s3_access_key: str = Field(
        default="poleng", validation_alias=AliasChoices("POLENG_S3_ACCESS_KEY", "S3_ACCESS_KEY")
    )
    s3_secret_key: str | None = Field(
        default=None,
        validation_alias=AliasChoices("POLENG_S3_SECRET_KEY", "S3_SECRET_KEY"),
        description="S3 secret key (MLflow server only); unset: generated into the state dir.",
    )
    mlflow_port: int = Field(default=5000, validation_alias=AliasChoices("POLENG_MLFLOW_PORT", "MLFLOW_PORT"))
    mage_port: int = Field(default=6789, validation_alias=AliasChoices("POLENG_MAGE_PORT", "MAGE_PORT"))

    @field_validator("home", "data", mode="after")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return v.expanduser().resolve() if v is not None else None

    # --- derived places (all under home) -------------------------------------------------------
    @property
    def inbox(self) -> Path:
        return self.home / "inbox"

    @property
    def field_studies(self) -> Path:
        return self.home / "field_studies"

    @property
    def field_used(self) -> Path:
        return self.home / "field_studies_used"

    @property
    def contacts(self) -> Path:
        return self.home / "contacts"

    @property
    def quarantine(self) -> Path:
        return self.home / "quarantine"

    @property
    def processed(self) -> Path:
        return self.home / "processed"

    @property
    def reports(self) -> Path:
        return self.home / "reports"

    @property
    def datasets(self) -> Path:
        return self.home / "datasets"

    @property
    def source_dir(self) -> Path:
        """The source table and its deterministic splits (initial set, holdout, later pool)."""
        return self.home / "source"

    @property
    def cache(self) -> Path:
        return self.home / "cache"

    @property
    def mlartifacts(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def mage_data(self) -> Path:
        return self.home / "mage_data"

    @property
    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def resolved_ledger_url(self) -> str:
        return self.ledger_url or f"sqlite:///{self.home / 'ledger.db'}"

    @property
    def is_embedded(self) -> bool:
        """True when MLflow runs on the local SQLite store (no tracking server)."""
        return self.resolved_tracking_uri.startswith("sqlite:")

    @cached_property
    def n_trials(self) -> int:
        return self.trials or PROFILE_TRIALS[self.profile]

    def state_dirs(self) -> list[Path]:
        return [
            self.inbox,
            self.field_studies,
            self.field_used,
            self.contacts,
            self.quarantine,
            self.processed,
            self.reports,
            self.datasets,
            self.source_dir,
            self.cache,
            self.mlartifacts,
        ]

    def ensure_dirs(self) -> None:
        for d in self.state_dirs():
            d.mkdir(parents=True, exist_ok=True)


def get_settings(**overrides: object) -> Settings:
    """Build settings from defaults + environment, with explicit keyword overrides on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
