"""Machine kinds of a fleet: what a node offers, measured on the node, as Ray resources.

A CPU node joins a cluster advertising its vendor and its top ISA level, read from its own
/proc/cpuinfo (`hspi fleet resources` prints them for `ray start --resources`):
``{"cpu-vendor:amd": 1, "isa:avx512_bf16": 1}``.  A GPU node needs nothing extra: Ray itself
advertises ``accelerator_type:<type>`` for NVIDIA GPUs.  A task asks for a sliver of the kind's
resources, so it can only land on a node of that kind, and never for a whole unit, so the number
of tasks a node runs at once is decided by its CPUs (and GPUs), not by these labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hspi.errors import ConfigError
from hspi.platform import ISA_LEVELS, Platform
from hspi.provenance import cpu_info

VENDOR = "cpu-vendor:"
ISA = "isa:"
ACCELERATOR = "accelerator_type:"
SLIVER = 0.001  # a task's claim on a kind label: pins placement, limits nothing

# the flag that first enables each ISA level, newest first (names as /proc/cpuinfo spells them)
_LEVEL_FLAGS = (("amx", "amx_bf16"), ("avx512_bf16", "avx512_bf16"), ("avx512", "avx512f"), ("avx2", "avx2"))


def isa_level(flags: list[str]) -> str:
    """The newest ISA level of `hspi.platform.ISA_LEVELS` a CPU with these flags has."""
    for level, flag in _LEVEL_FLAGS:
        if flag in flags:
            return level
    return ISA_LEVELS[0]


def node_resources() -> dict[str, float]:
    """This machine's kind labels, measured here."""
    info = cpu_info()
    return {f"{VENDOR}{info['cpu_vendor']}": 1.0, f"{ISA}{isa_level(list(info['cpu_flags']))}": 1.0}


@dataclass(frozen=True)
class MachineKind:
    """One kind of node a configuration can run on; `name` is its dataset directory in the store."""

    name: str
    device: str  # "cpu" | "cuda"
    resources: dict[str, float] = field(default_factory=dict, hash=False, compare=False)

    def task_options(self, platform: Platform) -> dict:
        """Ray task options that place one configuration of `platform` on a node of this kind."""
        options: dict = {"num_cpus": platform.threads, "resources": dict(self.resources)}
        if self.device == "cuda":
            options["num_gpus"] = 1
        return options


def kinds_in_cluster(node_resources_list: list[dict[str, float]]) -> list[MachineKind]:
    """Every machine kind among the alive nodes' resources (CPU kinds need both labels)."""
    kinds: dict[str, MachineKind] = {}
    for resources in node_resources_list:
        vendors = [k[len(VENDOR) :] for k in resources if k.startswith(VENDOR)]
        isas = [k[len(ISA) :] for k in resources if k.startswith(ISA)]
        if len(vendors) == 1 and len(isas) == 1:
            name = f"cpu-{vendors[0]}-{isas[0]}"
            kinds[name] = MachineKind(name, "cpu", {f"{VENDOR}{vendors[0]}": SLIVER, f"{ISA}{isas[0]}": SLIVER})
        for key in resources:
            if key.startswith(ACCELERATOR) and resources.get("GPU", 0) >= 1:
                accelerator = key[len(ACCELERATOR) :]
                kinds[f"gpu-{accelerator}"] = MachineKind(f"gpu-{accelerator}", "cuda", {key: SLIVER})
    return [kinds[name] for name in sorted(kinds)]


def select_kinds(available: list[MachineKind], device: str, wanted: list[str] | None) -> list[MachineKind]:
    """The kinds a grid of `device` platforms runs on: every such kind in the cluster, or the named ones."""
    of_device = [k for k in available if k.device == device]
    if not of_device:
        hint = (
            'start CPU nodes with `ray start --resources "$(hspi fleet resources)"`'
            if device == "cpu"
            else "Ray advertises accelerator_type:<GPU> on nodes with NVIDIA GPUs"
        )
        raise ConfigError(f"no node of the cluster offers a {device} machine kind; {hint}")
    if wanted is None:
        return of_device
    names = {k.name: k for k in of_device}
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ConfigError(
            f"machine kind {unknown[0]!r} is not in the cluster; {device} kinds there: {', '.join(names) or 'none'}"
        )
    return [names[w] for w in wanted]
