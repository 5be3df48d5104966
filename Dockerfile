# One image for every process of the seller connector; docker-compose.yml picks each one's command:
#   python worker.py                      the Temporal worker (the default)
#   python -m api                         the HTTP API VTEX calls, and its ops listener
#   python -m activities.catalog ...      the catalog command (load, show, delist)
#   python -m devtools.invariants         the invariant checker
#   python -m devtools.fake_marketplace   a fake marketplace (compose's demo profile)
# Built with the classic builder or BuildKit alike: no `# syntax` line, so no frontend is fetched.
ARG PYTHON_IMAGE=python:3.11-slim

# --- build: the production dependencies, exactly as uv.lock pins them, and the bytecode ---------
FROM ${PYTHON_IMAGE} AS build
# A folder or URL of wheels to install from, offline (make deploy-test); empty: PyPI.
ARG WHEELS=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 UV_NO_CACHE=1 UV_PYTHON_DOWNLOADS=never
WORKDIR /app
COPY pyproject.toml uv.lock ./
# The first source always exists (a COPY whose sources all miss fails); wheels/ only in deploy-test.
COPY uv.lock wheel[s] /wheels/
RUN set -eu; \
    offline=""; if [ -n "$WHEELS" ]; then offline="--no-index --find-links $WHEELS"; fi; \
    python3 -m venv /opt/uv; \
    /opt/uv/bin/pip install --quiet $offline "uv==$(sed -n 's/.*"uv==\([0-9.]*\)".*/\1/p' pyproject.toml)"; \
    /opt/uv/bin/uv export --quiet --frozen --no-emit-project --no-header -o /tmp/requirements.txt; \
    python3 -m venv /venv; \
    /opt/uv/bin/uv pip install --quiet --python /venv/bin/python --require-hashes $offline -r /tmp/requirements.txt; \
    rm -rf /wheels
COPY *.py ./
COPY api ./api
COPY workflows ./workflows
COPY activities ./activities
COPY catalog ./catalog
COPY contract ./contract
COPY devtools/__init__.py devtools/serving.py devtools/fake_marketplace.py devtools/invariants.py ./devtools/
# Bytecode now, once: with PYTHONDONTWRITEBYTECODE a worker would otherwise compile the workflow's
# modules from source for every new workflow's sandbox (a quarter of its CPU in BENCHMARKS.md).
RUN /venv/bin/python -m compileall -q /app /venv

# --- the image: Python, the venv and the code; no compiler, no uv, no tests, no docs -------------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    DATA_DIR=/data
COPY --from=build /venv /venv
COPY --from=build /app /app
WORKDIR /app
# A non-root user owning /data (DATA_DIR): the simulated warehouse's SQLite file lives there when
# WAREHOUSE_URL is unset. docker-compose.yml sets WAREHOUSE_URL and mounts a tmpfs there.
RUN useradd --no-create-home --home-dir /app --uid 10001 --user-group connector \
    && mkdir -p /data && chown connector:connector /data
USER 10001:10001
# The API (VTEX), its ops listener, the worker's metrics, the fake marketplace.
EXPOSE 8000 8001 9464 8900
CMD ["python", "worker.py"]
