"""The Grafana dashboard as code: grafana/dashboards/ml-pipeline.json is generated from this file
with Grafana's foundation SDK, so panels, targets and datasource references are schema-correct by
construction (a test fails while the committed JSON differs from what this builds).

    python grafana/dashboard.py --write     # after changing a panel here (pip install -e '.[test]')
    python grafana/dashboard.py --check     # exit 1 if the committed JSON is not current

The SDK is pinned to its "Grafana next" build (grafana-foundation-sdk==1769699241, schemaVersion 41,
read by Grafana 12): its epoch-versioned builds only go up to Grafana 11.6, and an unpinned install
picks the 10.1 one. Every query is also run against the live Prometheus by the stack tests.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders.dashboard import Dashboard, DashboardLink, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery as PrometheusQuery
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import units
from grafana_foundation_sdk.models.common import (
    DataSourceRef,
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    TimeZoneBrowser,
    TooltipDisplayMode,
)
from grafana_foundation_sdk.models.dashboard import DashboardCursorSync, DashboardLinkType

# Fixed uid from grafana/provisioning/datasources/datasources.yml (never ${DS_...} placeholders).
PROMETHEUS = DataSourceRef(type_val="prometheus", uid="prometheus")
# The model's inference routes: /predict, and the Open Inference Protocol's infer over HTTP and gRPC.
INFER_ROUTES = "/predict|/v2/models/.+/infer|/inference.GRPCInferenceService/ModelInfer"


@dataclass(frozen=True)
class RowSpec:
    title: str


@dataclass(frozen=True)
class TimeseriesSpec:
    title: str
    description: str
    unit: str
    expr: str
    legend: str
    min: float | None = None
    max: float | None = None
    exemplar: bool = False
    w: int = 12
    h: int = 8


LAYOUT = [
    RowSpec("Traffic and errors per hop"),
    TimeseriesSpec(
        "Request rate per hop",
        "Requests per second each hop serves (postprocess /finalize, preprocess /process, model /predict). Probes and scrapes excluded.",
        units.RequestsPerSecond,
        'sum by (service, route) (rate(ml_pipeline_requests_total{service=~"postprocess|preprocess|model"}[$__rate_interval]))',
        "{{service}} {{route}}",
    ),
    TimeseriesSpec(
        "Server error ratio per hop (5xx)",
        "Share of each hop's requests answered with 5xx. 4xx (bad input) is not counted: it is the client's upload being refused. Alert: > 1% for 5 min.",
        units.PercentUnit,
        '(sum by (service, route) (rate(ml_pipeline_requests_total{service=~"postprocess|preprocess|model", route!="unmatched", status=~"5.."}[$__rate_interval])) or sum by (service, route) (rate(ml_pipeline_requests_total{service=~"postprocess|preprocess|model", route!="unmatched"}[$__rate_interval])) * 0) / sum by (service, route) (rate(ml_pipeline_requests_total{service=~"postprocess|preprocess|model", route!="unmatched"}[$__rate_interval]))',
        "{{service}} {{route}}",
    ),
    RowSpec("Latency per hop (click an exemplar dot to open its trace)"),
    TimeseriesSpec(
        "p50 latency per hop",
        "50th percentile of request duration on each hop, from the services' own histograms. Dots are exemplars: individual requests with their trace_id; click one to open the trace in Jaeger.",
        units.Seconds,
        'histogram_quantile(0.5, sum by (service, route, le) (rate(ml_pipeline_request_duration_seconds_bucket{service=~"postprocess|preprocess|model", route!="unmatched"}[$__rate_interval])))',
        "{{service}} {{route}}",
        exemplar=True,
        w=8,
    ),
    TimeseriesSpec(
        "p95 latency per hop",
        "95th percentile of request duration on each hop, from the services' own histograms. Dots are exemplars: individual requests with their trace_id; click one to open the trace in Jaeger.",
        units.Seconds,
        'histogram_quantile(0.95, sum by (service, route, le) (rate(ml_pipeline_request_duration_seconds_bucket{service=~"postprocess|preprocess|model", route!="unmatched"}[$__rate_interval])))',
        "{{service}} {{route}}",
        exemplar=True,
        w=8,
    ),
    TimeseriesSpec(
        "p99 latency per hop",
        "99th percentile of request duration on each hop, from the services' own histograms. Dots are exemplars: individual requests with their trace_id; click one to open the trace in Jaeger. SLO: p99 of /finalize < 500 ms.",
        units.Seconds,
        'histogram_quantile(0.99, sum by (service, route, le) (rate(ml_pipeline_request_duration_seconds_bucket{service=~"postprocess|preprocess|model", route!="unmatched"}[$__rate_interval])))',
        "{{service}} {{route}}",
        exemplar=True,
        w=8,
    ),
    TimeseriesSpec(
        "Stage latency p95",
        "Where the time goes inside each hop: decode, resize, normalize, hand-off, tensor decode, inference, postprocess (p95 per stage, with exemplars).",
        units.Seconds,
        "histogram_quantile(0.95, sum by (service, stage, le) (rate(ml_pipeline_stage_duration_seconds_bucket[$__rate_interval])))",
        "{{service}}.{{stage}}",
        exemplar=True,
    ),
    TimeseriesSpec(
        "Server span latency p95 from traces (spanmetrics)",
        "The same hops measured from every span by the collector's spanmetrics connector, before sampling (what Jaeger's Monitor tab shows), per replica. No exemplars: they are on the stored traces' panel in the Sampling row.",
        units.Milliseconds,
        'histogram_quantile(0.95, sum by (service_name, service_instance_id, le) (rate(traces_span_metrics_duration_milliseconds_bucket{span_kind="SPAN_KIND_SERVER"}[$__rate_interval])))',
        "{{service_name}} {{service_instance_id}}",
    ),
    RowSpec("Replicas"),
    TimeseriesSpec(
        "Share of model requests per replica",
        "Fraction of inference requests each model replica served (/predict, or the Open Inference Protocol's infer over HTTP or gRPC). With N replicas and working balancing, each line sits near 1/N.",
        units.PercentUnit,
        'sum by (instance) (rate(ml_pipeline_requests_total{service="model", route=~"'
        + INFER_ROUTES
        + '"}[$__rate_interval])) / ignoring (instance) group_left sum(rate(ml_pipeline_requests_total{service="model", route=~"'
        + INFER_ROUTES
        + '"}[$__rate_interval])) * on (instance) group_left (replica) max by (instance, replica) (ml_pipeline_build_info)',
        "{{replica}} ({{instance}})",
        min=0,
        max=1,
    ),
    TimeseriesSpec(
        "In-flight requests per replica",
        "Requests being served right now by each replica. A replica that keeps a queue while others idle is a balancing problem.",
        units.Short,
        "sum by (service, instance) (ml_pipeline_requests_in_flight) * on (instance) group_left (replica) max by (instance, replica) (ml_pipeline_build_info)",
        "{{service}} {{replica}}",
    ),
    TimeseriesSpec(
        "CPU per replica",
        "CPU time each replica uses, in cores (1 = one core busy), from the process collector (rate of process_cpu_seconds_total).",
        units.Short,
        'sum by (job, instance) (rate(process_cpu_seconds_total{job=~"model|preprocess|postprocess"}[$__rate_interval])) * on (instance) group_left (replica) max by (instance, replica) (ml_pipeline_build_info)',
        "{{job}} {{replica}}",
    ),
    TimeseriesSpec(
        "Resident memory per replica",
        "Resident set size of each replica's process.",
        units.BytesIEC,
        'sum by (job, instance) (process_resident_memory_bytes{job=~"model|preprocess|postprocess"}) * on (instance) group_left (replica) max by (instance, replica) (ml_pipeline_build_info)',
        "{{job}} {{replica}}",
    ),
    RowSpec("Tensor hand-off"),
    TimeseriesSpec(
        "Tensor bytes handed off per request",
        "Average bytes preprocess hands to the model per request, by transport (binary .npy ≈ 602 KB per image; JSON floats are several times larger). Transports not used in the window are left out.",
        units.BytesIEC,
        "sum by (transport) (rate(ml_pipeline_handoff_tensor_bytes_sum[$__rate_interval])) / (sum by (transport) (rate(ml_pipeline_handoff_tensor_bytes_count[$__rate_interval])) > 0)",
        "{{transport}}",
    ),
    TimeseriesSpec(
        "Hand-off time p95",
        "p95 of the hand-off stage in preprocess (encode + send + model answer) and of the tensor decode in the model, by service.",
        units.Seconds,
        'histogram_quantile(0.95, sum by (service, stage, le) (rate(ml_pipeline_stage_duration_seconds_bucket{stage=~"handoff|tensor_decode"}[$__rate_interval])))',
        "{{service}}.{{stage}}",
        exemplar=True,
    ),
    RowSpec("Dynamic batching (DYNAMIC_BATCHING=true)"),
    TimeseriesSpec(
        "Dynamic batch size (mean)",
        "Samples per batch the model's dynamic batcher ran, averaged per replica: near 1 at light load, growing with concurrency up to MAX_BATCH. 0 while batching is off (the default).",
        units.Short,
        "(sum by (instance) (rate(ml_pipeline_batch_size_sum[$__rate_interval])) / (sum by (instance) (rate(ml_pipeline_batch_size_count[$__rate_interval])) > 0)) or on () vector(0)",
        "{{instance}}",
    ),
    TimeseriesSpec(
        "Batcher queue time p95",
        "p95 of how long a request waited in the batcher's queue before its batch started: at most MAX_QUEUE_DELAY_MS plus the batch ahead of it. 0 while batching is off.",
        units.Seconds,
        "histogram_quantile(0.95, sum by (le) (rate(ml_pipeline_batch_queue_duration_seconds_bucket[$__rate_interval]))) or on () vector(0)",
        "p95",
    ),
    RowSpec("Sampling (TRACE_SAMPLING=tail: errors, slow traces and TRACE_KEEP_PERCENT of the rest)"),
    TimeseriesSpec(
        "Spans received and stored per second",
        "Spans the collector received (every one: the span metrics count them before sampling) and spans it stored in Jaeger (the traces sampling kept). Equal with TRACE_SAMPLING=all.",
        units.Short,
        'label_replace(sum(rate(traces_span_metrics_calls_total[$__rate_interval])), "spans", "received", "", "") or label_replace(sum(rate(traces_span_metrics_kept_calls_total[$__rate_interval])), "spans", "stored", "", "")',
        "{{spans}}",
    ),
    TimeseriesSpec(
        "Stored traces: server span latency p95",
        "The hops' latency among the traces Jaeger holds (errors, slow ones and the sampled fraction: slower than all traffic by design). Its exemplars always name a stored trace: click one to open it.",
        units.Milliseconds,
        'histogram_quantile(0.95, sum by (service_name, le) (rate(traces_span_metrics_kept_duration_milliseconds_bucket{span_kind="SPAN_KIND_SERVER"}[$__rate_interval])))',
        "{{service_name}}",
        exemplar=True,
    ),
    TimeseriesSpec(
        "Traces decided per second: kept and dropped",
        "The tail sampler's decisions per second, all samplers together: sampled (stored) or not_sampled (dropped).",
        units.Short,
        "sum by (decision) (rate(otelcol_processor_tail_sampling_global_count_traces_sampled_total[$__rate_interval]))",
        "{{decision}}",
    ),
    TimeseriesSpec(
        "Traces each policy keeps per second",
        "Traces each policy voted to keep (errors, slow, fraction); a trace is kept when any policy keeps it, so one trace may count in several.",
        units.Short,
        'sum by (policy) (rate(otelcol_processor_tail_sampling_count_traces_sampled_total{decision="sampled"}[$__rate_interval]))',
        "{{policy}}",
    ),
    TimeseriesSpec(
        "Traces waiting for a decision",
        "Traces each sampler holds while their decision_wait (20 s) runs; bounded by num_traces (10,000), past which the oldest is evicted undecided (alert MlPipelineSamplerDroppingTraces).",
        units.Short,
        "sum by (instance) (otelcol_processor_tail_sampling_sampling_traces_on_memory)",
        "{{instance}}",
    ),
    TimeseriesSpec(
        "Dropped for lack of memory",
        "Traces a sampler evicted before their decision (num_traces full: their spans are lost) and spans a collector refused at its memory limit, per second. 0 is the only good value (alert MlPipelineSamplerDroppingTraces).",
        units.Short,
        'sum by (instance) (rate(otelcol_processor_tail_sampling_sampling_trace_dropped_too_early_total[$__rate_interval])) or sum by (instance) (rate(otelcol_receiver_refused_spans_total{job="otel-collector"}[$__rate_interval])) or on () vector(0)',
        "{{instance}}",
    ),
    TimeseriesSpec(
        "Decision time p95",
        "p95 of how long each sampler's decision tick takes over the traces due (once a second); past 1 s decisions run late.",
        units.Milliseconds,
        "histogram_quantile(0.95, sum by (instance, le) (rate(otelcol_processor_tail_sampling_sampling_decision_timer_latency_milliseconds_bucket[$__rate_interval])))",
        "{{instance}}",
    ),
    RowSpec("Result cache (RESULT_CACHE_SIZE > 0)"),
    TimeseriesSpec(
        "Result cache lookups per second",
        "Lookups in postprocess's result cache by outcome: a hit answers a repeated image without running the chain. All zero while the cache is off (the default).",
        units.RequestsPerSecond,
        'sum by (result) (rate(ml_pipeline_cache_lookups_total{service="postprocess"}[$__rate_interval]))',
        "{{result}}",
    ),
    TimeseriesSpec(
        "Result cache entries",
        "Entries held in each postprocess replica's result cache (bounded by RESULT_CACHE_SIZE).",
        units.Short,
        'sum by (instance) (ml_pipeline_cache_entries{service="postprocess"})',
        "{{instance}}",
    ),
]


def prometheus_query(spec: TimeseriesSpec) -> PrometheusQuery:
    query = PrometheusQuery().ref_id("A").datasource(PROMETHEUS).expr(spec.expr).legend_format(spec.legend)
    query = query.range()  # writes "range": true AND "instant": false
    if spec.exemplar:
        query = query.exemplar(True)
    return query


def timeseries(panel_id: int, spec: TimeseriesSpec) -> Timeseries:
    panel = (
        Timeseries()
        .id(panel_id)
        .title(spec.title)
        .description(spec.description)
        .datasource(PROMETHEUS)
        .span(spec.w)
        .height(spec.h)  # x/y: laid out by Dashboard.with_row/with_panel, left to right, wrapping at 24
        .unit(spec.unit)
        .line_width(1)
        .fill_opacity(10)
        .legend(
            common_builders.VizLegendOptions()
            .show_legend(True)  # the model's default is False: without this the legend is hidden
            .display_mode(LegendDisplayMode.TABLE)
            .placement(LegendPlacement.RIGHT)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(common_builders.VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING))
        .with_target(prometheus_query(spec))
    )
    if spec.min is not None:
        panel = panel.min(spec.min)
    if spec.max is not None:
        panel = panel.max(spec.max)
    return panel


def build() -> Dashboard:
    dashboard = (
        Dashboard("ml-pipeline: hops, replicas, resources")
        .uid("ml-pipeline-overview")
        .description(
            "Per-hop traffic, errors and latency (with exemplars linking to Jaeger traces), replica share, "
            "CPU and memory, in-flight requests and tensor hand-off size."
        )
        .tags(["ml-pipeline"])
        .timezone(TimeZoneBrowser)
        .readonly()  # "editable": false
        .refresh("10s")
        .time("now-15m", "now")
        .version(1)
        .tooltip(DashboardCursorSync.CROSSHAIR)  # "graphTooltip": 1
        .variables([])  # "templating": {"list": []}  (default would be "templating": {})
        .annotations([])  # "annotations": {"list": []}
        .link(DashboardLink("Jaeger").type(DashboardLinkType.LINK).url("http://localhost:16686").target_blank(True))
    )
    for panel_id, item in enumerate(LAYOUT, start=1):
        if isinstance(item, RowSpec):
            dashboard = dashboard.with_row(Row(item.title).id(panel_id))  # not collapsed: panels follow at top level
        else:
            dashboard = dashboard.with_panel(timeseries(panel_id, item))
    return dashboard


def render() -> str:
    model = build().build()
    # JSONEncoder only knows to call .to_json(); sort_keys gives a stable order independent of the SDK's field order.
    return json.dumps(json.loads(JSONEncoder().encode(model)), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


OUTPUT = Path(__file__).resolve().parent / "dashboards" / "ml-pipeline.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate grafana/dashboards/ml-pipeline.json")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="write the dashboard JSON")
    action.add_argument("--check", action="store_true", help="exit 1 if the committed JSON is not what this builds")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        OUTPUT.write_text(text, encoding="utf-8")
        print(f"wrote {OUTPUT}")
    elif args.check:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is not current: python grafana/dashboard.py --write", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
