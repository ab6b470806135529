import pytest
import torch

from deepstep.config import RECIPES, TrainConfig, read_config_file, resolve_config
from deepstep.errors import DeepstepError


def test_flags_override_the_config_file_which_overrides_the_recipe(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('recipe = "tutorial"\nbatch-size = 16\nlr = 0.05\n')
    config = resolve_config(read_config_file(path), {"lr": 0.1})
    assert config.model == RECIPES["tutorial"]["model"]  # from the recipe
    assert config.batch_size == 16  # the file beats the recipe's 4
    assert config.lr == 0.1  # the flag beats the file


def test_model_arguments_add_to_the_ones_before_until_the_model_changes(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('model = "airbench"\n[model-args]\nwidth = 8\nwhiten_bias = "norm"\n')
    config = resolve_config(read_config_file(path), {"model_args": {"width": 48, "whiten_bias_epochs": 2}})
    assert config.model_args == {"width": 48, "whiten_bias": "norm", "whiten_bias_epochs": 2}  # the flag beats the file
    # another model does not take the file's model arguments
    assert resolve_config(read_config_file(path), {"model": "resnet-cifar"}).model_args == {}
    config = resolve_config(read_config_file(path), {"model": "resnet-cifar", "model_args": {"width": 2}})
    assert config.model_args == {"width": 2}


def test_yaml_and_toml_files_give_the_same_config(tmp_path):
    (tmp_path / "a.toml").write_text(
        'model = "resnet-cifar"\nepochs = 3\nmean = [0.5, 0.5, 0.5]\nstd = [0.2]\n[model-args]\nwidth = 8\n'
    )
    (tmp_path / "a.yaml").write_text(
        "model: resnet-cifar\nepochs: 3\nmean: [0.5, 0.5, 0.5]\nstd: 0.2\nmodel-args: {width: 8}\n"
    )
    assert resolve_config(read_config_file(tmp_path / "a.toml")) == resolve_config(
        read_config_file(tmp_path / "a.yaml")
    )


def test_an_unknown_key_in_a_config_file_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("batch_sise: 4\n")
    with pytest.raises(DeepstepError, match=r"unknown option 'batch_sise' \(did you mean 'batch-size'"):
        read_config_file(path)


def test_a_wrong_type_in_a_config_file_is_named(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('epochs = "ten"\n')
    with pytest.raises(DeepstepError, match="epochs must be an integer, got 'ten'"):
        read_config_file(path)


def test_a_section_in_a_config_file_is_named_as_one(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('[train]\ndata = "cifar10-sample"\n')
    with pytest.raises(DeepstepError, match="unknown section 'train'; the options go at the top level"):
        read_config_file(path)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"weight_decay": float("nan")}, "--weight-decay must be a finite number, got nan"),
        ({"lr": float("inf")}, "--lr must be a finite number, got inf"),
        ({"test_size": float("nan")}, "--test-size must be a finite number, got nan"),
        ({"mean": [0.5, float("nan"), 0.5], "std": [1.0]}, "--mean must be finite numbers, got nan"),
        ({"clip_grad": float("inf")}, "--clip-grad must be a finite number, got inf"),
    ],
)
def test_nan_and_inf_are_refused_in_every_number(values, message):
    # each passes a range check written as a comparison: nan < 0 and nan >= 1 are both false
    with pytest.raises(DeepstepError, match=message):
        TrainConfig(**values).validate()


def test_nan_from_a_config_file_is_refused(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text("weight-decay = nan\n")  # TOML has nan and inf
    with pytest.raises(DeepstepError, match="--weight-decay must be a finite number"):
        resolve_config(read_config_file(path))


@pytest.mark.parametrize("name", ["num_classes", "input_features"])
def test_the_sizes_the_data_gives_cannot_be_model_arguments(name):
    # num_classes=3 on ten classes trained until the loss met label 8: an IndexError
    with pytest.raises(DeepstepError, match=f"--model-arg {name}: deepstep sizes the model by the data"):
        TrainConfig(model_args={name: 3}).validate()


def test_a_recurrent_flag_given_as_a_model_argument_is_sent_to_its_flag():
    from deepstep.tasks.runs import sequence_model_args

    config = TrainConfig(model="gru", hidden=16)
    assert sequence_model_args(config, 2, 4)["hidden"] == 16
    with pytest.raises(DeepstepError, match="--model-arg hidden: give it as --hidden instead"):
        sequence_model_args(TrainConfig(model="gru", model_args={"hidden": 0}), 2, 4)


def test_integers_are_accepted_where_numbers_are_expected(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text("lr = 1\n")
    assert resolve_config(read_config_file(path)).lr == 1.0


@pytest.mark.parametrize("size", [0, -3])
def test_a_batch_size_that_is_not_positive_is_refused(size):
    with pytest.raises(DeepstepError, match=f"--batch-size must be a positive integer, got {size}"):
        TrainConfig(batch_size=size).validate()


@pytest.mark.parametrize("seed", [-3, 2**32])
def test_a_seed_numpy_cannot_take_is_refused_before_training(seed):
    with pytest.raises(DeepstepError, match=f"--seed must be a whole number from 0 to 2\\*\\*32 - 1, got {seed}"):
        TrainConfig(seed=seed).validate()
    TrainConfig(seed=2**32 - 1).validate()


def test_an_unknown_recipe_suggests_the_known_ones():
    with pytest.raises(DeepstepError, match="did you mean 'tutorial'"):
        resolve_config({}, {"recipe": "tutorail"})


def test_the_config_round_trips_through_its_own_dict(tmp_path):
    import yaml

    config = resolve_config({}, {"model": "resnet-cifar", "mean": [0.5], "std": [0.25], "model_args": {"width": 8}})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert resolve_config(read_config_file(path)) == config


def test_a_value_a_preset_gave_is_credited_to_the_preset_not_to_a_flag():
    from deepstep.config import preset_source
    from deepstep.engine.precision import resolve_precision

    cpu = torch.device("cpu")
    for config, source in [
        (resolve_config(task="forecasting"), "the default for forecasting"),
        (resolve_config(flags={"recipe": "tutorial"}), "the tutorial recipe's"),
        (resolve_config(flags={"precision": "32"}), ""),
    ]:
        assert preset_source(config, "precision") == source
        reason = resolve_precision(config.precision, cpu, preset_source(config, "precision")).reason
        assert reason == "--precision 32" + (f", {source}" if source else "")


def test_an_option_the_task_does_not_read_is_refused_not_ignored():
    from deepstep.tasks import refuse_idle_options

    with pytest.raises(DeepstepError, match="^--augment, --group-file do not apply to forecasting; leave them out$"):
        refuse_idle_options(TrainConfig(task="forecasting", augment=True, group_file="g.csv", horizon=6))
    with pytest.raises(
        DeepstepError, match="^--val-split does not apply to forecasting: its part is set by --val-size$"
    ):
        refuse_idle_options(TrainConfig(task="forecasting", val_split=0.2))
    with pytest.raises(DeepstepError, match="^--hidden does not apply to image-classification; leave it out$"):
        refuse_idle_options(TrainConfig(task="image-classification", hidden=8, augment=True, val_split=0.2))
    with pytest.raises(DeepstepError, match="^--lookback does not apply to sequence-classification"):
        refuse_idle_options(TrainConfig(task="sequence-classification", lookback=5, test_groups=["3"], hidden=8))
    refuse_idle_options(TrainConfig(task="forecasting", lr=0.5, epochs=3, horizon=2))  # optimisation applies to all


def test_every_option_is_either_for_all_tasks_or_listed_with_its_tasks():
    from deepstep.tasks import MODULES, TASK_OPTIONS

    assert set(TASK_OPTIONS) <= set(TrainConfig.__dataclass_fields__)
    assert all(tasks and set(tasks) <= set(MODULES) for tasks in TASK_OPTIONS.values())


def test_a_mean_without_a_std_is_refused_before_any_image_is_decoded():
    with pytest.raises(DeepstepError, match="give both --mean and --std, or neither"):
        TrainConfig(mean=[0.5]).validate()
    TrainConfig(mean=[0.5], std=[0.25]).validate()


def test_a_negative_gradient_clip_is_refused_by_name():
    with pytest.raises(DeepstepError, match=r"--clip-grad must be a gradient norm >= 0 \(0: no clipping\), got -1.0"):
        TrainConfig(clip_grad=-1.0).validate()


@pytest.mark.parametrize(
    "values, message",
    [
        ({"plateau_patience": 2}, r"--plateau-patience sets how --schedule plateau lowers the rate: add --schedule"),
        ({"plateau_factor": 0.5, "schedule": "cosine"}, r"--plateau-factor sets how --schedule plateau lowers"),
        (
            {"plateau_factor": 1.0, "schedule": "plateau"},
            r"--plateau-factor multiplies the rate: it must be in \(0, 1\)",
        ),
        ({"plateau_patience": 0, "schedule": "plateau"}, r"--plateau-patience must be a number of epochs >= 1, got 0"),
    ],
)
def test_plateau_options_are_checked_and_refused_without_the_plateau_schedule(values, message):
    with pytest.raises(DeepstepError, match=message):
        TrainConfig(**values).validate()
