"""The demo's PCA arm (`repackctl demo --pca-arm`): the paper's baseline beside RePack.

RePack then Refine (guanfangdong/RePack-then-Refine; ``reference/methods.md``) compares its
packing autoencoder with PCA of the same dimension under the same decoder. The arm trains that
baseline with the demo's own recipe and scores it the same way:

* ``pack train --method pca``: the same decoder recipe and steps on a frozen PCA projection of
  the cached tokens (run ``pack-pca``), then ``pack encode``;
* the same DiT (+ REPA, same steps, lr, batch, time shift) on those latents (run ``dit-pca``);
* the same sampling, plain: the refiner was trained on the RePack decoder's outputs;
* FD next to the arm's own decoder floor, class accuracy, colour distance, recon PSNR, and
  ``samples-pca.png`` beside the demo's ``samples.png``.

It runs after the demo's own stages, so the demo's figures are the same with or without it. It
about doubles the run time, which is why it is off by default (the demo's budget is 10 minutes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

PACK, DIT, PICTURE = "pack-pca", "dit-pca", "samples-pca.png"
#: What the arm writes in the demo folder (``--fresh`` removes these too).
ARM_FILES = (PACK, DIT, PICTURE)


class PCAArm:
    """The arm's stages, mixed into the demo's pipeline (``repackctl.demo._Demo``), whose pack,
    DiT, sampling and scoring methods it calls with the arm's run names."""

    arm_dir: Path

    def run_pca_arm(self, threads: int) -> None:
        """Every stage of the arm, each resumable like the demo's own."""
        self.stage("pack train (PCA arm)", lambda: self.pack_train_stage(PACK, "pca"), threads)
        self.stage("pack encode (PCA arm)", lambda: self.pack_encode_stage(PACK), threads)
        self.stage("train dit (PCA arm)", lambda: self.dit(DIT, PACK), threads)
        self.stage("sample (PCA arm)", self.arm_sample, threads)
        self.stage("evaluate (PCA arm)", self.arm_evaluate, threads)

    def arm_sample(self) -> tuple[bool, str]:
        *_, self.arm_dir, reused = self.sample(DIT, **self.sample_flags())
        return reused, f"{self.plan.samples} plain samples of {DIT}, the demo's sampling"

    def arm_evaluate(self) -> tuple[bool, str]:
        """The arm's keys in the demo's metrics: ``fd_pca``, ``colour_pca``,
        ``class_accuracy_pca``, ``fd_decoder_pca``, ``colour_decoder_pca``, ``recon_psnr_pca``."""
        from repackctl.files import to_uint8
        from repackctl.metrics.recon import psnr

        torch.manual_seed(self.plan.seed)
        scores: dict[str, Any]
        scores, labels = self.set_scores(self.arm_dir, "pca")
        scores["fd_decoder_pca"], scores["colour_decoder_pca"] = self.decoder_floor(PACK, labels)
        real, _ = self.images("val", self.plan.eval_images)
        _, decoded = self.reconstruct(PACK, "val", self.plan.eval_images)
        recon = psnr(real, to_uint8(decoded)).to_dict()
        scores["recon_psnr_pca"] = recon["psnr"]
        scores["recon_psnr_pca_exact"] = recon["n_identical"]  # PSNR = inf, not in the mean
        self.report.metrics.update(scores)
        return False, (
            f"FD {scores['fd_pca']:.2f} (its decoder floor {scores['fd_decoder_pca']:.2f}); "
            f"sample class accuracy {100 * scores['class_accuracy_pca']:.0f} %"
        )

    def arm_picture(self) -> None:
        """``samples-pca.png``: the arm's samples, one labelled row per class."""
        from repackctl.data.builtin import CLASS_NAMES
        from repackctl.demo_report import class_rows_grid
        from repackctl.metrics.adm import read_samples_npz

        images, labels = read_samples_npz(self.arm_dir / "samples.npz")
        class_rows_grid(images, labels, CLASS_NAMES, self.out / PICTURE)
        self.report.files[PICTURE] = str(self.out / PICTURE)
