"""A local event gateway: Argo Events and Argo Workflows on one machine, for `bigbertha demo`.

It does not re-implement our pipeline; it interprets the objects the CHART renders:

- receives Alertmanager's webhook (bearer token checked, as the Argo webhook EventSource's
  `authSecret` does) and MinIO notifications (the webhook-target form, key query-escaped),
  and wraps each into the event data the Argo Sensor sees (`{header, body}` for the webhook,
  `{notification: [...]}` with the raw key for MinIO's listen API);
- applies each Sensor dependency's data filters with gjson paths (pygjson, a port of the
  tidwall/gjson library Argo Events uses) and unanchored regular expressions, as Argo does;
- builds the Workflow from the trigger's resource and parameters (dataKey; dataTemplate, run
  by Helm's Go text/template + sprig engine as argo-events runs it, see chart.go_template;
  value; dest with overwrite/append/prepend), so the one-run-per-alert-episode rule holds: a
  Workflow whose name already exists is refused, as the API server refuses a duplicate name;
- runs the WorkflowTemplate's DAG tasks in dependency order as local `bigbertha` processes
  with the same arguments, holding the template's mutex (one run at a time): `depends`
  expressions on task results, `when` conditions, output parameters read from the file each
  step writes at `{{outputs.parameters.<name>.path}}`; retrying a step as its rendered
  `retryStrategy` says (`limit`, and the `expression` evaluated on the attempt's status and
  exit code), and running the `onExit` handler; mutexes and semaphores (limits from the
  chart's ConfigMap) bound concurrency as the controller does.

Keep it small: it is a development aid; the cluster runs on Argo.
"""

from __future__ import annotations

import copy
import hmac
import json
import logging
import re
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bigbertha.core import payloads
from bigbertha.core.errors import InputError

log = logging.getLogger(__name__)

#: Alertmanager groups and MinIO notifications are a few KiB; larger bodies are refused (413).
MAX_BODY_BYTES = 1024 * 1024
#: waitress' own limits for the gateway's server: header and body size, idle connection time.
SERVER_LIMITS = {
    "max_request_header_size": 65536,
    "max_request_body_size": MAX_BODY_BYTES,
    "channel_timeout": 30,
}

Manifest = dict[str, Any]
# A step runner gets the argv and returns its exit code (the demo runs real processes).
Runner = Callable[[list[str]], int]


# --- events as the Sensor sees them -------------------------------------------------------


def webhook_event(body: Mapping[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
    """Argo's webhook event data: headers as lists, Authorization masked, the JSON body."""
    header = {
        key: ["*** Masked Auth Secret ***" if key.lower() == "authorization" else value]
        for key, value in headers.items()
    }
    return {"header": header, "body": dict(body)}


def minio_event_from_notification(notification: Mapping[str, Any]) -> dict[str, Any]:
    """Argo's MinIO event data from a MinIO notification.

    A notification *target* (webhook) POST carries top-level `EventName` and `Key` and escapes
    `s3.object.key` with Go's url.QueryEscape (`+` for a space); a listen-API line has only
    `Records`, with the key raw. Argo's MinIO EventSource uses the listen API: keys go on raw.
    """
    records = copy.deepcopy(list(notification.get("Records") or []))
    if not records:
        raise ValueError("MinIO notification has no Records")
    if "Key" in notification:  # the escaped, webhook-target form
        for record in records:
            obj = record["s3"]["object"]
            obj["key"] = urllib.parse.unquote_plus(obj["key"])
    return {"notification": records}


# --- Sensor interpretation ------------------------------------------------------------------


def _gjson(data: Mapping[str, Any], path: str) -> Any:
    import pygjson  # the same path language as the Sensor; imported lazily (Rust extension)

    return pygjson.get(json.dumps(data), path)


def data_filters_pass(filters: Mapping[str, Any] | None, data: Mapping[str, Any]) -> bool:
    """Argo's data filter: every path must exist and match one of its values (AND by default).

    Only the `data` filter kind is interpreted; a Sensor using others is refused loudly,
    so the gateway never silently disagrees with the cluster.
    """
    if not filters:
        return True
    unsupported = set(filters) - {"data", "dataLogicalOperator"}
    if unsupported:
        raise ValueError(f"gateway does not interpret Sensor filters {sorted(unsupported)}")
    any_mode = filters.get("dataLogicalOperator") == "or"
    results = []
    for rule in filters.get("data") or []:
        result = _gjson(data, rule["path"])
        if not result.exists():
            results.append(False)
            continue
        results.append(_value_matches(rule, result))
    return any(results) if any_mode else all(results)


def _value_matches(rule: Mapping[str, Any], result: Any) -> bool:
    kind = rule.get("type", "string")
    comparator = rule.get("comparator", "=") or "="
    values = [str(v) for v in rule.get("value") or []]
    if kind == "string":
        matched = [re.search(v, result.to_str()) is not None for v in values]
        return any(matched) if comparator == "=" else any(not m for m in matched)
    if kind == "bool":
        return any(v.lower() == str(result.to_bool()).lower() for v in values)
    if kind == "number":
        ops: dict[str, Callable[[float, float], bool]] = {
            "=": lambda a, b: a == b,
            "!=": lambda a, b: a != b,
            ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b,
            "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b,
        }
        return any(ops[comparator](result.to_float(), float(v)) for v in values)
    raise ValueError(f"unsupported data filter type {kind!r}")


def _parameter_value(src: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    """A trigger parameter's value, in Argo's order: dataTemplate, then dataKey, then value.

    argo-events v1.9.10 pkg/sensors/triggers/params.go, ResolveParamValue: a template that
    fails or yields nothing falls back to the key, then to the default value.
    """
    if "dataTemplate" in src:
        from bigbertha.local.chart import go_template

        try:
            return go_template(src["dataTemplate"], data)
        except ValueError as exc:
            log.warning("%s; falling back to dataKey or value", exc)
    if "dataKey" in src:
        result = _gjson(data, src["dataKey"])
        if result.exists():
            return str(result.to_str())
    if "value" in src:  # Argo's default when neither resolved
        return str(src["value"])
    raise ValueError(f"parameter source {dict(src)} resolved to nothing")


def _set_path(obj: dict[str, Any], dest: str, value: str, operation: str) -> None:
    """Argo's `dest` (sjson path with numeric array indexes) with overwrite/append/prepend."""
    parts = dest.split(".")
    node: Any = obj
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    last = parts[-1]
    key: Any = int(last) if isinstance(node, list) else last
    current = node[key] if (isinstance(node, list) or key in node) else ""
    current = "" if current is None else str(current)
    if operation == "append":
        value = current + value
    elif operation == "prepend":
        value = value + current
    node[key] = value


@dataclass
class Trigger:
    """One Sensor trigger: the Workflow it submits, filled from the event."""

    sensor: str
    dependency: str
    event_source: str
    event_name: str
    filters: dict[str, Any]
    resource: dict[str, Any]
    parameters: list[dict[str, Any]]

    def matches(self, event_source: str, event_name: str, data: Mapping[str, Any]) -> bool:
        if (event_source, event_name) != (self.event_source, self.event_name):
            return False
        return data_filters_pass(self.filters, data)

    def workflow(self, data: Mapping[str, Any]) -> dict[str, Any]:
        workflow = copy.deepcopy(self.resource)
        for param in self.parameters:
            value = _parameter_value(param["src"], data)
            _set_path(workflow, param["dest"], value, param.get("operation", "overwrite"))
        return workflow


def triggers_from(manifests: Sequence[Manifest]) -> list[Trigger]:
    """Every argoWorkflow trigger of every rendered Sensor (one dependency per trigger)."""
    found = []
    for sensor in (m for m in manifests if m.get("kind") == "Sensor"):
        deps = {d["name"]: d for d in sensor["spec"]["dependencies"]}
        for trig in sensor["spec"]["triggers"]:
            spec = trig["template"]["argoWorkflow"]
            params = spec.get("parameters") or []
            names = {p["src"]["dependencyName"] for p in params} or set(deps)
            if len(names) != 1:
                raise ValueError(f"Sensor {sensor['metadata']['name']}: one dependency per trigger")
            dep = deps[names.pop()]
            found.append(
                Trigger(
                    sensor=sensor["metadata"]["name"],
                    dependency=dep["name"],
                    event_source=dep["eventSourceName"],
                    event_name=dep["eventName"],
                    filters=dep.get("filters") or {},
                    resource=spec["source"]["resource"],
                    parameters=params,
                )
            )
    return found


# --- Workflow execution ---------------------------------------------------------------------

_PARAM = re.compile(r"\{\{\s*([a-zA-Z0-9_.\-]+)\s*\}\}")


def substitute(text: str, scope: Mapping[str, str]) -> str:
    """Argo's simple `{{name}}` substitution; unknown names are an error, as in Argo."""

    def repl(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in scope:
            raise KeyError(f"unresolved workflow variable {{{{{name}}}}}")
        return scope[name]

    return _PARAM.sub(repl, text)


# A task reference in `depends`: a name, optionally with the result it must have.
_TASK_REF = re.compile(
    r"\b([A-Za-z0-9][A-Za-z0-9-]*)"
    r"(?:\.(Succeeded|Failed|Errored|Skipped|Omitted|Daemoned|AnySucceeded|AllFailed))?\b"
)
# `depends: task` alone: what Argo accepts as done (docs/enhanced-depends-logic.md).
_DONE = ("Succeeded", "Skipped", "Daemoned")


def _dependencies(task: Mapping[str, Any]) -> set[str]:
    if "dependencies" in task:
        return set(task["dependencies"] or [])
    return {m.group(1) for m in _TASK_REF.finditer(task.get("depends", ""))}


def _toposort(tasks: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """DAG tasks in an order respecting `depends` (an expression) or `dependencies`."""
    remaining = {t["name"]: t for t in tasks}
    done: set[str] = set()
    ordered = []
    while remaining:
        ready = [t for t in remaining.values() if _dependencies(t) <= done]
        if not ready:
            raise ValueError(f"DAG has a cycle or unknown dependency among {sorted(remaining)}")
        for task in ready:
            ordered.append(task)
            done.add(task["name"])
            del remaining[task["name"]]
    return ordered


def depends_satisfied(task: Mapping[str, Any], phases: Mapping[str, str]) -> bool:
    """Argo's `depends`: `a.Succeeded && (b || !c.Failed)` on the finished tasks' phases; a
    bare name means Succeeded, Skipped or Daemoned (as do legacy `dependencies`)."""
    if "dependencies" in task:
        return all(phases[name] in _DONE for name in task["dependencies"] or [])
    expression = task.get("depends", "")
    if not expression.strip():
        return True

    def phase(match: re.Match[str]) -> str:
        name, wanted = match.group(1), match.group(2)
        actual = phases[name]
        ok = actual in _DONE if wanted is None else actual == wanted
        return " True " if ok else " False "

    return _boolean(_TASK_REF.sub(phase, expression), expression)


_WHEN = re.compile(r"^\s*(\S+?|\"[^\"]*\"|'[^']*')\s*(==|!=)\s*(\S+?|\"[^\"]*\"|'[^']*')\s*$")


def when_true(condition: str) -> bool:
    """A task's `when` after substitution: `a == b` or `a != b`, unquoted words being strings
    (as Argo's govaluate use, shouldExecute, treats them). Anything else is a ValueError."""
    match = _WHEN.match(condition)
    if not match:
        raise ValueError(f"when {condition!r}: the gateway evaluates only 'a == b' and 'a != b'")
    left, op, right = (part.strip("\"'") for part in match.groups())
    return (left == right) if op == "==" else (left != right)


_EXPR_TOKENS = re.compile(r"\|\||&&|!(?!=)")
_EXPR_WORDS = {"||": " or ", "&&": " and ", "!": " not "}


def _logic(source: str, leaf: Callable[[Any, Callable[[Any], Any]], Any]) -> bool:
    """Evaluate `source` (joined by &&, ||, ! and parentheses) without eval(); `leaf(node,
    value)` evaluates every other node or raises ValueError."""
    import ast

    python = _EXPR_TOKENS.sub(lambda m: _EXPR_WORDS[m.group(0)], source)

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.BoolOp):
            results = [value(v) for v in node.values]
            return all(results) if isinstance(node.op, ast.And) else any(results)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return not value(node.operand)
        return leaf(node, value)

    return bool(value(ast.parse(python.strip(), mode="eval").body))


def _boolean(python: str, expression: str) -> bool:
    """A `depends` expression whose task references are already True or False."""
    import ast

    def leaf(node: Any, value: Callable[[Any], Any]) -> bool:
        if isinstance(node, ast.Constant) and isinstance(node.value, bool):
            return node.value
        raise ValueError(f"depends {expression!r}: unsupported {ast.dump(node)}")

    return _logic(python, leaf)


def retry_wanted(expression: str | None, status: str, exit_code: int) -> bool:
    """Whether Argo retries a finished attempt, by its `retryStrategy.expression`.

    Evaluates the expr-lang subset the chart renders: ``lastRetry.status`` and
    ``lastRetry.exitCode`` (a string, as Argo exposes it) compared with ``==``/``!=`` to string
    literals, joined by ``||``, ``&&``, ``!`` and parentheses. No expression: every failure is
    retried (``retryPolicy: Always``). Anything else raises ValueError: the gateway refuses to
    guess what a cluster would do.
    """
    if not expression:
        return True
    import ast

    fields = {"status": status, "exitCode": str(exit_code)}

    def leaf(node: Any, value: Callable[[Any], Any]) -> Any:
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            left, right = value(node.left), value(node.comparators[0])
            if isinstance(node.ops[0], ast.Eq):
                return left == right
            if isinstance(node.ops[0], ast.NotEq):
                return left != right
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "lastRetry"
            and node.attr in fields
        ):
            return fields[node.attr]
        raise ValueError(f"retryStrategy.expression {expression!r}: unsupported {ast.dump(node)}")

    return _logic(expression, leaf)


@dataclass
class WorkflowRun:
    """The record of one Workflow run, for the demo's timeline and report."""

    name: str
    template: str
    arguments: dict[str, str]
    status: str = "Pending"
    steps: list[dict[str, Any]] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    message: str = ""
    phases: dict[str, str] = field(default_factory=dict)  # DAG task -> Succeeded, Skipped, ...


class WorkflowEngine:
    """Runs WorkflowTemplates' DAGs locally; one lock per mutex name, names never reused."""

    def __init__(self, manifests: Sequence[Manifest], runner: Runner) -> None:
        self.templates = {
            m["metadata"]["name"]: m for m in manifests if m.get("kind") == "WorkflowTemplate"
        }
        self.runner = runner
        self.runs: list[WorkflowRun] = []
        self._names: set[str] = set()
        self._guard = threading.Lock()
        # Mutexes are semaphores of one; a semaphore's limit is a ConfigMap key, as in Argo.
        self._configmaps = {
            m["metadata"]["name"]: m.get("data") or {}
            for m in manifests
            if m.get("kind") == "ConfigMap"
        }
        self._semaphores: dict[str, threading.Semaphore] = {}

    def submit(self, workflow: Mapping[str, Any]) -> WorkflowRun | None:
        """Register a Workflow; None when its name already exists (the cooldown refusal)."""
        name = workflow["metadata"]["name"]
        ref = workflow["spec"]["workflowTemplateRef"]["name"]
        if ref not in self.templates:
            raise ValueError(f"Workflow {name}: no WorkflowTemplate {ref} in the chart")
        template = self.templates[ref]
        args = {
            p["name"]: str(p.get("value", ""))
            for p in template["spec"].get("arguments", {}).get("parameters", [])
        }
        args.update(
            {
                p["name"]: str(p["value"])
                for p in workflow["spec"].get("arguments", {}).get("parameters", [])
                if p.get("value") is not None
            }
        )
        with self._guard:
            if name in self._names:
                log.info("workflow %s already exists: refused (cooldown)", name)
                return None
            self._names.add(name)
            run = WorkflowRun(name=name, template=ref, arguments=args)
            self.runs.append(run)
        return run

    def execute(self, run: WorkflowRun) -> WorkflowRun:
        """Run the DAG under the template's mutexes, then the exit handler."""
        spec = self.templates[run.template]["spec"]
        locks = self._sync_locks(spec.get("synchronization") or {})
        for lock in locks:
            lock.acquire()
        try:
            run.started = time.time()
            run.status = "Running"
            failures = self._run_dag(run, spec)
            run.status = "Failed" if failures else "Succeeded"
            run.message = "; ".join(failures)
            if spec.get("onExit"):
                scope = self._workflow_scope(run) | {
                    "workflow.status": run.status,
                    "workflow.failures": json.dumps(
                        [{"displayName": f, "message": "failed"} for f in failures]
                    ),
                }
                self._run_template(run, spec, spec["onExit"], scope, {}, spec["onExit"])
            run.finished = time.time()
        finally:
            for lock in reversed(locks):
                lock.release()
        return run

    def _sync_locks(self, sync: Mapping[str, Any]) -> list[threading.Semaphore]:
        """The workflow-level mutexes and semaphores, in a fixed order (no lock-order deadlock)."""
        wanted: dict[str, int] = {f"mutex/{m['name']}": 1 for m in sync.get("mutexes", [])}
        for sem in sync.get("semaphores", []):
            ref = sem["configMapKeyRef"]
            limit = int(self._configmaps.get(ref["name"], {}).get(ref["key"], 0) or 0)
            if limit < 1:
                raise ValueError(f"semaphore {ref['name']}/{ref['key']}: no limit in the chart")
            wanted[f"semaphore/{ref['name']}/{ref['key']}"] = limit
        with self._guard:
            return [
                self._semaphores.setdefault(key, threading.Semaphore(limit))
                for key, limit in sorted(wanted.items())
            ]

    def _workflow_scope(self, run: WorkflowRun) -> dict[str, str]:
        scope = {"workflow.name": run.name}
        scope.update({f"workflow.parameters.{k}": v for k, v in run.arguments.items()})
        return scope

    def _templates(self, spec: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
        return {t["name"]: t for t in spec["templates"]}

    def _run_dag(self, run: WorkflowRun, spec: Mapping[str, Any]) -> list[str]:
        entry = self._templates(spec)[spec["entrypoint"]]
        scope = self._workflow_scope(run)
        # The entrypoint's inputs come from the Workflow's arguments.
        entry_inputs = {
            f"inputs.parameters.{p['name']}": run.arguments.get(p["name"], p.get("value", ""))
            for p in (entry.get("inputs") or {}).get("parameters", [])
        }
        if "dag" not in entry:
            ok, _ = self._run_template(run, spec, entry["name"], scope, entry_inputs)
            return [] if ok else [entry["name"]]
        failures = []
        outputs: dict[str, str] = {}
        for task in _toposort(entry["dag"]["tasks"]):
            name = task["name"]
            if not depends_satisfied(task, run.phases):
                run.phases[name] = "Omitted"  # e.g. after a failed or skipped task
                continue
            task_scope = scope | entry_inputs | outputs
            if task.get("when") and not when_true(substitute(task["when"], task_scope)):
                run.phases[name] = "Skipped"
                log.info("workflow %s task %s skipped (when: %s)", run.name, name, task["when"])
                continue
            if "withParam" in task:
                fanned, produced = self._fan_out(run, spec, task, scope, task_scope)
                if fanned is None:  # an empty list: Skipped
                    continue
                ok = fanned
            else:
                inputs = {
                    f"inputs.parameters.{p['name']}": substitute(
                        str(p.get("value", "")), task_scope
                    )
                    for p in (task.get("arguments") or {}).get("parameters", [])
                }
                ok, produced = self._run_template(run, spec, task["template"], scope, inputs, name)
            run.phases[name] = "Succeeded" if ok else "Failed"
            if not ok:
                failures.append(name)
            outputs |= {f"tasks.{name}.outputs.parameters.{k}": v for k, v in produced.items()}
        return failures

    def _fan_out(
        self,
        run: WorkflowRun,
        spec: Mapping[str, Any],
        task: Mapping[str, Any],
        scope: Mapping[str, str],
        task_scope: Mapping[str, str],
    ) -> tuple[bool | None, dict[str, str]]:
        """A `withParam` task: one run of its template per item of the JSON list, at most the
        Workflow's `parallelism` at once; each output parameter comes back as the JSON list of
        the items' values, as Argo aggregates them. (None, {}) when the list is empty: the task
        is Skipped, as in Argo."""
        from concurrent.futures import ThreadPoolExecutor

        name = task["name"]
        items = json.loads(substitute(str(task["withParam"]), task_scope))
        if not isinstance(items, list):
            raise ValueError(f"task {name}: withParam is not a JSON list: {items!r}")
        if not items:
            run.phases[name] = "Skipped"
            return None, {}

        def one(index: int) -> tuple[bool, dict[str, str]]:
            item = items[index]
            item_scope = dict(task_scope) | {
                "item": item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
            }
            inputs = {
                f"inputs.parameters.{p['name']}": substitute(str(p.get("value", "")), item_scope)
                for p in (task.get("arguments") or {}).get("parameters", [])
            }
            display = f"{name}({index})"
            return self._run_template(run, spec, task["template"], scope, inputs, display)

        cap = int(spec.get("parallelism") or 0) or len(items)
        with ThreadPoolExecutor(max_workers=min(cap, len(items))) as pool:
            results = list(pool.map(one, range(len(items))))
        names = {k for _, produced in results for k in produced}
        aggregated = {k: json.dumps([produced.get(k) for _, produced in results]) for k in names}
        return all(ok for ok, _ in results), aggregated

    def _run_template(
        self,
        run: WorkflowRun,
        spec: Mapping[str, Any],
        template_name: str,
        scope: Mapping[str, str],
        inputs: Mapping[str, str],
        display: str | None = None,
    ) -> tuple[bool, dict[str, str]]:
        """Run one container template (with its retries); (succeeded, output parameters)."""
        template = self._templates(spec)[template_name]
        container = template["container"]
        declared = (template.get("outputs") or {}).get("parameters") or []
        with tempfile.TemporaryDirectory(prefix="bigbertha-step-") as tmp:
            # The step writes each output parameter where {{outputs.parameters.X.path}} says:
            # a file of this step locally, the template's valueFrom.path in a pod.
            paths = {p["name"]: str(Path(tmp) / p["name"]) for p in declared}
            full_scope = (
                dict(scope)
                | dict(inputs)
                | {f"outputs.parameters.{n}.path": path for n, path in paths.items()}
            )
            argv = [
                substitute(a, full_scope)
                for a in [*container.get("command", []), *container.get("args", [])]
            ]
            strategy = template.get("retryStrategy") or {}
            limit = int(strategy.get("limit", 0) or 0)
            step = {
                "name": display or template_name,
                "argv": argv,
                "attempts": 0,
                "started": time.time(),
            }
            run.steps.append(step)
            code = 1
            for attempt in range(limit + 1):
                step["attempts"] = attempt + 1
                code = self.runner(argv)
                # A local process that ran and exited non-zero is a "Failed" attempt to Argo.
                if code == 0 or not retry_wanted(strategy.get("expression"), "Failed", code):
                    break
            produced = {}
            for param in declared if code == 0 else []:
                path = Path(paths[param["name"]])
                default = (param.get("valueFrom") or {}).get("default")
                if path.is_file():
                    produced[param["name"]] = path.read_text(encoding="utf-8")
                elif default is not None:
                    produced[param["name"]] = str(default)
                else:  # Argo fails a step whose output parameter file is missing
                    log.error("workflow %s step %s wrote no %s", run.name, step["name"], path)
                    code = 1
        step.update(exit_code=code, finished=time.time(), outputs=produced)
        log.info("workflow %s step %s exited %d", run.name, step["name"], code)
        return code == 0, produced


# --- the HTTP front: EventSources ------------------------------------------------------------


class Unauthorized(Exception):
    """The webhook request did not carry the expected bearer token."""


def alert_problem(alert: Any) -> str | None:
    """Why one alert of an Alertmanager webhook body cannot be used, or None.

    Alertmanager's webhook format (its notify/webhook `Message`, template `Alert`): `labels`
    and `annotations` are string-to-string maps, `status`, `fingerprint`, `startsAt` strings.
    """
    if not isinstance(alert, dict):
        return f"must be an object, not {type(alert).__name__}"
    labels = alert.get("labels")
    if not isinstance(labels, dict):
        return f"labels: must be an object of strings, not {type(labels).__name__}"
    bad = sorted(str(k) for k, v in labels.items() if not isinstance(v, str))
    if bad:
        return f"labels: values must be strings ({', '.join(bad)})"
    for key in ("status", "fingerprint", "startsAt", "endsAt", "generatorURL"):
        if key in alert and not isinstance(alert[key], str):
            return f"{key}: must be a string, not {type(alert[key]).__name__}"
    if "annotations" in alert and not isinstance(alert["annotations"], dict):
        return f"annotations: must be an object, not {type(alert['annotations']).__name__}"
    return None


def split_alerts(body: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The body with only its usable alerts, and one "alerts[i]: reason" per refused one.

    InputError when `alerts` is not a list: there is nothing to keep."""
    alerts = body.get("alerts")
    if not isinstance(alerts, list):
        raise InputError(
            f"alertmanager webhook body: alerts: must be a list, not {type(alerts).__name__}"
        )
    kept, refused = [], []
    for index, alert in enumerate(alerts):
        problem = alert_problem(alert)
        if problem is None:
            kept.append(alert)
        else:
            refused.append(f"alerts[{index}]: {problem}")
    return {**body, "alerts": kept}, refused


@dataclass
class Gateway:
    """EventSources + Sensors + Workflows from the rendered chart, on one machine."""

    manifests: Sequence[Manifest]
    runner: Runner
    token: str
    on_run: Callable[[WorkflowRun], None] | None = None

    def __post_init__(self) -> None:
        self.triggers = triggers_from(self.manifests)
        self.engine = WorkflowEngine(self.manifests, self.runner)
        self.webhooks: dict[str, tuple[str, str]] = {}
        self.minio: list[tuple[str, str, dict[str, Any]]] = []
        for source in (m for m in self.manifests if m.get("kind") == "EventSource"):
            name = source["metadata"]["name"]
            for event_name, hook in (source["spec"].get("webhook") or {}).items():
                self.webhooks[hook["endpoint"]] = (name, event_name)
            for event_name, spec in (source["spec"].get("minio") or {}).items():
                self.minio.append((name, event_name, spec))
        self._threads: list[threading.Thread] = []

    def authorized(self, headers: Mapping[str, str]) -> bool:
        """The webhook's bearer token, compared in constant time."""
        given = headers.get("Authorization") or ""
        return hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())

    # Alertmanager -> webhook EventSource
    def alertmanager(
        self,
        endpoint: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        refused: list[str] | None = None,
    ) -> list[WorkflowRun]:
        """Dispatch the usable alerts of `body`; each refused one is appended to `refused`
        with its reason (one malformed alert never stops the others)."""
        if endpoint not in self.webhooks:
            raise KeyError(f"no webhook EventSource serves {endpoint}")
        if not self.authorized(headers):
            raise Unauthorized(endpoint)
        source, event_name = self.webhooks[endpoint]
        usable, bad = split_alerts(body)
        if refused is not None:
            refused.extend(bad)
        for line in bad:
            log.warning("alertmanager webhook: refused %s", line)
        if not usable["alerts"]:
            return []
        return self.dispatch(source, event_name, webhook_event(usable, headers))

    # MinIO -> MinIO EventSource (bucket, event type and key filters as MinIO's listen API)
    def object_store(self, notification: Mapping[str, Any]) -> list[WorkflowRun]:
        try:
            data = minio_event_from_notification(notification)
            record = data["notification"][0]
            bucket, key = record["s3"]["bucket"]["name"], record["s3"]["object"]["key"]
            event_type = record["eventName"]
            if not all(isinstance(v, str) for v in (bucket, key, event_type)):
                raise TypeError("bucket, key and eventName must be strings")
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise InputError(
                f"minio notification: not a MinIO event record ({type(exc).__name__}: {exc})"
            ) from None
        runs: list[WorkflowRun] = []
        for source, event_name, spec in self.minio:
            flt = spec.get("filter") or {}
            if (
                spec["bucket"]["name"] == bucket
                and any(_glob(p, event_type) for p in spec.get("events", []))
                and key.startswith(flt.get("prefix") or "")
                and key.endswith(flt.get("suffix") or "")
            ):
                runs += self.dispatch(source, event_name, data)
        return runs

    def dispatch(
        self, event_source: str, event_name: str, data: Mapping[str, Any]
    ) -> list[WorkflowRun]:
        """Submit every matching trigger's Workflow and run it in the background."""
        runs = []
        for trigger in self.triggers:
            if not trigger.matches(event_source, event_name, data):
                continue
            workflow = trigger.workflow(data)
            meta = workflow["metadata"]
            if "name" not in meta:
                meta["name"] = meta.pop("generateName", "workflow-") + uuid.uuid4().hex[:5]
            run = self.engine.submit(workflow)
            if run is None:
                continue
            self._start(run)
            runs.append(run)
        return runs

    def submit(self, template: str, parameters: Mapping[str, str]) -> WorkflowRun:
        """`argo submit --from workflowtemplate/<fullname>-<template> -p name=value`, run in the
        background (the demo's backfill)."""
        [ref] = [n for n in self.engine.templates if n.endswith(f"-{template}")]
        workflow = {
            "metadata": {"name": f"{ref}-{uuid.uuid4().hex[:5]}"},
            "spec": {
                "workflowTemplateRef": {"name": ref},
                "arguments": {
                    "parameters": [{"name": k, "value": v} for k, v in parameters.items()]
                },
            },
        }
        run = self.engine.submit(workflow)
        assert run is not None  # a fresh name is never refused
        self._start(run)
        return run

    def _start(self, run: WorkflowRun) -> None:
        thread = threading.Thread(target=self._execute, args=(run,), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _execute(self, run: WorkflowRun) -> None:
        self.engine.execute(run)
        if self.on_run:
            self.on_run(run)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every started Workflow; True when all finished in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in list(self._threads):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)
        return not any(t.is_alive() for t in self._threads)

    def flask_app(self) -> Any:
        """The HTTP endpoints: each webhook EventSource's endpoint, and /minio for MinIO.

        Bodies are read strictly (core/payloads.py): at most MAX_BODY_BYTES (413), UTF-8, JSON
        nested at most payloads.MAX_DEPTH deep, an object at the top; anything else is a 400
        with one line saying why, never a 500.
        """
        from flask import Flask, jsonify, request
        from werkzeug.exceptions import RequestEntityTooLarge

        app = Flask("bigbertha-gateway")
        app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

        def body(what: str) -> dict[str, Any]:
            return payloads.json_object(request.get_data(cache=False), what=what)

        @app.errorhandler(InputError)
        def bad_request(exc: InputError) -> Any:
            return jsonify(error=str(exc)), 400

        @app.errorhandler(RequestEntityTooLarge)
        def too_large(exc: RequestEntityTooLarge) -> Any:
            return jsonify(error=f"body: larger than {MAX_BODY_BYTES} bytes"), 413

        def unauthorized() -> Any:
            return jsonify(error="unauthorized"), 401

        def receive(endpoint: str) -> Any:
            if not self.authorized(dict(request.headers)):  # before reading the body
                return unauthorized()
            event = body("alertmanager webhook body")
            refused: list[str] = []
            try:
                runs = self.alertmanager(endpoint, event, dict(request.headers), refused)
            except ValueError as exc:  # a Sensor parameter the event cannot fill
                raise InputError(f"alertmanager webhook body: {exc}") from None
            if refused and len(refused) == len(event["alerts"]):  # nothing usable
                return jsonify(error="; ".join(refused), refused=refused), 400
            reply: dict[str, Any] = {"workflows": [r.name for r in runs]}
            if refused:
                reply["refused"] = refused
            return jsonify(reply)

        for endpoint in self.webhooks:
            app.add_url_rule(
                endpoint,
                endpoint=f"hook{endpoint}",
                view_func=lambda e=endpoint: receive(e),
                methods=["POST"],
            )

        @app.post("/minio")
        def minio() -> Any:
            # The same bearer token as the webhook: an unauthenticated post would start
            # ingestion of any key (Argo's MinIO EventSource reads with MinIO's credentials).
            if not self.authorized(dict(request.headers)):
                return unauthorized()
            runs = self.object_store(body("minio notification"))
            return jsonify(workflows=[r.name for r in runs])

        @app.get("/healthz")
        def healthz() -> Any:
            return jsonify(status="ok")

        return app


def _glob(pattern: str, value: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(value, pattern)
