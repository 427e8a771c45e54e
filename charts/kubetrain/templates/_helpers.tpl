{{- define "kubetrain.name" -}}kubetrain-operator{{- end -}}

{{/* Labels of one component: include "kubetrain.componentLabels" (list . "kubetrain-mlflow") */}}
{{- define "kubetrain.componentLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ index . 1 }}
app.kubernetes.io/part-of: kubetrain
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/version: {{ $ctx.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" $ctx.Chart.Name $ctx.Chart.Version }}
{{- end -}}

{{- define "kubetrain.labels" -}}{{ include "kubetrain.componentLabels" (list . (include "kubetrain.name" .)) }}{{- end -}}

{{/* An image reference from images.<which>: include "kubetrain.image" (list . "control") */}}
{{- define "kubetrain.image" -}}
{{- $ctx := index . 0 -}}
{{- $image := index $ctx.Values.images (index . 1) -}}
{{ $image.repository }}:{{ $image.tag | default $ctx.Chart.AppVersion }}
{{- end -}}

{{- define "kubetrain.mlflowName" -}}kubetrain-mlflow{{- end -}}
{{- define "kubetrain.postgresqlName" -}}kubetrain-postgresql{{- end -}}
{{- define "kubetrain.apiName" -}}kubetrain-api{{- end -}}

{{/* The in-cluster URL of the in-chart MLflow server */}}
{{- define "kubetrain.mlflowUrl" -}}
http://{{ include "kubetrain.mlflowName" . }}.{{ .Release.Namespace }}.svc:{{ .Values.mlflow.port }}
{{- end -}}

{{/* The operator's platform config (kubetrain.render.PlatformConfig): values.platform plus what the chart knows */}}
{{- define "kubetrain.platform" -}}
{{- $platform := deepCopy .Values.platform -}}
{{- if not (hasKey $platform "image") -}}
{{- $_ := set $platform "image" (include "kubetrain.image" (list . "runtime")) -}}
{{- end -}}
{{- if and .Values.mlflow.enabled (not (hasKey $platform "mlflow_tracking_uri")) -}}
{{- $_ := set $platform "mlflow_tracking_uri" (include "kubetrain.mlflowUrl" .) -}}
{{- end -}}
{{- if and .Values.mlflow.enabled (not (hasKey $platform "mlflow_ui_url")) -}}
{{- $_ := set $platform "mlflow_ui_url" (.Values.mlflow.browserUrl | default (include "kubetrain.mlflowUrl" .)) -}}
{{- end -}}
{{- if and .Values.storage (not (hasKey $platform "storage")) -}}
{{- $_ := set $platform "storage" .Values.storage -}}
{{- end -}}
{{- toYaml $platform -}}
{{- end -}}

{{/* The Ray pods' service account in job namespaces (platform.service_account; null: none) */}}
{{- define "kubetrain.runtimeServiceAccount" -}}
{{- if hasKey .Values.platform "service_account" -}}{{ .Values.platform.service_account | default "" }}{{- else -}}kubetrain-runtime{{- end -}}
{{- end -}}

{{- define "kubetrain.podSecurity" -}}
runAsNonRoot: true
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "kubetrain.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "kubetrain.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end -}}
