"""Measuring results against the demo world's ground truth (docs/design.md, "Evaluation").

- `truth`: what is known about one world object (exact occupancy on grids, surface samples, colours).
- `metrics`: IoU, colour, surface error (Chamfer distance, normal angle), and `score_mesh`, the verdict
  on one generated mesh (right object or not) that `scripts/score_mesh.py` and the benchmarks share.
- `janus`: is the house's door (its front) also painted on its back?
- `supervision`: the ceiling's supervision, exact renders of the true object instead of the prior.
- `thumbnails`: small software renders of meshes and the labelled contact sheet.

Scripts stay thin: they import from here.
"""
