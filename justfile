# code-hub tasks. Run with `uv run just <task>`.
set dotenv-load := false

# Migrate the embedded database and serve with reload, readable logs
dev:
    @if [ ! -d web/node_modules/@xterm/xterm ]; then if command -v npm >/dev/null; then just assets; else echo "note: npm is missing, so the dashboard's terminal is off (install node/npm, then: just assets)"; fi; fi
    CODEHUB_LOG_FORMAT=${CODEHUB_LOG_FORMAT:-console} uv run codehub migrate
    CODEHUB_LOG_FORMAT=${CODEHUB_LOG_FORMAT:-console} uv run codehub serve --reload

# Install the dashboard's browser libraries (xterm.js) pinned in web/package-lock.json from the npm registry
assets:
    cd web && npm ci --ignore-scripts --no-audit --no-fund

# Serve (expects a migrated database)
serve *ARGS:
    uv run codehub serve {{ARGS}}

# Upgrade the database to the newest schema
migrate:
    uv run codehub migrate

# Run the test suite (missing services skip; CODEHUB_TEST_REQUIRE=postgres,redis,docker makes them fail)
test *ARGS:
    uv run pytest {{ARGS}}

# Lint, check formatting and type-check app/ (mypy strict, configured in pyproject.toml)
lint:
    uv run ruff check app tests bench migrations
    uv run ruff format --check app tests bench migrations
    uv run mypy app

# Format the code
fmt:
    uv run ruff format app tests bench migrations
    uv run ruff check --fix app tests bench migrations

# Run every benchmark and print one table (`just bench --quick`: every bench small, figures not judged)
bench *ARGS:
    uv run python bench/run_all.py {{ARGS}}

# Make Postgres, Redis and dockerd answer and build the local images (root)
services:
    bash scripts/services.sh
