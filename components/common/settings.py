"""Settings that come from the environment, never from pipeline parameters.

Endpoints and credentials differ per cluster and are secrets: Kubernetes hands them to the
pods as environment variables, and a laptop run reads the same variables. pydantic-settings
reads them (first name found wins, empty values count as unset) and validates them, so a bad
value fails with the variable's name instead of deep inside boto3 or MLflow.

They are read afresh on every call (cheap): tests and users may change the environment
between calls.
"""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class _EnvSettings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_ignore_empty=True)


_S = TypeVar("_S", bound=_EnvSettings)


class S3Settings(_EnvSettings):
    """The object store (AWS S3, MinIO, Ceph, moto): endpoint, credentials, retries, transfers."""

    endpoint_url: str | None = Field(
        None,
        validation_alias=_env(
            "COLDSTART_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"
        ),
        description="endpoint of a non-AWS store (MinIO, moto); unset means AWS",
    )
    region: str = Field("us-east-1", validation_alias=_env("AWS_DEFAULT_REGION", "AWS_REGION"))
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto",
        validation_alias=_env("COLDSTART_S3_ADDRESSING_STYLE"),
        description="'path' for MinIO",
    )
    # Unset: boto3's own chain (profiles, IRSA, instance metadata) finds them.
    access_key_id: SecretStr | None = Field(None, validation_alias=_env("AWS_ACCESS_KEY_ID"))
    secret_access_key: SecretStr | None = Field(
        None, validation_alias=_env("AWS_SECRET_ACCESS_KEY")
    )
    session_token: SecretStr | None = Field(None, validation_alias=_env("AWS_SESSION_TOKEN"))
    # Small by default, so that a wrong endpoint fails in seconds, not minutes.
    max_attempts: int = Field(3, ge=1, le=20, validation_alias=_env("COLDSTART_S3_MAX_ATTEMPTS"))
    connect_timeout: float = Field(3.0, gt=0, validation_alias=_env("COLDSTART_S3_CONNECT_TIMEOUT"))
    read_timeout: float = Field(60.0, gt=0, validation_alias=_env("COLDSTART_S3_READ_TIMEOUT"))
    multipart_threshold: int = Field(
        64 * MIB, ge=5 * MIB, validation_alias=_env("COLDSTART_S3_MULTIPART_THRESHOLD")
    )
    multipart_chunksize: int = Field(
        64 * MIB,
        ge=5 * MIB,  # S3's smallest part
        validation_alias=_env("COLDSTART_S3_MULTIPART_CHUNKSIZE"),
    )


def refuse_file_store(uri: str | None) -> str | None:
    """MLflow 3's file store (`file:` URIs, plain paths) takes no new runs: a stage pointed at it
    would only spill its logs and wait for a server that never comes; refuse it when read."""
    if uri is None:
        return None
    scheme = uri.split(":", 1)[0] if ":" in uri else ""
    if scheme == "file" or (not scheme and uri not in ("databricks", "databricks-uc")):
        raise ValueError(
            f"{uri!r} is an MLflow file store, which MLflow 3 no longer writes to; use a "
            "database (sqlite:///path/to/mlflow.db) or a tracking server (http://host:5000)"
        )
    return uri


class TrackingSettings(_EnvSettings):
    """Where MLflow runs go when the config names no server, and the code version they record."""

    tracking_uri: str | None = Field(None, validation_alias=_env("MLFLOW_TRACKING_URI"))
    git_commit: str | None = Field(
        None,
        validation_alias=_env("COLDSTART_GIT_COMMIT"),
        description="set in images (no .git there); else read from the checkout",
    )

    _no_file_store = field_validator("tracking_uri")(refuse_file_store)


def read(kind: type[_S]) -> _S:
    """``kind`` from the environment now; a bad value raises ValueError naming the variable."""
    try:
        return kind()
    except ValidationError as err:
        problems = "; ".join(
            f"{'/'.join(str(p) for p in e['loc'])}={e.get('input')!r}: {e['msg']}"
            for e in err.errors()
        )
        raise ValueError(f"invalid environment variable(s): {problems}") from err
