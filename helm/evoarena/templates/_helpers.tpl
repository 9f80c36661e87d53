{{/*
Names. Every object is "<release>-evoarena[-part]", whatever the release is called: `evoarena
submit --release R` finds the release's configuration by this convention, without reading values:
  ConfigMap R-evoarena-config     the non-secret environment of every pod of the release
  Secret    R-evoarena-env        broker and store URLs of the in-chart services (generated)
  Secret    R-evoarena-external   yours, optional: URLs of external services, static AWS keys
  ServiceAccount R-evoarena       the workers' and masters' identity (IRSA for S3)
*/}}
{{- /* <release>-evoarena, never truncated (`evoarena submit` finds the release's ConfigMap by
this name). The longest name built on it is a StatefulSet's, <release>-evoarena-rabbitmq, and a
StatefulSet's name must stay within 52 characters for its pods to be created: so a release name
has at most 34 characters. service/evoarena/submit.py checks the same number (RELEASE_MAX_LENGTH). */ -}}
{{- define "evoarena.fullname" -}}
{{- if gt (len .Release.Name) 34 -}}
{{- fail (printf "release name %q is %d characters; at most 34 are accepted (its StatefulSet %s-evoarena-rabbitmq must stay within Kubernetes' 52)" .Release.Name (len .Release.Name) .Release.Name) -}}
{{- end -}}
{{- printf "%s-evoarena" .Release.Name -}}
{{- end -}}

{{- define "evoarena.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "evoarena.selectorLabels" -}}
app.kubernetes.io/name: evoarena
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "evoarena.labels" -}}
{{ include "evoarena.selectorLabels" . }}
helm.sh/chart: {{ include "evoarena.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The values no default can stand for, checked where every render passes (the images): one
line that names each one missing. Without image.repository the nodes would look for `evoarena` on
Docker Hub (ImagePullBackOff); without s3.bucket every worker would exit at start, since
fleet.requireConfig refuses a checkpoint directory of the pod's own. */}}
{{- define "evoarena.required" -}}
{{- $missing := list -}}
{{- if not .Values.image.repository -}}
{{- $missing = append $missing "image.repository (the registry path the nodes pull evoarena's images from, e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/evoarena: docs/DEPLOY.md, EKS step 2)" -}}
{{- end -}}
{{- if and (not .Values.s3.bucket) (ne (toString .Values.fleet.requireConfig) "false") -}}
{{- $missing = append $missing "s3.bucket (where the workers keep checkpoints; or fleet.requireConfig=false for a one-worker-pod trial whose checkpoints stay in its pod)" -}}
{{- end -}}
{{- if $missing -}}
{{- fail (printf "set %s" (join " and " $missing)) -}}
{{- end -}}
{{- end -}}

{{/* The CUDA image, for GPU workers. */}}
{{- define "evoarena.image" -}}
{{- include "evoarena.required" . -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The CPU image (`make image VARIANT=cpu`): masters, Flower, CPU workers. submit.py's
default_image is the same rule with the repository `evoarena`: evoarena:<appVersion>-cpu. */}}
{{- define "evoarena.cpuImage" -}}
{{- include "evoarena.required" . -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.cpuTag | default (printf "%s-cpu" (.Values.image.tag | default .Chart.AppVersion))) -}}
{{- end -}}

{{/* What a pod without GPUs adds to its environment: on a GPU node whose container runtime
hands every GPU to a container that asks for none, it sees none (NVIDIA_VISIBLE_DEVICES=void),
and torch computes on the CPU. submit.py's CPU_ONLY_ENV gives the master the same. */}}
{{- define "evoarena.cpuOnlyEnv" -}}
- name: NVIDIA_VISIBLE_DEVICES
  value: void
- name: EVOARENA_DEVICE
  value: cpu
{{- end -}}

{{/* The workers' image: CUDA where they have GPUs. */}}
{{- define "evoarena.workerImage" -}}
{{- if gt (int .Values.worker.gpus) 0 -}}{{ include "evoarena.image" . }}{{- else -}}{{ include "evoarena.cpuImage" . }}{{- end -}}
{{- end -}}

{{- define "evoarena.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- include "evoarena.fullname" . -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "evoarena.rabbitmqSecret" -}}
{{- .Values.rabbitmq.auth.existingSecret | default (printf "%s-rabbitmq" (include "evoarena.fullname" .)) -}}
{{- end -}}

{{- define "evoarena.mongodbSecret" -}}
{{- .Values.mongodb.auth.existingSecret | default (printf "%s-mongodb" (include "evoarena.fullname" .)) -}}
{{- end -}}

{{/* Worker processes per pod: one per GPU; `worker.concurrency` on CPU workers. */}}
{{- define "evoarena.concurrency" -}}
{{- if gt (int .Values.worker.gpus) 0 -}}{{ int .Values.worker.gpus }}{{- else -}}{{ int .Values.worker.concurrency }}{{- end -}}
{{- end -}}

{{/*
The release's environment, the same for workers and for the masters `evoarena submit` starts
(service/evoarena/submit.py builds the same list). Later sources win, so a key in the
-external Secret overrides the generated one.
*/}}
{{- define "evoarena.envFrom" -}}
{{- /* Where a URL can only come from -external (an external service, or a password the chart
cannot read), a missing -external holds the pod in CreateContainerConfigError, naming the
Secret, until it is made; elsewhere it only adds AWS keys and overrides. The masters' Jobs
(submit.py) cannot know the values and keep it optional: a master without a URL exits at
start naming it (settings.check_fleet_config). */ -}}
{{- $external := or (not .Values.rabbitmq.enabled) (not .Values.mongodb.enabled) .Values.rabbitmq.auth.existingSecret .Values.mongodb.auth.existingSecret -}}
- configMapRef:
    name: {{ include "evoarena.fullname" . }}-config
- secretRef:
    name: {{ include "evoarena.fullname" . }}-env
    optional: true
- secretRef:
    name: {{ include "evoarena.fullname" . }}-external
    optional: {{ not $external }}
{{- end -}}

{{/* Settings that cannot work together are refused at install time, not discovered at 3 a.m. */}}
{{- define "evoarena.checks" -}}
{{- $hard := int .Values.fleet.taskHardTimeLimitSeconds -}}
{{- if le (int .Values.worker.terminationGracePeriodSeconds) $hard -}}
{{- fail (printf "worker.terminationGracePeriodSeconds (%d) must be above fleet.taskHardTimeLimitSeconds (%d): a warm shutdown waits for the running task" (int .Values.worker.terminationGracePeriodSeconds) $hard) -}}
{{- end -}}
{{- if and .Values.rabbitmq.enabled (le (int64 .Values.rabbitmq.consumerTimeoutMs) (mul $hard 1000)) -}}
{{- fail (printf "rabbitmq.consumerTimeoutMs (%d) must be above fleet.taskHardTimeLimitSeconds in ms (%d): RabbitMQ closes the channel of a consumer that holds a message longer" (int64 .Values.rabbitmq.consumerTimeoutMs) (mul $hard 1000)) -}}
{{- end -}}
{{- if le (int .Values.worker.livenessProbe.maxAgeSeconds) (int .Values.worker.aliveEverySeconds) -}}
{{- fail (printf "worker.livenessProbe.maxAgeSeconds (%d) must be above worker.aliveEverySeconds (%d): the probe would fail between two touches of a live worker" (int .Values.worker.livenessProbe.maxAgeSeconds) (int .Values.worker.aliveEverySeconds)) -}}
{{- end -}}
{{- if and .Values.keda.enabled (not .Values.rabbitmq.enabled) (not .Values.keda.existingSecret) -}}
{{- fail "keda.existingSecret is required with an external broker: a Secret whose key holds the management API URL (https://user:pass@host/vhost)" -}}
{{- end -}}
{{- end -}}

{{/* RabbitMQ's configuration, read after the image's own conf.d/10-defaults.conf. */}}
{{- define "evoarena.rabbitmqConf" -}}
listeners.tcp.default = 5672
management.tcp.port = 15672
# Tasks are acknowledged when done: a consumer that holds a message longer than this loses its
# channel and the task is redelivered. It must be above the longest task chunk.
consumer_timeout = {{ int64 .Values.rabbitmq.consumerTimeoutMs }}
# RabbitMQ reads the node's memory, not the container's limit: without this it would let
# publishers run until the kernel kills it. At the mark it blocks publishers instead.
vm_memory_high_watermark.absolute = {{ include "evoarena.rabbitmqMemoryMark" . }}
{{- end -}}

{{/* rabbitmq.memoryHighWatermarkPercent of the container's memory limit, in bytes. */}}
{{- define "evoarena.rabbitmqMemoryMark" -}}
{{- $limit := (.Values.rabbitmq.resources.limits | default dict).memory -}}
{{- if not $limit -}}
{{- fail "rabbitmq.resources.limits.memory is required: RabbitMQ's memory alarm is set from it (it cannot see the container's limit)" -}}
{{- end -}}
{{- div (mul (include "evoarena.bytes" $limit | int64) (int64 .Values.rabbitmq.memoryHighWatermarkPercent)) 100 -}}
{{- end -}}

{{/* A Kubernetes memory quantity ("2Gi", "1500M", "1073741824") in bytes. */}}
{{- define "evoarena.bytes" -}}
{{- $quantity := toString . -}}
{{- $number := regexFind "^[0-9]+" $quantity -}}
{{- $unit := trimPrefix $number $quantity -}}
{{- $units := dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 -}}
{{- if or (not $number) (not (hasKey $units $unit)) -}}
{{- fail (printf "memory quantity %q: expected a whole number with one of the suffixes Ki, Mi, Gi, Ti, k, M, G, T, or none" $quantity) -}}
{{- end -}}
{{- mul (int64 $number) (index $units $unit | int64) -}}
{{- end -}}
