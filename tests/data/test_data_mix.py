"""The mixed stream: exact fraction, determinism per seed, exact resume, pass wrap-around."""

from __future__ import annotations

import json
from fractions import Fraction
from itertools import islice

import numpy as np
import pytest
import torch

from microdit.config.data import DataMixConfig
from microdit.data.reader import read_set
from microdit.data.stream import MixedStream
from microdit.errors import ConfigError


def _config(demo, f: float, seed: int = 3, **kw) -> DataMixConfig:
    return DataMixConfig(
        real=str(demo["demo_real"]),
        synthetic=str(demo["demo_synthetic"]),
        synthetic_fraction=f,
        shuffle_buffer=16,
        seed=seed,
        **kw,
    )


STREAMING = 0  # in_memory_max_bytes that forces the Ray Data path (the tiny sets fit in memory)


def _run(config, batches: int, batch_size: int = 10, state=None, in_memory_max_bytes=None):
    with MixedStream(
        config,
        resolution=32,
        batch_size=batch_size,
        with_ids=True,
        state=state,
        in_memory_max_bytes=in_memory_max_bytes,
    ) as stream:
        out = list(islice(stream, batches))
        return out, stream.state_dict()


@pytest.mark.parametrize("f", [0.0, 0.3, 1.0])
def test_fraction_is_exact(tiny_demo, f):
    batches, _ = _run(_config(tiny_demo, f), 12, batch_size=7)
    synthetic = np.array([int(b["is_synthetic"].sum()) for b in batches])
    assert np.array_equal(np.cumsum(synthetic), (np.arange(1, 13) * 7 * f + 1e-9).astype(int))  # floor(n f)
    for b in batches:
        flags = [i.startswith("demo_synthetic/") for i in b["id"]]
        assert flags == b["is_synthetic"].tolist()
        assert b["latent"].shape == (7, 3, 32, 32) and b["latent"].dtype == torch.float32
        assert b["text_emb"].shape == (7, 32, 384) and b["text_mask"].dtype == torch.bool
        assert b["text_mask"][:, 0].all()  # every caption has at least [CLS]


def test_rows_match_the_prepared_set(tiny_demo):
    (batch,), _ = _run(_config(tiny_demo, 0.0), 1, batch_size=5)
    data = read_set(tiny_demo["demo_real"])
    for k, row_id in enumerate(batch["id"]):
        i = data["id"].index(row_id)
        assert torch.equal(batch["latent"][k], torch.from_numpy(data["latents"][i].astype(np.float32)))
        assert torch.equal(batch["text_mask"][k], torch.from_numpy(data["text_mask"][i]))


@pytest.mark.parametrize("limit", [None, STREAMING], ids=["in_memory", "ray_data"])
def test_deterministic_per_seed_and_covers_each_pass_exactly_once(tiny_demo, limit):
    first, _ = _run(_config(tiny_demo, 0.5), 15, batch_size=8, in_memory_max_bytes=limit)
    second, _ = _run(_config(tiny_demo, 0.5), 15, batch_size=8, in_memory_max_bytes=limit)
    other, _ = _run(_config(tiny_demo, 0.5, seed=4), 15, batch_size=8, in_memory_max_bytes=limit)
    ids = [i for b in first for i in b["id"]]
    assert ids == [i for b in second for i in b["id"]]
    assert ids != [i for b in other for i in b["id"]]
    real_rows = len(read_set(tiny_demo["demo_real"], columns=["id"])["id"])
    real = [i for i in ids if i.startswith("demo_real/")]  # 60 real rows: all of pass 0, then pass 1 begins
    assert len(real) == 60 and len(set(real[:real_rows])) == real_rows
    repeat = real[real_rows:]
    assert set(repeat) <= set(real[:real_rows]) and repeat != real[: len(repeat)]  # pass 1: a new order


@pytest.mark.parametrize(
    ("resume_after", "head_limit", "tail_limit"),
    [(3, None, None), (7, None, None), (7, STREAMING, STREAMING), (5, STREAMING, None), (9, None, STREAMING)],
)
def test_resume_from_saved_position_has_no_duplicates_or_gaps(
    tiny_demo, resume_after, head_limit, tail_limit
):
    """Exact resume within a mode and across modes (a position means the same row in both)."""
    config = _config(tiny_demo, 0.3)
    full, _ = _run(config, 14, batch_size=9)
    head, state = _run(config, resume_after, batch_size=9, in_memory_max_bytes=head_limit)
    state = json.loads(json.dumps(state))  # what a checkpoint stores
    tail, _ = _run(config, 14 - resume_after, batch_size=9, state=state, in_memory_max_bytes=tail_limit)
    assert [b["id"] for b in head + tail] == [b["id"] for b in full]
    assert torch.equal(torch.cat([b["latent"] for b in head + tail]), torch.cat([b["latent"] for b in full]))
    with pytest.raises(ConfigError, match="seed"):
        MixedStream(_config(tiny_demo, 0.3, seed=9), resolution=32, batch_size=9, state=state)


def test_in_memory_and_ray_data_paths_yield_identical_batches_across_passes(tiny_demo):
    """Small sources are served from memory: same rows, same order, same tensors as Ray Data, over
    several passes of both sources and on both ranks of two."""
    config = _config(tiny_demo, 0.4)
    for rank in (0, 1):
        with (
            MixedStream(config, 32, 8, rank=rank, world_size=2, with_ids=True) as memory,
            MixedStream(
                config, 32, 8, rank=rank, world_size=2, with_ids=True, in_memory_max_bytes=STREAMING
            ) as streamed,
        ):
            assert all(s.in_memory for s in memory.sources.values())
            assert not any(s.in_memory for s in streamed.sources.values())
            for a, b in zip(islice(memory, 12), islice(streamed, 12)):  # 96 rows: ~2.4 real passes per rank
                assert a["id"] == b["id"]
                for key in ("latent", "text_emb", "text_mask", "is_synthetic"):
                    assert torch.equal(a[key], b[key]), key
            assert memory.passes() == streamed.passes() and min(memory.passes().values()) >= 1
            assert memory.state_dict() == streamed.state_dict()


def test_invalid_mix_configs_are_config_errors(tiny_demo):
    with pytest.raises(
        ConfigError, match=r"^data\.synthetic_fraction=1\.5: Input should be less than or equal to 1$"
    ):
        DataMixConfig.from_dict({"synthetic_fraction": 1.5})
    with pytest.raises(ConfigError, match=r"^data\.synthetic=None: is required when synthetic_fraction > 0$"):
        DataMixConfig.from_dict({"real": "r", "synthetic": None, "synthetic_fraction": 0.2})
    with pytest.raises(
        ConfigError, match=r"^data\.shuffle_buffer=0: .*greater than 0; data\.bogus: unknown key"
    ):
        DataMixConfig.from_dict({"shuffle_buffer": 0, "bogus": 1})
    assert DataMixConfig.from_dict({"synthetic_fraction": "1e-1"}).fraction == Fraction(
        1, 10
    )  # YAML 1.1 string
    DataMixConfig(real=None, synthetic="s", synthetic_fraction=1.0)  # one source is enough at f = 1
    with pytest.raises(ConfigError, match="fewer than"):
        MixedStream(_config(tiny_demo, 0.0), resolution=32, batch_size=4, rank=0, world_size=64)
    with pytest.raises(ConfigError, match="no latents at 64 px"):
        MixedStream(_config(tiny_demo, 0.0), resolution=64, batch_size=4)
