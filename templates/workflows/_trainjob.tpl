{{/* bigbertha.finetune.trainJobStep: (dict "ctx" . "args" <finetune args> "resources" <map> "gpus" <n>) -> the finetune step as an Argo resource template: it creates a Kubeflow Trainer TrainJob (trainer.kubeflow.org/v1alpha1, Trainer 2.3) on the release's TrainingRuntime and waits for it.
The TrainJob's pods run the same `bigbertha finetune` as the container step; Trainer's torch plugin sets PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK and PET_MASTER_ADDR in them (kubeflow/trainer v2.3.0 pkg/runtime/framework/plugins/torch/torch.go, EnforceMLPolicy), which `bigbertha finetune` hands to torchrun (src/bigbertha/training/distributed.py). */}}
{{- define "bigbertha.finetune.trainJobStep" -}}
{{- $ctx := .ctx -}}
{{- $f := $ctx.Values.workflows.finetune -}}
{{- $fullname := include "bigbertha.fullname" $ctx -}}
{{- /* Workflow parameters come from the alert, so hostile text: each goes into the manifest as a
       JSON string that Argo's expression toJson quotes (util/expr/env/env.go), never raw. */}}
{{- $args := list -}}
{{- range .args -}}
{{- $param := regexFind `^\{\{inputs\.parameters\.[a-z-]+\}\}$` . | trimPrefix "{{inputs.parameters." | trimSuffix "}}" -}}
{{- $args = append $args (ne $param "" | ternary (printf "__bigbertha_parameter_%s__" $param) .) -}}
{{- end -}}
{{- $labels := include "bigbertha.labels" (dict "ctx" $ctx "component" "trainer") | fromYaml -}}
{{- $_ := set $labels "workflows.argoproj.io/workflow" "{{workflow.name}}" -}}
{{- $trainJob := dict
      "apiVersion" "trainer.kubeflow.org/v1alpha1"
      "kind" "TrainJob"
      "metadata" (dict "generateName" "{{workflow.name}}-" "labels" $labels)
      "spec" (dict
        "runtimeRef" (dict "apiGroup" "trainer.kubeflow.org" "kind" "TrainingRuntime" "name" (printf "%s-finetune" $fullname))
        "activeDeadlineSeconds" ($f.activeDeadlineSeconds | int)
        "trainer" (dict
          "numNodes" ($f.trainJob.numNodes | int)
          "numProcPerNode" (max 1 .gpus)
          "resourcesPerNode" .resources
          "args" $args)) -}}
{{- $manifest := toJson $trainJob -}}
{{- range $name := list "alert-name" "alert-labels" -}}
{{- $manifest = replace (printf "%q" (printf "__bigbertha_parameter_%s__" $name)) (printf "{{=toJson(inputs.parameters['%s'])}}" $name) $manifest -}}
{{- end -}}
# The step's pod only creates the TrainJob and waits: the TrainJob fails when its Job does
# (backoffLimit 0, no JobSet restart: a lost node ends the run, whose nodes cannot rejoin a
# torch rendezvous), and that fails the step. Only the waiting pod's own errors are retried.
retryStrategy:
  limit: {{ $f.retry.limit }}
  retryPolicy: Always
  expression: {{ `lastRetry.status == "Error"` | quote }}
  backoff:
    {{- toYaml $f.retry.backoff | nindent 4 }}
resource:
  action: create
  # Deleted with the Workflow (workflows.podGC/ttlStrategy), its pods with it.
  setOwnerReference: true
  # Argo's conditions are label selectors over gjson paths (workflow/executor/resource.go,
  # matchConditions), which cannot search the conditions list: the runtime's one replicated
  # Job ("node") is read instead.
  successCondition: status.jobsStatus.0.succeeded > 0
  failureCondition: status.jobsStatus.0.failed > 0
  manifest: {{ $manifest | quote }}
{{- end -}}
