#!/usr/bin/env bash
# Create the Secrets the k8s/ manifests expect, with generated passwords, in NAMESPACE:
#   dev-evoarena-rabbitmq  username, password, management-url   (RabbitMQ's user; KEDA)
#   dev-evoarena-mongodb   username, password                   (MongoDB's root user)
#   dev-evoarena-env       EVOARENA_BROKER_URL, EVOARENA_STORE, EVOARENA_TASK_KEY (every evoarena pod)
# The same three the Helm chart generates for a release named "dev" (or RELEASE): for the plain
# manifests, and for the chart rendered without a cluster (generateSecrets: false; Argo CD). A
# password that already exists is kept: MongoDB keeps the one it was first started with.
#
#   scripts/k8s-dev-secrets.sh evoarena
set -euo pipefail

ns=${1:?usage: $0 NAMESPACE [RELEASE]}
release=${2:-dev}
name=$release-evoarena
kubectl=${KUBECTL:-kubectl}

exists() { "$kubectl" -n "$ns" get secret "$1" >/dev/null 2>&1; }
password() { python3 -c 'import secrets, string, sys; a = string.ascii_letters + string.digits; print("".join(secrets.choice(a) for _ in range(int(sys.argv[1]))))' "${1:-32}"; }
field() { "$kubectl" -n "$ns" get secret "$1" -o "jsonpath={.data.$2}" | base64 -d; }

for service in rabbitmq mongodb; do
  if exists "$name-$service"; then
    echo "kept    secret/$name-$service"
    continue
  fi
  pass=$(password)
  extra=()
  if [ "$service" = rabbitmq ]; then
    extra=(--from-literal="management-url=http://evoarena:$pass@$name-rabbitmq.$ns.svc:15672")
  fi
  "$kubectl" -n "$ns" create secret generic "$name-$service" \
    --from-literal=username=evoarena --from-literal="password=$pass" "${extra[@]}" >/dev/null
  echo "created secret/$name-$service"
done

# The URLs are rebuilt from the (possibly kept) passwords every time.
broker="amqp://$(field "$name-rabbitmq" username):$(field "$name-rabbitmq" password)@$name-rabbitmq.$ns.svc:5672//"
store="mongodb://$(field "$name-mongodb" username):$(field "$name-mongodb" password)@$name-mongodb.$ns.svc:27017/evoarena?authSource=admin"
# the key tasks are signed with (fleet/signing.py): kept once made, like the passwords
key=$( (exists "$name-env" && field "$name-env" EVOARENA_TASK_KEY) || true)
key=${key:-$(password 48)}
"$kubectl" -n "$ns" create secret generic "$name-env" \
  --from-literal="EVOARENA_BROKER_URL=$broker" --from-literal="EVOARENA_STORE=$store" \
  --from-literal="EVOARENA_TASK_KEY=$key" \
  --dry-run=client -o yaml | "$kubectl" -n "$ns" apply -f - >/dev/null
echo "applied secret/$name-env"
