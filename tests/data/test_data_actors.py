"""Two streams inside two 0.5-CPU actors on the 2-CPU cluster: what 2 Train workers look like."""

from __future__ import annotations

import ray

from microdit.config.data import DataMixConfig


@ray.remote(num_cpus=0.5)
class StreamWorker:
    """Stands in for a Ray Train worker: builds its own MixedStream for (rank, world_size)."""

    def consume(self, config: dict, rank: int, world_size: int, batches: int) -> dict:
        from itertools import islice

        from microdit.data.stream import MixedStream

        with MixedStream(
            DataMixConfig.from_dict(config),
            resolution=32,
            batch_size=6,
            rank=rank,
            world_size=world_size,
            with_ids=True,
        ) as stream:
            out = list(islice(stream, batches))
            return {
                "ids": [i for b in out for i in b["id"]],
                "synthetic": [int(b["is_synthetic"].sum()) for b in out],
                "state": stream.state_dict(),
            }


def test_two_fractional_cpu_workers_stream_in_parallel_without_hanging(tiny_demo):
    config = DataMixConfig(
        real=str(tiny_demo["demo_real"]),
        synthetic=str(tiny_demo["demo_synthetic"]),
        synthetic_fraction=0.5,
        shuffle_buffer=8,
        seed=11,
    ).to_dict()
    workers = [StreamWorker.remote() for _ in range(2)]
    # 4 batches x 6 rows x 0.5 = 12 rows per source per rank: inside each rank's first pass (24 rows)
    results = ray.get([w.consume.remote(config, rank, 2, 4) for rank, w in enumerate(workers)], timeout=180)
    for w in workers:
        ray.kill(w)
    for result in results:
        assert result["synthetic"] == [3, 3, 3, 3]
        assert len(result["ids"]) == len(set(result["ids"])) == 24
        assert result["state"]["rows"] == 24 and result["state"]["sources"]["real"]["pass"] == 0
    assert not set(results[0]["ids"]) & set(results[1]["ids"])  # ranks read disjoint shards in a pass
