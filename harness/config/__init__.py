"""What a run is asked: the scenario's config and each implementation's settings. Imports nothing of
the project above it.

- ``schema``: the canonical benchmark config (one YAML file per scenario), validated with pydantic
- ``settings``: each implementation as shipped and at its best (``--best``)
"""

__all__ = ["schema", "settings"]
