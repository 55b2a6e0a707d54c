"""The environment `mountctl exec` gives a command.

Precedence, weakest first: inherited variables < org secrets < user secrets < stashfs variables.
``pristine`` starts from nothing but PATH and HOME; ``preserve`` never overrides an inherited
variable.  The stores' keys (``$STASHFS_SECRETS_KEY``, ``$STASHFS_ORG_SECRETS_KEY``) are never
passed on.  Only names are reported, never values.
"""

from dataclasses import dataclass, field

KEEP_WHEN_PRISTINE = ("PATH", "HOME")
# The keys of the secrets stores: never handed to a command (it would print them with `env`, and
# one of them and a copy of the store's file read every secret), nor to a daemon mountctl starts.
STORE_KEYS = ("STASHFS_SECRETS_KEY", "STASHFS_ORG_SECRETS_KEY")


def without_store_keys(environ: dict) -> dict:
    return {k: v for k, v in environ.items() if k not in STORE_KEYS}


@dataclass
class Composed:
    env: dict
    overridden: list = field(default_factory=list)  # inherited names a secret replaced
    kept: list = field(default_factory=list)  # secret names not applied because of preserve


def compose(inherited: dict, org: dict, user: dict, stashfs: dict, *,
            pristine: bool = False, preserve: bool = False) -> Composed:
    inherited = without_store_keys(inherited)
    base = {k: inherited[k] for k in KEEP_WHEN_PRISTINE if k in inherited} if pristine else dict(inherited)
    out = Composed(dict(base))
    secrets = {**org, **user}  # a user's secret overrides the org's of the same name
    for name, value in secrets.items():
        if name in base:
            if preserve:
                out.kept.append(name)
                continue
            out.overridden.append(name)
        out.env[name] = value
    for name, value in stashfs.items():
        if preserve and name in base:
            continue
        out.env[name] = value
    out.overridden.sort()
    out.kept.sort()
    return out
