"""Configuration: typed dataclasses filled from YAML files and ``key=value`` overrides.

Precedence, lowest to highest: dataclass defaults < preset < YAML file < command-line
overrides. Each recipe (experts, distill, infer) defines its own dataclass beside its code;
:mod:`.sections` knows how to fill any of them (a key the dataclass does not declare is an
error that suggests the closest declared key; nested sections whose keys files spell flat go
through one alias table), and :mod:`.files` finds and reads the config files (shipped names,
method fragments with ``extends:``, folders added by methods from outside the package).

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     lr: float = 0.01
    ...     steps: int = 10
    >>> config_from_dict(C, {"lr": "0.1", "steps": 3})
    C(lr=0.1, steps=3)
"""

from datadistill.config.files import (
    CONFIG_PACKAGE,
    DEFAULT_CONFIG,
    DEFAULT_RECIPE,
    EXTENDS_KEY,
    METHODS_DIR,
    RECIPE_KEY,
    RawConfig,
    add_config_root,
    config_roots,
    expect_recipe,
    extended_values,
    extends_chain,
    fragment_chain,
    list_configs,
    load_yaml,
    method_values,
    packaged_values,
    read_config,
    remove_config_root,
    resolve_config_path,
    resolved_config_text,
)
from datadistill.config.sections import (
    FLAT,
    DataConfig,
    RunContext,
    check_choice,
    check_saved_config,
    closest_key,
    config_asdict,
    config_from_dict,
    config_of,
    config_to_dict,
    fields_of,
    flat_fields,
    flat_section,
    flat_sections,
    key_aliases,
    merge,
    nest_keys,
    parse_overrides,
)

__all__ = [
    "CONFIG_PACKAGE", "DEFAULT_CONFIG", "DEFAULT_RECIPE", "EXTENDS_KEY", "FLAT", "METHODS_DIR",
    "RECIPE_KEY", "DataConfig", "RawConfig", "RunContext", "add_config_root", "check_choice",
    "check_saved_config", "closest_key", "config_asdict", "config_from_dict", "config_of",
    "config_roots", "config_to_dict", "expect_recipe", "extended_values", "extends_chain",
    "fields_of",
    "flat_fields", "flat_section", "flat_sections", "fragment_chain", "key_aliases",
    "list_configs", "load_yaml", "merge", "method_values", "nest_keys", "packaged_values",
    "parse_overrides", "read_config", "remove_config_root", "resolve_config_path",
    "resolved_config_text",
]
