"""A Ray cluster of several nodes on this machine, on loopback: for tests, benchmarks and a first try.

A head that runs no task and `workers` worker nodes, each a raylet of its own advertising this
machine's measured kind labels (`fleet_kinds.node_resources`).  Everything listens on 127.0.0.1,
the dashboard is off and usage statistics are not sent; the processes are this one's children and
end with the context.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hspi.collector.fleet_kinds import node_resources

LOOPBACK = "127.0.0.1"
# read once when ray is imported: false makes Ray resolve "this node" to 127.0.0.1, not to the
# machine's outward IP (its name says Windows/OSX, where that is the default; it means any system)
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


@contextmanager
def local_cluster(workers: int = 2, cpus_per_worker: int = 2) -> Iterator[str]:
    """Start the cluster; yield its address (``127.0.0.1:PORT``) for `ray.init` or `hspi fleet collect --ray`."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # nothing leaves the machine
    os.environ[LOOPBACK_SWITCH] = "0"
    from ray.cluster_utils import Cluster

    # include_dashboard=False leaves Ray's API server (jobs, no UI) running: on loopback too
    loopback: dict[str, Any] = {"node_ip_address": LOOPBACK, "include_dashboard": False, "dashboard_host": LOOPBACK}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, **loopback})
    try:
        for _ in range(workers):
            cluster.add_node(num_cpus=cpus_per_worker, resources=node_resources(), **loopback)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()
