#!/bin/sh
# The namespace the connector uses, with its retention, and the order's search attributes
# (workflows/search.py). Run by the temporal-namespace job of docker-compose.yml on every `up`.
# Fails on any error but "already there"; gives up waiting for Temporal after WAIT_SECONDS.
set -eu
: "${TEMPORAL_ADDRESS:?}" "${NAMESPACE:?}" "${RETENTION:?}"
export TEMPORAL_ADDRESS
waited=0
until temporal operator cluster health >/dev/null 2>&1; do
  waited=$((waited + 2))
  if [ "$waited" -ge "${WAIT_SECONDS:-180}" ]; then
    echo "Temporal at $TEMPORAL_ADDRESS is not healthy after ${WAIT_SECONDS:-180} s" >&2
    exit 1
  fi
  sleep 2
done

if temporal operator namespace describe --namespace "$NAMESPACE" >/dev/null 2>&1; then
  temporal operator namespace update --namespace "$NAMESPACE" --retention "$RETENTION"
  echo "namespace $NAMESPACE: retention $RETENTION"
else
  temporal operator namespace create --namespace "$NAMESPACE" --retention "$RETENTION"
  echo "namespace $NAMESPACE created, retention $RETENTION"
fi

# A namespace just created reaches every frontend's cache within seconds: until then, listing
# its search attributes fails.
tries=0
until existing=$(temporal operator search-attribute list --namespace "$NAMESPACE" 2>&1); do
  tries=$((tries + 1))
  if [ "$tries" -ge 30 ]; then
    echo "the search attributes of $NAMESPACE cannot be listed: $existing" >&2
    exit 1
  fi
  sleep 1
done
for attribute in OrderStatus=Keyword FulfillmentStep=Keyword MarketplaceOrderId=Keyword \
                 SellerOrderId=Keyword InvoiceNotDelivered=Bool; do
  name=${attribute%%=*}
  type=${attribute#*=}
  # The name as a whole word at the start of a line of the list (one attribute a line).
  if printf '%s\n' "$existing" | grep -Eq "^[[:space:]]*$name[[:space:]]"; then
    echo "search attribute $name: present"
    continue
  fi
  # A failure here (a name taken with another type, no permission) stops the job: the
  # connector's placements would answer 503 without it.
  temporal operator search-attribute create --namespace "$NAMESPACE" --name "$name" --type "$type"
  echo "search attribute $name ($type): created"
done
