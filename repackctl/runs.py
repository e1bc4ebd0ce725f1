"""Training runs on disk (DESIGN.md §6): list, describe and remove them; hint at the runs that exist.

```
runs/<name>/config.json  metrics.jsonl  log.txt  checkpoints/step-NNNNNNN/state.json …
```

A folder is a repackctl run when it carries repackctl's own metadata: a ``config.json`` that the
training engine wrote (``TrainConfig.to_dict()``: its keys and ``extra.stage``), or a
``checkpoints/step-NNNNNNN/state.json`` with a step, file checksums and ``extra.stage`` (also what
``import official`` writes). Any other folder (say, a downloaded model with its own
``config.json``) is neither listed nor removed. ``runs rm`` also refuses a run that holds a path
repackctl did not write there (``repackctl.run_files.foreign_paths``: the user's notes, a figure
saved into a checkpoint folder), naming it, and names the runs that use a pack run it removes
(:func:`dependent_runs`: DiT, refiner and t2i runs, trained or imported). The stage (pack /
dit / refine / t2i) is ``extra.stage`` of the config or of the newest checkpoint's
``state.json``; imported runs carry ``"imported": true`` there.

A checkpoint counts as complete when the loader's own check passes
(``repackctl.train.checkpoint.verify_checkpoint``). ``runs ls`` and the hints in error messages
run it without checksums (file names, sizes and ``state.json`` only), so they stay fast on runs
of many gigabytes; ``runs info`` (and ``runs rm``, which describes the run first) also checks
every file's sha256, as loading does, so a damaged checkpoint is reported as such, not as
complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from repackctl.crash import crash_point
from repackctl.errors import CheckpointError, ConfigError, name_items
from repackctl.run_files import (
    ENGINE_KEYS,
    KEPT_STEP_DIR,
    PROTOCOL_JSON,
    SETTINGS_JSON,
    StoredConfig,
    checkpoint_weights_sha256,
    foreign_paths,
    pack_id_run_step,
    pack_id_weights_sha8,
    protocol_card,
    read_json_dict,
    read_run_config,
    recorded_refiner,
)
from repackctl.run_lock import LOCK_FILE, Holder, hold_run_lock, lock_holder

CONFIG_JSON = "config.json"
METRICS_JSONL = "metrics.jsonl"
CKPT_DIR = "checkpoints"
STEP_RE = re.compile(r"^step-(\d{7})$")
# the name prefix of a run folder while `runs rm` deletes it (never listed as a run)
REMOVING = ".removing-"
# shown by `runs info` from config.json (TrainConfig fields)
CONFIG_KEYS = ("steps", "global_batch", "grad_accum", "lr", "schedule", "ema_decay", "ema_warmup",
               "precision", "seed", "ckpt_every", "keep_last")  # fmt: skip


@dataclass
class CheckpointInfo:
    """One ``step-NNNNNNN`` folder: complete (loadable) or the reason it is not (e.g.
    ``optim.pt is missing``, ``marked bad (good: false)``, ``corrupt (ema.safetensors)``)."""

    name: str
    step: int
    complete: bool
    problem: str | None
    bytes: int


@dataclass
class RunInfo:
    """One line of ``runs ls``."""

    name: str
    path: str
    stage: str  # pack, dit, refine or "?"
    imported: bool
    step: int | None  # newest complete checkpoint
    checkpoints: int  # complete ones
    bytes: int
    modified: float  # newest file mtime (seconds since the epoch)
    checksums_verified: bool  # complete includes every file's sha256 (else names and sizes only)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MetricsAfter:
    """The rows of ``metrics.jsonl`` past the newest complete checkpoint (``checkpoint_step``;
    None: the run has none): steps no checkpoint holds the weights of, logged by a training
    stopped before its next checkpoint (a resume drops them and trains those steps again) or by
    the one running now (``training``: its holder, as ``Holder.describe`` says).

    ``live``: they are the rows of that training, which wrote ``metrics.jsonl`` since it took
    the run's lock (a resume first drops the rows past its checkpoint); ``newest``: then the
    last of them (oldest first), its latest loss, which a user watching it wants, listed apart
    as in no checkpoint yet. The rows of a stopped training (also while the one that resumes it
    has not dropped them yet) are counted, never listed: they are no results of the run."""

    rows: int
    first_step: int
    last_step: int
    checkpoint_step: int | None
    training: str | None
    live: bool = False
    newest: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> str:
        """One line for ``runs info``."""
        steps = (
            f"step {self.first_step}"
            if self.first_step == self.last_step
            else f"steps {self.first_step}-{self.last_step}"
        )
        rows = f"{self.rows} row{'' if self.rows == 1 else 's'} ({steps})"
        if self.checkpoint_step is None:
            where = "logged, but the run has no complete checkpoint"
        else:
            where = f"logged after step {self.checkpoint_step}, the newest complete checkpoint"
        if self.training is not None and self.live:
            shown = "" if len(self.newest) == self.rows else f"the newest {len(self.newest)} "
            return (
                f"{rows} {where}: the run is being trained now ({self.training}) and no "
                f"checkpoint holds these steps yet ({shown}listed, marked 'no checkpoint yet')"
            )
        if self.training is not None:
            return (
                f"{rows} {where}: not shown, logged by a training stopped before saving them; "
                f"the one starting now ({self.training}) has logged nothing yet and drops these "
                "rows as it resumes"
            )
        resume = "trains these steps again" if self.checkpoint_step is not None else "starts over"
        return (
            f"{rows} {where}: not shown, no checkpoint holds the weights of these steps (a "
            f"training stopped before saving them); a resume drops these rows and {resume}"
        )


@dataclass
class RunDetail:
    """What ``runs info`` shows."""

    run: RunInfo
    config: dict[str, Any]
    checkpoints: list[CheckpointInfo]
    metrics_tail: list[dict[str, Any]]
    samples: list[str] = field(default_factory=list)  # sample folders made from this run
    # folders named after this run and a checkpoint whose weights they were not sampled from
    # (made by an earlier run of the same name): see ``split_by_checkpoint``
    samples_of_other_runs: list[str] = field(default_factory=list)
    ema_in_effect: dict[str, Any] | None = None  # see ``ema_in_effect``
    # why config.json was not shown (damaged or edited) and whose config was instead
    config_problem: str | None = None
    # a pack run: the runs beside it that sample through its decoder (``dependent_runs``)
    used_by: list[str] = field(default_factory=list)
    # a pack run: the cached latents groups encoded with its checkpoints, which decode only
    # with it (set by the command, which reads the caches:
    # ``repackctl.pack.task.latents_encoded_with``)
    latents_used_by: list[str] = field(default_factory=list)
    # the cache roots those could not be looked for in, with why (an s3:// root without s3fs)
    latents_not_checked: list[str] = field(default_factory=list)
    # the network of the newest complete checkpoint (``_model_of``), where it records one
    model: str | None = None
    # what its newest complete checkpoint was trained on (``_trained_on``): cache entry,
    # latents or triplets, pack checkpoint
    trained_on: list[str] = field(default_factory=list)
    # a refiner run: the samples folders it refined (``refined_folders``)
    refined: list[str] = field(default_factory=list)
    # the metrics rows logged after the newest complete checkpoint, left out of
    # ``metrics_tail`` (``MetricsAfter``); None when there are none
    metrics_after: MetricsAfter | None = None

    def shown_config(self) -> dict[str, Any]:
        """``config`` for the text view: during a warm-up ``ema_decay`` also names the decay in
        effect at the newest checkpoint (the configured figure is only its cap)."""
        shown, ema = dict(self.config), self.ema_in_effect
        if ema is not None and ema["warmup"]:
            shown["ema_decay"] = (
                f"{self.config['ema_decay']} (warm-up: {ema['decay']:.4g} at step {ema['step']})"
            )
        return shown

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.run.to_dict(),
            "config": self.config,
            "config_problem": self.config_problem,
            "ema_decay_in_effect": self.ema_in_effect,
            "checkpoints": [asdict(c) for c in self.checkpoints],
            "metrics_tail": self.metrics_tail,
            "metrics_after_checkpoint": (
                None if self.metrics_after is None else asdict(self.metrics_after)
            ),
            "samples": self.samples,
            "samples_of_other_runs": self.samples_of_other_runs,
            "used_by": self.used_by,
            "used_by_latents": self.latents_used_by,
            "latents_not_checked": self.latents_not_checked,
            "model": self.model,
            "trained_on": self.trained_on,
            "refined": self.refined,
        }


# --------------------------------------------------------------------------- reading


def _step_folders(folder: Path) -> list[Path]:
    root = folder / CKPT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and STEP_RE.match(p.name))


def _stage_of(data: dict[str, Any] | None) -> str | None:
    """``extra.stage`` of a config.json or state.json, when it is a string."""
    extra = data.get("extra") if data else None
    stage = extra.get("stage") if isinstance(extra, dict) else None
    return stage if isinstance(stage, str) else None


def _engine_config(data: dict[str, Any] | None) -> bool:
    """True for a ``config.json`` the training engine wrote: its keys, and ``extra.stage``."""
    return data is not None and ENGINE_KEYS <= data.keys() and _stage_of(data) is not None


def _engine_state(data: dict[str, Any] | None) -> bool:
    """True for a checkpoint ``state.json`` that repackctl wrote: step, checksums, stage."""
    return (
        data is not None
        and isinstance(data.get("step"), int)
        and isinstance(data.get("files"), dict)
        and _stage_of(data) is not None
    )


def is_run(folder: Path) -> bool:
    """True for a folder written by repackctl training or import (see the module docstring).

    A ``config.json`` alone (a downloaded model, another tool's output) is not enough: it must
    be the engine's, or a checkpoint's ``state.json`` must be repackctl's."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    if _engine_config(read_json_dict(folder / CONFIG_JSON)):
        return True
    return any(
        _engine_state(read_json_dict(p / "state.json")) for p in reversed(_step_folders(folder))
    )


def _tree(folder: Path) -> tuple[int, float]:
    """(bytes, newest mtime) of the files under ``folder`` (symlinks not followed). The training
    lock, rewritten by every start (even one with nothing to train), does not count as newer.
    A folder that is gone (a checkpoint the training's rotation deleted after it was listed):
    (0, 0.0)."""
    try:
        total, newest = 0, folder.stat().st_mtime
    except OSError:
        return 0, 0.0
    for dirpath, _, files in os.walk(folder):
        for f in files:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except OSError:
                continue
            total += st.st_size
            if not (f == LOCK_FILE and dirpath == str(folder)):
                newest = max(newest, st.st_mtime)
    return total, newest


def checkpoint_info(folder: Path, checksums: bool = True) -> CheckpointInfo:
    """Whether a checkpoint folder is complete and loadable, as the loader decides.

    ``checksums`` also checks every file's sha256 against ``state.json`` (it reads every byte);
    without it, file names, sizes and ``state.json`` only (``runs ls``, hints)."""
    step = int(STEP_RE.match(folder.name).group(1))  # type: ignore[union-attr]
    problem = _problem(folder, checksums)
    return CheckpointInfo(folder.name, step, problem is None, problem, _tree(folder)[0])


def _problem(folder: Path, checksums: bool = True) -> str | None:
    """The loader's verdict on a checkpoint folder, in a few words (None: it verifies): the one
    check of the training's checkpoint module that `runs` uses."""
    from repackctl.train.checkpoint import checkpoint_problem

    return checkpoint_problem(folder, checksums=checksums)


def _checkpoints(folder: Path, checksums: bool) -> list[CheckpointInfo]:
    """:func:`checkpoint_info` of each checkpoint of the run ``folder``. A run being trained
    rotates its checkpoints (``keep_last``): one deleted while it was read (hashing the others
    takes a while on a large run) is left out, not shown as damaged."""
    found = [(p, checkpoint_info(p, checksums=checksums)) for p in _step_folders(folder)]
    return [info for p, info in found if p.is_dir()]


def _kept_damaged(folder: Path) -> list[CheckpointInfo]:
    """The damaged step folders that re-saves of the run ``folder`` kept
    (``repackctl.train.checkpoint.kept_damaged_name``, :data:`KEPT_STEP_DIR`), for ``runs
    info``: never complete, the problem saying what they are. `runs rm` deletes them with the
    run (the training moved them there) and counts them among the damaged in its question."""
    root = folder / CKPT_DIR
    found = []
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        m = KEPT_STEP_DIR.fullmatch(p.name)
        if m is None or not p.is_dir():
            continue
        why = _problem(p) or "does not verify"
        problem = (
            f"kept damaged: the {m.group(1)} that resume skipped ({why}), moved aside when that "
            "step was saved anew; never loaded as a checkpoint, deleted with the run"
        )
        step = int(STEP_RE.match(m.group(1)).group(1))  # type: ignore[union-attr]
        found.append(CheckpointInfo(p.name, step, False, problem, _tree(p)[0]))
    return found


def _stage(folder: Path, newest: Path | None) -> tuple[str, bool]:
    """(stage, imported) from config.json, else from the newest checkpoint's state.json."""
    sources = [read_json_dict(folder / CONFIG_JSON)]
    if newest is not None:
        sources.append(read_json_dict(newest / "state.json"))
    stage, imported = "?", False
    for data in sources:
        if not data:
            continue
        imported = imported or bool(data.get("imported"))
        extra = data.get("extra")
        if stage == "?" and isinstance(extra, dict) and isinstance(extra.get("stage"), str):
            stage = extra["stage"]
    return stage, imported


def _run_info(folder: Path, ckpts: list[CheckpointInfo], checksums: bool) -> RunInfo:
    good = [c for c in ckpts if c.complete]
    newest = folder / CKPT_DIR / good[-1].name if good else None
    stage, imported = _stage(folder, newest)
    size, modified = _tree(folder)
    return RunInfo(
        name=folder.name,
        path=str(folder),
        stage=stage,
        imported=imported,
        step=good[-1].step if good else None,
        checkpoints=len(good),
        bytes=size,
        modified=modified,
        checksums_verified=checksums,
    )


def list_runs(root: Path) -> list[RunInfo]:
    """Every run directly under ``root`` (sorted by name); other folders are left out.

    Fast: a checkpoint counts as complete when its files are present at the sizes ``state.json``
    records, without hashing them (``describe_run`` and loading check the sha256 too)."""
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(root.iterdir()):
        if is_run(folder) and not folder.name.startswith(REMOVING):
            ckpts = _checkpoints(folder, checksums=False)
            out.append(_run_info(folder, ckpts, checksums=False))
    return out


def _metrics_tail(
    folder: Path, n: int, checkpoint_step: int | None
) -> tuple[list[dict[str, Any]], MetricsAfter | None]:
    """The last ``n`` rows of ``metrics.jsonl`` up to ``checkpoint_step`` (the newest complete
    checkpoint's; None: there is none), and the rows past it (:class:`MetricsAfter`), which
    a killed attempt (or the training running now) logged and no checkpoint holds: `pack train`
    and resumes stop at the checkpoint too. The last ``n`` of them are kept (``newest``) only
    where the training that holds the run now logged them."""
    path = folder / METRICS_JSONL
    if not path.is_file():
        return [], None
    rows: list[dict[str, Any]] = []
    after: list[dict[str, Any]] = []
    # a damaged file (bytes that are not UTF-8) loses its bad lines only, as a line cut by a kill
    for line in reversed(path.read_text(errors="replace").splitlines()):
        try:
            rec = json.loads(line)
        except ValueError:  # a line cut by a kill
            continue
        if not isinstance(rec, dict):
            continue
        step = rec.get("step")
        past = isinstance(step, int) and (checkpoint_step is None or step > checkpoint_step)
        if past and not rows:
            after.append(rec)
        elif len(rows) < n:
            rows.append(rec)
        else:
            break
    if not after:
        return rows[::-1], None
    holder = lock_holder(folder)
    if holder is not None and holder.command is not None:  # `runs rm` a moment before it renames
        holder = None  # the run: no training, the rows are a stopped one's
    live = holder is not None and _logged_since_locked(folder)
    steps = [rec["step"] for rec in after]
    more = MetricsAfter(
        rows=len(after),
        first_step=min(steps),
        last_step=max(steps),
        checkpoint_step=checkpoint_step,
        training=None if holder is None else holder.describe(),
        live=live,
        # a training's own latest rows; a stopped one's are dropped by its resume: not listed
        newest=after[:n][::-1] if live else [],
    )
    return rows[::-1], more


def _logged_since_locked(folder: Path) -> bool:
    """Whether ``metrics.jsonl`` was written since the run's lock was taken (a training writes
    its record into the lock file as it takes it, then drops the rows past the checkpoint it
    resumes from and appends its own): its rows past the checkpoint are then that training's,
    not those of one stopped before saving them."""
    try:
        logged = (folder / METRICS_JSONL).stat().st_mtime_ns
        return logged >= (folder / LOCK_FILE).stat().st_mtime_ns
    except OSError:
        return False


def sample_folders(samples_root: Path, run: str) -> list[str]:
    """Sample folders ``<run>--<checkpoint>--…`` made from ``run`` under ``samples_root``."""
    if not samples_root.is_dir():
        return []
    prefix = f"{run}--"
    found = []
    for p in sorted(samples_root.iterdir()):
        rest = p.name[len(prefix) :] if p.name.startswith(prefix) else ""
        if p.is_dir() and STEP_RE.match(rest.split("--")[0].removesuffix("-raw")):
            found.append(p.name)
    return found


def split_by_checkpoint(
    samples_root: Path, run_folder: Path, names: list[str]
) -> tuple[list[str], list[str]]:
    """(folders made from ``run_folder``'s checkpoints, folders of another run of that name).

    A samples folder is named after the run and checkpoint only; it records the sha256 of the
    weights it sampled (:func:`sampled_weights`). Where the run's checkpoint of that name
    records other weights in its ``state.json``, the folder was made by an earlier run of the
    same name (removed and trained again): :func:`made_by_another_run`. A folder that cannot be
    compared (no such checkpoint any more, no record) counts as the run's."""
    own, other = [], []
    for name in names:
        made = made_by_another_run(samples_root / name, run_folder)
        (other if made else own).append(name)
    return own, other


def sampled_weights(folder: Path) -> tuple[str | None, str]:
    """(sha256 of the DiT weights file the samples in ``folder`` were made from or None,
    which weights: ``ema``/``model``).

    The card of a finished folder records them, the settings file of one being made too
    (`sample`'s, and `refine apply`'s since it copies them from the samples it refines). A
    folder `refine apply` started before it recorded them is traced to the samples it refines,
    the folder it is named after (``<SAMPLES>--refine-<label>`` beside them)."""
    for doc in (_card_of(folder), read_json_dict(folder / SETTINGS_JSON) or {}):
        sha = doc.get("checkpoint_sha256")
        if isinstance(sha, str) and sha:
            which = doc.get("weights")
            return sha, which if which in ("ema", "model") else "ema"
    settings = read_json_dict(folder / SETTINGS_JSON) or {}
    cut = folder.name.rfind("--refine")
    if "source_sha256" in settings and cut > 0:  # the source is shorter-named: this ends
        return sampled_weights(folder.parent / folder.name[:cut])
    return None, "ema"


def _card_of(folder: Path) -> dict[str, Any]:
    """The protocol card of a samples folder ({} when absent or unreadable); cards of some
    versions wrap it in ``{"protocol": …}``."""
    return protocol_card(read_json_dict(folder / PROTOCOL_JSON)) or {}


def made_by_another_run(folder: Path, run_folder: Path) -> bool:
    """Whether the samples in ``folder`` (named ``<run>--step-N--…`` after the run) were made
    by an earlier run of ``run_folder``'s name, removed and trained again: the run's checkpoint
    ``step-N`` records other weights in its ``state.json`` than the folder
    (:func:`sampled_weights`). False where nothing can be compared (the checkpoint is gone, the
    folder records no sha256)."""
    prefix = f"{run_folder.name}--"
    step = folder.name.removeprefix(prefix).split("--")[0].removesuffix("-raw")
    if not folder.name.startswith(prefix) or not STEP_RE.match(step):
        step = Path(str(_card_of(folder).get("checkpoint") or "")).name
    if not STEP_RE.match(step):
        return False
    sha, which = sampled_weights(folder)
    recorded = checkpoint_weights_sha256(run_folder / CKPT_DIR / step, which)
    return recorded is not None and sha is not None and recorded != sha


def _require_run(folder: Path) -> None:
    """A ``CheckpointError`` (its hint lists the runs there are) unless ``folder`` is a run."""
    if is_run(folder):
        return
    if not folder.exists():
        raise CheckpointError(f"{folder} does not exist", runs_hint(folder.parent))
    raise CheckpointError(
        f"{folder} is not a repackctl run: it holds no config.json or checkpoint state.json "
        "written by repackctl training, so repackctl neither lists nor removes it",
        f"{runs_hint(folder.parent)}; a folder repackctl did not write is yours to delete",
    )


def describe_run(folder: Path, samples_root: Path | None = None, tail: int = 5) -> RunDetail:
    """Config summary, checkpoints (every file's sha256 checked), the last ``tail`` metrics lines
    and the samples of a run. The config is ``config.json``'s, or, when that file is damaged or
    edited, its newest verified checkpoint's, with the problem named (``config_problem``)."""
    _require_run(folder)
    ckpts = _checkpoints(folder, checksums=True)
    stored = read_run_config(folder)
    config = stored.config or {}
    summary = {k: config[k] for k in CONFIG_KEYS if k in config}
    good = [c for c in ckpts if c.complete]
    ema = ema_in_effect(summary, folder / CKPT_DIR / good[-1].name) if good else None
    samples: list[str] = []
    others: list[str] = []
    refined: list[str] = []
    run = _run_info(folder, ckpts, checksums=True)
    if samples_root is not None:
        named = sample_folders(samples_root, folder.name)
        samples, others = split_by_checkpoint(samples_root, folder, named)
        refined = refined_folders(samples_root, folder) if run.stage == "refine" else []
    used_by = [] if run.stage in ("dit", "refine", "t2i") else dependent_runs(folder)
    newest = checkpoint_extra(folder / CKPT_DIR / good[-1].name) if good else {}  # read once
    tail_rows, after = _metrics_tail(folder, tail, good[-1].step if good else None)
    return RunDetail(
        run=run,
        config=summary,
        checkpoints=ckpts + _kept_damaged(folder),
        metrics_tail=tail_rows,
        metrics_after=after,
        samples=samples,
        samples_of_other_runs=others,
        ema_in_effect=ema,
        config_problem=_config_problem(stored),
        used_by=[d.describe() for d in used_by],
        model=_model_of(newest),
        trained_on=_trained_on(newest),
        refined=refined,
    )


def refined_folders(samples_root: Path, run_folder: Path) -> list[str]:
    """The samples folders under ``samples_root`` whose images the refiner run ``run_folder``
    refined (`refine apply`, `sample --refiner`; finished or not), found by the refiner each
    records (``run_files.recorded_refiner``; :func:`_refined_by`)."""
    if not samples_root.is_dir():
        return []
    shas = _weights_sha256(run_folder)
    return [
        p.name
        for p in sorted(samples_root.iterdir())
        if p.is_dir() and not p.is_symlink() and _refined_by(run_folder, shas, *recorded_refiner(p))
    ]


def _weights_sha256(run: Path) -> set[str]:
    """The sha256 of every file the checkpoints of ``run`` record (their weights among them)."""
    found = set()
    for step in _step_folders(run):
        files = (read_json_dict(step / "state.json") or {}).get("files")
        if isinstance(files, dict):
            found |= {v for v in files.values() if isinstance(v, str)}
    return found


def _refined_by(run: Path, shas: set[str], sha: str | None, checkpoint: str | None) -> bool:
    """Whether a folder that records the refiner ``sha`` (its weights' sha256) and
    ``checkpoint`` (its folder) was refined by ``run`` (its checkpoints' file sha256 ``shas``).

    A recorded checkpoint that is there decides: one of ``run``'s, holding those weights (a copy
    of the run, or a refiner trained again under its name, is not ``run``). One that is gone
    counts for ``run`` when it was one of its checkpoints (removed by ``keep_last``), else the
    weights decide (the runs folder moved; an unfinished folder records its sha256 only)."""
    if checkpoint is not None:
        path = Path(checkpoint)
        if path.is_dir():
            return _same_dir(path.parent.parent, run) and (sha is None or sha in shas)
        if _same_dir(path.parent.parent, run):
            return True
    return sha is not None and sha in shas


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def checkpoint_extra(ckpt: Path) -> dict[str, Any]:
    """The task's ``extra`` that a checkpoint's ``state.json`` records ({} when none)."""
    extra = (read_json_dict(ckpt / "state.json") or {}).get("extra")
    return extra if isinstance(extra, dict) else {}


def recorded_cache_roots(folder: Path) -> list[str]:
    """The cache roots the checkpoints of the run ``folder`` record they were trained from
    (``extra.cache.root``), oldest first, each once."""
    roots: dict[str, None] = {}
    for step in _step_folders(folder):
        cache = checkpoint_extra(step).get("cache")
        root = cache.get("root") if isinstance(cache, dict) else None
        if isinstance(root, str) and root:
            roots[root] = None
    return list(roots)


def _trained_on(extra: dict[str, Any]) -> list[str]:
    """What a DiT, t2i or refiner checkpoint (its ``extra``) records it was trained on: the
    cache entry (and root), the latents or triplets group in it, and the pack checkpoint that
    decodes them."""
    cache, pack = extra.get("cache"), extra.get("pack")
    out = []
    if isinstance(cache, dict) and cache.get("entry"):
        out.append(f"cache entry {cache['entry']} in {cache.get('root')}")
        for key in ("latents", "triplets"):
            if cache.get(key):
                out.append(f"{key} {cache[key]}")
    if isinstance(pack, dict) and (pack.get("checkpoint") or pack.get("run")):
        out.append(f"pack checkpoint {pack.get('checkpoint') or pack.get('run')}")
    return out


def _model_of(extra: dict[str, Any]) -> str | None:
    """``tiny-d3w128h2-p2 (model id tiny)``: the network a checkpoint's ``extra`` records (its
    ``model_config`` name, which spells depth, width, heads and patch), or None for a run that
    records none (pack and refiner runs)."""
    if not isinstance(extra.get("model_id"), str):
        return None
    config = extra.get("model_config")
    name = config.get("name") if isinstance(config, dict) else None
    if not isinstance(name, str) or name == extra["model_id"]:
        return extra["model_id"]
    return f"{name} (model id {extra['model_id']})"


def _config_problem(stored: StoredConfig) -> str | None:
    """``config.json is not valid JSON (…); shown: the config of checkpoint step-N`` (or
    ``…; no checkpoint records one``): a damaged or edited config.json is named, never shown as
    if it were the run's settings nor left out in silence."""
    if stored.problem is None:
        return None
    shown = f"the config of checkpoint {stored.checkpoint}" if stored.checkpoint else None
    return f"{CONFIG_JSON} {stored.problem}; " + (
        f"shown: {shown}" if shown else "no verified checkpoint records the config"
    )


def ema_in_effect(config: dict[str, Any], ckpt: Path) -> dict[str, Any] | None:
    """The EMA decay of the last update before checkpoint ``ckpt`` (``decay``, ``step``,
    ``updates``, ``warmup``), or None when the config does not say (no ``ema_decay``).

    With ``ema_warmup`` (the default) the configured ``ema_decay`` is only a cap: the decay in
    effect after n updates is ``repackctl.train.ema.decay_after`` (about 0.77 after 30), so the
    configured figure alone would misstate what the EMA weights of a short run average over."""
    from repackctl.train.ema import decay_after  # torch: only when a run is described

    decay, warmup = config.get("ema_decay"), bool(config.get("ema_warmup", False))
    if not isinstance(decay, int | float) or isinstance(decay, bool):
        return None
    state = read_json_dict(ckpt / "state.json") or {}
    step = int(STEP_RE.match(ckpt.name).group(1))  # type: ignore[union-attr]
    updates = state.get("ema_updates")
    updates = updates if isinstance(updates, int) and updates >= 0 else step
    last = decay_after(float(decay), warmup, max(updates - 1, 0))  # the update made at `step`
    return {"decay": last, "step": step, "updates": updates, "warmup": warmup}


def check_removable(folder: Path) -> None:
    """A ``CheckpointError`` unless ``folder`` is a run holding only what repackctl wrote there,
    and no other process trains it now (``repackctl.run_lock``).

    A file of the user's inside a run (notes, a figure saved into a checkpoint folder) is named
    (the first few, and how many): removing the run would delete it."""
    _require_run(folder)
    holder = lock_holder(folder)
    if holder is not None:
        raise _being_trained(folder, holder)
    foreign = foreign_paths(folder)
    if foreign:
        raise CheckpointError(
            f"{folder} holds {len(foreign)} path(s) that repackctl did not write: "
            f"{name_items(foreign)}; nothing was removed",
            f"move them out of {folder} (they are yours), then run `repackctl runs rm "
            f"{folder.name}` again",
        )


@dataclass(frozen=True)
class Dependent:
    """A run beside a pack run whose checkpoints decode with it (``dependent_runs``)."""

    name: str
    stage: str
    imported: bool

    def describe(self) -> str:
        """``d (dit)``, ``off-refine (refine, imported)``."""
        return f"{self.name} ({self.stage}{', imported' if self.imported else ''})"


def dependent_runs(folder: Path) -> list[Dependent]:
    """The other runs beside ``folder`` that need it: a DiT, refiner or t2i run, trained or
    imported (``import official``), whose checkpoints' ``extra.pack`` names it as the pack run
    whose decoder they sample with (``repackctl.pack.load.decoder_checkpoint``); a run without a
    checkpoint yet, by the ``--pack-run`` its config.json records (:func:`pack_records_naming`:
    not a run whose latents an earlier pack run of that name encoded). Removing ``folder``
    leaves them unable to sample (or resume), so ``runs rm`` names them."""
    if not folder.parent.is_dir():
        return []
    found = []
    for other in sorted(folder.parent.iterdir()):
        if other.name == folder.name or other.name.startswith(REMOVING) or not is_run(other):
            continue
        if pack_records_naming(other, folder):
            steps = _step_folders(other)
            stage, imported = _stage(other, steps[-1] if steps else None)
            found.append(Dependent(other.name, stage, imported))
    return found


def _pack_records(run: Path) -> list[dict[str, Any]]:
    """``extra.pack`` of each checkpoint of ``run``; without any, the pack run its config.json
    records (``extra.train.pack_run``, or the latents id ``extra.train.latents``)."""
    records = []
    for step in _step_folders(run):
        pack = checkpoint_extra(step).get("pack")
        if isinstance(pack, dict):
            records.append(pack)
    if records:
        return records
    extra = (read_json_dict(run / CONFIG_JSON) or {}).get("extra")
    train = extra.get("train") if isinstance(extra, dict) else None
    if isinstance(train, dict):
        return [{"run": train.get("pack_run"), "pack_id": train.get("latents")}]
    return []


def pack_records_naming(run: Path, folder: Path) -> list[dict[str, Any]]:
    """The records of ``run`` (``extra.pack`` of its checkpoints, else its config.json's:
    ``_pack_records``) that name the pack run ``folder`` as the one whose decoder they sample
    with (:func:`_names_pack_run`). The one rule of `runs info` (used by), `runs rm` (its
    question and its --yes warning) and a pack run's rotation (``pack.task.checkpoints_in_use``)."""
    return [pack for pack in _pack_records(run) if _names_pack_run(pack, folder)]


def _names_pack_run(pack: dict[str, Any], folder: Path) -> bool:
    """Whether a recorded ``extra.pack`` leads to the pack run ``folder``, as sampling finds it:
    the recorded checkpoint when it exists, else the run of that name (or of the pack id); and
    whose weights encoded its latents, as sampling checks them (``pack.load.load_decoder``):
    a record whose pack id ends with a weights sha256 other than the one the step folder of its
    step records (:func:`pack_id_names_other_weights`) was made with an earlier run of that
    name, removed and trained again. A record without one, or whose step folder is gone, is
    matched by name (and path) alone."""
    recorded = pack.get("checkpoint")
    pack_id = pack.get("pack_id") if isinstance(pack.get("pack_id"), str) else None
    id_run, step = pack_id_run_step(pack_id)
    if isinstance(recorded, str) and recorded and Path(recorded).is_dir():
        named = Path(recorded).resolve().parent.parent == folder.resolve()
    else:
        run = pack.get("run")
        named = (run if isinstance(run, str) and run else id_run) == folder.name
    return named and (step is None or not pack_id_names_other_weights(pack_id, folder, step))


def pack_id_names_other_weights(
    pack_id: str | None, folder: Path, step: int, which: str | None = None
) -> bool:
    """Whether the weights sha256 that ``pack_id`` ends with is not one that the step folder
    ``step`` of the pack run ``folder`` records for its ``which`` weights (None: its ema or its
    model weights; a DiT, refiner or t2i record does not say which encoded its latents): a pack
    run removed and trained again under its name wrote other weights. False where either is not
    there to compare (an id without a sha256, a step folder gone or damaged): then the run's
    name and step decide."""
    found = pack_id_weights_sha8(pack_id)
    kinds = (which,) if which else ("ema", "model")
    recorded = [s for s in (recorded_weights_sha256(folder, step, k) for k in kinds) if s]
    return bool(found and recorded) and not any(s.startswith(found) for s in recorded)


def recorded_weights_sha256(folder: Path, step: int, which: str) -> str | None:
    """The sha256 that ``state.json`` of the step folder ``step`` of ``folder`` records for
    its ``which`` weights (``files``), or None (no such folder, or not readable)."""
    return checkpoint_weights_sha256(folder / CKPT_DIR / f"step-{step:07d}", which)


def _being_trained(folder: Path, holder: Holder | None) -> CheckpointError:
    by = f" ({holder.describe()})" if holder is not None else ""
    doing = "being trained" if holder is None else holder.activity()
    return CheckpointError(
        f"run {folder} is {doing} by another process{by}; nothing was removed",
        f"wait for it to finish, or stop it, then run `repackctl runs rm {folder.name}` again",
    )


def removing_folder(folder: Path) -> Path:
    """Where ``remove_run`` moves the run ``folder`` before deleting it."""
    return folder.parent / f"{REMOVING}{folder.name}"


def remove_run(folder: Path) -> None:
    """Delete a run folder; anything that is not a repackctl run, or a run that holds a path
    repackctl did not write, is refused (:func:`check_removable`) and nothing is deleted.

    The run is renamed to ``.removing-<name>`` first, holding its training lock, and deleted
    there: a training that starts meanwhile is refused, or (after the rename) starts a new run,
    and a removal killed while it deletes leaves a folder that no command takes for the run
    (half its files gone, it was no longer recognised as a run, so `runs rm` refused it). The
    same `runs rm` finishes it."""
    if not folder.exists() and not folder.is_symlink() and finish_removing(folder):
        return  # a removal killed while it deleted: finished
    check_removable(folder)  # before the lock: taking it writes train.lock into the folder
    with _training_kept_out(folder):
        check_removable(folder)  # a training may have started before the lock was taken
        move_and_delete(folder, "runs-rm")


def finish_removing(folder: Path, foreign: Callable[[Path], list[Path]] = foreign_paths) -> bool:
    """Delete what a removal of ``folder`` killed while it deleted left (``.removing-<name>``,
    see ``move_and_delete``); False when it left nothing. A leftover holding a path that
    ``foreign`` names (by default anything a run does not hold) was not made by that removal:
    a ``CheckpointError`` names it and nothing is deleted."""
    leftover = removing_folder(folder)
    if not leftover.is_dir() or leftover.is_symlink():
        return False
    found = foreign(leftover)
    if found:
        raise CheckpointError(
            f"{leftover} holds {len(found)} path(s) that repackctl did not write: "
            f"{name_items(found)}; nothing was removed",
            f"move {leftover} elsewhere (it is not the rest of a removal), then run the command "
            "again",
        )
    shutil.rmtree(leftover)
    return True


def move_and_delete(folder: Path, crash_step: str) -> None:
    """Delete ``folder`` (checked to be repackctl's own) by renaming it to ``.removing-<name>``
    first, after what an older removal of that name left: killed while it deletes, it leaves a
    folder that no command takes for a run, not half a run under its name, and
    ``finish_removing`` deletes it (``runs rm``, ``demo --fresh``). ``crash_step``: the crash
    tests' kill point between the rename and the deletion."""
    finish_removing(folder)
    leftover = removing_folder(folder)
    folder.rename(leftover)
    crash_point(crash_step)
    shutil.rmtree(leftover)


@contextmanager
def _training_kept_out(folder: Path) -> Iterator[None]:
    """The run's training lock held while the block runs (no training starts), or a
    ``CheckpointError`` naming the training that took it a moment ago."""
    with hold_run_lock(folder, "runs rm") as held:
        if not held:
            raise _being_trained(folder, lock_holder(folder))
        yield


def runs_hint(root: Path, stage: str | None = None, limit: int = 10) -> str:
    """``runs in ROOT: a (dit, step 20), b (pack, step 4)`` — or how to make one."""
    runs = [r for r in list_runs(root) if stage is None or r.stage == stage]
    kind = f"{stage} runs" if stage else "runs"
    if not runs:
        return f"no {kind} in {root}; train one first, or pass --runs with the right folder"
    names = [
        f"{r.name} ({r.stage}{', imported' if r.imported else ''}"
        f"{f', step {r.step}' if r.step is not None else ', no checkpoint'})"
        for r in runs[:limit]
    ]
    more = f" and {len(runs) - limit} more (`repackctl runs ls`)" if len(runs) > limit else ""
    return f"{kind} in {root}: {', '.join(names)}{more}"


def newest_run(root: Path, stage: str) -> str | None:
    """The run of ``stage`` whose newest complete checkpoint was written last (stages chain).

    The checkpoint's time, not the folder's newest file: `evaluate recon` / `evaluate probe`
    write their reports into a checkpoint folder of an older run, which made it "the newest"
    for `pack encode`, `refine train` and `sample` without --run / --pack-run."""
    runs = [r for r in list_runs(root) if r.stage == stage and r.step is not None]
    return max(runs, key=_checkpoint_time).name if runs else None


def _checkpoint_time(run: RunInfo) -> float:
    """When the newest complete checkpoint of ``run`` was written (its ``state.json``, written
    last); the run's newest file where that cannot be read."""
    state = Path(run.path) / CKPT_DIR / f"step-{run.step:07d}" / "state.json"
    try:
        return state.stat().st_mtime
    except OSError:
        return run.modified


def chained_run(runs: str, stage: str, flag: str, messages: list[str] | None = None) -> str:
    """The newest ``stage`` run, for a command whose ``flag`` was not given; says which it took.

    None at all: a ``ConfigError`` listing the runs there are.
    """
    root = Path(runs).expanduser().resolve()
    name = newest_run(root, stage)
    if name is None:
        raise ConfigError(
            f"no {flag} given and no {stage} run with a checkpoint in {root}",
            f"pass {flag} NAME; {runs_hint(root)}",
        )
    note = f"no {flag} given: using {name}, the newest {stage} run"
    if messages is not None:
        messages.append(note)
    elif int(os.environ.get("RANK", 0)) == 0:
        print(note, file=sys.stderr)
    return name
