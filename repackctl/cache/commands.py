"""The commands that write what a cache entry lacks, for error hints (DESIGN.md §8).

An error about missing or unfinished cache contents ends with the exact command that creates
them. For encoder features that is a ``repackctl extract`` line: :func:`extract_command` builds it
from the user-level extract settings, :func:`entry_source` recovers those settings from what an
entry records (dataset name, image source, split, resolution), and :func:`entry_extract_command`
combines both for an entry that exists. What removes an entry or one of its groups is a
``repackctl cache rm`` line, built by :func:`remove_command` for every hint that names one.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # not at run time: the store imports cache.versions, which imports this
    from repackctl.cache.store import DatasetEntry


def extract_command(
    encoder: str = "builtin",
    data: str = "builtin",
    split: str = "train",
    resolution: int | None = None,
    num: int | str | None = None,
    weights: str | None = None,
    layer: int | str | None = None,
    *,
    val_fraction: float | None = None,
    flips: bool = True,
    precision: str | None = None,
    seed: int | None = None,
) -> str:
    """The ``repackctl extract`` command line that writes these features (defaults left out;
    ``seed`` is named when given and not 0, the default)."""
    parts = ["repackctl extract", f"--encoder {encoder}", f"--data {shlex.quote(data)}"]
    if split != "train":
        parts.append(f"--split {split}")
    if val_fraction is not None:
        parts.append(f"--val-fraction {val_fraction}")
    if resolution is not None:
        parts.append(f"--resolution {resolution}")
    if num is not None:
        parts.append(f"-n {num}")
    if weights is not None:
        parts.append(f"--weights {shlex.quote(weights)}")
    if layer is not None:
        parts.append(f"--layer {layer}")
    if not flips:
        parts.append("--no-flips")
    if precision is not None:
        parts.append(f"--precision {precision}")
    if seed:
        parts.append(f"--seed {seed}")
    return " ".join(parts)


def remove_command(
    entry: str, kind: str | None = None, gid: str | None = None, yes: bool = False
) -> str:
    """The ``repackctl cache rm ENTRY [--KIND ID] [--yes]`` command line that removes cache
    entry ``entry``, or its group ``kind/gid`` when both are given (``features``, ``text``,
    ``latents``, …); ``yes`` skips the confirmation, for a hint that chains another command
    after it. Without backticks: the message quoting it adds them."""
    group = f" --{kind} {gid}" if kind and gid else ""
    return f"repackctl cache rm {entry}{group}" + (" --yes" if yes else "")


def dataset_base(dataset: str) -> str:
    """Dataset name without the ``-nN`` subset suffix that extract adds for ``--num``."""
    head, sep, tail = dataset.rpartition("-n")
    return head if sep and tail.isdigit() else dataset


def entry_source(entry: DatasetEntry) -> dict[str, Any]:
    """The extract settings an entry records: ``data``, ``split``, ``resolution``, ``num``,
    ``val_fraction`` and ``seed`` (None when the source does not depend on them).

    ``data`` names the source the entry was read from: an ImageNet entry is
    ``imagenet:<root>`` (``imagefolder:<root>`` reads the same files into another entry,
    ``folder-…``), the seed is the one that drew its images or picked its subset or held-out
    split: an extract with other ones writes another entry, or is refused.
    """
    attrs = entry.attrs
    dataset = str(attrs.get("dataset", "builtin"))
    src = attrs.get("source") or {}
    base = dataset_base(dataset)
    if src.get("source") == "imagefolder" and src.get("root"):
        kind = "imagenet" if base == "imagenet" else "imagefolder"
        data = f"{kind}:{src['root']}"
    else:
        data = base
    m = re.match(r"^(.*)-n(\d+)$", dataset)
    held = src.get("held_out") if isinstance(src.get("held_out"), dict) else {}
    seed = next(
        (v for v in (src.get("seed"), src.get("subset_seed"), held.get("seed")) if v is not None),
        None,
    )
    return {
        "data": data,
        "split": str(attrs.get("split") or "train"),
        "resolution": entry.resolution,
        "num": m.group(2) if m else None,
        "val_fraction": held.get("fraction"),
        "seed": seed,
    }


def encoder_flag(attrs: Mapping[str, Any], fid: str) -> str:
    """The ``--encoder`` value that made the features group ``fid`` with attributes ``attrs``.

    The group's id and encoder record hold the encoder's *spec* id (``dinov3-vits16`` for
    ``--encoder timm:vit_small_patch16_dinov3`` or ``dinov3``), which no ``--encoder`` accepts:
    the value given is read from the recorded settings; a group made before they were recorded
    names a timm encoder's spec id by its architecture (``timm:<arch>``, the same encoder).
    """
    from repackctl.registry import registry

    made = ((attrs.get("config") or {}).get("values") or {}).get("extract") or {}
    if made.get("encoder"):
        return str(made["encoder"])
    enc = attrs.get("encoder") or {}
    spec_id = str(enc.get("id") or fid.split("--")[0])
    arch = str(enc.get("arch") or "")
    if arch and spec_id not in registry("encoders").ids():
        from repackctl.encoder_names import timm_short_id

        if timm_short_id(arch) == spec_id:  # a timm encoder names its features so
            return f"timm:{arch}"
    return spec_id


def _recorded_encoder(entry: DatasetEntry, encoder: str) -> str:
    """``encoder`` as ``--encoder`` takes it: a spec id (the first part of a features id) that
    a features group of ``entry`` records is named by the value that made it (``encoder_flag``)."""
    if "features" not in entry.group:
        return encoder
    from repackctl.cache.creation import child_groups

    parent = entry.group["features"]
    for fid in child_groups(parent):
        if fid.split("--")[0] != encoder:
            continue
        try:
            return encoder_flag(dict(parent[fid].attrs), fid)
        except Exception:  # unreadable metadata: the id as it is
            return encoder
    return encoder


def entry_extract_command(
    entry: DatasetEntry,
    encoder: str,
    layer: str | None = None,
    encoder_attrs: Mapping[str, Any] | None = None,
) -> str:
    """The ``repackctl extract`` command that writes features of ``encoder`` for this entry.

    ``layer`` is the layer part of a features id (``l8`` → ``--layer 8``; ``final`` is the default).
    ``encoder`` may be the spec id of a features id: it is named as ``--encoder`` takes it.
    ``encoder_attrs``, the encoder record of the wanted features (as packed latents keep it), gives
    ``--weights`` and the ``--seed`` that drew them (``random:<seed>``, ``seeded:<seed>``): an
    image-folder entry records no seed, and without them the command wrote other features.
    """
    src = entry_source(entry)
    weights, drawn = _weights_flag(str((encoder_attrs or {}).get("weights") or ""))
    return extract_command(
        _recorded_encoder(entry, encoder),
        src["data"],
        src["split"],
        src["resolution"],
        src["num"],
        weights,
        layer=_layer_of(layer),
        val_fraction=src["val_fraction"],
        seed=src["seed"] if src["seed"] is not None or drawn is None else drawn,
    )


def _layer_of(part: str | None) -> str | None:
    """The ``--layer`` of a features id's layer part (``l8`` → ``8``; ``final``, the default,
    and anything else → None)."""
    return part[1:] if part and part.startswith("l") and part[1:].isdigit() else None


def features_extract_command(entry: DatasetEntry, fid: str, precision: str | None = None) -> str:
    """The ``repackctl extract`` command that writes the features group ``fid`` of ``entry`` again
    exactly as it was made, for `cache verify` hints after a repair or a removal.

    "The same `repackctl extract --encoder X …`" left the user to remember ``-n``, ``--split``,
    ``--resolution``, ``--layer``, ``--precision`` and the weights; a rerun with others writes
    another entry or features group, or refuses. The entry's name settings come from the entry
    (:func:`entry_source`), the rest from what the group records: the extract settings it was
    made with (``config.values.extract``), else its encoder record and id. ``precision``
    overrides the recorded precision (NaN rows are recomputed in fp32).
    """
    from repackctl.cache.store import features_precision

    attrs = dict(entry.group["features"][fid].attrs)  # also of a group that is not complete
    enc = attrs.get("encoder") or {}
    made = ((attrs.get("config") or {}).get("values") or {}).get("extract")
    src = entry_source(entry)
    seed = src["seed"]
    if made is not None:
        weights, layer, val_fraction = (
            made.get("weights"),
            made.get("layer"),
            made.get("val_fraction"),
        )
        seed = (attrs.get("config") or {}).get("values", {}).get("seed", seed)
    else:  # written without the settings recorded: the encoder record, the id's layer part
        weights, drawn = _weights_flag(str(enc.get("weights") or ""))
        seed = _run_seed(attrs, seed if drawn is None or seed is not None else drawn)
        layer = _layer_of(fid.split("--")[1] if fid.count("--") >= 1 else None)
        val_fraction = src["val_fraction"]
    return extract_command(
        encoder_flag(attrs, fid),
        src["data"],
        src["split"],
        src["resolution"],
        src["num"],
        weights,
        layer,
        val_fraction=val_fraction,
        flips=int(attrs.get("flips", 2)) > 1,
        precision=precision or features_precision(attrs),
        seed=seed,
    )


def _run_seed(attrs: Mapping[str, Any], guess: int | None) -> int | None:
    """The ``--seed`` of the run that wrote a features group, as its run header records it
    (``runtime.run_header``), else ``guess``. Whatever the encoder's weights tag says, that seed
    draws the same weights again: a plugin whose weights the seed draws under a tag of its own
    (not ``random:<seed>`` or ``seeded:<seed>``) was named without it, and the command wrote
    another features group. Where the seed changed nothing, naming it changes nothing either."""
    seed = (attrs.get("run_header") or {}).get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else guess


def _weights_flag(tag: str) -> tuple[str | None, int | None]:
    """The ``--weights`` value of an encoder's recorded weights tag (``EncoderSpec.weights``),
    and the seed that drew random weights. ``random:<seed>`` is ``--weights random`` under that
    ``--seed``; ``seeded:<seed>`` (a plugin whose weights the seed draws, ``patchpix``) is no
    ``--weights`` under that ``--seed``: without it the command writes another features group;
    ``file:<name>`` is the file's name (its folder is not recorded); the default weights
    (``builtin``, ``hub:…``) and other plugin tags are no ``--weights``: the tag itself is no
    value ``--weights`` takes."""
    kind, _, value = tag.partition(":")
    if kind == "random":
        return "random", int(value) if value.isdigit() else None
    if kind == "seeded":  # a plugin's weights drawn from --seed (patchpix): no --weights
        return None, int(value) if value.isdigit() else None
    if kind == "file" and value:
        return value, None
    return None, None


def captions_command(entry: str, attrs: Mapping[str, Any]) -> str:
    """```repackctl captions --entry ENTRY …```: the command that encodes the captions of
    ``entry`` as a text group recorded as ``attrs`` was (text encoder, caption source, weights
    folder, max_length)."""
    cmd = (
        f"repackctl captions --entry {entry} --text-encoder {attrs.get('encoder_ref') or 'minilm'}"
    )
    src = attrs.get("captions")
    cmd += f" --captions {src}" if src and src != "builtin" else ""
    weights = attrs.get("text_weights")
    cmd += f" --text-weights {weights}" if weights else ""
    cmd += f" --max-length {attrs['max_length']}" if attrs.get("max_length") else ""
    return f"`{cmd}`"


def finish_command(entry: DatasetEntry, path: str) -> str:
    """The command that finishes the pending rows of the group at ``path`` of ``entry`` (the
    entry's own rows when empty): the same command again, which resumes where it stopped, as
    `cache verify` names it (``cache.verify.producer``; packed latents: `pack encode` of the
    pack checkpoint they record, for this entry)."""
    from repackctl.cache.verify import producer

    return producer(entry, path)


def refine_train_command(run: str | None = None, roots: Sequence[str] = ()) -> str:
    """```repackctl refine train --name RUN```: the command that resumes refiner run ``run``
    (None: a ``RUN`` placeholder, for a reader that does not know which run reads the
    triplets), ``roots`` the --runs / --cache flags that find it. The name is what resumes
    it: "the same `repackctl refine train`", run literally without it, started a new
    refine-<pack run> run with the default 300 steps instead of the run that was refused."""
    flags = " ".join(shlex.quote(f) for f in roots)
    cmd = f"repackctl refine train --name {shlex.quote(run) if run else 'RUN'}"
    cmd = f"`{cmd}{' ' + flags if flags else ''}`"
    if run:
        return cmd
    return (
        f"{cmd} for each refiner run that trains on them (its name resumes it, with its "
        "settings; without --name a new refine-<pack run> run starts)"
    )


def root_flags(runs: str, cache: str) -> list[str]:
    """The --runs / --cache flags of a command that must find the same run folder and cache
    entry as this one: those whose value is not the default (an env var set stays set)."""
    from repackctl.settings import Settings

    fields = Settings.model_fields
    flags = ["--runs", runs] if runs != fields["runs"].default else []
    return flags + (["--cache", cache] if cache != fields["cache"].default else [])
