"""botocore's credential chain: which of its sources are configured here, and their names."""

from __future__ import annotations

import os
from typing import Any

import botocore.session
from botocore.exceptions import BotoCoreError

from .. import imds

#: botocore's credential method → the source of the chain it came from.
SOURCES = {
    "env": "environment",
    "assume-role-with-web-identity": "irsa",
    "container-role": "pod-identity",
    "shared-credentials-file": "shared-config",
    "config-file": "shared-config",
    "assume-role": "shared-config",
    "sso": "shared-config",
    "custom-process": "shared-config",
    "login": "shared-config",
    "iam-role": "imds",
}
#: The sources as the findings name them.
SOURCE_NAMES = {
    "environment": "environment variables",
    "irsa": "IRSA (web identity)",
    "pod-identity": "EKS Pod Identity",
    "shared-config": "shared config files",
    "imds": "EC2 instance profile (IMDS)",
}


def chain_sources(session: botocore.session.Session) -> list[dict[str, Any]]:
    """Which sources of botocore's chain have something configured, in the chain's order."""
    env = os.environ
    out: list[dict[str, Any]] = []
    has_env = bool(env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"))
    out.append(
        {
            "source": "environment",
            "present": has_env,
            "detail": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            + ("" if has_env else " not set"),
        }
    )
    role, token_file = env.get("AWS_ROLE_ARN"), env.get("AWS_WEB_IDENTITY_TOKEN_FILE")
    irsa_detail = "AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE"
    if role and token_file:
        irsa_detail = f"role {role}, token file {token_file}"
        if not os.path.exists(token_file):
            irsa_detail += " (the token file does not exist)"
    else:
        irsa_detail += " not set"
    out.append({"source": "irsa", "present": bool(role and token_file), "detail": irsa_detail})
    full = env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
    relative = env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
    out.append(
        {
            "source": "pod-identity",
            "present": bool(full or relative),
            "detail": f"AWS_CONTAINER_CREDENTIALS_FULL_URI={full}"
            if full
            else (
                f"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI={relative}"
                if relative
                else "AWS_CONTAINER_CREDENTIALS_FULL_URI not set"
            ),
        }
    )
    profile = session.get_config_variable("profile") or "default"
    files = [
        os.path.expanduser(session.get_config_variable("credentials_file") or ""),
        os.path.expanduser(session.get_config_variable("config_file") or ""),
    ]
    existing = [f for f in files if f and os.path.isfile(f) and os.path.getsize(f) > 0]
    try:
        profiles = session.full_config.get("profiles", {})
        has_profile = profile in profiles or bool(
            session.get_scoped_config().get("aws_access_key_id")
        )
    except BotoCoreError:
        has_profile = False
    out.append(
        {
            "source": "shared-config",
            "present": bool(existing) and has_profile,
            "detail": f"profile {profile!r} in {', '.join(existing)}"
            if existing
            else "no shared config or credentials file",
        }
    )
    disabled = imds.metadata_disabled()
    out.append(
        {
            "source": "imds",
            "present": not disabled,
            "detail": "disabled by AWS_EC2_METADATA_DISABLED"
            if disabled
            else f"instance profile at {imds.metadata_endpoint()}",
        }
    )
    return out
