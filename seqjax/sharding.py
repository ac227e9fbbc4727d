"""Device mesh and the one table that maps logical axis names to mesh axes.

Today the mesh has one axis, `data`: batches are split over it and parameters are replicated.
FSDP and model axes extend RULES without touching the step.
"""

from __future__ import annotations

import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

RULES = {"batch": "data"}  # logical axis -> mesh axis; absent names are replicated


def make_mesh(num_devices: int) -> Mesh:
    available = len(jax.devices())
    if num_devices > available:
        raise ValueError(f"train.num_devices={num_devices} but only {available} device(s) are visible")
    # Auto axes: sharding propagates from the jit boundary (current JAX defaults to Explicit).
    return jax.make_mesh((num_devices,), ("data",), axis_types=(AxisType.Auto,),
                         devices=jax.devices()[:num_devices])


def logical(mesh: Mesh, *names: str | None) -> NamedSharding:
    return NamedSharding(mesh, P(*(RULES.get(n) if n else None for n in names)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
