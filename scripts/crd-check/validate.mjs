// Validates prometheus-operator custom resources (monitoring.coreos.com/v1) in rendered
// manifests, offline: kubeconform has no schema for them without a network. The validators
// come from @kubernetes-models/prometheus-operator, generated from the operator's CRD schemas
// (types, required fields, enums, patterns). Unknown fields are NOT reported by them.
//   node validate.mjs rendered.yaml...   (every other kind is left to kubeconform)
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const MODELS = { PodMonitor, ServiceMonitor, PrometheusRule };
let checked = 0;
let failed = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of parseAllDocuments(readFileSync(file, "utf8"))) {
    if (doc.errors.length) {
      console.error(`${file}: YAML error: ${doc.errors[0].message}`);
      failed++;
      continue;
    }
    const obj = doc.toJS();
    if (!obj || obj.apiVersion !== "monitoring.coreos.com/v1") continue;
    const Model = MODELS[obj.kind];
    const name = `${file} - ${obj.kind} ${obj.metadata?.name}`;
    checked++;
    if (!Model) {
      console.error(`${name}: no validator for this kind`);
      failed++;
      continue;
    }
    try {
      new Model(obj).validate();
      console.log(`${name}: valid`);
    } catch (err) {
      console.error(`${name}: ${err.message}`);
      failed++;
    }
  }
}
console.log(`crd-check: ${checked} custom resources, ${failed} invalid`);
process.exit(failed ? 1 : 0);
