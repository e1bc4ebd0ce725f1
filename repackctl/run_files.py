"""Names of the files repackctl writes into a run folder, and which paths there it did not write.

Its own module, free of imports but ``repackctl.errors`` and ``repackctl.temp_names``, so that
the engine (``repackctl.train``), the run listing (``repackctl.runs``) and the settings layer
(which imports it without torch) share one definition without importing each other. ``runs rm``
refuses a run that holds a path :func:`foreign_paths` finds; a new run refuses a folder that
holds one (:func:`check_new_run_folder`). Also the pack run named inside a pack id
(:func:`pack_id_run_step`), which ``runs rm`` reads without loading torch, and the file a record
names by a relative path (:func:`recorded_file`: refused unless it is the file recorded).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from repackctl.errors import ConfigError, name_items
from repackctl.temp_names import temp_targets

# file names inside runs and samples folders
SAMPLING_JSON = "sampling.json"  # a run's sampling defaults (written by `import official`)
SETTINGS_JSON = ".sample-settings.json"  # the settings a samples folder was started with
PROTOCOL_JSON = "protocol.json"  # the protocol card of a samples folder
SAMPLES_NPZ = "samples.npz"  # ADM-layout images of a samples folder

CONFIG_HISTORY = "config_history.jsonl"  # a run's replaced configs and allowed changes
# the sha256 of config.json's own content (:func:`json_sha256`), a key of it; configs written
# before it have none and are read as they are
CONFIG_SHA256 = "config_sha256"
# the same for a checkpoint's state.json (``repackctl.train.checkpoint``)
STATE_SHA256 = "state_sha256"


# --------------------------------------------------------------------------- ownership

# keys of every config.json the training engine writes (``repackctl.train.config.TrainConfig``)
ENGINE_KEYS = frozenset({"run_dir", "steps", "global_batch", "lr", "seed", "ckpt_every", "extra"})
# What repackctl writes below a run folder outside ``checkpoints/``, as paths relative to it: the
# engine's config, header, logs, curves, TensorBoard events (with the record of the processes
# that wrote them, ``TB_WRITERS``) and image grids; the training lock
# (``repackctl.run_lock.LOCK_FILE``); the pack stage's ``pca.json``; the DiT's ``sampling.json``
# (``--preset paper``, ``import official``). A checkpoint folder's files: :func:`checkpoint_file`.
RUN_PATH = re.compile(
    r"config\.json|config_history\.jsonl|header\.json|metrics\.jsonl(\.tmp)?|log\.txt|train\.lock"
    r"|pca\.json|sampling\.json|curves\.png|images/step-\d{7}\.png"
    r"|tb/(hparams/)?events\.out\.tfevents\.[^/]+|tb/writers\.jsonl"
)
# the checkpoint folders of a run and the checkpoint writer's temporary ones
# (``repackctl.train.checkpoint``: ``.tmp-step-<step>-<pid>`` being written, ``.tmp-old-…``
# moved aside for a re-save, ``.tmp-pruned-…`` being deleted by the rotation), and the damaged
# ones its re-saves keep (``damaged-step-<step>-<n>``)
STEP_DIR = re.compile(r"step-\d{7}")
TMP_STEP_DIR = re.compile(r"\.tmp-(old-|pruned-)?step-\d{7}-\d+")
# a damaged step folder that a re-save of its step moved aside and kept
# (``repackctl.train.checkpoint.kept_damaged_name``): the run's, no checkpoint
KEPT_PREFIX = "damaged-"
KEPT_STEP_DIR = re.compile(rf"{KEPT_PREFIX}(step-\d{{7}})-(\d+)")
# every folder below a run folder
RUN_DIR = re.compile(
    rf"checkpoints(/({STEP_DIR.pattern}|{TMP_STEP_DIR.pattern}|{KEPT_PREFIX}step-\d{{7}}-\d+))?"
    r"|images|tb(/hparams)?"
)
# in a checkpoint folder, besides the files its ``state.json`` lists (weights, optimizer): the
# ``latent_stats.json`` of ``pack encode`` and the reports of ``evaluate recon`` / ``evaluate
# probe`` (``recon-<entry>.json`` with its grid ``recon-<entry>.png``, ``probe-<entry>.json``)
CHECKPOINT_EXTRA = re.compile(r"latent_stats\.json|(recon|probe)-[^/]+\.json|recon-[^/]+\.png")
# the reports among them, whose content is checked (``_report_of``)
REPORT_JSON = re.compile(r"(recon|probe)-[^/]+\.json")
# a checkpoint's weights and optimizer, where its ``state.json`` cannot be read (a folder being
# written, or a deletion cut short that took it)
WEIGHTS_NAME = re.compile(r"[\w-]+\.safetensors|optim\.pt")
# What a run folder can hold before the engine first writes config.json (a start killed early):
# the stage's log lines, the pack stage's PCA, the DiT's sampling defaults, the training lock,
# and the temporary of the engine's first config.json
STARTING_PATH = re.compile(r"log\.txt|pca\.json|sampling\.json|train\.lock|\.tmp-config\.json\.\d+")
# the name a run folder has while `runs rm` or `demo --fresh` deletes it (``repackctl.runs``)
REMOVING = ".removing-"


def _listed_files(ckpt: Path, states: dict[Path, set[str] | None]) -> set[str] | None:
    """The files that the ``state.json`` of the checkpoint folder ``ckpt`` lists (``files``), or
    None when it cannot be read; read once per folder (``states``)."""
    if ckpt not in states:
        data = read_json_dict(ckpt / "state.json")
        files = data.get("files") if data is not None else None
        states[ckpt] = set(files) if isinstance(files, dict) else None
    return states[ckpt]


def checkpoint_file(
    ckpt: Path,
    name: str,
    *,
    temp: bool = False,
    partial: bool = False,
    states: dict[Path, set[str] | None] | None = None,
) -> bool:
    """Whether the checkpoint writer, or a command that adds to a checkpoint, writes the file
    ``name`` (``temp``: a temporary of it) into the checkpoint folder ``ckpt``.

    Its weights and optimizer are the files its ``state.json`` lists (where that cannot be read,
    any :data:`WEIGHTS_NAME`). A folder being written (``.tmp-step-…``) holds nothing else, and
    no temporaries: the writer writes in place. A step folder holds :data:`CHECKPOINT_EXTRA`
    too, a ``recon-<entry>.png`` only beside its ``recon-<entry>.json`` (written after it),
    unless the folder is being deleted (``partial``; ``.tmp-old-…``, ``.tmp-pruned-…``)."""
    states = {} if states is None else states
    writing = ckpt.name.startswith(".tmp-step-")
    if name == "state.json" or (writing and temp):
        return not temp
    listed = _listed_files(ckpt, states)
    if not temp and (name in listed if listed is not None else WEIGHTS_NAME.fullmatch(name)):
        return True
    if writing or not CHECKPOINT_EXTRA.fullmatch(name):
        return False
    if temp or partial or ckpt.name.startswith(".tmp-") or not name.endswith(".png"):
        return True
    return (ckpt / f"{name.removesuffix('.png')}.json").is_file()


# a TensorBoard events file's name (``torch.utils.tensorboard``'s ``EventFileWriter``):
# ``events.out.tfevents.<time>.<host>.<pid>.<uid>`` (the host may hold dots)
EVENTS_NAME = re.compile(r"events\.out\.tfevents\.(\d+)\.(.+)\.(\d+)\.\d+")
# the processes that wrote a run's TensorBoard events (``record_tb_writer``), one JSON line each
TB_WRITERS = "tb/writers.jsonl"
# the step that an image grid or a step folder names
_STEP_NUMBER = re.compile(rf"(?:\.tmp-(?:old-|pruned-)?|{KEPT_PREFIX})?step-(\d{{7}})")


def record_tb_writer(run_dir: Path) -> None:
    """Record this process (host, pid, time) as a writer of the run's TensorBoard events, before
    it opens them: the events file's name carries the same host and pid, and :func:`foreign_paths`
    counts as the run's only the events files of a recorded process (a copy of another run's
    events, put there to compare, is the user's and `runs rm` refuses it). Called by
    ``repackctl.train.logging.MetricsLogger`` before its ``SummaryWriter``."""
    import socket
    import time

    path = run_dir / TB_WRITERS
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"host": socket.gethostname(), "pid": os.getpid(), "time": int(time.time())}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


@dataclass
class _RunFacts:
    """What a run folder records that tells its files from look-alikes, read once per check:
    ``steps`` (its config's last step: no grid or checkpoint of a later step is the run's),
    ``writers`` (the (host, pid) of the processes ``TB_WRITERS`` records, None without that
    file: runs of versions before the record), ``since`` (the time of its first record: events
    files named before it predate the record), and the ``state.json`` files read."""

    steps: int | None
    writers: set[tuple[str, int]] | None
    since: int | None
    states: dict[Path, set[str] | None]

    @classmethod
    def read(cls, folder: Path) -> _RunFacts:
        config = read_run_config(folder).config or {}
        steps = config.get("steps")
        steps = steps if isinstance(steps, int) and not isinstance(steps, bool) else None
        writers: set[tuple[str, int]] | None = None
        times: list[int] = []
        try:
            lines = (folder / TB_WRITERS).read_text(errors="replace").splitlines()
        except OSError:
            lines = None
        for line in lines or []:
            try:
                rec = json.loads(line)
                host, pid, when = str(rec["host"]), int(rec["pid"]), int(rec["time"])
            except (ValueError, TypeError, KeyError):
                continue  # a line a kill cut short
            writers = (writers or set()) | {(host, pid)}
            times.append(when)
        return cls(steps, writers, min(times) if times else None, {})

    def past_last_step(self, name: str) -> bool:
        """``name`` (an image grid, a step folder) names a step after the run's last one."""
        m = _STEP_NUMBER.match(name)
        return bool(m) and self.steps is not None and int(m.group(1)) > self.steps

    def events_written(self, name: str) -> bool:
        """The events file ``name`` is one a process of this run wrote: its host and pid are
        recorded (``TB_WRITERS``), or it is named before the first record (or there is none)."""
        m = EVENTS_NAME.fullmatch(name)
        if m is None:
            return False
        if self.writers is None or (self.since is not None and int(m.group(1)) < self.since):
            return True
        return (m.group(2), int(m.group(3))) in self.writers


def _report_of(ckpt: Path, name: str) -> bool:
    """Whether the ``recon-*.json`` / ``probe-*.json`` ``name`` in the checkpoint folder ``ckpt``
    is an `evaluate` report (a JSON object naming its run and a checkpoint of this step), not a
    file of the user's that only has such a name."""
    doc = read_json_dict(ckpt / name)
    if doc is None or not isinstance(doc.get("run"), str):
        return False
    where = doc.get("checkpoint")
    ours, theirs = _STEP_NUMBER.match(ckpt.name), _STEP_NUMBER.match(Path(str(where)).name)
    return isinstance(where, str) and bool(ours and theirs) and ours.group(1) == theirs.group(1)


def _step_dir_foreign(ckpt: Path, facts: _RunFacts) -> bool:
    """Whether the checkpoint folder ``ckpt`` (``step-N``, or a damaged one a re-save kept) is
    no checkpoint of the run: a step after its last one, or a ``state.json`` that does not
    verify (its ``state_sha256``) beside no weights (a damaged checkpoint keeps its weights; a
    user's ``step-…/state.json`` has none)."""
    if facts.past_last_step(ckpt.name):
        return True
    state = ckpt / "state.json"
    if not state.is_file() or sealed(read_json_dict(state), STATE_SHA256):
        return False
    try:
        return not any(WEIGHTS_NAME.fullmatch(p.name) for p in ckpt.iterdir())
    except OSError:
        return True


def _run_file(
    folder: Path, rel: PurePosixPath, temp: bool, partial: bool, facts: _RunFacts
) -> bool:
    """Whether repackctl writes the file ``rel`` (``temp``: a temporary of it) of the run folder
    ``folder``: :data:`RUN_PATH` (an image grid of a step the run reaches, an events file of a
    recorded writer: :class:`_RunFacts`), or in a checkpoint folder :func:`checkpoint_file`, a
    report there only with a report's content."""
    parts = rel.parts
    if parts[0] != "checkpoints":
        path = rel.as_posix()
        if not RUN_PATH.fullmatch(path):
            return False
        if parts[0] == "images":
            return not facts.past_last_step(rel.name)
        if parts[0] == "tb" and path != TB_WRITERS:
            return temp or facts.events_written(rel.name)
        return True
    if len(parts) != 3 or not any(
        p.fullmatch(parts[1]) for p in (STEP_DIR, TMP_STEP_DIR, KEPT_STEP_DIR)
    ):
        return False
    ckpt = folder / parts[0] / parts[1]
    if not checkpoint_file(ckpt, parts[2], temp=temp, partial=partial, states=facts.states):
        return False
    report = REPORT_JSON.fullmatch(parts[2]) and parts[2] not in (facts.states.get(ckpt) or ())
    return temp or not report or _report_of(ckpt, parts[2])


def _ours(
    folder: Path, rel: PurePosixPath, known: re.Pattern[str], partial: bool, facts: _RunFacts
) -> bool:
    """Whether the file ``rel`` of ``folder``, or the file it is a temporary of, is one that
    ``known`` matches (:func:`_run_file` for :data:`RUN_PATH`)."""
    for name, temp in [(rel.name, False), *((t, True) for t in temp_targets(rel.name))]:
        path = rel.with_name(name)
        if known is RUN_PATH and _run_file(folder, path, temp, partial, facts):
            return True
        if known is not RUN_PATH and known.fullmatch(path.as_posix()):
            return True
    return False


def _foreign_dir(folder: Path, rel: PurePosixPath, partial: bool, facts: _RunFacts) -> bool:
    """Whether the folder ``rel`` of the run folder ``folder`` is no folder a run holds
    (:data:`RUN_DIR`), or a ``step-N`` checkpoint folder that is not the run's
    (:func:`_step_dir_foreign`; not in the rest of a deletion, which may have taken its
    ``state.json``)."""
    if not RUN_DIR.fullmatch(rel.as_posix()):
        return True
    step_dir = len(rel.parts) == 2 and any(p.fullmatch(rel.name) for p in (STEP_DIR, KEPT_STEP_DIR))
    return step_dir and not partial and _step_dir_foreign(folder / rel, facts)


def foreign_paths(
    folder: Path, known: re.Pattern[str] = RUN_PATH, marker: str | None = None
) -> list[Path]:
    """The paths below ``folder`` that repackctl did not write there: files whose path relative to
    ``folder`` ``known`` does not match (nor that of the file they are a temporary of,
    :data:`repackctl.temp_names.TEMP_FORMS`), links, special files and folders that cannot be
    read, and, with ``marker``, files but temporaries of a first-level folder that does not hold
    that file (a samples root: each folder holds its settings file).

    With :data:`RUN_PATH` (a run folder) the check is exact: a folder no run holds
    (:data:`RUN_DIR`) or a checkpoint folder that is not the run's is named itself, a checkpoint
    folder's files are checked against its ``state.json`` (:func:`checkpoint_file`; in a
    ``.removing-<name>`` folder, the rest of a deletion cut short, as in a folder being
    deleted), and names are checked against what the run records (:class:`_RunFacts`: its last
    step, its TensorBoard writers; a report's content)."""
    foreign: list[Path] = []
    run = known is RUN_PATH
    partial = run and folder.name.startswith(REMOVING)
    facts = _RunFacts.read(folder) if run else _RunFacts(None, None, None, {})
    for dirpath, dirnames, filenames in os.walk(
        folder, onerror=lambda e: foreign.append(Path(e.filename or folder))
    ):
        for name in sorted([*dirnames, *filenames]):
            p = Path(dirpath) / name
            rel = PurePosixPath(p.relative_to(folder).as_posix())
            if p.is_symlink() or not (p.is_dir() or p.is_file()):
                foreign.append(p)
            elif p.is_dir():
                if run and _foreign_dir(folder, rel, partial, facts):
                    foreign.append(p)
                    dirnames.remove(name)  # all of it is the user's: named once
            elif (
                marker is not None
                and not (folder / rel.parts[0] / marker).is_file()
                and not temp_targets(name)
            ):
                foreign.append(p)
            elif not _ours(folder, rel, known, partial, facts):
                foreign.append(p)
    return foreign


def read_json_dict(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def protocol_card(doc: Any) -> dict[str, Any] | None:
    """The protocol card in a samples folder's ``protocol.json`` document: the document itself,
    or its ``protocol`` object (cards of some versions wrap it so); None when it is no object."""
    inner = doc.get("protocol", doc) if isinstance(doc, dict) else None
    return inner if isinstance(inner, dict) else None


def checkpoint_weights_sha256(checkpoint: Path, which: str) -> str | None:
    """The sha256 that the ``state.json`` of the checkpoint folder ``checkpoint`` records for its
    ``which`` weights (``<which>.safetensors`` in ``files``), or None (no such folder or record,
    or not readable)."""
    files = (read_json_dict(checkpoint / "state.json") or {}).get("files")
    sha = files.get(f"{which}.safetensors") if isinstance(files, dict) else None
    return sha if isinstance(sha, str) else None


def run_started(folder: Path) -> bool:
    """True once the engine wrote a run's ``config.json`` or a checkpoint (``state.json``) there."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        config = None
    if isinstance(config, dict) and ENGINE_KEYS <= config.keys():
        return True
    return any((folder / "checkpoints").glob("step-[0-9]*/state.json"))


def check_new_run_folder(folder: Path) -> None:
    """Refuse to start a run in a folder that holds files repackctl did not write.

    A missing or empty folder, a started run (:func:`run_started`, which resumes) and what a start
    killed early leaves (:data:`STARTING_PATH`, temporaries) pass. Anything else is the user's (a
    project folder of that name): the engine would overwrite its ``curves.png``, append to its
    ``log.txt``, and ``runs rm`` would later delete it all, so nothing is written there."""
    if not folder.is_dir() or run_started(folder):
        return
    foreign = foreign_paths(folder, STARTING_PATH)
    if foreign:
        raise ConfigError(
            f"{folder} already holds files that repackctl did not write: {name_items(foreign)}; "
            "nothing was written there",
            "pass another --name (or move those files out of the folder)",
        )


# --------------------------------------------------------------------------- checksummed JSON


def json_sha256(doc: dict[str, Any], key: str = "sha256") -> str:
    """The sha256 of ``doc`` (as parsed from JSON) as canonical JSON (sorted keys, no spaces),
    its own ``key`` left out: what a JSON file a later command trusts (``sampling.json``, a
    checkpoint's ``state.json``) carries, so that a reader tells an edited or damaged file from
    the one written."""
    body = {k: v for k, v in doc.items() if k != key}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def sealed(data: Any, key: str) -> bool:
    """``data`` is a JSON object whose ``key`` (when it has one) is the sha256 of the rest."""
    return isinstance(data, dict) and data.get(key, json_sha256(data, key)) == json_sha256(
        data, key
    )


@dataclass(frozen=True)
class StoredConfig:
    """A run's engine config as :func:`read_run_config` found it.

    ``config``: what to use (``config.json``, else its newest verified checkpoint's), None when
    neither holds one; ``problem``: why ``config.json`` was not used although it is there (``is
    not valid JSON (…)``, ``does not match the sha256 it was written with …``), else None;
    ``checkpoint``: the step folder whose ``state.json`` gave ``config``, else None."""

    config: dict[str, Any] | None
    problem: str | None = None
    checkpoint: str | None = None


def checkpoint_config(run_dir: Path) -> tuple[str, dict[str, Any]] | None:
    """(step folder, ``config``) of the run's newest checkpoint whose ``state.json`` verifies
    against its own sha256: the engine config, settings record included, it was trained with.
    Reads only the ``state.json`` files (a checkpoint's weights are not hashed here)."""
    for path in sorted((run_dir / "checkpoints").glob("step-[0-9]*/state.json"), reverse=True):
        data = read_json_dict(path)
        if sealed(data, STATE_SHA256) and isinstance(data.get("config"), dict):
            return path.parent.name, data["config"]
    return None


def read_run_config(run_dir: Path) -> StoredConfig:
    """The run's ``config.json``; when it is missing, not a JSON object or not what was written
    (its ``config_sha256``), the config its newest verified checkpoint recorded, with the
    problem named. One reading for the resume (``settings.resume.run_config``, which warns or
    refuses) and ``runs info`` (which shows the problem), so both say the same of one file."""
    path = run_dir / "config.json"
    problem = None
    if path.is_file():
        try:
            data = json.loads(path.read_text(errors="replace"))
            problem = "does not match the sha256 it was written with (edited or damaged)"
            if not isinstance(data, dict):
                problem = "is not a JSON object (damaged)"
        except ValueError as e:
            data, problem = None, f"is not valid JSON ({e})"
        if sealed(data, CONFIG_SHA256):
            return StoredConfig(data)
    found = checkpoint_config(run_dir)
    if found is None:
        return StoredConfig(None, problem)
    return StoredConfig(found[1], problem, found[0])


def pack_id_weights_sha8(pack_id: str | None) -> str | None:
    """The first 8 hex digits of the weights sha256 a pack id ends with (``…-<step:07d>-<sha8>``,
    ``pack_id_for``), or None where it has none."""
    m = re.search(r"-\d{7}-([0-9a-f]{8})$", pack_id or "")
    return m.group(1) if m else None


def pack_id_run_step(pack_id: str | None) -> tuple[str | None, int | None]:
    """The pack run and step inside a pack id ``<encoder entry>--<run>-<step:07d>-<sha8>``
    (``pack_id_for``), if it parses; else (None, None)."""
    m = re.search(r"--([^-].*?)-(\d{7})-[0-9a-f]{8}$", pack_id or "")
    return (m.group(1).split("--")[-1], int(m.group(2))) if m else (None, None)


def card_refiner_sha(out: Path, done: dict[str, Any]) -> str | None:
    """The sha256 of the refiner that refined the `sample --refiner` folder ``out`` (card
    ``done``): the card's ``refiner.sha256``; text-to-image cards of earlier versions record
    the refiner's path only, and then the sha256 its settings file recorded when the folder was
    started (the refiner `sample` checked every resume against). None: not recorded."""
    recorded = done.get("refiner")
    if isinstance(recorded, dict):
        return recorded.get("sha256")
    settings = read_json_dict(out / SETTINGS_JSON) or {}
    sha = settings.get("refiner") if isinstance(recorded, str) else None
    return sha if isinstance(sha, str) else None


def recorded_refiner(folder: Path) -> tuple[str | None, str | None]:
    """(sha256, checkpoint) of the refiner a samples folder records it was refined with, as
    `refine apply` and `sample` check a folder's refiner: a finished folder's card
    (``refiner``; :func:`card_refiner_sha`), an unfinished one's settings file (``refiner``:
    the sha256 it was started with). (None, None): not a refined folder (or nothing readable);
    the checkpoint is None where only a sha256 is recorded."""
    card = read_json_dict(folder / PROTOCOL_JSON)
    recorded = (card or {}).get("refiner")
    if card is not None and recorded:
        path = recorded.get("checkpoint") if isinstance(recorded, dict) else recorded
        sha = card_refiner_sha(folder, card)
        return (sha if isinstance(sha, str) else None), (path if isinstance(path, str) else None)
    sha = (read_json_dict(folder / SETTINGS_JSON) or {}).get("refiner")
    return (sha if isinstance(sha, str) and card is None else None), None


# --------------------------------------------------------------------------- recorded paths


def relative_record_problem(value: str, record: str, sha256: str | None = None) -> str | None:
    """Why the file path ``value`` that ``record`` holds cannot be read from this folder, or
    None (an absolute path: the reader's own checks apply).

    Records of older versions keep a relative path as it was typed (an extract's ``--weights``
    before commit 1cea524, an import's ``imported_from.file`` before 6dee648), and not the folder
    it was relative to: read from another folder it names another file, or none. A relative
    path is trusted only where it names a file here whose sha256 is ``sha256`` (what the record
    holds of that file; where it holds none, a file there)."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return None
    where = f"{record} is the relative path {value!r}, without the folder it was relative to"
    if not path.is_file():
        return f"{where}, and this folder ({Path.cwd()}) holds no such file"
    from repackctl.files import sha256_file  # torch: only where a checksum is compared

    if sha256 and sha256_file(path) != sha256:
        return (
            f"{where}, and {path.resolve()} is another file (its sha256 is not the recorded "
            f"{sha256[:12]}…)"
        )
    return None


def recorded_file(value: str, record: str, hint: str, sha256: str | None = None) -> Path:
    """The file that the path ``value`` held by ``record`` names, as an absolute path; a
    ``ConfigError`` with ``hint`` (how to record it again by its absolute path) where it is a
    relative one that cannot be trusted here (:func:`relative_record_problem`)."""
    problem = relative_record_problem(value, record, sha256)
    if problem is not None:
        raise ConfigError(problem, hint)
    return Path(os.path.abspath(Path(value).expanduser()))
