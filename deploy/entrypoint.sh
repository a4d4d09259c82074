#!/bin/sh
# Container entrypoint: upgrade the database schema, then serve on every interface.
# No arguments or options only (e.g. `--port 9000`): `codehub migrate` then `codehub serve --host 0.0.0.0 …`.
# Anything else runs as given, e.g. `docker compose run --rm hub codehub create-user alice`.
set -eu
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    codehub migrate
    exec codehub serve --host 0.0.0.0 "$@"
fi
exec "$@"
