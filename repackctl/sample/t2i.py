"""`repackctl sample` for text-to-image runs: prompts → MMDiT latents → pack decoder → PNGs.

The same samplers, timestep shift, guidance interval, per-index seeds, resumable folder and ADM
``samples.npz`` as class-conditional sampling (``repackctl.sample.run``), with the same
integrity (``repackctl.sample.folder``): per-batch manifests of each per-sample file's sha256, a
resume that makes a damaged file again (``Warning:``) by recomputing its whole batch (the folder
equals an uninterrupted run's byte for byte), verified assembly, and ``files`` (sha256 + size
of samples.npz and latents.npy) in ``protocol.json``. What differs:

- **Prompts** instead of labels: ``--prompt`` (repeatable) and/or ``--prompts FILE`` (plain
  text, one per line, UTF-8 with or without a BOM; a captions index — ``.jsonl``/``.json``/
  ``.csv``, or a line that is a JSON object — is refused); sample i gets prompt ``i mod P``. With neither, the evaluation prompts are the first
  caption of each image of the val entry (the same data and resolution, as the entries record
  them: source attributes, never the name; several that disagree are refused, and so is a val
  entry without the run's caption group), or of the training entry when there is no val entry,
  read from the cache (``text/<id>/captions``) through the guarded
  reader (a lost chunk or an empty caption of a captioned image is an error). The cache is the
  resolved ``cache`` setting when it holds the run's training entry, else the root the
  checkpoint recorded; either way the entry must hold the run's latents and channel stats.
- Prompts are encoded once by the run's own text encoder (checked against the weights the
  training captions were encoded with); the model never sees a caption it could not have.
- Guidance: classifier-free guidance against the model's null caption, conditional and null rows
  in ONE batched forward of 2B (``MMDiT.forward_with_cfg``), active for t_lo ≤ t ≤ t_hi.
- ``prompt_source`` in ``protocol.json``: ``given: …`` (how many ``--prompt``, the ``--prompts``
  file's absolute path and sha256), else the entry whose first captions were read; that entry's
  name alone in ``prompt_entry`` (None for given prompts), for readers of the card.
- ``prompts.txt`` (one line per sample index) and the prompts in ``protocol.json``: the distinct
  prompts some sample got, in order of first use (with ``-n`` below the number of prompts given,
  the unused ones are left out); ``arr_1`` of ``samples.npz`` and ``prompt_ids`` hold each
  sample's prompt id (its place in that list).
  The folder's fingerprint hashes the full per-sample list, so resuming a folder (``--out``)
  with the same prompts in another order or count is refused, never relabelled.
- Prompts longer than the text encoder's ``max_length`` tokens are cut by it (the rest is
  ignored): a ``Warning:`` line says how many, and ``protocol.json`` records the text each cut
  prompt was encoded as (``prompt_truncation``).
- ``protocol.json`` also records the run's training entry and latent stats
  (``training_entry``), so ``evaluate adherence`` needs no checkpoint that was rotated away.
- ``--precision bf16`` / ``fp16`` autocast the model and decoder to that dtype on any device
  where torch supports it (CPU included); elsewhere it is refused before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from repackctl.cache.commands import captions_command
from repackctl.errors import CacheError, ConfigError, DataError, name_items
from repackctl.files import to_uint8, write_json_atomic
from repackctl.pack.load import denormalise, load_decoder
from repackctl.paths import PROTOCOL_JSON, local_path, run_root_of
from repackctl.progress import ProgressFactory, null_progress, warn
from repackctl.run_lock import released_after
from repackctl.runtime import DistInfo, amp_autocast, check_precision, resolve_device, run_header
from repackctl.sample.folder import (
    GRID_KEY,
    LATENTS_DIR,
    assemble_recorded,
    check_num,
    claim_batching,
    claim_folder,
    cpu_threads,
    generation_card,
    indices_to_make,
    is_finished,
    job_batches,
    kept_provenance,
    missing_indices,
    named_folder,
    out_hint,
    owned_range,
    png_path,
    prompts_sha256,
    refined_suffix,
    refiner_label,
    reopen_finished,
    sampling_threads,
    write_samples,
)
from repackctl.sample.generate import refuse_non_finite
from repackctl.sample.plan import (
    check_null_condition_trained,
    index_generators,
    initial_noise,
    network_evaluations,
    read_sampling_defaults,
    resolve_plan,
    sampling_rows,
)
from repackctl.transport.samplers import sample

if TYPE_CHECKING:
    from repackctl.sample.run import SampleResult


# --------------------------------------------------------------------------- prompts
def given_prompts(cfg: Any) -> list[str]:
    """``--prompt`` values, then the lines of ``--prompts FILE`` (blank lines ignored). An empty
    ``--prompt`` is refused: dropped, it shifted every later prompt onto other samples."""
    prompts = [_clean_prompt(p) for p in (cfg.prompt or [])]
    empty = [n for n, p in enumerate(prompts, 1) if not p]
    if empty:
        raise ConfigError(
            f"--prompt number {name_items(empty)} of {len(prompts)} is empty (or only spaces): "
            "each --prompt is one prompt, in order, and an empty one cannot be sampled",
            "give every --prompt some text (blank lines of a --prompts file are skipped)",
        )
    if cfg.prompts:
        prompts += prompt_file_lines(Path(cfg.prompts).expanduser())
    prompts = [p for p in prompts if p]
    if (cfg.prompt or cfg.prompts) and not prompts:
        raise ConfigError("the given prompts are all empty", "pass --prompt 'a red star'")
    return prompts


#: names of caption indexes (``captions --captions``), never a prompts file
_INDEX_SUFFIXES = (".jsonl", ".json", ".csv")


def prompt_file_lines(path: Path) -> list[str]:
    """The lines of a prompts file (plain text, one prompt per line, UTF-8 with or without a
    BOM), each with its whitespace collapsed. A file named or shaped like a captions index
    (``.jsonl``/``.json``/``.csv``, or a line that is a JSON object) is refused: its rows would
    become prompts verbatim, ``{"file": …, "caption": …}`` included."""
    hint = "pass a plain text file with one prompt per line (no JSON, no CSV columns)"
    if path.suffix.lower() in _INDEX_SUFFIXES:
        raise ConfigError(
            f"{path} is named like a captions index ({path.suffix}), not a prompts file", hint
        )
    try:
        text = path.read_text(encoding="utf-8-sig")  # a UTF-8 BOM is not part of the prompt
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"cannot read the prompts file {path}: {e}", "pass a UTF-8 text file, one per line"
        ) from None
    # lines end at \n, \r\n or \r only: str.splitlines also splits at U+2028, NEL, form feed…,
    # which cut one prompt in two; inside a line those are whitespace, collapsed below
    lines = re.split(r"\r\n|\r|\n", text)
    if lines and lines[-1] == "":
        lines.pop()
    for n, line in enumerate(lines, 1):
        if _is_json_object(_clean_prompt(line)):
            raise ConfigError(
                f"line {n} of {path} is a JSON object ({line.strip()[:60]}), not a prompt", hint
            )
    return [_clean_prompt(line) for line in lines]


def _clean_prompt(text: str) -> str:
    """``text`` with its whitespace collapsed and every U+FEFF removed: a BOM is no part of a
    prompt wherever it stands (files joined with ``cat`` keep the second file's BOM at the start
    of a line, where ``utf-8-sig`` does not remove it). A line of only a BOM is blank (skipped),
    never a prompt that the text encoder reads as the empty caption (the null caption)."""
    return " ".join(text.replace("\ufeff", "").split())


def _is_json_object(line: str) -> bool:
    text = line.strip()
    if not text.startswith("{"):
        return False
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def cached_prompts(extra: dict[str, Any], num: int, cache: str | None) -> tuple[list[str], str]:
    """The first caption of each image of the val entry of the run's data (else the training
    entry), from the cache that holds the run's training entry (``training_cache_root``: the
    resolved ``cache`` setting, else the root the checkpoint recorded). The val entry is paired
    with the training entry by their recorded source attributes and resolution
    (``paired_val_entries``), never by name."""
    from repackctl.cache.store import DatasetEntry
    from repackctl.captions_cache import paired_val_entries
    from repackctl.dit.t2i_load import training_cache_root

    train_entry, text_id = (extra.get("cache") or {}).get("entry"), extra["text"]["features"]
    hint = "pass prompts: --prompt 'a red star on a blue striped background' or --prompts FILE"
    root = training_cache_root(cache, extra, hint)
    train = DatasetEntry.open(root, train_entry)
    found, vals = {}, paired_val_entries(root, train)
    sizes: dict[str, int] = {}
    for name in vals:
        ds = DatasetEntry.open(root, name)
        if text_id in ds.complete_groups("text", ("captions", "done")):
            found[name], sizes[name] = first_captions(ds, text_id, num), ds.n
    if found:
        return one_prompt_list(found, hint, sizes)
    if vals:  # the run's data has val images: its training captions are no evaluation prompts
        raise CacheError(
            f"the val entr{'y' if len(vals) == 1 else 'ies'} of the run's data "
            f"({name_items(vals)}) hold{'s' if len(vals) == 1 else ''} no caption features "
            f"{text_id} (the run's text encoder and max_length): the default prompts would be "
            "the run's training captions",
            f"encode them: {_captions_command(vals[0], extra, train, text_id)}; or pass "
            "prompts (--prompt TEXT or --prompts FILE)",
        )
    if text_id in train.complete_groups("text", ("captions", "done")):
        return first_captions(train, text_id, num), train_entry
    raise CacheError(  # the command with the run's text encoder and max_length, or prompts
        f"no cached captions {text_id} for the run's entries in {root}",
        f"encode them: {_captions_command(train_entry, extra, train, text_id)}; or {hint}",
    )


def _captions_command(val: str, extra: dict[str, Any], train: Any, text_id: str) -> str:
    """The `repackctl captions` command that encodes entry ``val`` as the run's caption group
    ``text_id`` of ``train`` was encoded (text encoder, weights, max_length, caption source)."""
    text = extra.get("text") or {}
    try:
        attrs = dict(train.group["text"][text_id].attrs)
    except KeyError:  # the training entry no longer holds the group: the run's record only
        attrs = {}
    recorded = ("encoder_ref", "text_weights", "max_length")  # the run's record wins
    return captions_command(val, attrs | {k: text[k] for k in recorded if text.get(k)})


def one_prompt_list(
    found: dict[str, list[str]], hint: str, sizes: dict[str, int] | None = None
) -> tuple[list[str], str]:
    """The prompts of several val entries of the same data (e.g. ``-n 8`` and ``-n 16`` of the
    built-in val split): the longest list when every other one is its beginning (the same
    images, fewer of them), else refused (which entry's captions to use would be a guess).

    Of lists equally long (each cut to the ``-n`` asked), the entry with the most images
    (``sizes``) is named: it becomes the folder's default FD reference, so captioning a smaller
    entry of the same data later must not switch the reference of the same prompts to fewer
    images (it did: the first name in sorted order won)."""
    size = sizes or {}
    # the longest list, then the largest entry, then the first name
    name = max(sorted(found), key=lambda n: (len(found[n]), size.get(n, 0)))
    longest = found[name]
    if all(longest[: len(p)] == p for p in found.values()):
        return longest, name
    raise ConfigError(
        f"{len(found)} val entries of the run's data hold its cached captions with other "
        f"first captions ({', '.join(sorted(found))}); which are the evaluation prompts "
        "would be a guess",
        hint,
    )


def first_captions(ds: Any, text_id: str, num: int) -> list[str]:
    """The first caption of each of the first ``num`` captioned images of entry ``ds``: read
    through the guarded reader (a lost chunk, a damaged ``done`` or an empty caption of a row
    marked written is an error, never an empty prompt recorded as a caption)."""
    from repackctl.cache.integrity import read_done, repair_hint
    from repackctl.cache.store import PENDING, WRITTEN
    from repackctl.captions_cache import open_text_group
    from repackctl.dit.t2i_load import CaptionTexts

    grp = open_text_group(ds, text_id)
    label = f"cache entry {ds.name} text/{text_id}"
    redo = f"`repackctl captions --entry {ds.name}`"
    done, damage = read_done(grp.done, "done")
    if damage:
        raise CacheError(f"{label}: {damage[0]}", repair_hint(ds.name, redo))
    if (done == PENDING).any():
        raise CacheError(
            f"{label} is incomplete ({int((done == PENDING).sum())} images pending)",
            f"run {redo} again to finish them",
        )
    written = done == WRITTEN
    texts = CaptionTexts(grp, written, label, repair_hint(ds.name, redo))
    return [caps[0] for caps in texts[np.flatnonzero(written)[:num]]]


def given_source(cfg: Any) -> str:
    """``prompt_source`` of given prompts: ``given:``, how many ``--prompt``, and the
    ``--prompts`` file (absolute path and the sha256 of its bytes), so a card says which file's
    prompts its samples got."""
    parts = [f"{len(cfg.prompt)} --prompt"] if cfg.prompt else []
    if cfg.prompts:
        path = Path(cfg.prompts).expanduser().resolve()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()  # read before: it is readable
        parts.append(f"--prompts {path} (sha256 {digest})")
    return "given: " + ", ".join(parts)


def resolve_prompts(
    cfg: Any, extra: dict[str, Any], cache: str | None = None
) -> tuple[list, list, np.ndarray, str, str | None]:
    """(prompts, distinct prompts used, prompt id of each sample (N,), where they came from,
    the cache entry whose first captions they are (None: given prompts)); ``cache``: the
    resolved cache setting (default prompts come from the run's entry there)."""
    prompts, entry = given_prompts(cfg), None
    if prompts:
        source = given_source(cfg)
    else:
        prompts, entry = cached_prompts(extra, cfg.num, cache)
        source = f"first caption of each image of {entry}"
    per_sample = [prompts[i % len(prompts)] for i in range(cfg.num)]
    # only the prompts some sample gets (with -n below the number given, the rest are unused);
    # in order of first use, so each used prompt keeps the id it had in the full given list
    distinct = list(dict.fromkeys(per_sample))
    place = {p: k for k, p in enumerate(distinct)}
    ids = np.array([place[p] for p in per_sample], np.int64)
    return prompts, distinct, ids, source, entry


def encode_prompts(encoder: Any, prompts: list[str], device: torch.device) -> dict[str, Any]:
    """Text features of each distinct prompt: tokens (P, L, C), mask (P, L), pooled (P, C)."""
    parts = [encoder.encode(prompts[i : i + 64]) for i in range(0, len(prompts), 64)]
    return {
        "tokens": torch.cat([p.tokens.float() for p in parts]).to(device),
        "mask": torch.cat([p.mask for p in parts]).to(device),
        "pooled": torch.cat([p.pooled.float() for p in parts]).to(device),
    }


def prompt_truncation(encoder: Any, prompts: list[str]) -> dict[str, Any]:
    """Which prompts the text encoder cuts at its ``max_length`` (tokens past it are ignored:
    two prompts that differ only there give the same samples), and the text each is encoded
    as. ``cut`` is None when the encoder does not expose a tokenizer to count with."""
    length = int(encoder.max_length)
    tok = getattr(encoder, "tokenizer", None)
    if tok is None:
        return {"max_length": length, "cut": None, "as_encoded": None}
    from repackctl.encoders.text import quiet_transformers

    with quiet_transformers():  # no "sequence longer than the maximum" log line per prompt
        full = tok(list(prompts), truncation=False)["input_ids"]
        kept = tok(list(prompts), truncation=True, max_length=length)["input_ids"]
    as_encoded = [
        tok.decode(k, skip_special_tokens=True) if len(f) > length else None
        for f, k in zip(full, kept, strict=True)
    ]
    return {
        "max_length": length,
        "cut": sum(t is not None for t in as_encoded),
        "as_encoded": as_encoded,
    }


def warn_truncation(truncation: dict[str, Any], total: int) -> None:
    """A ``Warning:`` line on stderr (main process) when some prompts were cut."""
    cut = truncation.get("cut")
    if cut:
        warn(
            f"{cut} of {total} prompts were cut at the text encoder's max_length "
            f"{truncation['max_length']} tokens (the rest of each is ignored); protocol.json "
            "lists the text each was encoded as (prompt_truncation.as_encoded)"
        )


# --------------------------------------------------------------------------- generation
def prompt_grid(folder: Path, ids: np.ndarray, per_sample: list[str], limit: int) -> Path:
    """``grid.png`` with one labelled row per prompt (≤ 8 rows of ≤ 8 samples, ≤ ``limit``)."""
    from repackctl.files import read_png
    from repackctl.metrics.recon import save_grid

    rows, labels, used = [], [], 0
    for k in list(dict.fromkeys(ids.tolist()))[:8]:
        take = [i for i in np.flatnonzero(ids == k)[:8].tolist()][: max(0, limit - used)]
        if not take:
            break
        rows.append(np.stack([read_png(png_path(folder, i)) for i in take]))
        labels.append(per_sample[take[0]][:60])
        used += len(take)
    return save_grid(rows, folder / "grid.png", labels=labels)


def _finish(
    folder: Path,
    cfg: Any,
    ids: np.ndarray,
    extra: dict[str, Any],
    per_sample: list[str],
    protocol: dict[str, Any],
    finished: bool,
) -> tuple[int, ...]:
    """samples.npz, latents.npy, grid.png, prompts.txt and protocol.json of a full folder.

    Each per-sample file is checked against the manifest written with it as it is assembled
    (a folder finished before: its recorded samples.npz and latents.npy are kept, or rebuilt
    from the PNGs when their pixels are the recorded ones); the card records the sha256 and
    size of samples.npz and latents.npy (``files``), which `evaluate` checks."""
    lost = missing_indices(folder, range(cfg.num))
    if lost:
        raise DataError(
            f"{len(lost)} samples are missing after sampling (e.g. {lost[:3]})",
            "run the same command again to finish them",
        )
    if finished:  # its samples are the recorded ones: so is who made them
        image_shape, files = reopen_finished(folder, ids, cfg.grid)
        protocol = kept_provenance(folder, protocol)
    else:
        shape = tuple(int(s) for s in extra["latent_shape"])
        image_shape, files = assemble_recorded(folder, ids, cfg.grid, shape, verify=True)
    if cfg.grid > 0:
        prompt_grid(folder, ids, per_sample, cfg.grid)
    tmp = folder / ".prompts.txt.tmp"
    tmp.write_text("\n".join(per_sample) + "\n", encoding="utf-8")
    tmp.replace(folder / "prompts.txt")
    write_json_atomic(folder / PROTOCOL_JSON, {**protocol, "files": files})
    return image_shape


def generate_t2i_latents(
    model: torch.nn.Module,
    plan: Any,
    extra: dict[str, Any],
    text: dict[str, torch.Tensor],
    ids: np.ndarray,
    seed: int,
    indices: list[int],
    precision: str,
) -> torch.Tensor:
    """Raw packed latents (B, d, h, w) of samples ``indices``, each from its own generator,
    the model autocast to ``precision`` (fp32: none)."""
    device = text["tokens"].device
    shape = tuple(int(s) for s in extra["latent_shape"])
    gens = index_generators(seed, indices)
    noise = initial_noise(gens, shape).to(device)  # (B, d, h, w)
    rows = torch.from_numpy(ids[indices]).to(device)  # (B,) prompt ids
    f = model.velocity_fn(
        text["tokens"][rows],  # (B, L, C)
        text["mask"][rows],  # (B, L)
        text["pooled"][rows],  # (B, C)
        scale=plan.cfg,
        t_lo=plan.t_lo,
        t_hi=plan.t_hi,
    )

    def velocity(x: torch.Tensor, t: torch.Tensor, y: Any = None) -> torch.Tensor:
        with amp_autocast(precision, device):
            return f(x, t).float()  # (B, d, h, w)

    out = sample(plan.spec, velocity, noise, None, generator=gens)
    return denormalise(out.x.float(), extra["latent_stats"])  # (B, d, h, w)


def _write_batch(
    folder: Path,
    idx: list[int],
    missing: set[int],
    model: torch.nn.Module,
    plan: Any,
    extra: dict[str, Any],
    text: dict[str, torch.Tensor],
    ids: np.ndarray,
    settings: Any,
    decoder: Any,
    refiner: Any,
) -> int:
    """Generate, decode (and refine) the whole batch ``idx``; write the samples of it that are
    ``missing``: each latent, the batch's manifest (their sha256), then each PNG (the done
    marker). Returns how many were written."""
    device, precision = text["tokens"].device, settings.precision
    with torch.no_grad():
        raw = generate_t2i_latents(model, plan, extra, text, ids, settings.seed, idx, precision)
        refuse_non_finite(raw, "latents", idx, precision, plan.cfg)
        with amp_autocast(precision, device):
            decoded = decoder.decode(raw)  # (B, 3, H, W)
        refuse_non_finite(decoded, "decoded images", idx, precision, plan.cfg)
        images = to_uint8(decoded)  # (B, H, W, 3)
        if refiner is not None:
            images = refiner.refine(images, raw)  # (B, H, W, 3)
    raw_np = raw.cpu().numpy().astype(np.float32)  # (B, d, h, w)
    new = [(i, raw_np[j], images[j]) for j, i in enumerate(idx) if i in missing]
    write_samples(folder, new)
    return len(new)


def _check_options(cfg: Any) -> None:
    if cfg.guide or cfg.guide_checkpoint:
        raise ConfigError(
            "autoguidance is not available for text-to-image runs yet",
            "drop --guide and --guide-checkpoint",
        )
    if cfg.cfg_channels:
        raise ConfigError("legacy CFG channels do not apply to text-to-image runs", "drop it")
    if cfg.labels != "balanced":
        raise ConfigError("--labels does not apply to text-to-image runs", "use --prompt")


def _folder(
    settings: Any,
    cfg: Any,
    ckpt: Path,
    plan: Any,
    prompts: list[str] | None,
    fingerprint: dict[str, Any],
) -> Path:
    """``--out``, else the folder named as class-conditional sampling names it (precision
    included, a folder of the legacy name resumed in place) + ``--p<hash>`` of given
    ``prompts`` (other prompts → another folder, never mixed with the default prompts).

    With ``--refiner`` and given prompts, that name (``…--refine-R--p<hash>``) is not the one
    `refine apply --refiner R` gives the refined folder of the unrefined samples
    (``…--p<hash>--refine-R``): when only the latter exists and `refine apply` wrote it, it is
    the folder (``_applied`` then finds its images, or refuses it naming what differs)."""
    if cfg.out:
        return Path(cfg.out).expanduser().resolve()
    suffix = ""
    if prompts is not None:
        suffix = "--p" + hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:8]
    which = (run_root_of(ckpt).name, ckpt.name, plan, settings.seed, cfg.weights, cfg.refiner)
    base = local_path(settings.samples)
    folder = named_folder(base, which, fingerprint, precision=settings.precision, suffix=suffix)
    if not cfg.refiner or folder.exists():
        return folder
    from repackctl.sample.refine import written_by_apply

    unrefined = {**fingerprint, "refiner": None}  # the plain samples' (legacy names resolved)
    plain = named_folder(
        base, (*which[:5], None), unrefined, precision=settings.precision, suffix=suffix
    )
    applied = plain.parent / f"{plain.name}{refined_suffix(refiner_label(cfg.refiner))}"
    return applied if written_by_apply(applied) else folder


def _protocol(
    plan: Any,
    nfe: int,
    settings: Any,
    handle: Any,
    prompts: Any,
    refiner: Any,
    header: dict[str, Any],
) -> dict[str, Any]:
    """The protocol card of a t2i samples folder (prompts and their truncation included, and
    the run header, as class-conditional cards record it)."""
    from repackctl.sample.run import refiner_record

    return generation_card(
        plan=plan,
        nfe=nfe,
        label_scheme="prompts",
        seed=settings.seed,
        precision=settings.precision,
        checkpoint=Path(handle.checkpoint),
        checkpoint_sha256=handle.sha256,
        num=len(prompts.ids),
        extra={
            "weights": handle.which,
            "dit_run": run_root_of(Path(handle.checkpoint)).name,
            "stage": "t2i",
            "text": {k: handle.extra["text"].get(k) for k in ("features", "encoder", "max_length")},
            "prompt_source": prompts.source,
            # the entry of the default prompts, for readers (`evaluate fid`'s default
            # reference) that must not parse ``prompt_source``'s words; None: given prompts
            "prompt_entry": prompts.entry,
            "prompts": prompts.distinct,
            "prompt_ids": prompts.ids.tolist(),
            "prompt_truncation": prompts.truncation,
            "guidance": "classifier-free, null caption = features of the empty caption",
            "pack": handle.extra.get("pack"),
            "latent_shape": list(handle.extra["latent_shape"]),
            "latent_convention": "raw",
            "refiner": refiner_record(refiner),  # checkpoint and sha256, as class-conditional
            # what `evaluate adherence` needs of the checkpoint, kept for when it is rotated away
            "training_entry": training_entry_record(handle.extra),
            GRID_KEY: settings.sample.grid,  # how many grid.png shows (as class-conditional)
            "run_header": header,
        },
    )


def summary_rows(protocol: dict[str, Any]) -> list[tuple[str, str]]:
    """The rows `repackctl sample`'s summary table adds: the settings the run's sampling.json
    gave (``plan.sampling_rows``), and for a text-to-image folder where its prompts came from,
    as the card's ``prompt_source`` says it (the ``--prompts`` file's absolute path and
    sha256, how many ``--prompt``, or the entry whose first captions were read), and how many
    distinct prompts the samples got."""
    rows = sampling_rows(protocol)  # the values the run's sampling.json gave (any stage)
    if protocol.get("stage") != "t2i":
        return rows
    distinct = len(protocol.get("prompts") or [])
    source = protocol.get("prompt_source") or "not recorded"
    return [("prompts", f"{distinct} distinct; {source}"), *rows]


def training_entry_record(extra: dict[str, Any]) -> dict[str, Any]:
    """The run's training entry as its checkpoint records it (``cache``: root, entry, latents)
    and the channel stats of its latents: what ``dit.t2i_load.training_cache_root`` checks an
    entry against."""
    return {"cache": extra.get("cache"), "latent_stats": extra.get("latent_stats")}


@dataclass
class _Prompts:
    """The prompts of a samples folder: as given (or read), distinct, per sample."""

    given: list[str]
    distinct: list[str]
    ids: np.ndarray  # (N,) index into ``distinct`` of each sample
    source: str
    truncation: dict[str, Any]
    entry: str | None = None  # the cache entry whose first captions they are (None: given)

    @property
    def per_sample(self) -> list[str]:
        return [self.distinct[int(k)] for k in self.ids]

    def named_by(self) -> list[str] | None:
        """The prompts a default folder is named after: given ones (None: the default ones)."""
        return self.given if self.source.startswith("given:") else None


def _fingerprint(settings: Any, handle: Any, plan: Any, prompts: _Prompts, refiner: Any) -> dict:
    """The settings that fix a t2i folder's images; the prompts as the full per-sample list
    (another order or count of the same prompts relabels images: it is another folder)."""
    cfg = settings.sample
    return {
        "checkpoint_sha256": handle.sha256,
        "prompts_sha256": prompts_sha256(prompts.per_sample),
        "refiner": None if refiner is None else refiner.sha256,
        **{k: getattr(cfg, k) for k in ("weights", "num")},
        **{"seed": settings.seed, "precision": settings.precision},
        **{"sampler": plan.spec.to_dict(), "cfg": [plan.cfg, plan.t_lo, plan.t_hi]},
    }


def _prompts_and_text(
    cfg: Any, extra: dict[str, Any], cache: str | None, device: torch.device
) -> tuple[_Prompts, dict[str, Any]]:
    """The prompts of a folder (``resolve_prompts``; a ``Warning:`` when some are cut) and the
    text features of the distinct ones (``encode_prompts``) by the run's text encoder."""
    from repackctl.dit.t2i_load import load_text_encoder

    given, distinct, ids, source, entry = resolve_prompts(cfg, extra, cache)
    encoder = load_text_encoder(extra, cfg.text_weights).to(device)
    truncation = prompt_truncation(encoder, distinct)
    prompts = _Prompts(given, distinct, ids, source, truncation, entry)
    warn_truncation(prompts.truncation, len(distinct))
    return prompts, encode_prompts(encoder, distinct, device)


def _applied(
    folder: Path,
    settings: Any,
    handle: Any,
    plan: Any,
    prompts: _Prompts,
    pack_id: str | None,
    refiner: Any,
    dist: DistInfo,
) -> SampleResult | None:
    """What `sample --refiner` of a t2i run did when ``folder`` was written by `refine apply
    --refiner` from the samples of these settings (the default folder, ``_folder``, or
    ``--out``): nothing, the images are there (``refined_by_apply``, as class-conditional
    ``run._applied``); None when it is no such folder. One that holds other samples (other
    prompts, seed …), or is unfinished, is refused by name with nothing changed. A lost PNG
    is restored or refused (``restore_applied``); the count is this process's share. Its
    grid.png comes to show ``--grid`` images (``regrid_finished``). Without a ``refiner``,
    such a folder is refused as one (``refuse_apply_folder``); None otherwise."""
    from repackctl.sample.refine import (
        image_shape_of,
        refined_by_apply,
        refuse_apply_folder,
        regrid_finished,
        restore_applied,
    )
    from repackctl.sample.run import SampleResult

    cfg, nfe = settings.sample, network_evaluations(plan.spec, plan)
    if refiner is None:
        refuse_apply_folder(folder, out_hint(bool(cfg.out)), settings.runs)
        return None
    # the fields of the card `sample` writes for these samples, as a card records them
    expected = json.loads(json.dumps(_protocol(plan, nfe, settings, handle, prompts, None, {})))
    which = (str(cfg.refiner), refiner.sha256)
    hint = out_hint(bool(cfg.out))
    card = refined_by_apply(folder, expected, pack_id, which, hint, settings.runs)
    if card is None:
        return None
    share = restore_applied(folder, card, str(cfg.refiner), dist)
    card = regrid_finished(folder, card, cfg.grid, dist)  # its grid.png: --grid, as our own
    shape = image_shape_of(folder)
    return SampleResult(folder, cfg.num, 0, share, nfe, shape, 0.0, card, refined=True)


@released_after()  # the samples folder's writer lock (``claim_folder``)
def run_t2i_sample(
    settings: Any,
    progress: ProgressFactory = null_progress,
    dist: DistInfo | None = None,
    precision_source: str = "settings",
) -> SampleResult:
    """Generate (or finish generating) ``settings.sample.num`` samples of a t2i run.

    ``precision_source``: where the precision came from, for the run header (as ``run_sample``)."""
    from repackctl.dit.t2i_load import load_t2i
    from repackctl.sample.run import SampleResult, folder_threads, log_start

    cfg = settings.sample
    dist = dist or DistInfo.from_env()
    check_num(cfg.num)
    _check_options(cfg)
    device = resolve_device(settings.device, dist.local_rank)
    check_precision(settings.precision, device, "the samples")  # before anything is written
    handle = load_t2i(settings.runs, cfg.run, cfg.checkpoint, cfg.weights)
    extra, ckpt = handle.extra, Path(handle.checkpoint)
    plan = resolve_plan(cfg, read_sampling_defaults(ckpt))
    check_null_condition_trained(plan, extra, ckpt, "caption_dropout", "empty caption")
    model = handle.model.to(device).eval()
    prompts, text = _prompts_and_text(cfg, extra, settings.cache, device)
    ids = prompts.ids
    pack = load_decoder(settings.runs, extra)
    decoder = pack.model.to(device).eval()
    refiner = None
    if cfg.refiner:  # one trained for these samples' pack model, image side and latent grid
        from repackctl.sample.run import fitting_refiner

        refiner = fitting_refiner(settings.runs, cfg, pack, extra["latent_shape"], device)
    fingerprint = _fingerprint(settings, handle, plan, prompts, refiner)
    named = prompts.named_by()  # given prompts: their own folder
    folder = _folder(settings, cfg, ckpt, plan, named, fingerprint)
    hint = out_hint(bool(cfg.out))
    # `sample` then `refine apply` wrote this folder: nothing to make (without a refiner: refused)
    done = _applied(folder, settings, handle, plan, prompts, pack.pack_id, refiner, dist)
    if done is not None:
        return done
    claim, batch, world = claim_batching(
        folder, fingerprint, cfg.batch_size, dist.world, hint, cpu_threads(device), device
    )
    claim_folder(folder, claim, hint)
    finished = is_finished(folder)
    mine = owned_range(cfg.num, dist.rank, dist.world)
    todo, warnings = indices_to_make(folder, mine, finished)
    warnings = dist.all_items(warnings)  # every process's, printed once by rank 0's bar
    if todo:
        (folder / LATENTS_DIR).mkdir(exist_ok=True)
    already, missing = len(mine) - len(todo), set(todo)
    header = run_header(dist, device, settings.precision, precision_source, settings.seed)
    t0 = time.perf_counter()
    with progress(f"sample {run_root_of(ckpt).name}", total=len(todo), unit="img") as bar:
        log_start(bar, header, warnings, already)
        # whole batches of the uninterrupted run, in the folder's CPU threads: the same latents
        with folder_threads(bar, sampling_threads(claim, device), bool(todo)):
            for idx in job_batches(cfg.num, world, missing, batch):
                args = (model, plan, extra, text, ids, settings, decoder, refiner)
                bar.advance(_write_batch(folder, idx, missing, *args))
    seconds = time.perf_counter() - t0
    dist.barrier()
    nfe = network_evaluations(plan.spec, plan)
    protocol = _protocol(plan, nfe, settings, handle, prompts, refiner, header)
    image_shape: tuple[int, ...] = ()
    if dist.rank == 0:
        image_shape = _finish(folder, cfg, ids, extra, prompts.per_sample, protocol, finished)
    dist.barrier()
    return SampleResult(
        out_dir=folder,
        num=cfg.num,
        written=len(todo),
        already_done=already,
        nfe=nfe,
        image_shape=image_shape,
        seconds=seconds,
        protocol=protocol,
        refined=refiner is not None,
        threads=sampling_threads(claim, device),  # named by the summary, as class-conditional
    )
