"""The `data` node: validation before any data is read, sequence lengths, and the task presets (conf/task)."""

import time

import pytest
from omegaconf import OmegaConf

from lra.data import LOADERS, check_data_config, load_splits, sequence_length, task_info
from lra.data.params import check_sizes
from lra.data.tasks import conf_dir, prepare_command, task_names, task_preset, task_presets
from lra.errors import ConfigError


def test_task_names_are_the_conf_task_files():
    assert list(task_names()) == sorted(p.stem for p in (conf_dir() / "task").glob("*.yaml"))
    assert {"listops-small", "text", "pathfinder-small", "image-small"} <= set(task_names())


@pytest.mark.parametrize("task", task_names())
def test_every_conf_task_has_a_valid_data_node_and_sizes(task):
    spec = task_preset(task)
    cfg = OmegaConf.create(spec["data"])
    check_data_config(cfg)  # a DictConfig, as Hydra passes it
    check_sizes(spec["dataset"])
    assert {"root", "source", "truncate", "seed"} <= set(spec["data"])  # conf/config.yaml's defaults are in


@pytest.mark.parametrize("task", task_names())
def test_conf_task_model_fits_its_data(task):
    """model.num_classes is the data's; model.vocab_size covers its ids; model.max_seq_len holds its sequences
    (one more with CLS pooling), unless data.truncate cuts them."""
    spec = task_preset(task)
    data, model = spec["data"], spec["model"]
    info = task_info(data)
    assert model["num_classes"] == info["num_classes"], (task, model, info)
    assert info["vocab_size"] <= model["vocab_size"], (task, model, info)
    if not data["truncate"]:
        needed = info["seq_len"] + (1 if model["pooling_mode"] == "CLS" else 0)
        assert needed <= model["max_seq_len"], (task, model, info)


def test_presets_are_copies_composed_once():
    from lra.data.tasks import _composed

    first = task_preset("text-small")
    first["data"]["max_length"] = 1
    assert task_preset("text-small")["data"]["max_length"] == 512  # inherited from text, overridden
    assert task_preset("listops-small")["data"]["loader"] == "listops-generated"
    assert _composed.cache_info().hits >= 1
    with pytest.raises(ConfigError, match=r"task='nope': no such task"):
        task_preset("nope")


def test_composing_every_task_is_fast_and_works_inside_a_hydra_app():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lra.data.tasks import _composed

    _composed.cache_clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):  # as under launch.py
        outer = GlobalHydra.instance().hydra
        started = time.perf_counter()
        presets = task_presets()
        seconds = time.perf_counter() - started
        assert GlobalHydra.instance().hydra is outer
        assert compose(config_name="config", overrides=["task=text"]).data.loader == "text"
    assert set(presets) == set(task_names())
    assert seconds < 10, seconds  # about 0.1 s of CPU a task (1.1-1.4 s for 12 on 2 busy cores): loose on purpose


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
        load_splits({**task_preset("listops-small")["data"], "root": str(tmp_path)}, sizes)


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
    assert command({"loader": "image-digits", "split_seed": 1}) == \
        "python -m lra.data prepare image-small --set split_seed=1"
    assert command({"loader": "listops-generated", "max_depth": 6, "min_length": 100, "max_length": 512}) == \
        "python -m lra.data generate listops-medium"
    # no conf task reads the ListOps release: the task with no keys the release loader rejects, loader switched
    assert command({"loader": "listops"}) == "python -m lra.data prepare listops-release --source PATH"
