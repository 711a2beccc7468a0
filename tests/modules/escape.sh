#!/usr/bin/env bash
# escape.sh - a hostile shmooze module in bash, for the containment tests.
#
# Usage: escape.sh HOST CMD_PORT UPDATE_PORT
# At init {"marker": "M", "clear_env": true|false} it leaves a grandchild behind that has left
# its process group and session (setsid, double fork), ignores SIGTERM, has M in its command
# line and, with clear_env, an empty environment. It answers every command, ignores rm
# (answers it and keeps running) and SIGTERM, and never reads update answers.
HOST=${*: -3:1}
CMD_PORT=${*: -2:1}
UPDATE_PORT=${*: -1:1}
exec 3<>"/dev/tcp/$HOST/$CMD_PORT" || exit 1
exec 4<>"/dev/tcp/$HOST/$UPDATE_PORT" || exit 1
trap '' TERM

escape() {  # escape MARKER CLEAR_ENV
    local envcmd=()
    [[ $2 == true ]] && envcmd=(env -i)
    # The subshell exits at once: the grandchild is orphaned, in a session of its own.
    ( trap '' TERM; setsid "${envcmd[@]}" /bin/bash -c 'trap "" TERM; exec -a "$0" sleep 100000' "$1" \
        </dev/null >/dev/null 2>&1 & )
}

while IFS= read -r -u 3 line; do
    case $line in
        *'"cmd":"init"'*)
            marker=""; clear=false
            [[ $line =~ \"marker\":\"([^\"]*)\" ]] && marker=${BASH_REMATCH[1]}
            [[ $line =~ \"clear_env\":true ]] && clear=true
            [[ -n $marker ]] && escape "$marker" "$clear"
            printf '%s\n' '{"success":true}' >&3 ;;
        *) printf '%s\n' '{"success":true}' >&3 ;;
    esac
done
# The command stream closed: stay anyway (the service must end us).
while :; do sleep 100000; done
