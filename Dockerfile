# syntax=docker/dockerfile:1.7
# One image for the whole of rdsgate; the command chooses what runs:
#
#   docker run IMAGE rdsgate-proxy --config /etc/rdsgate/config/config.yaml   # data plane
#   docker run IMAGE rdsgate-operator --namespace shop                        # control plane
#   docker run IMAGE rdsgate db ls                                            # the CLI
#
# The operator's proxy Deployments and the Helm chart run it with `command:` set to one of
# those. Build: docker build -t ghcr.io/rdsgate/rdsgate:0.1.0 .
#
# tests/image/test_image.py runs this file's builder-stage RUN lines in a fresh virtualenv
# (with VENV and WHEELS pointing at temporary directories) and each command's --help from it.

# The Python the tests run on (3.11); the same image in both stages, so the virtualenv's
# interpreter link (/usr/local/bin/python3.11) exists at run time.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    VENV=/opt/rdsgate \
    WHEELS=/wheels
WORKDIR /src
# Only what the wheel is built from (pyproject's package-dir: rdsgate/ holds the links).
COPY pyproject.toml README.md ./
COPY rdsgate/ rdsgate/
COPY operator/ operator/
COPY proxy/ proxy/
COPY lab/ lab/
RUN python -m pip wheel --no-deps --wheel-dir "$WHEELS" .
# A virtualenv without pip: the builder's pip installs into it, nothing installs later.
RUN python -m venv --without-pip "$VENV"
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip --python "$VENV/bin/python" install --compile "$WHEELS"/rdsgate-*.whl

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="rdsgate" \
      org.opencontainers.image.description="rdsgate operator, Postgres proxy for Amazon RDS Proxy with IAM authentication, and CLI" \
      org.opencontainers.image.source="https://github.com/rdsgate/rdsgate" \
      org.opencontainers.image.licenses="Apache-2.0"
# Only the virtualenv crosses over: no compiler, no pip, no build files.
COPY --from=builder /opt/rdsgate /opt/rdsgate
ENV PATH=/opt/rdsgate/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Non-root, numeric (the Pods' runAsUser is 65532 too, so runAsNonRoot can check it).
USER 65532:65532
WORKDIR /tmp
# No ENTRYPOINT: the first word of the command is the program (exec form, no shell).
CMD ["rdsgate", "--help"]
