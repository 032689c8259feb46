"""Recipe loading, validation (every error names its field), dotted overrides, cost prediction."""

from __future__ import annotations

import pytest

from microdit.config.recipe import PRICE_PER_HOUR, load_recipe, load_recipe_dict
from microdit.errors import ConfigError

PAPER_DOLLARS = 1890.0
PAPER_IMAGES_PER_S = 380.0 * 8  # SPEC §4: ~380 images/s per H100 on average, 8 x H100


def test_shipped_recipes_load():
    demo, paper = load_recipe("demo"), load_recipe("paper")
    assert [p.name for p in demo.phases] == ["masked", "unmasked"]
    assert demo.resources.num_workers == 2 and demo.resources.accelerator == "CPU"
    assert len(paper.phases) == 4 and all(p.batch_size == 2048 for p in paper.phases)
    assert [p.steps for p in paper.phases] == [250_000, 30_000, 50_000, 5_000]
    assert paper.resources.hourly_price == PRICE_PER_HOUR["H100"] == 3.79
    # SPEC §4's EMA decays per step at batch 2048, given in the recipe as half-lives in images
    assert paper.phases[2].ema_decay_per_step() == pytest.approx(0.99975, abs=1e-7)
    assert paper.phases[3].ema_decay_per_step() == pytest.approx(0.9975, abs=1e-6)
    # the official per-GPU micro-batches 256 / 64 / 64 / 16 (bf16 LayerNorms): 2048 = micro x 8 workers x accumulation
    assert [p.micro_batch for p in paper.phases] == [256, 64, 64, 16]
    assert [p.accumulation(8) for p in paper.phases] == [1, 4, 4, 16]
    assert all(isinstance(p.accumulation(8), int) for p in paper.phases)  # a count of micro-batches
    assert paper.phases[0].accumulation(0) == 8  # num_workers 0 (the loop in the driver): one process, 2048 / 256
    assert paper.resources.low_precision_norms is True


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"nme": "x"}, "nme: unknown key; allowed: caption_len, data, debug, evaluation, max_dollars, max_images, "
                       "model, name, optimizer, phases, resources, seed, tracking, vae_factor"),
        ({"phases[0].lrr": 0.1}, "phases[0].lrr: unknown key; allowed: batch_size, caption_dropout, data, dollars, "
                                 "ema_half_life_images, ema_start_images, grad_clip, images, lr, lr_floor, lr_schedule, "
                                 "mask_ratio, masking, micro_batch, name, optimizer_state, p_mean, p_std, resolution, "
                                 "steps, warmup_steps"),
        ({"resources.gpus": 1}, "resources.gpus: unknown key; allowed: accelerator, activation_checkpointing, "
                                "attention_kernel, compile, cpus_per_worker, gpus_per_worker, low_precision_norms, "
                                "num_workers, precision, price_per_hour, request_accelerator_type, strategy, "
                                "torch_threads, use_gpu"),
        ({"resources.attention_kernel": "fast"}, "resources.attention_kernel='fast': Input should be 'auto', "
                                                 "'flash', 'efficient', 'cudnn' or 'math'"),
        ({"phases[0].images": 1000}, "phases[0].steps/images/dollars=['steps', 'images']: give exactly one phase length"),
        ({"phases[1].steps": None}, "phases[1].steps/images/dollars=[]: give exactly one phase length"),
        ({"phases[0].steps": 0}, "phases[0].steps=0: Input should be greater than 0"),
        ({"phases[0].steps": 1.5}, "phases[0].steps=1.5: Input should be a valid integer, got a number with a "
                                   "fractional part"),
        ({"phases[0].lr": "abc"}, "phases[0].lr='abc': Input should be a valid number, unable to parse string as a number"),
        ({"phases[0].lr": float("nan")}, "phases[0].lr=nan: Input should be a finite number"),
        ({"seed": "abc"}, "seed='abc': Input should be a valid integer, unable to parse string as an integer"),
        ({"resources.compile": "maybe"}, "resources.compile='maybe': Input should be a valid boolean, unable to "
                                         "interpret input"),
        ({"phases[0].batch_size": 33}, "phases[0].batch_size=33: must be a multiple of micro_batch x num_workers = 16 x 2"),
        ({"phases[1].micro_batch": 5}, "phases[1].batch_size=32: must be a multiple of micro_batch x num_workers = 5 x 2"),
        ({"phases[0].masking": "none"}, "phases[0].mask_ratio=0.5: must be 0 when the masking strategy is 'none' "
                                        "(phases[0].masking / model.masking)"),
        ({"phases[0].masking": "sometimes"}, "phases[0].masking='sometimes': Input should be 'none', 'naive' or 'deferred'"),
        ({"model.mixer_depth": 0}, "model.masking='deferred': 'deferred' masking needs a patch-mixer (mixer_depth > 0); "
                                   "use 'naive' to drop patches without one"),  # Nano_4 defaults to deferred masking
        ({"model.mixer_depth": 0, "model.masking": "naive", "phases[0].masking": "deferred"},
         "phases[0].masking='deferred': 'deferred' needs a patch-mixer (model.mixer_depth > 0); use naive or none"),
        ({"phases[0].mask_ratio": 1.0}, "phases[0].mask_ratio=1.0: Input should be less than 1"),
        ({"phases[0].lr_schedule": "linear"}, "phases[0].lr_schedule='linear': Input should be 'constant' or 'cosine'"),
        ({"phases[0].optimizer_state": "drop"}, "phases[0].optimizer_state='drop': Input should be 'keep' or 'reset'"),
        ({"phases[1].resolution": 30}, "phases[1].resolution=30: must be divisible by vae_factor x patch_size = 4"),
        ({"resources.accelerator": "TPU"}, "resources.accelerator='TPU': known: H100, H200, A100, L4, CPU; or set "
                                           "resources.price_per_hour"),
        ({"resources.use_gpu": True}, "resources.accelerator='CPU': use_gpu=true needs a GPU accelerator name "
                                      "(H100, A100, ...)"),
        ({"resources.strategy": "zero3"}, "resources.strategy='zero3': Input should be 'ddp' or 'fsdp'"),
        ({"resources.num_workers": -1}, "resources.num_workers=-1: Input should be greater than or equal to 0"),
        ({"tracking.log_every_steps": 0}, "tracking.log_every_steps=0: Input should be greater than 0"),
        ({"debug": {"crash": 1}}, "debug=['crash']: allowed keys: fail_at_step, nan_at_step, record_ids_dir, kill_driver_at_step"),
        ({"name": "my run"}, "name='my run': must be letters, digits, - or _ (it names the Ray run and the MLflow run)"),
        ({"model.size": "MicroDiT_Huge_1"}, "model.size='MicroDiT_Huge_1' is not a known size; choose one of "
                                            "MicroDiT_Nano_2, "),
        ({"model.mixer_depth": "two"}, "model.mixer_depth='two': Input should be a valid integer, unable to parse "
                                       "string as an integer"),
        ({"optimizer.betas": [0.9, 1.0]}, "optimizer.betas[1]=1.0: Input should be less than 1"),
        ({"optimizer.weight_decay_on": "norms"}, "optimizer.weight_decay_on='norms': Input should be 'all' or 'matrices'"),
        ({"max_dollars": -1}, "max_dollars=-1: Input should be greater than 0"),
        ({"phases[1].data": {"synthetic_fraction": 1.0, "synthetic": None}},
         "phases[1].data={'real': None, 'synthetic': None, 'synthetic_fraction': 1.0}: "),
    ],
)
def test_malformed_recipe_names_the_field(overrides, expected):
    """The whole message: the dotted path, the bad value and what is allowed (a key name alone would
    match almost any message)."""
    with pytest.raises(ConfigError) as info:
        load_recipe("demo", overrides)
    message = str(info.value)
    assert message == expected or (expected.endswith(", ") or expected.endswith(": ")) and \
        message.startswith(expected), message


def test_yaml_1_1_numbers_and_typed_overrides():
    """YAML 1.1 reads ``1e-3`` as a string; the typed layer parses it as the float it is."""
    recipe = load_recipe("demo", ["phases[0].lr=1e-3", "phases[1].steps=7", "resources.compile=true", "seed=3"])
    assert recipe.phases[0].lr == 0.001 and isinstance(recipe.phases[0].lr, float)
    assert recipe.phases[1].steps == 7 and recipe.resources.compile is True and recipe.seed == 3
    assert load_recipe_dict("demo", ["phases[0].lr=1e-3"])["phases"][0]["lr"] == "1e-3"  # what YAML gives


def test_dry_run_prints_parsed_values_and_rejects_bad_types(capsys):
    from microdit.cli.main import main

    assert main(["train", "demo", "--dry-run", "--set", "phases[0].lr=1e-3"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.001\n" in out
    assert "note: sample grids use 12 Heun steps, guidance 3 (official monitoring: 30 / 5)" in out
    assert main(["train", "demo", "--dry-run", "--set", "seed=abc"]) == 2
    err = capsys.readouterr().err
    assert err == ("microdit train: error: seed='abc': Input should be a valid integer, unable to parse string "
                   "as an integer\n")


def test_bad_override_paths_are_config_errors():
    with pytest.raises(ConfigError, match=r"index \[5\] out of range"):
        load_recipe("demo", ["phases[5].lr=0.1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_recipe("demo", ["phases[0].lr"])
    with pytest.raises(ConfigError, match="bad key path"):
        load_recipe("demo", ["phases[0]]lr=1"])
    with pytest.raises(ConfigError, match="no such file, and not a shipped recipe"):
        load_recipe("no-such-recipe")


def test_dotted_overrides_parse_as_yaml_and_leave_the_file_alone():
    recipe = load_recipe(
        "demo",
        [
            "phases[0].mask_ratio=0.25",
            "phases[1].ema_half_life_images=null",
            "resources.num_workers=4",
            "tracking.mlflow_uri=sqlite:///runs.db",
            "model.mixer_depth=1",
            "data.synthetic_fraction=0.5",
            "debug.fail_at_step=3",
        ],
    )
    assert recipe.phases[0].mask_ratio == 0.25 and isinstance(recipe.phases[0].mask_ratio, float)
    assert recipe.phases[1].ema_half_life_images is None
    assert recipe.resources.num_workers == 4 and recipe.phases[0].accumulation(4) == 1
    assert recipe.tracking.mlflow_uri == "sqlite:///runs.db"
    assert recipe.architecture().mixer_depth == 1
    assert recipe.data.synthetic_fraction == 0.5
    assert recipe.debug == {"fail_at_step": 3}
    assert load_recipe_dict("demo")["phases"][0]["mask_ratio"] == 0.5  # the shipped file is untouched
    via_dict = load_recipe("demo", {"phases[0].mask_ratio": 0.25})
    assert via_dict.phases[0].mask_ratio == 0.25


def test_recipe_round_trips_through_its_dict():
    recipe = load_recipe("paper")
    again = load_recipe(recipe.to_dict())
    assert again.to_dict() == recipe.to_dict()


def test_paper_recipe_prediction_lands_near_the_paper_cost():
    from microdit.train.predict import predict

    recipe = load_recipe("paper")
    rows = predict(recipe, recipe.architecture(), recipe.caption_len, images_per_s=PAPER_IMAGES_PER_S)
    dollars = sum(r.dollars for r in rows)
    device_hours = sum(r.device_hours for r in rows)
    images = 2048 * (250_000 + 30_000 + 50_000 + 5_000)  # 686,080,000
    assert sum(r.images for r in rows) == images
    # at the paper's 380 images/s per H100: images / (8 x 380) s x 8 H100s x $3.79 (SPEC §4: ~499 h, ~$1,890)
    assert device_hours == pytest.approx(images / PAPER_IMAGES_PER_S / 3600 * 8, rel=1e-12)
    assert round(device_hours, 2) == 501.52 and round(dollars, 2) == 1900.76
    assert dollars == pytest.approx(device_hours * 3.79, rel=1e-12)
    assert abs(dollars - PAPER_DOLLARS) / PAPER_DOLLARS < 0.006  # the paper's own rounding of its numbers
    # Masking 75% of the 256 px tokens makes phase 1 the cheapest per image by far.
    assert rows[0].kept_tokens == 64 and rows[1].kept_tokens == 256
    assert rows[0].train_gflops_per_image < rows[1].train_gflops_per_image < rows[3].train_gflops_per_image


def test_prediction_needs_a_throughput_on_cpu():
    from microdit.train.predict import predict

    recipe = load_recipe("demo")
    with pytest.raises(ConfigError, match="images-per-s"):
        predict(recipe, recipe.architecture(), recipe.caption_len, assume_mfu=0.5)
    dollars = sum(r.dollars for r in predict(recipe, recipe.architecture(), 32, images_per_s=32.0))
    # 160 steps x 32 images at 32 images/s = 160 s on 2 CPU workers at $0.05/h each
    assert dollars == pytest.approx(160 * 2 * 0.05 / 3600)


def test_dry_run_cli_prints_the_prediction(capsys):
    from microdit.cli.main import main

    assert main(["train", "paper", "--dry-run", "--images-per-s", str(PAPER_IMAGES_PER_S)]) == 0
    out = capsys.readouterr().out
    assert "p1-256-masked" in out and "8 x H100 at $3.79/h per device" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("phase "))
    assert lines[header].split() == ["phase", "latent", "tokens", "GFLOP/img", "images", "img/s", "wall_hours",
                                     "device_hours", "cost"]
    assert lines[header + 1] == "-" * len(lines[header])
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert total.split() == ["total", "686,080,000", "62.69", "501.52", "$1,900.76"]
    assert out.index("predicted cost") < out.index("parameters:") < out.index("recipe:")  # the answer first
    # the memory table: exactly the state each phase holds (EMA in phases 3-4 only), DDP over 8 H100s
    memory = lines[lines.index("predicted peak GPU memory per worker (microdit.model.memory):") + 1:]
    assert memory[0].split() == ["phase", "micro-batch", "EMA", "peak/worker", "fits", "largest"]
    assert [line.split() for line in memory[2:6]] == [
        ["p1-256-masked", "256", "no", "76.45", "GiB", "yes", "271"],
        ["p2-256-unmasked", "64", "no", "57.07", "GiB", "yes", "108"],
        ["p3-512-masked", "64", "yes", "76.96", "GiB", "yes", "67"],
        ["p4-512-unmasked", "16", "yes", "60.45", "GiB", "yes", "25"]]
    assert memory[6] == "(ddp over 8 workers; an 80 GB H100 holds 79.65 GiB)"
    assert main(["train", "paper", "--dry-run", "--set", "phases[1].micro_batch=128"]) == 0  # twice the official
    p2 = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("p2-") and "GiB" in line)
    assert p2.split()[:3] == ["p2-256-unmasked", "128", "no"] and p2.split()[-2:] == ["NO", "108"]
    assert main(["train", "demo", "--dry-run"]) == 0
    assert "predicted peak GPU memory" not in capsys.readouterr().out  # CPU recipes: no GPU memory table
    assert main(["train", "demo", "--set", "phases[0].batch_size=33"]) == 2
    assert "phases[0].batch_size=33" in capsys.readouterr().err


def test_flatten_for_mlflow_params_and_change_descriptions():
    from microdit.config.overrides import describe_changes, flatten

    tree = {"seed": 0, "phases": [{"lr": 1e-3, "data": {"real": "r"}}, {"lr": 5e-4}],
            "optimizer": {"betas": [0.9, 0.999]}, "debug": {}}
    assert flatten(tree) == {"seed": 0, "phases.0.lr": 1e-3, "phases.0.data.real": "r", "phases.1.lr": 5e-4,
                             "optimizer.betas": [0.9, 0.999]}  # a list of scalars stays one value
    assert flatten({"a": [[1], [2]]}, "x.") == {"x.a.0": [1], "x.a.1": [2]}
    assert describe_changes([("phases[0].lr", 0.001, 0.0005), ("seed", 0, 1), ("name", "a", None)]) == \
        "phases[0].lr: 0.001 -> 0.0005, seed: 0 -> 1, name: 'a' -> None"


def test_prediction_from_an_assumed_mfu_and_for_each_kind_of_phase_length():
    """images/s = MFU x peak x devices / FLOPs per image; a steps or images phase takes images / speed,
    a dollars phase runs dollars / (devices x price) hours and sees that time x speed images."""
    from microdit.config.recipe import PEAK_FLOPS
    from microdit.model.flops import train_flops_per_image
    from microdit.train.predict import predict

    paper = load_recipe("paper")
    model = paper.architecture()
    for phase, row in zip(paper.phases, predict(paper, model, 64, assume_mfu=0.4)):  # 64-token captions
        latent = phase.resolution // 8
        flops = train_flops_per_image(model, latent, phase.mask_ratio, 64)
        assert isinstance(row.latent, int) and isinstance(row.kept_tokens, int)
        speed = 0.4 * PEAK_FLOPS["H100"] * 8 / flops
        assert (row.latent, row.kept_tokens) == (latent, model.kept_tokens(latent, phase.mask_ratio))
        assert row.train_gflops_per_image == pytest.approx(flops / 1e9, rel=1e-12)
        assert row.images_per_s == pytest.approx(speed, rel=1e-12)
        assert row.hours == pytest.approx(phase.steps * 2048 / speed / 3600, rel=1e-12)
        assert row.device_hours == pytest.approx(row.hours * 8, rel=1e-12)
        assert row.dollars == pytest.approx(row.hours * 8 * 3.79, rel=1e-12)

    demo = load_recipe("demo", ["phases[0].steps=null", "phases[0].images=640", "phases[1].steps=null",
                                "phases[1].dollars=0.01"])
    by_images, by_dollars = predict(demo, demo.architecture(), 32, images_per_s=16.0)
    assert (by_images.images, by_images.hours) == (640, pytest.approx(640 / 16 / 3600))
    hours = 0.01 / (2 * 0.05)  # $0.01 on 2 CPU workers at $0.05/h each
    assert by_dollars.hours == pytest.approx(hours) and by_dollars.images == pytest.approx(hours * 3600 * 16)
    assert by_dollars.dollars == pytest.approx(0.01) and by_dollars.device_hours == pytest.approx(2 * hours)


def test_prediction_errors_name_the_missing_input():
    from microdit.train.predict import predict

    paper, demo = load_recipe("paper"), load_recipe("demo")
    with pytest.raises(ConfigError) as info:
        predict(paper, paper.architecture(), 77)
    assert str(info.value) == "give --assume-mfu (e.g. 0.5) or --images-per-s to predict cost"
    with pytest.raises(ConfigError) as info:
        predict(demo, demo.architecture(), 32, assume_mfu=0.5)
    assert str(info.value) == ("resources.accelerator='CPU' has no peak FLOP/s (use_gpu=False); give --images-per-s "
                               "instead of --assume-mfu")


def test_shipped_names_are_the_yaml_files_in_the_package():
    from importlib.resources import files

    from microdit.config.shipped import RECIPES, SWEEPS, shipped_names

    assert shipped_names(RECIPES) == ["ablation", "demo", "paper"]
    on_disk = sorted(p.name[:-5] for p in (files("microdit") / SWEEPS).iterdir() if p.name.endswith(".yaml"))
    assert shipped_names(SWEEPS) == on_disk and "quickstart" in on_disk and len(on_disk) == 8
    assert shipped_names("no_such_folder") == []


def test_recipe_helpers_and_their_messages():
    from microdit.config.overrides import get_path, set_path
    from microdit.config.recipe import PhaseConfig, deviation_from_official

    assert deviation_from_official(30, 5.0) is None
    assert deviation_from_official(30, 3.0) == "30 Heun steps, guidance 3 (official monitoring: 30 / 5)"
    assert deviation_from_official(12, 5.0) == "12 Heun steps, guidance 5 (official monitoring: 30 / 5)"
    phase = PhaseConfig(steps=1, batch_size=64)
    assert [phase.per_worker_micro_batch(w) for w in (0, 1, 2, 8)] == [64, 64, 32, 8]  # no micro_batch: the share
    assert PhaseConfig(steps=1, batch_size=64, micro_batch=16).per_worker_micro_batch(2) == 16

    tree = {"phases": [{"lr": 1.0}, {"lr": 2.0}], "seed": 0}
    set_path(tree, "phases[1].lr", 3.0)
    assert tree["phases"][1]["lr"] == 3.0 and get_path(tree, "phases[1].lr") == 3.0
    for path, message in [("phases[2].lr", "key 'phases[2].lr': index [2] out of range at phases.2 (2)"),
                          ("seed[0]", "key 'seed[0]': index [0] out of range at seed.0 (not a list)"),
                          ("seed.x", "key 'seed.x': seed.x is not a mapping")]:
        with pytest.raises(ConfigError) as info:
            set_path(tree, path, 1)
        assert str(info.value) == message
    with pytest.raises(ConfigError) as info:
        get_path(tree, "phases[0].lrr")
    assert str(info.value) == "key 'phases[0].lrr' does not exist in the recipe"
    with pytest.raises(ConfigError) as info:
        set_path(tree, "phases[0].lrr", 1, create=False)
    assert str(info.value) == "key 'phases[0].lrr': unknown key 'lrr'; known: ['lr']"
    with pytest.raises(ConfigError) as info:
        set_path(tree, "model.size", "x", create=False)
    assert str(info.value) == "key 'model.size': unknown key 'model'; known: ['phases', 'seed']"
    set_path(tree, "model.size", "x")  # create: intermediate mappings are made
    assert tree["model"] == {"size": "x"}
    set_path(tree, "phases[0]", {"lr": 9.0})  # a whole list item
    assert tree["phases"][0] == {"lr": 9.0}

    from microdit.config.overrides import apply_overrides, parse_path

    assert parse_path("phases[0].mask_ratio") == ["phases", 0, "mask_ratio"]
    for bad in ("", "phases..lr", "phases[x]", "a[0"):
        with pytest.raises(ConfigError) as info:
            parse_path(bad)
        assert str(info.value) == f"bad key path {bad!r}: use dots and [index], e.g. phases[0].mask_ratio"
    assert apply_overrides({"name": "a"}, ["name=x=y"]) == {"name": "x=y"}  # the first '=' splits key and value
    assert apply_overrides({"a": {"b": 1}}, ["a.b=2", "a.c=[1, 2]"]) == {"a": {"b": 2, "c": [1, 2]}}

    with pytest.raises(ConfigError) as info:
        load_recipe("demo", {"model": {}})
    assert str(info.value) == "model.size=None: missing; name a registered size, e.g. MicroDiT_Nano_2"


def test_recipe_files_name_themselves_in_errors(tmp_path):
    from microdit.config.shipped import RECIPES, resolve, shipped_names

    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(str(broken))
    assert str(info.value).startswith(f"{broken}: not valid YAML (")
    with pytest.raises(ConfigError) as info:
        resolve("no_such_recipe", RECIPES)
    assert str(info.value) == (f"recipe 'no_such_recipe': no such file, and not a shipped recipe "
                               f"({', '.join(shipped_names(RECIPES))})")
