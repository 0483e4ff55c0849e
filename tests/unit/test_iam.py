"""The execution role: policy shape (pure) and create/delete against moto's IAM."""

from __future__ import annotations

import json
import re
import uuid

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from airflow_provider_lambdamr.engine.iam import (
    LAMBDA_TRUST_POLICY,
    create_role,
    delete_role,
    execution_policy,
)

EXAMPLE = {"inputs": ["s3://in-bucket/data/"], "job_root": "s3://jobs/root", "outputs": ["s3://out/res"]}
WRITE = ("s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload")
OBJECT_ACTIONS = ("s3:GetObject", *WRITE)

LAYOUTS = [
    EXAMPLE,
    {"inputs": ["s3://in-bucket/a.csv", "s3://in-bucket"], "job_root": "s3://jobs/", "outputs": []},
    {
        "inputs": ["s3://jobs/root/in/", "file:///tmp/x"],
        "job_root": "s3://jobs/root/",
        "outputs": ["s3://jobs/out"],
    },
]


def _iam_regex(pattern: str) -> re.Pattern[str]:
    """IAM's StringLike/ARN matching: * and ? are wildcards, ${*} ${?} ${$} literal characters."""
    out = []
    for token in re.findall(r"\$\{[*?$]\}|.", pattern, flags=re.S):
        if token.startswith("${"):
            out.append(re.escape(token[2]))
        elif token == "*":
            out.append(".*")
        elif token == "?":
            out.append(".")
        else:
            out.append(re.escape(token))
    return re.compile("".join(out), flags=re.S)


def allowed(policy: dict, action: str, resource: str, s3_prefix: str | None = None) -> bool:
    """A tiny evaluator (Allow statements, exact actions, StringLike on s3:prefix) for semantic checks."""
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow"
        if action not in st["Action"]:
            continue
        if not any(_iam_regex(r).fullmatch(resource) for r in st["Resource"]):
            continue
        cond = st.get("Condition")
        if cond is None:
            return True
        patterns = cond["StringLike"]["s3:prefix"]
        if s3_prefix is not None and any(_iam_regex(p).fullmatch(s3_prefix) for p in patterns):
            return True
    return False


def can_list(policy: dict, bucket: str, prefix: str) -> bool:
    return allowed(policy, "s3:ListBucket", f"arn:aws:s3:::{bucket}", prefix)


def can_read(policy: dict, bucket: str, key: str) -> bool:
    return allowed(policy, "s3:GetObject", f"arn:aws:s3:::{bucket}/{key}")


def can_write(policy: dict, bucket: str, key: str) -> bool:
    results = {allowed(policy, action, f"arn:aws:s3:::{bucket}/{key}") for action in WRITE}
    assert len(results) == 1, f"write actions disagree on {bucket}/{key}"
    return results.pop()


# -- policy shape ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bucket_actions_only_on_bucket_arns_object_actions_only_on_object_arns(layout):
    policy = execution_policy(**layout)
    assert policy["Version"] == "2012-10-17"
    s3_statements = [st for st in policy["Statement"] if any(a.startswith("s3:") for a in st["Action"])]
    assert s3_statements
    for st in s3_statements:
        if "s3:ListBucket" in st["Action"]:
            assert st["Action"] == ["s3:ListBucket"]
            for arn in st["Resource"]:
                assert re.fullmatch(r"arn:aws:s3:::[^/*]+", arn), arn
        for action in st["Action"]:
            if action in OBJECT_ACTIONS:
                for arn in st["Resource"]:
                    assert arn.startswith("arn:aws:s3:::") and "/" in arn[len("arn:aws:s3:::") :], arn
    assert {a for st in s3_statements for a in st["Action"]} == {"s3:ListBucket", *OBJECT_ACTIONS}


def test_example_policy_exactly():
    assert execution_policy(**EXAMPLE)["Statement"] == [
        {
            "Sid": "ListInBucket",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": ["arn:aws:s3:::in-bucket"],
            "Condition": {"StringLike": {"s3:prefix": ["data/", "data/*"]}},
        },
        {
            "Sid": "ListJobs",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": ["arn:aws:s3:::jobs"],
            "Condition": {"StringLike": {"s3:prefix": ["root", "root/*"]}},
        },
        {
            "Sid": "ListOut",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": ["arn:aws:s3:::out"],
            "Condition": {"StringLike": {"s3:prefix": ["res", "res/*"]}},
        },
        {
            "Sid": "ReadObjects",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": [
                "arn:aws:s3:::in-bucket/data/*",
                "arn:aws:s3:::jobs/root",
                "arn:aws:s3:::jobs/root/*",
                "arn:aws:s3:::out/res",
                "arn:aws:s3:::out/res/*",
            ],
        },
        {
            "Sid": "WriteObjects",
            "Effect": "Allow",
            "Action": ["s3:AbortMultipartUpload", "s3:DeleteObject", "s3:PutObject"],
            "Resource": [
                "arn:aws:s3:::jobs/root",
                "arn:aws:s3:::jobs/root/*",
                "arn:aws:s3:::out/res",
                "arn:aws:s3:::out/res/*",
            ],
        },
        {
            "Sid": "CreateLogGroup",
            "Effect": "Allow",
            "Action": ["logs:CreateLogGroup"],
            "Resource": ["arn:aws:logs:*:*:*"],
        },
        {
            "Sid": "WriteLogs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": ["arn:aws:logs:*:*:log-group:/aws/lambda/lambdamr-*:*"],
        },
        {
            "Sid": "XRay",
            "Effect": "Allow",
            "Action": ["xray:PutTelemetryRecords", "xray:PutTraceSegments"],
            "Resource": ["*"],
        },
    ]


def test_no_write_on_input_only_prefixes():
    policy = execution_policy(**EXAMPLE)
    write_arns = [
        arn for st in policy["Statement"] if "s3:PutObject" in st["Action"] for arn in st["Resource"]
    ]
    assert write_arns and not any(arn.startswith("arn:aws:s3:::in-bucket") for arn in write_arns)
    assert can_read(policy, "in-bucket", "data/part-0.csv")
    assert not can_write(policy, "in-bucket", "data/part-0.csv")
    for bucket, key in [("jobs", "root/maps/0"), ("jobs", "root"), ("out", "res/part-0"), ("out", "res")]:
        assert can_read(policy, bucket, key) and can_write(policy, bucket, key)


def test_prefix_conditions_allow_the_job_prefixes_and_nothing_beside_them():
    policy = execution_policy(**EXAMPLE)
    assert can_list(policy, "in-bucket", "data/")
    assert can_list(policy, "in-bucket", "data/2024/")
    assert can_list(policy, "jobs", "root/")
    assert can_list(policy, "jobs", "root/status/")
    assert can_list(policy, "out", "res/")
    for bucket, prefix in [
        ("in-bucket", "dat"),
        ("in-bucket", "data2/"),
        ("in-bucket", ""),
        ("jobs", "root2/"),
        ("jobs", "other/"),
    ]:
        assert not can_list(policy, bucket, prefix), (bucket, prefix)
    assert not can_list(policy, "elsewhere", "data/")


def test_object_key_input_covers_the_key_and_its_children_not_its_siblings():
    policy = execution_policy(inputs=["s3://in-bucket/data/a.csv"], job_root="s3://jobs/r/", outputs=[])
    assert can_read(policy, "in-bucket", "data/a.csv")
    assert can_read(policy, "in-bucket", "data/a.csv/part-0")
    assert not can_read(policy, "in-bucket", "data/a.csv2")
    assert not can_read(policy, "in-bucket", "data/b.csv")
    assert can_list(policy, "in-bucket", "data/a.csv")
    assert can_list(policy, "in-bucket", "data/a.csv/")
    assert not can_list(policy, "in-bucket", "data/")


def test_bucket_root_input_lists_without_condition():
    policy = execution_policy(
        inputs=["s3://in-bucket/x/", "s3://in-bucket"], job_root="s3://jobs/r", outputs=[]
    )
    (listing,) = [st for st in policy["Statement"] if st["Resource"] == ["arn:aws:s3:::in-bucket"]]
    assert "Condition" not in listing
    read = next(st for st in policy["Statement"] if st["Sid"] == "ReadObjects")
    assert [arn for arn in read["Resource"] if "in-bucket" in arn] == ["arn:aws:s3:::in-bucket/*"]


def test_input_under_the_job_root_is_covered_once_and_writable_only_as_job_root():
    policy = execution_policy(
        inputs=["s3://jobs/root/in/", "s3://jobs/other/"],
        job_root="s3://jobs/root",
        outputs=["s3://jobs/root/out/"],
    )
    read = next(st for st in policy["Statement"] if st["Sid"] == "ReadObjects")
    write = next(st for st in policy["Statement"] if st["Sid"] == "WriteObjects")
    assert read["Resource"] == [
        "arn:aws:s3:::jobs/other/*",
        "arn:aws:s3:::jobs/root",
        "arn:aws:s3:::jobs/root/*",
    ]
    assert write["Resource"] == ["arn:aws:s3:::jobs/root", "arn:aws:s3:::jobs/root/*"]
    assert can_write(policy, "jobs", "root/in/x")
    assert not can_write(policy, "jobs", "other/x")
    (listing,) = [st for st in policy["Statement"] if st["Sid"] == "ListJobs"]
    assert listing["Condition"]["StringLike"]["s3:prefix"] == ["other/", "other/*", "root", "root/*"]


def test_logs_statements():
    policy = execution_policy(
        **EXAMPLE, region="eu-west-1", account_id="123456789012", function_prefix="wc", partition="aws-cn"
    )
    by_sid = {st["Sid"]: st for st in policy["Statement"]}
    assert by_sid["CreateLogGroup"]["Action"] == ["logs:CreateLogGroup"]
    assert by_sid["CreateLogGroup"]["Resource"] == ["arn:aws-cn:logs:eu-west-1:123456789012:*"]
    assert by_sid["WriteLogs"]["Action"] == ["logs:CreateLogStream", "logs:PutLogEvents"]
    assert by_sid["WriteLogs"]["Resource"] == [
        "arn:aws-cn:logs:eu-west-1:123456789012:log-group:/aws/lambda/wc-*:*"
    ]
    assert all(
        arn.startswith("arn:aws-cn:s3:::")
        for st in policy["Statement"]
        if st["Sid"].startswith("List")
        for arn in st["Resource"]
    )


def test_xray_statement_and_tracing_false_drops_it():
    with_tracing = execution_policy(**EXAMPLE)
    (xray,) = [st for st in with_tracing["Statement"] if any(a.startswith("xray:") for a in st["Action"])]
    assert xray["Action"] == ["xray:PutTelemetryRecords", "xray:PutTraceSegments"]
    assert xray["Resource"] == ["*"]
    without = execution_policy(**EXAMPLE, tracing=False)
    assert not any(a.startswith("xray:") for st in without["Statement"] for a in st["Action"])
    assert without["Statement"] == [st for st in with_tracing["Statement"] if st is not xray]


def test_deterministic():
    first = json.dumps(execution_policy(**EXAMPLE))
    assert json.dumps(execution_policy(**EXAMPLE)) == first
    layout = {
        "inputs": ["s3://b/z/", "s3://a/y", "s3://b/a/"],
        "job_root": "s3://j/r",
        "outputs": ["s3://o/2", "s3://o/1"],
    }
    shuffled = {
        "inputs": ["s3://b/a/", "s3://a/y", "s3://b/z/", "s3://a/y"],
        "job_root": "s3://j/r",
        "outputs": ["s3://o/1", "s3://o/2"],
    }
    assert json.dumps(execution_policy(**layout)) == json.dumps(execution_policy(**shuffled))


def test_sids_are_unique_and_alphanumeric():
    policy = execution_policy(
        inputs=["s3://my-bucket/a/", "s3://my.bucket/b/", "s3://mybucket/c/", "s3://other_data.v2/x/"],
        job_root="s3://jobs/r",
        outputs=[],
    )
    sids = [st["Sid"] for st in policy["Statement"]]
    assert len({s.lower() for s in sids}) == len(sids)
    assert all(re.fullmatch(r"[A-Za-z0-9]+", s) for s in sids)
    assert "ListOtherDataV2" in sids
    again = execution_policy(
        inputs=["s3://my-bucket/a/", "s3://my.bucket/b/"], job_root="s3://jobs/r", outputs=[]
    )
    assert [s for s in sids if s.startswith("ListMyBucket")][:2] == [
        st["Sid"] for st in again["Statement"] if st["Sid"].startswith("ListMyBucket")
    ]


def test_wildcard_characters_in_keys_are_literal():
    policy = execution_policy(inputs=["s3://in-bucket/we*ird?/"], job_root="s3://jobs/r", outputs=[])
    read = next(st for st in policy["Statement"] if st["Sid"] == "ReadObjects")
    assert "arn:aws:s3:::in-bucket/we${*}ird${?}/*" in read["Resource"]
    assert can_read(policy, "in-bucket", "we*ird?/x")
    assert not can_read(policy, "in-bucket", "weXXird!/x")


def test_local_inputs_are_ignored():
    with_local = execution_policy(
        inputs=["file:///data/in", "/data/in", "s3://in-bucket/data/"],
        job_root="s3://jobs/root",
        outputs=["s3://out/res"],
    )
    assert with_local == execution_policy(**EXAMPLE)
    only_local = execution_policy(inputs=["file:///data/in"], job_root="s3://jobs/root", outputs=[])
    assert not any(
        "in-bucket" in arn or "/data/in" in arn for st in only_local["Statement"] for arn in st["Resource"]
    )


@pytest.mark.parametrize("job_root", ["file:///tmp/jobs", "/tmp/jobs", "gs://jobs/root", ""])
def test_job_root_must_be_s3(job_root):
    with pytest.raises(ValueError, match="job_root must be an s3:// URI for the aws runtime, got"):
        execution_policy(inputs=["s3://in-bucket/data/"], job_root=job_root, outputs=[])


@pytest.mark.parametrize(
    "kwargs, uri",
    [
        ({"inputs": ["s3:///data/"], "job_root": "s3://jobs/r", "outputs": []}, "s3:///data/"),
        ({"inputs": [], "job_root": "s3://", "outputs": []}, "s3://"),
        ({"inputs": [], "job_root": "s3://jobs/r", "outputs": ["s3:///res"]}, "s3:///res"),
        ({"inputs": ["s3://b*/x"], "job_root": "s3://jobs/r", "outputs": []}, "s3://b*/x"),
    ],
)
def test_bad_buckets_name_the_uri(kwargs, uri):
    with pytest.raises(ValueError, match=re.escape(repr(uri))):
        execution_policy(**kwargs)


def test_outputs_must_be_s3():
    with pytest.raises(ValueError, match="outputs must be s3://"):
        execution_policy(inputs=[], job_root="s3://jobs/r", outputs=["file:///tmp/out"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"function_prefix": "lambdamr*"},
        {"function_prefix": "lambdamr\n"},
        {"account_id": "12"},
        {"region": "eu-west-1:*"},
        {"partition": "aws:x"},
    ],
)
def test_arn_components_cannot_widen_the_policy(kwargs):
    with pytest.raises(ValueError, match="invalid"):
        execution_policy(**EXAMPLE, **kwargs)


# -- the role on moto's IAM -------------------------------------------------------------------


@pytest.fixture
def iam(moto_server):
    return boto3.client(
        "iam",
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def role_name():
    return f"lmr-test-{uuid.uuid4().hex[:12]}"


def test_create_role_creates_the_role_with_trust_and_inline_policy(iam, role_name):
    policy = execution_policy(**EXAMPLE)
    result = create_role(iam, role_name=role_name, policy=policy, tags={"team": "data", "app": "lambdamr"})
    role = iam.get_role(RoleName=role_name)["Role"]
    assert result == {
        "role_name": role_name,
        "role_arn": role["Arn"],
        "created": True,
        "policy_name": f"{role_name}-policy",
    }
    assert role["AssumeRolePolicyDocument"] == LAMBDA_TRUST_POLICY
    assert {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName=role_name)["Tags"]} == {
        "team": "data",
        "app": "lambdamr",
    }
    assert iam.list_role_policies(RoleName=role_name)["PolicyNames"] == [f"{role_name}-policy"]
    stored = iam.get_role_policy(RoleName=role_name, PolicyName=f"{role_name}-policy")["PolicyDocument"]
    assert stored == policy


def test_create_role_is_idempotent_and_replaces_the_policy(iam, role_name):
    first = create_role(iam, role_name=role_name, policy=execution_policy(**EXAMPLE))
    second = create_role(iam, role_name=role_name, policy=execution_policy(**EXAMPLE))
    assert second == {**first, "created": False}
    changed = execution_policy(
        inputs=["s3://new-in/x/"], job_root="s3://jobs/root", outputs=[], tracing=False
    )
    third = create_role(iam, role_name=role_name, policy=changed)
    assert third == second
    assert iam.list_role_policies(RoleName=role_name)["PolicyNames"] == [f"{role_name}-policy"]
    stored = iam.get_role_policy(RoleName=role_name, PolicyName=f"{role_name}-policy")["PolicyDocument"]
    assert stored == changed


def test_create_role_with_a_permissions_boundary(iam, role_name):
    boundary = iam.create_policy(
        PolicyName=f"{role_name}-boundary",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        ),
    )["Policy"]["Arn"]
    create_role(iam, role_name=role_name, policy=execution_policy(**EXAMPLE), permissions_boundary=boundary)
    assert (
        iam.get_role(RoleName=role_name)["Role"]["PermissionsBoundary"]["PermissionsBoundaryArn"] == boundary
    )
    assert delete_role(iam, role_name=role_name) is True


def test_delete_role_removes_policies_and_the_role(iam, role_name):
    create_role(iam, role_name=role_name, policy=execution_policy(**EXAMPLE))
    iam.put_role_policy(
        RoleName=role_name, PolicyName="extra", PolicyDocument=json.dumps(execution_policy(**EXAMPLE))
    )
    managed = iam.create_policy(
        PolicyName=f"{role_name}-managed",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}],
            }
        ),
    )["Policy"]["Arn"]
    iam.attach_role_policy(RoleName=role_name, PolicyArn=managed)

    assert delete_role(iam, role_name=role_name) is True
    with pytest.raises(ClientError) as err:
        iam.get_role(RoleName=role_name)
    assert err.value.response["Error"]["Code"] == "NoSuchEntity"
    assert iam.get_policy(PolicyArn=managed)["Policy"]["AttachmentCount"] == 0


def test_delete_missing_role_returns_false(iam, role_name):
    assert delete_role(iam, role_name=role_name) is False
    create_role(iam, role_name=role_name, policy=execution_policy(**EXAMPLE))
    assert delete_role(iam, role_name=role_name) is True
    assert delete_role(iam, role_name=role_name) is False


def test_delete_role_reads_every_page():
    iam = boto3.client(
        "iam", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    arn = "arn:aws:iam::123456789012:policy/p"
    with Stubber(iam) as stub:
        stub.add_response(
            "list_role_policies",
            {"PolicyNames": ["a"], "IsTruncated": True, "Marker": "m1"},
            {"RoleName": "r"},
        )
        stub.add_response(
            "list_role_policies",
            {"PolicyNames": ["b"], "IsTruncated": False},
            {"RoleName": "r", "Marker": "m1"},
        )
        stub.add_response(
            "list_attached_role_policies",
            {"AttachedPolicies": [], "IsTruncated": True, "Marker": "m2"},
            {"RoleName": "r"},
        )
        stub.add_response(
            "list_attached_role_policies",
            {"AttachedPolicies": [{"PolicyName": "p", "PolicyArn": arn}], "IsTruncated": False},
            {"RoleName": "r", "Marker": "m2"},
        )
        stub.add_response("delete_role_policy", {}, {"RoleName": "r", "PolicyName": "a"})
        stub.add_response("delete_role_policy", {}, {"RoleName": "r", "PolicyName": "b"})
        stub.add_response("detach_role_policy", {}, {"RoleName": "r", "PolicyArn": arn})
        stub.add_response("delete_role", {}, {"RoleName": "r"})
        assert delete_role(iam, role_name="r") is True
        stub.assert_no_pending_responses()


def test_create_role_surfaces_other_errors():
    iam = boto3.client(
        "iam", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    with Stubber(iam) as stub:
        stub.add_client_error("create_role", service_error_code="AccessDenied", http_status_code=403)
        with pytest.raises(ClientError, match="AccessDenied"):
            create_role(iam, role_name="r", policy=execution_policy(**EXAMPLE))


def test_moto_accepts_every_policy_shape(iam, role_name):
    """moto validates policy grammar (ARN formats, Sids, conditions) on put_role_policy."""
    shapes = [
        *LAYOUTS,
        {
            "inputs": ["s3://in-bucket/we*ird?$/", "s3://in-bucket"],
            "job_root": "s3://jobs/r",
            "outputs": ["s3://o"],
        },
    ]
    for layout in shapes:
        policy = execution_policy(**layout, region="us-east-1", account_id="123456789012")
        create_role(iam, role_name=role_name, policy=policy)
        assert (
            iam.get_role_policy(RoleName=role_name, PolicyName=f"{role_name}-policy")["PolicyDocument"]
            == policy
        )
    assert delete_role(iam, role_name=role_name) is True


def test_coordinator_mode_adds_only_invoking_the_job_functions_and_ending_its_watchdog():
    plain = execution_policy(**EXAMPLE, region="us-east-1", account_id="123456789012")["Statement"]
    coordinated = execution_policy(**EXAMPLE, region="us-east-1", account_id="123456789012",
                                   coordinator=True)["Statement"]
    assert coordinated[: len(plain)] == plain  # S3, logs and X-Ray: the job's own, unchanged
    assert coordinated[len(plain):] == [
        {
            "Sid": "InvokeJobFunctions",
            "Effect": "Allow",
            "Action": ["lambda:InvokeFunction"],
            "Resource": [
                "arn:aws:lambda:us-east-1:123456789012:function:lambdamr-coordinator:*",
                "arn:aws:lambda:us-east-1:123456789012:function:lambdamr-mapper:*",
                "arn:aws:lambda:us-east-1:123456789012:function:lambdamr-reducer:*",
            ],
        },
        {
            "Sid": "EndWatchdog",
            "Effect": "Allow",
            "Action": ["events:DeleteRule", "events:RemoveTargets"],
            "Resource": ["arn:aws:events:us-east-1:123456789012:rule/lambdamr-watchdog-*"],
        },
    ]
