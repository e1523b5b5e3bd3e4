"""Single-view learning (Soft Rasterizer-style): data sets of many objects, networks, training.

- `shapes`: procedural shape families (airplane, car, chair, lamp, table, vase), one watertight mesh
  per (category, seed) — the category data set the project makes itself.
- `dataset`: the dataset folder (every object rendered from one ring of cameras, 32^3 voxels, meshes,
  train / val / test): `dataset.write.write_dataset` and `load_split`.
- `template`, `encoders`, `softras_net`, `sampling`, `train`, `predict`, `evaluate`, `gallery`: the
  network, its training (on the shared loop, `optim`), prediction and evaluation.
"""

from .dataset.folder import DatasetSplit, load_split
from .dataset.settings import DatasetSettings
from .dataset.sources import ObjectSource
from .shapes import CATEGORIES, generate, object_specs

__all__ = ["CATEGORIES", "DatasetSettings", "DatasetSplit", "ObjectSource", "generate", "load_split",
           "object_specs"]
