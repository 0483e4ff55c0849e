"""The execution role of a job's Lambda functions, scoped to exactly what the job touches.

The reference architecture's sample ``policy.json`` granted bucket actions on object ARNs
(where they never match) and broad wildcards elsewhere. Here ``s3:ListBucket`` goes on bucket
ARNs only, narrowed by ``s3:prefix`` conditions to the job's key prefixes; reads go on the
object ARNs of inputs, job root and outputs; writes only on the job root and the outputs.

No Airflow imports: callers pass a boto3 IAM client, e.g. one built from an Airflow
connection. The policy is deterministic (sorted, stable Sids) so a deployed role can be diffed
against what a job needs.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

POLICY_VERSION = "2012-10-17"

#: The functions' assume-role (trust) policy: only the Lambda service may assume the role.
LAMBDA_TRUST_POLICY: dict = {
    "Version": POLICY_VERSION,
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}

DEFAULT_DESCRIPTION = "Execution role of lambdamr MapReduce functions: scoped S3, CloudWatch Logs, X-Ray"

READ_ACTIONS = ("s3:GetObject",)
WRITE_ACTIONS = ("s3:AbortMultipartUpload", "s3:DeleteObject", "s3:PutObject")
LOG_STREAM_ACTIONS = ("logs:CreateLogStream", "logs:PutLogEvents")
XRAY_ACTIONS = ("xray:PutTelemetryRecords", "xray:PutTraceSegments")
#: Coordinator mode: what ending a job's watchdog (its EventBridge rule) takes.
WATCHDOG_ACTIONS = ("events:DeleteRule", "events:RemoveTargets")
#: The functions a coordinator-mode job's role invokes: the coordinator (as the tasks'
#: destination) and the tasks (from the coordinator).
COORDINATED_FUNCTIONS = ("coordinator", "mapper", "reducer")

_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_FUNCTION_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_REGION_RE = re.compile(r"^(\*|[a-z0-9-]+)$")
_ACCOUNT_RE = re.compile(r"^(\*|\d{12})$")
_PARTITION_RE = re.compile(r"^[a-z][a-z-]*$")
# IAM treats these as wildcards (or variable markers) in ARNs and StringLike values; S3 keys
# may contain them, so they are written as IAM's literal-character variables instead.
_IAM_SPECIAL = {"$": "${$}", "*": "${*}", "?": "${?}"}


@dataclass(frozen=True, order=True)
class _Pattern:
    """A key pattern: ``literal`` alone, or ``literal`` followed by ``*`` when ``wildcard``."""

    literal: str
    wildcard: bool

    def covers(self, other: _Pattern) -> bool:
        """Whether ``other`` is redundant next to ``self`` (every key it matches, ``self`` matches)."""
        if self == other or not self.wildcard:
            return False
        if other.wildcard or other.literal != self.literal:
            return other.literal.startswith(self.literal)
        # "data/" next to "data/*" stays: listing exactly "data/" reads better than relying on * matching "".
        return False

    def render(self) -> str:
        escaped = "".join(_IAM_SPECIAL.get(ch, ch) for ch in self.literal)
        return escaped + ("*" if self.wildcard else "")


def _split(uri: str, what: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"{what} has no bucket: {uri!r}")
    if not _BUCKET_RE.fullmatch(bucket):
        raise ValueError(f"{what} has an invalid bucket name {bucket!r}: {uri!r}")
    return bucket, key


def _object_patterns(key: str) -> list[_Pattern]:
    """Keys a location covers: a "directory" (``key/``), the whole bucket, or an object *and* its children.

    A key without a trailing slash may name one object or a directory (storage lists both),
    so it gets ``key`` and ``key/*`` but never ``key*``, which would also match ``key2/...``.
    """
    if not key or key.endswith("/"):
        return [_Pattern(key, True)]
    return [_Pattern(key, False), _Pattern(key + "/", True)]


def _list_patterns(key: str) -> list[_Pattern]:
    """``s3:prefix`` values that listing this location sends (and nothing wider)."""
    if not key:
        return [_Pattern("", True)]
    if key.endswith("/"):
        return [_Pattern(key, False), _Pattern(key, True)]
    return [_Pattern(key, False), _Pattern(key + "/", True)]


def _prune(patterns: Iterable[_Pattern]) -> list[_Pattern]:
    """Sorted, de-duplicated patterns without those another one already covers."""
    unique = sorted(set(patterns))
    return [p for p in unique if not any(q.covers(p) for q in unique)]


def _camel(bucket: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", bucket) if part)


def _list_sids(buckets: Iterable[str]) -> dict[str, str]:
    """``List<Bucket>`` Sids, alphanumeric; names that sanitize alike all get a short hash suffix.

    The suffix depends only on the bucket name, so a bucket keeps its Sid whatever else the
    policy holds (unless a look-alike bucket joins it).
    """
    names = sorted(set(buckets))
    base = {b: "List" + _camel(b) for b in names}
    seen: dict[str, int] = {}
    for sid in base.values():
        seen[sid.lower()] = seen.get(sid.lower(), 0) + 1
    return {
        b: sid + hashlib.sha256(b.encode()).hexdigest()[:8] if seen[sid.lower()] > 1 else sid
        for b, sid in base.items()
    }


def _check(value: str, pattern: re.Pattern[str], what: str) -> None:
    if not pattern.fullmatch(value):
        raise ValueError(f"invalid {what}: {value!r}")


def execution_policy(
    *,
    inputs: list[str],
    job_root: str,
    outputs: list[str],
    region: str = "*",
    account_id: str = "*",
    function_prefix: str = "lambdamr",
    tracing: bool = True,
    partition: str = "aws",
    coordinator: bool = False,
) -> dict:
    """The least-privilege IAM policy document for a job's mapper and reducer functions.

    :param inputs: ``s3://`` URIs (prefixes or objects) the functions read. ``file://`` URIs
        and plain paths are skipped: only the local runtime can read them.
    :param job_root: ``s3://`` URI of the job's state and intermediates (read and written).
    :param outputs: ``s3://`` URIs the results are written to (read and written).
    :param region: Region of the log groups, ``*`` for any.
    :param account_id: Account of the log groups, ``*`` for any.
    :param function_prefix: Function names are ``<prefix>-mapper`` and ``<prefix>-reducer``.
    :param tracing: Grant X-Ray segment/telemetry uploads (for active tracing).
    :param partition: ``aws``, ``aws-cn``, ``aws-us-gov``...
    :param coordinator: Coordinator mode: the role also serves ``<prefix>-coordinator``, which
        invokes the mapper and reducer (versions and aliases only: it always names one), is
        itself their asynchronous-invocation destination (Lambda invokes it with this role),
        and deletes its job's watchdog rule ``<prefix>-watchdog-*``. Its S3 access is the
        job's own (job root and outputs), which the statements above already grant.
    """
    _check(region, _REGION_RE, "region")
    _check(account_id, _ACCOUNT_RE, "account_id")
    _check(function_prefix, _FUNCTION_PREFIX_RE, "function_prefix")
    _check(partition, _PARTITION_RE, "partition")
    if not job_root.startswith("s3://"):
        raise ValueError(f"job_root must be an s3:// URI for the aws runtime, got {job_root!r}")
    for uri in outputs:
        if not uri.startswith("s3://"):
            raise ValueError(f"outputs must be s3:// URIs for the aws runtime, got {uri!r}")

    read = [_split(uri, "input") for uri in inputs if uri.startswith("s3://")]
    write = [_split(job_root, "job_root"), *(_split(uri, "output") for uri in outputs)]

    listed: dict[str, list[_Pattern]] = {}
    for bucket, key in read + write:
        listed.setdefault(bucket, []).extend(_list_patterns(key))

    statements: list[dict[str, Any]] = []
    sids = _list_sids(listed)
    for bucket in sorted(listed):
        prefixes = _prune(listed[bucket])
        statement: dict[str, Any] = {
            "Sid": sids[bucket],
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": [f"arn:{partition}:s3:::{bucket}"],
        }
        if _Pattern("", True) not in prefixes:
            statement["Condition"] = {"StringLike": {"s3:prefix": [p.render() for p in prefixes]}}
        statements.append(statement)

    def object_arns(locations: list[tuple[str, str]]) -> list[str]:
        by_bucket: dict[str, list[_Pattern]] = {}
        for bucket, key in locations:
            by_bucket.setdefault(bucket, []).extend(_object_patterns(key))
        return [
            f"arn:{partition}:s3:::{bucket}/{p.render()}"
            for bucket in sorted(by_bucket)
            for p in _prune(by_bucket[bucket])
        ]

    statements.append(
        {
            "Sid": "ReadObjects",
            "Effect": "Allow",
            "Action": list(READ_ACTIONS),
            "Resource": object_arns(read + write),
        }
    )
    statements.append(
        {
            "Sid": "WriteObjects",
            "Effect": "Allow",
            "Action": list(WRITE_ACTIONS),
            "Resource": object_arns(write),
        }
    )

    logs = f"arn:{partition}:logs:{region}:{account_id}"
    statements.append(
        {
            "Sid": "CreateLogGroup",
            "Effect": "Allow",
            "Action": ["logs:CreateLogGroup"],
            "Resource": [f"{logs}:*"],
        }
    )
    statements.append(
        {
            "Sid": "WriteLogs",
            "Effect": "Allow",
            "Action": list(LOG_STREAM_ACTIONS),
            "Resource": [f"{logs}:log-group:/aws/lambda/{function_prefix}-*:*"],
        }
    )
    if tracing:
        # X-Ray has no resource-level permissions for these actions: "*" is the only valid resource.
        statements.append({"Sid": "XRay", "Effect": "Allow", "Action": list(XRAY_ACTIONS), "Resource": ["*"]})
    if coordinator:
        functions = f"arn:{partition}:lambda:{region}:{account_id}:function:{function_prefix}"
        statements.append({
            "Sid": "InvokeJobFunctions",
            "Effect": "Allow",
            "Action": ["lambda:InvokeFunction"],
            "Resource": [f"{functions}-{kind}:*" for kind in COORDINATED_FUNCTIONS],
        })
        statements.append({
            "Sid": "EndWatchdog",
            "Effect": "Allow",
            "Action": list(WATCHDOG_ACTIONS),
            "Resource": [f"arn:{partition}:events:{region}:{account_id}:rule/{function_prefix}-watchdog-*"],
        })
    return {"Version": POLICY_VERSION, "Statement": statements}


def _error_code(err: Exception) -> str:
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def create_role(
    iam_client: Any,
    *,
    role_name: str,
    policy: dict,
    description: str = DEFAULT_DESCRIPTION,
    tags: dict[str, str] | None = None,
    permissions_boundary: str | None = None,
) -> dict:
    """Create the role (trusting Lambda) or reuse it, and put ``policy`` inline as ``<role_name>-policy``.

    Idempotent: an existing role keeps its trust policy, description, tags and boundary; only
    the inline policy is replaced, so re-running after a job's locations change re-scopes it.
    IAM is eventually consistent: Lambda may refuse a brand-new role for a few seconds.

    :returns: ``{"role_name", "role_arn", "created", "policy_name"}``.
    """
    from botocore.exceptions import ClientError

    params: dict[str, Any] = {
        "RoleName": role_name,
        "AssumeRolePolicyDocument": json.dumps(LAMBDA_TRUST_POLICY),
        "Description": description,
    }
    if tags:
        params["Tags"] = [{"Key": k, "Value": v} for k, v in sorted(tags.items())]
    if permissions_boundary:
        params["PermissionsBoundary"] = permissions_boundary
    try:
        role = iam_client.create_role(**params)["Role"]
        created = True
    except ClientError as err:
        if _error_code(err) != "EntityAlreadyExists":
            raise
        role = iam_client.get_role(RoleName=role_name)["Role"]
        created = False
    if created:
        iam_client.get_waiter("role_exists").wait(
            RoleName=role_name, WaiterConfig={"Delay": 1, "MaxAttempts": 30}
        )

    policy_name = f"{role_name}-policy"
    iam_client.put_role_policy(RoleName=role_name, PolicyName=policy_name, PolicyDocument=json.dumps(policy))
    return {"role_name": role_name, "role_arn": role["Arn"], "created": created, "policy_name": policy_name}


def delete_role(iam_client: Any, *, role_name: str) -> bool:
    """Delete the role after removing what blocks deletion: its inline and attached managed policies.

    :returns: False if the role did not exist, True if it was deleted.
    """
    from botocore.exceptions import ClientError

    try:
        inline = [
            name
            for page in iam_client.get_paginator("list_role_policies").paginate(RoleName=role_name)
            for name in page.get("PolicyNames", ())
        ]
        attached = [
            item["PolicyArn"]
            for page in iam_client.get_paginator("list_attached_role_policies").paginate(RoleName=role_name)
            for item in page.get("AttachedPolicies", ())
        ]
    except ClientError as err:
        if _error_code(err) == "NoSuchEntity":
            return False
        raise
    for name in inline:
        _ignore_missing(iam_client.delete_role_policy, RoleName=role_name, PolicyName=name)
    for arn in attached:
        _ignore_missing(iam_client.detach_role_policy, RoleName=role_name, PolicyArn=arn)
    # Deleted concurrently since the listing: it no longer exists, which is what was asked.
    return _ignore_missing(iam_client.delete_role, RoleName=role_name)


def _ignore_missing(call: Any, **kwargs: Any) -> bool:
    """Make the call; False instead of an error when its target is already gone (NoSuchEntity)."""
    from botocore.exceptions import ClientError

    try:
        call(**kwargs)
    except ClientError as err:
        if _error_code(err) == "NoSuchEntity":
            return False
        raise
    return True
