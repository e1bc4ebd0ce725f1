"""Resuming a run: its stored settings are the base, and every change is shown or refused.

A run stores the settings it was started with (``config.json`` → ``extra.settings``: values and
sources). When the same run is started again, :func:`reconcile` takes those values as the base
(what was given and what the run's preset filled in: ``--preset auto`` is not resolved again on
another machine) and applies only what the user gave this time (a flag, the environment or a
config file). A
change that keeps the run meaningful (more steps, unless a cosine lr schedule spans them; another
checkpoint interval, …) is printed as
``setting: old → new``; a change that breaks exact continuation (batch, learning rate, schedule,
model, latents, REPA, seed, …) is an error naming the setting, unless the user allows it with
``--allow-change SETTING`` (or ``all``), for that invocation only (the allowance is not kept for
later resumes). Allowed changes are appended to ``config_history.jsonl``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from repackctl.errors import CheckpointError, ConfigError, ResumeConflict
from repackctl.progress import warn
from repackctl.run_files import (
    STATE_SHA256,
    check_new_run_folder,
    read_json_dict,
    read_run_config,
    sealed,
)
from repackctl.run_lock import lock_run
from repackctl.settings.checks import (
    GIVEN_LAYERS,
    check_allow_change,
    check_schedules,
    undo_given,
)

# settings whose change keeps a resumed run an exact continuation of the same experiment
CONTINUABLE: dict[str, set[str]] = {
    # log_every_s: only how often a plain progress line is printed
    "": {
        "cache",
        "runs",
        "samples",
        "device",
        "num_workers",
        "imagenet_root",
        "memory_gb",
        "log_every_s",
    },  # fmt: skip
    "dit": {
        "steps",
        "ckpt_every",
        "keep_last",
        "log_every",
        "image_every",
        "image_steps",
        "prefetch",
        "parallel",
        "buffer_blocks",
        "in_memory",
        "max_nonfinite_steps",
        "name",
        "allow_change",
    },  # fmt: skip
    "pack": {
        "steps",
        "epochs",  # only a training length, as steps
        "ckpt_every",
        "keep_last",
        "log_every",
        "image_every",
        "grid_images",
        "in_memory",
        "max_nonfinite_steps",
        "run",
        "allow_change",
        # the parameters' digest is checked on resume (pack.task): a moved file resumes
        "watson_weights",
        "eval_split",
        "eval_entry",
        "eval_num",
        "inception_weights",
        "encode_batch_size",
    },  # fmt: skip
    "refine": {
        "steps",
        "epochs",  # only a training length, as steps
        "ckpt_every",
        "log_every",
        "max_nonfinite_steps",
        "name",
        "allow_change",
        "triplet_batch",
        "refiner",
    },  # fmt: skip
}
CONTINUABLE["t2i"] = CONTINUABLE["dit"]  # the text-to-image run is a DiT run with captions
# lr schedules whose lr at a step depends on the total ``steps`` (repackctl.train.schedule.lr_at:
# cosine decays over them); with one of these, more steps would change the lr of steps already
# done, so a change of steps breaks exact continuation. constant / warmup / step do not use steps.
# pack and refine have no schedule setting (the engine's constant lr): their steps stay free.
STEPS_SCHEDULES = frozenset({"cosine"})


@dataclass(frozen=True)
class Fixed:
    """A setting a resumed run cannot change, whatever ``--allow-change`` says: what it decides
    was made when the run started and is kept in its checkpoints.

    ``why``: what it decides (the refusal says it). ``instead``: what the user can do instead of
    the change, beside resuming as started or starting a new run (e.g. ``--repa-stop-step``), or
    a function of (old, new) giving it; empty for nothing. ``when``: which changes are fixed, a
    function of (old, new) values (None: every change). A change is refused here, allowed or
    not, before any model is built (:func:`reconcile`: allowed, it went on to the stage, which
    built the whole new network, an XL one for a preset change, and ended in a raw
    ``load_state_dict`` dump naming no setting). ``checked_here``: refused with a message of
    its own, naming the flag (``pca_samples`` was recorded and ignored)."""

    why: str
    instead: str | Callable[[Any, Any], str] = ""
    when: Callable[[Any, Any], bool] | None = None
    checked_here: bool = False

    def applies(self, old: Any, new: Any) -> bool:
        """Whether changing ``old`` to ``new`` is one this setting cannot make on resume."""
        return self.when is None or bool(self.when(old, new))

    def what_instead(self, old: Any, new: Any) -> str:
        """The way this setting's refusal names (may be empty)."""
        return self.instead(old, new) if callable(self.instead) else self.instead


# why a setting is fixed, shared by the sections it belongs to
_NETWORK = (
    "it shapes the network whose weights and optimizer state the run's checkpoints hold, "
    "which would not load into another one"
)
_DISC = (
    "it shapes the discriminator whose weights and optimizer state the run's checkpoints hold, "
    "which would not load into another one"
)
_LATENTS = (
    "the run trains on the packed latents it started on (their channel statistics scale every "
    "step), as its checkpoints record"
)
_PACK_DATA = (
    "the run trains on the cache entry and features it started on, as its checkpoints record"
)
_TEXT = (
    "the run's captions are the caption features it started on (and their text encoder), as its "
    "checkpoints record"
)
# `--arch dit` and `--arch sit` build the same network (another objective): allowed between them
_SAME_NETWORK_ARCHS = frozenset({"dit", "sit"})


def _arch_changes_network(old: Any, new: Any) -> bool:
    return not {old, new} <= _SAME_NETWORK_ARCHS


def _repa_switched(old: Any, new: Any) -> bool:
    """REPA turned on or off: ``repa_weight`` to or from 0 (another non-zero weight is allowed)."""
    return (float(old or 0) == 0) != (float(new or 0) == 0)


def _repa_instead(old: Any, new: Any) -> str:
    if float(new or 0) == 0:  # switched off: the alignment can stop from a step on instead
        return (
            "pass --repa-stop-step N --allow-change repa_stop_step to switch the alignment off "
            "from step N on"
        )
    return ""


_REPA = Fixed(
    "turning REPA on or off (repa_weight to or from 0) adds or removes the REPA projector, whose "
    "weights and optimizer state the run's checkpoints hold or lack",
    instead=_repa_instead,
    when=_repa_switched,
)
# the DiT settings of `train dit` and `train t2i` (a t2i run is a DiT run with captions)
_DIT_FIXED: dict[str, Fixed] = {
    **{n: Fixed(_NETWORK) for n in ("size", "patch", "depth", "width", "heads", "model")},
    **{n: Fixed(_NETWORK) for n in ("qk_norm", "no_shift", "repa_hidden")},
    "arch": Fixed(_NETWORK, when=_arch_changes_network),
    "repa_weight": _REPA,
    # dit.task.load_state_extra refuses other latents (pack_run and entry name them)
    **{n: Fixed(_LATENTS) for n in ("latents", "pack_run", "entry")},
}

#: settings a resumed run cannot change, not even with ``--allow-change``, per section: setting
#: name → :class:`Fixed`. The settings layer's refusal of such a change never offers
#: ``--allow-change`` (it offered it for REPA switched off, whose allowed change the stage then
#: refused): it names why, and what to do instead. Each was found by resuming a tiny run of each
#: command with the change allowed (tests/settings/test_resume_fixed_settings.py).
FIXED_ON_RESUME: dict[str, dict[str, Fixed]] = {
    "pack": {
        # pack.task._pca_fit / _whitening_fit: on a resume, from the checkpoint, never refitted
        "pca_samples": Fixed(
            "it sized the PCA (--method pca) or token whitening (--whiten) fit made when the run "
            "started; that fit is part of the run's checkpoints and its projection and decoder "
            "were trained on it, so a resume reuses it and another value would be ignored",
            checked_here=True,
        ),
        # pack.task._check_resume: the autoencoder config, projection form, pixel shuffle
        **{
            n: Fixed(_NETWORK)
            for n in ("method", "latent_channels", "projection_form", "whiten", "ch", "ch_mult")
        },
        **{
            n: Fixed(_NETWORK)
            for n in ("num_res_blocks", "attn_resolutions", "pixel_shuffle", "norm_groups")
        },
        # pack.task._check_resume_discriminator
        **{n: Fixed(_DISC) for n in ("disc_channels", "disc_layers", "disc_norm")},
        # pack.task._check_resume_data: the entry and features the settings name
        **{
            n: Fixed(_PACK_DATA)
            for n in ("encoder", "weights", "layer", "data", "split", "resolution", "num")
        },
        **{n: Fixed(_PACK_DATA) for n in ("entry", "features")},
    },
    "dit": _DIT_FIXED,
    "t2i": {
        **_DIT_FIXED,
        # t2i_task.load_state_extra / check_text_encoder: the caption features trained on
        **{n: Fixed(_TEXT) for n in ("text_features", "text_encoder")},
    },
    "refine": {
        # refine.task._check_resume_refiner / _check_resume_disc
        **{n: Fixed(_NETWORK) for n in ("base_channels", "output", "norm_groups")},
        **{n: Fixed(_DISC) for n in ("disc_channels", "disc_norm", "disc_init")},
        # the triplets' entry (its pack run's, RESOLVED_FROM): `--allow-change entry` moved a
        # refiner trained on the train split onto the held-out one
        "entry": Fixed(
            "the refiner trains on the triplets of the cache entry it started on, as its "
            "checkpoints record (another one, e.g. the held-out split, would change its data)"
        ),
        # refine.task._check_resume_has_disc: the GAN turned on (turned off, it resumes)
        "gan_weight": Fixed(
            "a run trained without the GAN (refine.gan_weight 0) has no discriminator in its "
            "checkpoints to go on with",
            when=lambda old, new: float(old or 0) == 0 and float(new or 0) > 0,
        ),
    },
}


def fixed_setting(section: str, key: str, old: Any, new: Any) -> Fixed | None:
    """The :class:`Fixed` entry that refuses changing ``key`` (dotted: ``dit.depth``) from
    ``old`` to ``new`` on resume, or None when that change can be allowed.

    A stored None (the run left the value to its model size or preset: ``--patch`` of
    ``tiny``) is never fixed: the value given now may be the one it resolved to, which
    ``--allow-change`` passes; :func:`reconcile` passes what the checkpoint built as ``old``
    where it knows it (:func:`checkpoint_network`), else the stage refuses another one."""
    sec, name = _section_of(key)
    fixed = FIXED_ON_RESUME.get(section, {}).get(name) if sec == section else None
    if fixed is None or old is None or not fixed.applies(old, new):
        return None
    return fixed


def _check_fixed(section: str, key: str, old: Any, new: Any, sources: dict[str, str]) -> None:
    """Refuse a change of a :data:`FIXED_ON_RESUME` setting ``checked_here`` (``key`` dotted),
    allowed or not, with a message of its own; the others, allowed or not, by :func:`_refuse`."""
    fixed = fixed_setting(section, key, old, new)
    if fixed is None or not fixed.checked_here:
        return
    flag = "--" + _section_of(key)[1].replace("_", "-")
    raise ResumeConflict(
        f"resuming would change {key}: {old!r} → {new!r}, which cannot change on resume "
        f"(--allow-change does not apply to it): {fixed.why}",
        f"{undo_given(sources.get(key, 'flag'), flag)} to continue as started, or start a new "
        f"run with another --name and {flag} {new}",
    )


def _refuse_fixed_allowance(section: str, allow: list[str], sources: dict[str, str]) -> None:
    """Refuse ``--allow-change`` naming a :data:`FIXED_ON_RESUME` setting ``checked_here`` on a
    resume: it was accepted and allowed nothing (the setting's value is reused from the
    checkpoint). (An allowance of another fixed setting is refused with the change it would
    make, by :func:`reconcile`.)"""
    for name, fixed in FIXED_ON_RESUME.get(section, {}).items():
        named = next((a for a in allow if a in (name, f"{section}.{name}")), None)
        if named is None or not fixed.checked_here:
            continue
        source = sources.get(f"{section}.allow_change", "flag")
        raise ResumeConflict(
            f"--allow-change {named} (from {source}): {section}.{name} cannot change on resume: "
            f"{fixed.why}",
            f"{undo_given(source, '--allow-change ' + named)} to continue as started, or start a "
            f"new run with another --name and --{name.replace('_', '-')} N",
        )


#: common settings that order a training run's samples (the engine's ``ORDER_KEYS``,
#: ``repackctl.train.trainer``): a resume cannot change them, not even with ``--allow-change``.
#: Refused here, before any stage writes (``refine train`` built a whole new set of noisy
#: triplets for the other seed before the engine refused it); setting name → why.
ORDER_ON_RESUME: dict[str, str] = {
    "seed": "each epoch's shuffle and each sample's flip and noise are drawn from it",
}


def _refuse_order_change(
    run_dir: Path, stored: dict[str, Any], current: dict[str, Any], section: str, allow: list[str]
) -> None:
    """Refuse a resume that gives another value of an :data:`ORDER_ON_RESUME` setting, or that
    names one in ``--allow-change`` (accepted, it allowed nothing: the engine refuses the
    change). Nothing is written before this. ``stored``, ``current``: settings records."""
    old, new = stored.get("values") or {}, current.get("values") or {}
    sources = current.get("sources") or {}
    for name, why in ORDER_ON_RESUME.items():
        if name not in old:
            continue
        was, now, flag = old[name], new.get(name), "--" + name.replace("_", "-")
        source = sources.get(name, "default")
        if given(sources, name, GIVEN_LAYERS) and now != was:
            undo = "" if source == "flag" else f" ({undo_given(source, flag)})"
            raise CheckpointError(
                f"{run_dir} was trained with {name} {was} (now {now}): resuming "
                f"would change the order of samples ({why}), which cannot change on resume "
                "(--allow-change does not apply to it)",
                f"resume with {flag} {was}{undo}, or start a new run with another --name",
            )
        if name in allow:
            source = sources.get(f"{section}.allow_change", "flag")
            raise ResumeConflict(
                f"--allow-change {name} (from {source}): {name} cannot change on resume, even "
                f"when allowed: another {name} would change the order of samples ({why})",
                f"{undo_given(source, '--allow-change ' + name)} to resume with {flag} {was}, "
                f"or start a new run with another --name and {flag} N",
            )


def _continuable(key: str, schedules: set[Any]) -> bool:
    """Whether changing ``key`` (dotted) keeps the resumed run an exact continuation;
    ``schedules``: the lr schedule the run recorded and the one given now, if any."""
    sec, name = _section_of(key)
    if name not in CONTINUABLE.get(sec, set()):
        return False
    if name == "steps":  # a schedule over the total steps ties the lr of done steps to them
        return not (schedules & STEPS_SCHEDULES)
    return True


def _why(key: str, schedules: set[Any]) -> str:
    """What a breaking change of ``key`` breaks (for steps: the lr of the steps already done)."""
    tied = sorted(str(s) for s in schedules & STEPS_SCHEDULES)
    if _section_of(key)[1] == "steps" and tied:
        return f"which changes the lr of the steps already done ({tied[0]} spans all steps)"
    return "which breaks exact continuation"


# layers that mean "the user gave this now" (a default or a preset value does not change a run)
GIVEN = (*GIVEN_LAYERS, "stored")  # "stored run config": given when the run started
# what a run keeps when nothing is given now: what was given, and what its preset filled in (the
# preset ``auto`` resolves by the machine: a run started on a CPU (small) and resumed where a
# GPU is visible switched to paper's lr, batch and EMA without a word)
KEPT = (*GIVEN, "preset", "launcher")  # launcher: the precision of accelerate launch


# the source of a kept value the launcher chose when the run started: a resume under another
# launcher setting is refused (repackctl.runtime.resolve_precision), not silently overruled
KEPT_FROM_LAUNCHER = "stored run config (launcher)"


#: the key of a resumed run's settings record (beside ``allowed``) that maps each value
#: :func:`reconcile` kept (dotted key) to [value, the source the run recorded for it]. Within
#: the invocation a kept value reads "stored run config" (:data:`GIVEN`: a later preset or
#: default does not move it, and ``--show-config`` says so); the engine takes the map out of the
#: record and writes those sources back into ``config.json`` for the values still as stored
#: (``train.trainer``), so a resume that changes nothing writes the ``config.json`` the run
#: started with (it wrote every kept source as "stored run config": another config_sha256, and
#: a ``replaced`` line in ``config_history.jsonl`` for no change). The next resume keeps them
#: alike: every such source is one of :data:`KEPT`.
STARTED_SOURCES = "started_sources"


def _kept_source(old_sources: dict[str, str], key: str) -> str:
    source = old_sources.get(key, "default")  # "launcher", or kept from it on an earlier resume
    launcher = source.split(" ")[0] == "launcher" or source.endswith("(launcher)")
    return KEPT_FROM_LAUNCHER if launcher else "stored run config"


def given(sources: dict[str, str], key: str, layers: tuple[str, ...] = GIVEN) -> bool:
    """Whether the source of ``key`` (``flag``, ``env …``, ``preset …``) is one of ``layers``."""
    return sources.get(key, "default").split(" ")[0] in layers


@dataclass
class Reconciled:
    """The settings to resume with, and what changed against the stored ones."""

    values: dict[str, Any]
    sources: dict[str, str]
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)
    allowed: list[tuple[str, Any, Any]] = field(default_factory=list)
    #: each stored value kept because no layer gives it now (dotted key → (value, the source
    #: the run recorded for it)): its source reads "stored run config" for this invocation
    kept: dict[str, tuple[Any, str]] = field(default_factory=dict)
    #: each value no layer gave that changes with the resume (a preset change allowed brings its
    #: preset's values; ``--allow-change NAME`` a changed default): (key, old, new, its source)
    brought: list[tuple[str, Any, Any, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """``setting: old → new`` for every change (allowed ones marked, brought ones with the
        preset or default that brings them)."""
        out = [f"{k}: {a!r} → {b!r}" for k, a, b in self.changes]
        out += [f"{k}: {a!r} → {b!r} (allowed by --allow-change)" for k, a, b in self.allowed]
        return out + [f"{k}: {a!r} → {b!r} ({source})" for k, a, b, source in self.brought]

    def history(self) -> list[tuple[str, Any, Any]]:
        """The changes ``config_history.jsonl`` records: the allowed ones and the brought ones."""
        return [*self.allowed, *((k, a, b) for k, a, b, _ in self.brought)]


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _section_of(key: str) -> tuple[str, str]:
    head, _, tail = key.partition(".")
    return (head, tail) if tail else ("", head)


#: the source of a value no layer gave that a run resolved when it started (the latents and entry
#: of `train dit`, the caption group of `train t2i`, the pack run of `refine train`): a "stored"
#: value, so that a resume reuses it (``GIVEN``) whatever the cache or runs hold by then
RESOLVED_AT_START = "stored run config (resolved when the run started)"


def record_resolved(record: dict[str, Any] | None, section: str, values: dict[str, Any]) -> None:
    """Put ``values`` (setting name → what the run resolved) into the settings ``record`` a new
    run stores (``config.json`` → extra.settings), each where no layer named it (its recorded
    value is None). Without it a resume with ``--name`` resolves them again and may pick a newer
    one (then refused as a change). A resumed run's record is the reconciled one, which already
    carries the stored values; runs from before a value was recorded fall back on their
    checkpoint's."""
    if record is None:
        return
    stored = record.setdefault("values", {}).setdefault(section, {})
    sources = record.setdefault("sources", {})
    for key, value in values.items():
        if stored.get(key) is None:
            stored[key] = value
            sources[f"{section}.{key}"] = RESOLVED_AT_START


def with_resolved(values: dict[str, Any], record: dict[str, Any] | None, section: str) -> dict:
    """``values`` (a task's ``section`` settings as its ``config.json`` keeps them beside the
    record: extra.train, extra.refine) with each None that :func:`record_resolved` put into
    the settings ``record`` filled in, as a resume of the run has them (from its record): the
    first start wrote None there, so a resume that changed nothing wrote another config.json."""
    stored = ((record or {}).get("values") or {}).get(section) or {}
    sources = (record or {}).get("sources") or {}
    return {
        k: stored.get(k) if v is None and sources.get(f"{section}.{k}") == RESOLVED_AT_START else v
        for k, v in values.items()
    }


#: settings that apply only to the invocation that gives them: never kept from the stored record
#: (a run resumed once with ``--allow-change lr`` stored it, and every later resume then let
#: the pack and refine checkpoint checks pass changes of lr without it), nor shown as a change;
#: what an allowance let through stays in ``config_history.jsonl``
ONLY_NOW = frozenset({"allow_change"})


def reconcile(
    stored: dict[str, Any],
    current: dict[str, Any],
    section: str,
    allow: list[str],
    network: dict[str, Any] | None = None,
) -> Reconciled:
    """Stored settings record + this invocation's record → the settings to resume with.

    Both records are ``ResolvedSettings.to_dict()`` (``values`` nested, ``sources`` flat). Only
    the common keys and ``section`` are compared; other sections are taken from ``current``.
    ``network``: what the run's checkpoint built for each network setting it stores as None
    (dotted key → value, :func:`checkpoint_network`), so that another value is refused here.
    """
    old, new = _flat(stored.get("values", {})), _flat(current.get("values", {}))
    sources = dict(current.get("sources", {}))
    old_sources = stored.get("sources", {})

    # only what some layer gave is kept: defaults and presets fill the rest as they did before
    merged = {k: v for k, v in new.items() if given(sources, k)}
    sched = f"{section}.schedule" if section else "schedule"
    schedules = {old.get(sched), new.get(sched) if given(sources, sched) else None}
    out = Reconciled(values={}, sources=sources)
    _refuse_fixed_allowance(section, allow, sources)
    breaking, brought = [], []
    for key, value in new.items():
        sec, name = _section_of(key)
        if sec not in ("", section) or key not in old or name in ONLY_NOW:
            continue
        if not given(sources, key):
            if given(old_sources, key, KEPT):
                merged[key], sources[key] = old[key], _kept_source(old_sources, key)
                out.kept[key] = (old[key], old_sources[key])
            elif value != old[key] and old_sources.get(key) != RESOLVED_SOURCE:
                brought.append((key, old[key], value))  # a default's or the new preset's value
            continue
        if value == old[key]:
            continue
        _check_fixed(section, key, old[key], value, sources)
        was = _built(key, old[key], network)
        if _continuable(key, schedules):
            out.changes.append((key, old[key], value))
        elif _allows(allow, key) and (was == value or not fixed_setting(section, key, was, value)):
            out.allowed.append((key, old[key], value))
        else:  # named as built (the same value as built: None → it, which can be allowed)
            breaking.append((key, old[key] if was == value else was, value))
    if breaking:
        _refuse(breaking, sources, schedules, section)
    _bring(out, section, brought, allow, network)
    _check_preset_change(out, section, merged, current.get("sources", {}))
    _length_in_epochs(section, merged, sources, current.get("sources", {}), out)
    out.values = _nest(merged)
    return out


def _allows(allow: list[str], key: str) -> bool:
    """Whether ``--allow-change`` (``allow``) names ``key`` (dotted), its name or ``all``."""
    return "all" in allow or key in allow or _section_of(key)[1] in allow


def _built(key: str, value: Any, network: dict[str, Any] | None) -> Any:
    """``value`` of ``key`` as the run's network has it: a stored None (left to the model size:
    ``--depth`` not given) is what the checkpoint built, where ``network`` knows it."""
    return (network or {}).get(key, value) if value is None else value


def _bring(
    out: Reconciled,
    section: str,
    brought: list[tuple[str, Any, Any]],
    allow: list[str],
    network: dict[str, Any] | None,
) -> None:
    """Say each value a default or the new preset brings (no layer gave it, and the run did not
    keep it) where the resume lets it through: an allowed preset change brings its preset's
    values, ``--allow-change NAME`` (or ``all``) a changed default. They were applied without a
    word (``--preset paper --allow-change preset`` changed ``latent_sampling``, ``schedule``,
    ``ema_warmup``, … with only ``preset`` shown and recorded): each is now an allowed change
    (printed, in ``config_history.jsonl``), marked with its source. One that shapes the network
    (:data:`FIXED_ON_RESUME`) is refused here, before any model is built. The rest (not let
    through) is kept as stored by :func:`keep_started_values`."""
    change = next((c for c in out.allowed if c[0] == f"{section}.preset"), None)
    through = [(k, a, b) for k, a, b in brought if change or _allows(allow, k)]
    fixed = []
    for key, was, value in through:
        built = _built(key, was, network)
        if built != value and fixed_setting(section, key, built, value) is not None:
            fixed.append((key, built, value))
    if fixed:
        _refuse_brought(fixed, out.sources, section, change)
    out.brought = [(k, a, b, out.sources.get(k, "default")) for k, a, b in through]


def _refuse_brought(
    fixed: list[tuple[str, Any, Any]], sources: dict[str, str], section: str, preset: tuple | None
) -> None:
    """Refuse the change of a :data:`FIXED_ON_RESUME` setting that the new preset (``preset``:
    its allowed change, if any) or a default would bring, naming each, why it cannot change,
    and the run's own values, which given with the preset are kept."""
    changes = "; ".join(
        f"{k}: {a!r} → {b!r} (from {sources.get(k, 'default')})" for k, a, b in fixed
    )
    message = f"resuming would change {changes}"
    if preset is not None:
        was = f"{preset[0]}: {preset[1]!r} → {preset[2]!r}"
        message = f"resuming would change {was}, which brings {changes}"
    for k, _, _ in fixed:
        why = FIXED_ON_RESUME[section][_section_of(k)[1]].why
        message += f"; {k} cannot change on resume (--allow-change does not apply to it): {why}"
    own = " ".join(_flag_of(_section_of(k)[1], a) for k, a, _ in fixed)
    if preset is not None:
        hint = f"{undo_given(sources.get(preset[0], 'flag'), '--preset')} to continue as started"
    else:
        hint = "drop --allow-change to continue as started"
    values, them = ("values", "them") if len(fixed) > 1 else ("value", "it")
    raise ResumeConflict(
        message,
        f"{hint}, give the run's own {values} ({own}) to keep {them}, or start a new run with "
        "another --name",
    )


def _flag_of(name: str, value: Any) -> str:
    """The flag that gives ``value`` to setting ``name`` (a switch: ``--qk-norm`` / ``--no-…``)."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {value}"


def _check_preset_change(
    out: Reconciled, section: str, merged: dict[str, Any], now: dict[str, str]
) -> None:
    """Refuse an allowed change of the preset that would change only its name: the run keeps
    every value its old preset filled in (``KEPT``), so ``--preset paper --allow-change all`` on
    a ``small`` run went on with small's lr, batch and model, recorded and shown as ``paper``
    (with paper's TF32 choice). Values given now, or that the new preset (or the default) gives
    as the old one did, are not in the way."""
    from repackctl.settings import Settings  # here: the settings package imports this module

    change = next((c for c in out.allowed if c[0] == f"{section}.preset"), None)
    field = Settings.model_fields.get(section)
    if change is None or field is None:
        return
    model, (_, old, new) = field.annotation, change
    presets = getattr(model, "PRESETS", {})
    stale = []
    for name, value in presets.get(old, {}).items():
        key = f"{section}.{name}"
        if given(now, key, GIVEN_LAYERS) or key not in merged or merged[key] != value:
            continue  # given now, or not the old preset's value: kept on purpose
        default = model.model_fields[name].get_default(call_default_factory=True)
        target = presets.get(new, {}).get(name, default)
        if target != value:
            stale.append((name, value, target))
    if not stale:
        return
    listed = ", ".join(f"{n} {v!r} ({new}: {t!r})" for n, v, t in stale[:6])
    more = f" and {len(stale) - 6} more" if len(stale) > 6 else ""
    name, _, target = stale[0]
    raise ResumeConflict(
        f"resuming would change {section}.preset: {old!r} → {new!r}, but a resumed run keeps the "
        f"values its preset filled in: it would train on with {old}'s {listed}{more}, recorded "
        f"as {new}",
        f"drop --preset to continue as started, start a new run with another --name and "
        f"--preset {new}, or give each value to change (e.g. --{name.replace('_', '-')} "
        f"{target}) with --allow-change",
    )


# the source of a stored step count that ``--epochs`` given on resume replaced
FROM_EPOCHS = "from epochs"


def _length_in_epochs(
    section: str,
    merged: dict[str, Any],
    sources: dict[str, str],
    now: dict[str, str],
    out: Reconciled,
) -> None:
    """``--epochs`` given now (and no ``--steps``) sets the length of a run that was started with
    ``--steps``: its stored step count would win over the epochs (pack and refine take a given
    step count first), and the run stopped at once with "nothing to train"."""
    steps, epochs = f"{section}.steps", f"{section}.epochs"
    if not given(now, epochs) or given(now, steps) or steps not in merged:
        return
    out.changes.append((steps, merged.pop(steps), FROM_EPOCHS))
    sources[steps] = FROM_EPOCHS


def _refuse(
    breaking: list[tuple[str, Any, Any]], sources: dict[str, str], schedules: set, section: str
) -> None:
    """A ResumeConflict naming every breaking change, each with where it was given. The hint
    offers ``--allow-change`` only for the changes it can allow: one of a
    :data:`FIXED_ON_RESUME` setting is named with why it cannot change and what to do instead
    (``--allow-change repa_weight`` was offered for REPA switched off, and then refused)."""
    key = breaking[0][0]
    changes = "; ".join(f"{k}: {x!r} → {y!r}" for k, x, y in breaking)
    undo = sorted({undo_given(sources.get(k, "flag"), "the flag") for k, _, _ in breaking})
    fixed = [(k, f, f.what_instead(x, y)) for k, x, y in breaking
             if (f := fixed_setting(section, k, x, y)) is not None]  # fmt: skip
    free = sorted({k.split(".")[-1] for k, *_ in breaking} - {k.split(".")[-1] for k, *_ in fixed})
    message = f"resuming would change {changes}" + (f", {_why(key, schedules)}" if free else "")
    for k, f, _ in fixed:
        message += f"; {k} cannot change on resume (--allow-change does not apply to it): {f.why}"
    ways = [f"{' and '.join(undo)} to continue as started", *(i for _, _, i in fixed if i)]
    ways.append("start a new run with another --name")
    if free:
        them = "them" if len(free) > 1 else "it"
        ways.append(f"pass {' '.join(f'--allow-change {n}' for n in free)} to change {them} anyway")
    raise ResumeConflict(message, ", ".join(ways[:-1]) + f", or {ways[-1]}")


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        d = out
        parts = key.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = value
    return out


def run_config(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``config.json``, or, when it is missing, not valid JSON or not what was written
    (its ``config_sha256``), the config its newest checkpoint recorded (a warning says so when
    the file was there); None for a run with neither. Settings read from a damaged or lost
    ``config.json`` would silently resume with other values (a changed lr, a default for each
    value it lost): refused when no checkpoint holds them."""
    found = read_run_config(run_dir)
    if found.problem is None:
        return found.config
    path = run_dir / "config.json"
    if found.config is None:
        raise ConfigError(
            f"{path} {found.problem}", "restore it, or start a new run with another --name"
        )
    message = (
        f"{path} {found.problem}: using the settings its checkpoint {found.checkpoint} recorded"
    )
    if message not in _WARNED:  # a resume reads the record more than once: said once
        _WARNED.add(message)
        warn(message)
    return found.config


_WARNED: set[str] = set()


def stored_record(run_dir: Path, section: str = "") -> dict[str, Any] | None:
    """The settings record a run was started with (``config.json`` → extra.settings), or None.

    A run without one (started through the library by an older version) still keeps its task's
    settings (extra.train, or extra.<section>, with extra.stage naming the section): they stand
    in as the stored values, so what this invocation gives is compared with them, and what it
    does not give stays as the run had it."""
    data = run_config(run_dir)
    if data is None:
        return None
    extra = data.get("extra") or {}
    record = extra.get("settings")
    if isinstance(record, dict) and "values" in record:
        return with_trained_on(record, run_dir, section)
    kept = extra.get(section, extra.get("train"))  # refine keeps its own; dit and t2i "train"
    if section and extra.get("stage") == section and isinstance(kept, dict):
        # every kept value counts as given, so one not given now stays as the run had it
        record = {"values": {section: kept}, "sources": {f"{section}.{k}": "stored" for k in kept}}
        return with_trained_on(record, run_dir, section)
    return None


#: where a run's checkpoint (``state.json`` → extra) names what the run resolved when it started:
#: the values :func:`record_resolved` puts into the settings record of newer runs
TRAINED_ON: dict[str, dict[str, tuple[str, str]]] = {
    "dit": {"latents": ("cache", "latents"), "entry": ("cache", "entry")},
    "t2i": {
        "latents": ("cache", "latents"),
        "entry": ("cache", "entry"),
        "text_features": ("text", "features"),
    },
    "refine": {"pack_run": ("pack", "run")},
}
#: the source of such a value that a run's record lacked and its checkpoint named
TRAINED_BY_CHECKPOINT = "stored run config (as its checkpoint recorded)"

#: what a run resolves, on every start and resume alike, from what it keeps (its record stores
#: None): the entry and features of a pack run's -e/--resolution/-n, the REPA features of the
#: latents, the pack run of --latents, a refiner's entry (its pack run's). Where the checkpoint
#: names it, it stands in the stored record for the comparison only (:data:`RESOLVED_SOURCE`,
#: not kept): the same value given on resume is no change (it was refused as ``None → 'E'``),
#: another one is refused as ``'E' → 'F'``, and without it the run resolves it as before
RESOLVED_FROM: dict[str, dict[str, tuple[str, str]]] = {
    "pack": {"entry": ("cache", "entry"), "features": ("cache", "features")},
    "dit": {"features": ("cache", "features"), "pack_run": ("pack", "run")},
    "t2i": {"features": ("cache", "features"), "pack_run": ("pack", "run")},
    "refine": {"entry": ("cache", "entry")},
}
#: the source of a :data:`RESOLVED_FROM` value in a stored record (no layer: never kept)
RESOLVED_SOURCE = "resolved from what the run keeps (as its checkpoint recorded)"


def with_trained_on(record: dict[str, Any], run_dir: Path, section: str) -> dict[str, Any]:
    """``record`` with each :data:`TRAINED_ON` and :data:`RESOLVED_FROM` value it stores as None
    (a run started before the value was recorded: ``record_resolved``) taken from the run's
    newest checkpoint.

    Without it, such a run resumed with that value given (``--pack-run A``, the one it was
    trained on) was refused as a change ``None → 'A'``, where a resume without it worked; a
    value given that differs from the checkpoint's is still refused, as ``'A' → 'B'``."""
    names = {**RESOLVED_FROM.get(section, {}), **TRAINED_ON.get(section, {})}
    stored = (record.get("values") or {}).get(section)
    missing = [n for n in names if isinstance(stored, dict) and n in stored and stored[n] is None]
    extra = _checkpoint_extra(run_dir, section) if missing else {}
    found = {}
    for name in missing:
        head, key = names[name]
        value = (extra.get(head) or {}).get(key) if isinstance(extra.get(head), dict) else None
        if isinstance(value, str) and value:
            found[name] = value
    if not found:
        return record
    values = {**record["values"], section: {**stored, **found}}
    trained = TRAINED_ON.get(section, {})
    sources = {
        **record.get("sources", {}),
        **{f"{section}.{n}": TRAINED_BY_CHECKPOINT if n in trained else RESOLVED_SOURCE
           for n in found},
    }  # fmt: skip
    return {**record, "values": values, "sources": sources}


def _checkpoint_extra(run_dir: Path, section: str) -> dict[str, Any]:
    """The task extra of the run's newest checkpoint whose ``state.json`` verifies against its
    own sha256 (the weights are not read), when it holds a ``section`` run; else empty."""
    for path in sorted((run_dir / "checkpoints").glob("step-[0-9]*/state.json"), reverse=True):
        data = read_json_dict(path)
        if sealed(data, STATE_SHA256) and isinstance((data or {}).get("extra"), dict):
            extra = data["extra"]
            return extra if extra.get("stage") == section else {}
    return {}


#: the network settings a DiT or t2i run may store as None (left to its model size), and the key
#: of the checkpoint's ``model_config`` that holds what the run built for each
NETWORK_BUILT = {
    "patch": "patch_size",
    "depth": "depth",
    "width": "hidden_size",
    "heads": "num_heads",
}


def checkpoint_network(run_dir: Path, section: str) -> dict[str, Any]:
    """What the run's newest checkpoint built for each :data:`NETWORK_BUILT` setting (dotted key
    → value), for ``dit`` and ``t2i``; else empty. A run that left ``--depth`` to its size
    stores None, which no given value was compared with: ``--depth 3 --allow-change all`` went
    on to build the network and ended in a raw ``load_state_dict`` dump."""
    if section not in ("dit", "t2i"):
        return {}
    built = _checkpoint_extra(run_dir, section).get("model_config")
    if not isinstance(built, dict):
        return {}
    return {f"{section}.{k}": built[v] for k, v in NETWORK_BUILT.items() if v in built}


def run_stage(run_dir: Path) -> str | None:
    """The stage (pack, dit, t2i, refine) whose run ``run_dir`` holds: ``extra.stage`` of its
    ``config.json``, else of its newest checkpoint's ``state.json``; None for a new run."""
    states = sorted((run_dir / "checkpoints").glob("step-[0-9]*/state.json"), reverse=True)
    for data in map(read_json_dict, [run_dir / "config.json", *states]):
        extra = (data or {}).get("extra")
        if isinstance(extra, dict) and isinstance(extra.get("stage"), str):
            return extra["stage"]
    return None


def check_run_stage(run_dir: Path, section: str) -> None:
    """Refuse to resume, as a ``section`` run, a folder that holds a run of another stage (its
    settings would be compared with the wrong section, or its checkpoint shown as this stage's)."""
    stage = run_stage(run_dir)
    if section and stage is not None and stage != section:
        raise ConfigError(
            f"{run_dir} is a {stage} run, not a {section} run; nothing was written there",
            f"pass another --name to start a new {section} run (the {stage} run stays as it is)",
        )


def resume_settings(
    run_dir: Path, settings: Any, record: dict[str, Any] | None, section: str
) -> tuple[Any, dict[str, Any] | None, Reconciled | None]:
    """(settings, record) to resume ``run_dir`` with; unchanged for a new run or no record.

    Before any stage writes, a new run refuses a folder holding files repackctl did not write,
    any run refuses a folder of another stage's run, and a run folder that exists is locked for
    this process (``repackctl.run_lock``: refused while another process trains it)."""
    check_allow_change(settings, section, (record or {}).get("sources", {}))
    check_new_run_folder(run_dir)
    check_run_stage(run_dir, section)
    stored = stored_record(run_dir, section)
    if stored is None or record is None:
        check_schedules(settings, (record or {}).get("sources", {}), section)
        lock_run(run_dir)  # after every refusal here; held until the stage ends (released_after)
        return settings, record, None
    allow = list(getattr(getattr(settings, section), "allow_change", None) or [])
    _refuse_order_change(run_dir, stored, record, section, allow)
    rec = reconcile(stored, record, section, allow, checkpoint_network(run_dir, section))
    try:
        resumed = type(settings).model_validate(rec.values)
    except ValidationError as e:
        raise ConfigError(
            f"the stored settings of {run_dir} are no longer valid: {e.errors()[0]['msg']}",
            "start a new run with another --name",
        ) from None
    # the record keeps every value (as a first start does): the next resume compares them all;
    # the allowed changes go to config_history.jsonl when the engine writes the record, i.e. when
    # the run really goes on (``train.trainer._write_config``)
    check_schedules(resumed, rec.sources, section)
    lock_run(run_dir)  # after every refusal here; held until the stage ends (released_after)
    out = {"values": resumed.model_dump(mode="json"), "sources": rec.sources}
    if rec.history():
        out["allowed"] = rec.history()
    if rec.kept:  # config.json records them with the sources they started with (the engine)
        out[STARTED_SOURCES] = {k: [v, s] for k, (v, s) in rec.kept.items()}
    return resumed, out, rec


def resume_lines(rec: Reconciled | None, kept: list[str]) -> list[str]:
    """The log lines of a resume: each change (``resume: setting: old → new``, allowed ones
    marked) of :func:`resume_settings`'s ``rec`` (None: a new run), then each value
    :func:`keep_started_values` ``kept``."""
    return [f"resume: {line}" for line in [*(rec.lines() if rec else []), *kept]]


def check_new_run(
    steps: int, run_dir: Path, section: str, sources: dict[str, str] | None = None
) -> None:
    """A run without a checkpoint trains at least one step: ``--steps 0`` would write a run
    folder with no checkpoint in it (and a summary of nothing)."""
    if steps >= 1:
        return
    origin = (sources or {}).get(f"{section}.steps")
    raise ConfigError(
        f"{section}.steps is {steps}"
        + (f" (from {origin})" if origin else "")
        + f": run {run_dir.name} has no checkpoint yet, so it would train nothing and write no "
        "checkpoint",
        "pass --steps N with N >= 1; --steps 0 only shows a run that has a checkpoint",
    )


def _refuse_started_without(key: str, before: Any, value: Any, section: str) -> None:
    """Refuse ``key`` given as ``value`` on resume of a run that started before it was a
    setting and trained with ``before``; ``--allow-change`` is offered unless the setting is
    one a resume cannot change (:func:`fixed_setting`: the refiner's ``disc_init``)."""
    fixed = fixed_setting(section, key, before, value)
    name = _section_of(key)[1]
    why = "which breaks exact continuation"
    ways = ["drop the flag to continue as started", "start a new run with another --name"]
    if fixed is None:
        ways.append(f"pass --allow-change {name} to change it anyway")
    else:
        why = f"which cannot change on resume (--allow-change does not apply to it): {fixed.why}"
        ways[1:1] = [i for i in (fixed.what_instead(before, value),) if i]
    raise ResumeConflict(
        f"resuming would change {key}: {before!r} → {value!r} (the run started before {name} "
        f"was a setting, and trained with {before!r}), {why}",
        ", ".join(ways[:-1]) + f", or {ways[-1]}",
    )


def _brought_unstored(
    section: str,
    old: dict[str, Any],
    new: dict[str, Any],
    sources: dict[str, str],
    started_without: dict[str, Any],
    preset_changed: bool,
) -> list[tuple[str, Any, Any]]:
    """(key, started, now) of each setting the stored record lacks (the run started before it
    existed; ``started_without`` its value then) that the resume lets change: an allowed preset
    change brings its preset's value, ``--allow-change NAME`` (or ``all``) the value given or
    the default. :func:`reconcile` says and records such changes of the stored values only, so
    ``--preset paper --allow-change preset`` on a run older than ``tf32`` / ``cos_norm_floor``
    took paper's ``tf32 False`` and ``cos_norm_floor 0.0`` without a word. One that shapes the
    network (:data:`FIXED_ON_RESUME`) is refused, as :func:`reconcile` refuses it; so is a
    value given now without its allowance, as the stored ones are."""
    allow = set(new.get("allow_change") or [])
    out, fixed = [], []
    for name, before in started_without.items():
        key, value = f"{section}.{name}", new.get(name, before)
        if name in old or value == before or name in ONLY_NOW:
            continue
        if given(sources, key) and not ({"all", name, key} & allow):
            if preset_changed:  # (without one, keep_started_values refuses it)
                _refuse_started_without(key, before, value, section)
            continue
        if not (preset_changed or {"all", name, key} & allow):
            continue  # kept as the run started (keep_started_values)
        if fixed_setting(section, key, before, value) is not None:
            if given(sources, key):
                _refuse_started_without(key, before, value, section)
            fixed.append((key, before, value))
        out.append((key, before, value))
    if fixed:
        preset = (f"{section}.preset", old.get("preset"), new.get("preset"))
        _refuse_brought(fixed, sources, section, preset if preset_changed else None)
    return out


def _brought_source(sources: dict[str, str], key: str) -> str:
    """What brings the change of ``key`` that :func:`_brought_unstored` lets through, as the
    resume lines of :class:`Reconciled` name it."""
    if given(sources, key):
        return "allowed by --allow-change"
    return sources.get(key, "default")


def keep_started_values(
    run_dir: Path,
    settings: Any,
    record: dict[str, Any] | None,
    section: str,
    started_without: dict[str, Any],
) -> tuple[Any, dict[str, Any] | None, list[str]]:
    """A resumed run keeps the ``section`` values it started with that no layer gives now;
    returns the settings, the record and a line for each value kept.

    :func:`reconcile` keeps the stored values a flag, the environment or a file gave; one a
    preset or a default gave takes this version's preset or default. Where those changed since
    the run started (the dit paper preset's ``latent_sampling``, ``kernels`` and ``tf32``, the
    refine paper preset's ``flip`` did), the run would silently go on with another recipe: such
    a value stays as stored, unless ``--allow-change`` names it or the preset itself was
    changed. ``started_without`` names the settings a stored record may lack (the run started
    before they existed) with the value such a run trained with; a value given now that differs
    from it is refused like any breaking change, and one the resume lets change (an allowed
    preset change, ``--allow-change``) is said and recorded as :func:`reconcile` says the
    stored ones (:func:`_brought_unstored`)."""
    stored = stored_record(run_dir, section)
    if stored is None or record is None:
        return settings, record, []
    old_sources = stored.get("sources") or {}
    old = {
        k: v
        for k, v in ((stored.get("values") or {}).get(section) or {}).items()
        if old_sources.get(f"{section}.{k}") != RESOLVED_SOURCE  # resolved again, not kept
    }
    values, sources = dict(record["values"]), dict(record["sources"])
    new = dict(values[section])
    allow = set(new.get("allow_change") or [])
    # (a t2i record made before train t2i had presets holds none: read as no change)
    preset_changed = old.get("preset", new.get("preset")) != new.get("preset", old.get("preset"))
    brought = _brought_unstored(section, old, new, sources, started_without, preset_changed)
    if brought:
        record = {**record, "allowed": [*(record.get("allowed") or []), *brought]}
    said = [f"{k}: {a!r} → {b!r} ({_brought_source(sources, k)})" for k, a, b in brought]
    if "all" in allow or preset_changed:
        return settings, record, said  # an allowed preset change brings its own values
    lines = list(said)
    for name, value in new.items():
        key = f"{section}.{name}"
        before = old.get(name, started_without.get(name, value))
        if (
            value == before
            or name in ONLY_NOW
            or name in allow
            or key in allow
            or sources.get(key) == FROM_EPOCHS
        ):
            continue
        if given(sources, key):
            if name in old:
                continue  # compared with the stored value by reconcile already
            _refuse_started_without(key, before, value, section)
        origin = sources.get(key, "the default")
        lines.append(
            f"{key}: kept {before!r} as the run started ({origin} now gives {value!r}; "
            f"--allow-change {name} takes that)"
        )
        new[name], sources[key] = before, "stored run config"
    if len(lines) == len(said):
        return settings, record, lines
    values[section] = new
    settings = type(settings).model_validate(values)
    kept = {"values": settings.model_dump(mode="json"), "sources": sources}
    if record.get("allowed"):  # the changes --allow-change let through, for config_history
        kept["allowed"] = record["allowed"]
    if record.get(STARTED_SOURCES):  # (none of the values kept here: those read as stored)
        kept[STARTED_SOURCES] = record[STARTED_SOURCES]
    return settings, kept, lines
