import CScopeLua
import Prometheus
import ScopeLua

/// `GET /metrics`: the run's board (`RunBoard`, what each Lua state of the run last
/// published) in Prometheus' text format, read on an HTTP thread.
///
/// Counters and gauges go through swift-prometheus' registry: each scrape moves every
/// counter up by what the board says happened since the last scrape (a counter only
/// goes up; the board's totals never go back, a replaced worker's counts carry over).
/// Histograms are written here, from the board's buckets: swift-prometheus' `Histogram`
/// takes one sample per `record` under a lock, so feeding it what happened between two
/// scrapes would cost a call per stage call (millions per scrape); the board already holds
/// the counts per bucket, summed over the workers, and the text for them is four lines
/// per bucket set.
package final class MetricsExporter: Sendable {
    private let board: RunBoard
    private let queue: IngestQueue?

    private struct State {
        let registry = PrometheusCollectorRegistry()
        var counters: [String: (counter: Counter, exported: Int64)] = [:]
        var gauges: [String: Gauge] = [:]
    }
    private let state = Protected(State())

    package init(board: RunBoard, queue: IngestQueue?) {
        self.board = board
        self.queue = queue
    }

    /// The whole exposition (one scrape at a time: the deltas are taken under the lock).
    package func render() -> String {
        let snapshots = board.read()
        let totals = Totals(snapshots)
        return state.withLock { s in
            var out = ""
            func counter(_ name: String, _ help: String, _ labels: [(String, String)], _ value: Int) {
                let key = Self.key(name, labels)
                let value = Int64(value)
                var entry = s.counters[key] ?? {
                    let d = MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
                    return (s.registry.makeCounter(descriptor: d, labels: labels), 0)
                }()
                if value > entry.exported {
                    entry.counter.increment(by: value - entry.exported)
                    entry.exported = value
                }
                s.counters[key] = entry
            }
            func gauge(_ name: String, _ help: String, _ labels: [(String, String)], _ value: Double) {
                let key = Self.key(name, labels)
                let g = s.gauges[key] ?? {
                    let d = MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
                    return s.registry.makeGauge(descriptor: d, labels: labels)
                }()
                s.gauges[key] = g
                g.set(to: value)
            }

            let e = totals.events
            for (outcome, n) in [("read", e.read), ("emitted", e.emitted), ("filtered", e.filtered), ("skipped", e.skipped),
                                 ("dead_lettered", e.deadLettered), ("rejected", e.rejected)] {
                counter("scopelua_events_total", "Events read from the input, and what became of them (outcome=read counts them all).",
                        [("outcome", outcome)], n)
            }
            counter("scopelua_events_retried_total", "Stage calls retried by an on_error retry policy.", [], e.retried)
            let f = totals.fanout
            for (outcome, n) in [("created", f.created), ("emitted", f.emitted), ("filtered", f.filtered), ("skipped", f.skipped),
                                 ("dead_lettered", f.deadLettered)] {
                counter("scopelua_fanout_events_total", "Events created by ctx:emit, and what became of them (outcome=created counts them all).",
                        [("outcome", outcome)], n)
            }
            for st in totals.stages {
                let stage = [("stage", st.name)]
                counter("scopelua_stage_calls_total", "Calls of the stage's process function.", stage, st.calls)
                counter("scopelua_stage_errors_total", "Errors of the stage (process, its timers, flush), whatever its policy did with them.", stage, st.errors)
                for (outcome, n) in [("skipped", st.skipped), ("dead_lettered", st.deadLettered), ("retried", st.retried)] {
                    counter("scopelua_stage_events_total", "Events the stage's error policy skipped or dead-lettered, and calls it retried.",
                            stage + [("outcome", outcome)], n)
                }
                for (kind, n) in [("time", st.timeBreaches), ("instructions", st.instructionBreaches), ("memory", st.memoryBreaches)] {
                    counter("scopelua_stage_limit_breaches_total", "Calls of the stage that went past one of its limits, by limit.",
                            stage + [("kind", kind)], n)
                }
            }
            for k in totals.kinds {
                let kind = [("kind", k.kind)]
                gauge("scopelua_resources_open", "Handles open now, by kind.", kind, Double(k.open))
                counter("scopelua_resources_acquired_total", "Handles acquired, by kind.", kind, k.counts.acquired)
                counter("scopelua_resources_released_total", "Handles released (by the script, by their scope's end, or after a leak), by kind.",
                        kind, k.counts.released)
                counter("scopelua_resources_leaked_total", "Handles the garbage collector found still open (released by the runtime then), by kind.",
                        kind, k.counts.leaked)
                counter("scopelua_resources_release_errors_total", "Release handlers that failed, by kind.", kind, k.counts.releaseErrors)
            }
            counter("scopelua_worker_restarts_total", "Worker states replaced after running out of memory.", [], totals.restarts)
            if let queue {
                gauge("scopelua_ingest_queue_depth", "Events received over HTTP waiting for the pipeline.", [], Double(queue.depth))
            }
            out += s.registry.emitToString()
            Self.histogram(&out, "scopelua_stage_call_duration_seconds", "Duration of the stage's process calls.",
                           totals.stages.map { ([("stage", $0.name)], $0.latency) })
            Self.histogram(&out, "scopelua_timer_duration_seconds", "Durations measured by timer.measure, by label.",
                           totals.timers.map { ([("label", $0.label)], $0.latency) })
            return out
        }
    }

    private static func key(_ name: String, _ labels: [(String, String)]) -> String {
        ([name] + labels.map { "\($0.0)=\($0.1)" }).joined(separator: "\u{0}")
    }

    /// A histogram family in the text format: cumulative buckets, +Inf, sum and count.
    static func histogram(_ out: inout String, _ name: String, _ help: String, _ series: [([(String, String)], LatencySnapshot)]) {
        guard !series.isEmpty else { return }
        out += "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
        for (labels, h) in series {
            let base = labels.map { "\($0.0)=\"\(escape($0.1))\"" }.joined(separator: ",")
            let prefix = base.isEmpty ? "" : base + ","
            var cumulative: UInt64 = 0
            for (i, bound) in LatencySnapshot.bounds.enumerated() {
                cumulative &+= h.buckets[i]
                out += "\(name)_bucket{\(prefix)le=\"\(bound)\"} \(cumulative)\n"
            }
            out += "\(name)_bucket{\(prefix)le=\"+Inf\"} \(h.count)\n"
            let braces = base.isEmpty ? "" : "{\(base)}"
            out += "\(name)_sum\(braces) \(h.sumSeconds)\n"
            out += "\(name)_count\(braces) \(h.count)\n"
        }
    }

    /// A label value as the text format writes it.
    static func escape(_ value: String) -> String {
        var out = ""
        for c in value.unicodeScalars {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }
}

/// Every state's snapshot added up: stages by name, kinds by name, timers by label.
struct Totals {
    var events = EventCounts()
    var fanout = FanoutCounts()
    var stages: [StageSnapshot] = []
    var kinds: [KindCounts] = []
    var timers: [TimerLabelSnapshot] = []
    var restarts = 0

    init(_ snapshots: [RunSnapshot]) {
        for s in snapshots {
            events.read += s.events.read
            events.emitted += s.events.emitted
            events.filtered += s.events.filtered
            events.skipped += s.events.skipped
            events.deadLettered += s.events.deadLettered
            events.rejected += s.events.rejected
            events.retried += s.events.retried
            fanout.created += s.fanout.created
            fanout.emitted += s.fanout.emitted
            fanout.filtered += s.fanout.filtered
            fanout.skipped += s.fanout.skipped
            fanout.deadLettered += s.fanout.deadLettered
            restarts += s.restarts
            for st in s.stages {
                guard let i = stages.firstIndex(where: { $0.name == st.name }) else {
                    stages.append(st)
                    continue
                }
                stages[i].calls += st.calls
                stages[i].errors += st.errors
                stages[i].skipped += st.skipped
                stages[i].deadLettered += st.deadLettered
                stages[i].retried += st.retried
                stages[i].timeBreaches += st.timeBreaches
                stages[i].instructionBreaches += st.instructionBreaches
                stages[i].memoryBreaches += st.memoryBreaches
                stages[i].latency = stages[i].latency.adding(st.latency)
            }
            for k in s.kinds {
                guard let i = kinds.firstIndex(where: { $0.kind == k.kind }) else {
                    kinds.append(k)
                    continue
                }
                kinds[i].counts.add(k.counts)
            }
            for t in s.timers {
                guard let i = timers.firstIndex(where: { $0.label == t.label }) else {
                    timers.append(t)
                    continue
                }
                timers[i].latency = timers[i].latency.adding(t.latency)
            }
        }
    }
}
