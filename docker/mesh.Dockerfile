# The mesh's own image: core, hosting, the orchestrator (and its Dagster run containers), the agent, the
# gateway (Envoy and the console, web/dist) and the S3 store (moto's server) share it.
# Builds with the network off (compose.yaml: build.network none): the base image is made locally
# (scripts/make_base_image.sh) and Python packages come from a wheelhouse made on the host from the runtime
# part of requirements.lock (`make compose-images` does both, and `npm run build` for web/dist):
#   python scripts/runtime_requirements.py > build/requirements.runtime.txt
#   pip download --no-deps --only-binary=:all: ... -d build/wheelhouse -r build/requirements.runtime.txt
# Layers are ordered so that a code change reuses the installed packages (the slow part).
ARG BASE_IMAGE=constellation/base:bookworm
FROM ${BASE_IMAGE} AS packages
COPY build/requirements.runtime.txt /tmp/requirements.txt
COPY build/wheelhouse /tmp/wheelhouse
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --no-cache-dir --disable-pip-version-check --find-links /tmp/wheelhouse \
      -r /tmp/requirements.txt \
 && /opt/venv/bin/pip check --disable-pip-version-check

FROM ${BASE_IMAGE}
# The wheelhouse stays in the first stage: only the installed environment comes over.
COPY --from=packages /opt/venv /opt/venv
# /data/credentials and /data/certs are where compose mounts its keys' volumes: a new volume takes this owner and mode.
# /data/tls/<service> is where the credentials container mounts each service's own certificate volume.
RUN useradd --uid 10001 --create-home constellation && mkdir -p /data/credentials /data/certs /s3 \
 && for name in core hosting orchestrator agent gateway; do mkdir -p /data/tls/$name; done \
 && chown -R constellation /data /s3 && chmod 0700 /data/credentials /data/certs /data/tls/*
COPY pyproject.toml requirements.lock /app/
COPY mesh /app/mesh
COPY gen /app/gen
COPY pipeline /app/pipeline
COPY clients /app/clients
COPY model_runtime /app/model_runtime
COPY constellation_sdk /app/constellation_sdk
COPY gateway /app/gateway
COPY core_svc /app/core_svc
COPY hosting_svc /app/hosting_svc
COPY orchestrator_svc /app/orchestrator_svc
COPY agent_svc /app/agent_svc
COPY envoy /app/envoy
COPY docker/s3_server.py /app/docker/s3_server.py
RUN /opt/venv/bin/pip install --no-index --no-cache-dir --disable-pip-version-check --no-build-isolation \
      --no-deps -e /app && rm -rf /app/build
# The example models hosting may package (CONSTELLATION_HOSTING_MODEL_ROOTS) and the built console.
COPY examples/models /app/examples/models
COPY web/dist /app/web/dist
ENV PATH=/opt/venv/bin:$PATH CONSTELLATION_HOME=/data PYTHONUNBUFFERED=1 \
    CONSTELLATION_CONSOLE_WEB_ROOT=/app/web/dist
USER 10001
WORKDIR /app
