"""`ray start` for a node that joins a loopback-only head (pipelines.cluster.start_worker_node), run as
`python -m pipelines.ray_local_node start --address=127.0.0.1:<port> ...` with Ray's local-only switch in the
environment (`cluster.LOCAL_ONLY`).

The switch keeps the head's loopback address and gives the node a loopback one, so every port of the node stays on
loopback; but `ray start` also reads it to refuse joining any node ("multi-node Ray clusters are not supported on
Windows and OSX"). Here that one check sees the switch off; the addresses and the node's processes see it on.
"""

from __future__ import annotations

import types

from ray._private import ray_constants
from ray.scripts import scripts


def main() -> None:
    scripts.ray_constants = types.SimpleNamespace(**{**vars(ray_constants), "ENABLE_RAY_CLUSTER": True})
    scripts.main()


if __name__ == "__main__":
    main()
