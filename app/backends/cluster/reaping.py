"""The reaper on a Redis Cluster: a dead node's work finished in the steps of `steps.py`.

The room's LEAVE script on its slot, then `sig:rooms` put right and the event appended,
then the index entry dropped. An entry whose membership is no longer the dead node's
still gets `sig:rooms` put right: the node may have died half-way through a change, and
the index entry is how its unfinished work is found.
"""

from __future__ import annotations

import asyncio

from redis.asyncio.cluster import RedisCluster

from app.backends.cluster import scripts as cluster_scripts
from app.backends.cluster.steps import Steps
from app.backends.rediswire.keys import Keys
from app.backends.rediswire.reaping import Reaper, owned
from app.core import envelope

BATCH = 100  # entries of a dead node finished concurrently


class StepsReaper(Reaper):
    def __init__(self, client: RedisCluster, keys: Keys, events_maxlen: int = 0,
                 grace: float = 0.0) -> None:
        super().__init__(client, keys, events_maxlen, grace)
        self._cluster = client
        self._steps = Steps(client.execute_command, keys, events_maxlen)

    async def load_scripts(self) -> None:
        await cluster_scripts.load_all(self._cluster)

    async def _reap(self, node: str, pairs: list[tuple[str, str]], owners: list[str]) -> int:
        announced = 0
        work = list(zip(pairs, owners, strict=True))
        for start in range(0, len(work), BATCH):
            done = await asyncio.gather(*(
                self._steps.reap(node, room, peer, owner if owned(node, owner) else "",
                                 envelope.leave(node, peer, owner.removeprefix(f"{node}/")))
                for (room, peer), owner in work[start:start + BATCH]))
            announced += sum(done)
        return announced
