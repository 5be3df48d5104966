# syntax=docker/dockerfile:1
# One image for the seller connector's processes; docker-compose.yml picks each one's command:
#   python worker.py                      the Temporal worker (the default)
#   python -m api                         the HTTP API VTEX calls
#   python -m devtools.fake_marketplace   a fake marketplace for trying the flow
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data

WORKDIR /app

# The dependencies alone first, read from pyproject.toml, so that a code change reuses this layer.
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

COPY . .
RUN pip install --no-deps . \
    && rm -rf build *.egg-info
# Bytecode now, once: with PYTHONDONTWRITEBYTECODE a worker would otherwise compile the workflow's
# modules from source for every new workflow's sandbox (a quarter of its CPU in BENCHMARKS.md's
# profiles).
RUN python -m compileall -q .

# A non-root user, owning /data (DATA_DIR): the simulated warehouse's SQLite file lives there
# when WAREHOUSE_URL is unset. docker-compose.yml sets WAREHOUSE_URL and mounts a tmpfs there.
RUN useradd --create-home --uid 10001 --user-group connector \
    && mkdir -p /data \
    && chown connector:connector /data
USER connector

# The API, the fake marketplace, and the worker's metrics (WORKER_METRICS_ADDRESS, when set).
EXPOSE 8000 8900 9464

# Started from /app: the fake marketplace reads VTEX's OpenAPI file from /app/contract.
CMD ["python", "worker.py"]
