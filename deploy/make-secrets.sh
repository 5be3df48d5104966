#!/bin/sh
# The secret files docker-compose.yml mounts, in ${SECRETS_DIR:-./secrets} (a 0700 folder; the
# files 0644 inside it, so that the containers' own users read them). Never overwrites a file:
# rotate one by editing it (and, for a database password, ALTER ROLE first).
#   VTEX's credentials (what VTEX sends the API): SELLER_APP_KEY and SELLER_APP_TOKEN from the
#   environment, else asked. The marketplace's, for the calls the seller makes (may stay empty):
#   MARKETPLACE_APP_KEY and MARKETPLACE_APP_TOKEN. Everything else is made here, at random.
set -eu
dir=${SECRETS_DIR:-./secrets}
umask 077
mkdir -p "$dir"
chmod 700 "$dir"

put() {  # put NAME VALUE: write the file unless it exists
  if [ -e "$dir/$1" ]; then echo "kept    $dir/$1"; return; fi
  printf '%s' "$2" > "$dir/$1"
  chmod 644 "$dir/$1"
  echo "wrote   $dir/$1"
}
random() { head -c 32 /dev/urandom | base64 | tr -d '/+=\n' | cut -c1-40; }
ask() {  # ask NAME PROMPT VALUE
  if [ -e "$dir/$1" ]; then echo "kept    $dir/$1"; return; fi
  value=$3
  if [ -z "$value" ]; then
    if [ ! -t 0 ]; then echo "$2: set it in the environment" >&2; exit 1; fi
    printf '%s: ' "$2"; read -r value
  fi
  [ -n "$value" ] || { echo "$2 is required" >&2; exit 1; }
  put "$1" "$value"
}

ask seller_app_key "VTEX's app key (SELLER_APP_KEY)" "${SELLER_APP_KEY:-}"
ask seller_app_token "VTEX's app token (SELLER_APP_TOKEN)" "${SELLER_APP_TOKEN:-}"
put marketplace_app_key "${MARKETPLACE_APP_KEY:-}"
put marketplace_app_token "${MARKETPLACE_APP_TOKEN:-}"
put postgres_password "$(random)"
put temporal_db_password "$(random)"
put warehouse_db_password "$(random)"
put ops_token "$(random)"
# codec.py's key format, `key-id:base64 of 32 bytes` (as `python -m codec new-key` prints).
put payload_encryption_key "k$(date -u +%Y%m%d%H%M%S):$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
