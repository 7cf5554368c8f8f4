"""Exit codes of the `db` commands, in one place for the commands and their help."""

from __future__ import annotations

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_NOT_READY = 4
EXIT_DENIED = 5
EXIT_TIMEOUT = 6
EXIT_NO_PSQL = 7

EXIT_EPILOG = f"""\
exit codes:
  0  done (connect: psql's own exit code when it ran)
  {EXIT_ERROR}  the Kubernetes API refused a request, the port-forward failed, or the Token
     cannot become Ready
  {EXIT_USAGE}  bad arguments, or an unusable kubeconfig / unreachable Kubernetes API
  {EXIT_NOT_FOUND}  the Database or a --role does not exist (or the rdsgate CRDs, or the
     ConfigMap rdsgate-ca with the proxies' CA, are missing)
  {EXIT_NOT_READY}  the Database is not Ready (its Ready condition's message says why)
  {EXIT_DENIED}  the roles do not allow the database user / name (the rule is named), or the
     API server refused the Token (you may not bind one of its Roles, or one needs an
     approval: --request --reason) or withdrew it, or your request was denied
  {EXIT_TIMEOUT}  the Token's certificate, or the proxy's acceptance of it, did not come in
     time, or your request expired before anyone approved it
  {EXIT_NO_PSQL}  psql is not installed (--print-env works without it)
  130  interrupted
"""
