"""The dataset folder for single-view learning: many objects rendered alike, split by object.

A collection of objects (procedural shapes from `zerolevel.learn.shapes`, or mesh files) becomes
the folder of DESIGN.md — every object rendered from the same ring of cameras (RGBA images and
world-space normal maps), with 32^3 occupancy voxels and the normalised mesh kept for evaluation,
split into train / val / test by object — and training code reads it back as memory-mapped arrays.
One job per module:

- `settings`: how every object is rendered and voxelised (`DatasetSettings`, `LIGHTINGS`, `VOXEL_BOUNDS`).
- `sources`: which objects go in (`ObjectSource`, `generated_sources`, `mesh_sources`).
- `splits`: which split each object goes to (`split_objects`, `split_counts`, `check_fractions`).
- `views`: the images, normal maps and voxels of one object (`object_lighting`, `render_object`,
  `render_rgba`).
- `folder`: the folder's layout and version, and reading one split (`load_split`, `DatasetSplit`,
  `decode_normals`).
- `write`: building the folder, resumably, in worker processes (`write_dataset`).
- `heads`: the head dataset, another folder format (`write_head_dataset`, `load_head_split`): photographs
  of generated heads from random near-frontal cameras, with albedo, normals, depth and 3D sample sets.

    sources = generated_sources(["chair", "table"], count=100, seed=0)
    write_dataset("chairs_tables", sources)                 # resumable; progress bar
    train = load_split("chairs_tables", "train")            # DatasetSplit: images, normals, voxels, cameras
    write_dataset("varied", sources, DatasetSettings(resolution=128, lighting="varied"))

The folder:

    DATASET/
      dataset.json          {"format": "zerolevel-dataset", "version": 2, "views", "resolution",
                             "elevation", "distance", "fov", "voxels", "lighting", "light", "normals",
                             "categories", "splits": {"train": N, "val": N, "test": N}, "seed", "source", ...}
      train/images.npy      (N, V, H, W, 4) uint8 RGBA     (np.save format: np.load(mmap_mode="r"))
      train/normals.npy     (N, V, H, W, 3) int8 world-space normals, round(127 * n), 0 on the background
      train/voxels.npy      (N, n, n, n) bool, n = 32
      train/objects.json    [{"id": "chair_00012", "category": "chair"}, ...]   (array order)
      val/..., test/...
      meshes/<id>.ply       the normalised mesh (evaluation only)
      .parts/<id>.npz       per-object cache (images, normals, voxels, and the key that made them)

Version 1 (before the normal maps) is the same without normals.npy: `load_split` still reads it
(`DatasetSplit.normals` is None) unless asked for normals (`load_split(..., normals=True)`).

Conventions:
- Objects are normalised like ShapeNet: bounding-box centre at the origin, bounding-box diagonal 1
  (inside [-0.5, 0.5]^3), y up, front towards -z; mesh files are taken to be oriented that way.
- Cameras: `Cameras.ring(views, elevation, distance, fov, resolution, resolution)`, by default
  SoftRas's 24 azimuths 15 degrees apart from the front (-z), elevation 30 degrees, distance 2.732,
  field of view 30 degrees, 64x64 (`DatasetSplit.cameras`).
- Image: A = anti-aliased coverage * 255 (`supersample` x `supersample` rays per pixel); RGB =
  albedo * Lambertian shading (clipped to [0, 1]) premultiplied by coverage, i.e. composited on
  black. Smooth normals (creases kept above 60 degrees for mesh files; generated marching-cubes
  meshes have none). The lighting (dataset.json "lighting", its parameters in "light"):
  "headlight" (default, SoftRas's): grey (albedo 1), a directional light from each camera along its
  axis, intensity 0.7, plus ambient 0.3. "varied": per object a colour (each channel uniform in
  [0.35, 1]); per view a directional light from the camera's direction tilted by a uniform [0, 45]
  degrees about a random perpendicular axis, intensity uniform in [0.5, 0.9], ambient uniform in
  [0.15, 0.35]; drawn from the object id, so a rerun renders the same pixels.
- Normal maps: the world-space unit normal of the shading (the same smooth normals), turned to face
  the camera and averaged over a pixel's rays, stored as int8 round(127 * n) (dataset.json "normals";
  `decode_normals`); 0 exactly where A is 0.
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
