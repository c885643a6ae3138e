"""Config: the groups, their schemas (registered with Hydra on import, before any composition),
the checks across fields, and the resolvers the config tree uses."""

from experiments.config.resolvers import register_resolvers
from experiments.config.schema import register_schemas

register_schemas()
register_resolvers()
