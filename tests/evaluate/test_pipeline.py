"""``evaluate_model`` in one process, against the same FID built by hand from its parts (no Ray).

A 5-row prepared set with the ``pixels`` VAE (latents are the images) is the reference. Asking for
7 samples cycles its captions (rows 0-4, then 0-1); each sample's noise comes from its index. The
expected FID is assembled independently: the set read directly, images generated with
``generate`` from those caption rows, Inception features of both sides, Fréchet distance of
the moments. Fast enough for the mutation runs (a few seconds).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from eval_testing import spy_inception_devices, write_pixel_set

from microdit.errors import ConfigError

SAMPLES, ROWS = 7, 5


def _model():
    from microdit.model import MicroDiT
    from microdit.model.sizes import model_config

    torch.manual_seed(0)
    model = MicroDiT(model_config("MicroDiT_Nano_4", caption_dim=32, latent_channels=3)).eval()
    with torch.no_grad():  # the zero-initialised output layer would make every sample the same
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model


def _config(reference, **changes):
    from microdit.evaluate.pipeline import EvaluationConfig

    return EvaluationConfig(**{"reference": str(reference), "num_samples": SAMPLES, "steps": 2, "guidance": 2.0,
                               "seed": 3, "batch_size": 3, "bootstrap": 0, **changes})


def test_fid_equals_the_hand_built_one_from_the_sets_own_captions(tmp_path, inception_extractor):
    from test_clip_score import save_tiny_clip

    from microdit.data.reader import read_set
    from microdit.evaluate.clip_score import ClipScorer
    from microdit.evaluate.fid import FeatureStats, fid_from_stats
    from microdit.evaluate.generate import LatentDecoder, generate, to_uint8
    from microdit.evaluate.pipeline import evaluate_model

    reference = write_pixel_set(tmp_path / "set", rows=ROWS)
    grid = tmp_path / "grid.png"
    clip = save_tiny_clip(tmp_path / "clip", with_image_processor=True)
    metrics = evaluate_model(_model(), _config(reference, clip_model=clip), grid_path=grid)

    rows = read_set(reference, ["latents", "text_emb", "caption"], resolution=16)
    index = [0, 1, 2, 3, 4, 0, 1]  # 7 samples over 5 captions, in order, cycled
    text = torch.from_numpy(rows["text_emb"][index].astype(np.float32))
    images = generate(_model(), text, LatentDecoder({"kind": "pixels"}), 16, steps=2, guidance=2.0, seed=3,
                      batch_size=3)
    decoded = to_uint8(torch.from_numpy(rows["latents"].astype(np.float32)))  # (5, 16, 16, 3) uint8

    def features(batch: np.ndarray) -> np.ndarray:  # in the pipeline's batches of 3: the same float32 sums
        return np.concatenate([inception_extractor(batch[i : i + 3]) for i in range(0, len(batch), 3)])

    generated, real = FeatureStats.from_features(features(images)), FeatureStats.from_features(features(decoded))
    expected = fid_from_stats(generated, real)
    assert expected > 1.0
    assert metrics["fid_7"] == pytest.approx(expected, rel=1e-9)
    assert set(metrics) == {"fid_7", "clip_score", "generation_images_per_s", "eval_seconds"}  # bootstrap 0
    captions = [rows["caption"][i] for i in index]
    assert metrics["clip_score"] == pytest.approx(ClipScorer(clip).score(images, captions), rel=1e-6)
    assert metrics["generation_images_per_s"] > 0 and metrics["eval_seconds"] > 0
    assert grid.is_file()
    cache = sorted(p.suffix for p in (reference / "fid_cache").iterdir())
    assert cache == [".json", ".npz"]  # the reference statistics, cached beside the set

    other_seed = evaluate_model(_model(), _config(reference, seed=4))
    assert other_seed["fid_7"] != metrics["fid_7"]  # the seed reaches the noise
    assert sorted(p.suffix for p in (reference / "fid_cache").iterdir()) == cache  # a cache hit: nothing new


def test_evaluate_weights_loads_the_file_it_is_given(tmp_path):
    from microdit.evaluate.pipeline import evaluate_model, evaluate_weights
    from microdit.train.state import WEIGHTS_FILE, save_weights

    reference = write_pixel_set(tmp_path / "set", rows=ROWS)
    model = _model()
    weights = save_weights(tmp_path / WEIGHTS_FILE, model.state_dict(), model.config.to_dict(), {"ema": False})
    grid = tmp_path / "grid.png"
    from_file = evaluate_weights(weights, _config(reference), grid_path=grid)
    assert from_file["fid_7"] == pytest.approx(evaluate_model(model, _config(reference))["fid_7"], rel=1e-9)
    assert grid.is_file()
    with pytest.raises(ValueError):  # a lone live file has no EMA: the choice reaches the loader
        evaluate_weights(weights, _config(reference), which="ema")


def test_resampled_std_and_interval_and_progress_only_when_asked(tmp_path, capsys, caplog):
    from microdit.evaluate.pipeline import evaluate_model

    reference = write_pixel_set(tmp_path / "set", rows=ROWS)
    plain = evaluate_model(_model(), _config(reference, progress=True))  # the CLI's evaluation
    out = capsys.readouterr().out.splitlines()
    for label in ("generate", "inception"):  # not a terminal: a summary line each, with the total
        shown = [line for line in out if line.startswith(f"{label}: ")]
        assert shown and shown[-1].startswith(f"{label}: 7/7 img (100%) · "), out
    with caplog.at_level(logging.INFO, logger="microdit"):
        spread = evaluate_model(_model(), _config(reference, bootstrap=16))
    assert capsys.readouterr().out == ""  # progress off (Train workers, sweeps): nothing printed
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("fid_7: 16 resamples (") for m in messages)
    assert any(m.startswith(f"evaluation: {{'fid_7': {spread['fid_7']!r}, ") for m in messages)
    assert spread["fid_7"] == pytest.approx(plain["fid_7"], rel=1e-9)  # resampling leaves the estimate alone
    assert spread["fid_7_std"] > 0 and spread["fid_7_ci_low"] < spread["fid_7_ci_high"]


def test_resampling_asked_with_under_4_samples_says_why_there_is_no_interval(tmp_path, caplog):
    from microdit.evaluate.pipeline import evaluate_model

    reference = write_pixel_set(tmp_path / "set", rows=ROWS)
    with caplog.at_level(logging.WARNING, logger="microdit"):
        metrics = evaluate_model(_model(), _config(reference, num_samples=3, bootstrap=16))
    assert set(metrics) == {"fid_3", "generation_images_per_s", "eval_seconds"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["fid_3: no std/interval: 3 samples, resampling needs at least 4"]


@pytest.mark.parametrize(("changes", "world", "message"), [
    ({"bootstrap": 1}, 1, "bootstrap: number of FID resamples, 0 (none) or >= 2, got 1"),
    ({"bootstrap": -2}, 1, "bootstrap: number of FID resamples, 0 (none) or >= 2, got -2"),
    ({"num_actors": 2}, 2, "num_actors: a sharded (per-rank) evaluation extracts features on each rank; use 0"),
    # outside a process group each rank would take its share of the reference for the whole and cache it
    ({}, 2, "world=2: a sharded evaluation needs an initialised torch.distributed process group on every rank "
            "(or world=1)"),
])
def test_bad_settings_are_refused_before_any_work(tmp_path, changes, world, message):
    from microdit.evaluate.pipeline import evaluate_model

    with pytest.raises(ConfigError) as info:
        evaluate_model(_model(), _config(tmp_path / "never-read", **changes), world=world)
    assert str(info.value) == message


def test_reference_rows_at_the_asked_resolution_and_decoder_on_the_asked_device(tmp_path, monkeypatch):
    from microdit.evaluate.pipeline import prepare_reference

    featurised_on = spy_inception_devices(monkeypatch)
    reference = write_pixel_set(tmp_path / "set", rows=ROWS, sizes=(16, 8))
    first_rows, first_decoder, first = prepare_reference(_config(reference))  # the set's first resolution, on CPU
    assert first_rows["latents"].shape == (ROWS, 3, 16, 16)
    assert first_decoder.device == torch.device("cpu")
    assert sorted(first_rows) == ["caption", "latents", "text_emb"]
    assert first_rows["caption"] == [f"caption {i}" for i in range(ROWS)]
    assert set(featurised_on) == {torch.device("cpu")}  # the default device, for callers that pass none

    featurised_on.clear()
    rows, decoder, second = prepare_reference(_config(reference, resolution=8), device=torch.device("cpu", 0))
    assert rows["latents"].shape == (ROWS, 3, 8, 8)
    assert decoder.device == torch.device("cpu", 0)
    assert featurised_on == [torch.device("cpu", 0)] * 2  # the reference Inception pass (batches 3 + 2) too
    assert not second.from_cache and second.key != first.key  # statistics of the 8 px images, cached apart
    assert not np.allclose(second.stats.mean, first.stats.mean)


def test_reference_pass_and_clip_scorer_run_on_the_device_given(tmp_path, monkeypatch):
    """``torch.device("cpu", 0)`` computes on the CPU but differs from the default ``cpu``: what the
    extractor and scorer hold shows whether the rank's device reached them (a GPU in a Train run)."""
    import inspect

    from test_clip_score import save_tiny_clip

    from microdit.evaluate.clip_score import ClipScorer
    from microdit.evaluate.pipeline import evaluate_model

    featurised_on = spy_inception_devices(monkeypatch)
    scorer_devices: list[torch.device] = []
    real_init = ClipScorer.__init__

    def spy_init(self, *args, **kwargs):
        arguments = inspect.signature(real_init).bind(self, *args, **kwargs)
        arguments.apply_defaults()
        scorer_devices.append(torch.device(arguments.arguments["device"]))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(ClipScorer, "__init__", spy_init)
    reference = write_pixel_set(tmp_path / "set", rows=ROWS)
    clip = save_tiny_clip(tmp_path / "clip", with_image_processor=False)
    device = torch.device("cpu", 0)
    metrics = evaluate_model(_model(), _config(reference, num_samples=2, clip_model=clip), device=device)
    assert "clip_score" in metrics
    assert featurised_on == [device] * 3  # reference (batches 3 + 2), then the 2 samples
    assert scorer_devices == [device]


def test_reference_cache_key_names_the_decode_precision_and_device_type(tmp_path, inception_extractor):
    """A bf16 decode of the reference (the default on a GPU) gives other pixels than an fp32 one, so
    other statistics: cached apart. The same precision on another index of the same device type
    shares the entry; a ``pixels`` set has no decode precision, only the device type."""
    from diffusers import AutoencoderKL

    from microdit.evaluate.generate import LatentDecoder
    from microdit.evaluate.pipeline import prepare_reference, reference_decoder_id
    from microdit.evaluate.reference import decoded_reference_stats

    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=3, norm_num_groups=8,
                  sample_size=32).save_pretrained(tmp_path / "vae")  # 3 x 16² latents -> 32² images
    vae = {"kind": "autoencoder_kl", "path": str(tmp_path / "vae")}
    reference = write_pixel_set(tmp_path / "set", rows=ROWS, vae=vae)
    rows, fp32, built = prepare_reference(_config(reference))  # on CPU: fp32 ("auto")
    assert fp32.precision == "fp32" and not built.from_cache
    again = prepare_reference(_config(reference), device=torch.device("cpu", 0))[2]
    assert again.from_cache and again.key == built.key  # same precision, same device type

    bf16 = LatentDecoder(vae, "cpu", precision="bf16")
    assert bf16.precision == "bf16"
    assert reference_decoder_id(vae, bf16) != reference_decoder_id(vae, fp32)
    assert reference_decoder_id(vae, fp32) == reference_decoder_id(dict(reversed(vae.items())), LatentDecoder(vae))

    def stats(decoder: LatentDecoder):
        return decoded_reference_stats(rows["latents"], lambda c: decoder(torch.from_numpy(c.astype(np.float32))),
                                       reference_decoder_id(vae, decoder), reference / "fid_cache",
                                       batch_size=3, extractor=inception_extractor)

    hit = stats(fp32)
    assert hit.from_cache and hit.key == built.key  # prepare_reference keyed its statistics by this id
    in_bf16 = stats(bf16)
    assert not in_bf16.from_cache and in_bf16.key != built.key
    assert not np.allclose(in_bf16.stats.mean, built.stats.mean)  # the offset a shared entry would cause

    pixels = {"kind": "pixels", "name": "pixels"}
    on_cpu = reference_decoder_id(pixels, LatentDecoder(pixels, "cpu"))
    assert LatentDecoder(pixels).precision is None
    assert reference_decoder_id(pixels, LatentDecoder(pixels, torch.device("cpu", 1))) == on_cpu
    assert reference_decoder_id(pixels, LatentDecoder(pixels, "meta")) != on_cpu  # another device type


def test_reference_cache_key_is_the_latents_and_the_vae_entry_in_any_key_order(tmp_path):
    """Three sets with the same latents: the VAE entry with its keys reordered reads the cached
    statistics; another VAE (a different decoder) must not."""
    import shutil

    from microdit.evaluate.pipeline import prepare_reference

    vaes = {"built": {"kind": "pixels", "name": "pixels"}, "reordered": {"name": "pixels", "kind": "pixels"},
            "other": {"kind": "pixels", "name": "other"}}
    sets = {label: write_pixel_set(tmp_path / label, rows=ROWS, vae=vae) for label, vae in vaes.items()}
    built = prepare_reference(_config(sets["built"]))[2]
    assert not built.from_cache
    for label in ("reordered", "other"):
        shutil.copytree(sets["built"] / "fid_cache", sets[label] / "fid_cache")
    reordered = prepare_reference(_config(sets["reordered"]))[2]
    assert reordered.from_cache and reordered.key == built.key
    other = prepare_reference(_config(sets["other"]))[2]
    assert not other.from_cache and other.key != built.key


def test_actors_are_allowed_in_a_single_process_evaluation(tmp_path):
    """``num_actors`` is refused only with ``world`` > 1: alone, the next thing to fail is the missing set."""
    from microdit.evaluate.pipeline import evaluate_model

    with pytest.raises(ConfigError) as info:
        evaluate_model(_model(), _config(tmp_path / "never-read", num_actors=2), device="cpu")
    assert str(info.value) == (f"no prepared set at {tmp_path / 'never-read'}: manifest.json is missing; "
                               "run `microdit prepare`")
