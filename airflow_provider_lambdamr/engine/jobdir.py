"""A job directory's layout, and the only code that deletes a job's state or a result.

Destructive operations touch only what a job wrote:

- In a job directory (``<job root>/<job id>``), only the names of the layout below, and
  only in a directory whose manifest names that job id: a directory without one is refused.
- In an output, only the files a committed ``_SUCCESS`` lists, and that ``_SUCCESS``.

Layout of a job directory (``step-NN/`` holds step NN's data for steps after the first;
every name is spelled in ``lambda_src.contract``)::

    jobdata.json            the manifest: spec, pinned plan, code version (written once)
    failed.json             why the job last failed, for sensors in other processes
    map.json                the map commit (step-NN/map.json for later steps)
    step-NN/plan.json       the pinned map tasks of a later step
    status/...              one status record per committed task attempt
    map/ reduce/ tasks/     intermediate runs and stored event lists (also under step-NN/)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from lambda_src import contract
from lambda_src import storage as st
from lambda_src.contract import CLAIM, MANIFEST, SUCCESS, written_by_job  # noqa: F401 - jobdir's interface

log = logging.getLogger(__name__)

#: What every manifest the engine writes holds.
MANIFEST_FIELDS = ("version", "job_id", "identity", "spec", "code", "plan", "tasks")

class NotAJobDir(ValueError):
    """A directory that holds no job's manifest: nothing in it may be deleted."""


def read_json(uri: str) -> object | None:
    """The JSON at ``uri``, None when there is no such object; ValueError when not JSON."""
    try:
        data = st.for_uri(uri).read_bytes(uri)
    except st.NotFound:
        return None
    try:
        return json.loads(data)
    except ValueError as err:
        raise ValueError(f"{uri} is not valid JSON ({len(data)} bytes): {err}") from None


def read_manifest(job_dir: str) -> dict | None:
    """The manifest of the job in ``job_dir``; None when there is none."""
    uri = contract.manifest_uri(job_dir)
    manifest = read_json(uri)
    if manifest is not None and not (
        isinstance(manifest, dict) and all(k in manifest for k in MANIFEST_FIELDS)
        and isinstance(manifest["job_id"], str) and isinstance(manifest["spec"], dict)
    ):
        raise NotAJobDir(f"{uri} is not a LambdaMR job manifest")
    return manifest


def require_job_dir(job_dir: str) -> dict:
    """The manifest of ``job_dir``, which must be the directory of the job it names."""
    manifest = read_manifest(job_dir)
    if manifest is None:
        raise NotAJobDir(
            f"{job_dir} is not a LambdaMR job directory: it has no {MANIFEST} (give the "
            f"directory <job root>/<job id> of a job that was planned)"
        )
    job_root = manifest["spec"].get("job_root")
    if not isinstance(job_root, str) or not job_root:
        raise NotAJobDir(f"{contract.manifest_uri(job_dir)} is not a LambdaMR job manifest (no job root)")
    recorded = st.join(job_root, manifest["job_id"])
    if manifest["job_id"] != st.basename(job_dir) or st.resolved(recorded) != st.resolved(job_dir):
        raise NotAJobDir(
            f"{job_dir} is not the directory of job {manifest['job_id']!r}, whose manifest it holds "
            f"(that job's directory is {recorded}; a link or a copy is not it)"
        )
    return manifest


def step_count(manifest: dict | None) -> int:
    return int((manifest or {}).get("steps", 1))


def intermediate_dirs(job_dir: str, steps: int | None = None) -> list[str]:
    """The directories of a job's intermediate data (runs, stored event lists), every step.

    ``steps`` defaults to the count in the job's manifest (1 when there is none).
    """
    if steps is None:
        steps = step_count(read_manifest(job_dir))
    return contract.intermediate_dirs(job_dir, steps)


@dataclass
class CleanupReport:
    deleted: int
    #: Objects in the job directory that the job did not write, left in place.
    kept: list[str]

    def to_dict(self) -> dict:
        return {"deleted_objects": self.deleted, "kept_objects": len(self.kept), "kept": self.kept[:20]}


def cleanup(job_dir: str, *, delete_job_dir: bool = False, missing_ok: bool = True) -> CleanupReport:
    """Delete a job's intermediates, or (``delete_job_dir``) everything the job wrote there.

    Refuses (``NotAJobDir``) a directory that is not a job's; a directory that does not
    exist at all has nothing to delete (unless ``missing_ok`` is False).
    """
    job_dir = st.normalize(job_dir).rstrip("/")
    store = st.for_uri(job_dir)
    try:
        manifest = require_job_dir(job_dir)
    except NotAJobDir:
        if missing_ok and not any(True for _ in store.list(job_dir)):
            return CleanupReport(0, [])
        raise
    doomed: list[str] = []
    kept: list[str] = []
    if delete_job_dir:
        for info in store.list(job_dir):
            rel = st.relative_to(info.uri, job_dir)
            (doomed if rel and written_by_job(rel) else kept).append(info.uri)
        # The manifest goes last: until then a failed cleanup can be run again.
        manifest_uri = contract.manifest_uri(job_dir)
        doomed.sort(key=lambda u: u == manifest_uri)
    else:
        for d in intermediate_dirs(job_dir, step_count(manifest)):
            doomed.extend(info.uri for info in store.list(d))
    store.delete(doomed)
    store.remove_empty_dirs(job_dir)
    if delete_job_dir:
        release_claim(manifest["spec"]["output"], manifest["job_id"])
    if kept:
        log.warning("cleanup of %s left %d objects the job did not write (e.g. %s)",
                    job_dir, len(kept), kept[0])
    return CleanupReport(len(doomed), kept)


# -- the output's _SUCCESS ---------------------------------------------------------------
@dataclass
class Success:
    """What an output's ``_SUCCESS`` says: a LambdaMR result, or why it is not one."""

    uri: str
    summary: dict | None = None
    #: Set when a ``_SUCCESS`` exists that LambdaMR did not write or cannot read.
    problem: str | None = None
    #: False when even ``overwrite`` must not replace it (it is not a file).
    replaceable: bool = True

    @property
    def exists(self) -> bool:
        return self.summary is not None or self.problem is not None


def read_success(output: str) -> Success:
    uri = contract.success_uri(output)
    store = st.for_uri(uri)
    try:
        data = store.read_bytes(uri)
    except st.NotFound:
        if store.is_dir(uri):
            return Success(uri, problem=f"{uri} is a directory, not a LambdaMR result: remove it",
                           replaceable=False)
        return Success(uri)
    if not data.strip():
        return Success(uri, problem=f"{uri} is empty (as Spark and Hadoop write it): not a LambdaMR result")
    try:
        summary = json.loads(data)
    except ValueError as err:
        return Success(uri, problem=f"{uri} is not valid JSON ({err}): not a LambdaMR result")
    if not (isinstance(summary, dict) and isinstance(summary.get("job_id"), str)
            and isinstance(summary.get("files"), list)
            and all(isinstance(f, str) and contract.is_result_file_name(f) for f in summary["files"])):
        return Success(uri, problem=f"{uri} holds JSON that is not a LambdaMR result manifest "
                                    f"(a job, and the part-NNNNN files it wrote)")
    return Success(uri, summary=summary)


def result_files(output: str, summary: dict) -> list[str]:
    """The URIs of the part files a committed result lists (``read_success`` checked the names)."""
    return [st.join(output, name) for name in summary["files"]]


# -- the output's claim --------------------------------------------------------------------
def claim_output(output: str, job_id: str) -> str | None:
    """Claim ``output`` for ``job_id``; the id of the job that holds it instead, or None.

    A claim whose job committed (its ``_SUCCESS`` names it) is released: it is taken over.
    """
    uri = contract.claim_uri(output)
    store = st.for_uri(uri)
    for _ in range(3):
        if store.write_new(uri, json.dumps({"job_id": job_id}).encode("utf-8")):
            return None
        holder = _claim_holder(uri)
        if holder == job_id:
            return None
        if holder is not None:
            success = read_success(output).summary
            if success is None or success["job_id"] != holder:
                return holder
        store.delete([uri])  # a committed job's (or an unreadable) claim: take it over
    raise ValueError(f"cannot claim {output}: {uri} keeps changing (another job is starting there)")


def may_commit(output: str, job_id: str) -> bool:
    """Whether ``job_id`` holds ``output`` (or a run of that same job already committed it)."""
    holder = _claim_holder(contract.claim_uri(output))
    if holder == job_id:
        return True
    success = read_success(output).summary
    return holder is None and success is not None and success["job_id"] == job_id


def release_claim(output: str, job_id: str) -> None:
    uri = contract.claim_uri(output)
    if _claim_holder(uri) == job_id:
        st.for_uri(uri).delete([uri])


def _claim_holder(uri: str) -> str | None:
    try:
        data = json.loads(st.for_uri(uri).read_bytes(uri))
    except st.NotFound:
        return None
    except ValueError:
        return ""
    return data.get("job_id") if isinstance(data, dict) and isinstance(data.get("job_id"), str) else ""
