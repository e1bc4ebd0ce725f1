"""Pictures that explain: curves per loss scale, a grid at the end of any run, TensorBoard."""

from __future__ import annotations

import json

from repackctl.train.logging import METRICS, plot_curves, scale_groups


def test_losses_of_different_scales_get_their_own_panels(tmp_path):
    records = [
        {"step": s, "loss/total": 100.0 / s, "loss/l1": 50.0 / s, "loss/kl": 1e-4 * s,
         "loss/gan": 0.5, "lr": 1e-4}
        for s in range(1, 9)
    ]  # fmt: skip
    groups = scale_groups(records, ["loss/gan", "loss/kl", "loss/l1", "loss/total"])
    assert ["loss/total", "loss/l1"] in groups and ["loss/kl"] in groups
    assert all(len(g) >= 1 for g in groups) and sum(len(g) for g in groups) == 4
    (tmp_path / METRICS).write_text("".join(json.dumps(r) + "\n" for r in records))
    out = plot_curves(tmp_path)
    assert out is not None and out.stat().st_size > 1000
    from PIL import Image

    with Image.open(out) as im:  # one panel per scale group plus the learning rate
        assert im.width >= 80 * 4 * (len(groups) + 1) * 0.9
