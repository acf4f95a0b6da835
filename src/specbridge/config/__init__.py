"""Loading and validating the configuration; the one place defaults live (the JSON Schema)."""

from specbridge.config.loader import (
    SCHEMA_PATH,
    ConfigError,
    config_hash,
    load_config,
    validate_config,
)

__all__ = ["SCHEMA_PATH", "ConfigError", "config_hash", "load_config", "validate_config"]
