"""The data configs (``config/data.py``) without Ray: documented defaults, every rule's full error
message (section.field=value: what is allowed), immutability and the exact synthetic fraction."""

from __future__ import annotations

from fractions import Fraction

import pytest
from pydantic import ValidationError

from microdit.config.data import DataMixConfig, PrepareConfig, SourceConfig, TextEncoderConfig, VaeConfig
from microdit.errors import ConfigError

FOLDER = {"kind": "folder", "path": "images/"}


def test_documented_defaults():
    prepare = PrepareConfig.from_dict({"source": FOLDER, "out": "my_set"})
    assert prepare.resolutions == (256,) and prepare.rows_per_shard == 512 and prepare.encode_batch_size == 64
    assert (prepare.num_encoders, prepare.gpus_per_encoder, prepare.cpus_per_encoder) == (1, 0.0, 1.0)
    assert prepare.min_side is None and prepare.seed == 0
    assert prepare.vae == VaeConfig(name="pixels", scaling_factor=None, shift_factor=None, subfolder=None)
    assert prepare.text_encoder == TextEncoderConfig(name="minilm", max_length=77, kind="auto")  # official L = 77
    source = prepare.source
    assert (source.tag, source.dataset, source.index, source.id_column) == ("real", "", None, None)
    assert (source.image_column, source.caption_column) == ("image", "caption")
    assert (source.demo_start, source.demo_count, source.demo_seed) == (0, 0, 0)
    mix = DataMixConfig()
    assert (mix.real, mix.synthetic, mix.synthetic_fraction) == ("demo_real", "demo_synthetic", 0.0)
    assert (mix.shuffle_buffer, mix.seed, mix.read_cpus, mix.prefetch_windows) == (4096, 0, 0.25, 2)


def test_min_side_defaults_to_the_smallest_resolution():
    """A multi-resolution set keeps every image that covers its smallest latent column."""
    assert PrepareConfig.from_dict({"source": FOLDER, "out": "s", "resolutions": [512, 256]}).effective_min_side == 256
    assert PrepareConfig.from_dict({"source": FOLDER, "out": "s", "resolutions": [512, 256],
                                    "min_side": 300}).effective_min_side == 300
    demo = SourceConfig.from_dict({"kind": "demo_synthetic", "demo_count": 1})  # demo sources need no path
    assert demo.path == "" and demo.demo_count == 1


@pytest.mark.parametrize(("build", "message"), [
    (lambda: SourceConfig.from_dict({"kind": "demo_real"}), "source.demo_count=0: must be > 0 for demo sources"),
    (lambda: SourceConfig.from_dict({"kind": "parquet"}),
     "source.path='': is required for folder, webdataset and parquet sources"),
    (lambda: PrepareConfig.from_dict({"source": FOLDER, "out": "o", "resolutions": []}),
     "prepare.resolutions=[]: must list at least one pixel size"),
    (lambda: PrepareConfig.from_dict({"source": FOLDER, "out": "o", "resolutions": [256, 256]}),
     "prepare.resolutions=[256, 256]: must not repeat a size"),
    (lambda: PrepareConfig.from_dict({"source": FOLDER, "out": "o", "resolutions": [4]}),
     "prepare.resolutions[0]=4: Input should be greater than or equal to 8"),
    (lambda: PrepareConfig.from_dict({"source": FOLDER, "out": "o", "rows_per_shard": 0}),
     "prepare.rows_per_shard=0: Input should be greater than 0"),
    (lambda: PrepareConfig.from_dict({"source": FOLDER, "out": "o", "min_side": 0}),
     "prepare.min_side=0: Input should be greater than 0"),
    (lambda: PrepareConfig.from_dict({"source": FOLDER, "out": ""}), "prepare.out='': String should have at least 1 character"),
    (lambda: PrepareConfig.from_dict({"source": {"kind": "zip", "path": "x"}, "out": "o"}),
     "prepare.source.kind='zip': Input should be 'folder', 'webdataset', 'parquet', 'demo_real' or 'demo_synthetic'"),
    (lambda: DataMixConfig.from_dict({"real": None}), "data.real=None: is required when synthetic_fraction < 1"),
    (lambda: DataMixConfig.from_dict({"synthetic": None, "synthetic_fraction": 0.5}),
     "data.synthetic=None: is required when synthetic_fraction > 0"),
    (lambda: DataMixConfig.from_dict({"synthetic_fraction": 1.5}),
     "data.synthetic_fraction=1.5: Input should be less than or equal to 1"),
    (lambda: DataMixConfig.from_dict({"read_cpus": -1}), "data.read_cpus=-1: Input should be greater than or equal to 0"),
    (lambda: DataMixConfig.from_dict({"shuffle": 1}), "data.shuffle: unknown key; allowed: prefetch_windows, read_cpus, "
                                                      "real, seed, shuffle_buffer, synthetic, synthetic_fraction"),
    (lambda: TextEncoderConfig.from_dict({"max_length": 4097}),
     "text_encoder.max_length=4097: Input should be less than or equal to 4096"),
    (lambda: TextEncoderConfig.from_dict({"max_length": 0}),
     "text_encoder.max_length=0: Input should be greater than or equal to 1"),
    (lambda: VaeConfig.from_dict({"name": ""}), "vae.name='': String should have at least 1 character"),
    (lambda: VaeConfig.from_dict({"scaling_factor": 0}), "vae.scaling_factor=0: Input should be greater than 0"),
])
def test_each_rule_names_the_field_and_the_fix(build, message):
    with pytest.raises(ConfigError) as info:
        build()
    assert str(info.value) == message


def test_boundaries_that_are_allowed():
    assert DataMixConfig.from_dict({"real": None, "synthetic_fraction": 1.0}).real is None  # all synthetic
    assert DataMixConfig.from_dict({"synthetic": None, "synthetic_fraction": 0.0}).synthetic is None  # all real
    assert TextEncoderConfig.from_dict({"max_length": 4096}).max_length == 4096
    assert PrepareConfig.from_dict({"source": FOLDER, "out": "o", "resolutions": [8]}).resolutions == (8,)


def test_configs_are_frozen():
    mix = DataMixConfig()
    with pytest.raises(ValidationError):
        mix.synthetic_fraction = 0.5


@pytest.mark.parametrize(("value", "exact"), [(0.3, Fraction(3, 10)), (0.405, Fraction(81, 200)),
                                               (1 / 3, Fraction(1, 3)), (0.0, Fraction(0)), (1.0, Fraction(1))])
def test_synthetic_fraction_is_exact(value, exact):
    """floor(n*f) counts must not suffer float rounding: 0.3 is 3/10, not 0.29999..."""
    assert DataMixConfig(synthetic_fraction=value, real="r", synthetic="s").fraction == exact
