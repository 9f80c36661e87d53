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

{{- define "evoarena.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
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
- configMapRef:
    name: {{ include "evoarena.fullname" . }}-config
- secretRef:
    name: {{ include "evoarena.fullname" . }}-env
    optional: true
- secretRef:
    name: {{ include "evoarena.fullname" . }}-external
    optional: true
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
{{- end -}}
