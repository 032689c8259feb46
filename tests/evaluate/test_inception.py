"""The packaged FID Inception: verified loading, one module per process, input forms. ~20 images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from microdit.errors import ConfigError
from microdit.evaluate.inception import (
    FEATURE_DIM,
    INCEPTION_SHA256,
    FIDInception,
    default_inception_path,
    file_sha256,
    load_inception,
    to_inception_input,
)


def test_packaged_file_has_the_standard_sha256():
    assert file_sha256(default_inception_path()) == INCEPTION_SHA256


def test_module_is_loaded_once_per_process():
    assert load_inception() is load_inception()
    assert load_inception(default_inception_path()) is load_inception()


def test_wrong_file_is_refused_with_a_clear_error(tmp_path):
    fake = tmp_path / "inception.pt"
    fake.write_bytes(b"not the FID network")
    with pytest.raises(ConfigError, match="inception_path.*sha256"):
        load_inception(fake)
    with pytest.raises(ConfigError, match="inception_path: no file"):
        load_inception(tmp_path / "missing.pt")


def test_input_conversion_scales_and_resizes():
    uint8 = np.array([0, 255], dtype=np.uint8).reshape(1, 1, 2, 1).repeat(3, axis=3)  # (1, 1, 2, 3) NHWC
    x = to_inception_input(uint8)
    assert x.shape == (1, 3, 299, 299) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    with pytest.raises(ConfigError, match=r"\[-1, 1\]"):
        to_inception_input(torch.rand(1, 3, 8, 8) * 255)
    with pytest.raises(ConfigError, match="3 RGB channels"):
        to_inception_input(np.zeros((2, 8, 8, 4), np.uint8))


def test_every_input_form_gives_the_same_features(emoji_set, inception_extractor):
    nhwc = emoji_set[0][:2]  # uint8 (2, 64, 64, 3)
    reference = inception_extractor(nhwc)  # (2, 2048) float64
    assert reference.shape == (2, FEATURE_DIM) and reference.dtype == np.float64
    assert (reference >= 0).all() and reference.mean() > 0.05  # pool3 after ReLU, not dead

    nchw = torch.from_numpy(nhwc).permute(0, 3, 1, 2)  # uint8 (2, 3, 64, 64)
    as_float = nchw.float() / 127.5 - 1  # float [-1, 1]
    as_list = list(nhwc)
    for form in (nchw, as_float, as_list):
        np.testing.assert_allclose(inception_extractor(form), reference, rtol=1e-4, atol=1e-5)
    # The nn.Module wrapper (what torchmetrics gets) returns the same float32 features.
    np.testing.assert_allclose(FIDInception()(nchw).double().numpy(), reference, rtol=1e-4, atol=1e-5)


def test_counters_track_extracted_images(emoji_set, inception_extractor):
    calls, images = inception_extractor.num_calls, inception_extractor.num_images
    inception_extractor(emoji_set[0][:1])
    assert inception_extractor.num_calls == calls + 1
    assert inception_extractor.num_images == images + 1
