"""What is checked before a job runs or a committed result is served: the output holds no
other result (``overwrite`` replaces only a LambdaMR result), the pinned inputs did not change,
and a job id names one job (``identity_diff`` says what differs)."""

from __future__ import annotations

import contextlib
import json
import logging

from airflow_provider_lambdamr.engine import jobdir, planner
from airflow_provider_lambdamr.engine.failures import JobFailed
from airflow_provider_lambdamr.engine.spec import JobSpec
from lambda_src import contract
from lambda_src import storage as st
from lambda_src.contract import SUCCESS

log = logging.getLogger(__name__)


def check_output(spec: JobSpec) -> None:
    """Refuse an output that holds another result, unless told to replace it.

    ``overwrite`` deletes only a previous LambdaMR result (the files its ``_SUCCESS``
    lists, and that ``_SUCCESS``), or an empty, corrupt or foreign ``_SUCCESS`` (no other
    file). Nothing else in the output is ever deleted, so part files that no result lists
    (an unfinished job's, another tool's) are refused: they would mix with this result.
    """
    out = spec.output
    success = jobdir.read_success(out)
    replace: list[str] = []  # what overwrite deletes: a result's files, then its _SUCCESS
    if success.summary is not None and success.summary["job_id"] != spec.job_id:
        if not spec.overwrite:
            raise JobFailed(
                f"output {out} already holds the result of job {success.summary['job_id']!r}; "
                f"choose another output, or pass --overwrite (overwrite=True in an operator) to "
                f"replace that result",
                phase="prepare", resumable=False,
            )
        replace = [success.uri, *jobdir.result_files(out, success.summary)]
    elif success.problem is not None:
        if not spec.overwrite or not success.replaceable:
            raise JobFailed(
                f"output {out} is not empty: {success.problem}; choose another output, or pass "
                f"--overwrite to replace that {SUCCESS} (no other file is deleted)",
                phase="prepare", resumable=False,
            )
        replace = [success.uri]
    # Resuming, the part files in the output may be this job's own (a map-only job's).
    if jobdir.read_manifest(spec.job_dir) is None:
        stray = [
            i.uri for i in st.for_uri(out).list_children(out)
            if i.uri not in replace and contract.is_part_name(st.basename(i.uri))
        ]
        if stray:
            raise JobFailed(
                f"output {out} already holds {len(stray)} part files that no {SUCCESS} lists "
                f"(e.g. {st.basename(stray[0])}: an unfinished job's, or another tool's); they "
                f"would mix with this job's result, and only files a job wrote are ever deleted: "
                f"remove them, or choose another output",
                phase="prepare", resumable=False,
            )
    holder = jobdir.claim_output(out, spec.job_id)
    if holder is not None:
        raise JobFailed(
            f"output {out} is being written by job {holder!r} ({contract.claim_uri(out)} "
            f"names it, and it has not committed): two jobs never write one output. Resume that "
            f"job (--job-id {holder}), or run `lambdamr cleanup --delete-job-dir` on its job "
            f"directory to give the output up",
            phase="prepare", resumable=False,
        )
    if replace:
        log.warning("overwrite: deleting %s and the %d files it lists in %s (%s)", SUCCESS,
                    len(replace) - 1, out, success.problem or f"job {success.summary['job_id']}")
        st.for_uri(out).delete(replace)  # _SUCCESS first: the output stops claiming to be whole


def check_inputs_unchanged(spec: JobSpec, manifest: dict, committed: bool = False) -> None:
    """Refuse to resume (or to return a committed result) when a pinned object changed.

    Objects that appeared under an input since the job was planned are not its input:
    the plan pins which objects a job reads.
    """
    what = "return the result of" if committed else "resume"
    fix = ("--recompute (recompute=True) to run it again on the new data, or start a new job"
           if committed else "start a new job (another job id)")
    pinned = {s["uri"]: s for task in manifest["tasks"] for s in task if s.get("version")}
    if not pinned:
        return
    now: dict[str, st.ObjectInfo] = {}
    for uris in spec.inputs.values():
        for uri in uris:
            with contextlib.suppress(planner.InputNotFound):
                now.update((i.uri, i) for i in planner.list_input(uri))
    for uri, seg in sorted(pinned.items()):
        info = now.get(uri)
        if info is None:
            raise JobFailed(f"cannot {what} job {spec.job_id}: its input {uri} was deleted after "
                            f"it was planned; {fix}",
                            phase="prepare", input=uri, resumable=False)
        if (info.size, info.version) != (seg["size"], seg["version"]):
            raise JobFailed(
                f"cannot {what} job {spec.job_id}: its input {uri} changed after it was planned "
                f"(size {seg['size']}, version {seg['version']} then; size {info.size}, version "
                f"{info.version} now); a job never mixes old and new data: {fix}",
                phase="prepare", input=uri, resumable=False,
            )


def identity_diff(old: dict, new: dict) -> str:
    """What differs between two job identities, each field with its old and new value."""
    def show(value: object) -> str:
        text = json.dumps(value, sort_keys=True)
        return text if len(text) <= 160 else text[:157] + "..."

    return "; ".join(
        f"{key} was {show(old.get(key))}, now {show(new.get(key))}"
        for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)
    )
