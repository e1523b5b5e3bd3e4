"""Single-view learning (Soft Rasterizer-style): data sets of many objects, networks, training.

- `shapes`: procedural shape families (airplane, car, chair, lamp, table, vase), one watertight mesh
  per (category, seed) — the category data set the project makes itself.
- `dataset`: the dataset folder (every object rendered from one ring of cameras, 32^3 voxels, meshes,
  train / val / test): `dataset.write.write_dataset` and `load_split`.
- `template`, `encoders`, `softras_net`, `sampling`, `train`, `predict`, `evaluate`, `gallery`: the
  network, its training (on the shared loop, `optim`), prediction and evaluation.
- `tetnet`, `tetnet_train`: Wu et al.'s image -> tet-grid SDF network and its training from normal maps;
  `pix2pix`, `pix2pix_train`, `normals_eval`, `normals_predict`: the pix2pix network that predicts
  those normal maps from images, its training, evaluation and predictions.

Import the submodule you need (`from zerolevel.learn.dataset import load_split`): the package
itself imports nothing, so `import zerolevel.learn.train` loads neither the ray caster nor the shape
builders.
"""
