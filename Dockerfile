# code-hub: the hub process (API, dashboard, event hub, relay). Workspaces run as sibling containers on the
# Docker engine whose socket is mounted (see docker-compose.yml).
# The dashboard's browser libraries (xterm.js), pinned in web/package-lock.json, from the npm registry.
FROM node:20-slim AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund

FROM python:3.13-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv

# git: the hub clones workspace repositories itself (app/services/git.py).
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && pip install --no-cache-dir uv==0.13.9 \
    && groupadd --gid 1000 codehub \
    && useradd --uid 1000 --gid 1000 --home-dir /home/codehub --create-home --shell /usr/sbin/nologin codehub

WORKDIR /app
# Dependencies first (cached while only the code changes), then the project itself.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY app ./app
COPY migrations ./migrations
COPY --from=web /web/node_modules ./web/node_modules
COPY deploy/entrypoint.sh /usr/local/bin/codehub-entrypoint
RUN uv sync --frozen --no-dev \
    && chmod 0755 /usr/local/bin/codehub-entrypoint \
    && mkdir -p /data \
    && chown codehub:codehub /data

ENV PATH=/app/.venv/bin:$PATH \
    CODEHUB_DATA_DIR=/data \
    CODEHUB_PORT=8000 \
    CODEHUB_LOG_FORMAT=json

USER codehub
EXPOSE 8000
VOLUME ["/data"]
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('CODEHUB_PORT', '8000'), timeout=5)"]
ENTRYPOINT ["codehub-entrypoint"]
