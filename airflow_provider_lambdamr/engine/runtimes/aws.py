"""The AWS runtime: the job's zip deployed as Lambda functions, invoked asynchronously.

Deploy creates or updates one mapper and one reducer function, waits with botocore's Lambda
waiters, publishes a version only when the code or configuration changed, and points an
alias named after the code version at it, so every invocation of a job runs exactly the code
it was planned with. Invocations are ``Event`` invokes (a sliding window bounded by
``concurrency``, with backoff on throttling); their outcome is read from the status records
the handlers write, with paginated listing, so it works for 10,000+ tasks and survives a
restarted driver. Lambda's own async retries are turned off: the driver retries.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import random
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from airflow_provider_lambdamr.engine import coordinator, packaging
from airflow_provider_lambdamr.engine.packaging import (
    ARCHITECTURES,
    RUNTIME_VERSIONS,
    CodePackage,
    LayerPackage,
)
from airflow_provider_lambdamr.engine.runtimes.base import (
    HANDLERS,
    LANGUAGE_HANDLERS,
    InvocationResult,
    Runtime,
    list_status_dirs,
    outcome_from_records,
)
from lambda_src import storage as st
from lambda_src.contract import TaskSpec
from lambda_src.function_env import arrow_allocator_env

log = logging.getLogger(__name__)

#: Lambda accepts zips up to this size in the request itself; larger ones go through S3.
DIRECT_UPLOAD_LIMIT = 50 * 1024 * 1024
#: The Lambda runtime of a JavaScript job when ``runtime_version`` names a Python one.
NODE_RUNTIME = "nodejs20.x"
THROTTLE_CODES = ("TooManyRequestsException", "ThrottlingException", "EC2ThrottledException")
#: The suffix of the task functions' aliases whose ends go to the coordinator.
COORDINATED = "-coordinated"
LAYER_ARN_RE = re.compile(r"^arn:aws[a-z-]*:lambda:[a-z0-9-]+:\d{12}:layer:[A-Za-z0-9_-]+:\d+$")
#: What fixes a deployment without pyarrow, for the warning before launch.
PYARROW_FLAGS = "--pyarrow-layer (with --code-uri s3://...; operators: pyarrow_layer=True) or --layer ARN"


class DeployError(Exception):
    """A function could not be created, updated or published."""


@dataclass
class _InFlight:
    request_id: str
    spec: TaskSpec
    started: float


class AwsRuntime(Runtime):
    """Runs invocations on AWS Lambda.

    :param lambda_client: A boto3 Lambda client (e.g. ``LambdaHook(...).conn``).
    :param role_arn: The functions' execution role.
    :param function_prefix: Function names are ``<prefix>-mapper`` and ``<prefix>-reducer``.
    :param memory_mb: Function memory, MB.
    :param timeout_s: Function timeout, seconds.
    :param architecture: ``x86_64`` or ``arm64``.
    :param runtime_version: Lambda Python runtime, e.g. ``python3.12``.
    :param tracing: X-Ray active tracing.
    :param concurrency: Invocations in flight at once.
    :param environment: Extra environment variables for the functions.
    :param code_uri: ``s3://`` prefix for zips above the direct-upload limit.
    :param layer: The ARN of a layer version holding pyarrow (e.g. AWS SDK for pandas) to attach.
    :param pyarrow_layer: Build the pinned pyarrow into a layer for this architecture and
        runtime, publish it once per content hash (through ``code_uri``) and attach it.
    :param status_grace_s: How long past the timeout a task may stay silent before it
        counts as lost (async delivery can lag under throttling).
    """

    name = "aws"

    def __init__(
        self,
        lambda_client: Any,
        *,
        role_arn: str,
        function_prefix: str = "lambdamr",
        memory_mb: int = 1536,
        timeout_s: float = 900.0,
        architecture: str = "x86_64",
        runtime_version: str = "python3.12",
        tracing: bool = False,
        concurrency: int = 100,
        environment: dict[str, str] | None = None,
        code_uri: str | None = None,
        layer: str | None = None,
        pyarrow_layer: bool = False,
        status_grace_s: float = 120.0,
        poll_interval_s: float = 2.0,
        direct_upload_limit: int = DIRECT_UPLOAD_LIMIT,
        max_throttle_retries: int = 12,
        role_propagation_retries: int = 12,
    ) -> None:
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        if runtime_version not in RUNTIME_VERSIONS:
            raise ValueError(f"runtime_version must be one of {RUNTIME_VERSIONS}, got {runtime_version!r}")
        if not role_arn or not role_arn.startswith("arn:"):
            raise ValueError(f"role_arn must be an IAM role ARN, got {role_arn!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if layer is not None and not LAYER_ARN_RE.match(layer):
            raise ValueError(f"layer must be a layer version ARN (arn:aws:lambda:REGION:ACCOUNT:layer:NAME:VERSION), "
                             f"got {layer!r}")
        if layer and pyarrow_layer:
            raise ValueError("give either --layer ARN or --pyarrow-layer, not both: each puts pyarrow on the path")
        self.client = lambda_client
        self.role_arn = role_arn
        self.function_prefix = function_prefix
        self.memory_mb = memory_mb
        self.timeout_s = timeout_s
        self.architecture = architecture
        self.runtime_version = runtime_version
        self.tracing = tracing
        self.concurrency = concurrency
        self.environment = dict(environment or {})
        self.code_uri = code_uri
        self.layer = layer
        self.pyarrow_layer = pyarrow_layer
        self.status_grace_s = status_grace_s
        self.poll_interval_s = poll_interval_s
        self.direct_upload_limit = direct_upload_limit
        self.max_throttle_retries = max_throttle_retries
        self.role_propagation_retries = role_propagation_retries
        self.package: CodePackage | None = None
        self.deployment: dict | None = None
        self._in_flight: dict[str, _InFlight] = {}
        self.throttled = 0

    @property
    def capacity(self) -> int:
        return self.concurrency

    def function_name(self, kind: str) -> str:
        return f"{self.function_prefix}-{kind}"

    def alias_name(self, package: CodePackage) -> str:
        return f"v{package.version}"

    def layer_name(self) -> str:
        return f"{self.function_prefix}-pyarrow"

    def missing_pyarrow(self) -> str | None:
        return None if self.layer or self.pyarrow_layer else f"pass {PYARROW_FLAGS}"

    # -- deploy ------------------------------------------------------------------------
    def lambda_runtime(self, package: CodePackage) -> str:
        """The Lambda runtime for the package's handler language."""
        if package.language == "nodejs":
            return self.runtime_version if self.runtime_version.startswith("nodejs") else NODE_RUNTIME
        if not self.runtime_version.startswith("python"):
            raise DeployError(f"runtime_version {self.runtime_version} cannot run a Python job: use a python3.x runtime")
        return self.runtime_version

    def _configuration(self, kind: str, package: CodePackage, layers: list[str]) -> dict:
        coordinating = kind == coordinator.KIND
        return {
            "Role": self.role_arn,
            "Handler": coordinator.HANDLER if coordinating else LANGUAGE_HANDLERS[package.language][kind],
            "Runtime": self.lambda_runtime(package),
            "MemorySize": coordinator.MEMORY_MB if coordinating else int(self.memory_mb),
            "Timeout": math.ceil(coordinator.TIMEOUT_S if coordinating else self.timeout_s),
            "TracingConfig": {"Mode": "Active" if self.tracing else "PassThrough"},
            "Environment": {"Variables": {**arrow_allocator_env(self.architecture), **self.environment,
                                          "LAMBDAMR_TRACING": "1" if self.tracing else "0"}},
            "Layers": layers,
        }

    def _code(self, path: str, what: str, name: str) -> dict:
        """Lambda's ``Code`` / ``Content`` for a zip: its bytes, or where it went on S3."""
        with open(path, "rb") as fh:
            data = fh.read()
        if len(data) <= self.direct_upload_limit:
            return {"ZipFile": data}
        if not self.code_uri or not st.is_s3(self.code_uri):
            raise DeployError(
                f"the {what} is {len(data)} bytes, above the {self.direct_upload_limit}-byte "
                f"direct upload limit; pass an s3:// code_uri to upload it through S3"
            )
        uri = st.join(self.code_uri, name)
        st.for_uri(uri).write_bytes(uri, data)
        bucket, key = st.split_s3(uri)
        return {"S3Bucket": bucket, "S3Key": key}

    def _package_code(self, package: CodePackage) -> dict:
        return self._code(package.path, "function zip", f"lambdamr-{package.version}.zip")

    def _published_layer(self, layer: LayerPackage) -> str:
        """The ARN of the layer version holding ``layer``: found by its content hash, or published."""
        from botocore.exceptions import ClientError

        name = self.layer_name()
        try:
            for page in self.client.get_paginator("list_layer_versions").paginate(LayerName=name):
                for version in page["LayerVersions"]:
                    if version.get("Description") == layer.description:
                        return version["LayerVersionArn"]
        except ClientError as err:
            if err.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
        content = self._code(layer.path, "pyarrow layer zip", f"lambdamr-layer-{layer.version}.zip")
        try:
            published = self.client.publish_layer_version(
                LayerName=name, Description=layer.description, Content=content,
                CompatibleRuntimes=[self.runtime_version], CompatibleArchitectures=[self.architecture],
                LicenseInfo="Apache-2.0",
            )
        except ClientError as err:
            raise DeployError(f"cannot publish the pyarrow layer {name}: {err}") from err
        log.info("published layer %s (pyarrow %s, %d bytes)", published["LayerVersionArn"],
                 layer.pyarrow_version, layer.size)
        return published["LayerVersionArn"]

    def _layers(self, package: CodePackage) -> tuple[list[str], dict | None]:
        """The layer ARNs the functions list, and what to report about them."""
        if self.layer:
            return [self.layer], {"arn": self.layer, "source": "named"}
        if not self.pyarrow_layer:
            return [], None
        try:
            layer = packaging.build_layer(packaging.LayerTarget.for_runtime(self.architecture, self.runtime_version))
        except packaging.PackagingError as err:
            raise DeployError(str(err)) from err
        room = packaging.UNZIPPED_LIMIT - layer.unzipped_size - packaging.unzipped_size(package.path)
        if room < 0:
            raise DeployError(
                f"the function ({packaging.unzipped_size(package.path)} bytes) and the pyarrow layer "
                f"({layer.unzipped_size} bytes) are {-room} bytes above Lambda's {packaging.UNZIPPED_LIMIT}-byte "
                f"limit, unzipped")
        arn = self._published_layer(layer)
        return [arn], {"arn": arn, "source": "built", "pyarrow": layer.pyarrow_version, "sha256": layer.sha256,
                       "unzipped_bytes": layer.unzipped_size, "room_left_bytes": room}

    @staticmethod
    def lambda_sha256(package: CodePackage) -> str:
        """Lambda's ``CodeSha256``: the base64 SHA-256 of the zip."""
        with open(package.path, "rb") as fh:
            return base64.b64encode(hashlib.sha256(fh.read()).digest()).decode()

    def _config_differs(self, current: dict, wanted: dict) -> bool:
        env = (current.get("Environment") or {}).get("Variables") or {}
        return any((
            current.get("Role") != wanted["Role"],
            current.get("Handler") != wanted["Handler"],
            current.get("Runtime") != wanted["Runtime"],
            int(current.get("MemorySize", 0)) != wanted["MemorySize"],
            int(current.get("Timeout", 0)) != wanted["Timeout"],
            (current.get("TracingConfig") or {}).get("Mode", "PassThrough") != wanted["TracingConfig"]["Mode"],
            env != wanted["Environment"]["Variables"],
            [layer["Arn"] for layer in current.get("Layers") or []] != wanted["Layers"],
        ))

    def _wait(self, waiter: str, name: str, qualifier: str | None = None) -> None:
        params: dict[str, Any] = {"FunctionName": name, "WaiterConfig": {"Delay": 2, "MaxAttempts": 150}}
        if qualifier:
            params["Qualifier"] = qualifier
        try:
            self.client.get_waiter(waiter).wait(**params)
        except Exception as err:
            raise DeployError(f"function {name} did not become ready ({waiter}): {err}") from err

    def _deploy_function(self, kind: str, package: CodePackage, sha: str, layers: list[str]) -> dict:
        from botocore.exceptions import ClientError

        name = self.function_name(kind)
        wanted = self._configuration(kind, package, layers)
        alias = self.alias_name(package)
        try:
            existing = self.client.get_function(FunctionName=name)["Configuration"]
        except ClientError as err:
            if err.response["Error"]["Code"] != "ResourceNotFoundException":
                raise DeployError(f"cannot read function {name}: {err}") from err
            existing = None
        if existing is None:
            log.info("creating function %s", name)
            code = self._package_code(package)
            for attempt in range(self.role_propagation_retries + 1):
                try:
                    self.client.create_function(
                        FunctionName=name, Code=code, Architectures=[self.architecture],
                        PackageType="Zip", Publish=False, Description=f"lambdamr {kind}", **wanted,
                    )
                    break
                except ClientError as err:
                    # A role created moments ago is not yet assumable by Lambda (IAM is
                    # eventually consistent): wait for it rather than fail the deploy.
                    message = err.response.get("Error", {}).get("Message", "")
                    if "cannot be assumed" in message and attempt < self.role_propagation_retries:
                        time.sleep(5)
                        continue
                    raise DeployError(f"cannot create function {name}: {err}") from err
            self._wait("function_active_v2", name)
        else:
            if existing.get("CodeSha256") != sha or (existing.get("Architectures") or ["x86_64"]) != [self.architecture]:
                log.info("updating the code of %s", name)
                self.client.update_function_code(
                    FunctionName=name, Architectures=[self.architecture], **self._package_code(package)
                )
                self._wait("function_updated_v2", name)
            if self._config_differs(existing, wanted):
                log.info("updating the configuration of %s", name)
                self.client.update_function_configuration(FunctionName=name, **wanted)
                self._wait("function_updated_v2", name)
        # Async retries off: the driver (or the coordinator) retries, with the error in hand. A
        # coordinator invocation that failed is worth Lambda's retries: it only reads and launches.
        self.client.put_function_event_invoke_config(
            FunctionName=name, MaximumRetryAttempts=2 if kind == coordinator.KIND else 0,
            MaximumEventAgeInSeconds=21600,
        )
        version = self._published_version(name, alias, sha, wanted)
        return {"name": name, "alias": alias, "version": version, "code_sha256": sha}

    def _published_version(self, name: str, alias: str, sha: str, wanted: dict) -> str:
        """The alias's version when it already runs this code and configuration; else publish."""

        current = self._get_alias(name, alias)
        if current is not None:
            cfg = self.client.get_function_configuration(FunctionName=name, Qualifier=current["FunctionVersion"])
            if cfg.get("CodeSha256") == sha and not self._config_differs(cfg, wanted):
                return current["FunctionVersion"]
        published = self.client.publish_version(FunctionName=name, CodeSha256=sha, Description=alias)
        version = published["Version"]
        self._wait("published_version_active", name, qualifier=version)
        self._point_alias(name, alias, version, current)
        log.info("published %s version %s as alias %s", name, version, alias)
        return version

    def _point_alias(self, name: str, alias: str, version: str, current: dict | None) -> dict:
        """Create the alias, or point it at ``version`` (``current``: its ``get_alias``)."""
        if current is None:
            return self.client.create_alias(FunctionName=name, Name=alias, FunctionVersion=version)
        if current["FunctionVersion"] != version:
            return self.client.update_alias(FunctionName=name, Name=alias, FunctionVersion=version)
        return current

    def _get_alias(self, name: str, alias: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_alias(FunctionName=name, Name=alias)
        except ClientError as err:
            if err.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
            return None

    def deploy(self, package: CodePackage) -> dict:
        sha = self.lambda_sha256(package)
        layers, layer_report = self._layers(package)
        functions = {kind: self._deploy_function(kind, package, sha, layers) for kind in HANDLERS}
        self.package = package
        self.deployment = {
            "runtime": self.name,
            "version": package.version,
            "sha256": package.sha256,
            "functions": functions,
            "memory_mb": self.memory_mb,
            "timeout_s": self.timeout_s,
            "architecture": self.architecture,
            "runtime_version": self.lambda_runtime(package),
            "tracing": self.tracing,
            "pyarrow_layer": layer_report,
        }
        return self.deployment

    # -- coordinator mode --------------------------------------------------------------
    def deploy_coordinator(self, package: CodePackage, watchdog_event: dict, every_s: float) -> dict:
        """``<prefix>-coordinator`` (``package``: the coordinator's zip, published and aliased
        like the tasks' functions); the mapper and reducer get an alias of their own,
        ``v<version>-coordinated``, whose asynchronous-invocation destinations (on success
        and on failure) are the coordinator, and the job's invocations go through it (other
        jobs' through the plain alias, with no destination); an EventBridge rule
        ``<prefix>-watchdog-<job hash>`` invokes the coordinator every ``every_s`` (rounded up
        to whole minutes) until its job finished (``end_coordination``)."""
        if self.deployment is None:
            raise RuntimeError("deploy() the job's code package before its coordinator")
        deployed = self._deploy_function(coordinator.KIND, package, self.lambda_sha256(package), [])
        target = self.client.get_alias(FunctionName=deployed["name"], Name=deployed["alias"])["AliasArn"]
        for kind in HANDLERS:
            fn = self.deployment["functions"][kind]
            alias = f"{fn['alias']}{COORDINATED}" if not fn["alias"].endswith(COORDINATED) else fn["alias"]
            self._point_alias(fn["name"], alias, fn["version"], self._get_alias(fn["name"], alias))
            self.client.put_function_event_invoke_config(
                FunctionName=fn["name"], Qualifier=alias, MaximumRetryAttempts=0, MaximumEventAgeInSeconds=21600,
                DestinationConfig={"OnSuccess": {"Destination": target}, "OnFailure": {"Destination": target}},
            )
            fn["alias"] = alias
        deployed.update(arn=target, watchdog_rule=self._start_watchdog(deployed, target, watchdog_event, every_s))
        self.deployment["coordinator"] = deployed
        return deployed

    def _events(self) -> Any:
        import boto3

        return boto3.client("events", region_name=self.client.meta.region_name)

    def _start_watchdog(self, deployed: dict, target: str, event: dict, every_s: float) -> str:
        from botocore.exceptions import ClientError

        job_dir = event[coordinator.WATCHDOG]["job_dir"]
        rule = f"{self.function_prefix}-watchdog-{hashlib.sha256(job_dir.encode()).hexdigest()[:16]}"
        minutes = max(1, math.ceil(every_s / 60))
        events = self._events()
        events.put_rule(Name=rule, ScheduleExpression=f"rate({minutes} minute{'s' if minutes > 1 else ''})",
                        State="ENABLED", Description=f"lambdamr watchdog of {job_dir}"[:512])
        events.put_targets(Rule=rule, Targets=[{"Id": "coordinator", "Arn": target, "Input": json.dumps(event)}])
        account = self.role_arn.split(":")[4]
        try:  # one grant for every watchdog rule of the account (not one per job: the policy's size is bounded)
            self.client.add_permission(
                FunctionName=deployed["name"], Qualifier=deployed["alias"], StatementId="lambdamr-watchdog",
                Action="lambda:InvokeFunction", Principal="events.amazonaws.com", SourceAccount=account)
        except ClientError as err:
            if err.response["Error"]["Code"] != "ResourceConflictException":
                raise
        return rule

    def end_coordination(self, deployed: dict) -> None:
        """The job finished: delete its watchdog rule (already gone is fine)."""
        from botocore.exceptions import ClientError

        events, rule = self._events(), deployed["watchdog_rule"]
        for call, kwargs in ((events.remove_targets, {"Rule": rule, "Ids": ["coordinator"]}),
                             (events.delete_rule, {"Name": rule})):
            try:
                call(**kwargs)
            except ClientError as err:
                if err.response["Error"]["Code"] != "ResourceNotFoundException":
                    raise

    def attach(self, deployment: dict) -> None:
        """Invoke the functions (aliases) another process deployed; deploy nothing."""
        self.deployment = deployment

    # -- invoke ------------------------------------------------------------------------
    def invoke(self, spec: TaskSpec, trace_header: str | None = None) -> str:
        # The trace header travels in the HTTP request: X-Ray's botocore patch adds it for
        # calls made inside the driver's phase subsegment.
        from botocore.exceptions import ClientError

        if self.deployment is None:
            raise RuntimeError("deploy() a code package before invoking")
        fn = self.deployment["functions"][spec.function]
        payload = json.dumps(spec.to_event()).encode()
        delay = 0.2
        for attempt in range(self.max_throttle_retries + 1):
            try:
                resp = self.client.invoke(
                    FunctionName=fn["name"], Qualifier=fn["alias"], InvocationType="Event", Payload=payload
                )
                break
            except ClientError as err:
                code = err.response.get("Error", {}).get("Code", "")
                if code not in THROTTLE_CODES or attempt == self.max_throttle_retries:
                    raise
                self.throttled += 1
                sleep = min(20.0, delay * (2**attempt)) * (0.5 + random.random())
                log.info("invoke throttled (%s); retrying in %.1fs", code, sleep)
                time.sleep(sleep)
        status = int(resp.get("StatusCode", 0))
        if status != 202:
            raise RuntimeError(f"asynchronous invoke of {fn['name']} returned status {status}, not 202")
        request_id = resp.get("ResponseMetadata", {}).get("RequestId") or str(uuid.uuid4())
        self._in_flight[request_id] = _InFlight(request_id, spec, time.monotonic())
        return request_id

    def poll(self, timeout: float) -> list[InvocationResult]:
        end = time.monotonic() + max(0.0, timeout)
        while True:
            results = self._check()
            if results or time.monotonic() >= end or not self._in_flight:
                return results
            time.sleep(min(self.poll_interval_s, max(0.0, end - time.monotonic())))

    def _check(self) -> list[InvocationResult]:
        """Read the status records of everything in flight (one paginated listing per phase)."""
        if not self._in_flight:
            return []
        listing = list_status_dirs(inflight.spec for inflight in self._in_flight.values())
        results = []
        now = time.monotonic()
        for rid, inflight in list(self._in_flight.items()):
            outcome = outcome_from_records(rid, inflight.spec, listing)
            if outcome is not None:
                results.append(outcome)
                del self._in_flight[rid]
                continue
            if now - inflight.started > self.timeout_s + self.status_grace_s:
                results.append(InvocationResult(
                    request_id=rid, ok=False,
                    error={"errorType": "Sandbox.Timedout",
                           "errorMessage": f"RequestId: {rid} no status record within "
                                           f"{self.timeout_s + self.status_grace_s:.0f} seconds: the "
                                           f"function timed out, ran out of memory, or the event was lost"},
                ))
                del self._in_flight[rid]
        return results

    def cancel(self, request_id: str) -> None:
        self._in_flight.pop(request_id, None)

    def close(self) -> None:
        """Invocations already queued in Lambda run to completion; stop watching them."""
        self._in_flight.clear()


#: Every function a job may deploy: the tasks' and, in coordinator mode, the coordinator.
FUNCTION_KINDS = (*HANDLERS, coordinator.KIND)


def prune_functions(lambda_client: Any, function_prefix: str, keep_alias: str | None = None) -> dict:
    """Delete old aliases and versions of ``<prefix>-mapper`` / ``-reducer`` / ``-coordinator``,
    and the versions of the ``<prefix>-pyarrow`` layer that lambdamr published and no
    remaining function version lists.

    The alias ``keep_alias`` (default: the most recently published one; for the coordinator,
    whose versions its own zip names, always that) and the version it points to stay, with
    every alias of that version (its ``-coordinated`` alias), as does ``$LATEST``. Returns
    what was deleted, by function and layer.
    """
    from botocore.exceptions import ClientError

    deleted: dict[str, dict[str, list[str]]] = {}
    layers_in_use: set[str] = set()
    for kind in FUNCTION_KINDS:
        name = f"{function_prefix}-{kind}"
        try:
            aliases = [a for p in lambda_client.get_paginator("list_aliases").paginate(FunctionName=name)
                       for a in p["Aliases"]]
            versions = [v["Version"] for p in lambda_client.get_paginator("list_versions_by_function")
                        .paginate(FunctionName=name) for v in p["Versions"] if v["Version"] != "$LATEST"]
        except ClientError as err:
            if err.response["Error"]["Code"] == "ResourceNotFoundException":
                continue
            raise
        live = keep_alias if kind != coordinator.KIND else None
        if live is None and aliases:
            live = max(aliases, key=lambda a: int(a["FunctionVersion"]) if a["FunctionVersion"].isdigit() else -1)["Name"]
        kept_versions = {a["FunctionVersion"] for a in aliases if a["Name"] == live}
        gone_aliases = [a["Name"] for a in aliases if a["FunctionVersion"] not in kept_versions]
        for alias in gone_aliases:
            lambda_client.delete_alias(FunctionName=name, Name=alias)
        gone_versions = [v for v in versions if v not in kept_versions]
        for version in gone_versions:
            lambda_client.delete_function(FunctionName=name, Qualifier=version)
        deleted[name] = {"aliases": gone_aliases, "versions": gone_versions, "kept": sorted(kept_versions)}
        for version in ("$LATEST", *kept_versions):
            config = lambda_client.get_function_configuration(FunctionName=name, Qualifier=version)
            layers_in_use.update(layer["Arn"] for layer in config.get("Layers") or [])
    layer = _prune_layer(lambda_client, f"{function_prefix}-pyarrow", layers_in_use)
    if layer is not None:
        deleted[f"{function_prefix}-pyarrow"] = layer
    return deleted


def _prune_layer(lambda_client: Any, name: str, in_use: set[str]) -> dict | None:
    """Delete the versions of layer ``name`` that lambdamr published and nothing lists."""
    from botocore.exceptions import ClientError

    try:
        pages = lambda_client.get_paginator("list_layer_versions").paginate(LayerName=name)
        versions = [v for p in pages for v in p["LayerVersions"]]
    except ClientError as err:
        if err.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
        versions = []
    if not versions:
        return None
    ours = [v for v in versions if (v.get("Description") or "").startswith(packaging.LAYER_MARK)]
    gone = [v for v in ours if v["LayerVersionArn"] not in in_use]
    for version in gone:
        lambda_client.delete_layer_version(LayerName=name, VersionNumber=version["Version"])
    return {"versions": [v["Version"] for v in gone],
            "kept": sorted(v["Version"] for v in versions if v not in gone)}


def delete_log_groups(logs_client: Any, function_prefix: str) -> list[str]:
    """Delete the functions' CloudWatch log groups (only when asked: logs are evidence)."""
    from botocore.exceptions import ClientError

    gone = []
    for kind in FUNCTION_KINDS:
        group = f"/aws/lambda/{function_prefix}-{kind}"
        try:
            logs_client.delete_log_group(logGroupName=group)
            gone.append(group)
        except ClientError as err:
            if err.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
    return gone
