"""The devices a run asks Ray for are the devices its price and MFU describe (issue 12)."""

from __future__ import annotations

import ray.train

from microdit.config.recipe import load_recipe
from microdit.train.trainer import scaling_kwargs


def test_accelerator_type_reaches_the_scaling_config():
    paper = load_recipe("paper")
    config = ray.train.ScalingConfig(**scaling_kwargs(paper.resources))
    assert config.accelerator_type == "H100" and config.num_workers == 8 and config.use_gpu
    assert config.resources_per_worker == {"CPU": 8, "GPU": 1.0}

    l4 = load_recipe("paper", ["resources.accelerator=L4"])
    assert ray.train.ScalingConfig(**scaling_kwargs(l4.resources)).accelerator_type == "L4"
    anywhere = load_recipe("paper", ["resources.request_accelerator_type=false"])
    assert ray.train.ScalingConfig(**scaling_kwargs(anywhere.resources)).accelerator_type is None

    demo = ray.train.ScalingConfig(**scaling_kwargs(load_recipe("demo").resources))
    assert demo.accelerator_type is None and not demo.use_gpu and demo.resources_per_worker == {"CPU": 0.5}
