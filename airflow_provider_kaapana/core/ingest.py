"""Ingest from the listener's landing zone: bring a batch into the run workspace, validate it, and
remove from the landing zone only what was stored.

The listener announces one batch of a series with a conf naming its files (see
:func:`airflow_provider_kaapana.core.listener.server.read_batch_files`); a run by hand names only a
``series_dir``. Under a burst the listener announces several batches (of distinct series) in one run:
its conf is ``{"batches": [batch conf, ...]}`` (:func:`batch_confs`) and every step below holds per
batch. Invalid files are set aside in the run workspace (neither stored nor indexed) and stay
in the landing zone: nothing received is ever deleted unless it was stored.
"""

from __future__ import annotations

import filecmp
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from airflow_provider_kaapana.core.dicom.uids import validate_uid
from airflow_provider_kaapana.core.listener.server import SeriesBatch, read_batch_files
from airflow_provider_kaapana.exceptions import InvalidDicomError, RunConfError

log = logging.getLogger(__name__)

INVALID_DIR = ".invalid"  # beside the series folder in the workspace: files that failed validation

NOTHING_TO_INGEST = "nothing to ingest: give series_dir (a folder) or batches (the listener's)"

# --- landing zone -> workspace --------------------------------------------------------------------


def _link_or_copy(src: Path, dst: Path, mode: str) -> None:
    if dst.exists() and dst.stat().st_size == src.stat().st_size:
        return  # idempotent re-run
    tmp = dst.with_name(f".{dst.name}.part")
    tmp.unlink(missing_ok=True)
    if mode == "link":
        try:
            os.link(src, tmp)
        except OSError:  # another filesystem: copy
            shutil.copyfile(src, tmp)
    else:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


@dataclass(frozen=True)
class LandingSeries:
    """The files of one series to bring into a run's workspace, named relative to ``base``."""

    study_instance_uid: str
    series_instance_uid: str
    files: list[Path]
    base: Path


def _destination_name(src: Path, base: Path) -> str:
    """A flat, unique file name in the workspace: ``DICOM/ST0/SE1/IM3`` -> ``DICOM_ST0_SE1_IM3``."""
    try:
        return "_".join(src.relative_to(base).parts)
    except ValueError:
        return src.name


def receive_files(series: LandingSeries, dest_dir: Path, mode: str = "link") -> list[Path]:
    """Link (or copy) one series' files into ``dest_dir``; idempotent."""
    missing = [f for f in series.files if not f.exists()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(series.files)} files of series {series.series_instance_uid} are missing "
            f"from {series.base}, e.g. {missing[0]}"
        )
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for src in series.files:
        dst = dest_dir / _destination_name(src, series.base)
        _link_or_copy(src, dst, mode)
        out.append(dst)
    return out


def batch_confs(conf: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The listener batches a run's ``conf`` names: its ``batches`` when the listener announced several
    in one run (one per series), else the conf itself (one batch, or a run by hand)."""
    batches = conf.get("batches")
    if not batches:
        return [dict(conf)]
    if not isinstance(batches, list) or not all(
        isinstance(b, Mapping) and b.get("series_dir") and b.get("series_instance_uid") for b in batches
    ):
        raise RunConfError(
            "conf 'batches' must be a list of listener batch confs, each with series_dir and "
            f"series_instance_uid; this run gave {_given(batches)}"
        )
    seen: set[str] = set()
    for batch in batches:
        uid = str(batch["series_instance_uid"])
        if uid in seen:
            raise RunConfError(f"conf 'batches' names series {uid} twice (one batch per series and run)")
        seen.add(uid)
    return [dict(b) for b in batches]


def _given(value: Any, limit: int = 200) -> str:
    """``repr`` of what a run gave, cut short (a conf may hold hundreds of file names)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _batch_of(conf: Mapping[str, Any], series_instance_uid: str | None) -> dict[str, Any]:
    """The batch conf of one series of a run (the conf itself unless it names several batches)."""
    if not conf.get("batches"):
        return dict(conf)
    for batch in batch_confs(conf):
        if batch["series_instance_uid"] == series_instance_uid:
            return batch
    return {}


def receive_from_landing(conf: Mapping[str, Any], dest_dir: Path, mode: str = "link") -> list[Path]:
    """Bring one listener batch (``conf`` of a listener-triggered run) into ``dest_dir``."""
    series = landing_series(conf)
    if len(series) != 1:
        raise InvalidDicomError(f"{conf.get('series_dir')}: holds {len(series)} series, expected one")
    return receive_files(series[0], dest_dir, mode)


def landing_series(conf: Mapping[str, Any]) -> list[LandingSeries]:
    """The series a run receives: a listener batch is one series (its conf names UIDs and files); a run by
    hand names only ``series_dir`` (a folder, CD/DVD media with a DICOMDIR, or the DICOMDIR itself) and
    gets one entry per series among its DICOM files (any file name), by the UIDs in the files.

    Unreadable files of a run by hand go with the first series, so that its validation sets them aside
    with the reason; a run by hand never deletes anything from its folder.
    """
    from airflow_provider_kaapana.core.net.send import instance_uids

    if conf.get("batches"):
        return [series for batch in batch_confs(conf) for series in landing_series(batch)]
    if not conf.get("series_dir"):
        others = sorted(str(key) for key in conf if key not in ("series_dir", "batches"))
        raise RunConfError(
            f"{NOTHING_TO_INGEST}; this run gave series_dir={conf.get('series_dir')!r}, "
            f"batches={conf.get('batches')!r}" + (f", and the keys {', '.join(others)}" if others else "")
        )
    series_dir = Path(conf["series_dir"])
    base = series_dir.parent if series_dir.is_file() else series_dir
    if conf.get("series_instance_uid") and conf.get("study_instance_uid"):
        return [
            LandingSeries(
                str(conf["study_instance_uid"]),
                str(conf["series_instance_uid"]),
                read_batch_files(dict(conf)),
                base,
            )
        ]
    files = read_batch_files(dict(conf))
    if not files:
        raise FileNotFoundError(f"no DICOM file in {series_dir}")
    groups: dict[tuple[str, str], list[Path]] = {}
    unreadable: list[Path] = []
    for path in files:
        try:
            uids = instance_uids(path)
        except InvalidDicomError as exc:
            log.warning("%s", exc)
            unreadable.append(path)
            continue
        groups.setdefault((uids.study_instance_uid, uids.series_instance_uid), []).append(path)
    if not groups:
        raise InvalidDicomError(f"{series_dir}: none of its {len(files)} files is readable DICOM")
    # the largest series first (a stray file that happens to sort first does not lead)
    ordered = sorted(groups.items(), key=lambda item: -len(item[1]))
    out = [LandingSeries(study, series, paths, base) for (study, series), paths in ordered]
    out[0] = LandingSeries(
        out[0].study_instance_uid, out[0].series_instance_uid, out[0].files + unreadable, base
    )
    return out


# --- validation -----------------------------------------------------------------------------------


def arrival_facts(conf: Mapping[str, Any]) -> dict[str, str]:
    """What a listener batch's conf says about the arrival, under the index operator's keys.

    ``calling_ae_title``/``called_ae_title`` become the document's ``kaapana.source``, and the batch's
    creation time (from its manifest) its ``kaapana.received_at``; a run by hand has neither, and its
    document gets the indexing time.
    """
    facts = {
        "calling_ae_title": str(conf.get("calling_ae") or ""),
        "called_ae_title": str(conf.get("called_ae") or ""),
    }
    manifest = conf.get("batch_manifest")
    created = SeriesBatch.load(manifest).created if manifest and Path(manifest).is_file() else None
    if isinstance(created, (int, float)) and created > 0:
        facts["received_at"] = datetime.fromtimestamp(created, tz=timezone.utc).isoformat(
            timespec="milliseconds"
        )
    return {k: v for k, v in facts.items() if v}


def validate_series(item: Mapping[str, str]) -> dict[str, Any]:
    """Check every file of a received (workspace) series; move bad ones to ``<series_dir>/../.invalid``.

    Returns the item with ``instances`` (count), ``valid_files`` (names) and ``quarantined`` (file names
    with reasons). Idempotent: a retry finds the files set aside earlier and reports them again. Raises
    InvalidDicomError when no file is valid.
    """
    checked = _check_series(item)
    if not checked["valid_files"]:
        raise InvalidDicomError(
            f"{item['series_dir']}: no valid DICOM instance ({'; '.join(checked['quarantined']) or 'empty'})"
        )
    return checked


def _check_series(item: Mapping[str, str]) -> dict[str, Any]:
    import pydicom

    series_dir = Path(item["series_dir"])
    expected = item.get("series_instance_uid")
    valid_files: list[str] = []
    quarantine = series_dir.parent / INVALID_DIR
    quarantined = [f"{p.name}: set aside by an earlier try" for p in sorted(quarantine.glob("*"))]
    for path in sorted(p for p in series_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            uid = validate_uid(str(ds.SeriesInstanceUID), f"SeriesInstanceUID of {path}")
            validate_uid(str(ds.SOPInstanceUID), f"SOPInstanceUID of {path}")
            if expected and uid != expected:
                raise InvalidDicomError(f"{path.name} belongs to series {uid}, not {expected}")
            expected = expected or uid
            valid_files.append(path.name)
        except Exception as exc:
            log.error("%s: not ingested: %s", path, exc)
            quarantine.mkdir(parents=True, exist_ok=True)
            path.rename(quarantine / path.name)
            quarantined.append(f"{path.name}: {exc}")
    return {
        **item,
        "series_instance_uid": expected,
        "instances": len(valid_files),
        "valid_files": valid_files,
        "quarantined": quarantined,
    }


def ingest_summary(
    validated: Iterable[Mapping[str, Any]], conf: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What an ingest run did, in one line and as data: ``N stored, M quarantined (where, why)``.

    ``quarantined`` lists each file set aside with its reason, the copy in the run workspace
    (``<series_dir>/../.invalid/<name>``) and, for a listener batch, the original kept in the landing
    zone. The ingest DAG's last task fails with this message when ``M`` is not 0, so a run with files set
    aside is never shown as a plain success.
    """
    conf = dict(conf or {})
    landing = {
        p.name: str(p)
        for batch in batch_confs(conf)
        if batch.get("batch_manifest")
        for p in read_batch_files(batch)
    }
    stored = 0
    quarantined: list[dict[str, str]] = []
    for item in validated:
        stored += int(item.get("instances", 0))
        invalid_dir = Path(item["series_dir"]).parent / INVALID_DIR
        for entry in item.get("quarantined", []):
            name, _, reason = str(entry).partition(": ")
            quarantined.append(
                {
                    "file": name,
                    "reason": reason,
                    "set_aside_in": str(invalid_dir / name),
                    "kept_in_landing_zone": landing.get(name, ""),
                }
            )
    where = "; ".join(
        f"{q['file']}: {q['reason']} (set aside in {q['set_aside_in']}"
        + (f", kept at {q['kept_in_landing_zone']})" if q["kept_in_landing_zone"] else ")")
        for q in quarantined[:20]
    )
    message = f"{stored} stored, {len(quarantined)} quarantined" + (f" ({where})" if quarantined else "")
    return {"stored": stored, "quarantined": quarantined, "message": message}


def validate_batch(
    received: Mapping[str, str] | Iterable[Mapping[str, str]], conf: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """:func:`validate_series` of each received series, with its batch's :func:`arrival_facts`."""
    items = [received] if isinstance(received, Mapping) else list(received)
    return [
        validate_series(item) | arrival_facts(_batch_of(conf, item.get("series_instance_uid")))
        for item in items
    ]


def validate_batches(
    received: Mapping[str, str] | Iterable[Mapping[str, str]], conf: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Like :func:`validate_batch`, but a series without any valid file does not stop the others:
    returns ``(validated, rejected)`` (``rejected``: the series with no valid file, their files set
    aside). Raises InvalidDicomError only when no series has a valid file."""
    items = [received] if isinstance(received, Mapping) else list(received)
    validated: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for item in items:
        checked = _check_series(item) | arrival_facts(_batch_of(conf, item.get("series_instance_uid")))
        (validated if checked["valid_files"] else rejected).append(checked)
    if not validated:
        raise InvalidDicomError(
            "no valid DICOM instance in "
            + "; ".join(f"{r['series_dir']} ({'; '.join(r['quarantined']) or 'empty'})" for r in rejected)
        )
    for item in rejected:
        log.error("series %s: no valid DICOM instance, nothing of it ingested", item["series_dir"])
    return validated, rejected


# --- clearing the landing zone --------------------------------------------------------------------


def same_file_content(a: Path, b: Path) -> bool:
    """The same inode (the workspace hard-links landing files), else byte-equal content."""
    try:
        return os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def remove_from_landing(
    conf: Mapping[str, Any], validated: Iterable[Mapping[str, Any]], keep: bool = False
) -> list[str]:
    """Delete the batch's files that validated and are still the very file that was stored.

    Only for a listener batch whose manifest exists (a run by hand names someone's folder: nothing is
    deleted from it), and not when ``keep``. A file is deleted only when it validated and is still the
    file the workspace holds (a modality may resend an instance under the same name meanwhile);
    anything else stays in the landing zone, so nothing received is ever lost. Returns the removed paths.
    A run of several batches (:func:`batch_confs`): each batch with the validated files of its series.
    """
    if conf.get("batches"):
        validated = list(validated)
        return [
            path
            for batch in batch_confs(conf)
            for path in remove_from_landing(
                batch,
                [v for v in validated if v.get("series_instance_uid") == batch["series_instance_uid"]],
                keep=keep,
            )
        ]
    manifest = conf.get("batch_manifest")
    if keep or not manifest or not Path(manifest).is_file():
        return []
    stored = {name: Path(v["series_dir"]) / name for v in validated for name in v["valid_files"]}
    removed = []
    for path in read_batch_files(dict(conf)):
        copy = stored.get(path.name)
        if copy is None:
            log.warning("keeping %s in the landing zone: it failed validation", path)
        elif not path.exists():
            continue
        elif not same_file_content(path, copy):
            log.warning("keeping %s in the landing zone: it changed after this run received it", path)
        else:
            path.unlink()
            removed.append(str(path))
    return removed


# --- the run's report -----------------------------------------------------------------------------

REPORT_FILE_NAME = "report.html"


def write_report_html(
    summary: Mapping[str, Any],
    validated: Iterable[Mapping[str, Any]],
    indexed: Mapping[str, Any] | None,
    run_root: str | Path,
) -> Path:
    """``<run_root>/report.html``: the run's one-line summary, and per series its thumbnail (linked
    relative to the run folder), instance count and viewer link, from the index step's XCom."""
    from html import escape

    from airflow_provider_kaapana.core.files import write_atomic

    root = Path(run_root)
    indexed = dict(indexed or {})
    thumbnails = dict(indexed.get("thumbnails") or {})
    no_thumbnail = dict(indexed.get("no_thumbnail") or {})
    links = dict(indexed.get("viewer_urls") or {})
    rows = []
    for item in validated:
        uid = str(item.get("series_instance_uid") or "")
        png = thumbnails.get(uid)
        if png:
            try:
                src = Path(png).relative_to(root).as_posix()
            except ValueError:
                src = Path(png).as_uri()
            picture = f'<img src="{escape(src)}" alt="middle slice of {escape(uid)}">'
        else:
            picture = escape(no_thumbnail.get(uid, "no thumbnail"))
        link = links.get(uid)
        log.info("series %s: thumbnail %s, viewer %s", uid, png or "none", link or "none")
        viewer = f'<a href="{escape(link)}">open in viewer</a>' if link else "no viewer configured"
        rows.append(
            f"<tr><td>{picture}</td><td><code>{escape(uid)}</code><br>{int(item.get('instances', 0))} "
            f"instances, {len(item.get('quarantined') or [])} set aside<br>{viewer}</td></tr>"
        )
    page = (
        '<!doctype html><html><head><meta charset="utf-8"><title>Ingest report</title></head><body>'
        f"<h1>Ingest</h1><p>{escape(str(summary.get('message', '')))}</p>"
        f"<table>{''.join(rows)}</table></body></html>\n"
    )
    root.mkdir(parents=True, exist_ok=True)
    return write_atomic(root / REPORT_FILE_NAME, [page.encode()])
