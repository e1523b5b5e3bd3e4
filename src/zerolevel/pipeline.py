"""End-to-end jobs behind the CLI verbs: render a scene from a mesh, and the demo.

Each job is short wiring of library pieces (cameras, ray caster, scene I/O, reconstruction,
extraction, metrics, report); the CLI only parses options and calls these.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import trimesh
from tqdm import tqdm

from . import methods
from .cameras import Cameras
from .errors import InputError
from .geometry.mesh import transform_mesh, unit_sphere_transform
from .render.lights import DirectionalLight, light_arrays
from .render.raycast import MeshRayCaster, render_mesh
from .methods import DEFAULT_FIT
from .scene import Scene


def make_cameras(views: int, resolution: int, layout: str = "sphere", distance: float = 3.0,
                 fov_deg: float = 45.0, elevation_deg: float = 30.0) -> Cameras:
    """The camera layouts `zerolevel render` offers, all looking at the origin."""
    if layout == "sphere":
        return Cameras.sphere(views, distance=distance, fov_deg=fov_deg, width=resolution, height=resolution)
    if layout == "ring":
        return Cameras.ring(views, elevation_deg=elevation_deg, distance=distance, fov_deg=fov_deg,
                            width=resolution, height=resolution)
    raise ValueError(f"unknown camera layout {layout!r}")


def render_scene(mesh: trimesh.Trimesh, cameras_of: Scene | None = None, views: int = 24, resolution: int = 256, layout: str = "sphere",
                 distance: float = 3.0, fov_deg: float = 45.0, elevation_deg: float = 30.0,
                 supersample: int = 2, smooth: bool = True, progress: bool = True,
                 light: Sequence[float] | Sequence[Sequence[float]] | None = None, source: str = "mesh",
                 chunk: int = 8, crease_deg: float | None = 60.0) -> Scene:
    """Normalise `mesh` into the unit sphere and ray-cast a ground-truth scene of it.

    Shaded images are lit by `light` (a direction towards the light along the mesh's axes, the same
    for every view; or several, (L, 3), view i lit by light i mod L: a few known lights seen from
    every side) or, by default, by a headlight per view. Smooth normals keep edges sharper than
    `crease_deg` as creases (`MeshRayCaster`). With `cameras_of`, the mesh is taken to
    be in that scene's units and rendered with its cameras and normalisation; otherwise it is fitted
    into the unit sphere and seen by a generated layout.
    Returns a Scene in working space whose `to_world` maps back to the mesh's units. Raises
    `InputError` naming `source` when a camera sees none of the object.
    """
    if cameras_of is None:
        to_world = unit_sphere_transform(mesh)
        cameras = make_cameras(views, resolution, layout, distance, fov_deg, elevation_deg)
    else:
        to_world = cameras_of.to_world
        cameras = cameras_of.cameras()
    views = len(cameras)
    caster = MeshRayCaster(transform_mesh(mesh, np.linalg.inv(to_world)), crease_deg=crease_deg)  # one BVH
    lights = None  # a headlight per view
    if light is not None:
        directions = np.asarray(light, dtype=np.float64).reshape(-1, 3)
        for d in directions:
            if not np.all(np.isfinite(d)) or not np.any(d):
                raise InputError(f"--light must be a finite non-zero direction, got {d.tolist()}")
        lights = [[DirectionalLight(direction=directions[i % len(directions)])] for i in range(views)]
    outputs: dict[str, list[np.ndarray]] = {}
    bar = tqdm(total=views, desc="rendering", unit="view", disable=not progress, leave=False)
    for start in range(0, views, chunk):
        index = slice(start, min(start + chunk, views))
        out = caster.render(cameras[index], smooth=smooth, supersample=supersample,
                            lights=None if lights is None else lights[index])
        for key, value in out.items():
            outputs.setdefault(key, []).append(value)
        bar.update(index.stop - index.start)
    bar.close()
    arrays = {key: np.concatenate(value) for key, value in outputs.items()}
    empty = [i for i, m in enumerate(arrays["mask"]) if not (m > 0.5).any()]
    if empty:
        raise InputError(f"camera(s) {empty} see none of the object", source)
    directions, intensities = light_arrays(lights, cameras)  # what each view was lit by, for scene.json
    light_dicts = [{"direction": d[0].tolist(), "intensity": float(i[0])} for d, i in zip(directions, intensities)]
    names = None if cameras_of is None else [v.name for v in cameras_of.views]
    return Scene.from_render(cameras, arrays, to_world, names=names, light=light_dicts)


def run_demo(output: Path, views: int = 32, resolution: int = 256, iters: int | None = None,
             budget_s: float | None = 30.0, grid: int = 256, device: str = "cpu",
             progress: bool = True) -> dict:
    """The main job on the bundled Spot cow: render a scene, fit it (the default method), evaluate, report.

    Writes `output/scene/` (the rendered ground truth) and, from `run_fit`, `output/mesh.ply` (in
    the mesh's own units), `checkpoint.pt`, `log.jsonl`, `metrics.json` and `report.html`; returns
    the metrics.
    """
    from .data import example_mesh_path
    from .geometry.mesh import load_mesh
    from .metrics import format_table

    gt_path = example_mesh_path()
    scene = render_scene(load_mesh(gt_path), views=views, resolution=resolution, progress=progress,
                         source=str(gt_path))
    scene.write(output / "scene")
    summary = run_fit(output / "scene", output, iters=iters, budget_s=budget_s, resolution=grid,
                      gt_path=gt_path, device=device, progress=progress)
    print(format_table(summary["metrics"]))
    print(f"open {output / 'report.html'} to see the result")
    return summary["metrics"]


def run_fit(scene_path: str | Path, output: Path, method: str = DEFAULT_FIT, iters: int | None = None,
            budget_s: float | None = None, resume: bool = False, resolution: int = 256,
            gt_path: str | Path | None = None, device: str = "cpu", seed: int = 0,
            progress: bool = True, settings: dict[str, str] | None = None,
            started: float | None = None) -> dict:
    """Fit a scene folder (or NeuS folder) and write `output/mesh.ply` in the input's units, with
    `checkpoint.pt`, `log.jsonl`, `summary.json` (with the silhouette IoU per view when the scene has
    masks) and `report.html`; with `gt_path`, also `metrics.json`.

    `method` is a fit of the registry (`zerolevel.methods`); `iters` defaults to its
    `default_iters`. A `budget_s` without `iters` is the whole job's time, counted from `started`
    (a `time.perf_counter()` value; default: when this is called): the optimisation gets what is
    left after loading and a reserve for extraction and the report, and a method that can
    (`set_budget`) runs its whole schedule in that time; with `iters` too, the budget only cuts the
    optimisation off. `settings` overrides fields of the method's config from text
    (`fit --set KEY=VALUE`, `settings`); a resumed fit keeps the settings it was started with
    and refuses different ones. Returns a summary dict (iterations, seconds, stopped, losses,
    metrics when a GT is given).
    Raises `InputError` for a bad scene, `optim.loop.DivergedError` when the fit diverges.
    """
    from .atomic import atomic_path, write_json
    from .geometry.mesh import load_mesh
    from .metrics import evaluate
    from .optim.loop import LoopConfig, run_loop
    from .recon.checks import check_scene
    from .importers import load_scene

    started = time.perf_counter() if started is None else started
    entry = methods.get(method, "fit")
    time_driven = budget_s is not None and iters is None
    iters = entry.default_iters if iters is None else iters
    gt = load_mesh(gt_path) if gt_path else None  # fail on a bad GT before a long fit
    scene = load_scene(scene_path)
    warnings_ = check_scene(scene, str(scene_path))
    for line in warnings_:
        print(f"warning: {line}")
    output.mkdir(parents=True, exist_ok=True)
    fitter = make_fitter(method, scene, iters, device=device, seed=seed, source=str(scene_path),
                         settings=settings)
    if resume:
        _check_resumable(output, method, fitter.config)
    by_time = time_driven and hasattr(fitter, "set_budget")  # the schedule fitted into the budget
    loop_budget = budget_s
    if by_time:
        loop_budget = max(0.2 * budget_s, budget_s - (time.perf_counter() - started) - finish_reserve_s(resolution))
        fitter.set_budget(loop_budget)
    result = run_loop(fitter, output, LoopConfig(iters=None if by_time else iters, budget_s=loop_budget,
                                                 progress=progress), resume=resume, name=method)
    t0 = time.perf_counter()
    mesh = fitter.extract(resolution, progress=progress)
    with atomic_path(output / "mesh.ply") as tmp:
        mesh.export(tmp)
    summary = {"method": method, "iterations": result.iterations, "seconds": round(result.seconds, 2),
               "stopped": result.stopped, "losses": result.losses,
               "extraction_seconds": round(time.perf_counter() - t0, 2), "resolution": resolution}
    if gt is not None:
        summary["metrics"] = evaluate(mesh, gt, seed=seed)
        write_json(output / "metrics.json", summary["metrics"])
    # one BVH for every picture; plain vertex normals: creases would cost seconds on a fine mesh
    caster = MeshRayCaster(transform_mesh(mesh, np.linalg.inv(scene.to_world)), crease_deg=None)
    silhouettes = _silhouettes(scene, caster) if "mask" in scene.modalities() else None
    if silhouettes is not None:
        summary["silhouette_iou"] = silhouette_iou(scene, silhouettes)
    write_json(output / "summary.json", summary)
    report = _write_fit_report(output, scene, caster, summary, fitter.config, scene_path, silhouettes)
    print(result.summary())
    if silhouettes is not None:
        ious = summary["silhouette_iou"]
        print(f"silhouette IoU per view: mean {ious['mean']:.4f}, min {ious['min']:.4f}")
    print(f"wrote {output / 'mesh.ply'} and {report}")
    return summary


def finish_reserve_s(resolution: int) -> float:
    """Seconds a budgeted fit keeps for what follows the optimisation (extraction at `resolution`,
    writing, silhouettes and the report; measured on the project's 2-core machines)."""
    return 1.0 + 1.0 * (resolution / 256) ** 3


def _write_fit_report(output: Path, scene: Scene, caster: MeshRayCaster, summary: dict, config,
                      scene_path, silhouettes: list[np.ndarray] | None) -> Path:
    """The fit's report: input views beside the result (`caster`: its working-space mesh) rendered
    from the same views, silhouette IoU per view (when the scene has masks), a turntable of the
    result, losses, settings."""
    from dataclasses import asdict

    from .recon.fit_report import silhouette_sheet, turntable_frames, write_fit_report

    shown = _spread(len(scene.views), 6)
    rendered = render_mesh(caster, scene.cameras()[shown])
    method = summary["method"]
    settings = {"scene": str(scene_path), "method": f"{method}: {methods.get(method, 'fit').summary}",
                "views": len(scene.views),
                "modalities": ", ".join(sorted(scene.modalities())), **asdict(config)}
    timings = {"iterations": summary["iterations"], "optimisation (s)": summary["seconds"],
               "stopped by": summary["stopped"], "extraction (s)": summary["extraction_seconds"]}
    metrics = summary.get("metrics")
    flat = None
    if metrics is not None:
        flat = {"chamfer": metrics["chamfer"], **{f"F-score @ {t}": v for t, v in metrics["fscore"].items()},
                "normal consistency": metrics["normal_consistency"]}
    ious, sheet = None, None
    if silhouettes is not None:
        ious = summary["silhouette_iou"]["per_view"]
        picked = _spread(len(scene.views), 8)
        sheet = silhouette_sheet(scene, [silhouettes[i] for i in picked], picked)
    return write_fit_report(output, title=f"zerolevel fit ({summary['method']})", scene=scene,
                            rendered_normals=list(rendered["normal"]), rendered_masks=list(rendered["mask"] > 0.5),
                            view_indices=shown, settings=settings, timings=timings, metrics=flat,
                            log_path=output / "log.jsonl", silhouette_iou=ious, silhouettes=sheet,
                            turntable=turntable_frames(caster, scene))


def _spread(count: int, k: int) -> list[int]:
    """min(k, count) view indices spread evenly from the first view to the last, for contact sheets."""
    return list(np.linspace(0, count - 1, min(k, count)).round().astype(int))


def _silhouettes(scene: Scene, mesh: trimesh.Trimesh | MeshRayCaster) -> list[np.ndarray]:
    """Which pixel centres of every view see `mesh` (in the scene's world units, as `fit` writes it,
    or a caster of it in working space): (H, W) bool per view, visibility rays only."""
    if not isinstance(mesh, MeshRayCaster):
        mesh = MeshRayCaster(transform_mesh(mesh, np.linalg.inv(scene.to_world)))
    cameras = scene.cameras()
    masks = []
    for view in range(len(cameras)):
        origins, directions = cameras[view].rays(cameras.pixel_centers().reshape(-1, 2))
        hit = mesh.first_hit_faces(origins.reshape(-1, 3).numpy(), directions.reshape(-1, 3).numpy()) >= 0
        masks.append(hit.reshape(cameras.height, cameras.width))
    return masks


def silhouette_iou(scene: Scene, silhouettes: list[np.ndarray] | trimesh.Trimesh) -> dict:
    """IoU per view of the scene's masks and the given silhouettes (or those of a mesh in the scene's
    world units, as `fit` writes it), with their mean and minimum. The scene must have masks."""
    from .recon.fit_report import silhouette_ious

    if isinstance(silhouettes, trimesh.Trimesh):
        silhouettes = _silhouettes(scene, silhouettes)
    ious = silhouette_ious(scene, silhouettes)
    return {"per_view": [round(v, 5) for v in ious], "mean": round(float(np.mean(ious)), 5),
            "min": round(float(np.min(ious)), 5)}


def make_fitter(method: str, scene: Scene, iters: int, device: str = "cpu", seed: int = 0,
                source: str = "scene", settings: dict[str, str] | None = None):
    """The method object of a fit (an `optim.loop.Task`) by its registry name: its default settings,
    then the text overrides `settings` ({"lr": "0.05", "resolutions": "16,32,64"})."""
    from .settings import apply_overrides

    parts = methods.get(method, "fit").parts()
    try:
        config = apply_overrides(parts.config(), settings)
        return parts.method(scene, iters, config=config, device=device, seed=seed, source=source)
    except ValueError as error:  # a config the method rejects (e.g. resolutions that do not double)
        raise InputError(f"--set: {error}") from None


def _check_resumable(output: Path, method: str, config) -> None:
    """A resumed fit must be the same method with the same settings as its checkpoint."""
    from dataclasses import asdict

    from .optim.loop import CHECKPOINT, load_checkpoint

    path = output / CHECKPOINT
    if not path.is_file():
        return
    payload = load_checkpoint(path)
    if payload["name"] != method:
        raise InputError(f"the checkpoint is a {payload['name']} fit; resume it with --method "
                         f"{payload['name']}", path)
    saved = payload["state"].get("config", {})
    ours = asdict(config)
    changed = sorted(k for k, v in saved.items() if k in ours and ours[k] != v)
    if changed:
        raise InputError("the checkpoint was written with other settings (" + ", ".join(
            f"{k}={_text(saved[k])}" for k in changed) + "); resume with the same --set", path)


def _text(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def run_extract(checkpoint: str | Path, output: str | Path, resolution: int = 256, device: str = "cpu",
                progress: bool = True) -> trimesh.Trimesh:
    """Mesh a fitted field from a fit's `checkpoint.pt` at `resolution` (a tet-SDF fit: by marching
    tetrahedra on its own grid), in the input's units."""
    from .atomic import atomic_path
    from .optim.loop import load_checkpoint

    payload = load_checkpoint(checkpoint)
    entry = methods.REGISTRY.get(payload["name"])
    if entry is None or entry.kind != "fit":
        raise InputError(f"not a fit's checkpoint (it holds {payload['name'] or 'an unnamed run'})", checkpoint)
    mesh = entry.parts().mesh_from_state(payload["state"], resolution, device, progress)
    if len(mesh.faces) == 0:
        raise InputError("the fitted field has no surface inside the unit sphere", checkpoint)
    with atomic_path(output) as tmp:
        mesh.export(tmp)
    return mesh
