#!/bin/sh
# Entrypoint of the traind images, run by tini (PID 1, which forwards signals and reaps
# zombies):   tini -- traind-entrypoint [serve] [SERVE OPTIONS...]
#
#   1. TRAIND_TOKEN_FILE (e.g. a docker secret, /run/secrets/traind_token): when
#      TRAIND_SERVER__TOKEN is unset, the token is read from that file.
#   2. Creates the data folders named by TRAIND_PATHS__{INBOX,CHECKPOINTS,STATE} if
#      missing, and stops with a clear message if this user cannot write them.
#   3. traind migrate: upgrades the ledger to the newest schema (a failure stops here,
#      with migrate's exit status). It gets serve's --config, if one was given.
#   4. exec traind serve "$@": serve replaces this shell, so it is tini's direct child and
#      gets docker stop's SIGTERM itself (it checkpoints, then exits 0).
#
# Any other command runs as it is, without the steps above, for one-off commands in a
# new container (docker compose run --rm traind traind inspect /data/checkpoints). To ask
# the running service, use exec (docker compose exec traind traind status).
#
# TRAIND_BIN (default: traind, found on PATH) names the traind executable; the tests in
# tests/deploy point it at a fake that records its calls.
set -eu

TRAIND_BIN=${TRAIND_BIN:-traind}

die() {
    echo "traind-entrypoint: $*" >&2
    exit 2
}

if [ "$#" -gt 0 ] && [ "$1" = serve ]; then
    shift
fi
if [ "$#" -gt 0 ]; then
    case $1 in
        -*) ;;
        *) exec "$@" ;;
    esac
fi

if [ -z "${TRAIND_SERVER__TOKEN:-}" ] && [ -n "${TRAIND_TOKEN_FILE:-}" ]; then
    [ -r "$TRAIND_TOKEN_FILE" ] || die "TRAIND_TOKEN_FILE=$TRAIND_TOKEN_FILE is not a readable file"
    # $(...) drops the trailing newline.
    TRAIND_SERVER__TOKEN=$(cat "$TRAIND_TOKEN_FILE")
    [ -n "$TRAIND_SERVER__TOKEN" ] || die "the token file $TRAIND_TOKEN_FILE is empty"
    export TRAIND_SERVER__TOKEN
fi

uid=$(id -u)
gid=$(id -g)
for dir in "${TRAIND_PATHS__INBOX:-}" "${TRAIND_PATHS__CHECKPOINTS:-}" "${TRAIND_PATHS__STATE:-}"; do
    if [ -z "$dir" ]; then
        continue
    fi
    mkdir -p -- "$dir" || die "cannot create $dir (running as uid $uid)"
    if [ ! -w "$dir" ]; then
        die "$dir is not writable by uid $uid gid $gid; for a bind mount, chown the host folder to $uid:$gid"
    fi
done

# migrate accepts only --config of serve's options: find it in the arguments.
config=
want_config=false
for arg in "$@"; do
    if [ "$want_config" = true ]; then
        config=$arg
        want_config=false
        continue
    fi
    case $arg in
        --config | -c) want_config=true ;;
        --config=*) config=${arg#--config=} ;;
        -c?*) config=${arg#-c} ;;
        *) ;;
    esac
done

if [ -n "$config" ]; then
    "$TRAIND_BIN" migrate --config "$config"
else
    "$TRAIND_BIN" migrate
fi

exec "$TRAIND_BIN" serve "$@"
