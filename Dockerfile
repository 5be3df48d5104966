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

# A non-root user. /data belongs to it in the image so that a named volume mounted there
# (the worker's `warehouse` volume) starts out writable by it: Docker copies the image's
# ownership into an empty named volume on first use.
RUN useradd --create-home --uid 10001 --user-group connector \
    && mkdir -p /data \
    && chown connector:connector /data
USER connector

# The API and the fake marketplace; the worker only makes outbound connections.
EXPOSE 8000 8900

# Started from /app: the fake marketplace reads VTEX's OpenAPI file from /app/contract.
CMD ["python", "worker.py"]
