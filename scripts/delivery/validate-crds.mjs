// Validates the chart's custom resources (ServiceMonitor, PrometheusRule,
// HTTPRoute), which the core Kubernetes schemas do not carry, against the
// Prometheus Operator and Gateway API schemas packaged by kubernetes-models
// (types, enums, required fields; unknown fields are not rejected there).
// Usage: node validate-crds.mjs objects.json  (a JSON array of objects)
import { readFileSync } from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { HTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute";

const models = {
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
  "gateway.networking.k8s.io/v1/HTTPRoute": HTTPRoute,
};

let failed = 0;
for (const obj of JSON.parse(readFileSync(process.argv[2], "utf8"))) {
  const key = `${obj.apiVersion}/${obj.kind}`;
  const Model = models[key];
  if (!Model) {
    console.log(`FAIL no schema for ${key} ${obj.metadata?.name}`);
    failed++;
    continue;
  }
  try {
    new Model(obj).validate();
    console.log(`ok   ${key} ${obj.metadata.name}`);
  } catch (e) {
    console.log(`FAIL ${key} ${obj.metadata?.name}: ${e.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
