# The mesh's own image (core, hosting, orchestrator, agent, gateway share it).
# Builds offline: the base image is made locally (no registry pulls here) and
# Python packages come from a wheelhouse made on the host:
#   pip download -r requirements.lock -d build/wheelhouse
#   docker build -f docker/mesh.Dockerfile --network none -t constellation/mesh:dev .
ARG BASE_IMAGE=constellation/base:bookworm
FROM ${BASE_IMAGE}
RUN python3 -m venv /opt/venv
COPY requirements.lock /app/requirements.lock
COPY build/wheelhouse /wheelhouse
RUN /opt/venv/bin/pip install --no-index --find-links /wheelhouse -r /app/requirements.lock \
 && /opt/venv/bin/pip install --no-index --find-links /wheelhouse setuptools
COPY pyproject.toml /app/
COPY mesh /app/mesh
COPY gen /app/gen
COPY constellation_sdk /app/constellation_sdk
COPY gateway /app/gateway
COPY core_svc /app/core_svc
COPY hosting_svc /app/hosting_svc
COPY orchestrator_svc /app/orchestrator_svc
COPY agent_svc /app/agent_svc
COPY envoy /app/envoy
RUN /opt/venv/bin/pip install --no-index --no-build-isolation --no-deps /app && rm -rf /wheelhouse
ENV PATH=/opt/venv/bin:$PATH CONSTELLATION_HOME=/data PYTHONUNBUFFERED=1
RUN useradd --uid 10001 --create-home constellation && mkdir -p /data && chown constellation /data
USER 10001
WORKDIR /app
