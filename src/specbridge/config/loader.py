"""Validate a configuration against the schema, fill defaults, and report errors in one line."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type, or outside its allowed values."""


def _load_schema() -> dict[str, Any]:
    with open(SCHEMA_PATH) as fh:
        return yaml.safe_load(fh)


def _with_defaults(validator_class: type) -> type:
    """Extend a jsonschema validator so that validation also fills schema defaults in place."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def _key_path(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    return path or "(top level)"


def _one_line(error: jsonschema.ValidationError) -> str:
    key = _key_path(error)
    value = error.instance
    if error.validator == "enum":
        allowed = ", ".join(repr(v) for v in error.validator_value)
        return f"config key '{key}' = {value!r} is not allowed; allowed values: {allowed}"
    if error.validator == "additionalProperties":
        extra = sorted(set(value) - set(error.schema.get("properties", {})))
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        where = f"'{key}'" if error.absolute_path else "the top level"
        return f"unknown config key(s) {extra} under {where}; allowed keys: {allowed}"
    if error.validator == "type":
        return f"config key '{key}' = {value!r} must be of type {error.validator_value}"
    if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        bound = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">",
                 "exclusiveMaximum": "<"}[error.validator]
        return f"config key '{key}' = {value!r} must be {bound} {error.validator_value}"
    return f"config key '{key}' = {value!r} is invalid: {error.message}"


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``config`` against the schema and return a deep copy with all defaults filled.

    Raises ConfigError with one line naming the first offending key (the deepest, most specific
    error) and the allowed values, or the first combination of valid settings that contradict
    each other (:func:`_check_combinations`).
    """
    cfg = copy.deepcopy(dict(config))
    validator = _Validator(_load_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), e.path))
    if errors:
        # report the most specific error (deepest path); others are usually consequences
        raise ConfigError(_one_line(errors[-1]))
    _check_combinations(cfg)
    return cfg


def _check_combinations(cfg: Mapping[str, Any]) -> None:
    """ConfigError for settings valid one by one that contradict each other."""
    scale = cfg.get("models", {}).get("specformer", {}).get("flux_scale")
    method = cfg.get("preprocess", {}).get("continuum", {}).get("method")
    if scale is not None and method == "none":
        raise ConfigError(f"config key 'models.specformer.flux_scale' = {scale!r} needs "
                          "continuum-normalised flux (preprocess.continuum.method: envelope); "
                          "set it to null for un-normalised spectra")


def load_config(path: str | Path | None = None,
                overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML config (or start from an empty one), apply overrides, validate, fill defaults.

    ``overrides`` is a nested mapping merged over the file's contents (as ``--config`` does).
    """
    cfg: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            with open(path) as fh:
                cfg = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            msg = f"config file {path} is not valid YAML: {exc}".replace("\n", " ")
            raise ConfigError(msg) from None
        if not isinstance(cfg, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    if overrides:
        cfg = _deep_merge(cfg, overrides)
    return validate_config(cfg)


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 (hex, first 16 characters) of the canonical JSON of a validated config."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
