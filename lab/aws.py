"""The local AWS: moto in server mode inside this process, set up over its real HTTP API.

`AwsLab` starts `ThreadedMotoServer` on a free loopback port. Everything a user would do
against AWS (IAM users and roles, Secrets Manager secrets, an RDS Proxy in a VPC) is done
with boto3 over HTTP, signed with the keys of an admin IAM user the lab creates first.
The RDS Proxy stand-in (`rdsgate.lab.rdsproxy`) must run in this same process because it
reads access-key secrets out of moto's in-memory state, as RDS Proxy asks IAM.

What moto does, checked against moto 5.2 (keep this in mind when writing tests):

* Request authorization is off by default: any access key works and no policy is checked.
  `enforce_iam()` (or `AwsLab(enforce_iam=True)`) turns on moto's access control through
  `POST /moto-api/reset-auth`: then every request must be signed by a known key (an IAM
  user's, or an assumed role's with its session token), and the caller's identity
  policies must allow the action (`Resource` is compared only against `*` for most
  services, so identity policies need `"Resource": "*"` there).
* `sts:AssumeRole` under enforcement also evaluates the role's trust policy: the
  `Principal.AWS` entry must name the caller's ARN exactly (an account-root principal
  such as `arn:aws:iam::123456789012:root` does not match that account's users, unlike
  AWS), and `StringEquals` on `sts:ExternalId` must match. A wrong ExternalId gives
  `AccessDenied`; a request that omits the ExternalId is, unlike AWS, *not* refused.
  The caller also needs `sts:AssumeRole` in its own policies. AccessDenied reads
  "User: ARN is not authorized to perform: sts:AssumeRole" (AWS adds "on resource: …").
* Under enforcement, unsigned calls (`AssumeRoleWithWebIdentity`, as IRSA makes them)
  fail with HTTP 500, so keep enforcement off, or scoped with `iam_enforced()`, around
  IRSA flows. Enforcement is a process-wide moto setting: it applies to every `AwsLab`
  in the process, and so do moto's backends (names must be unique across labs).
* moto 5.2 has no RDS Proxy endpoints; `rdsgate.lab.rds_endpoints` (installed by `start()`)
  adds `CreateDBProxyEndpoint`, `DescribeDBProxyEndpoints` and `DeleteDBProxyEndpoint` with
  the real API's shapes, errors and MaxRecords/Marker paging (the default endpoint is not
  listed, as on AWS: it is the proxy's own `Endpoint`), real paging of `DescribeDBProxies`,
  `DBProxyNotFoundFault` for deleting or describing the targets of an unknown proxy, and
  `throttle()`: RDS's `Throttling` answer to chosen actions, seen by any HTTP client.
  Still missing: `ModifyDBProxy`, `ModifyDBProxyEndpoint` and tags on endpoints (HTTP 500
  or InvalidParameterValue). Proxy tags (`Tags=` at creation, AddTagsToResource,
  RemoveTagsFromResource, ListTagsForResource on the proxy ARN) are moto's own and work.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Self

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.utils import percent_encode_sequence

from . import rds_endpoints
from .lifecycle import Service

POLICY_VERSION = "2012-10-17"
DEFAULT_REGION = "eu-west-1"
IamAuth = Literal["REQUIRED", "DISABLED", "ENABLED"]

#: Any key works before the admin exists: moto checks nothing until `enforce_iam()`.
_BOOTSTRAP_KEY = "lab-bootstrap"
_CLIENT_CONFIG = Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=30)


@dataclass(frozen=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def env(self) -> dict[str, str]:
        """The variables botocore's environment provider reads."""
        out = {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }
        if self.session_token:
            out["AWS_SESSION_TOKEN"] = self.session_token
        return out

    def botocore(self) -> Credentials:
        return Credentials(self.access_key_id, self.secret_access_key, self.session_token)


@dataclass(frozen=True)
class IamUser:
    name: str
    arn: str
    credentials: AwsCredentials


@dataclass(frozen=True)
class IamRole:
    name: str
    arn: str


@dataclass(frozen=True)
class DbProxy:
    """An RDS Proxy as moto holds it; `resource_id` (`prx-…`) is what IAM policies name."""

    name: str
    arn: str
    resource_id: str
    endpoint: str
    secret_arns: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class DbIdentity:
    """An AWS identity allowed `rds-db:connect` as some database users on one RDS Proxy.

    `credentials` sign tokens (for a role: the assumed-role session) and `env` is what a
    user exports to use them against the lab. For a role, `caller` is the IAM user its
    trust policy names (with `external_id`, if any), for flows that assume it themselves.
    """

    arn: str
    credentials: AwsCredentials
    env: dict[str, str]
    region: str
    role: IamRole | None = None
    caller: IamUser | None = None
    external_id: str | None = None
    db_users: tuple[str, ...] = field(default=())

    def token(self, db_user: str, *, port: int, host: str = "localhost") -> str:
        """An RDS IAM auth token from boto3's `generate_db_auth_token`, as a user makes it."""
        with _TOKEN_SESSION_LOCK:
            client = _token_session().client(
                "rds",
                region_name=self.region,
                aws_access_key_id=self.credentials.access_key_id,
                aws_secret_access_key=self.credentials.secret_access_key,
                aws_session_token=self.credentials.session_token,
            )
        try:
            return client.generate_db_auth_token(
                DBHostname=host, Port=port, DBUsername=db_user, Region=self.region
            )
        finally:
            client.close()


_TOKEN_SESSION_LOCK = threading.Lock()


@functools.cache
def _token_session() -> boto3.Session:
    """One boto3 session, so the RDS service model is loaded once (clients get the keys)."""
    return boto3.Session()


def policy_document(*statements: Mapping[str, Any]) -> dict[str, Any]:
    return {"Version": POLICY_VERSION, "Statement": [dict(s) for s in statements]}


def connect_policy_document(
    region: str, account_id: str, resource_id: str, users: Iterable[str]
) -> dict[str, Any]:
    """The least-privilege policy for IAM database login to one RDS Proxy as these users."""
    resources = [f"arn:aws:rds-db:{region}:{account_id}:dbuser:{resource_id}/{u}" for u in users]
    return policy_document({"Effect": "Allow", "Action": "rds-db:connect", "Resource": resources})


def trust_policy_document(
    principal_arns: Sequence[str], *, external_id: str | None = None
) -> dict[str, Any]:
    """A role trust policy letting these principals call sts:AssumeRole (with an external id)."""
    principal: str | list[str] = (
        principal_arns[0] if len(principal_arns) == 1 else list(principal_arns)
    )
    statement: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": {"AWS": principal},
        "Action": "sts:AssumeRole",
    }
    if external_id is not None:
        statement["Condition"] = {"StringEquals": {"sts:ExternalId": external_id}}
    return policy_document(statement)


def sign_db_auth_token(
    credentials: AwsCredentials,
    host: str,
    port: int,
    user: str,
    region: str,
    *,
    signed_at: datetime,
    expires: int = 900,
) -> str:
    """An RDS IAM auth token signed at a given time, with botocore's SigV4 signer.

    `generate_db_auth_token` always signs "now" with a 900 s lifetime; tests of expiry need
    the same kind of token signed in the past (or with another lifetime). The query is the
    one botocore's presigner builds; canonicalization and signing are botocore's own.
    """
    timestamp = signed_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    auth_params = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": (
            f"{credentials.access_key_id}/{timestamp[:8]}/{region}/rds-db/aws4_request"
        ),
        "X-Amz-Date": timestamp,
        "X-Amz-Expires": str(expires),
        "X-Amz-SignedHeaders": "host",
    }
    if credentials.session_token is not None:
        auth_params["X-Amz-Security-Token"] = credentials.session_token
    operation = percent_encode_sequence({"Action": "connect", "DBUser": user})
    url = f"https://{host}:{port}/?{operation}&{percent_encode_sequence(auth_params)}"
    request = AWSRequest(method="GET", url=url)
    request.context["timestamp"] = timestamp
    auth = SigV4Auth(credentials.botocore(), "rds-db", region)
    signature = auth.signature(
        auth.string_to_sign(request, auth.canonical_request(request)), request
    )
    return f"{url.removeprefix('https://')}&X-Amz-Signature={signature}"


def _quiet_werkzeug() -> None:
    """moto's dev server logs every request at INFO; tests and the demo only want problems."""
    log = logging.getLogger("werkzeug")
    if log.level == logging.NOTSET:
        log.setLevel(logging.WARNING)


class AwsLab(Service):
    """moto on 127.0.0.1 with an admin IAM user, and helpers to set up what RDS Proxy needs."""

    def __init__(
        self, *, region: str = DEFAULT_REGION, enforce_iam: bool = False, warm_up: bool = True
    ) -> None:
        self.region = region
        self._enforce_at_start = enforce_iam
        self._server: Any = None
        self._clients: dict[tuple[str, AwsCredentials], Any] = {}
        self._endpoint_url: str | None = None
        self._admin: IamUser | None = None
        self._account_id: str | None = None
        self._subnets: list[str] | None = None
        self._vpc_lock = threading.Lock()
        self._clients_lock = threading.Lock()
        self._boto = boto3.Session(region_name=region)
        self._warm_up = warm_up
        self._warm_up_thread: threading.Thread | None = None
        self._proxies: list[DbProxy] = []
        self._enforced = False

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            return self
        from moto.server import ThreadedMotoServer

        rds_endpoints.install()
        _quiet_werkzeug()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        self._server = server
        host, port = server.get_host_and_port()
        self._endpoint_url = f"http://{host}:{port}"
        try:
            self._admin = self._make_admin()
            ident = self.client("sts").get_caller_identity()
            self._account_id = str(ident["Account"])
            if self._enforce_at_start:
                self.enforce_iam(True)
            if self._warm_up:
                self._warm_up_thread = threading.Thread(
                    target=self._prepare_vpc, name="aws-lab-warm-up", daemon=True
                )
                self._warm_up_thread.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        if self._warm_up_thread is not None:
            self._warm_up_thread.join(timeout=60)
            self._warm_up_thread = None
        if self._enforced:
            with suppress(OSError):
                self.enforce_iam(False)
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        rds_endpoints.clear_throttles(self._port)
        server, self._server = self._server, None
        server.stop()
        inner = getattr(server, "_server", None)
        if inner is not None:
            inner.server_close()

    # -- identity of the lab --------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        if self._endpoint_url is None:
            raise RuntimeError("the AWS lab is not started")
        return self._endpoint_url

    @property
    def account_id(self) -> str:
        if self._account_id is None:
            raise RuntimeError("the AWS lab is not started")
        return self._account_id

    @property
    def admin(self) -> IamUser:
        """An IAM user allowed everything; the lab's own set-up calls are signed with its keys."""
        if self._admin is None:
            raise RuntimeError("the AWS lab is not started")
        return self._admin

    def env(self, credentials: AwsCredentials | None = None) -> dict[str, str]:
        """What a user sets to point an AWS SDK at the lab (plus static keys, when given).

        The shared config and credentials files and IMDS are switched off so nothing from
        the machine leaks into the credential chain.
        """
        out = {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        if credentials is not None:
            out.update(credentials.env())
        return out

    def session(self, credentials: AwsCredentials | None = None) -> boto3.Session:
        creds = credentials or self.admin.credentials
        return boto3.Session(
            aws_access_key_id=creds.access_key_id,
            aws_secret_access_key=creds.secret_access_key,
            aws_session_token=creds.session_token,
            region_name=self.region,
        )

    def client(self, service: str, credentials: AwsCredentials | None = None) -> Any:
        """A boto3 client for the lab, signed as the admin unless other credentials are given.

        Clients are cached per service and credentials (they are thread-safe, and slow to
        create) and closed by `stop()`.
        """
        key = (service, credentials or self.admin.credentials)
        with self._clients_lock:
            return self._cached_client(key)

    def _cached_client(self, key: tuple[str, AwsCredentials]) -> Any:
        service = key[0]
        client = self._clients.get(key)
        if client is None:
            creds = key[1]
            client = self._boto.client(
                service,  # type: ignore[call-overload]
                endpoint_url=self.endpoint_url,
                config=_CLIENT_CONFIG,
                aws_access_key_id=creds.access_key_id,
                aws_secret_access_key=creds.secret_access_key,
                aws_session_token=creds.session_token,
            )
            self._clients[key] = client
        return client

    # -- moto request authorization --------------------------------------------------

    @property
    def iam_enforcement(self) -> bool:
        return self._enforced

    def enforce_iam(self, enabled: bool = True) -> None:
        """Turn moto's signature and policy checks on or off (process-wide; see the module doc)."""
        count = b"0" if enabled else b"inf"
        request = urllib.request.Request(  # noqa: S310 - the lab's own http endpoint
            f"{self.endpoint_url}/moto-api/reset-auth",
            data=count,
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - http to moto
            response.read()
        self._enforced = enabled

    @contextmanager
    def iam_enforced(self) -> Iterator[None]:
        previous = self._enforced
        self.enforce_iam(True)
        try:
            yield
        finally:
            self.enforce_iam(previous)

    # -- IAM ------------------------------------------------------------------------

    def _make_admin(self) -> IamUser:
        iam = self._boto.client(
            "iam",
            endpoint_url=self.endpoint_url,
            config=_CLIENT_CONFIG,
            aws_access_key_id=_BOOTSTRAP_KEY,
            aws_secret_access_key=_BOOTSTRAP_KEY,
        )
        try:
            name = f"rdsgate-lab-admin-{os.urandom(4).hex()}"
            arn = iam.create_user(UserName=name)["User"]["Arn"]
            everything = policy_document({"Effect": "Allow", "Action": "*", "Resource": "*"})
            iam.put_user_policy(
                UserName=name, PolicyName="everything", PolicyDocument=json.dumps(everything)
            )
            key = iam.create_access_key(UserName=name)["AccessKey"]
        finally:
            iam.close()
        return IamUser(name, arn, AwsCredentials(key["AccessKeyId"], key["SecretAccessKey"]))

    def create_policy(self, name: str, document: Mapping[str, Any]) -> str:
        """A customer-managed policy; returns its ARN."""
        out = self.client("iam").create_policy(PolicyName=name, PolicyDocument=json.dumps(document))
        arn: str = out["Policy"]["Arn"]
        return arn

    def create_user(
        self,
        name: str,
        *,
        policies: Mapping[str, Mapping[str, Any]] | None = None,
        managed_policy_arns: Sequence[str] = (),
    ) -> IamUser:
        """An IAM user with inline `policies` (name → document), attached ones and an access key."""
        iam = self.client("iam")
        arn = iam.create_user(UserName=name)["User"]["Arn"]
        for policy_name, document in (policies or {}).items():
            iam.put_user_policy(
                UserName=name, PolicyName=policy_name, PolicyDocument=json.dumps(document)
            )
        for policy_arn in managed_policy_arns:
            iam.attach_user_policy(UserName=name, PolicyArn=policy_arn)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return IamUser(name, arn, AwsCredentials(key["AccessKeyId"], key["SecretAccessKey"]))

    def create_role(
        self,
        name: str,
        trust_policy: Mapping[str, Any],
        *,
        policies: Mapping[str, Mapping[str, Any]] | None = None,
        managed_policy_arns: Sequence[str] = (),
    ) -> IamRole:
        iam = self.client("iam")
        arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust_policy))[
            "Role"
        ]["Arn"]
        for policy_name, document in (policies or {}).items():
            iam.put_role_policy(
                RoleName=name, PolicyName=policy_name, PolicyDocument=json.dumps(document)
            )
        for policy_arn in managed_policy_arns:
            iam.attach_role_policy(RoleName=name, PolicyArn=policy_arn)
        return IamRole(name, arn)

    def assume_role(
        self,
        credentials: AwsCredentials,
        role_arn: str,
        *,
        session_name: str = "rdsgate-lab",
        external_id: str | None = None,
        duration_seconds: int = 900,
    ) -> AwsCredentials:
        """sts:AssumeRole as the given caller (raises botocore's ClientError when refused)."""
        kwargs: dict[str, Any] = {
            "RoleArn": role_arn,
            "RoleSessionName": session_name,
            "DurationSeconds": duration_seconds,
        }
        if external_id is not None:
            kwargs["ExternalId"] = external_id
        creds = self.client("sts", credentials).assume_role(**kwargs)["Credentials"]
        return AwsCredentials(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])

    def connect_policy(
        self, users: Iterable[str], *, resource_id: str | None = None
    ) -> dict[str, Any]:
        """The `rds-db:connect` policy for these users on a proxy (default: the latest created)."""
        return connect_policy_document(
            self.region, self.account_id, resource_id or self._latest_proxy().resource_id, users
        )

    def create_connect_user(
        self, users: Iterable[str], *, name: str | None = None, resource_id: str | None = None
    ) -> IamUser:
        """An IAM user whose inline policy allows IAM database login as these users."""
        policy = self.connect_policy(users, resource_id=resource_id)
        return self.create_user(
            name or f"db-user-{os.urandom(4).hex()}", policies={"rds-db-connect": policy}
        )

    def create_connect_role(
        self,
        users: Iterable[str],
        *,
        trusted: Sequence[str],
        external_id: str | None = None,
        name: str | None = None,
        resource_id: str | None = None,
    ) -> IamRole:
        """A role that `trusted` principals may assume and that may log in as these users."""
        policy = self.connect_policy(users, resource_id=resource_id)
        return self.create_role(
            name or f"db-role-{os.urandom(4).hex()}",
            trust_policy_document(trusted, external_id=external_id),
            policies={"rds-db-connect": policy},
        )

    # -- Secrets Manager and RDS ----------------------------------------------------

    def create_secret(self, name: str, username: str, password: str) -> str:
        """A database login secret as RDS Proxy reads it; returns the secret's ARN."""
        value = json.dumps({"username": username, "password": password})
        arn: str = self.client("secretsmanager").create_secret(Name=name, SecretString=value)["ARN"]
        return arn

    def _subnet_ids(self) -> list[str]:
        with self._vpc_lock:
            return self._make_subnets()

    def _make_subnets(self) -> list[str]:
        if self._subnets is None:
            ec2 = self.client("ec2")
            vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
            self._subnets = [
                ec2.create_subnet(
                    VpcId=vpc, CidrBlock=f"10.42.{i}.0/24", AvailabilityZone=f"{self.region}{az}"
                )["Subnet"]["SubnetId"]
                for i, az in ((1, "a"), (2, "b"))
            ]
        return self._subnets

    def _prepare_vpc(self) -> None:
        """moto's EC2 takes a second to load: make the proxies' VPC while the caller goes on."""
        try:
            self._subnet_ids()
        except Exception:
            logging.getLogger(__name__).warning("could not prepare the VPC", exc_info=True)

    def create_db_proxy(
        self,
        name: str,
        secret_arns: Sequence[str],
        *,
        iam_auth: IamAuth = "REQUIRED",
        require_tls: bool = True,
        engine_family: str = "POSTGRESQL",
        tags: Mapping[str, str] | None = None,
    ) -> DbProxy:
        """An RDS Proxy in a fresh two-subnet VPC with one SECRETS auth entry per secret."""
        auth = [
            {"AuthScheme": "SECRETS", "SecretArn": arn, "IAMAuth": iam_auth} for arn in secret_arns
        ]
        out = self.client("rds").create_db_proxy(
            DBProxyName=name,
            EngineFamily=engine_family,
            Auth=auth,
            RoleArn=f"arn:aws:iam::{self.account_id}:role/rds-proxy-secrets",
            VpcSubnetIds=self._subnet_ids(),
            RequireTLS=require_tls,
            Tags=[{"Key": k, "Value": v} for k, v in (tags or {}).items()],
        )["DBProxy"]
        arn: str = out["DBProxyArn"]
        proxy = DbProxy(
            name=name,
            arn=arn,
            resource_id=arn.rsplit(":", 1)[-1],
            endpoint=str(out["Endpoint"]),
            secret_arns=tuple(secret_arns),
        )
        self._proxies.append(proxy)
        return proxy

    def create_db_proxy_endpoint(
        self, proxy_name: str, name: str, target_role: str = "READ_ONLY"
    ) -> str:
        """A custom endpoint of a proxy (in the proxy's subnets); returns its host name."""
        out = self.client("rds").create_db_proxy_endpoint(
            DBProxyName=proxy_name,
            DBProxyEndpointName=name,
            VpcSubnetIds=self._subnet_ids(),
            TargetRole=target_role,
        )["DBProxyEndpoint"]
        return str(out["Endpoint"])

    @property
    def _port(self) -> int:
        return int(self.endpoint_url.rsplit(":", 1)[1])

    def throttle(self, action: str, *, times: int | None = None) -> None:
        """Answer the next `times` calls of the RDS `action` (all until cleared, when None)
        with RDS's `Throttling` / `Rate exceeded` error, to any client of this lab."""
        rds_endpoints.throttle(self._port, action, times)

    def clear_throttles(self) -> None:
        rds_endpoints.clear_throttles(self._port)

    def throttled(self, action: str) -> int:
        """How many calls of `action` this lab has answered with `Throttling` so far."""
        return rds_endpoints.throttled_count(self._port, action)

    def create_rds_proxy(
        self,
        name: str,
        logins: Mapping[str, str],
        *,
        iam_auth: IamAuth = "REQUIRED",
        require_tls: bool = True,
    ) -> DbProxy:
        """A secret per database login (user → password) and an RDS Proxy that uses them."""
        arns = [
            self.create_secret(f"rds-proxy/{name}/{user}", user, password)
            for user, password in logins.items()
        ]
        return self.create_db_proxy(name, arns, iam_auth=iam_auth, require_tls=require_tls)

    def iam_for(self, resource_id: str | None = None) -> IamForProxy:
        """Makes IAM users and roles allowed to log in to this proxy (default: the latest)."""
        return IamForProxy(self, resource_id or self._latest_proxy().resource_id)

    def _latest_proxy(self) -> DbProxy:
        if not self._proxies:
            raise RuntimeError("no RDS Proxy was created in this lab: pass resource_id")
        return self._proxies[-1]


class IamForProxy:
    """Makes IAM principals allowed to log in to one RDS Proxy (`AwsLab.iam_for`)."""

    def __init__(self, aws: AwsLab, resource_id: str) -> None:
        self.aws = aws
        self.resource_id = resource_id

    def user(self, *db_users: str) -> DbIdentity:
        """An IAM user whose inline policy allows login as these database users."""
        user = self.aws.create_connect_user(
            db_users, name=f"lab-user-{os.urandom(4).hex()}", resource_id=self.resource_id
        )
        return DbIdentity(
            arn=user.arn,
            credentials=user.credentials,
            env=self.aws.env(user.credentials),
            region=self.aws.region,
            db_users=db_users,
        )

    def role(self, *db_users: str, external_id: str | None = None) -> DbIdentity:
        """A role allowed to log in as these users, assumed by an IAM user its trust names."""
        tag = os.urandom(4).hex()
        assume = policy_document({"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"})
        caller = self.aws.create_user(f"lab-caller-{tag}", policies={"assume": assume})
        role = self.aws.create_connect_role(
            db_users,
            trusted=[caller.arn],
            external_id=external_id,
            name=f"lab-role-{tag}",
            resource_id=self.resource_id,
        )
        session = self.aws.assume_role(
            caller.credentials, role.arn, session_name=f"lab-{tag}", external_id=external_id
        )
        return DbIdentity(
            arn=role.arn,
            credentials=session,
            env=self.aws.env(session),
            region=self.aws.region,
            role=role,
            caller=caller,
            external_id=external_id,
            db_users=db_users,
        )
