"""Inception-V3 features for FID / sFID / IS / KID / precision-recall, through torch-fidelity.

The network, its TF1-compatible bilinear resize to 299² and its weights file are torch-fidelity's
(0.4.0, feature extractor ``inception-v3-compat``: a port of the TF "2015-12-05" Inception graph
that the ADM evaluator, openai/guided-diffusion ``evaluations/evaluator.py``, runs in TensorFlow).
We ask it for three things per image:

============  =====================================  ==========================================
ours          torch-fidelity / torch module           ADM TF graph
============  =====================================  ==========================================
``pool``      feature ``'2048'`` (avg-pooled Mixed_7c) ``pool_3:0`` (FID, KID, precision/recall)
``logits``    feature ``'logits_unbiased'``           ``pool_3 @ softmax/weights`` (IS, no bias)
``spatial``   forward hook on ``Mixed_6d.branch1x1``  ``mixed_6/conv:0[..., :7]`` (sFID)
============  =====================================  ==========================================

sFID (Nash et al. 2021, as computed by ADM): the TF node ``mixed_6/conv`` is the 1×1 branch
(conv → batch-norm → ReLU, 192 channels at 17×17) of the 7th mixed block, which is
``Mixed_6d.branch1x1`` in the torch port (torch-fidelity's weight-conversion table maps
``mixed_6/conv/*`` to ``Mixed_6d.branch1x1.*``; blocks 5b,5c,5d,6a,6b,6c,6d… are TF's
mixed, mixed_1 … mixed_6 …). torch-fidelity's own ``'768'`` feature is *not* it: that is the
spatially averaged Mixed_6e output. We keep its first 7 channels and flatten them in TF's NHWC
order (h, w, c) → 17·17·7 = 2023 dims, so our ``mu_s``/``sigma_s`` line up coordinate by
coordinate with those in ADM reference batches (the order does not change an FD between two sets
of our own features, but it matters against ADM's stored statistics).

What differs from ADM's TF graph: the arithmetic (PyTorch convolutions vs TF kernels; float32
either way) and TF1's bilinear resize reimplemented in PyTorch (torch-fidelity reports it bit-exact
on CPU). Expect FIDs close to the TF evaluator's, not bit-identical (we have not measured the gap:
no TF and no official weights on the build machines); the result records which extractor and
weights (sha256) produced every number.

Weights: torch-fidelity unpickles its weights file (``torch.load(weights_only=False)``). We never
hand it a file we have not read safely first: the file (a user's ``--inception-weights FILE``,
``.pth``/``.pt`` or ``.safetensors``, or the one in the torch hub cache where torch-fidelity looks)
is read with ``weights_only=True`` / safetensors, and a private temporary copy holding only those
tensors is what torch-fidelity loads. The copy (~91 MB) lives in a folder
``repackctl-inception-<pid>-<host>-<random>`` of the system's temporary folder, removed once the
model is built; a kill skips that, so each build first removes the folders of this machine's
killed builds (``files.remove_stale_writer_dirs``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repackctl.crash import crash_point
from repackctl.errors import DataError, WeightsError
from repackctl.files import remove_stale_writer_dirs, sha256_file
from repackctl.temp_names import writer_tag

#: torch-fidelity's registry id of the TF-compatible Inception-V3
EXTRACTOR_NAME = "inception-v3-compat"
#: where torch-fidelity downloads its weights from; the file name is what the hub cache expects
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_FILENAME = INCEPTION_URL.rsplit("/", 1)[-1]
#: torch hub naming convention: the file name carries the first hex digits of its sha256
OFFICIAL_SHA256_PREFIX = "6726825d"

POOL_LAYER = "2048"
LOGITS_LAYER = "logits_unbiased"
#: torch module whose output is TF's ``mixed_6/conv:0``
SPATIAL_MODULE = "Mixed_6d.branch1x1"
SPATIAL_CHANNELS = 7  # ADM keeps spatial[..., :7]
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS  # 2023

FEATURE_KINDS = ("pool", "logits", "spatial")
#: the private copy's folder: ``<prefix><pid>-<host>-<random>`` in the system's temporary folder
PRIVATE_PREFIX = "repackctl-inception-"


def hub_weights_path() -> Path:
    """Where torch-fidelity looks for its weights: ``<torch hub dir>/checkpoints/<url file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME


def _missing_weights_error(searched: list[Path]) -> WeightsError:
    where = ", ".join(str(p) for p in searched)
    return WeightsError(
        f"Inception-V3 weights for FID/IS/KID/precision-recall were not found (looked at {where})",
        hint=f"download {INCEPTION_URL} and save it as {hub_weights_path()} (the torch hub cache "
        f"that torch-fidelity reads; set TORCH_HOME to move it), or pass "
        f"--inception-weights FILE (.pth or .safetensors). Without Inception weights, FD in an "
        f"encoder's feature space works: `repackctl evaluate fid SAMPLES --metrics fd` (and "
        f"`repackctl evaluate stats … --extractor fd` for reference statistics).",
    )


def resolve_inception_weights(weights: str | Path | None = None) -> Path:
    """The weights file to use: ``weights`` if given, else the torch hub cache file; or WeightsError."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise _missing_weights_error([path])
        return path
    path = hub_weights_path()
    if not path.is_file():
        raise _missing_weights_error([path])
    return path


def read_state_dict_safely(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict of tensors without executing pickled code (.safetensors or weights_only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise WeightsError(f"{path} is not a readable safetensors file: {e}") from e
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError for code-bearing pickles, RuntimeError for junk
            raise WeightsError(
                f"refusing to load {path}: it is not a plain tensor file ({type(e).__name__})",
                hint="the file holds pickled objects beyond tensors; convert it to a state dict "
                "of tensors (torch.save(model.state_dict(), ...)) or to .safetensors",
            ) from e
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(
            f"{path} does not hold a state dict (a mapping of names to tensors)",
            hint=f"expected torch-fidelity's Inception state dict ({INCEPTION_FILENAME})",
        )
    return dict(state)


class InceptionExtractor:
    """torch-fidelity's Inception-V3 with pool3, unbiased logits and sFID spatial features."""

    def __init__(
        self,
        weights: str | Path | None = None,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
    ) -> None:
        from torch_fidelity.utils import create_feature_extractor

        self.weights_path = resolve_inception_weights(weights)
        self.weights_sha256 = sha256_file(self.weights_path)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        state = read_state_dict_safely(self.weights_path)
        # torch-fidelity unpickles what it is given: give it a private copy of checked tensors.
        remove_stale_writer_dirs(tempfile.gettempdir(), PRIVATE_PREFIX)  # killed builds' copies
        tmpdir = tempfile.mkdtemp(prefix=f"{PRIVATE_PREFIX}{writer_tag()}-")  # mode 0700
        try:
            private = os.path.join(tmpdir, INCEPTION_FILENAME)
            torch.save(state, private)
            del state
            crash_point("inception-private-copy")  # crash tests: a kill while the model is built
            try:
                self.model = create_feature_extractor(
                    EXTRACTOR_NAME,
                    [POOL_LAYER, LOGITS_LAYER],
                    cuda=False,
                    feature_extractor_weights_path=private,
                    verbose=False,
                )
            except RuntimeError as e:  # load_state_dict: missing/unexpected keys, shapes
                raise WeightsError(
                    f"{self.weights_path} does not fit torch-fidelity's Inception-V3: "
                    f"{str(e).splitlines()[0]}",
                    hint=f"use torch-fidelity's converted TF weights ({INCEPTION_URL})",
                ) from e
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        self.model.to(self.device)
        self._spatial: torch.Tensor | None = None
        self.model.get_submodule(SPATIAL_MODULE).register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
        # TF's mixed_6/conv:0 is NHWC; ADM keeps [..., :7] and flattens (h, w, c).
        x = output[:, :SPATIAL_CHANNELS]  # (B, 7, 17, 17)
        self._spatial = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1).float()  # (B, 2023)

    def info(self) -> dict:
        """JSON-safe description of the extractor (goes into results and stats files)."""
        import torch_fidelity

        return {
            "name": f"torch-fidelity {torch_fidelity.__version__} {EXTRACTOR_NAME}",
            "weights_file": self.weights_path.name,
            "weights_path": str(self.weights_path.resolve()),  # where it was read, absolute
            "weights_sha256": self.weights_sha256,
            "weights_official": self.weights_sha256.startswith(OFFICIAL_SHA256_PREFIX),
            "pool": f"'{POOL_LAYER}' (TF pool_3:0)",
            "logits": f"'{LOGITS_LAYER}' (TF pool_3 @ softmax/weights, no bias)",
            "spatial": f"{SPATIAL_MODULE}[:, :{SPATIAL_CHANNELS}] as (h, w, c) (TF mixed_6/conv:0)",
            "resize": "TF1-compatible bilinear to 299x299 (torch-fidelity)",
        }

    @torch.no_grad()
    def features(self, images: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 (N, H, W, 3) images → {'pool': (N, 2048), 'logits': (N, 1008), 'spatial': (N, 2023)}."""
        x = torch.as_tensor(images)
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise DataError(
                f"Inception features need uint8 (N, H, W, 3) images, got {x.dtype} {tuple(x.shape)}",
                hint="convert model outputs in [-1, 1] with ((x + 1) * 127.5).round().clamp(0, 255)",
            )
        out: dict[str, list[torch.Tensor]] = {k: [] for k in FEATURE_KINDS}
        for start in range(0, x.shape[0], self.batch_size):
            chunk = x[start : start + self.batch_size]  # (b, H, W, 3)
            chunk = chunk.permute(0, 3, 1, 2).contiguous().to(self.device)  # (b, 3, H, W) uint8
            pool, logits = self.model(chunk)  # (b, 2048), (b, 1008)
            out["pool"].append(pool.cpu())
            out["logits"].append(logits.cpu())
            out["spatial"].append(self._spatial.cpu())  # (b, 2023)
            self._spatial = None
        return {k: torch.cat(v) if v else torch.empty(0) for k, v in out.items()}
