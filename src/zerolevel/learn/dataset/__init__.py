"""The dataset folder for single-view learning: many objects rendered alike, split by object.

A collection of objects (procedural shapes from `zerolevel.learn.shapes`, or mesh files) becomes
the folder of DESIGN.md — every object rendered from the same ring of cameras, with 32^3 occupancy
voxels and the normalised mesh kept for evaluation, split into train / val / test by object — and
training code reads it back as memory-mapped arrays. One job per module:

- `settings`: how every object is rendered and voxelised (`DatasetSettings`, `LIGHT`, `VOXEL_BOUNDS`).
- `sources`: which objects go in (`ObjectSource`, `generated_sources`, `mesh_sources`).
- `splits`: which split each object goes to (`split_objects`, `split_counts`, `check_fractions`).
- `views`: the images and voxels of one object (`render_object`, `render_rgba`).
- `folder`: the folder's layout and version, and reading one split (`load_split`, `DatasetSplit`).
- `write`: building the folder, resumably, in worker processes (`write_dataset`).

    sources = generated_sources(["chair", "table"], count=100, seed=0)
    write_dataset("chairs_tables", sources)                 # resumable; progress bar
    train = load_split("chairs_tables", "train")            # DatasetSplit: images, voxels, cameras

The folder:

    DATASET/
      dataset.json          {"format": "zerolevel-dataset", "version": 1, "views", "resolution",
                             "elevation", "distance", "fov", "voxels", "light", "categories",
                             "splits": {"train": N, "val": N, "test": N}, "seed", "source", ...}
      train/images.npy      (N, V, H, W, 4) uint8 RGBA     (np.save format: np.load(mmap_mode="r"))
      train/voxels.npy      (N, n, n, n) bool, n = 32
      train/objects.json    [{"id": "chair_00012", "category": "chair"}, ...]   (array order)
      val/..., test/...
      meshes/<id>.ply       the normalised mesh (evaluation only)
      .parts/<id>.npz       per-object cache (images, voxels, and the key that made them)

Conventions:
- Objects are normalised like ShapeNet: bounding-box centre at the origin, bounding-box diagonal 1
  (inside [-0.5, 0.5]^3), y up, front towards -z; mesh files are taken to be oriented that way.
- Cameras: `Cameras.ring(views, elevation, distance, fov, resolution, resolution)`, by default
  SoftRas's 24 azimuths 15 degrees apart from the front (-z), elevation 30 degrees, distance 2.732,
  field of view 30 degrees, 64x64 (`DatasetSplit.cameras`).
- Image: A = anti-aliased coverage * 255 (`supersample` x `supersample` rays per pixel); RGB = grey
  Lambertian shading under a headlight (a directional light from each camera along its axis,
  intensity 0.7) plus ambient 0.3, premultiplied by coverage, i.e. composited on black. Smooth
  normals (creases kept above 60 degrees for mesh files; generated marching-cubes meshes have none).
- Voxels: the published single-view protocol's voxelisation (Kato et al.'s, which SoftRas scores
  with; `zerolevel.geometry.occupancy.solid_voxels`) on an n^3 grid over [-0.5, 0.5]^3, indexed [x, y, z]: the
  cells the surface passes through and the cells they enclose, so thin parts keep their cells.
- Splits are drawn per category, deterministically from the seed (every category is in every split
  once it has at least three objects); within a split, objects keep the order they were given in.

Resumable and atomic: each object is rendered into `.parts/<id>.npz` and `meshes/<id>.ply`, written
atomically; a rerun skips objects whose part holds the same key (the object's source and the render
settings). The split arrays are assembled at the end, and `dataset.json` is written last: a folder
without it is an unfinished dataset, which `load_split` refuses.

This package file imports nothing: reading a split (`folder`) does not load the ray caster that
writing needs (`views`, `write`).
"""
