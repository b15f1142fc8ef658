# syntax=docker/dockerfile:1
# The Mage + poleng image: the locked dependency set (requirements.txt + overrides.txt, see the
# header of requirements.txt), then poleng itself with --no-deps, then the Mage project.
# State (POLENG_HOME, MAGE_DATA_DIR) lives in the /data volume.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    POLENG_HOME=/data \
    MAGE_DATA_DIR=/data/mage_data \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true

# libgomp1: OpenMP runtime that the xgboost wheel links against.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && pip install uv==0.13.9

WORKDIR /app

# Dependencies first (cached while only the code changes). `uv pip check` would list the three
# overridden mage-ai pins (cryptography, requests, itsdangerous): expected, see requirements.txt.
COPY requirements.txt overrides.txt ./
RUN uv pip install --system --compile-bytecode -r requirements.txt --override overrides.txt

COPY pyproject.toml README.m[d] ./
COPY poleng ./poleng
RUN uv pip install --system --compile-bytecode --no-deps . \
    && rm -rf build *.egg-info

COPY mage_pipelines ./mage_pipelines

RUN useradd --uid 10001 --create-home --home-dir /home/poleng poleng \
    && mkdir -p /data/mage_data \
    && chown -R poleng:poleng /data /app/mage_pipelines

USER poleng
VOLUME ["/data"]
EXPOSE 6789

HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=5 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:6789/api/status', timeout=4).status != 200)"]

CMD ["mage", "start", "mage_pipelines", "--port", "6789"]
