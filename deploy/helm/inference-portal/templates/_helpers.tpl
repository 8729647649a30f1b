{{/* Names. Cluster-scoped objects carry the release namespace too, so two releases never clash. */}}
{{- define "portal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "portal.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "portal.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "portal.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "portal.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "portal.fullname" .) | trunc 45 | trimSuffix "-" -}}
{{- end -}}

{{/* The ClusterRole the workers bind into every tenant namespace they create (PORTAL_TENANT_CLUSTERROLE). */}}
{{- define "portal.tenantClusterRole" -}}
{{- printf "%s-tenant-namespace" (include "portal.clusterName" .) -}}
{{- end -}}

{{- define "portal.workerServiceAccount" -}}
{{- printf "%s-worker" (include "portal.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "portal.webServiceAccount" -}}
{{- printf "%s-web" (include "portal.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Tenant namespaces: the workers create t-<tenant>, labelled as below (endpoints/naming.py,
templates/manifests/namespace.yaml.j2). The admission policy keys on exactly this. */}}
{{- define "portal.tenantPrefix" -}}t-{{- end -}}
{{- define "portal.managedByKey" -}}inference-portal.io/managed-by{{- end -}}
{{- define "portal.managedByValue" -}}inference-portal{{- end -}}

{{- define "portal.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "portal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: inference-portal
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "web") */}}
{{- define "portal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portal.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "portal.componentLabels" -}}
{{ include "portal.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "portal.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* An image of the bundled services: (dict "image" .Values.database.bundled.image) */}}
{{- define "portal.thirdPartyImage" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository .image.tag -}}
{{- end -}}
{{- end -}}

{{- define "portal.postgresqlHost" -}}
{{- printf "%s-postgresql" (include "portal.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "portal.redisHost" -}}
{{- printf "%s-redis" (include "portal.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The portal's hostnames and the host check / CSRF origins derived from them. */}}
{{- define "portal.allowedHosts" -}}
{{- $hosts := .Values.config.allowedHosts | default .Values.expose.hostnames -}}
{{- join "," (append $hosts "localhost" | uniq) -}}
{{- end -}}

{{- define "portal.csrfTrustedOrigins" -}}
{{- if .Values.config.csrfTrustedOrigins -}}
{{- join "," .Values.config.csrfTrustedOrigins -}}
{{- else -}}
{{- $origins := list -}}
{{- range .Values.expose.hostnames -}}
{{- $origins = append $origins (printf "https://%s" .) -}}
{{- end -}}
{{- join "," $origins -}}
{{- end -}}
{{- end -}}

{{/* Environment of every portal container (web, worker, beat, watcher, migrate). KUBECONFIG is left
unset on purpose: the Kubernetes door then uses the in-cluster ServiceAccount. */}}
{{- define "portal.env" -}}
- name: PORTAL_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.secretKey.name }}
      key: {{ .Values.secrets.secretKey.key }}
{{- if eq .Values.database.mode "external" }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.external.urlSecret.name }}
      key: {{ .Values.database.external.urlSecret.key }}
{{- else }}
- name: PORTAL_DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.bundled.passwordSecret.name }}
      key: {{ .Values.database.bundled.passwordSecret.key }}
# $(VAR) is expanded by the kubelet from the variable defined just above.
- name: DATABASE_URL
  value: {{ printf "postgresql://%s:$(PORTAL_DATABASE_PASSWORD)@%s:5432/%s" .Values.database.bundled.user (include "portal.postgresqlHost" .) .Values.database.bundled.database | quote }}
{{- end }}
{{- if eq .Values.broker.mode "external" }}
- name: CELERY_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.broker.external.urlSecret.name }}
      key: {{ .Values.broker.external.urlSecret.key }}
{{- else }}
- name: CELERY_BROKER_URL
  value: {{ printf "redis://%s:6379/0" (include "portal.redisHost" .) | quote }}
{{- end }}
{{- if .Values.secrets.hfToken.name }}
- name: PORTAL_HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.hfToken.name }}
      key: {{ .Values.secrets.hfToken.key }}
{{- end }}
- name: PORTAL_ALLOWED_HOSTS
  value: {{ include "portal.allowedHosts" . | quote }}
- name: PORTAL_CSRF_TRUSTED_ORIGINS
  value: {{ include "portal.csrfTrustedOrigins" . | quote }}
- name: PORTAL_SECURE_COOKIES
  value: {{ .Values.config.secureCookies | quote }}
- name: PORTAL_LOG_LEVEL
  value: {{ .Values.config.logLevel | quote }}
- name: PROMETHEUS_URL
  value: {{ .Values.config.prometheusUrl | quote }}
- name: PORTAL_GATEWAY_DOMAIN
  value: {{ .Values.config.gateway.domain | quote }}
- name: PORTAL_GATEWAY_NAME
  value: {{ .Values.config.gateway.name | quote }}
- name: PORTAL_GATEWAY_NAMESPACE
  value: {{ .Values.config.gateway.namespace | quote }}
- name: PORTAL_VCLUSTER_CHART
  value: {{ .Values.config.vcluster.chart | quote }}
{{- if .Values.config.vcluster.version }}
- name: PORTAL_VCLUSTER_CHART_VERSION
  value: {{ .Values.config.vcluster.version | quote }}
{{- end }}
# The workers bind this ClusterRole to their own ServiceAccount in each tenant namespace they create.
- name: PORTAL_TENANT_CLUSTERROLE
  value: {{ include "portal.tenantClusterRole" . | quote }}
- name: PORTAL_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: PORTAL_SERVICE_ACCOUNT
  valueFrom:
    fieldRef:
      fieldPath: spec.serviceAccountName
# helm (run by the workers) and Python write caches under $HOME; the root filesystem is read-only.
- name: HOME
  value: /tmp
{{- with .Values.config.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "portal.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "portal.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "portal.placement" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* One Deployment of the portal image running COMMAND:
(dict "root" $ "component" "worker" "replicas" 1 "command" (list ...) "resources" ... "serviceAccount" ... "automount" true "recreate" false) */}}
{{- define "portal.deployment" -}}
{{- $root := .root -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ printf "%s-%s" (include "portal.fullname" $root) .component | trunc 63 | trimSuffix "-" }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "portal.componentLabels" . | nindent 4 }}
spec:
  replicas: {{ .replicas }}
  {{- if .recreate }}
  strategy:
    type: Recreate
  {{- end }}
  selector:
    matchLabels:
      {{- include "portal.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "portal.componentLabels" . | nindent 8 }}
      {{- with $root.Values.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ .serviceAccount }}
      automountServiceAccountToken: {{ .automount }}
      securityContext:
        {{- include "portal.podSecurityContext" $root | nindent 8 }}
      {{- with (include "portal.placement" $root) }}
      {{- . | nindent 6 }}
      {{- end }}
      {{- with .terminationGracePeriodSeconds }}
      terminationGracePeriodSeconds: {{ . }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "portal.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command:
            {{- toYaml .command | nindent 12 }}
          env:
            {{- include "portal.env" $root | nindent 12 }}
          {{- with .ports }}
          ports:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with .probes }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
          resources:
            {{- toYaml .resources | nindent 12 }}
          securityContext:
            {{- include "portal.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: tmp
          emptyDir: {}
{{- end -}}
