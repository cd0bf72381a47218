# One image for every latentwatch subcommand: train, score, consume, api, db upgrade.
#   docker build -t latentwatch:0.1.0 .
#   docker run --rm latentwatch:0.1.0 --help
# Optional extras (pyproject.toml), e.g. Parquet input for train/score (pyarrow, ~170 MB more):
#   docker build --build-arg EXTRAS=parquet -t latentwatch:0.1.0-parquet .
# See docs/deployment.md.

FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, pinned to the CPU build (no CUDA libraries); the package's looser torch range
# then keeps it. Its own layer, so code changes do not re-download it.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
WORKDIR /src
# .dockerignore admits only the package sources and their metadata.
COPY . .
ARG EXTRAS=""
RUN pip install --no-cache-dir "/src${EXTRAS:+[$EXTRAS]}"

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 latentwatch \
    && useradd --no-log-init --system --uid 10001 --gid 10001 --home-dir /app --create-home latentwatch
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
# 9464: consumer metrics (/metrics); 8000: query API.
EXPOSE 9464 8000
# Only a serving command has something to probe, on a port of its own: the service that runs
# `consume` or `api` sets LATENTWATCH_HEALTHCHECK_URL (compose.yaml does); without it the check
# passes, so a one-shot or unconfigured container never reports a false "unhealthy".
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; u = os.environ.get('LATENTWATCH_HEALTHCHECK_URL'); u and urllib.request.urlopen(u, timeout=4)"]
ENTRYPOINT ["latentwatch"]
CMD ["--help"]
