#!/usr/bin/env bash
# Atlas's own UI showing a served model's lineage, a deployment's Properties tab and its
# version's live figures, as PNGs taken by headless Chromium.
#
#   bash scripts/atlas_screenshot.sh [LINEAGE.png [PROPERTIES.png [FIGURES.png]]]
#       (defaults: docs/atlas-lineage.png, docs/atlas-deployment-properties.png,
#        docs/atlas-version-figures.png)
#
# 1. Starts the project's Kafka and Apache Atlas (python -m local_services; each is reused
#    when already running; Atlas takes about a minute) -- or uses ATLAS_URL (with
#    ATLAS_USERNAME / ATLAS_PASSWORD, default admin/admin) and KAFKA_BOOTSTRAP_SERVERS.
# 2. Emits the lifecycle events of a demo model with the capture emitter (wine 1 in cluster
#    "demo": trained on file:///data/wine.csv, served from wine-requests to wine-scores, an
#    output schema change, scoring windows of two replicas with their inputs' distributions,
#    a training profile to compare them with) and loads them into Atlas through the sink
#    (`atlas-sink replay --target atlas-rest`, with a PII rule on the training data).
# 3. Opens the model version's lineage tab in Atlas's UI with headless Chromium (Debian's
#    `chromium`, installed with apt-get when missing and running as root), driven by
#    playwright-core (npm, cached in $SERVEMETA_CACHE_DIR or ~/.cache/servemeta), waits for
#    the graph to show all five nodes and writes the PNG; then opens the deployment's
#    Properties tab, waits for its attributes and writes the second PNG, and the same for the
#    version's figures (servemeta_serving_stats) for the third.
#
# Kafka and Atlas keep running afterwards, to browse the catalog at the printed address; stop
# them with `python -m local_services atlas stop` and `python -m local_services kafka stop`.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
OUT="$(realpath -m "${1:-docs/atlas-lineage.png}")"
OUT_PROPERTIES="$(realpath -m "${2:-docs/atlas-deployment-properties.png}")"
OUT_FIGURES="$(realpath -m "${3:-docs/atlas-version-figures.png}")"
PYTHON="${PYTHON:-python}"
CACHE="${SERVEMETA_CACHE_DIR:-$HOME/.cache/servemeta}"
PW_DIR="$CACHE/playwright-core"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
TOPIC="${SERVEMETA_SCREENSHOT_TOPIC:-servemeta.screenshot-demo}"
CLUSTER=demo

say() { printf 'atlas_screenshot: %s\n' "$*" >&2; }

# -- tools ------------------------------------------------------------------------------------
if [[ ! -x "$CHROMIUM" ]]; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        say "installing Debian's chromium (apt-get install -y chromium)..."
        apt-get install -y chromium >/dev/null || { apt-get update >/dev/null && apt-get install -y chromium >/dev/null; }
    else
        say "no Chromium at $CHROMIUM: install Debian's package (sudo apt-get install -y chromium) or set CHROMIUM"
        exit 1
    fi
fi
if [[ ! -f "$PW_DIR/node_modules/playwright-core/package.json" ]]; then
    command -v npm >/dev/null || { say "npm not found: install Node.js 18+ (apt-get install -y nodejs npm)"; exit 1; }
    say "installing playwright-core into $PW_DIR (npm, first run only)..."
    mkdir -p "$PW_DIR"
    npm install --prefix "$PW_DIR" --no-audit --no-fund --silent playwright-core@1 >&2
fi

# -- services ---------------------------------------------------------------------------------
if [[ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
    KAFKA_BOOTSTRAP_SERVERS="$("$PYTHON" -m local_services kafka start | tail -n 1)"
fi
export KAFKA_BOOTSTRAP_SERVERS
if [[ -z "${ATLAS_URL:-}" ]]; then
    ATLAS_URL="$("$PYTHON" -m local_services atlas start | tail -n 1)"
fi
export ATLAS_URL
export ATLAS_USERNAME="${ATLAS_USERNAME:-admin}" ATLAS_PASSWORD="${ATLAS_PASSWORD:-admin}"
say "Kafka at $KAFKA_BOOTSTRAP_SERVERS, Atlas at $ATLAS_URL"

# -- a demo model, through the emitter and the sink -------------------------------------------
"$PYTHON" - "$TOPIC" "$CLUSTER" <<'PY'
import os
import sys

from confluent_kafka.admin import AdminClient, NewTopic

from capture.config import EmitterConfig
from capture.dataschema import data_schema
from capture.emitter import Emitter
from capture.events import (
    Artifact, DataSource, Deployment, FieldSpec, Metric, ModelIdentity, ModelLoaded, ModelType,
    Runtime, Training,
)
from capture.profile import profile_features
import random

topic, cluster = sys.argv[1], sys.argv[2]
rng = random.Random(7)
bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
admin = AdminClient({"bootstrap.servers": bootstrap})
if topic not in admin.list_topics(timeout=15).topics:
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)

features = data_schema(
    [
        FieldSpec(name="alcohol", type="double", doc="percent by volume"),
        FieldSpec(name="color_intensity", type="double"),
        FieldSpec(name="proline", type="double"),
    ]
)
scores = data_schema([FieldSpec(name="cultivar", type="long", doc="predicted class")])
scores_v2 = data_schema(
    [
        FieldSpec(name="cultivar", type="long", doc="predicted class"),
        FieldSpec(name="probability", type="double", doc="of the predicted class"),
    ]
)
wine = ModelIdentity(name="wine", version="1")
loaded = ModelLoaded(
    model_type=ModelType(
        framework="sklearn", framework_version="1.5.0", algorithm="RandomForestClassifier"
    ),
    artifact=Artifact(
        uri="s3://models/wine/1/model.pkl", scheme="s3", encrypted_at_rest=True,
        access_mode="private",
    ),
    training=Training(
        sources=[DataSource(uri="file:///data/wine.csv", name="wine", format="csv", schema=features)],
        run_id="run-42",
        hyper_parameters={"n_estimators": "50", "max_depth": "8"},
    ),
    metrics=[Metric(name="accuracy", value=0.97, split="test")],
    input_schema=features,
    output_schema=scores,
    runtime=Runtime(language="python", language_version="3.11", host="scorer-0", replicas=2),
    inputs=["kafka://wine-requests"],
    outputs=["kafka://wine-scores"],
    owner="data-science",
    tags=["demo"],
    classifications=["Confidential"],
    training_profile=profile_features(
        {
            "alcohol": [rng.gauss(13.0, 0.8) for _ in range(500)],
            "color_intensity": [rng.gauss(5.0, 2.0) for _ in range(500)],
            "proline": [rng.gauss(750.0, 300.0) for _ in range(500)],
        }
    ),
)
deployment = Deployment(server_kind="python", server_name="wine-scorer", cluster=cluster)
delivered = 0
for replica in range(2):  # two replicas of the deployment, an emitter each
    with Emitter(EmitterConfig(bootstrap_servers=bootstrap, topic=topic), deployment) as emitter:
        if replica == 0:
            emitter.model_loaded(wine, loaded)
            emitter.schema_changed(wine, "OUTPUT", scores_v2, previous=scores)
        recorder = emitter.scoring_recorder(wine, window_seconds=3600)
        for _ in range(200):
            recorder.record(rng.lognormvariate(-5.5, 0.5))
            # Served alcohol runs a point higher than trained on: drift to see.
            recorder.record_features(
                {
                    "alcohol": rng.gauss(14.0, 0.8),
                    "color_intensity": rng.gauss(5.0, 2.0),
                    "proline": rng.gauss(750.0, 300.0),
                }
            )
        recorder.record(0.050, error="timeout")
    delivered += emitter.stats().delivered
print(f"emitted {delivered} events to {topic}", file=sys.stderr)
PY

SINK_TOPICS="$TOPIC" SINK_DLQ_TOPIC="$TOPIC.dlq" SINK_GROUP_ID=servemeta-screenshot \
SINK_CLASSIFICATION_RULES='[{"classification": "PII", "dataset_pattern": "wine\\.csv$"}]' \
    "$PYTHON" -m atlas_sink --log-level WARNING replay --from-beginning --target atlas-rest --no-progress >&2

guid_of() {  # guid_of version|deployment|figures: the guid of one of the demo's entities
    "$PYTHON" - "$CLUSTER" "$1" <<'PY'
import os
import sys

import requests

from atlas_sink.core import naming

cluster, kind = sys.argv[1:]
type_name, qualified_name = {
    "version": ("servemeta_model_version", naming.model_version("wine", "1", cluster)),
    "deployment": ("servemeta_deployment", naming.deployment("wine-scorer", "wine", cluster)),
    "figures": (
        "servemeta_serving_stats", naming.serving_stats("wine-scorer", "wine", "1", cluster)
    ),
}[kind]
answer = requests.get(
    f"{os.environ['ATLAS_URL']}/api/atlas/v2/entity/uniqueAttribute/type/{type_name}",
    params={"attr:qualifiedName": qualified_name, "ignoreRelationships": "true"},
    auth=(os.environ["ATLAS_USERNAME"], os.environ["ATLAS_PASSWORD"]),
    timeout=30,
)
if answer.status_code != 200:
    sys.exit(f"Atlas has no {type_name} {qualified_name!r} ({answer.status_code} {answer.text[:200]})")
print(answer.json()["entity"]["guid"])
PY
}
GUID="$(guid_of version)"
DEPLOYMENT_GUID="$(guid_of deployment)"
FIGURES_GUID="$(guid_of figures)"
say "model version wine.1@$CLUSTER is $GUID, its deployment $DEPLOYMENT_GUID"

# -- the screenshot ---------------------------------------------------------------------------
mkdir -p "$(dirname "$OUT")" "$(dirname "$OUT_PROPERTIES")"
SCRIPT="$(mktemp --suffix=.mjs)"
trap 'rm -f "$SCRIPT"' EXIT
cat >"$SCRIPT" <<'JS'
import { createRequire } from "module";

const require = createRequire(process.env.PW_DIR + "/");
const { chromium } = require("playwright-core");
const [atlas, guid, out, deploymentGuid, outProperties, figuresGuid, outFigures] =
  process.argv.slice(2);
const credentials = `${process.env.ATLAS_USERNAME}:${process.env.ATLAS_PASSWORD}`;
// launch() runs Chromium on a fresh temporary profile (user data dir) of its own.
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
  ],
});
try {
  // Atlas takes HTTP basic authentication on every request, the UI's included: no login form.
  const context = await browser.newContext({
    viewport: { width: 1600, height: 900 },
    extraHTTPHeaders: { Authorization: "Basic " + Buffer.from(credentials).toString("base64") },
  });
  const page = await context.newPage();
  await page.goto(`${atlas}/index.html#!/detailPage/${guid}?tabActive=lineage`);
  // The lineage tab draws one <g class="node"> per entity: the training data set, the
  // training run, the model version, the deployment and its output topic.
  await page.waitForFunction(() => document.querySelectorAll("#tab-lineage svg g.node").length >= 5, null, {
    timeout: 60000,
  });
  const labels = await page.$$eval("#tab-lineage svg g.node", (nodes) => nodes.map((n) => n.textContent.trim()));
  if (!labels.some((l) => l.includes("wine 1"))) {
    throw new Error(`the lineage graph shows ${JSON.stringify(labels)}, expected "wine 1"`);
  }
  await page.waitForTimeout(1000); // let the graph's zoom-to-fit transition finish
  await page.screenshot({ path: out });
  console.error(`lineage nodes: ${labels.join(" | ")}`);

  // The deployment's Properties tab: one table row per attribute Atlas holds.
  // Tall enough for every attribute: the UI scrolls inside its own panel, not the page.
  await page.setViewportSize({ width: 1600, height: 2100 });
  await page.goto(`${atlas}/index.html#!/detailPage/${deploymentGuid}?tabActive=properties`);
  await page.waitForFunction(
    () => /serverKind/.test(document.querySelector("#tab-details")?.textContent || ""),
    null,
    { timeout: 60000 },
  );
  const properties = await page.$eval("#tab-details", (tab) => tab.textContent);
  for (const expected of ["serverKind", "wine-scorer", "currentVersion", "servedVersions"]) {
    if (!properties.includes(expected)) {
      throw new Error(`the Properties tab shows no ${expected}`);
    }
  }
  await page.waitForTimeout(500);
  await page.screenshot({ path: outProperties, fullPage: true });

  // The version's live figures: every replica's windows merged, rollups, drift.
  await page.goto(`${atlas}/index.html#!/detailPage/${figuresGuid}?tabActive=properties`);
  await page.waitForFunction(
    () => /lifetime/.test(document.querySelector("#tab-details")?.textContent || ""),
    null,
    { timeout: 60000 },
  );
  const figures = await page.$eval("#tab-details", (tab) => tab.textContent);
  for (const expected of ["lifetime", "latencyP99Seconds", "replicas", "rollups", "driftVerdict", "psi="]) {
    if (!figures.includes(expected)) {
      throw new Error(`the figures' Properties tab shows no ${expected}`);
    }
  }
  await page.waitForTimeout(500);
  await page.screenshot({ path: outFigures, fullPage: true });
} finally {
  await browser.close();
}
JS
PW_DIR="$PW_DIR" CHROMIUM="$CHROMIUM" node "$SCRIPT" "$ATLAS_URL" "$GUID" "$OUT" \
    "$DEPLOYMENT_GUID" "$OUT_PROPERTIES" "$FIGURES_GUID" "$OUT_FIGURES"
say "wrote $OUT (Atlas: $ATLAS_URL/index.html#!/detailPage/$GUID?tabActive=lineage)"
say "wrote $OUT_PROPERTIES (Atlas: $ATLAS_URL/index.html#!/detailPage/$DEPLOYMENT_GUID?tabActive=properties)"
say "wrote $OUT_FIGURES (Atlas: $ATLAS_URL/index.html#!/detailPage/$FIGURES_GUID?tabActive=properties)"
