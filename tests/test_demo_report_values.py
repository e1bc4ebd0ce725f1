"""The demo's report renders every figure honestly: exact reconstructions (PSNR = inf, stored
as None), floors of 0 and NaN figures neither crash the report writer nor print a misleading
number, the count of exact reconstructions is shown, and a refiner change under 0.005 / 255 is
not printed as "0.00 / 255". The demo records the exact counts and the changed pixels."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from repackctl.demo import DemoPlan, _Demo
from repackctl.demo_report import pca_arm_lines, refiner_change_line, results_table
from repackctl.metrics.adm import write_samples_npz
from repackctl.progress import null_progress


def _metrics(**over: Any) -> dict[str, Any]:
    """A demo's metrics as `repackctl demo --quick` wrote them (values of a real run)."""
    m: dict[str, Any] = {
        "fd_plain": 19.445,
        "colour_plain": 1.847,
        "class_accuracy_plain": 0.15,
        "fd_refined": 19.445,
        "colour_refined": 1.847,
        "class_accuracy_refined": 0.15,
        "fd_real": 4.721,
        "colour_real": 1.876,
        "fd_decoder": 31.597,
        "colour_decoder": 1.883,
        "refiner_sample_change": 0.000944,
        "refiner_changed_pixels": 58,
        "refiner_pixels": 20480,
        "class_accuracy": 0.15,
        "class_accuracy_real_val": 0.383,
        "class_accuracy_decoded_val": 0.05,
        "n_samples": 20,
        "n_reference": 60,
        "recon_psnr": 11.267,
        "recon_psnr_exact": 0,
        "recon_ssim": 0.119,
        "refined_psnr": 11.268,
        "refined_psnr_exact": 0,
        "refined_ssim": 0.118,
        "recon_hf_error": 0.2226,
        "refined_hf_error": 0.2226,
        "hf_energy": {"real": 0.108, "recon": 0.163, "refined": 0.163},
        "n_recon": 40,
    }
    return m | over


def _row(lines: list[str], start: str) -> str:
    return next(r for r in lines if r.startswith(start))


def test_every_reconstruction_exact_reads_inf_and_meets_the_psnr_target() -> None:
    exact = {"recon_psnr": None, "recon_psnr_exact": 40}
    exact |= {"refined_psnr": None, "refined_psnr_exact": 40}
    table = results_table(_metrics(**exact))  # raised TypeError (None >= inf) before
    psnr_row = _row(table, "| recon PSNR")
    assert "inf (all 40 exact)" in psnr_row and psnr_row.endswith("| **met** |"), psnr_row
    hf = _row(table, "| high-frequency error")
    assert "PSNR inf (all 40 exact) → inf (all 40 exact)" in hf, hf
    # exact in uint8 and no high-frequency error left either (no ZeroDivisionError)
    m = _metrics(**exact, recon_ssim=1.0, recon_hf_error=0.0, refined_hf_error=0.0)
    table = results_table(m)
    hf = _row(table, "| high-frequency error")
    assert "0.0000 → 0.0000 (unchanged)" in hf, hf
    assert "PSNR inf (all 40 exact) → inf (all 40 exact)" in hf, hf
    assert hf.endswith("| n/a |"), hf  # no error to lower: neither met nor missed


def test_some_exact_reconstructions_are_counted_beside_the_mean() -> None:
    m = _metrics(recon_psnr=18.2, recon_psnr_exact=2, refined_psnr=18.5, refined_psnr_exact=3)
    table = results_table(m)
    psnr_row = _row(table, "| recon PSNR")
    assert "| 18.20 dB (mean of 38; 2 exact, PSNR = inf) |" in psnr_row, psnr_row
    hf = _row(table, "| high-frequency error")
    assert "→ 18.50 dB (mean of 37; 3 exact, PSNR = inf)" in hf, hf
    # none exact: the plain figure, as before
    plain = _row(results_table(_metrics(recon_psnr=18.2)), "| recon PSNR")
    assert "| 18.20 dB | SSIM" in plain, plain


def test_zero_floors_and_nan_figures_are_said_not_divided() -> None:
    m = _metrics(fd_decoder=0.0, colour_real=0.0, fd_plain=math.nan, recon_hf_error=0.0)
    table = results_table(m)  # ZeroDivisionError before
    text = "\n".join(table)
    assert "nan" not in text.lower().replace("n/a", ""), text
    fd = _row(table, "| FD")
    assert "| 19.45 / n/a |" in fd and "(inf ×) | not met |" in fd, fd
    colour = _row(table, "| colour-histogram")
    assert "(inf ×) | not met |" in colour, colour
    hf = _row(table, "| high-frequency error")
    assert "0.0000 → 0.2226 (inf % higher)" in hf and hf.endswith("| not met |"), hf


def test_pca_arm_table_with_exact_reconstructions_and_a_zero_floor() -> None:
    arm = {
        "fd_pca": 25.0,
        "fd_decoder_pca": 0.0,
        "colour_pca": 1.9,
        "colour_decoder_pca": 1.9,
        "class_accuracy_pca": 0.1,
        "recon_psnr_pca": None,
        "recon_psnr_pca_exact": 40,
    }
    lines = pca_arm_lines(_metrics(**arm), "about 60 s")  # TypeError (None :.2f) before
    psnr_row = _row(lines, "| recon PSNR")
    assert psnr_row == "| recon PSNR (val, decoder only) | 11.27 dB | inf (all 40 exact) |"
    fd = _row(lines, "| FD of the samples")
    assert "| 25.00 (inf × floor) |" in fd, fd
    # the arm's record before it counted exact ones: None still means every one exact
    older = {k: v for k, v in arm.items() if k != "recon_psnr_pca_exact"}
    assert "inf (all 40 exact)" in _row(pca_arm_lines(_metrics(**older), ""), "| recon PSNR")
    assert "PCA arm (plain) 25.00 |" in _row(results_table(_metrics(**arm)), "| FD")


def test_a_refiner_change_under_a_hundredth_is_not_printed_as_zero() -> None:
    line = refiner_change_line(_metrics())
    assert "0.00 / 255" not in line, line
    assert "less than 0.01 / 255 on average (0.00094 / 255; 58 of 20480 pixels changed, " in line
    none = refiner_change_line(_metrics(refiner_sample_change=0.0, refiner_changed_pixels=0))
    assert "left every pixel of the samples as it was (0 of 20480 pixels changed)" in none
    unknown = {"refiner_sample_change": 0.000944}  # without the counts: said without them
    assert refiner_change_line(unknown).endswith(
        "on average (0.00094 / 255): the refined "
        "figures all but repeat the plain ones (its "
        "weights barely moved in the steps it trained)."
    )
    big = refiner_change_line(_metrics(refiner_sample_change=1.234, refiner_changed_pixels=900))
    assert "by 1.23 / 255 on average (900 of 20480 pixels changed" in big, big


def test_the_demo_counts_the_pixels_its_refiner_changed(tmp_path: Path) -> None:
    """``_Demo._refiner_change`` on two real ``samples.npz`` that differ in 3 values of 2
    pixels: a mean of 5/768 (under 0.01) and 2 of 256 pixels changed."""
    plan = DemoPlan.quick(tmp_path / "demo")
    demo = _Demo(plan, null_progress, lambda _: None)
    rng = np.random.default_rng(0)
    plain = rng.integers(0, 250, size=(4, 8, 8, 3), dtype=np.uint8)
    refined = plain.copy()
    refined[0, 1, 2, 0] += 1
    refined[0, 1, 2, 2] += 2
    refined[3, 7, 7, 1] += 2
    for kind, images in (("plain", plain), ("refined", refined)):
        (tmp_path / kind).mkdir()
        write_samples_npz(tmp_path / kind / "samples.npz", images, np.arange(4))
    demo.sample_dirs = {"plain": tmp_path / "plain", "refined": tmp_path / "refined"}
    change = demo._refiner_change()
    assert change == {
        "refiner_sample_change": 5 / plain.size,
        "refiner_changed_pixels": 2,
        "refiner_pixels": 4 * 8 * 8,
    }
    line = refiner_change_line(change)
    assert f"({5 / plain.size:.2g} / 255; 2 of 256 pixels changed, 0.781 %)" in line, line


def test_the_demo_records_its_exact_reconstructions(tmp_path: Path) -> None:
    """``_Demo._recon_scores`` on real stages (a tiny plan: 16 + 8 images, a 2-step pack and a
    2-step refiner trained in its own process) records how many reconstructions were exact,
    recon and refined, as `evaluate recon` does (``psnr_exact``)."""
    from repackctl.files import to_uint8
    from repackctl.metrics.recon import psnr

    plan = DemoPlan(
        out=tmp_path / "demo",
        n_train=16,
        n_val=8,
        resolution=32,
        pack_steps=2,
        pack_channels=8,
        refine_steps=2,
        refine_channels=8,
        eval_images=8,
        solo_threads=1,
    )
    demo = _Demo(plan, null_progress, lambda _: None)
    demo.stage("extract train", lambda: demo.extract_split("train", 16), 1)
    demo.stage("extract val", lambda: demo.extract_split("val", 8), 1)
    demo.stage("pack train", demo.pack_train_stage, 1)
    demo.start_refine()
    demo.stage("refine", demo.refine, 1)
    m = demo._recon_scores()
    real, _ = demo.images("val", 8)
    recon = psnr(real, to_uint8(demo._val_recon[1]))
    assert m["recon_psnr_exact"] == recon.n_identical and m["refined_psnr_exact"] >= 0
    assert isinstance(m["recon_psnr_exact"], int) and isinstance(m["refined_psnr_exact"], int)
    assert m["recon_psnr"] == recon.mean and m["n_recon"] == 8
    row = _row(results_table(_metrics(**m)), "| recon PSNR")
    assert f"| {recon.mean:.2f} dB | SSIM" in row, row  # none exact: no count beside the mean
