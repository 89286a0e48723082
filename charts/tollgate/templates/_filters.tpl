{{/*
The Envoy filter settings of envoy/gateway.yaml.tmpl (what `tollgate envoy-bootstrap` renders),
for the Envoys the chart does not bootstrap: Istio's (EnvoyFilter, the ext_authz extension
provider) and Envoy Gateway's (EnvoyExtensionPolicy, SecurityPolicy, EnvoyPatchPolicy). Each
setting is written once here; tests/test_chart.py compares the rendered objects with the
bootstrap field by field and has Envoy itself validate the EnvoyFilter's filters. Change one
side, change the other.
*/}}

{{/* ext_proc, as Envoy's ExternalProcessor config (snake_case). Call with
     (dict "root" $ "cluster" "<Envoy cluster of serve>"). */}}
{{- define "tollgate.filter.extProc" -}}
name: envoy.filters.http.ext_proc
typed_config:
  "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
  grpc_service:
    envoy_grpc:
      cluster_name: {{ .cluster | quote }}
    timeout: 2s
  # Fail closed: no request reaches a provider unless Tollgate has seen it.
  failure_mode_allow: false
  # Tollgate unreachable is a 503, like ext_authz's (Envoy's default is 500).
  status_on_error:
    code: ServiceUnavailable
  message_timeout: 2s
  # Tollgate picks the response-body mode per request at the response headers.
  allow_mode_override: true
  processing_mode:
    request_header_mode: SEND
    response_header_mode: SEND
    request_body_mode: BUFFERED
    response_body_mode: NONE
    request_trailer_mode: SKIP
    response_trailer_mode: SKIP
  # Without it Envoy silently refuses Tollgate's `:authority` and `:path` rewrites.
  # allow_envoy: a failover request's retry settings are `x-envoy-*` headers.
  mutation_rules:
    allow_all_routing: true
    allow_envoy: true
  # Only the headers Tollgate reads travel to it (src/bootstrap.rs, forwarded_headers).
  forward_rules:
    allowed_headers:
      patterns:
      {{- range list ":path" ":method" ":status" "content-type" "anthropic-version" "x-envoy-upstream-service-time" "x-amzn-errortype" "x-amzn-bedrock-input-token-count" "retry-after" "x-tollgate-answer" "x-request-id" "x-tollgate-request-id" "traceparent" "tracestate" "origin" "access-control-request-method" "access-control-request-headers" "authorization" "x-api-key" "api-key" "x-goog-api-key" (include "tollgate.endUserHeader" .root) }}
      - exact: {{ . | quote }}
      {{- end }}
  {{- if eq (include "tollgate.auth" .root) "ext_authz" }}
  # The key bundle ext_authz returned.
  metadata_options:
    forwarding_namespaces:
      untyped:
      - envoy.filters.http.ext_authz
  {{- end }}
{{- end -}}

{{/* Where the key gate runs (the config's envoy.auth): `ext_proc`, in ext_proc's request-headers
     phase (the default), or `ext_authz`, a separate filter ahead of it (Istio's CUSTOM
     authorization, Envoy Gateway's SecurityPolicy). */}}
{{- define "tollgate.auth" -}}
{{- ((.Values.config | default dict).envoy | default dict).auth | default "ext_proc" -}}
{{- end -}}

{{/* The request header naming the end user (the config's budgets.end_user_header). */}}
{{- define "tollgate.endUserHeader" -}}
{{- ((.Values.config | default dict).budgets | default dict).end_user_header | default "x-tollgate-end-user" -}}
{{- end -}}

{{/* The request body limit (the config's limits.max_request_body_bytes), counted as the body
     arrives: 413 once the declared length or the bytes received pass it. First, as in the
     bootstrap: the buffer filter alone lets through a body that reaches it whole. */}}
{{- define "tollgate.filter.bodySizeLimit" -}}
name: envoy.filters.http.body_size_limit
typed_config:
  "@type": type.googleapis.com/envoy.extensions.filters.http.body_size_limit.v3.BodySizeLimit
  max_request_bytes: {{ include "tollgate.maxBodyBytes" . }}
{{- end -}}

{{/* The buffer filter holding the request body limit (the config's limits.max_request_body_bytes),
     so that a body past it is always a 413. */}}
{{- define "tollgate.filter.buffer" -}}
name: envoy.filters.http.buffer
typed_config:
  "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
  max_request_bytes: {{ include "tollgate.maxBodyBytes" . }}
{{- end -}}

{{/* ext_authz, as Envoy's ExtAuthz config. Istio's extension provider and Envoy Gateway's
     SecurityPolicy take their settings from it. Call with (dict "cluster" "..."). */}}
{{- define "tollgate.filter.extAuthz" -}}
name: envoy.filters.http.ext_authz
typed_config:
  "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
  transport_api_version: V3
  grpc_service:
    envoy_grpc:
      cluster_name: {{ .cluster | quote }}
    timeout: 2s
  failure_mode_allow: false
  status_on_error:
    code: ServiceUnavailable
{{- end -}}

{{/* Envoy's StatusCode names as numbers (the Kubernetes APIs take numbers). */}}
{{- define "tollgate.statusCode" -}}
{{- $codes := dict "ServiceUnavailable" 503 "InternalServerError" 500 "BadGateway" 502 "GatewayTimeout" 504 "Forbidden" 403 -}}
{{- if not (hasKey $codes .) -}}
{{- fail (printf "no HTTP status number known for Envoy's StatusCode %s (templates/_filters.tpl)" .) -}}
{{- end -}}
{{- get $codes . -}}
{{- end -}}

{{/* The settings ext_authz and ext_proc use, parsed, for templates that translate them. */}}
{{- define "tollgate.extAuthzSettings" -}}
{{- (include "tollgate.filter.extAuthz" (dict "cluster" "serve") | fromYaml).typed_config | toJson -}}
{{- end -}}
{{- define "tollgate.extProcSettings" -}}
{{- (include "tollgate.filter.extProc" (dict "root" . "cluster" "serve") | fromYaml).typed_config | toJson -}}
{{- end -}}

{{/* The ready listener appended to the bootstrap with Envoy's --config-yaml (proto merge:
     the listener and cluster lists are appended to the rendered bootstrap's). */}}
{{- define "tollgate.envoy.readyConfig" -}}
{{- $e := .Values.gateway.envoy -}}
{{- $hcm := dict
  "@type" "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
  "stat_prefix" "ready"
  "codec_type" "AUTO"
  "route_config" (dict "name" "ready" "virtual_hosts" (list (dict
      "name" "ready"
      "domains" (list "*")
      "routes" (list
        (dict "match" (dict "path" "/stats/prometheus") "route" (dict "cluster" "envoy_admin"))
        (dict "match" (dict "prefix" "/") "direct_response" (dict "status" 404))))))
  "http_filters" (list
    (dict "name" "envoy.filters.http.health_check" "typed_config" (dict
      "@type" "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck"
      "pass_through_mode" false
      "headers" (list (dict "name" ":path" "string_match" (dict "exact" "/ready")))))
    (dict "name" "envoy.filters.http.router" "typed_config" (dict
      "@type" "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"))) -}}
{{- $listener := dict
  "name" "ready"
  "address" (dict "socket_address" (dict "address" "0.0.0.0" "port_value" (int $e.readyPort)))
  "filter_chains" (list (dict "filters" (list (dict
    "name" "envoy.filters.network.http_connection_manager"
    "typed_config" $hcm)))) -}}
{{- $admin := dict
  "name" "envoy_admin"
  "type" "STATIC"
  "connect_timeout" "1s"
  "load_assignment" (dict "cluster_name" "envoy_admin" "endpoints" (list (dict "lb_endpoints" (list (dict
    "endpoint" (dict "address" (dict "socket_address" (dict "address" "127.0.0.1" "port_value" (int $e.adminPort))))))))) -}}
{{- dict "static_resources" (dict "listeners" (list $listener) "clusters" (list $admin)) | toJson -}}
{{- end -}}

{{/* Istio's mesh config entry for the ext_authz path (an envoyExtAuthzGrpc extension
     provider), with the bootstrap's ext_authz settings. Printed by NOTES.txt. */}}
{{- define "tollgate.istio.extensionProvider" -}}
{{- $ea := include "tollgate.extAuthzSettings" . | fromJson -}}
{{- $svc := printf "%s.%s.svc.%s" (include "tollgate.serve.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- $grpc := dict
  "service" $svc
  "port" (int .Values.gateway.serve.grpcPort)
  "timeout" $ea.grpc_service.timeout
  "failOpen" $ea.failure_mode_allow
  "statusOnError" (include "tollgate.statusCode" $ea.status_on_error.code) -}}
{{- dict "extensionProviders" (list (dict "name" .Values.istio.extAuthz.providerName "envoyExtAuthzGrpc" $grpc)) | toYaml -}}
{{- end -}}
