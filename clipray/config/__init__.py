"""Pipeline configuration: YAML at the edge, typed dataclasses inside."""

from clipray.config.load import ConfigError, load_config, to_dict
from clipray.config.schema import PipelineConfig

__all__ = ["ConfigError", "PipelineConfig", "load_config", "to_dict"]
