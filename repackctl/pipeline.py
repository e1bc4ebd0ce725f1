"""The pipeline runner shared by `repackctl demo` and the reproduction study.

Both run the stages of the method (extract → pack → DiT → refine → sample → evaluate) into one
folder that holds its own cache, runs and samples, through the same library functions the CLI
commands call. :class:`Pipeline` is that common part: the settings base of the folder, timed and
logged stages, the cache rows (images, tokens) of a split, and one call per stage. Every stage is
resumable, so a second run reuses what is complete.

The demos (``repackctl.demo``, ``repackctl.demo_t2i``) and the studies
(``benchmarks/reproduce_small.py``, ``benchmarks/t2i_repa.py``) only choose sizes, arms and what
to report. The text-to-image stages (captions → train t2i → sample from prompts → adherence) are
here too, so that the t2i demo and the t2i study share them.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from repackctl.errors import ConfigError, RepackError, name_items
from repackctl.files import TMP_PREFIX, die_with_parent, write_json_atomic
from repackctl.paths import PROTOCOL_JSON, SAMPLES_NPZ, SETTINGS_JSON
from repackctl.progress import ProgressFactory, null_progress
from repackctl.run_files import RUN_PATH, STARTING_PATH, foreign_paths
from repackctl.run_lock import lock_holder, lock_pipeline
from repackctl.runs import finish_removing, is_run, move_and_delete, removing_folder
from repackctl.settings import ResolvedSettings, Settings, resolve_settings

if TYPE_CHECKING:
    from repackctl.cache.store import DatasetEntry
    from repackctl.dit.run import DiTTrainResult
    from repackctl.dit.t2i_run import T2ITrainResult
    from repackctl.evaluate.adherence import AdherenceResult
    from repackctl.pack.load import PackHandle

__all__ = [
    "CACHE_DIR",
    "MARKER",
    "PLAN_FILE",
    "SAMPLES_DIR",
    "STUDY_RESTART",
    "Pipeline",
    "RunReport",
    "StageRecord",
    "claim_folder",
    "claim_demo_folder",
    "demo_command",
    "folder_made_by",
    "keep_plan",
    "one_per_class",
    "read_plan",
    "scored_samples",
    "solo_threads",
    "unknown_paths",
]

#: The file that marks a folder as made by a pipeline run (``{"made_by": kind}``).
MARKER = ".repackctl-pipeline.json"
#: The pipeline's cache and samples folders inside its folder; every other folder it owns is a
#: training run (the runs root is the folder itself).
CACHE_DIR, SAMPLES_DIR = "cache", "samples"
#: The file in which a pipeline folder records the plan (sizes, steps, seed) it was started with.
PLAN_FILE = "plan.json"
#: How to start a study's folder over (:func:`keep_plan`'s ``restart``): the studies delete nothing.
STUDY_RESTART = "move this folder's results away to start over in it (the study deletes nothing)"

# What the stages write below the samples folder (one folder per sample set, marked by its
# settings file), as paths relative to it; below a run folder: ``run_files.RUN_PATH``.
_SAMPLE_FILE = re.compile(
    r"[^/]+/(\.sample-settings\.json|protocol\.json|samples\.npz|latents\.npy|grid\.png"
    r"|prompts\.txt|adherence\.json|\d{6}\.png|latents/\d{6}\.npy|latents/written-\d{6}-\d{6}\.json"
    r"|\.sample\.lock)"
)


def solo_threads() -> int:
    """Torch threads for a stage that runs alone: ``OMP_NUM_THREADS`` if set, else ≤ 2."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    return int(given) if given.isdigit() and int(given) > 0 else min(2, os.cpu_count() or 1)


@dataclass
class StageRecord:
    """One stage of a pipeline run: how long it took and whether earlier work was reused."""

    name: str
    seconds: float
    reused: bool
    detail: str = ""


@dataclass
class RunReport:
    """What a pipeline run (the demo, the text-to-image demo) produced."""

    out: Path
    stages: list[StageRecord] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)


def one_per_class(images: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """The first image of each class present, in class order (for sample strips)."""
    picks = [int(np.flatnonzero(labels == c)[0]) for c in range(classes) if (labels == c).any()]
    return images[picks]


def claim_folder(
    out: Path, kind: str, owned: Iterable[str], fresh: bool, log: Callable[[str], None] = print
) -> None:
    """Make ``out`` the folder of pipeline ``kind`` (e.g. ``"demo"``), refusing one it did not make.

    A missing or empty folder is claimed: the marker file :data:`MARKER` records it. A folder
    holding ``kind``'s marker is reused; ``fresh`` then removes the entries named in ``owned``
    (what the pipeline writes there) and keeps anything else, but only when every path below
    them is one the pipeline writes (:func:`unknown_paths`): otherwise it is refused, listing
    the others, and nothing is removed. A non-empty folder without that marker is refused, so a
    pipeline never writes into, or deletes from, a folder it did not make.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"{out} is a file, not a folder (`repackctl {kind}` writes a folder of results)",
            "choose a new or empty folder with --out (the file was not touched)",
        )
    marker = out / MARKER
    made_by = folder_made_by(out)
    if out.exists() and made_by != kind and any(_not_the_marker(out)):
        raise ConfigError(
            f"{out} is not empty and was not made by `repackctl {kind}`",
            "choose a new or empty folder with --out (nothing in this one was touched)",
        )
    out.mkdir(parents=True, exist_ok=True)
    # one process per pipeline folder, taken before anything changes
    lock_pipeline(out, f"repackctl {kind}")
    if fresh and made_by == kind:
        _remove_owned(out, kind, list(owned), log)
    if made_by != kind:  # atomic: a marker cut short by a kill locked the folder for good
        write_json_atomic(marker, {"made_by": kind})


def folder_made_by(out: Path) -> str | None:
    """The pipeline that made ``out`` (``"demo"``, ``"demo --t2i"``), as its marker records it;
    None without a readable marker."""
    try:
        made_by = json.loads((out / MARKER).read_text()).get("made_by")
    except (OSError, ValueError, AttributeError):
        return None
    return made_by if isinstance(made_by, str) else None


def _not_the_marker(out: Path) -> list[Path]:
    """What ``out`` holds besides the temporaries of its marker (``.tmp-<marker>.<pid>``): a
    start killed while it wrote the marker left one, in a folder that is still empty."""
    prefix = f"{TMP_PREFIX}{MARKER}."
    return [p for p in out.iterdir() if not (p.name.startswith(prefix) and p.is_file())]


def demo_command(plan: Any, *flags: str) -> str:
    """The command of the demo of ``plan`` (a ``DemoPlan`` or ``T2IDemoPlan``: its ``COMMAND``)
    with ``flags``, and the flags that name that demo: its ``--out`` (none for the plan's
    ``DEFAULT_OUT``), and ``--quick``, ``--seed`` and ``--pca-arm`` where it was run with them.

    A bare `repackctl demo` in a hint or in the report works on ``runs/demo`` with the full plan,
    whatever folder it was written for: ``--fresh`` there deleted that other demo's results and
    left this one as it was, and a resume ran a second, full demo."""
    parts = [plan.COMMAND, *flags]
    if Path(plan.out).resolve() != Path(plan.DEFAULT_OUT).resolve():
        parts += ["--out", shlex.quote(str(plan.out))]
    if plan.record() == replace(type(plan).quick(plan.out), seed=plan.seed).record():
        parts.append("--quick")
    if plan.seed:
        parts += ["--seed", str(plan.seed)]
    if getattr(plan, "pca_arm", False):
        parts.append("--pca-arm")
    return " ".join(parts)


def claim_demo_folder(
    plan: Any, kind: str, owned: Iterable[str], fresh: bool, log: Callable[[str], None]
) -> None:
    """A demo's start: its folder (``plan.out``) claimed (:func:`claim_folder`), then its plan
    recorded or checked against the one the folder was started with (:func:`keep_plan`;
    ``--fresh`` starts over, named with the demo's own ``--out`` and flags: :func:`demo_command`).
    """
    claim_folder(plan.out, kind, owned, fresh, log)
    restart = (
        f"run `{demo_command(plan, '--fresh')}` to start over (it removes only what the demo wrote)"
    )
    started = functools.partial(started_command, plan)
    keep_plan(plan.out, plan.COMMAND, plan.record(), owned, restart, started)


def started_command(plan: Any, recorded: dict[str, Any]) -> str | None:
    """The command that started the demo whose plan ``recorded`` holds, in ``plan.out``: its
    full or ``--quick`` plan with the recorded seed (:func:`demo_command`); None for a plan of
    neither (another version's)."""
    seed = recorded.get("seed", 0)
    for known in (type(plan)(out=plan.out), type(plan).quick(plan.out)):
        known = replace(known, seed=seed) if isinstance(seed, int) else known
        if json.loads(json.dumps(known.record())) == recorded:
            return demo_command(known)
    return None


def keep_plan(
    out: Path,
    command: str,
    plan: dict[str, Any],
    owned: Iterable[str],
    restart: str,
    started: Callable[[dict[str, Any]], str | None] | None = None,
) -> None:
    """Record ``plan`` (JSON values: what decides the results) in ``out/plan.json``, or refuse
    to go on in a folder that ``command`` (``repackctl demo``) started with another plan.

    Without the record a rerun with other sizes (``--quick`` after a full run, another
    ``--seed``, or a version whose default plan changed) would reuse the stages that match and
    redo the others, mixing two plans in one report. A folder holding any of ``owned`` (the
    command's results) but no record predates it and is refused too, since its plan is
    unknown; ``restart`` says how to start over. Checked before any stage runs, so a refusal
    writes nothing.
    """
    path = out / PLAN_FILE
    wanted = json.loads(json.dumps(plan))
    if not path.is_file():
        started = [name for name in owned if name != PLAN_FILE and (out / name).exists()]
        if started:
            raise ConfigError(
                f"{out} holds results of `{command}` ({name_items(started)}) but no "
                f"{PLAN_FILE}: they were made before the plan was recorded, so it is unknown",
                f"{restart}, or choose a new folder with --out",
            )
        write_json_atomic(path, wanted)
        return
    recorded = read_plan(out, f"{restart}, or choose a new folder with --out")
    changed = [
        f"{k} {recorded.get(k, '(none)')} → {wanted.get(k, '(none)')}"
        for k in sorted(set(recorded) | set(wanted))
        if recorded.get(k) != wanted.get(k)
    ]
    if changed:
        again = started(recorded) if started is not None else None  # the command, where known
        flags = f"go on with `{again}`" if again else "give the flags it was started with"
        raise ConfigError(
            f"{out} holds a `{command}` started with another plan: {name_items(changed)}",
            f"{flags}, {restart}, or choose a new folder with --out",
        )


def read_plan(out: Path, hint: str) -> dict[str, Any]:
    """The plan recorded in ``out`` (:func:`keep_plan`), or an error naming what is missing,
    with ``hint``."""
    path = out / PLAN_FILE
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        plan = f"{type(e).__name__}"
    if not isinstance(plan, dict):
        why = plan if isinstance(plan, str) else "not a JSON object"
        raise ConfigError(f"{path} holds no plan ({why})", hint)
    return plan


def _remove_owned(out: Path, kind: str, owned: list[str], log: Callable[[str], None]) -> None:
    """``--fresh``: remove the ``owned`` entries of ``out``, and what an interrupted ``--fresh``
    left of them (``.removing-<name>``), or nothing at all when any of them holds a path the
    pipeline did not write (the same rules for the leftovers as for the entries)."""
    _refuse_trained_runs(out, owned)
    unknown = [
        p for name in owned for p in [*_leftover_unknown(out, name), *unknown_paths(out, name)]
    ]
    if unknown:
        raise ConfigError(
            f"--fresh would delete {len(unknown)} path(s) that `repackctl {kind}` did not write: "
            f"{name_items(unknown)}; nothing was removed",
            f"move them out of {out} (or choose a new folder with --out), then run it again",
        )
    _finish_removals(out, owned, log)
    for name in owned:
        path = out / name
        if path.is_dir():
            log(f"--fresh: removing {path}")
            move_and_delete(path, f"fresh-{name}")  # killed: never half a run at `name`
        elif path.exists():
            log(f"--fresh: removing {path}")
            path.unlink()


def _is_folder(name: str) -> bool:
    """Whether the owned entry ``name`` is a folder of the pipeline (its cache, its samples, a
    run), not one of its files (``report.md``, ``plan.json``, ``refine.log``: a name with a
    suffix)."""
    return name in (CACHE_DIR, SAMPLES_DIR) or not Path(name).suffix


def _finish_removals(out: Path, owned: list[str], log: Callable[[str], None]) -> None:
    """Delete what a ``--fresh`` killed while it deleted left (``.removing-<name>`` of an owned
    folder, checked by :func:`_leftover_unknown` to hold only what the pipeline writes): before,
    the half-deleted run was no longer a run, and every later ``--fresh`` refused it as a folder
    the pipeline did not write."""
    for name in filter(_is_folder, owned):
        if finish_removing(out / name, _leftover_check(name)):
            log(f"--fresh: removed {removing_folder(out / name)} (left by an interrupted --fresh)")


def _leftover_check(name: str) -> Callable[[Path], list[Path]]:
    """What in the rest of the owned folder ``name`` that a killed ``--fresh`` left is not the
    pipeline's, by the rules for the live folder (:func:`unknown_paths`) less the metadata a
    deletion cut short may have taken: in the cache's, a name the cache never writes
    (``repackctl.cache.ownership.foreign_in_rest``); in the samples', a file no sample set
    writes, settings file or not; in a run's, a file a run does not hold
    (``run_files.foreign_paths``, which reads a ``.removing-<name>`` folder as such a rest)."""
    if name == CACHE_DIR:
        from repackctl.cache.ownership import foreign_in_rest

        return lambda rest: [bad] if (bad := foreign_in_rest(rest)) is not None else []
    if name == SAMPLES_DIR:
        return lambda rest: foreign_paths(rest, _SAMPLE_FILE)
    return foreign_paths  # RUN_PATH


def _leftover_unknown(out: Path, name: str) -> list[Path]:
    """The paths in ``.removing-<name>`` beside ``out/name`` (the rest of an interrupted
    ``--fresh``) that the pipeline did not write (:func:`_leftover_check`). A file, a link or
    anything else by that name is named when the folder ``name`` would be moved onto it. The
    pipeline deletes its files in place: a ``.removing-<file name>`` is never its own, and is
    left alone."""
    if not _is_folder(name):
        return []
    rest = removing_folder(out / name)
    if rest.is_dir() and not rest.is_symlink():
        return _leftover_check(name)(rest)
    in_the_way = rest.exists() or rest.is_symlink()
    return [rest] if in_the_way and (out / name).is_dir() else []


def _refuse_trained_runs(out: Path, owned: list[str]) -> None:
    """``--fresh`` removes no run that another process trains now (``repackctl.run_lock``: the
    same pipeline still running in this folder)."""
    for name in owned:
        holder = lock_holder(out / name) if (out / name).is_dir() else None
        if holder is not None:
            raise ConfigError(
                f"--fresh would delete the run {out / name}, which another process is training "
                f"({holder.describe()}); nothing was removed",
                "wait for it to finish, or stop it, then run it again (or choose a new folder "
                "with --out)",
            )


def unknown_paths(out: Path, name: str) -> list[Path]:
    """The paths at or below ``out/name``, an entry the pipeline writes, that it did not write.

    The rule, by what the entry is: a plain file is one of the pipeline's own outputs
    (``report.md``, ``metrics.json``, a log); the cache folder :data:`CACHE_DIR` holds only what
    the cache writes (``repackctl.cache.ownership``); in the samples folder :data:`SAMPLES_DIR`
    every file is one a sample set writes (``000000.png``, ``samples.npz``, ``protocol.json`` …)
    inside a folder marked by its settings file; any other folder is a run of the training
    engine (``repackctl.runs.is_run``) holding only the engine's files (config, logs, curves,
    TensorBoard events, image grids, checkpoints). The temporaries of those files that
    repackctl's writers leave count as its own. A link or any other path is unknown, and so is a file where the pipeline writes a
    folder or a folder where it writes a file (:func:`_is_folder`); so is a folder that is not a
    run, unless it holds only what a start killed before the engine's config.json leaves
    (``STARTING_PATH``).
    """
    path = out / name
    if path.is_symlink() or (path.exists() and not (path.is_file() or path.is_dir())):
        return [path]
    if not path.exists():
        return []
    if path.is_dir() != _is_folder(name):  # a file where it writes a folder, or the reverse
        return [path]
    if path.is_file():
        return []
    if name == CACHE_DIR:
        from repackctl.cache.ownership import foreign_path

        bad = foreign_path(path)
        return [] if bad is None else [bad]
    if name == SAMPLES_DIR:
        return foreign_paths(path, _SAMPLE_FILE, marker=SETTINGS_JSON)
    if not is_run(path):  # a start killed before config.json leaves its log, PCA, lock
        return [path] if foreign_paths(path, STARTING_PATH) else []
    return foreign_paths(path, RUN_PATH)


def scored_samples(folder: Path) -> dict[str, Any]:
    """What the scores of the sample set in ``folder`` were computed from: its ``samples.npz``
    and the checkpoint (and refiner) that made it, each with its sha256. The checkpoint's and
    refiner's are those the set's protocol card recorded when it was sampled (of the weights
    file used); a reused set matches them, since sampling refuses a folder made from others."""
    from repackctl.files import sha256_file_cached

    card = json.loads((folder / PROTOCOL_JSON).read_text())
    npz = folder / SAMPLES_NPZ
    return {
        "samples": str(npz),
        "samples_sha256": sha256_file_cached(npz),
        "checkpoint": card["checkpoint"],
        "checkpoint_sha256": card["checkpoint_sha256"],
        "weights": card.get("weights"),
        "refiner": card.get("refiner"),
    }


class Pipeline:
    """The stages of one run in ``out``: its cache (``out/cache``), runs and samples folders."""

    def __init__(
        self,
        out: Path,
        *,
        runs: Path | None = None,
        samples: Path | None = None,
        seed: int = 0,
        device: str = "cpu",
        num_workers: int = 0,
        progress: ProgressFactory = null_progress,
        log: Callable[[str], None] = print,
    ) -> None:
        self.out = Path(out)
        self.runs = Path(runs) if runs is not None else self.out
        self.samples = Path(samples) if samples is not None else self.out / SAMPLES_DIR
        self.seed = seed
        self.device = device
        self.num_workers = num_workers
        self.progress = progress
        self.log = log
        self.stages: list[StageRecord] = []
        self.entries: dict[str, str] = {}  # split → cache entry name
        self.features = ""  # the feature group of the extracted encoder
        self.side: dict[str, tuple[subprocess.Popen, Path, float]] = {}  # name → (proc, log, t0)

    # ---- settings and stages --------------------------------------------------------------------
    def settings(self, flags: dict[str, Any] | None = None, **more: Any) -> Settings:
        """Settings of one stage: this run's folders, seed and device plus dotted ``flags``."""
        return self.resolved(flags, **more).settings

    def resolved(self, flags: dict[str, Any] | None = None, **more: Any) -> ResolvedSettings:
        """:meth:`settings` with their sources (the record a run stores for its resumes)."""
        base = {
            "cache": str(self.out / CACHE_DIR),
            "runs": str(self.runs),
            "samples": str(self.samples),
            "seed": self.seed,
            "device": self.device,
            "num_workers": self.num_workers,
        }
        return resolve_settings(flags=base | (flags or {}) | more, environ={})

    def stage(
        self, name: str, fn: Callable[[], tuple[bool, str] | None], threads: int | None = None
    ) -> StageRecord:
        """Run ``fn`` (which returns ``(reused, detail)`` or nothing) as a timed, logged stage,
        on ``threads`` torch CPU threads when given (the caller's count is restored after)."""
        before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        t0 = time.perf_counter()
        try:
            reused, detail = fn() or (False, "")
        finally:
            torch.set_num_threads(before)
        rec = StageRecord(name, time.perf_counter() - t0, reused, detail)
        self.stages.append(rec)
        state = "reused (already complete)" if reused else "done"
        self.log(f"[{name}] {state} in {rec.seconds:.1f} s" + (f" — {detail}" if detail else ""))
        return rec

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def last_step(self, run: str) -> int:
        """The step of run ``run``'s newest good checkpoint; -1 when it has none."""
        from repackctl.train.checkpoint import latest_checkpoint, read_state

        run_dir = self.runs / run
        ckpt = latest_checkpoint(run_dir) if run_dir.is_dir() else None
        return -1 if ckpt is None else int(read_state(ckpt).get("step", -1))

    def finished(self, run: str, steps: int) -> bool:
        """Whether run ``run`` already holds a good checkpoint at ``steps`` or later."""
        return self.last_step(run) >= steps

    # ---- a stage in a second process ------------------------------------------------------------
    def start_side(self, name: str, args: list[str], threads: int = 1) -> None:
        """``repackctl ARGS`` in a second process (log ``out/<name>.log``) while this one works:
        on a 2-core machine each process gets a core."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("REPACKCTL_")}
        env |= {"OMP_NUM_THREADS": str(threads), "REPACKCTL_NUM_WORKERS": "0", "COLUMNS": "100"}
        log_path = self.out / f"{name}.log"
        with open(log_path, "w") as log:
            cmd = [sys.executable, "-m", "repackctl", *args]
            # killed with this process: an orphan kept training and held the run's lock, so
            # the rerun of a killed demo failed on it
            parent = functools.partial(die_with_parent, os.getpid())
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=parent
            )
        self.side[name] = (proc, log_path, time.time())  # wall clock: compared with the log's mtime
        self.log(f"[{name}] started in a second process (log: {log_path})")

    def wait_side(self, name: str, error: type[RepackError], rerun: str) -> float:
        """Wait for side process ``name``; its own run time, or ``error`` with its log's last lines.

        The run time ends at the log's last write (the command's closing summary), not when it
        was waited for: a side process that finished early must not be reported as slow.
        """
        proc, log_path, t0 = self.side[name]
        if proc.wait() != 0:
            tail = log_path.read_text().strip().splitlines()[-5:]
            raise error(f"{name} failed: " + " | ".join(tail), f"see {log_path}; rerun {rerun}")
        return max(log_path.stat().st_mtime - t0, 0.0)

    def kill_sides(self) -> None:
        """Stop every side process (this process is failing or was interrupted)."""
        for proc, _, _ in self.side.values():
            proc.kill()

    # ---- data -----------------------------------------------------------------------------------
    def extract(self, split: str, num: int, resolution: int, **flags: Any) -> tuple[bool, str]:
        """``repackctl extract`` of the built-in ``split``; remembers its entry and features."""
        from repackctl.extract import run_extract

        keys = {"split": split, "num": num, "resolution": resolution} | flags
        r = run_extract(self.settings({f"extract.{k}": v for k, v in keys.items()}), self.progress)
        self.entries[split] = r.entry
        self.features = r.features
        return r.written == 0, f"{r.entry}: {r.n} images, features {r.tokens_shape}"

    def entry(self, split: str) -> DatasetEntry:
        """The cache entry of an extracted split."""
        from repackctl.cache.store import DatasetEntry

        return DatasetEntry.open(str(self.out / CACHE_DIR), self.entries[split])

    def images(self, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` valid cached images (uint8 (n, R, R, 3)) of a split and their labels."""
        entry = self.entry(split)
        idx = entry.valid_indices()[:n]
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        return np.asarray(entry.images[lo:hi])[idx - lo], np.asarray(
            entry.labels[lo:hi], dtype=np.int64
        )[idx - lo]

    def tokens(self, split: str, n: int) -> np.ndarray:
        """Encoder tokens (n, T, C) float32 of the first ``n`` valid, un-mirrored images."""
        entry = self.entry(split)
        idx = entry.valid_indices()[:n]
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        tokens = entry.features(self.features)["tokens"][lo:hi]
        return np.asarray(tokens[idx - lo, 0], dtype=np.float32)

    @property
    def num_classes(self) -> int:
        return int(self.entry("train").attrs.get("num_classes") or 0) or 10

    # ---- stages ---------------------------------------------------------------------------------
    def pack_train(self, run: str, steps: int, **flags: Any) -> tuple[bool, str]:
        """``repackctl pack train`` into ``run`` on the train split (``flags``: pack settings)."""
        from repackctl.pack.task import run_pack_train

        reused = self.finished(run, steps)
        keys = {"run": run, "entry": self.entries["train"], "features": self.features}
        keys |= {"steps": steps} | flags
        run_pack_train(self.settings({f"pack.{k}": v for k, v in keys.items()}), self.progress)
        return reused, f"{keys.get('method', 'repack')} autoencoder, {steps} steps → {run}"

    def pack_encode(self, run: str) -> tuple[bool, str, str]:
        """``repackctl pack encode`` of ``run``: ``(reused, detail, latent id)``."""
        from repackctl.pack.encode import run_pack_encode

        r = run_pack_encode(self.settings({"pack.run": run}), self.progress)
        detail = f"latents {r.latent_shape} in {r.entry}/latents/{r.pack_id}"
        return r.written == 0, detail, r.pack_id

    def pack_handle(self, run: str) -> PackHandle:
        """The loaded pack run ``run`` (model + metadata)."""
        from repackctl.pack.load import load_pack

        return load_pack(run, runs=str(self.runs))

    @torch.no_grad()
    def reconstruct(self, pack_run: str, split: str, n: int, batch: int = 100) -> tuple:
        """Posterior-mean latents of the first ``n`` images of ``split`` and their decodings:
        ``(latents (n, d, h, w), decoded float (n, 3, R, R) in [-1, 1])``."""
        model = self.pack_handle(pack_run).model
        tokens = torch.from_numpy(self.tokens(split, n))  # (n, T, C)
        zs, decoded = [], []
        for i in range(0, len(tokens), batch):
            z = model.encode(tokens[i : i + batch]).mode()  # (b, d, h, w) raw packed latent
            zs.append(z)
            decoded.append(model.decode(z).clamp(-1, 1))  # (b, 3, R, R)
        return torch.cat(zs), torch.cat(decoded)

    def train_recorded(self, train_fn: Callable[..., Any], flags: dict[str, Any]) -> Any:
        """``train_fn(settings, progress, config_record=...)`` with ``flags`` resolved: with its
        settings record, a resume compares the given values as the CLI's does."""
        resolved = self.resolved(flags)
        return train_fn(resolved.settings, self.progress, config_record=resolved.to_dict())

    def dit_train(self, name: str, steps: int, **flags: Any) -> DiTTrainResult:
        """``repackctl train dit`` as run ``name`` (``flags``: dit settings); its result."""
        from repackctl.dit.run import train_dit

        keys = {"name": name, "steps": steps} | flags
        return self.train_recorded(train_dit, {f"dit.{k}": v for k, v in keys.items()})

    def refine_train(self, name: str, pack_run: str, steps: int, **flags: Any) -> None:
        """``repackctl refine train`` of ``pack_run`` as run ``name``."""
        from repackctl.refine.task import run_refine_train

        keys = {"name": name, "pack_run": pack_run, "steps": steps} | flags
        self.train_recorded(run_refine_train, {f"refine.{k}": v for k, v in keys.items()})

    def sample(self, run: str, **flags: Any) -> tuple[np.ndarray, np.ndarray, Path, bool]:
        """``repackctl sample`` of DiT run ``run``: ``(images uint8, labels, folder, reused)``."""
        from repackctl.metrics.adm import read_samples_npz
        from repackctl.sample.run import run_sample

        keys = {"run": run} | flags
        res = run_sample(self.settings({f"sample.{k}": v for k, v in keys.items()}), self.progress)
        images, labels = read_samples_npz(res.out_dir / "samples.npz")
        return images, labels, res.out_dir, res.written == 0

    # ---- text-to-image --------------------------------------------------------------------------
    def captions(self, split: str, **flags: Any) -> tuple[bool, str]:
        """``repackctl captions`` of an extracted split (``flags``: captions settings)."""
        from repackctl.captions_cache import run_captions

        keys = {"entry": self.entries[split]} | flags
        r = run_captions(
            self.settings({f"captions.{k}": v for k, v in keys.items()}), self.progress
        )
        detail = f"{r.captions} captions of {r.n} images → text/{r.text_id}"
        return r.written == 0, detail

    def t2i_train(self, name: str, steps: int, **flags: Any) -> T2ITrainResult:
        """``repackctl train t2i`` as run ``name`` (``flags``: t2i settings); its result."""
        from repackctl.dit.t2i_run import train_t2i

        keys = {"name": name, "steps": steps} | flags
        return self.train_recorded(train_t2i, {f"t2i.{k}": v for k, v in keys.items()})

    def sample_prompts(
        self, run: str, prompts: list[str] | None = None, **flags: Any
    ) -> tuple[np.ndarray, list[str], Path, bool]:
        """``repackctl sample`` of t2i run ``run`` on ``prompts`` (sample i gets prompt i mod P;
        none = the val captions): ``(images uint8 (N, H, W, 3), prompt of each, folder, reused)``.
        """
        import json

        from repackctl.metrics.adm import read_samples_npz
        from repackctl.paths import PROTOCOL_JSON
        from repackctl.sample.run import run_sample

        keys = {"run": run} | flags | ({"prompt": list(prompts)} if prompts else {})
        res = run_sample(self.settings({f"sample.{k}": v for k, v in keys.items()}), self.progress)
        images, _ = read_samples_npz(res.out_dir / "samples.npz")
        card = json.loads((res.out_dir / PROTOCOL_JSON).read_text())
        asked = [card["prompts"][k] for k in card["prompt_ids"]]
        return images, asked, res.out_dir, res.written == 0

    def adherence(self, folder: Path, steps: int, val: str | None = None) -> AdherenceResult:
        """``repackctl evaluate adherence`` of a t2i samples folder: its ``AdherenceResult``
        (scores also written to ``adherence.json`` there, and the classifiers); ``val``: a
        split whose real images the same classifiers are also scored on."""
        from repackctl.evaluate.adherence import run_adherence
        from repackctl.runtime import resolve_device

        device = resolve_device(self.device, 0)
        real_val = self.entries[val] if val else None
        cache = str(self.out / CACHE_DIR)
        return run_adherence(
            folder, cache, steps, self.seed, device, real_val, progress=self.progress
        )

    def encoder_fd(self, images: np.ndarray, split: str, resolution: int) -> float:
        """FD in the built-in encoder's space between uint8 ``images`` and the real images of
        ``split`` (no Inception weights exist offline)."""
        from repackctl.encoders.load import make_encoder
        from repackctl.metrics.encoder_fd import compute_encoder_fd

        if getattr(self, "_fd_encoder", None) is None:
            self._fd_encoder = make_encoder("builtin", None, None, resolution, 0).eval()
        entry = self.entry(split)
        real, _ = self.images(split, len(entry.valid_indices()))
        fd = compute_encoder_fd(self._fd_encoder, images, real, fd_method="cholesky")
        return float(fd["fd"])
