"""Mesh and partition rules: one `(data, fsdp, tensor)` mesh and an ordered regex table for every parameter.

The same code runs on 1 CPU, 8 fake CPU devices, a GPU and a multi-host TPU pod:

    mesh = make_mesh(config.mesh)                       # ConfigDict(data=-1, fsdp=1, tensor=1) or (2, 2, 2)
    shardings = param_shardings(cfg, mesh)              # NamedSharding pytree, same structure as init_params
    cfg, params = hf_io.load_params(path, cfg, shardings=shardings)
    batch = host_local_to_global(local_tokens, mesh, batch_spec(mesh, 2))

Rules (EasyLM `match_partition_rules` style) are matched with `re.search` against the parameter's key path joined
by "/" (`layers/wq`, `embed`, `value_head/w`); the first match wins. Because `re.search` also finds the suffix
`layers/wq` inside an optimizer-state path such as `1/0/mu/layers/wq`, the same table shards optimizer states.
An axis that does not divide a dimension is dropped for that dimension only (deterministically, per axis, keeping
the prefix of a multi-axis entry that divides), so odd vocabularies or head counts never fail: they replicate.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from searchr2_jax.models import kv_cache as kvc
from searchr2_jax.models.config import DecoderConfig

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both: FSDP is data parallel for activations


class ShardingError(ValueError):
    """A mesh or partition that cannot be honoured; the message names the field or parameter."""


# ------------------------------------------------------------------------------------------------ mesh


def mesh_shape(sizes: Any, num_devices: int) -> tuple[int, int, int]:
    """`(data, fsdp, tensor)` sizes from a ConfigDict / mapping / 3-sequence; one size of -1 takes the rest."""
    if isinstance(sizes, Mapping) or hasattr(sizes, "keys"):
        missing = [a for a in AXES if a not in sizes]
        if missing:
            raise ShardingError(f"mesh config lacks field(s) {missing}; expected {list(AXES)}")
        values = [sizes[a] for a in AXES]
    else:
        values = list(sizes)
        if len(values) != len(AXES):
            raise ShardingError(f"mesh {tuple(values)}: expected {len(AXES)} sizes for axes {AXES}")
    for axis, v in zip(AXES, values):
        if not isinstance(v, (int, np.integer)) or (v < 1 and v != -1):
            raise ShardingError(f"mesh.{axis}={v!r}: expected a positive int or -1 (the rest of the devices)")
    free = [a for a, v in zip(AXES, values) if v == -1]
    if len(free) > 1:
        raise ShardingError(f"mesh.{free[0]} and mesh.{free[1]} are both -1; at most one axis may take the rest")
    fixed = math.prod(v for v in values if v != -1)
    if (num_devices % fixed) if free else (fixed != num_devices):
        # Name the first axis that cannot fit the devices; if each fits alone, the product is wrong: name the mesh.
        bad = next((a for a, v in zip(AXES, values) if v != -1 and num_devices % v), None)
        field = f"mesh.{bad}" if bad else "mesh"
        raise ShardingError(f"{field}: sizes {dict(zip(AXES, values))} (product of fixed sizes {fixed}) do not "
                            f"{'divide' if free else 'match'} the {num_devices} devices")
    values = [num_devices // fixed if v == -1 else v for v in values]
    return tuple(int(v) for v in values)


def make_mesh(sizes: Any = (-1, 1, 1), devices: Sequence | None = None) -> Mesh:
    """A mesh with Auto axes `data`, `fsdp`, `tensor` over `devices` (default: all global devices)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(sizes, len(devices))
    # jax 0.10's make_mesh defaults to Explicit axes, under which ordinary indexing of results fails.
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


# Memory of one chip, in bytes, for the chip a config declares (`mesh.chip`): what the runtime can hand out, as the
# device reports it (TPU: `memory_stats()["bytes_limit"]`; NVIDIA: nvidia-smi's total). A GPU process preallocates
# only XLA_PYTHON_CLIENT_MEM_FRACTION of it (0.75 by default): raise that to use what the memory suite counts on.
GiB, MiB = 1 << 30, 1 << 20
CHIP_HBM_BYTES = {
    "v4": 32 * GiB,
    "v5e": 16 * GiB,
    "v5p": 95 * GiB,
    "v6e": 32 * GiB,
    "a100": 81_920 * MiB,  # A100 80GB
    "h100": 81_559 * MiB,  # H100 SXM 80GB
    "h200": 143_771 * MiB,
}


def hbm_bytes(chip: str) -> int:
    """The memory of one `chip` (a key of CHIP_HBM_BYTES); ShardingError naming `mesh.chip` otherwise."""
    if chip not in CHIP_HBM_BYTES:
        raise ShardingError(f"mesh.chip={chip!r}: expected one of {sorted(CHIP_HBM_BYTES)}")
    return CHIP_HBM_BYTES[chip]


# ------------------------------------------------------------------------------------------------ rules

# Ordered: first match wins. Leading `None` is the stacked layer axis. Matmul weights are [in, out]: "in" over fsdp
# and "out" over tensor for the first matmul of a pair (wq/wk/wv, w_gate/w_up), reversed for the second (wo, w_down),
# so the pair needs one reduction over tensor (Megatron). The embedding is [V, D]: its transpose is the tied head.
DECODER_RULES: tuple[tuple[str, P], ...] = (
    (r"(^|/)embed$", P("tensor", "fsdp")),
    (r"(^|/)lm_head$", P("fsdp", "tensor")),
    (r"(^|/)layers/(wq|wk|wv|w_gate|w_up)$", P(None, "fsdp", "tensor")),
    (r"(^|/)layers/(wo|w_down)$", P(None, "tensor", "fsdp")),
    (r"(^|/)layers/(bq|bk|bv|b_gate|b_up)$", P(None, "tensor")),  # the output axis of their weights
    (r"(^|/)layers/(attn_norm|mlp_norm|q_norm|k_norm|bo|b_down)$", P(None, None)),
    (r"(^|/)final_norm$", P(None)),
    (r"(^|/)value_head/", P()),
    (r".*", P()),  # catch-all (optimizer counts, anything new): replicated, and logged when it is big
)

_CATCH_ALL = r".*"
_BIG = 1 << 20  # elements; a catch-all hit this large is probably a missing rule


def key_path_str(path) -> str:
    """`(DictKey('layers'), DictKey('wq'))` -> 'layers/wq' (sequence indices and attributes as their names)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _axis_size(mesh: Mesh, entry) -> int:
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(mesh.shape[n] for n in names)


def fit_spec(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
    """Drops mesh axes that do not divide their dimension (a multi-axis entry keeps its longest dividing prefix)."""
    if len(spec) > len(shape):
        raise ShardingError(f"spec {spec} has more entries than the array has dimensions {tuple(shape)}")
    out = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if entry is None:
            out.append(None)
            continue
        names = entry if isinstance(entry, tuple) else (entry,)
        for n in names:
            if n not in mesh.shape:
                raise ShardingError(f"spec {spec} names axis {n!r}, not in mesh axes {tuple(mesh.shape)}")
        kept = list(names)
        while kept and dim % _axis_size(mesh, tuple(kept)):
            kept.pop()
        out.append(None if not kept else kept[0] if len(kept) == 1 and not isinstance(entry, tuple)
                   else tuple(kept))
    while out and out[-1] is None:  # canonical form: P(None, 'x') stays, trailing Nones go
        out.pop()
    return P(*out)


def match_partition_rules(rules: Iterable[tuple[str, P]], tree, mesh: Mesh | None = None):
    """A PartitionSpec pytree for `tree` (arrays or ShapeDtypeStructs). Scalars are replicated before any rule.

    A leaf that no rule matches raises ShardingError naming its key path. With `mesh`, specs are fitted to shapes.
    """
    rules = [(re.compile(pattern), pattern, spec) for pattern, spec in rules]

    def spec_for(path, leaf):
        name = key_path_str(path)
        shape = tuple(getattr(leaf, "shape", ()))
        if len(shape) == 0 or math.prod(shape) == 1:
            return P()
        for regex, pattern, spec in rules:
            if regex.search(name):
                if pattern == _CATCH_ALL and math.prod(shape) >= _BIG:
                    logging.warning("parameter %r %s matched only the catch-all rule: replicated", name, shape)
                if len(spec) > len(shape):
                    raise ShardingError(f"parameter {name!r} {shape}: rule {pattern!r} gives {spec}, which has "
                                        f"more entries than the parameter has dimensions")
                return fit_spec(spec, shape, mesh) if mesh is not None else spec
        raise ShardingError(f"parameter {name!r} {shape} matches no partition rule")

    return jax.tree_util.tree_map_with_path(spec_for, tree)


def abstract_params(cfg: DecoderConfig):
    from searchr2_jax.models.decoder import init_params

    return jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))


def param_specs(cfg: DecoderConfig, mesh: Mesh, rules=DECODER_RULES):
    return match_partition_rules(rules, abstract_params(cfg), mesh)


def param_shardings(cfg: DecoderConfig, mesh: Mesh, rules=DECODER_RULES):
    """NamedSharding pytree with the structure of `decoder.init_params(cfg, ...)`, from its abstract shapes."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(cfg, mesh, rules),
                        is_leaf=lambda x: isinstance(x, P))


def tree_shardings(tree, mesh: Mesh, rules=DECODER_RULES):
    """Shardings for any pytree whose leaf paths end like parameter names (e.g. an optax state of the params)."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), match_partition_rules(rules, tree, mesh),
                        is_leaf=lambda x: isinstance(x, P))


# ------------------------------------------------------------------------------------------------ activations


def batch_spec(mesh: Mesh, shape_or_ndim: int | Sequence[int]) -> P:
    """Batch (axis 0) over `data`+`fsdp`, other axes replicated; with a shape, axes that do not divide are dropped."""
    if isinstance(shape_or_ndim, (int, np.integer)):
        return P(BATCH_AXES, *([None] * (int(shape_or_ndim) - 1)))
    shape = tuple(shape_or_ndim)
    return fit_spec(P(BATCH_AXES), shape, mesh) if shape else P()


def batch_sharding(mesh: Mesh, shape_or_ndim: int | Sequence[int] = 2) -> NamedSharding:
    return NamedSharding(mesh, batch_spec(mesh, shape_or_ndim))


def cache_specs(cfg: DecoderConfig, mesh: Mesh, batch_size: int, capacity: int) -> kvc.KVCache:
    """KVCache of specs: per layer [B, K, ...] (see `kv_cache`) with B over data/fsdp and the kv heads over tensor
    where they divide; the last two axes (time, head_dim, in either order) are not split."""
    shape = (batch_size, cfg.num_kv_heads, capacity, cfg.head_dim)
    kv = (fit_spec(P(BATCH_AXES, "tensor", None, None), shape, mesh),) * cfg.num_layers
    return kvc.KVCache(kv, kv, fit_spec(P(BATCH_AXES), (batch_size,), mesh))


def cache_shardings(cfg: DecoderConfig, mesh: Mesh, batch_size: int, capacity: int) -> kvc.KVCache:
    specs = cache_specs(cfg, mesh, batch_size, capacity)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def init_cache_sharded(cfg: DecoderConfig, mesh: Mesh, batch_size: int, capacity: int, dtype=None) -> kvc.KVCache:
    """An empty cache created directly in its shards (never materialized whole on one device)."""
    out = cache_shardings(cfg, mesh, batch_size, capacity)
    return jax.jit(lambda: kvc.init_cache(cfg, batch_size, capacity, dtype), out_shardings=out)()


# ------------------------------------------------------------------------------------------------ multi-host


def maybe_initialize_distributed(num_processes: int | None = None, process_id: int | None = None,
                                 coordinator_address: str | None = None, auto: bool = False) -> bool:
    """Joins a multi-process run (`jax.distributed.initialize`) before any other JAX call; True if it did.

    One process (`num_processes` None or 1, no coordinator) is a no-op, so launchers call this unconditionally.
    `auto=True` with nothing given lets JAX detect the cluster (TPU pods, SLURM). Calling it twice is harmless.
    """
    if jax.distributed.is_initialized():
        return True
    explicit = coordinator_address is not None or (num_processes is not None and num_processes > 1)
    if not explicit:
        if auto:
            jax.distributed.initialize()
            return True
        return False
    if coordinator_address is None or num_processes is None or process_id is None:
        raise ShardingError(f"multi-process run needs coordinator_address, num_processes and process_id; got "
                            f"coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
                            f"process_id={process_id!r}")
    if not 0 <= process_id < num_processes:
        raise ShardingError(f"process_id={process_id} is outside [0, num_processes={num_processes})")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    return True


def host_local_to_global(batch, mesh: Mesh, spec: P | None = None):
    """Process-local rows -> global arrays (a pytree). Each process passes only its own rows of the batch axis.

    Default spec: batch over data/fsdp. With one process this is a plain sharded `device_put` of the whole batch.
    """

    def one(x):
        x = np.asarray(x)
        s = spec if spec is not None else P(BATCH_AXES)
        return jax.make_array_from_process_local_data(NamedSharding(mesh, s), x)

    return jax.tree.map(one, batch)


def put_global(tree, shardings):
    """`jax.device_put(tree, shardings)` for a tree every process built identically (e.g. the initial state).

    With several processes, device_put refuses arrays committed to a local device: leaves go through the host
    (PRNG keys as their key data). With one process it is a plain device_put.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def one(x, s):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = jax.device_put(np.asarray(jax.random.key_data(x)), NamedSharding(s.mesh, P()))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.device_put(np.asarray(x), s)

    return jax.tree.map(one, tree, shardings)


def process_local_mesh(mesh: Mesh) -> Mesh:
    """The sub-mesh of this process's devices: the `data` rows it owns, each with its whole fsdp x tensor block.

    Per-host work (rollouts) runs on it with the parameters of the global mesh (see `to_local_mesh`). With one
    process (or a mesh of this process's devices only) it is `mesh` itself. Raises ShardingError when a process
    does not own whole, equally many rows of the data axis (fsdp or tensor spanning hosts).
    """
    devices = np.asarray(mesh.devices)
    pid = jax.process_index()
    own = np.vectorize(lambda d: d.process_index == pid, otypes=[bool])(devices)
    if own.all():
        return mesh
    rows = own.all(axis=(1, 2))
    nprocs = len({d.process_index for d in devices.flat})
    if (own.any(axis=(1, 2)) != rows).any() or rows.sum() * nprocs != devices.shape[0]:
        raise ShardingError(f"mesh {dict(mesh.shape)}: process {pid} does not own whole, equal rows of mesh.data "
                            f"(mesh.fsdp x mesh.tensor = {mesh.shape['fsdp'] * mesh.shape['tensor']} must fit in one "
                            f"host's {jax.local_device_count()} devices, the hosts split along mesh.data)")
    return Mesh(devices[rows], mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def to_local_mesh(tree, local: Mesh):
    """Global arrays whose specs do not use `data` -> the same arrays on the process-local sub-mesh `local`.

    Zero-copy: every local device already holds its shard (the sub-mesh keeps the fsdp x tensor layout).
    """

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return x
        if "data" in jax.tree.leaves(tuple(x.sharding.spec)):
            raise ShardingError(f"an array sharded over `data` ({x.sharding.spec}) has no per-process copy")
        s = NamedSharding(local, x.sharding.spec)
        shards = {sh.device: sh.data for sh in x.addressable_shards}
        return jax.make_array_from_single_device_arrays(x.shape, s, [shards[d] for d in local.devices.flat])

    return jax.tree.map(one, tree)


def is_sharded(x: jax.Array) -> bool:
    """True when no single device holds the whole array (a check for tests and logs)."""
    return any(s.data.shape != x.shape for s in x.addressable_shards)


def shard_params(params, shardings):
    """Places an already-built parameter pytree into its shardings (for params made on host or one device)."""
    return jax.tree.map(lambda x, s: jax.device_put(x, s), params, shardings)


def shape_dtype(tree, shardings):
    """ShapeDtypeStructs carrying shardings: abstract targets for orbax restores and AOT lowering."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


__all__ = [
    "AXES", "BATCH_AXES", "CHIP_HBM_BYTES", "DECODER_RULES", "ShardingError", "batch_sharding", "batch_spec",
    "cache_shardings", "cache_specs", "fit_spec", "hbm_bytes", "host_local_to_global", "init_cache_sharded",
    "is_sharded", "make_mesh", "match_partition_rules", "maybe_initialize_distributed", "mesh_shape", "param_shardings",
    "param_specs", "process_local_mesh", "put_global", "shard_params", "shape_dtype", "to_local_mesh", "tree_shardings",
]
