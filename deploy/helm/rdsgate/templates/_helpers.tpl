{{/* The chart name, or nameOverride. */}}
{{- define "rdsgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name: fullnameOverride, else the release name (plus the chart name unless the
release name contains it). */}}
{{- define "rdsgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The operator's Deployment, Roles and bindings. */}}
{{- define "rdsgate.operatorName" -}}
{{- printf "%s-operator" (include "rdsgate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rdsgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rdsgate.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The proxies' TokenReview ClusterRole and ClusterRoleBinding (one name for both). */}}
{{- define "rdsgate.proxyTokenReviewName" -}}
{{- printf "%s-proxy-tokenreview" .Release.Name }}
{{- end }}

{{/* The admission webhooks: the Service in front of the operator's webhook port (and the
cert-manager Certificate for it, of the same name), and the Validating- and
MutatingWebhookConfiguration (one name for both). */}}
{{- define "rdsgate.webhookName" -}}
{{- printf "%s-webhook" (include "rdsgate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rdsgate.webhookConfigurationName" -}}
{{- printf "%s-tokens" (include "rdsgate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rdsgate.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "rdsgate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Where the operator reads the cert-manager certificate (tls.crt, tls.key). */}}
{{- define "rdsgate.webhookCertDir" -}}
/etc/rdsgate/webhook
{{- end }}

{{/* The caBundle a webhook has in the cluster now (list: root context, configuration kind,
webhook name), or nothing: on `helm upgrade` the configurations keep the CA the operator (or
cert-manager's cainjector) patched in, instead of losing it until they patch it again. Under
`helm template` and on the first install, lookup finds nothing. */}}
{{- define "rdsgate.liveCaBundle" -}}
{{- $root := index . 0 }}
{{- $webhook := index . 2 }}
{{- $live := lookup "admissionregistration.k8s.io/v1" (index . 1) "" (include "rdsgate.webhookConfigurationName" $root) }}
{{- range (dig "webhooks" list ($live | default dict)) }}
{{- if eq (dig "name" "" .) $webhook }}
{{- dig "clientConfig" "caBundle" "" . }}
{{- end }}
{{- end }}
{{- end }}

{{/* The ClusterRoles aggregated into Kubernetes' view, edit and admin. */}}
{{- define "rdsgate.aggregateRoleName" -}}
{{- printf "%s-%s" (include "rdsgate.fullname" .root) .role | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rdsgate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Labels of every object but the selector ones. */}}
{{- define "rdsgate.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rdsgate
{{- end }}

{{- define "rdsgate.labels" -}}
app.kubernetes.io/name: {{ include "rdsgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "rdsgate.commonLabels" . }}
{{- end }}

{{- define "rdsgate.operatorSelector" -}}
app.kubernetes.io/name: {{ include "rdsgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* What the proxies' pods and Services carry (the operator renders them: operator/render.py). */}}
{{- define "rdsgate.proxySelector" -}}
app.kubernetes.io/name: rdsgate-proxy
app.kubernetes.io/component: proxy
{{- end }}

{{/* Where the proxies run: the watched namespaces, or any. */}}
{{- define "rdsgate.proxyNamespaces" -}}
{{- if .Values.watchNamespaces }}
matchNames:
{{- range .Values.watchNamespaces }}
  - {{ . | quote }}
{{- end }}
{{- else }}
any: true
{{- end }}
{{- end }}

{{/* The rules the operator needs wherever it serves Databases: in a ClusterRole (all
namespaces) or in a Role per watched namespace. Each is checked against the API calls the
operator makes in tests/helm/test_helm_rbac.py: nothing missing, nothing extra. */}}
{{- define "rdsgate.operatorRules" -}}
# Its resources: watched (kopf lists and watches them), read one at a time (a Role:
# whether it requires approval, when a Token naming it is admitted; a DatabaseDiscovery at
# each round), patched (kopf's finalizer and its bookkeeping annotations prefixed
# rdsgate.dev/), and their status.
- apiGroups: [rdsgate.dev]
  resources: [databases, databasediscoveries, roles, tokens]
  verbs: [get, list, watch, patch]
- apiGroups: [rdsgate.dev]
  resources: [databases/status, databasediscoveries/status, roles/status, tokens/status]
  verbs: [patch]
# DatabaseDiscovery creates a Database per RDS Proxy endpoint it finds, and deletes it once
# the endpoint has been gone from AWS for the grace period (only those it owns).
- apiGroups: [rdsgate.dev]
  resources: [databases]
  verbs: [create, delete]
# The children of a Database it watches for drift repair (a label-selected watch: kopf lists
# and watches them), and the Token Secrets: read, created, merge-patched; never deleted by
# the operator (the garbage collector removes them with their owner).
- apiGroups: [""]
  resources: [configmaps, secrets, services]
  verbs: [get, list, watch, create, patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
# Children that are not watched (repaired by the periodic resync), and deleted when no longer
# wanted: the generated ServiceAccount when spec.proxy.serviceAccount.name is set, the PDB when
# replicas drop to 1, the HorizontalPodAutoscaler when spec.proxy.autoscaling is removed.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, create, patch, delete]
# cert-manager Certificates (spec.proxy.issuerRef). `get` and `delete` are needed even without
# cert-manager: every reconcile looks for a Certificate to prune and takes 404 for "none";
# a 403 would be an error.
- apiGroups: [cert-manager.io]
  resources: [certificates]
  verbs: [get, create, patch, delete]
# The proxies' pods, listed by label: the operator reads their /diagnose findings (by pod IP)
# into Database conditions.
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# Its Events about Databases, Roles and Tokens (kopf's own are switched off).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* Cluster-scoped rights in every mode. */}}
{{- define "rdsgate.clusterRules" -}}
# kopf's resource discovery: it lists and watches CRDs to notice its resources appear.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if .Values.watchNamespaces }}
# kopf serving named namespaces lists and watches Namespaces to find them.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
# Its validating webhook asks the API server whether the requester of a Token may `bind` each
# Role it names, and it asks again for every recorded requester at each compile and every
# accessRecheckInterval (SubjectAccessReview is cluster-scoped, even about a namespace).
- apiGroups: [authorization.k8s.io]
  resources: [subjectaccessreviews]
  verbs: [create]
{{- if not .Values.webhook.certManager.enabled }}
# The operator's own CA serves the webhooks: it patches that CA into both webhook
# configurations' caBundle at start-up and keeps it current (cert-manager mode: cainjector does).
- apiGroups: [admissionregistration.k8s.io]
  resources: [validatingwebhookconfigurations, mutatingwebhookconfigurations]
  resourceNames: [{{ include "rdsgate.webhookConfigurationName" . }}]
  verbs: [get, patch]
{{- end }}
{{- if .Values.proxyTokenReview.enabled }}
# Keeps the subjects of the proxies' TokenReview binding equal to their ServiceAccounts; `bind`
# lets it reference a ClusterRole whose rights (create tokenreviews) it does not hold itself.
- apiGroups: [rbac.authorization.k8s.io]
  resources: [clusterrolebindings]
  resourceNames: [{{ include "rdsgate.proxyTokenReviewName" . }}]
  verbs: [get, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [clusterroles]
  resourceNames: [{{ include "rdsgate.proxyTokenReviewName" . }}]
  verbs: [bind]
{{- end }}
{{- end }}
