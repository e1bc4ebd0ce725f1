"""repackctl.kernels: Triton kernels (forward and backward) against the eager references, and
the references against the model's own code, so neither can drift.

No GPU here: the Triton path runs in Triton's CPU interpreter (``TRITON_INTERPRET=1``) on tiny
fp32 tensors. Triton reads that variable when a function is decorated with ``triton.jit``:
``repackctl.kernels`` decorates its kernels lazily per setting (so ``monkeypatch.setenv`` before
the call is enough for them), but ``triton.language``'s own jitted helpers (``tl.sum``'s combine
function, ``tl.sigmoid``) are decorated when ``triton`` is first imported. So the Triton tests run
in this process only if triton was imported under the interpreter (``TRITON_INTERPRET=1 pytest
tests/kernels``); otherwise ``test_triton_paths_in_a_child_interpreter`` runs them in a child
pytest with the variable set, and ``test_triton_kernels_run_in_the_interpreter`` checks there
that the kernels really were interpreted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from repackctl import kernels as K
from repackctl.errors import ConfigError, RepackError
from repackctl.kernels import _triton
from repackctl.kernels import reference as R
from repackctl.models.layers import RMSNorm, Rope2d, SwiGLU, modulate
from repackctl.models.repa import repa_loss
from repackctl.transport.loss import COS_NORM_FLOOR, velocity_loss

needs_triton = pytest.mark.skipif(not K.available(), reason="triton is not installed")
REPO = Path(__file__).resolve().parents[2]
TRITON_TESTS = "matches_reference or run_in_the_interpreter"  # -k selection of the child run
N_TRITON_TESTS = 16


def _interpreter_ready() -> bool:
    """Whether triton was imported under TRITON_INTERPRET=1 (its own helpers interpretable)."""
    if not K.available():
        return False
    from triton.language import standard
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(standard.sigmoid, InterpretedFunction)


INTERPRETER_READY = _interpreter_ready()
in_interpreter = pytest.mark.skipif(
    not INTERPRETER_READY,
    reason="triton imported without TRITON_INTERPRET=1: "
    "run by test_triton_paths_in_a_child_interpreter",
)


@pytest.fixture
def interp(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _leaf(*shape: int, g: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=g) * scale).requires_grad_()


def _compare(fn_a, fn_b, inputs, *, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    """Same output and same gradient of every input for a random upstream gradient."""
    out_a, out_b = fn_a(*inputs), fn_b(*inputs)
    assert out_a.shape == out_b.shape and out_a.dtype == out_b.dtype
    torch.testing.assert_close(out_a, out_b, rtol=rtol, atol=atol)
    up = torch.randn(out_a.shape, generator=_gen(99))
    grads_a = torch.autograd.grad(out_a, inputs, up)
    grads_b = torch.autograd.grad(out_b, inputs, up)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        assert ga.shape == gb.shape
        torch.testing.assert_close(ga, gb, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------
# Triton (interpreted) vs eager reference: forward and backward, fp32
# ------------------------------------------------------------------------------------------


@in_interpreter
@pytest.mark.parametrize("with_weight", [True, False])
@pytest.mark.parametrize("with_shift", [True, False])
def test_rmsnorm_modulate_triton_matches_reference(interp, with_weight, with_shift):
    g = _gen(1)
    b, t, d = 2, 5, 12  # D not a power of two, T not a multiple of the tile
    x = _leaf(b, t, d, g=g)
    mod = _leaf(b, 3 * d, g=g)  # chunked like adaLN_modulation: non-contiguous (B, D) views
    weight = _leaf(d, g=g) if with_weight else None
    leaves = [x, mod] + ([weight] if with_weight else [])

    def run(backend: str):
        def f(x, mod, *w):
            shift, scale, _ = mod.chunk(3, dim=1)  # 3 × (B, D)
            return K.rmsnorm_modulate(
                x, w[0] if w else None, shift if with_shift else None, scale, backend=backend
            )

        return f

    _compare(run("triton"), run("eager"), leaves)


@in_interpreter
@pytest.mark.parametrize("strided", [False, True])
def test_rope_2d_triton_matches_reference(interp, strided):
    g = _gen(2)
    b, h, gh, gw, dh = 2, 3, 2, 3, 8
    rope = Rope2d(dh, gh, gw)
    t = gh * gw
    if strided:  # q as the model gets it: a permuted view of the qkv projection
        qkv = _leaf(b, t, 3, h, dh, g=g)

        def take(qkv):
            return qkv.permute(2, 0, 3, 1, 4)[1]  # (B, H, T, Dh), non-contiguous

        leaves = [qkv]
    else:
        leaves = [_leaf(b, h, t, dh, g=g)]

        def take(x):
            return x

    def run(backend: str):
        return lambda x: K.rope_2d(take(x), rope.freqs_cos, rope.freqs_sin, backend=backend)

    _compare(run("triton"), run("eager"), leaves)


@in_interpreter
@pytest.mark.parametrize("shape", [(2, 5, 14), (3, 7, 200)])  # the second spans 2 programs
def test_swiglu_gate_triton_matches_reference(interp, shape):
    x12 = _leaf(*shape, g=_gen(3), scale=2.0)
    _compare(
        lambda x: K.swiglu_gate(x, backend="triton"),
        lambda x: K.swiglu_gate(x, backend="eager"),
        [x12],
    )


COSINE_CASES = {
    # name: (shape, dim, norm_floor, reduction, pred scale)
    "repa": ((2, 7, 10), -1, None, "mean", 1.0),
    "repa-tiny-pred": ((2, 7, 10), -1, None, "none", 1e-10),  # |pred| < eps: clamped norm
    "velocity": ((2, 4, 3, 5), 1, COS_NORM_FLOOR, "per_sample", 1.0),
    "velocity-small-pred": ((2, 4, 3, 5), 1, COS_NORM_FLOOR, "none", 1e-3),  # floor active
    "velocity-zero-pred": ((2, 4, 3, 5), 1, COS_NORM_FLOOR, "mean", 0.0),  # adaLN-Zero start
    "frozen-target": ((2, 7, 10), -1, None, "mean", 1.0),  # target without grad (as in REPA)
}


@in_interpreter
@pytest.mark.parametrize("case", sorted(COSINE_CASES))
def test_cosine_loss_triton_matches_reference(interp, case):
    shape, dim, floor, reduction, scale = COSINE_CASES[case]
    g = _gen(4)
    pred, target = _leaf(*shape, g=g, scale=scale), _leaf(*shape, g=g)
    if case == "frozen-target":
        target = target.detach()
    leaves = [pred] if case == "frozen-target" else [pred, target]
    kw = {"dim": dim, "norm_floor": floor, "reduction": reduction}
    # Gradients reach ~1/eps when a norm is clamped: compare relatively.
    _compare(
        lambda p, t=target: K.cosine_loss(p, t, backend="triton", **kw),
        lambda p, t=target: K.cosine_loss(p, t, backend="eager", **kw),
        leaves,
        rtol=1e-4,
        atol=1e-5,
    )


@in_interpreter
def test_bf16_triton_matches_reference_within_rounding(interp):
    """bf16 in, bf16 out, bf16 gradients; the kernels round once where eager rounds per op."""
    from repackctl.bench.common import BenchContext
    from repackctl.bench.fused import _cases

    for op, (fn, inputs) in _cases(BenchContext(size="tiny")).items():
        assert all(x.dtype == torch.bfloat16 for x in inputs), op
        _compare(
            lambda *a, fn=fn: fn(*a, backend="triton"),
            lambda *a, fn=fn: fn(*a, backend="eager"),
            inputs,
            rtol=3e-2,
            atol=3e-2,
        )


@in_interpreter
def test_triton_kernels_run_in_the_interpreter(interp):
    from triton.runtime.interpreter import InterpretedFunction

    from repackctl.kernels import cosine, norm_modulate, rope, swiglu

    x = torch.randn(2, 3, 4)
    K.rmsnorm_modulate(x, None, None, torch.zeros(2, 4), backend="triton")
    K.rope_2d(torch.randn(1, 1, 2, 4), torch.ones(2, 4), torch.zeros(2, 4), backend="triton")
    K.swiglu_gate(x, backend="triton")
    K.cosine_loss(x, x + 1, backend="triton")
    for fn in (norm_modulate._fwd_kernel, rope._rope_kernel, swiglu._gate_kernel,
               cosine._cos_kernel):  # fmt: skip
        assert isinstance(_triton._JITTED[(fn, True)], InterpretedFunction), fn.__name__


@pytest.mark.slow
@needs_triton
@pytest.mark.skipif(INTERPRETER_READY, reason="the Triton tests already run in this process")
def test_triton_paths_in_a_child_interpreter(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", TRITON_TESTS,
         str(Path(__file__).resolve())],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=env,
    )  # fmt: skip
    report = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) == N_TRITON_TESTS, report
    assert "skipped" not in proc.stdout.splitlines()[-1], report


# ------------------------------------------------------------------------------------------
# Eager references vs the model's own code (bitwise: same ops in the same order)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_shift", [True, False])
def test_reference_rmsnorm_modulate_is_the_model_code(dtype, with_shift):
    g = _gen(5)
    b, t, d = 2, 6, 16
    norm = RMSNorm(d).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(d, generator=g))
    x = torch.randn(b, t, d, generator=g).to(dtype)
    shift = torch.randn(b, d, generator=g).to(dtype) if with_shift else None
    scale = torch.randn(b, d, generator=g).to(dtype)
    expected = modulate(norm(x), shift, scale)  # what DiTBlock / FinalLayer compute
    got = R.rmsnorm_modulate(x, norm.weight, shift, scale, norm.eps)
    assert got.dtype == expected.dtype
    assert torch.equal(got, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_rope_is_the_model_code(dtype):
    rope = Rope2d(8, 3, 2)
    x = torch.randn(2, 2, 6, 8, generator=_gen(6)).to(dtype)
    assert torch.equal(R.rope_2d(x, rope.freqs_cos, rope.freqs_sin), rope(x))
    assert torch.equal(R.rotate_pairs(x), Rope2d.rotate_pairs(x))


def test_reference_swiglu_gate_is_the_model_code():
    torch.manual_seed(0)
    mlp = SwiGLU(8, 12)
    x = torch.randn(2, 5, 8, generator=_gen(7))
    assert torch.equal(mlp.w3(R.swiglu_gate(mlp.w12(x))), mlp(x))


def test_reference_cosine_is_repa_loss():
    g = _gen(8)
    pred, target = _leaf(2, 9, 6, g=g), _leaf(2, 9, 6, g=g)
    got = R.cosine_loss(pred, target) - 1  # repa_loss is −cos, the reference 1 − cos
    expected = repa_loss(pred, target)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-7)
    gp, gt = torch.autograd.grad(got, [pred, target])
    ep, et = torch.autograd.grad(expected, [pred, target])
    assert torch.equal(gp, ep) and torch.equal(gt, et)


@pytest.mark.parametrize("pred_scale", [1.0, 1e-3, 0.0])  # 0: the adaLN-Zero first step
def test_reference_cosine_is_velocity_loss_term(pred_scale):
    g = _gen(9)
    pred, target = _leaf(3, 4, 2, 5, g=g, scale=pred_scale), _leaf(3, 4, 2, 5, g=g)
    got = R.cosine_loss(pred, target, dim=1, norm_floor=COS_NORM_FLOOR, reduction="per_sample")
    expected = velocity_loss(pred, target, cos_weight=1.0).cos  # (B,)
    assert torch.equal(got, expected)
    up = torch.randn(3, generator=g)
    for a, b in zip(torch.autograd.grad(got, [pred, target], up),
                    torch.autograd.grad(expected, [pred, target], up), strict=True):  # fmt: skip
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------
# Backend selection and errors
# ------------------------------------------------------------------------------------------


def test_triton_backend_on_cpu_without_interpreter_is_a_clean_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(2, 3, 4)
    calls = [
        lambda: K.rmsnorm_modulate(x, None, None, torch.zeros(2, 4), backend="triton"),
        lambda: K.rope_2d(x[None], torch.ones(3, 4), torch.zeros(3, 4), backend="triton"),
        lambda: K.swiglu_gate(x, backend="triton"),
        lambda: K.cosine_loss(x, x, backend="triton"),
    ]
    for call in calls:
        with pytest.raises(RepackError) as info:
            call()
        assert isinstance(info.value, ConfigError)
        assert info.value.hint and "eager" in info.value.hint
        msg = info.value.message
        assert "cuda" in msg.lower() or "not installed" in msg


def test_resolve_backend(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert K.resolve_backend("auto", "cpu") == "eager"
    assert K.resolve_backend("eager", "cuda") == "eager"
    assert K.resolve_backend("auto", "cuda") == ("triton" if K.available() else "eager")
    with pytest.raises(ConfigError, match="unknown kernel backend"):
        K.resolve_backend("cuda", "cpu")
    if K.available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert K.resolve_backend("triton", "cpu") == "triton"


def test_eager_auto_on_cpu_never_launches_triton(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(2, 3, 4)
    expected = R.swiglu_gate(x)
    assert torch.equal(K.swiglu_gate(x), expected)  # "auto" on CPU → eager, no error
    with pytest.raises(ConfigError, match="differ"):
        K.cosine_loss(x, x[:1])
    with pytest.raises(ConfigError, match="reduction"):
        K.cosine_loss(x, x, reduction="sum")


def test_import_and_eager_work_without_triton(tmp_path):
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, repackctl.kernels as K\n"
        "from repackctl.errors import ConfigError\n"
        "assert not K.available()\n"
        "x = torch.randn(2, 3, 4)\n"
        "assert K.swiglu_gate(x, backend='auto').shape == (2, 3, 2)\n"
        "assert K.resolve_backend('auto', 'cuda') == 'eager'\n"
        "try:\n"
        "    K.swiglu_gate(x, backend='triton')\n"
        "except ConfigError as e:\n"
        "    assert 'not installed' in e.message, e.message\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
        "import repackctl.kernels.cosine, repackctl.kernels.norm_modulate\n"
        "import repackctl.kernels.rope, repackctl.kernels.swiglu\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_fused_bench_skips_cleanly_on_cpu():
    from repackctl.bench.common import BenchContext
    from repackctl.bench.fused import fused_rows

    rows = fused_rows(BenchContext(size="tiny", device=torch.device("cpu")))
    assert len(rows) == 1 and rows[0].median_s is None
    assert "needs CUDA" in rows[0].note
