#!/usr/bin/env bash
# shout.sh - a shmooze module written in plain bash (no jq, no python).
#
# Usage (the service appends the last three): shout.sh HOST CMD_PORT UPDATE_PORT
#
# Commands:
#   init {"text": "..."}   remember the text
#   play / suspend         set parameters {"text": ..., "state": "playing"|"suspended"}
#   do_shout {"text"?}     answer with the text upper-cased
#   rm                     answer, then exit
# The module exits when the command stream reaches EOF.
#
# The service writes compact JSON ({"cmd":"NAME","args":{...}}), so the flat
# objects are picked apart with bash regular expressions.  String values are
# kept JSON-escaped from input to output, so they never need decoding.

export LC_ALL=C

if [ "$#" -lt 3 ]; then
    echo "usage: $0 HOST CMD_PORT UPDATE_PORT" >&2
    exit 2
fi
HOST=${*: -3:1}
CMD_PORT=${*: -2:1}
UPDATE_PORT=${*: -1:1}

exec 3<>"/dev/tcp/$HOST/$CMD_PORT" || exit 1
exec 4<>"/dev/tcp/$HOST/$UPDATE_PORT" || exit 1

text=""          # JSON-escaped contents of the current text string
state="ready"

# Regex for the (still escaped) contents of a JSON string.
JSTR='(([^"\\]|\\.)*)'
WS='[[:space:]]*'

# json_field NAME LINE: set $field to the escaped string value of NAME.
json_field() {
    local re="\"$1\"$WS:$WS\"$JSTR\""
    if [[ $2 =~ $re ]]; then
        field=${BASH_REMATCH[1]}
        return 0
    fi
    return 1
}

# upper_json STR: upper-case escaped JSON string contents, leaving escape
# sequences (\n, \u00e9, ...) intact.  Result in $upper.
upper_json() {
    local rest=$1 re='^([^\\]*)(\\(u[0-9A-Fa-f]{4}|.))(.*)$'
    upper=""
    while [[ $rest =~ $re ]]; do
        upper+=${BASH_REMATCH[1]^^}${BASH_REMATCH[2]}
        rest=${BASH_REMATCH[4]}
    done
    upper+=${rest^^}
}

# Discard the service's answers on the update stream without blocking.
drain_updates() {
    local junk
    while read -r -t 0 -u 4 2>/dev/null; do
        IFS= read -r -t 1 -u 4 junk || break
    done
}

send_update() {
    drain_updates
    printf '%s\n' "$1" >&4 2>/dev/null
}

answer() {
    printf '%s\n' "$1" >&3 2>/dev/null || exit 0
}

set_state() {
    state=$1
    send_update "{\"cmd\":\"set_parameters\",\"args\":{\"parameters\":{\"text\":\"$text\",\"state\":\"$state\"}}}"
}

cmd_re="\"cmd\"$WS:$WS\"([A-Za-z0-9_.-]*)\""

while IFS= read -r -u 3 line; do
    line=${line%$'\r'}
    if [[ ! $line =~ $cmd_re ]]; then
        answer '{"success":false,"error":"malformed command"}'
        continue
    fi
    cmd=${BASH_REMATCH[1]}
    # Everything after the cmd member is the args object (if any).
    args=${line#*\"args\"}
    [[ $args == "$line" ]] && args=""
    case $cmd in
        init)
            if json_field text "$args"; then text=$field; fi
            answer '{"success":true}'
            ;;
        play)
            set_state playing
            answer '{"success":true}'
            ;;
        suspend)
            set_state suspended
            answer '{"success":true}'
            ;;
        do_shout)
            src=$text
            if json_field text "$args"; then src=$field; fi
            upper_json "$src"
            answer "{\"success\":true,\"result\":\"$upper\"}"
            ;;
        rm)
            answer '{"success":true}'
            exit 0
            ;;
        *)
            answer "{\"success\":false,\"error\":\"unknown command: $cmd\"}"
            ;;
    esac
done
exit 0
