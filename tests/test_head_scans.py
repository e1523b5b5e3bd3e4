"""Real scans in the head evaluation (`learn.head_scans`): a scan in other axes, units and place is
put back in the head frame, and the protocol scores what matches it perfectly and what does not less."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from zerolevel.errors import InputError
from zerolevel.learn.head_scans import crop_to_box, orientation, scan_case, score_scan
from zerolevel.learn.heads import mean_head
from zerolevel.learn.phorhum_eval import HeadPrediction


def test_orientation_turns_up_to_y_and_front_to_minus_z():
    R = orientation((0, 0, 1), (0, -1, 0))
    np.testing.assert_allclose(R @ [0, 0, 1], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(R @ [0, -1, 0], [0, 0, -1], atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="perpendicular"):
        orientation((0, 1, 0), (0, 1, 1))


def _as_scanned(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The mesh in a scanner's frame: z up, the face towards -y, millimetre-like units, off the origin,
    on a block of shoulders (which the crop must leave out)."""
    vertices = np.asarray(mesh.vertices)
    low = vertices[:, 1].min()
    shoulders = trimesh.creation.box(extents=(0.9, 0.25, 0.4))
    shoulders.apply_translation((0.0, low - 0.2, 0.05))
    both = trimesh.util.concatenate([mesh, shoulders])
    turned = np.stack([-both.vertices[:, 0], both.vertices[:, 2], both.vertices[:, 1]], axis=1)  # y up -> z up, -z -> -y
    return trimesh.Trimesh(turned * 250.0 + np.array([30.0, -12.0, 400.0]), both.faces, process=False)


def test_a_scan_is_put_back_in_the_head_frame_and_scored():
    head = mean_head().outer_mesh()
    case = scan_case(_as_scanned(head), up=(0, 0, 1), front=(0, -1, 0), resolution=48)
    assert case.scale == pytest.approx(1 / 250.0, rel=0.02)
    # the placed scan lies on the mean head: every cropped sample within a few mm of its surface
    distance = np.abs(trimesh.proximity.signed_distance(head, case.truth[::20, :3]))
    assert np.percentile(distance, 95) < 0.006
    assert 0.1 < case.truth[:, 9].mean() < 0.6  # a face, not the whole head
    assert case.mask.mean() > 0.2 and case.image.shape == (48, 48, 4)
    grey = lambda p: np.full((len(p), 3), 0.5)  # noqa: E731
    exact = score_scan(HeadPrediction(head, grey), case)  # 40k samples a side: their spacing is well under 0.5%
    moved = head.copy()
    moved.apply_translation((0.0, 0.0, 0.02))
    off = score_scan(HeadPrediction(moved, grey), case)
    assert exact["F@1.0% face"] > 0.95 and exact["normal consistency face"] > 0.95
    assert off["F@0.5% face"] < exact["F@0.5% face"] - 0.3
    assert np.isnan(exact["albedo PSNR face"])


def test_crop_and_bad_scans():
    box = np.array([[-1.0, -1.0, -1.0], [0.0, 1.0, 1.0]])
    cropped = crop_to_box(trimesh.creation.icosphere(2), box)
    assert len(cropped.faces) and (cropped.triangles_center[:, 0] <= 0).all()
    with pytest.raises(InputError, match="no faces"):
        scan_case(trimesh.Trimesh(np.zeros((3, 3)), np.zeros((0, 3), dtype=int)))
