"""The `data` node: validation before any data is read, sequence lengths, and the task presets."""

import pytest
from omegaconf import OmegaConf

from lra.data import LOADERS, check_data_config, load_splits, sequence_length, task_info
from lra.data.tasks import TASKS, prepare_command
from lra.errors import ConfigError


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_preset_is_valid_and_consistent(task):
    spec = TASKS[task]
    cfg = OmegaConf.create({"root": "data", "source": None, "truncate": False, **spec["data"]})
    check_data_config(cfg)  # a DictConfig, as Hydra passes it
    assert sequence_length(cfg) == spec["model"]["max_seq_len"]
    info = task_info(cfg)
    assert info["vocab_size"] == spec["model"]["vocab_size"]
    assert info["num_classes"] == spec["model"]["num_classes"]


@pytest.mark.parametrize("node, pattern", [
    ({}, r"data\.loader=None: no loader named; fix: set data.loader to one of: image, image-digits, listops"),
    ({"loader": "listop"}, r"data\.loader='listop': unknown loader; fix: did you mean 'listops'\?"),
    ({"loader": "text", "max_lenght": 10}, r"data\.max_lenght=10: unknown key for loader 'text'; fix: did you mean "
                                           r"'max_length'\?.*known keys: dev_fraction, dev_split, in_memory, loader"),
    ({"loader": "text", "max_length": "4000"}, r"data\.max_length='4000': must be int, not str"),
    ({"loader": "text", "max_length": True}, r"data\.max_length=True: must be int, not bool"),
    ({"loader": "text", "truncate": 1}, r"data\.truncate=1: must be bool, not int"),
    ({"loader": "text", "in_memory": "yes"}, r"data\.in_memory='yes': must be bool, not str"),
    ({"loader": "text", "root": None}, r"data\.root=None: must be a str, not null"),
    ({"loader": "text", "source": 3}, r"data\.source=3: must be str or null, not int"),
    ({"loader": "text", "max_length": 0}, r"data\.max_length=0: must be >= 1"),
    ({"loader": "text", "dev_split": "val"}, r"data\.dev_split='val': must be 'test' or 'train'"),
    ({"loader": "text", "dev_fraction": 1.5}, r"data\.dev_fraction=1\.5: must be in \(0, 1\)"),
    ({"loader": "pathfinder", "difficulty": "medium"}, r"data\.difficulty='medium': must be one of easy, "
                                                       r"intermediate, hard"),
    ({"loader": "pathfinder", "resolution": 48}, r"data\.resolution=48: must be one of 32, 64, 128, 256"),
    ({"loader": "listops-generated", "max_depth": 0}, r"data\.max_depth=0: must be in 1\.\.20"),
    ({"loader": "image", "max_length": 10}, r"data\.max_length=10: unknown key for loader 'image'"),
    ("text", r"data='text': must be a mapping"),
])
def test_bad_data_nodes_name_the_key(node, pattern):
    with pytest.raises(ConfigError, match=pattern):
        check_data_config(node)


def test_float_params_accept_ints_and_sequence_lengths():
    check_data_config({"loader": "text", "dev_fraction": 0.5})
    check_data_config({"loader": "pathfinder-generated", "continuity": 1, "marker_radius": 2})
    assert sequence_length({"loader": "text"}) == 4000  # defaults: the LRA values
    assert sequence_length({"loader": "listops"}) == 2000
    assert sequence_length({"loader": "image"}) == 1024
    assert sequence_length({"loader": "image-digits"}) == 64
    assert sequence_length({"loader": "pathfinder", "resolution": 64}) == 4096
    assert sequence_length({"loader": "pathfinder-generated", "resolution": 16}) == 256
    assert sequence_length({"loader": "retrieval", "max_length": 512}) == 512


@pytest.mark.parametrize("sizes, pattern", [
    ({"train": 0, "dev": 1, "test": 1}, r"dataset\.train=0: must be an integer >= 1"),
    ({"train": 5, "dev": 1}, r"dataset\.test=None: missing"),
    ({"train": 5, "dev": 1.5, "test": 1}, r"dataset\.dev=1\.5: must be an integer >= 1"),
])
def test_bad_sizes(tmp_path, sizes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_splits({**TASKS["listops-small"]["data"], "root": str(tmp_path)}, sizes)


def test_prepare_command_names_the_closest_task():
    from lra.data.params import parse

    def command(node, root="data"):
        loader, common, params = parse(node, LOADERS)
        return prepare_command(loader.name, params, root)

    assert command({"loader": "text", "max_length": 4000}) == "python -m lra.data prepare text --source PATH"
    assert command({"loader": "text", "max_length": 512, "dev_split": "train"}) == \
        "python -m lra.data prepare text-small --source PATH"
    assert command({"loader": "text", "max_length": 1000}, root="/d") == \
        "python -m lra.data prepare text --source PATH --root /d --set max_length=1000"
    assert command({"loader": "pathfinder", "difficulty": "easy"}) == \
        "python -m lra.data prepare pathfinder32 --source PATH --set difficulty=easy"
    assert command({"loader": "image"}) == "python -m lra.data prepare image --source PATH"
    assert command({"loader": "listops"}) == "python -m lra.data prepare listops-release --source PATH"
