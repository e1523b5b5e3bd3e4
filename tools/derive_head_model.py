"""Derive the compact head model the project ships (`src/zerolevel/data/head_model.npz`) from the
ICT-FaceKit "light" model packed in `../shared/data/ict_facekit/` (MIT licence, kept beside the result).

What is kept and how (the generator, `zerolevel.learn.heads`, reads the result):
- The outer surface: the `face` and `head_and_neck` parts, triangulated (each quad split along its
  first diagonal), their four holes (neck, mouth, two eyes) closed by a fan around a new vertex at the
  hole loop's centroid, so the skin is one closed surface; and the two eyeballs, each closed. A cap
  vertex is the mean of its loop, so its modes are the loop's mean modes and the caps follow every
  identity and expression. The inner parts (mouth socket, teeth, tongue, fluid films, occlusion
  shells, eyelashes) are left out: the mouth is shown closed by its cap (jaw opening is kept small by
  the generator) and coloured as a mouth's inside.
- Decimated by quadric error (fast-simplification) to about `--skin-faces` and `--eye-faces`
  triangles; each kept vertex takes the neutral position, modes and region weights of its closest point
  on the full closed surface (barycentric interpolation), so the decimated model deforms as the full one.
- The first `--identity-modes` identity modes (ordered by variance: the later ones move the surface
  far less) and the expression blend shapes but the pupil and gaze ones, as float16 centimetres.
- Per-vertex region weights in [0, 1] for the procedural albedo, placed from landmarks the model itself
  gives (the eyeball centres, the mouth loop): `lips`, `brows`, `cheeks`, `scalp` (hair line upwards and
  the back of the head), `mouth` (the mouth cap), `eye_socket` (the eye caps), and on the eyeballs
  `iris`, `pupil` (cones of `IRIS_DEG`, `PUPIL_DEG` about the neutral gaze, +z: the source's iris
  material covers a hemisphere, not the iris) and `sclera` (the rest); `face`, the region the
  evaluation scores apart: the source's `face` part below the scalp, in front of the ears and above the
  throat, its mouth and eye caps, the eyeballs.

    pip install -e '.[derive]'          # fast-simplification: only this script needs it
    python tools/derive_head_model.py   # reads ../shared/data/ict_facekit, writes src/zerolevel/data/

Deterministic: the same input gives the same file.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import trimesh

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "ict_facekit"
TARGET = ROOT / "src" / "zerolevel" / "data"
SKIPPED_EXPRESSIONS = ("PupilDilate", "eyeLook")  # change no outer shape a single image shows
REGIONS = ("lips", "brows", "cheeks", "scalp", "mouth", "eye_socket", "iris", "pupil", "sclera", "face")
IRIS_DEG, PUPIL_DEG = 30.0, 12.0  # half-angles of the iris and pupil about the eyeball's gaze (+z)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--out", type=Path, default=TARGET / "head_model.npz")
    parser.add_argument("--identity-modes", type=int, default=32)
    parser.add_argument("--skin-faces", type=int, default=12000)
    parser.add_argument("--eye-faces", type=int, default=600)
    args = parser.parse_args()

    packed = np.load(args.source / "ict_head_model.npz")
    parts = {p["name"]: p for p in json.loads((args.source / "parts.json").read_text())["parts"]}
    keep_expr = [i for i, name in enumerate(packed["expression_names"])
                 if not str(name).startswith(SKIPPED_EXPRESSIONS)]
    # (N, 3 * K) blocks: the neutral position and every mode, interpolated together
    modes = np.concatenate([packed["identity_modes"][:args.identity_modes], packed["expression_modes"][keep_expr]])
    pieces = [closed_skin(packed, parts, modes)]
    for side in ("left", "right"):
        pieces.append(eyeball(packed, parts[f"eyeball_{side}"], modes))
    vertices, faces, attributes, part = [], [], [], []
    offset = 0
    for k, (mesh, attrs, regions) in enumerate(pieces):
        target = args.skin_faces if k == 0 else args.eye_faces
        small = decimate(mesh, target)
        weights = transfer(mesh, small, np.concatenate([attrs, regions], axis=1))
        vertices.append(small.vertices)
        faces.append(small.faces + offset)
        attributes.append(weights)
        part.append(np.full(len(small.vertices), k, np.uint8))
        offset += len(small.vertices)
        print(f"part {k}: {len(mesh.faces)} -> {len(small.faces)} faces, watertight {small.is_watertight}")
    V, F, A = np.concatenate(vertices), np.concatenate(faces), np.concatenate(attributes)
    K = len(modes)
    mode_values = A[:, :3 * K].reshape(len(V), K, 3).transpose(1, 0, 2)
    region_values = A[:, 3 * K:]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "wb") as handle:
        np.savez_compressed(
            handle, neutral=V.astype(np.float32), faces=F.astype(np.int32), part=np.concatenate(part),
            identity_modes=mode_values[:args.identity_modes].astype(np.float16),
            expression_modes=mode_values[args.identity_modes:].astype(np.float16),
            expression_names=np.array([str(packed["expression_names"][i]) for i in keep_expr]),
            regions=np.clip(region_values, 0, 1).astype(np.float16), region_names=np.array(REGIONS),
            units=np.array("cm, y up, face towards +z"),
            source=np.array("ICT-FaceKit light (ICT-VGL/ICT-FaceKit @ da5f95a6), MIT; "
                            "derived by tools/derive_head_model.py"))
    shutil.copyfile(args.source / "LICENSE", args.out.parent / "LICENSE-ict-facekit.txt")
    print(f"{args.out}: {len(V)} vertices, {len(F)} faces, {K} modes, {args.out.stat().st_size / 1e6:.2f} MB")


def triangles(faces: np.ndarray) -> np.ndarray:
    """Quads (or triangles padded with -1) as triangles."""
    tri = faces[faces[:, 3] < 0][:, :3]
    quad = faces[faces[:, 3] >= 0]
    return np.concatenate([tri, quad[:, [0, 1, 2]], quad[:, [0, 2, 3]]])


def boundary_loops(faces: np.ndarray) -> list[np.ndarray]:
    """Each hole's vertices in order, as directed edges of the faces run along it."""
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    undirected = np.sort(directed, axis=1)
    _, inverse, counts = np.unique(undirected, axis=0, return_inverse=True, return_counts=True)
    border = directed[counts[inverse.ravel()] == 1]
    successor = dict(zip(border[:, 0].tolist(), border[:, 1].tolist()))
    loops, seen = [], set()
    for start in successor:
        if start in seen:
            continue
        loop, v = [], start
        while v not in seen:
            seen.add(v)
            loop.append(v)
            v = successor[v]
        loops.append(np.array(loop))
    return loops


def closed_skin(packed, parts: dict, modes: np.ndarray):
    """Face + head-and-neck with each hole closed by a centroid fan; attributes and region weights."""
    f0, f1 = parts["face"]["faces"][0], parts["head_and_neck"]["faces"][1]
    n_vertices = parts["head_and_neck"]["vertices"][1] + 1
    faces = triangles(packed["faces"][f0:f1 + 1])
    vertices = packed["neutral"][:n_vertices].astype(np.float64)
    attrs = modes[:, :n_vertices].transpose(1, 0, 2).reshape(n_vertices, -1).astype(np.float64)
    loops = boundary_loops(faces)
    kinds = []
    new_vertices, new_attrs, new_faces = [vertices], [attrs], [faces]
    for k, loop in enumerate(loops):
        centre = len(vertices) + k
        new_vertices.append(vertices[loop].mean(0, keepdims=True))
        new_attrs.append(attrs[loop].mean(0, keepdims=True))
        # the faces run the loop a -> b; the cap runs it b -> a
        new_faces.append(np.stack([np.roll(loop, -1), loop, np.full(len(loop), centre)], axis=1))
        kinds.append(hole_kind(vertices[loop]))
    V, A, F = np.concatenate(new_vertices), np.concatenate(new_attrs), np.concatenate(new_faces)
    mesh = trimesh.Trimesh(V, F, process=False)
    assert mesh.is_watertight and mesh.volume > 0, "the capped skin must be closed and outward"
    regions = skin_regions(V, loops, kinds, packed, parts)
    return mesh, A, regions


def hole_kind(loop_points: np.ndarray) -> str:
    """neck (lowest), mouth (on the midline, in front) or eye, from the loop's centroid (cm, face +z)."""
    c = loop_points.mean(0)
    if c[1] < -10:
        return "neck"
    return "mouth" if abs(c[0]) < 1 else "eye"


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def skin_regions(V: np.ndarray, loops, kinds, packed, parts: dict) -> np.ndarray:
    """(N, len(REGIONS)) soft weights of the skin's vertices, placed from the model's own landmarks."""
    out = np.zeros((len(V), len(REGIONS)))
    mouth = V[loops[kinds.index("mouth")]]
    mc, half = mouth.mean(0), (mouth.max(0) - mouth.min(0)) / 2
    front = smoothstep(mc[2] - 3.0, mc[2] - 1.5, V[:, 2])
    # lips: an ellipse around the mouth loop, a little wider than it and ~1 cm above and below
    r = np.hypot((V[:, 0] - mc[0]) / (half[0] + 0.45), (V[:, 1] - mc[1]) / (half[1] + 0.85))
    out[:, 0] = smoothstep(1.0, 0.8, r) * front
    eye_centres = [packed["neutral"][parts[f"eyeball_{s}"]["vertices"][0]:parts[f"eyeball_{s}"]["vertices"][1] + 1]
                   .mean(0) for s in ("left", "right")]
    brows, cheeks = np.zeros(len(V)), np.zeros(len(V))
    for e in eye_centres:
        lateral = np.sign(e[0])
        face_front = smoothstep(e[2] - 3.5, e[2] - 1.0, V[:, 2])
        # brows: an arched band ~2.2 cm above the eye, wider towards the temple
        dx = V[:, 0] - (e[0] + 0.35 * lateral)
        arch = e[1] + 2.3 - 0.12 * dx ** 2
        rb = np.hypot(dx / 2.5, (V[:, 1] - arch) / 0.6)
        brows = np.maximum(brows, smoothstep(1.0, 0.6, rb) * face_front)
        # cheeks: below and outside the eye
        rc = np.hypot((V[:, 0] - (e[0] + 1.0 * lateral)) / 2.4, (V[:, 1] - (e[1] - 3.0)) / 2.0)
        cheeks = np.maximum(cheeks, smoothstep(1.0, 0.2, rc) * face_front)
    out[:, 1], out[:, 2] = brows, cheeks
    # scalp: above a hairline ~5.5 cm over the eyes at the front, descending towards the nape
    eye_y = float(np.mean([e[1] for e in eye_centres]))
    depth = smoothstep(mc[2], mc[2] - 18.0, V[:, 2])  # 0 at the face, 1 at the back
    hairline = eye_y + 5.5 - 9.5 * depth
    out[:, 3] = smoothstep(hairline - 0.3, hairline + 0.8, V[:, 1]) * smoothstep(-4.0, -1.0, -np.abs(V[:, 0]) + 9.0)
    n_skin = len(V) - len(loops)
    # the face: the source's face part without the scalp, ears (behind the eyes by 4 cm) and throat
    # (below the mouth by 5 cm)
    face_part = np.arange(len(V)) <= parts["face"]["vertices"][1]
    eye_z = float(np.mean([e[2] for e in eye_centres]))
    out[:, REGIONS.index("face")] = face_part * (out[:, 3] < 0.5) * (V[:, 2] > eye_z - 4.0) * (V[:, 1] > mc[1] - 5.0)
    for k, kind in enumerate(kinds):
        if kind == "mouth":
            out[n_skin + k, 4] = 1.0
            out[loops[k], 4] = 0.5
        elif kind == "eye":
            out[n_skin + k, 5] = 1.0
        out[n_skin + k, REGIONS.index("face")] = float(kind != "neck")
    return out


def eyeball(packed, part: dict, modes: np.ndarray):
    """One eyeball, closed; its attributes and region weights (iris and pupil cones about +z, sclera)."""
    from scipy.spatial import cKDTree

    v0, v1 = part["vertices"][0], part["vertices"][1] + 1
    f0, f1 = part["faces"][0], part["faces"][1] + 1
    faces = triangles(packed["faces"][f0:f1]) - v0
    mesh = trimesh.Trimesh(packed["neutral"][v0:v1].astype(np.float64), faces, process=False)
    mesh.merge_vertices()  # the source splits vertices along its texture seams
    if mesh.volume < 0:
        mesh.invert()
    points = np.asarray(mesh.vertices)
    direction = points - points.mean(0)
    cos_gaze = direction[:, 2] / np.linalg.norm(direction, axis=1)
    regions = np.zeros((len(points), len(REGIONS)))
    pupil = smoothstep(np.cos(np.radians(PUPIL_DEG + 2)), np.cos(np.radians(PUPIL_DEG - 2)), cos_gaze)
    iris = smoothstep(np.cos(np.radians(IRIS_DEG + 2)), np.cos(np.radians(IRIS_DEG - 2)), cos_gaze) - pupil
    regions[:, REGIONS.index("pupil")] = pupil
    regions[:, REGIONS.index("iris")] = iris
    regions[:, REGIONS.index("sclera")] = 1.0 - iris - pupil
    regions[:, REGIONS.index("face")] = 1.0
    _, nearest = cKDTree(packed["neutral"][v0:v1]).query(points)
    attrs = modes[:, v0:v1][:, nearest].transpose(1, 0, 2).reshape(len(points), -1).astype(np.float64)
    return mesh, attrs, regions


def decimate(mesh: trimesh.Trimesh, target_faces: int) -> trimesh.Trimesh:
    """Quadric-error decimation to about `target_faces` triangles (fast-simplification)."""
    import fast_simplification

    reduction = max(0.0, 1.0 - target_faces / len(mesh.faces))
    points, faces = fast_simplification.simplify(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces),
                                                 target_reduction=reduction)
    out = trimesh.Trimesh(points.astype(np.float64), faces, process=True)
    return out


def transfer(full: trimesh.Trimesh, small: trimesh.Trimesh, attributes: np.ndarray) -> np.ndarray:
    """`attributes` of `full`'s vertices at `small`'s vertices: barycentric at the closest point."""
    closest, _, triangle = trimesh.proximity.closest_point(full, small.vertices)
    bary = trimesh.triangles.points_to_barycentric(full.triangles[triangle], closest)
    corners = full.faces[triangle]
    return np.einsum("nk,nkc->nc", bary, attributes[corners])


if __name__ == "__main__":
    main()
