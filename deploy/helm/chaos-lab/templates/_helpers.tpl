{{/* The objects' base name: the release name, with "-chaos-lab" unless it says so already. */}}
{{- define "chaos-lab.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object and pod: pass (dict "ctx" $ "component" "etcd"). */}}
{{- define "chaos-lab.labels" -}}
app.kubernetes.io/name: {{ .ctx.Chart.Name }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "chaos-lab.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* An IPv4 address as a number; fails on anything else. */}}
{{- define "chaos-lab.ipToInt" -}}
{{- $octets := splitList "." . -}}
{{- if ne (len $octets) 4 -}}{{- fail (printf "%q is not an IPv4 address" .) -}}{{- end -}}
{{- $n := 0 -}}
{{- range $octets -}}
{{- if or (not (regexMatch "^[0-9]{1,3}$" .)) (gt (atoi .) 255) -}}{{- fail (printf "%q is not an IPv4 address" $) -}}{{- end -}}
{{- $n = add (mul $n 256) (atoi .) -}}
{{- end -}}
{{- $n -}}
{{- end -}}

{{- define "chaos-lab.intToIp" -}}
{{- $n := int64 . -}}
{{- printf "%d.%d.%d.%d" (div $n 16777216) (mod (div $n 65536) 256) (mod (div $n 256) 256) (mod $n 256) -}}
{{- end -}}

{{/* Fails unless the address (.ip) is a host address inside serviceCIDR; .what names it. */}}
{{- define "chaos-lab.checkServiceIP" -}}
{{- $cidr := splitList "/" .ctx.Values.serviceCIDR -}}
{{- if ne (len $cidr) 2 -}}{{- fail (printf "serviceCIDR %q is not ADDRESS/PREFIX" .ctx.Values.serviceCIDR) -}}{{- end -}}
{{- $size := 1 -}}
{{- range until (sub 32 (atoi (index $cidr 1)) | int) -}}{{- $size = mul $size 2 -}}{{- end -}}
{{- $base := include "chaos-lab.ipToInt" (index $cidr 0) | int64 -}}
{{- $ip := include "chaos-lab.ipToInt" .ip | int64 -}}
{{- if or (le $ip $base) (ge $ip (add $base $size -1)) -}}
{{- fail (printf "%s %s is not a host address of serviceCIDR %s" .what .ip .ctx.Values.serviceCIDR) -}}
{{- end -}}
{{- end -}}

{{/* The etcd members' ClusterIPs as a JSON list, checked: one per member, distinct, inside serviceCIDR. */}}
{{- define "chaos-lab.etcdIPs" -}}
{{- $members := int .Values.etcd.members -}}
{{- if lt $members 1 -}}{{- fail "etcd.members must be at least 1" -}}{{- end -}}
{{- $ips := list -}}
{{- if .Values.etcd.clusterIPs -}}
{{- if ne (len .Values.etcd.clusterIPs) $members -}}
{{- fail (printf "etcd.clusterIPs has %d addresses for %d members: give one per member" (len .Values.etcd.clusterIPs) $members) -}}
{{- end -}}
{{- $ips = .Values.etcd.clusterIPs -}}
{{- else -}}
{{- $first := include "chaos-lab.ipToInt" .Values.etcd.firstClusterIP | int64 -}}
{{- range $i := until $members -}}
{{- $ips = append $ips (include "chaos-lab.intToIp" (add $first $i)) -}}
{{- end -}}
{{- end -}}
{{- range $i, $ip := $ips -}}
{{- include "chaos-lab.checkServiceIP" (dict "ctx" $ "ip" $ip "what" (printf "etcd member %d's ClusterIP" $i)) -}}
{{- end -}}
{{- if ne (len (uniq $ips)) (len $ips) -}}{{- fail (printf "etcd's ClusterIPs are not distinct: %v" $ips) -}}{{- end -}}
{{- if and .Values.prometheus.enabled .Values.prometheus.clusterIP (has .Values.prometheus.clusterIP $ips) -}}
{{- fail (printf "prometheus.clusterIP %s is also an etcd member's" .Values.prometheus.clusterIP) -}}
{{- end -}}
{{- toJson $ips -}}
{{- end -}}

{{/* The nodes' --etcd: every member's client URL. */}}
{{- define "chaos-lab.etcdClientURLs" -}}
{{- $urls := list -}}
{{- range include "chaos-lab.etcdIPs" . | fromJsonArray -}}
{{- $urls = append $urls (printf "http://%s:2379" .) -}}
{{- end -}}
{{- join "," $urls -}}
{{- end -}}

{{/* Where etcd's data and the journals live. */}}
{{- define "chaos-lab.storageVolume" -}}
{{- if .Values.storage.hostPath -}}
hostPath:
  path: {{ printf "%s/%s" (.Values.storage.hostPath | trimSuffix "/") .Release.Namespace }}
  type: DirectoryOrCreate
{{- else -}}
emptyDir: {}
{{- end -}}
{{- end -}}
