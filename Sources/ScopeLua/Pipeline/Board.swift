import CScopeLua
import Synchronization

/// What a run shows to the threads that watch it (`/metrics`, `/resources`; docs/
/// ARCHITECTURE.md, "The board"). A run's state belongs to its thread (rule 6): the HTTP
/// threads never touch it. Instead each thread that runs a Lua state of the run (the
/// run's own, each worker's, the coordinator's) publishes a `RunSnapshot` of plain
/// values here, at most every `interval` between events, after each barrier and at its
/// end; readers take a copy of the latest ones under the lock. A run without a board
/// publishes nothing and pays one nil check per loop turn.
package final class RunBoard: Sendable {
    /// How often a run publishes while it runs (monotonic ns).
    package static let interval: UInt64 = 250_000_000

    private struct Slot {
        var latest: RunSnapshot
        /// The resource counts and timer statistics of the states this slot had before
        /// (a worker whose state ran out of memory is replaced; its counts go on).
        var carriedKinds: [String: ResourceCounts] = [:]
        var carriedTimers: [String: LatencySnapshot] = [:]
        var restarts = 0
    }

    private let slots = Protected<[Int: Slot]>([:])
    private let nextGeneration = Atomic<Int>(1)

    package init() {}

    /// A number for one run's publications (a replaced worker's state gets a new one).
    func generation() -> Int {
        nextGeneration.wrappingAdd(1, ordering: .relaxed).oldValue
    }

    /// The latest snapshot of `snapshot.slot` (0: the run's own state, or the
    /// coordinator's; 1...N: worker N). A new generation in a slot is a restart: what the
    /// replaced state counted carries over, so counters never go back.
    func publish(_ snapshot: RunSnapshot) {
        slots.withLock { slots in
            guard var slot = slots[snapshot.slot] else {
                slots[snapshot.slot] = Slot(latest: snapshot)
                return
            }
            if slot.latest.generation != snapshot.generation {
                for k in slot.latest.kinds {
                    slot.carriedKinds[k.kind, default: ResourceCounts()].add(k.counts)
                }
                for t in slot.latest.timers {
                    slot.carriedTimers[t.label] = slot.carriedTimers[t.label].map { $0.adding(t.latency) } ?? t.latency
                }
                slot.restarts += 1
            }
            slot.latest = snapshot
            slots[snapshot.slot] = slot
        }
    }

    /// Every slot's latest snapshot, with what replaced states counted added in, by slot.
    package func read() -> [RunSnapshot] {
        let copy = slots.withLock { $0 }
        return copy.keys.sorted().compactMap { key in
            guard let slot = copy[key] else { return nil }
            var s = slot.latest
            s.restarts = slot.restarts
            for (kind, carried) in slot.carriedKinds {
                if let i = s.kinds.firstIndex(where: { $0.kind == kind }) {
                    s.kinds[i].counts.add(carried)
                    // What was open in the replaced state was released when it closed.
                } else {
                    s.kinds.append(KindCounts(kind: kind, counts: carried))
                }
            }
            for (label, carried) in slot.carriedTimers {
                if let i = s.timers.firstIndex(where: { $0.label == label }) {
                    s.timers[i].latency = s.timers[i].latency.adding(carried)
                } else {
                    s.timers.append(TimerLabelSnapshot(label: label, latency: carried))
                }
            }
            return s
        }
    }
}

/// One Lua state's view of the run, as plain values.
package struct RunSnapshot: Sendable {
    /// 0: the run's own state (or, with workers, the coordinator's); 1...N: worker N.
    package var slot: Int
    /// Which run (state) published it: a new one in the same slot is a restart.
    package var generation: Int
    package var pipeline: String
    /// Events read, by what became of them (with workers: this worker's share; the
    /// coordinator's slot holds what a resumed checkpoint had counted).
    package var events = EventCounts()
    /// Events created by `ctx:emit`, by what became of them.
    package var fanout = FanoutCounts()
    package var stages: [StageSnapshot] = []
    package var kinds: [KindCounts] = []
    package var timers: [TimerLabelSnapshot] = []
    package var handles: [OpenHandle] = []
    /// States of this slot replaced after running out of memory (filled in by `read`).
    package var restarts = 0
    /// When it was taken (monotonic ns), and whether the run has ended.
    package var takenAt: UInt64
    package var ended = false
}

package struct EventCounts: Sendable, Equatable {
    package var read = 0, emitted = 0, filtered = 0, skipped = 0, deadLettered = 0, rejected = 0, retried = 0, inFlight = 0
    package init() {}
}

package struct FanoutCounts: Sendable, Equatable {
    package var created = 0, emitted = 0, filtered = 0, skipped = 0, deadLettered = 0, inFlight = 0
    package init() {}
}

package struct StageSnapshot: Sendable {
    package var name: String
    package var calls = 0, errors = 0, skipped = 0, deadLettered = 0, retried = 0
    /// Limit breaches by kind.
    package var timeBreaches = 0, instructionBreaches = 0, memoryBreaches = 0
    /// `process` calls' durations.
    package var latency = LatencySnapshot()
}

package struct TimerLabelSnapshot: Sendable {
    package var label: String
    package var latency: LatencySnapshot
}

/// A latency histogram reduced to the Prometheus buckets `bounds`: the engine's
/// histograms (`Histogram`, 3712 buckets of under 1.6% relative width) are mapped onto
/// them when a snapshot is taken, on the run's thread, so the board holds 20 numbers
/// per histogram, and snapshots of several workers add up. A sample is counted in the
/// first bound at or above the middle of its fine bucket (so `le` is exact within 1.6%);
/// count, sum and max are exact.
package struct LatencySnapshot: Sendable, Equatable {
    /// Upper bounds, in seconds (then +Inf).
    package static let bounds: [Double] = [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                            0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
    /// Samples per bound, not cumulative; the last entry is above the last bound.
    package var buckets = [UInt64](repeating: 0, count: LatencySnapshot.bounds.count + 1)
    package var count: UInt64 = 0
    package var sumSeconds: Double = 0
    package var maxSeconds: Double = 0

    package init() {}

    package init(_ h: HistogramSnapshot) {
        count = h.count
        sumSeconds = (Double(h.totalHigh) * 18_446_744_073_709_551_616.0 + Double(h.total)) / 1e9
        maxSeconds = Double(h.max) / 1e9
        for (i, n) in h.buckets.enumerated() where n != 0 {
            let seconds = Self.middle(ofBucket: i) / 1e9
            let b = Self.bounds.firstIndex { seconds <= $0 } ?? Self.bounds.count
            buckets[b] &+= n
        }
    }

    /// The middle of the engine histogram's bucket `i`, in ns (`sl_hist_record`: values
    /// under 64 ns have a bucket each, then 64 sub-buckets per power of two).
    static func middle(ofBucket i: Int) -> Double {
        let sub = Int(SL_HIST_SUB), bits = Int(SL_HIST_SUBBITS)
        guard i >= sub else { return Double(i) }
        let e = i / sub + bits - 1
        let width = Double(sign: .plus, exponent: e - bits, significand: 1)
        let lower = Double(sub + i % sub) * width
        return lower + width / 2
    }

    package func adding(_ o: LatencySnapshot) -> LatencySnapshot {
        var sum = self
        for i in sum.buckets.indices where i < o.buckets.count { sum.buckets[i] &+= o.buckets[i] }
        sum.count &+= o.count
        sum.sumSeconds += o.sumSeconds
        sum.maxSeconds = max(maxSeconds, o.maxSeconds)
        return sum
    }
}

extension ResourceCounts {
    package mutating func add(_ o: ResourceCounts) {
        acquired += o.acquired
        releasedByHandle += o.releasedByHandle
        releasedByScope += o.releasedByScope
        leaked += o.leaked
        releaseErrors += o.releaseErrors
    }
}

/// The board a runtime's pipeline runs publish to: how a worker's run, made on the
/// worker's thread from a runtime the `WorkerFactory` created, finds the run's board.
final class BoardLink {
    var board: RunBoard?
}

extension Runtime {
    /// The board this runtime's pipeline runs publish to (nil: none).
    package var board: RunBoard? {
        get { state(BoardLink.self) { BoardLink() }.board }
        set { state(BoardLink.self) { BoardLink() }.board = newValue }
    }
}

extension PipelineRun {
    /// Publishes when `RunBoard.interval` has passed since the last publication; called
    /// by the feed loops between events (next to the progress line). Without a board: one
    /// nil check.
    @inline(__always)
    func publishIfDue() {
        guard board != nil else { return }
        let now = sl_monotonic_ns()
        guard now >= nextPublish else { return }
        publish(now: now)
    }

    /// Publishes now (after a barrier, at the end).
    func publish(now: UInt64 = sl_monotonic_ns(), ended: Bool = false) {
        guard let board else { return }
        nextPublish = now &+ RunBoard.interval
        board.publish(boardSnapshot(now: now, ended: ended))
    }

    /// This state's snapshot: its counts (a worker's include those of the states it
    /// replaced; the coordinator's are only what a resumed checkpoint had counted, since
    /// the workers publish their own), its resources and timers, its open handles.
    func boardSnapshot(now: UInt64, ended: Bool) -> RunSnapshot {
        let c = parallel?.restored ?? workerCounts(histograms: true)
        var slot = 0
        if case .channel(let link) = options.input { slot = link.number }
        var s = RunSnapshot(slot: slot, generation: boardGeneration, pipeline: definition.name, takenAt: now)
        s.ended = ended
        s.events.read = c.read
        s.events.emitted = c.original.emitted
        s.events.filtered = c.original.filtered
        s.events.skipped = c.original.skipped
        s.events.deadLettered = c.original.deadLettered
        s.events.rejected = c.rejected
        s.events.retried = c.retried
        s.events.inFlight = c.original.inFlight
        s.fanout.created = c.fanoutCreated
        s.fanout.emitted = c.fanout.emitted
        s.fanout.filtered = c.fanout.filtered
        s.fanout.skipped = c.fanout.skipped
        s.fanout.deadLettered = c.fanout.deadLettered
        s.fanout.inFlight = c.fanout.inFlight
        let names = parallel == nil ? stages.map(\.definition.name) : definition.allStages.map(\.name)
        s.stages = c.stages.enumerated().map { i, st in
            var snap = StageSnapshot(name: i < names.count ? names[i] : "stage\(i + 1)")
            snap.calls = st.calls
            snap.errors = st.errors
            snap.skipped = st.skipped
            snap.deadLettered = st.deadLettered
            snap.retried = st.retried
            snap.timeBreaches = st.breaches.time
            snap.instructionBreaches = st.breaches.instructions
            snap.memoryBreaches = st.breaches.memory
            if let h = st.histogram { snap.latency = LatencySnapshot(h) }
            return snap
        }
        s.kinds = rt.countsByKind
        s.timers = rt.ledger.timerSnapshots.map { TimerLabelSnapshot(label: $0.label, latency: LatencySnapshot($0.histogram)) }
        s.handles = rt.openHandleSnapshot()
        return s
    }
}
