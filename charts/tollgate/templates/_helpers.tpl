{{/* Names, labels, images and the pieces several templates share. */}}

{{- define "tollgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tollgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<suffix>", within 63 characters. Call with (list $ "suffix"). */}}
{{- define "tollgate.component.fullname" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "tollgate.fullname" $root | trunc (int (sub 62 (len (index . 1))))) (index . 1) | trimSuffix "-" -}}
{{- end -}}

{{- define "tollgate.gateway.fullname" -}}{{ include "tollgate.fullname" . }}{{- end -}}
{{- define "tollgate.serve.fullname" -}}{{ include "tollgate.component.fullname" (list . "serve") }}{{- end -}}
{{- define "tollgate.metrics.fullname" -}}{{ include "tollgate.component.fullname" (list . "metrics") }}{{- end -}}
{{- define "tollgate.logger.fullname" -}}{{ include "tollgate.component.fullname" (list . "logger") }}{{- end -}}
{{- define "tollgate.controlPlane.fullname" -}}{{ include "tollgate.component.fullname" (list . "control-plane") }}{{- end -}}
{{- define "tollgate.config.fullname" -}}{{ include "tollgate.component.fullname" (list . "config") }}{{- end -}}

{{- define "tollgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tollgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tollgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tollgate
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component. Call with (list $ "gateway"). */}}
{{- define "tollgate.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "tollgate.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* All labels of one component's objects. Call with (list $ "gateway"). */}}
{{- define "tollgate.componentLabels" -}}
{{ include "tollgate.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* An image reference from {repository, tag, digest}. Call with (list $ .Values.image). */}}
{{- define "tollgate.imageRef" -}}
{{- $root := index . 0 -}}
{{- $img := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "tollgate.image" -}}{{ include "tollgate.imageRef" (list . .Values.image) }}{{- end -}}

{{/* True ("true") when a mesh's Envoys call serve over TCP. */}}
{{- define "tollgate.meshMode" -}}
{{- if or .Values.istio.enabled .Values.envoyGateway.enabled -}}true{{- end -}}
{{- end -}}

{{/* Where serve's gRPC services listen: the shared socket, or TCP for a mesh. */}}
{{- define "tollgate.socketDir" -}}/var/run/tollgate{{- end -}}
{{- define "tollgate.grpcAddress" -}}
{{- if include "tollgate.meshMode" . -}}
{{- printf "0.0.0.0:%d" (int .Values.gateway.serve.grpcPort) -}}
{{- else -}}
{{- printf "unix:%s/tollgate.sock" (include "tollgate.socketDir" .) -}}
{{- end -}}
{{- end -}}

{{- define "tollgate.spoolDir" -}}/var/spool/tollgate{{- end -}}
{{- define "tollgate.configDir" -}}/etc/tollgate{{- end -}}
{{- define "tollgate.bootstrapDir" -}}/etc/envoy{{- end -}}

{{/* The config file serve reads: the user's `config` with `listen` (and, by default,
     `logging`) filled in by the chart. */}}
{{- define "tollgate.configYaml" -}}
{{- $cfg := deepCopy (.Values.config | default dict) -}}
{{- if hasKey $cfg "listen" -}}
{{- fail "config.listen is set by the chart (a Unix socket shared with Envoy, or TCP for a mesh, and the admin port from gateway.serve.adminPort): remove it from your values" -}}
{{- end -}}
{{- $_ := set $cfg "listen" (dict "grpc" (include "tollgate.grpcAddress" .) "admin" (printf "0.0.0.0:%d" (int .Values.gateway.serve.adminPort))) -}}
{{- if and .Values.logger.enabled (not (hasKey $cfg "logging")) -}}
{{- $address := printf "%s.%s.svc.%s:%d" (include "tollgate.logger.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.logger.port) -}}
{{- $_ := set $cfg "logging" (dict "address" $address "spool_dir" (include "tollgate.spoolDir" .)) -}}
{{- end -}}
{{- if hasKey $cfg "shutdown" -}}
{{- fail "config.shutdown is set by the chart from gateway.drain (preDrainWaitSeconds, timeoutSeconds), which the grace period is checked against: set those instead" -}}
{{- end -}}
{{- $drain := .Values.gateway.drain -}}
{{- /* Half the slack for the last settlements and log events to go out (serve spools and writes pending what cannot), half for those writes and the exit. */ -}}
{{- $flush := min (div (mul (int $drain.slackSeconds) 1000) 2) 60000 -}}
{{- $_ := set $cfg "shutdown" (dict "pre_drain_wait_ms" (mul (int $drain.preDrainWaitSeconds) 1000) "drain_timeout_ms" (mul (int $drain.timeoutSeconds) 1000) "flush_timeout_ms" $flush) -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* The request body limit: the config's, else Tollgate's default (8 MiB). */}}
{{- define "tollgate.maxBodyBytes" -}}
{{- $limits := (.Values.config | default dict).limits | default dict -}}
{{- $limits.max_request_body_bytes | default 8388608 | int64 -}}
{{- end -}}

{{/* A container env entry read from a Secret key. Call with (dict "name" "VAR" "ref" $ref). */}}
{{- define "tollgate.secretEnvEntry" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .ref.name | quote }}
      key: {{ .ref.key | quote }}
{{- end -}}

{{/* serve's environment (also the bootstrap renderer's, which loads the same config). */}}
{{- define "tollgate.serveEnv" -}}
{{- range .Values.secretEnv }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName | quote }}
      key: {{ .key | quote }}
      {{- if hasKey . "optional" }}
      optional: {{ .optional }}
      {{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "tollgate.secretFileVolumes" -}}
{{- range $i, $f := .Values.secretFiles }}
- name: secret-file-{{ $i }}
  secret:
    secretName: {{ $f.secretName | quote }}
    defaultMode: 0440
    {{- with $f.items }}
    items:
      {{- toYaml . | nindent 6 }}
    {{- end }}
{{- end }}
{{- end -}}

{{- define "tollgate.secretFileMounts" -}}
{{- range $i, $f := .Values.secretFiles }}
- name: secret-file-{{ $i }}
  mountPath: {{ $f.mountPath | quote }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* The drain's total and the grace period Kubernetes gives the pod; rendering fails when
     an explicit grace period is shorter than the drain. */}}
{{- define "tollgate.drainTotal" -}}
{{- $d := .Values.gateway.drain -}}
{{- add (int $d.preDrainWaitSeconds) (int $d.timeoutSeconds) (int $d.slackSeconds) -}}
{{- end -}}

{{- define "tollgate.terminationGracePeriodSeconds" -}}
{{- $d := .Values.gateway.drain -}}
{{- $needed := include "tollgate.drainTotal" . | int -}}
{{- $set := .Values.gateway.terminationGracePeriodSeconds -}}
{{- if kindIs "invalid" $set -}}
{{- $needed -}}
{{- else if lt (int $set) $needed -}}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%d) is shorter than the drain: it must be at least gateway.drain.preDrainWaitSeconds + gateway.drain.timeoutSeconds + gateway.drain.slackSeconds = %d + %d + %d = %d (or leave it empty to use that sum)" (int $set) (int $d.preDrainWaitSeconds) (int $d.timeoutSeconds) (int $d.slackSeconds) $needed) -}}
{{- else -}}
{{- int $set -}}
{{- end -}}
{{- end -}}

{{/* Checks that span several values (the schema checks each one alone). */}}
{{- define "tollgate.validate" -}}
{{- if and (include "tollgate.meshMode" .) .Values.gateway.envoy.enabled -}}
{{- fail "istio.enabled and envoyGateway.enabled attach Tollgate to the mesh's own Envoys, which call serve over TCP: set gateway.envoy.enabled=false (the pod then runs serve alone)" -}}
{{- end -}}
{{- if and .Values.istio.enabled (empty .Values.istio.workloadSelector) -}}
{{- fail "istio.workloadSelector is required with istio.enabled: an empty selector would attach Tollgate to every workload of the namespace" -}}
{{- end -}}
{{- if and .Values.envoyGateway.enabled (empty .Values.envoyGateway.targetRefs) -}}
{{- fail "envoyGateway.targetRefs is required with envoyGateway.enabled: name the Gateway or HTTPRoutes to attach to" -}}
{{- end -}}
{{- if and .Values.envoyGateway.enabled .Values.envoyGateway.patchPolicy.enabled (or (empty .Values.envoyGateway.patchPolicy.gatewayName) (empty .Values.envoyGateway.patchPolicy.listenerName)) -}}
{{- fail "envoyGateway.patchPolicy.gatewayName and envoyGateway.patchPolicy.listenerName are required with envoyGateway.patchPolicy.enabled" -}}
{{- end -}}
{{- $pdb := .Values.gateway.podDisruptionBudget -}}
{{- if and $pdb.enabled (eq (kindIs "invalid" $pdb.maxUnavailable) (kindIs "invalid" $pdb.minAvailable)) -}}
{{- fail "gateway.podDisruptionBudget: set exactly one of maxUnavailable and minAvailable" -}}
{{- end -}}
{{- if and .Values.logger.enabled (eq .Values.logger.sink "clickhouse") (empty .Values.logger.clickhouse.url) -}}
{{- fail "logger.clickhouse.url is required with logger.sink=clickhouse" -}}
{{- end -}}
{{- if and .Values.logger.enabled (eq .Values.logger.sink "ndjson") .Values.logger.persistence.enabled (gt (int .Values.logger.replicas) 1) -}}
{{- fail "logger.replicas > 1 with the ndjson sink and persistence would share one ReadWriteOnce volume: use one replica, or logger.sink=clickhouse" -}}
{{- end -}}
{{- if .Values.controlPlane.enabled -}}
{{- $cp := .Values.controlPlane -}}
{{- if or (empty $cp.adminTokensSecret.name) (empty $cp.adminTokensSecret.key) -}}
{{- fail "controlPlane.adminTokensSecret.name and .key are required with controlPlane.enabled (an existing Secret holding the admin API tokens)" -}}
{{- end -}}
{{- if or (empty $cp.signingSecret.name) (empty $cp.signingSecret.key) -}}
{{- fail "controlPlane.signingSecret.name and .key are required with controlPlane.enabled (an existing Secret holding the bundle signing secret)" -}}
{{- end -}}
{{- if and (eq $cp.database "postgres") (or (empty $cp.postgres.urlSecret.name) (empty $cp.postgres.urlSecret.key)) -}}
{{- fail "controlPlane.postgres.urlSecret.name and .key are required with controlPlane.database=postgres" -}}
{{- end -}}
{{- if and (eq $cp.database "sqlite") (gt (int $cp.replicas) 1) -}}
{{- fail "controlPlane.replicas > 1 needs controlPlane.database=postgres: SQLite is one file on one volume" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The DNS egress rule every NetworkPolicy of the chart starts with. */}}
{{- define "tollgate.networkPolicy.dnsEgress" -}}
# DNS first: every other rule names hosts that must resolve.
- to:
    - namespaceSelector:
        {{- toYaml .Values.networkPolicy.dns.namespaceSelector | nindent 8 }}
      podSelector:
        {{- toYaml .Values.networkPolicy.dns.podSelector | nindent 8 }}
  ports:
    - { protocol: UDP, port: 53 }
    - { protocol: TCP, port: 53 }
{{- end -}}
