"""Small helpers shared by the graph passes (new initializers and nodes: :mod:`slimq.graph.builder`)."""

from slimq.graph.values import const_array, const_of, value_name

__all__ = ["const_array", "const_of", "value_name"]
