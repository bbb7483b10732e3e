"""The loaders by name: the `data.loader` values a task may name."""

from lra.data import image, listops, pathfinder, retrieval, snakes, text
from lra.data.base import Loader

LOADERS: dict[str, Loader] = {
    loader.name: loader
    for loader in (
        listops.ListOpsRelease(),
        listops.ListOpsGenerated(),
        text.Text(),
        retrieval.Retrieval(),
        image.Cifar10(),
        image.Digits(),
        pathfinder.Pathfinder(),
        snakes.PathfinderGenerated(),
    )
}
