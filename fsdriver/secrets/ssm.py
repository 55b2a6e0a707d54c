"""The SSM secret store: AWS Systems Manager Parameter Store ``SecureString`` parameters.

    <prefix>/org/<NAME>             org secrets
    <prefix>/user/<user>/<NAME>     a user's secrets

Values are encrypted by AWS (KMS); who may read or change what is IAM's decision (give users
access to their own path, admins to ``<prefix>/org/*``).  Endpoint and credentials follow the
standard AWS conventions (``AWS_ENDPOINT_URL``, the credential chain).  botocore errors become
`SecretsError`s here; values never appear in them.
"""

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .store import SecretInfo, SecretsError, SecretsPermissionError, SecretStore, check_name, check_scope, check_value, current_user


class SSMStore(SecretStore):
    def __init__(self, cfg: dict, endpoint_url: str | None = None):
        self.prefix = "/" + cfg["ssm_prefix"].strip("/")
        self.user = current_user()
        session = boto3.session.Session()
        self.client = session.client(
            "ssm", endpoint_url=endpoint_url, region_name=session.region_name or "us-east-1",
            config=Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=20),
        )

    def _path(self, scope: str) -> str:
        return f"{self.prefix}/org" if check_scope(scope) == "org" else f"{self.prefix}/user/{self.user}"

    def _call(self, what: str, fn, **kw):
        try:
            return fn(**kw)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code == "ParameterNotFound":
                raise KeyError(kw.get("Name", what)) from None
            if code in ("AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException"):
                raise SecretsPermissionError(f"{what}: access denied by SSM ({code})") from None
            raise SecretsError(f"{what}: SSM refused the request ({code})") from None
        except BotoCoreError as e:
            raise SecretsError(f"{what}: cannot reach SSM ({type(e).__name__})") from None

    def get(self, scope: str, name: str) -> str:
        path = f"{self._path(scope)}/{check_name(name)}"
        r = self._call(f"secret {name}", self.client.get_parameter, Name=path, WithDecryption=True)
        return r["Parameter"]["Value"]

    def set(self, scope: str, name: str, value: str) -> None:
        path = f"{self._path(scope)}/{check_name(name)}"
        check_value(value)
        self._call(f"secret {name}", self.client.put_parameter, Name=path, Value=value,
                   Type="SecureString", Overwrite=True)

    def delete(self, scope: str, name: str) -> None:
        path = f"{self._path(scope)}/{check_name(name)}"
        self._call(f"secret {name}", self.client.delete_parameter, Name=path)

    def _params(self, scope: str, decrypt: bool) -> list[dict]:
        out, token = [], None
        while True:
            kw = {"Path": self._path(scope), "Recursive": False, "WithDecryption": decrypt, "MaxResults": 10}
            if token:
                kw["NextToken"] = token
            r = self._call(f"{scope} secrets", self.client.get_parameters_by_path, **kw)
            out += r.get("Parameters", [])
            token = r.get("NextToken")
            if not token:
                return out

    def list(self, scope: str) -> list[SecretInfo]:
        infos = [SecretInfo(p["Name"].rsplit("/", 1)[1], scope, p["LastModifiedDate"].timestamp())
                 for p in self._params(scope, decrypt=False)]
        return sorted(infos, key=lambda i: i.name)

    def values(self, scope: str) -> dict[str, str]:
        return {p["Name"].rsplit("/", 1)[1]: p["Value"] for p in self._params(scope, decrypt=True)}
