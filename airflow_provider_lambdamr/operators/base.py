"""What every LambdaMR operator and sensor shares: the AWS connection's parameters and the hook.

Mirrors the amazon provider's ``AwsBaseOperator`` / ``AwsBaseSensor`` and
``aws_template_fields``, which that provider marks internal (they may change without notice):
the same keywords, defaults and templated fields, declared once here.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow_provider_lambdamr.hooks.lambda_mr import LambdaMapReduceHook

#: The connection parameters that are templated on every LambdaMR task (as amazon's are).
AWS_TEMPLATE_FIELDS = ("aws_conn_id", "region_name", "verify")


def lambdamr_template_fields(*template_fields: str) -> tuple[str, ...]:
    """``template_fields`` with the connection's, sorted (as amazon's ``aws_template_fields``)."""
    return tuple(sorted(set(AWS_TEMPLATE_FIELDS) | set(template_fields)))


#: The docs of the connection keywords, appended to each task class's (``documents_connection``).
CONNECTION_DOC = """
    :param aws_conn_id: The Airflow AWS connection (``s3://`` storage, Lambda); ``None`` uses
        boto3's default chain. (templated)
    :param region_name: AWS region; overrides the connection's. (templated)
    :param verify: Whether to verify TLS certificates, or a CA bundle path. (templated)
    :param botocore_config: botocore client configuration, as a dict.
    """


def documents_connection(cls: type) -> type:
    """Class decorator: append the connection keywords' docs to ``cls``'s docstring."""
    cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n" + CONNECTION_DOC.lstrip("\n")
    return cls


@documents_connection
class LambdaMapReduceHookMixin:
    """
    The AWS connection of a LambdaMR operator or sensor, and the hook built from it.

    Put it before ``BaseOperator`` / ``BaseSensorOperator`` in the bases.
    """

    template_fields = lambdamr_template_fields()

    def __init__(
        self,
        *,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.verify = verify
        self.botocore_config = botocore_config

    @cached_property
    def hook(self) -> LambdaMapReduceHook:
        return LambdaMapReduceHook(**self.hook_parameters)

    @property
    def hook_parameters(self) -> dict[str, Any]:
        """The connection parameters, as the hook and the trigger take them."""
        return {"aws_conn_id": self.aws_conn_id, "region_name": self.region_name, "verify": self.verify,
                "botocore_config": self.botocore_config}
